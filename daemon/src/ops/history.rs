//! `drctl history`: the audit log of role changes and hook runs.

use crate::node::Node;
use drd_proto::pb;
use tonic::Status;

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
