//! `drctl verify`: re-hashes every sealed segment this node stores and walks
//! the stream's hash chain, naming the first segment that breaks it.

use crate::chain::{self, Stored};
use crate::node::Node;
use crate::ops::{failover::pick_stream, fork};
use drd_proto::pb;
use tonic::Status;

/// Runs on a blocking thread: it reads every stored byte.
pub fn verify(node: &Node, req: pb::VerifyRequest) -> Result<pb::VerifyResponse, Status> {
    let stream = pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    let records = node
        .catalog
        .segments(&stream)
        .map_err(|e| Status::internal(e.to_string()))?;
    let stored: Vec<Stored> = records
        .iter()
        .filter(|r| r.sealed)
        .map(|r| Stored {
            name: r.name.clone(),
            size: r.size,
            recorded_sha256: r.sha256.clone().unwrap_or_default(),
            recorded_chain: r.chain.clone(),
            actual_sha256: match fork::segment_path(node, &stream, r) {
                None => Err("no file at the replica (deleted?)".to_string()),
                Some(p) => fork::hash_prefix(&p, r.size).map_err(|e| format!("{e:#}")),
            },
        })
        .collect();
    let report = chain::verify(&stored);
    for (seg, p) in &report.problems {
        tracing::error!(%stream, segment = %seg, problem = %p, "verify: stored segment failed");
    }
    Ok(pb::VerifyResponse {
        stream: stream.to_string(),
        segments_checked: report.checked as u64,
        bytes_checked: report.bytes,
        problems: report
            .problems
            .into_iter()
            .map(|(segment, p)| pb::VerifyProblem {
                segment,
                problem: p.to_string(),
            })
            .collect(),
        chain_head: report.head.unwrap_or_default(),
    })
}
