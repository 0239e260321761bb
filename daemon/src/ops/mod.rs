//! Operations that change roles or serve operators: failover, switchover,
//! rejoin, fencing, pause/resume, history, segment fetch. The protocol rules
//! they apply are in [`crate::roles`]; this module carries them out.

pub mod failover;
pub mod fork;
pub mod logcmp;
pub mod peer;
pub mod prune;
pub mod rejoin;
pub mod remote;
pub mod switchover;
pub mod verify;
pub mod walpush;

use crate::catalog::{AuditRecord, Txn};
use crate::locks::LockExt;
use crate::node::Node;
use drd_proto::{pb, SegmentName, StreamName};
use tonic::Status;

/// Who asked for an operation, for the audit log.
#[derive(Clone, Debug)]
pub struct Caller {
    /// OS user of the control-socket peer (or a node id).
    pub user: String,
    /// e.g. "control socket, pid 1234".
    pub origin: String,
}

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
    let stream = failover::pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    let state = node
        .stream_role(&stream)
        .map_err(|e| Status::internal(format!("{e:#}")))?
        .state();
    let next = crate::catalog::RoleState {
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

/// `drctl history`: the audit log (one stream's entries, and those from
/// before roles were per stream, when `req` names one).
pub fn history(node: &Node, req: pb::HistoryRequest) -> Result<pb::HistoryResponse, Status> {
    let log = node
        .catalog
        .audit_log()
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(pb::HistoryResponse {
        entries: log
            .into_iter()
            .filter(|a| req.stream.is_empty() || a.stream.is_empty() || a.stream == req.stream)
            .map(|a| pb::AuditEntry {
                stream: a.stream,
                seq: a.seq,
                at_ms: a.at_ms,
                action: a.action,
                user: a.user,
                origin: a.origin,
                reason: a.reason,
                epoch_before: a.epoch_before,
                epoch_after: a.epoch_after,
                role_before: a.role_before,
                role_after: a.role_after,
                detail: a.detail,
            })
            .collect(),
    })
}

/// Serialises [`crate::catalog::Catalog::note_fetched`]'s read-compare-write.
static FETCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `drctl wal-fetch`: where the complete, verified copy of a segment (or a
/// side file) is.
pub fn fetch_segment(
    node: &Node,
    req: pb::FetchSegmentRequest,
) -> Result<pb::FetchSegmentResponse, Status> {
    let stream = failover::pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    // `.history`, `.backup`, `.partial`: kept whole beside the log.
    if crate::sidefiles::WalFileKind::classify(&req.segment).is_some_and(|k| k.is_side_file()) {
        return crate::sidefiles::fetch(node, &stream, &req.segment);
    }
    let seg = SegmentName::new(req.segment).map_err(Status::from)?;
    let rec = node
        .catalog
        .segment(&stream, &seg)
        .map_err(|e| Status::internal(e.to_string()))?
        .filter(|r| r.sealed);
    let Some(rec) = rec else {
        let state = node
            .catalog
            .retention(&stream)
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Some(b) = state
            .boundary
            .filter(|b| seg.as_str() <= b.segment.as_str())
        {
            return Err(Status::not_found(format!(
                "segment {seg} of {stream} was removed by this DR site's retention policy \
                 (everything through {} is gone, the last removal at {}); restore from an \
                 older base backup's archive, or lengthen [replica.retention]",
                b.segment,
                crate::display::unix_ms_utc(b.at_ms)
            )));
        }
        return Err(Status::not_found(format!(
            "segment {seg} of {stream} is not complete here"
        )));
    };
    if rec.pruned_at_ms.is_some() {
        // Not here any more, and that is no loss: "not found", which
        // restore_command reports to PostgreSQL as "not available".
        return Err(Status::not_found(format!(
            "segment {seg} of {stream} was removed from this node's spool once the replica \
             held it sealed and verified (spool_retention); fetch it at the DR site"
        )));
    }
    // The DR database has read up to here: retention may remove what is
    // older (never this one: PostgreSQL may still be replaying it).
    {
        let _one = FETCH_LOCK.locked();
        if let Err(e) = node
            .catalog
            .note_fetched(&stream, &seg, crate::clock::unix_ms())
        {
            tracing::warn!(%stream, segment = %seg, error = %e,
                "cannot record the newest fetched segment; retention keeps what follows the \
                 last one recorded");
        }
    }
    let path = fork::segment_path(node, &stream, &rec).ok_or_else(|| {
        Status::data_loss(format!(
            "segment {seg} is in the catalog but its file is missing"
        ))
    })?;
    Ok(pb::FetchSegmentResponse {
        path: path.display().to_string(),
        size: rec.size,
        sha256: rec.sha256.unwrap_or_default(),
        fork: rec.fork,
    })
}

/// Streams named by a client: validated here, once.
pub fn stream_name(name: &str) -> Result<StreamName, Status> {
    StreamName::new(name).map_err(Status::from)
}
