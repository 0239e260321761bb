//! `drctl mode STREAM sync|async --reason …`: the audited way to change a
//! stream's sync/async mode at its primary without editing the config —
//! typically to stop COMMITs waiting while the DR link is down, knowing
//! that commits from then on are not covered by zero loss.
//!
//! The override is stored with the stream's role (it survives restarts: a
//! restart must not silently make commits wait again) and every change is
//! an audit record. Setting the configured mode removes the override. A
//! role change clears it.

use crate::config::SyncMode;
use crate::node::Node;
use crate::ops::failover::pick_stream;
use crate::ops::Caller;
use crate::storage::catalog::{AuditRecord, Role, RoleState, Txn};
use drd_core::roles::ModeOverride;
use drd_proto::pb;
use tonic::Status;

/// The override as the control API reports it.
pub fn to_pb(o: &ModeOverride) -> pb::ModeOverride {
    pb::ModeOverride {
        mode: if o.sync { "sync" } else { "async" }.into(),
        at_ms: o.at_ms,
        user: o.user.clone(),
        reason: o.reason.clone(),
    }
}

/// `drctl mode`.
pub async fn set_mode(
    node: &Node,
    req: pb::SetModeRequest,
    who: Caller,
) -> Result<pb::SetModeResponse, Status> {
    let stream = pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    let want = match req.mode.as_str() {
        "sync" => SyncMode::Sync,
        "async" => SyncMode::Async,
        other => {
            return Err(Status::invalid_argument(format!(
                "mode {other:?}: must be \"sync\" or \"async\""
            )))
        }
    };
    if req.reason.trim().is_empty() {
        return Err(Status::invalid_argument(
            "a mode change needs --reason (it goes to the audit log and drctl status), e.g. \
             --reason \"DR link down, change CAB-1234\"",
        ));
    }
    let Some(cfg) = node.config.streams.iter().find(|s| s.name == stream) else {
        return Err(Status::failed_precondition(format!(
            "{stream} has no [[stream]] in this node's config: its mode is set where it is \
             shipped from"
        )));
    };
    if !cfg.source.drd_owned() {
        return Err(Status::failed_precondition(format!(
            "{stream} reads the database's own WAL directory (source = \"tail\"), which is \
             always asynchronous; sync mode needs source = \"postgres\" or \"spool\""
        )));
    }
    if want == SyncMode::Sync && cfg.peer.is_none() {
        return Err(Status::failed_precondition(format!(
            "{stream} has no peer (it ships only to its [[stream.target]]s, asynchronously, \
             within upload_interval); sync mode waits for a DR site's drd — add a `peer`"
        )));
    }
    let role = node
        .stream_role(&stream)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    // No role change half-way through this one.
    let _gate = role.transition.write().await;
    let state = role.state();
    if state.role != Role::Primary {
        return Err(Status::failed_precondition(format!(
            "{stream} is {} here; its mode applies where it is primary — run drctl mode there",
            state.role.as_str()
        )));
    }
    let before = cfg.mode.in_effect(&state);
    if before == want && state.mode_override.is_none() {
        // Nothing to change, and nothing to audit.
        return Ok(pb::SetModeResponse {
            stream: stream.to_string(),
            mode: want.as_str().into(),
            configured: cfg.mode.as_str().into(),
            r#override: None,
        });
    }
    let next_override = (want != cfg.mode).then(|| ModeOverride {
        sync: want == SyncMode::Sync,
        at_ms: crate::clock::unix_ms(),
        user: who.user.clone(),
        reason: req.reason.clone(),
    });
    let next = RoleState {
        mode_override: next_override.clone(),
        ..state.clone()
    };
    let mut txn = Txn::default();
    txn.audit(AuditRecord {
        user: who.user.clone(),
        origin: who.origin,
        reason: req.reason.clone(),
        detail: format!(
            "mode {} -> {} (configured: {}{})",
            before.as_str(),
            want.as_str(),
            cfg.mode.as_str(),
            if next_override.is_some() {
                ", overridden"
            } else {
                ", override removed"
            }
        ),
        ..AuditRecord::role_change("mode", &state, &next)
    });
    node.commit_role(&stream, next, txn)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    tracing::warn!(%stream, user = %who.user, reason = %req.reason,
        "mode {} -> {} (configured {})", before.as_str(), want.as_str(), cfg.mode.as_str());
    Ok(pb::SetModeResponse {
        stream: stream.to_string(),
        mode: want.as_str().into(),
        configured: cfg.mode.as_str().into(),
        r#override: next_override.as_ref().map(to_pb),
    })
}
