//! `drctl verify`: re-hashes every sealed segment this node stores and walks
//! the stream's hash chain, naming the first segment that breaks it.

use crate::chain::{self, Stored};
use crate::node::Node;
use crate::ops::{failover::pick_stream, fork};
use drd_proto::pb;
use tonic::Status;

/// Most problems one reply lists: the first is where trust ends, and a
/// copy that lost thousands of segments must not make a reply that grows
/// with the log. `problems_total` gives the count.
pub const MAX_VERIFY_PROBLEMS: usize = 100;

/// Runs on a blocking thread: it reads every stored byte. Counts its work
/// in [`Node::operations`] (segments and bytes hashed) as it goes.
pub fn verify(node: &Node, req: pb::VerifyRequest) -> Result<pb::VerifyResponse, Status> {
    let stream = pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    let progress = node
        .operations
        .start("verify", stream.as_str(), &req.progress_token);
    progress.set_phase("reading the catalog");
    let records = node
        .catalog
        .segments(&stream)
        .map_err(|e| Status::internal(e.to_string()))?;
    let sealed: Vec<_> = records.iter().filter(|r| r.sealed).collect();
    progress.set_totals(
        sealed.iter().map(|r| r.size).fold(0, u64::saturating_add),
        sealed.len() as u64,
    );
    progress.set_phase("hashing segments");
    let stored: Vec<Stored> = sealed
        .into_iter()
        .map(|r| {
            let s = Stored {
                name: r.name.clone(),
                size: r.size,
                recorded_sha256: r.sha256.clone().unwrap_or_default(),
                recorded_chain: r.chain.clone(),
                actual_sha256: match fork::segment_path(node, &stream, r) {
                    _ if r.pruned_at_ms.is_some() => Err("pruned from the spool".to_string()),
                    None => Err("no file at the replica (deleted?)".to_string()),
                    Some(p) => fork::hash_prefix(&p, r.size).map_err(|e| format!("{e:#}")),
                },
                pruned: r.pruned_at_ms.is_some(),
            };
            progress.add_done(r.size, 1);
            s
        })
        .collect();
    progress.set_phase("walking the hash chain");
    let report = chain::verify(&stored);
    for (seg, p) in &report.problems {
        tracing::error!(%stream, segment = %seg, problem = %p, "verify: stored segment failed");
    }
    Ok(pb::VerifyResponse {
        stream: stream.to_string(),
        segments_checked: report.checked as u64,
        bytes_checked: report.bytes,
        problems_total: report.problems.len() as u64,
        problems: report
            .problems
            .into_iter()
            .take(MAX_VERIFY_PROBLEMS)
            .map(|(segment, p)| pb::VerifyProblem {
                segment,
                problem: p.to_string(),
            })
            .collect(),
        chain_head: report.head.unwrap_or_default(),
    })
}
