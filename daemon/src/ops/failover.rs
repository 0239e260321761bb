//! `drctl failover`: the unplanned case, run at the DR node. Preflight checks
//! (is the primary really gone? how much data could be lost?), then: end the
//! replication sessions, close the log at the fork, become primary at
//! epoch + 1 — one catalog transaction with its audit record — tell the old
//! primary to fence itself if it can be reached, run the promote hook, and
//! report the RPO.

use crate::catalog::{AuditRecord, Role, Txn};
use crate::config::DataLoss;
use crate::hooks;
use crate::node::Node;
use crate::ops::{fork, peer, Caller};
use drd_proto::{pb, StreamName};
use std::sync::Arc;
use std::time::Duration;

/// How long the failover waits for the old primary to answer the fence.
const FENCE_TIMEOUT: Duration = Duration::from_secs(3);

fn refuse(mut r: pb::FailoverResponse, why: String) -> pb::FailoverResponse {
    r.refused = why;
    r
}

/// Resolves the stream the request names, or the node's only one.
pub fn pick_stream(node: &Node, name: &str) -> Result<StreamName, String> {
    let streams = node.stream_names();
    if name.is_empty() {
        return match streams.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err("this node has no stream yet".into()),
            many => {
                const LISTED: usize = 10;
                let mut names: Vec<&str> = many.iter().take(LISTED).map(|s| s.as_str()).collect();
                if many.len() > LISTED {
                    names.push("…");
                }
                Err(format!(
                    "this node has {} streams; name one with --stream NAME ({}), or act on \
                     every stream with --all",
                    many.len(),
                    names.join(", ")
                ))
            }
        };
    }
    let s = StreamName::new(name).map_err(|e| e.to_string())?;
    if !streams.contains(&s) {
        return Err(format!(
            "no stream named {s} on this node; `drctl status` lists its streams"
        ));
    }
    Ok(s)
}

