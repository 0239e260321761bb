//! `drctl verify`: re-hashes every sealed segment this node stores and walks
//! the stream's hash chain, naming the first segment that breaks it.

use crate::chain::{self, Stored, Walker};
use crate::node::Node;
use crate::ops::{failover::pick_stream, fork};
use drd_proto::pb;
use tonic::Status;

/// Most problems one reply lists: the first is where trust ends, and a
/// copy that lost thousands of segments must not make a reply that grows
/// with the log. `problems_total` gives the count.
pub const MAX_VERIFY_PROBLEMS: usize = 100;

/// Runs on a blocking thread: it reads every stored byte, one record at a
/// time (a year of records is never held at once). Counts its work in
/// [`Node::operations`] (segments and bytes hashed) as it goes. Where the
/// DR site's retention removed the log's start, the walk starts from the
/// chain value recorded at the pruning boundary.
pub fn verify(node: &Node, req: pb::VerifyRequest) -> Result<pb::VerifyResponse, Status> {
    let stream = pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    let internal = |e: crate::storage::catalog::CatalogError| Status::internal(e.to_string());
    let progress = node
        .operations
        .start("verify", stream.as_str(), &req.progress_token);
    progress.set_phase("reading the catalog");
    let (mut bytes, mut count) = (0u64, 0u64);
    node.catalog
        .for_each_segment(&stream, None, |r| {
            if r.sealed && r.pruned_at_ms.is_none() {
                bytes = bytes.saturating_add(r.size);
                count += 1;
            }
            Ok(true)
        })
        .map_err(internal)?;
    progress.set_totals(bytes, count);
    let boundary = node.catalog.retention(&stream).map_err(internal)?.boundary;
    let start = match &boundary {
        None => chain::GENESIS,
        Some(b) => chain::from_hex(&b.chain).ok_or_else(|| {
            Status::data_loss(format!(
                "the pruning boundary of {stream} (after segment {}) has no valid chain value \
                 ({:?}): the catalog was changed outside drd",
                b.segment, b.chain
            ))
        })?,
    };
    progress.set_phase("hashing segments");
    let mut walker = Walker::new(start);
    node.catalog
        .for_each_segment(&stream, None, |r| {
            if !r.sealed {
                return Ok(true);
            }
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
            walker.step(&s);
            if !s.pruned {
                progress.add_done(r.size, 1);
            }
            Ok(true)
        })
        .map_err(internal)?;
    let report = walker.finish();
    for (seg, p) in report.problems.iter().take(MAX_VERIFY_PROBLEMS) {
        tracing::error!(%stream, segment = %seg, problem = %p, "verify: stored segment failed");
    }
    Ok(pb::VerifyResponse {
        stream: stream.to_string(),
        segments_checked: report.checked as u64,
        bytes_checked: report.bytes,
        problems_total: report.problems_total,
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
        pruned_through: boundary
            .as_ref()
            .map(|b| b.segment.clone())
            .unwrap_or_default(),
        start_chain: boundary.map(|b| b.chain).unwrap_or_default(),
    })
}
