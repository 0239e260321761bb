//! `drctl rejoin`: a fenced node becomes a replica of the current primary.
//! It asks the primary (its configured peer) for the fork of the new epoch,
//! checks that it holds the same bytes up to the fork, moves everything past
//! the fork into `data_dir/quarantine/…` (never deletes it), and becomes a
//! replica at the primary's epoch; the primary then ships the new epoch's
//! segments to it.

use crate::catalog::{AuditRecord, Role, Txn};
use crate::node::Node;
use crate::ops::{fork, peer, Caller};
use drd_proto::pb;
use std::sync::Arc;
use tonic::Status;

pub async fn rejoin(
    node: &Arc<Node>,
    req: pb::RejoinRequest,
    who: Caller,
) -> Result<pb::RejoinResponse, Status> {
    let state = node.state();
    if state.role != Role::Fenced {
        return Err(Status::failed_precondition(format!(
            "this node is {} at epoch {}; only a fenced node rejoins",
            state.role.as_str(),
            state.epoch
        )));
    }
    let [cfg] = node.config.streams.as_slice() else {
        return Err(Status::failed_precondition(
            "rejoin needs exactly one [[stream]] (its peer is the new primary)",
        ));
    };
    let progress = node
        .operations
        .start("rejoin", cfg.name.as_str(), &req.progress_token);
    progress.set_phase("asking the new primary for the fork");
    let mut client = peer::connect_for_calls(node, cfg)
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the new primary: {e}")))?;
    let info = client
        .log_info(pb::LogInfoRequest {
            stream: cfg.name.to_string(),
            hash_tail: false,
        })
        .await?
        .into_inner();
    if info.role != pb::Role::Primary as i32 || info.epoch <= state.epoch {
        return Err(Status::failed_precondition(format!(
            "{} is not a primary with a newer epoch (epoch {}); nothing to rejoin",
            info.node_id, info.epoch
        )));
    }
    if info.fork_segment.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{} reports no fork for {}; it cannot say where the logs diverged",
            info.node_id, cfg.name
        )));
    }
    let seg = info
        .segments
        .iter()
        .find(|s| s.name == info.fork_segment)
        .ok_or_else(|| Status::internal("the primary's fork segment is not in its log"))?;
    let remote = fork::RemoteFork::from_peer(seg, info.fork_position, info.epoch).map_err(|e| {
        Status::failed_precondition(format!(
            "{}: {e}; refusing to rejoin (nothing changed)",
            info.node_id
        ))
    })?;
    let quarantine = node
        .config
        .data_dir
        .join("quarantine")
        .join(cfg.name.as_str())
        .join(format!("epoch-{}-{}", info.epoch, crate::unix_ms()));

    progress.set_phase("waiting for other role changes to finish");
    let _gate = node.transition.write().await;
    let next = crate::roles::rejoin(&state, info.epoch)
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    let mut txn = Txn::default();
    let moved = fork::cut_back(node, cfg, &remote, &quarantine, &mut txn, &progress)
        .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
    progress.set_phase("recording the new role");
    let total: u64 = moved.iter().map(|q| q.bytes).sum();
    txn.audit(AuditRecord {
        action: "rejoin".into(),
        user: who.user,
        origin: who.origin,
        reason: req.reason,
        epoch_before: state.epoch,
        epoch_after: next.epoch,
        role_before: state.role.as_str().into(),
        role_after: next.role.as_str().into(),
        detail: format!(
            "replica of {} from fork {} in {}; {} files / {total} bytes past the fork moved to {}",
            info.node_id,
            remote.position,
            remote.segment,
            moved.len(),
            quarantine.display()
        ),
        ..Default::default()
    });
    node.commit_state(next.clone(), txn)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    tracing::warn!(
        epoch = next.epoch,
        fork = remote.position,
        quarantined_bytes = total,
        "REJOINED as a replica of {}",
        info.node_id
    );
    Ok(pb::RejoinResponse {
        stream: cfg.name.to_string(),
        fork_position: remote.position,
        fork_segment: remote.segment.to_string(),
        new_epoch: next.epoch,
        new_primary: info.node_id,
        quarantine_dir: quarantine.display().to_string(),
        quarantined: moved
            .iter()
            .map(|q| pb::QuarantinedFile {
                path: q.path.display().to_string(),
                bytes: q.bytes,
                from: q.from.display().to_string(),
            })
            .collect(),
        quarantined_bytes: total,
    })
}