pub async fn failover(
    node: &Arc<Node>,
    req: pb::FailoverRequest,
    who: Caller,
) -> pb::FailoverResponse {
    let mut r = pb::FailoverResponse {
        dry_run: req.dry_run,
        ..Default::default()
    };
    let stream = match pick_stream(node, &req.stream) {
        Ok(s) => s,
        Err(e) => return refuse(r, e),
    };
    r.stream = stream.to_string();
    let role = match node.stream_role(&stream) {
        Ok(r) => r,
        Err(e) => return refuse(r, format!("{e:#}")),
    };
    let state = role.state();
    r.old_epoch = state.epoch;
    if state.role != Role::Replica {
        return refuse(
            r,
            format!(
                "{stream} is {} at epoch {} on this node; failover runs on the DR node, where the \
                 stream must be a replica",
                state.role.as_str(),
                state.epoch
            ),
        );
    }
    r.new_epoch = match state.epoch.checked_add(1) {
        Some(e) => e,
        None => {
            let e = crate::roles::RoleError::EpochExhausted {
                current: state.epoch,
            };
            return refuse(r, e.to_string());
        }
    };
    let slot = match node.receive_slot(&stream) {
        Ok(s) => s,
        Err(e) => return refuse(r, format!("{e:#}")),
    };
    let view = slot.view(std::time::Instant::now());
    let meta = node.catalog.stream_meta(&stream).unwrap_or_default();
    r.durable_position = view.durable_position;
    r.durable_at_ms = meta.durable_at_ms;
    r.primary_reported_position = view.written_position;
    r.possible_loss_bytes = view.lag_bytes;
    r.possible_loss_seconds = view.lag_seconds;
    r.old_primary = meta.last_primary.clone().unwrap_or_default();
    r.primary_looks_alive = view.connected;
    let peer_cfg = node
        .config
        .streams
        .iter()
        .find(|s| s.name == stream)
        .cloned();

    r.plan = vec![
        format!("end replication from {} and keep what is durable: {} bytes", or_unknown(&r.old_primary), r.durable_position),
        format!("close the log at the fork position {} (the last partial segment is kept as NAME.partial)", r.durable_position),
        format!("become primary of {stream} at epoch {} (audit log records it)", r.new_epoch),
        match &peer_cfg {
            Some(c) => format!("tell the old primary at {} to fence itself (go on if unreachable)", c.peer),
            None => "cannot tell the old primary to fence: no [[stream]] peer configured for this stream".into(),
        },
        match &node.config.hooks.promote {
            Some(h) => format!("run the promote hook: {h}"),
            None => "no promote hook configured: promote the database yourself".into(),
        },
    ];
    if peer_cfg.is_none() {
        r.warnings.push(format!(
            "no [[stream]] for {stream} in this node's config: as primary it has no source to ship from"
        ));
    }
    if r.primary_looks_alive && !req.yes {
        return refuse(
            r,
            "the primary is still connected and shipping to this node; a failover now would leave two \
             primaries. For a planned change use `drctl switchover`; if you are certain the primary must \
             be replaced (e.g. it is cut off from its clients), repeat with --yes"
                .into(),
        );
    }
    let limit = if req.max_data_loss_bytes > 0 {
        Some(DataLoss::Bytes(req.max_data_loss_bytes))
    } else if req.max_data_loss_seconds > 0.0 {
        Some(DataLoss::Seconds(req.max_data_loss_seconds))
    } else {
        node.config.rpo_budget
    };
    let over = match limit {
        Some(DataLoss::Bytes(b)) if r.possible_loss_bytes > b => Some(format!(
            "the possible data loss of {} bytes exceeds the limit of {b} bytes",
            r.possible_loss_bytes
        )),
        Some(DataLoss::Seconds(s)) if r.possible_loss_seconds > s => Some(format!(
            "the possible data loss of {:.1} s exceeds the limit of {s:.1} s",
            r.possible_loss_seconds
        )),
        _ => None,
    };
    if let Some(why) = over {
        if !req.force {
            return refuse(r, format!("{why}; repeat with --force to accept the loss"));
        }
        r.warnings.push(format!("{why}; accepted with --force"));
    }
    if req.dry_run {
        return r;
    }

    // The promotion itself.
    let next = match crate::roles::promote(&state) {
        Ok(n) => n,
        Err(e) => return refuse(r, e.to_string()),
    };
    {
        // Only this stream: the others' sessions go on receiving.
        let _gate = role.transition.write().await;
        node.end_session(&stream).await;
        let mut txn = Txn::default();
        let mut detail = Vec::new();
        match fork::close_received_log(node, &stream, next.epoch, &mut txn) {
            Ok(Some(f)) => {
                r.durable_position = f.position;
                detail.push(format!(
                    "{stream}: fork at position {} in segment {}",
                    f.position, f.segment
                ))
            }
            Ok(None) => detail.push(format!("{stream}: nothing received")),
            Err(e) => {
                return refuse(
                    r,
                    format!("cannot close the log of {stream}: {e:#}; nothing changed"),
                )
            }
        }
        detail.push(format!(
            "possible loss {} bytes / {:.1} s; old primary {}",
            r.possible_loss_bytes,
            r.possible_loss_seconds,
            or_unknown(&r.old_primary)
        ));
        txn.audit(AuditRecord {
            user: who.user.clone(),
            origin: who.origin.clone(),
            reason: req.reason.clone(),
            detail: detail.join("; "),
            ..AuditRecord::role_change("failover", &state, &next)
        });
        if let Err(e) = node.commit_role(&stream, next.clone(), txn) {
            return refuse(
                r,
                format!("cannot record the promotion: {e:#}; nothing changed"),
            );
        }
    }
    tracing::warn!(epoch = next.epoch, stream = %stream, fork = r.durable_position, "FAILOVER: this node is now primary");

    if let Some(c) = &peer_cfg {
        match fence_old_primary(node, c, next.epoch, &req.reason).await {
            Ok(resp) => {
                r.old_primary_reached = true;
                if let Some(w) = resp.written.iter().find(|w| w.stream == stream.as_str()) {
                    r.known_loss_bytes = w.position.saturating_sub(r.durable_position);
                }
            }
            Err(e) => r
                .warnings
                .push(format!("old primary not reached to fence it: {e}")),
        }
    }
    let outcome = hooks::run_configured(
        node,
        &stream,
        "promote",
        next.epoch,
        "primary",
        Some(r.durable_position),
    )
    .await;
    r.hook_report = outcome.summary("promote");
    crate::ops::audit_hook(node, &stream, &who, next.epoch, &r.hook_report);
    r
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "(unknown)"
    } else {
        s
    }
}

/// Asks the old primary to fence itself for `cfg`'s stream (its other
/// streams are not this failover's business).
async fn fence_old_primary(
    node: &Node,
    cfg: &crate::config::StreamConfig,
    epoch: u64,
    reason: &str,
) -> Result<pb::FenceResponse, String> {
    let call = async {
        let mut c = peer::connect_for_calls(node, cfg).await?;
        c.fence(pb::FenceRequest {
            from_node: node.config.node_id.to_string(),
            epoch,
            reason: reason.to_string(),
            stream: cfg.name.to_string(),
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
    };
    tokio::time::timeout(FENCE_TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer within {FENCE_TIMEOUT:?}"))?
}
