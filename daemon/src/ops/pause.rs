//! `drctl pause` / `drctl resume`: stop and restart shipping one stream.

use crate::locks::LockExt;
use crate::node::Node;
use crate::ops::failover::pick_stream;
use crate::ops::Caller;
use crate::storage::catalog::{AuditRecord, Txn};
use drd_proto::pb;
use tonic::Status;

/// How long `drctl pause` waits for the shippers to stop.
const PAUSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `drctl pause` / `drctl resume` of one stream. A pause returns once the
/// stream is not being shipped any more, so that nothing written after it
/// leaves the site.
pub async fn pause(
    node: &Node,
    req: pb::PauseRequest,
    who: Caller,
) -> Result<pb::PauseResponse, Status> {
    let stream = pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    let state = node
        .stream_role(&stream)
        .map_err(|e| Status::internal(format!("{e:#}")))?
        .state();
    let next = crate::storage::catalog::RoleState {
        paused: req.pause,
        ..state.clone()
    };
    let mut txn = Txn::default();
    txn.audit(AuditRecord {
        user: who.user,
        origin: who.origin,
        reason: req.reason,
        ..AuditRecord::role_change(if req.pause { "pause" } else { "resume" }, &state, &state)
    });
    node.commit_role(&stream, next, txn)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    tracing::warn!(
        %stream,
        paused = req.pause,
        "shipping {}",
        if req.pause { "paused" } else { "resumed" }
    );
    if req.pause {
        let deadline = std::time::Instant::now() + PAUSE_WAIT;
        while node
            .shipper(&stream)
            .is_some_and(|s| s.state.locked().connected)
        {
            if std::time::Instant::now() > deadline {
                return Err(Status::deadline_exceeded(
                    format!("{stream} paused, but its replication session did not stop within 10 s; check `drctl status`"),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    Ok(pb::PauseResponse {
        paused: req.pause,
        stream: stream.to_string(),
    })
}
