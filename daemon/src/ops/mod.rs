//! Operations that change roles or serve operators, one module each:
//! failover, switchover, rejoin, pause/resume, history, segment fetch,
//! wal-push, verify, prune, drills, and the node-to-node calls ([`remote`]). The
//! protocol rules they apply are in [`crate::roles`]; they carry them out.
//!
//! This module holds only what they share — who asked ([`Caller`]), the
//! audit of a hook's result, validated stream names, the stale-epoch
//! refusal — and dispatches to none of them, so an operation's module
//! never imports its parent's dispatcher (the control API in
//! [`crate::api::control`] calls each one).

pub mod drill;
pub mod failover;
pub mod fetch;
pub mod fork;
pub mod history;
pub mod logcmp;
pub mod mode;
pub mod pause;
pub mod peer;
pub mod prune;
pub mod rejoin;
pub mod remote;
pub mod switchover;
pub mod verify;
pub mod walpush;

use crate::node::Node;
use crate::storage::catalog::{AuditRecord, Txn};
use drd_proto::StreamName;
use tonic::Status;

pub use crate::caller::Caller;

/// Records a hook's result for `stream` in the audit log.
pub fn audit_hook(node: &Node, stream: &StreamName, who: &Caller, epoch: u64, summary: &str) {
    let mut txn = Txn::default();
    txn.audit(AuditRecord {
        action: "hook".into(),
        stream: stream.to_string(),
        user: who.user.clone(),
        origin: who.origin.clone(),
        epoch_before: epoch,
        epoch_after: epoch,
        detail: summary.to_string(),
        ..Default::default()
    });
    if let Err(e) = node.catalog.commit_txn(txn) {
        tracing::error!(error = %e, "cannot record a hook result in the audit log");
    }
}

/// Streams named by a client: validated here, once.
pub fn stream_name(name: &str) -> Result<StreamName, Status> {
    StreamName::new(name).map_err(Status::from)
}

pub use crate::primary::wire::EPOCH_METADATA;

/// The refusal a stale primary gets: FAILED_PRECONDITION with our epoch
/// (`state`: the stream's role here).
pub fn stale_epoch(node: &Node, state: &crate::storage::catalog::RoleState, got: u64) -> Status {
    let mut status = Status::failed_precondition(format!(
        "stale epoch {got}: node {} is {} at epoch {}; the sender must fence itself",
        node.config.node_id,
        state.role.as_str(),
        state.epoch
    ));
    if let Ok(v) = state.epoch.to_string().parse() {
        status.metadata_mut().insert(EPOCH_METADATA, v);
    }
    status
}
