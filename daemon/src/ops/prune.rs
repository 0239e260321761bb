//! `drctl prune`: the DR site's retention policy applied now, or with
//! `--dry-run` what it would remove and why (see `replica::prune`).

use crate::node::Node;
use crate::ops::{failover::pick_stream, Caller};
use crate::replica::prune::{self, Outcome, MAX_LISTED};
use drd_proto::pb;
use std::sync::Arc;
use tonic::Status;

/// Most batches one request runs: a backlog larger than this many times
/// `BATCH_SEGMENTS` is finished by the timer's passes.
const MAX_BATCHES: usize = 1_000;

pub async fn prune(
    node: &Arc<Node>,
    req: pb::PruneRequest,
    who: Caller,
) -> Result<pb::PruneResponse, Status> {
    let stream = pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    let pruner = node.retention_pruner();
    let run = |dry| {
        let (pruner, stream, who) = (pruner.clone(), stream.clone(), who.clone());
        async move {
            prune::pass(&pruner, &stream, dry, who)
                .await
                .map_err(|e| Status::internal(format!("{e:#}")))
        }
    };
    let mut total = run(req.dry_run).await?;
    let mut batches = 1;
    while total.more && batches < MAX_BATCHES {
        tokio::time::sleep(prune::BATCH_PAUSE).await;
        let next = run(false).await?;
        total.segments += next.segments;
        total.bytes += next.bytes;
        let room = MAX_LISTED.saturating_sub(total.listed.len());
        total.listed.extend(next.listed.into_iter().take(room));
        total.kept = next.kept;
        total.more = next.more;
        total.boundary = next.boundary;
        batches += 1;
    }
    Ok(response(total, req.dry_run))
}

fn response(o: Outcome, dry_run: bool) -> pb::PruneResponse {
    let now = crate::clock::unix_ms();
    pb::PruneResponse {
        stream: o.stream,
        policy: o.policy.unwrap_or_default(),
        not_pruning: o.not_replica.unwrap_or_default(),
        dry_run,
        segments: o.segments,
        bytes: o.bytes,
        listed: o
            .listed
            .into_iter()
            .map(|i| pb::PrunedSegment {
                segment: i.segment,
                size: i.size,
                age_ms: i.age_ms,
                reason: i.why.to_string(),
            })
            .collect(),
        oldest_kept_age_ms: o
            .kept
            .as_ref()
            .map_or(0, |(r, _)| crate::replica::retention::age_ms(r, now)),
        kept_because: o
            .kept
            .as_ref()
            .map(|(_, k)| k.to_string())
            .unwrap_or_default(),
        oldest_kept: o.kept.map(|(r, _)| r.name).unwrap_or_default(),
        pruned_through: o.boundary.map(|b| b.segment).unwrap_or_default(),
        fetched: o.fetched.unwrap_or_default(),
    }
}
