//! This node's side of the node-to-node calls: `Promote` (a switchover asks
//! the drained replica to take over), `Fence` (a new primary tells an old
//! one to stop), `LogInfo` (a node's log, for rejoin and checksum checks).

use crate::catalog::{AuditRecord, Role, Txn};
use crate::hooks::{self, HookOutcome};
use crate::node::Node;
use crate::ops::{fork, Caller};
use drd_proto::{pb, StreamName};
use std::sync::Arc;
use tonic::Status;

fn pb_role(r: Role) -> i32 {
    (match r {
        Role::Primary => pb::Role::Primary,
        Role::Replica => pb::Role::Replica,
        Role::Fenced => pb::Role::Fenced,
    }) as i32
}

/// The stream's log as this node holds it. With `hash_tail`, a partial last
/// segment is hashed too (up to its durable size), for switchover checks.
pub fn log_info(
    node: &Node,
    stream: &StreamName,
    hash_tail: bool,
) -> Result<pb::LogInfoResponse, Status> {
    let internal = |e: &dyn std::fmt::Display| Status::internal(e.to_string());
    let state = node.state();
    let meta = node.catalog.stream_meta(stream).map_err(|e| internal(&e))?;
    let mut segments = Vec::new();
    let records = node.catalog.segments(stream).map_err(|e| internal(&e))?;
    let last = records.len().saturating_sub(1);
    for (i, rec) in records.iter().enumerate() {
        let mut sha = rec.sha256.clone().unwrap_or_default();
        if hash_tail && i == last && !rec.sealed {
            if let Some(path) = fork::segment_path(node, stream, rec) {
                sha =
                    fork::hash_prefix(&path, rec.size).map_err(|e| internal(&format!("{e:#}")))?;
            }
        }
        segments.push(pb::SegmentInfo {
            name: rec.name.clone(),
            start: rec.start,
            size: rec.size,
            sealed: rec.sealed,
            sha256: sha,
            epoch: rec.epoch,
            fork: rec.fork,
            chain: rec.chain.clone().unwrap_or_default(),
        });
    }
    let durable = records.last().map_or(0, |r| r.end());
    Ok(pb::LogInfoResponse {
        node_id: node.config.node_id.to_string(),
        role: pb_role(state.role),
        epoch: state.epoch,
        durable_position: durable,
        segments,
        fork_segment: meta
            .fork
            .as_ref()
            .map(|f| f.segment.clone())
            .unwrap_or_default(),
        fork_position: meta.fork.as_ref().map_or(0, |f| f.position),
    })
}

/// A switchover's promotion, at the replica. The promote hook runs *before*
/// the role change is committed, so that a failing hook leaves this node a
/// replica at the old epoch: the switchover rolls back cleanly.
pub async fn promote(
    node: &Arc<Node>,
    req: pb::PromoteRequest,
) -> Result<pb::PromoteResponse, Status> {
    let stream = StreamName::new(req.stream.clone()).map_err(Status::from)?;
    let who = Caller {
        user: format!("{} (on {})", req.requested_by, req.from_node),
        origin: format!("switchover from {}", req.from_node),
    };
    let _gate = node.transition.write().await;
    let state = node.state();
    let next = crate::roles::promote_for(&state, req.epoch)
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    // Stop receiving, then check we hold exactly the primary's log.
    node.end_sessions().await;
    let tail = node
        .catalog
        .tail(&stream)
        .map_err(|e| Status::internal(e.to_string()))?;
    let durable = tail.as_ref().map_or(0, |t| t.end());
    if durable != req.fork_position {
        return Err(Status::failed_precondition(format!(
            "not drained: this replica is durable at {durable}, the primary at {}",
            req.fork_position
        )));
    }
    let outcome =
        hooks::run_configured(node, "promote", next.epoch, "primary", Some(durable)).await;
    if let HookOutcome::Failed { .. } = outcome {
        return Err(Status::aborted(format!(
            "{}; this node stays a replica at epoch {}",
            outcome.summary("promote"),
            state.epoch
        )));
    }
    let mut txn = Txn::default();
    let mut detail = vec![outcome.summary("promote")];
    for s in node.stream_names() {
        match fork::close_received_log(node, &s, next.epoch, &mut txn) {
            Ok(Some(f)) => detail.push(format!("{s}: fork at {} in {}", f.position, f.segment)),
            Ok(None) => {}
            Err(e) => {
                return Err(Status::internal(format!(
                    "cannot close the log of {s}: {e:#}"
                )))
            }
        }
    }
    txn.audit(AuditRecord {
        action: "promote (switchover)".into(),
        user: who.user,
        origin: who.origin,
        reason: req.reason,
        epoch_before: state.epoch,
        epoch_after: next.epoch,
        role_before: state.role.as_str().into(),
        role_after: next.role.as_str().into(),
        detail: detail.join("; "),
        ..Default::default()
    });
    node.commit_state(next.clone(), txn)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    tracing::warn!(epoch = next.epoch, "SWITCHOVER: this node is now primary");
    Ok(pb::PromoteResponse {
        new_epoch: next.epoch,
        hook_report: outcome.summary("promote"),
    })
}

/// Fences this node if `epoch` is newer than its own (see
/// [`crate::roles::fence`]), runs the fence hook, and answers with the
/// written positions so the new primary can report the known loss.
pub async fn fence(node: &Arc<Node>, req: pb::FenceRequest) -> Result<pb::FenceResponse, Status> {
    let reason = format!(
        "node {} became primary at epoch {}{}",
        req.from_node,
        req.epoch,
        if req.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", req.reason)
        }
    );
    fence_self(node, req.epoch, &reason, &req.from_node).await;
    let state = node.state();
    let written = node
        .stream_views()
        .into_iter()
        .map(|v| pb::StreamPosition {
            stream: v.name,
            position: v.written_position,
        })
        .collect();
    Ok(pb::FenceResponse {
        node_id: node.config.node_id.to_string(),
        role: pb_role(state.role),
        epoch: state.epoch,
        written,
    })
}

/// Applies a newer epoch seen from `from`: a primary fences itself (loudly,
/// with an audit record and the fence hook), a replica adopts the epoch.
pub async fn fence_self(node: &Arc<Node>, seen_epoch: u64, reason: &str, from: &str) {
    let state = node.state();
    let Some(next) = crate::roles::fence(&state, seen_epoch, reason) else {
        return;
    };
    let mut txn = Txn::default();
    txn.audit(AuditRecord {
        action: if next.role == Role::Fenced {
            "fence"
        } else {
            "adopt-epoch"
        }
        .into(),
        user: from.to_string(),
        origin: "peer node".into(),
        reason: reason.to_string(),
        epoch_before: state.epoch,
        epoch_after: next.epoch,
        role_before: state.role.as_str().into(),
        role_after: next.role.as_str().into(),
        ..Default::default()
    });
    if let Err(e) = node.commit_state(next.clone(), txn) {
        tracing::error!(error = %e, "cannot record the fence");
        return;
    }
    if next.role != Role::Fenced {
        return;
    }
    tracing::error!(
        epoch = state.epoch,
        seen_epoch,
        %reason,
        "FENCED: a newer primary exists; this node stopped shipping. Run `drctl rejoin` to make it a replica"
    );
    let outcome = hooks::run_configured(node, "fence", seen_epoch, "fenced", None).await;
    crate::ops::audit_hook(
        node,
        &Caller {
            user: "drd".into(),
            origin: "fence".into(),
        },
        seen_epoch,
        &outcome.summary("fence"),
    );
}
