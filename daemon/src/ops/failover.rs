//! `drctl failover`: the unplanned case, run at the DR node. Steps:
//!
//! 1. preflight — the stream is a replica here and its epoch can grow; the
//!    RPO report's numbers and the plan;
//! 2. confirm — is the primary really gone (or `--yes`)? is the possible
//!    loss within the limit (or `--force`)? A dry run ends here;
//! 3. end replication — this stream's session ends;
//! 4. close the log at the fork — its longest verified prefix;
//! 5. record the promotion — primary at epoch + 1, one catalog transaction
//!    with the fork and its audit record;
//! 6. fence the old primary — tell it to fence itself, if it can be reached;
//! 7. promote hook — and report the RPO.
//!
//! The order and what a failure means are drd-core's step machine
//! (`drd_core::failover`): a failure up to the commit refuses the failover
//! and nothing changed; after it this node is primary whatever happens,
//! and a failure to fence the old primary or to run the hook is a warning.

use crate::config::DataLoss;
use crate::hooks;
use crate::node::Node;
use crate::ops::{fork, peer, Caller};
use crate::storage::catalog::{AuditRecord, Role, Txn};
use drd_core::failover::{Failover, OnFailure, Step};
use drd_proto::{pb, StreamName};
use std::sync::Arc;
use std::time::Duration;

/// How long the failover waits for the old primary to answer the fence.
const FENCE_TIMEOUT: Duration = Duration::from_secs(3);

/// A failover in progress: its report, and drd-core's step machine.
struct Run {
    r: pb::FailoverResponse,
    /// Which step comes next, and what a failure at each one means.
    fo: Failover,
}

impl Run {
    /// Records that `step` succeeded (the code below runs them in order).
    fn done(&mut self, step: Step) {
        if let Err(e) = self.fo.succeeded(step) {
            tracing::error!(error = %e, "failover steps out of order (a bug in drd)");
        }
    }

    /// `step` failed before the promotion was committed: the failover is
    /// refused, and nothing changed (an ended session is opened again by
    /// the primary's next Hello).
    fn refuse(mut self, step: Step, why: String) -> pb::FailoverResponse {
        match self.fo.failed(step) {
            Ok(OnFailure::Refuse { .. }) => {}
            Ok(OnFailure::Warn { .. }) => {
                tracing::error!(?step, "failover refused after its commit (a bug in drd)")
            }
            Err(e) => tracing::error!(error = %e, "failover steps out of order (a bug in drd)"),
        }
        self.r.refused = why;
        self.r
    }

    /// `step` failed after the promotion was committed (or, `unknown`, its
    /// effect is not known): the report has a warning, and the failover
    /// goes on.
    fn warned(&mut self, step: Step, unknown: bool) {
        let o = if unknown {
            self.fo.unknown(step)
        } else {
            self.fo.failed(step)
        };
        match o {
            Ok(OnFailure::Warn { .. }) => {}
            Ok(OnFailure::Refuse { .. }) => {
                tracing::error!(?step, "failover warning before its commit (a bug in drd)")
            }
            Err(e) => tracing::error!(error = %e, "failover steps out of order (a bug in drd)"),
        }
    }
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
    let mut run = Run {
        r: pb::FailoverResponse {
            dry_run: req.dry_run,
            ..Default::default()
        },
        fo: Failover::new(),
    };

    // 1. preflight
    let stream = match pick_stream(node, &req.stream) {
        Ok(s) => s,
        Err(e) => return run.refuse(Step::Preflight, e),
    };
    run.r.stream = stream.to_string();
    let role = match node.stream_role(&stream) {
        Ok(r) => r,
        Err(e) => return run.refuse(Step::Preflight, format!("{e:#}")),
    };
    let state = role.state();
    run.r.old_epoch = state.epoch;
    if state.role != Role::Replica {
        return run.refuse(
            Step::Preflight,
            format!(
                "{stream} is {} at epoch {} on this node; failover runs on the DR node, where the \
                 stream must be a replica",
                state.role.as_str(),
                state.epoch
            ),
        );
    }
    // The promotion itself (a replica whose epoch can still grow).
    let next = match crate::roles::promote(&state) {
        Ok(n) => n,
        Err(e) => return run.refuse(Step::Preflight, e.to_string()),
    };
    run.r.new_epoch = next.epoch;
    let slot = match node.receive_slot(&stream) {
        Ok(s) => s,
        Err(e) => return run.refuse(Step::Preflight, format!("{e:#}")),
    };
    let view = slot.view(std::time::Instant::now());
    let meta = node.catalog.stream_meta(&stream).unwrap_or_default();
    let r = &mut run.r;
    r.durable_position = view.durable_position;
    r.durable_at_ms = meta.durable_at_ms;
    r.primary_reported_position = view.written_position;
    r.possible_loss_bytes = view.lag_bytes;
    r.possible_loss_seconds = view.lag_seconds;
    r.old_primary = meta.last_primary.clone().unwrap_or_default();
    r.primary_looks_alive = view.connected;
    if let Some((tli, lsn)) = crate::walpos::wal_end(node, &stream) {
        r.durable_timeline = tli;
        r.durable_lsn = lsn.0;
    }
    r.primary_last_timeline = meta.source_timeline;
    r.primary_last_lsn = meta.source_lsn;
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
            Some(c) => format!("tell the old primary at {} to fence itself (go on if unreachable)", c.peer_label()),
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
    run.done(Step::Preflight);

    // 2. confirm
    if run.r.primary_looks_alive && !req.yes {
        return run.refuse(
            Step::Confirm,
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
        Some(DataLoss::Bytes(b)) if run.r.possible_loss_bytes > b => Some(format!(
            "the possible data loss of {} bytes exceeds the limit of {b} bytes",
            run.r.possible_loss_bytes
        )),
        Some(DataLoss::Seconds(s)) if run.r.possible_loss_seconds > s => Some(format!(
            "the possible data loss of {:.1} s exceeds the limit of {s:.1} s",
            run.r.possible_loss_seconds
        )),
        _ => None,
    };
    if let Some(why) = over {
        if !req.force {
            return run.refuse(
                Step::Confirm,
                format!("{why}; repeat with --force to accept the loss"),
            );
        }
        run.r.warnings.push(format!("{why}; accepted with --force"));
    }
    if req.dry_run {
        return run.r;
    }
    run.done(Step::Confirm);

    {
        // 3. end replication. Only this stream: the others' sessions go on
        // receiving.
        let _gate = role.transition.write().await;
        // The role read above may be stale by now: another failover, a
        // Promote RPC or a Hello that taught this node a newer epoch may
        // have held the gate first. Promoting from the stale read would
        // record a second promotion at the same epoch, or lower an epoch
        // adopted meanwhile (invariant 3).
        let now = role.state();
        if now.role != state.role || now.epoch != state.epoch {
            return run.refuse(
                Step::EndSession,
                format!(
                    "{stream} changed while this failover waited: it is now {} at epoch {} \
                     (was {} at epoch {}); nothing changed. `drctl status` shows the stream; \
                     run the failover again only if it is still needed",
                    now.role.as_str(),
                    now.epoch,
                    state.role.as_str(),
                    state.epoch
                ),
            );
        }
        node.end_session(&stream).await;
        run.done(Step::EndSession);

        // 4. close the log at the fork
        let mut txn = Txn::default();
        let mut detail = Vec::new();
        match fork::close_received_log(node, &stream, next.epoch, &mut txn) {
            Ok(Some(f)) => {
                run.r.durable_position = f.position;
                detail.push(format!(
                    "{stream}: fork at position {} in segment {}",
                    f.position, f.segment
                ))
            }
            Ok(None) => detail.push(format!("{stream}: nothing received")),
            Err(e) => {
                return run.refuse(
                    Step::CloseLog,
                    format!("cannot close the log of {stream}: {e:#}; nothing changed"),
                )
            }
        }
        run.done(Step::CloseLog);

        // 5. record the promotion: the fork, the role and the audit record
        // in one synced transaction.
        detail.push(format!(
            "possible loss {} bytes / {:.1} s; old primary {}",
            run.r.possible_loss_bytes,
            run.r.possible_loss_seconds,
            or_unknown(&run.r.old_primary)
        ));
        // The range a hospital reconciles by hand, in the database's own
        // terms where the stream is PostgreSQL's WAL (issue 21).
        if run.r.primary_last_lsn != 0 || run.r.durable_lsn != 0 {
            detail.push(loss_range(&run.r));
        }
        txn.audit(AuditRecord {
            user: who.user.clone(),
            origin: who.origin.clone(),
            reason: req.reason.clone(),
            detail: detail.join("; "),
            ..AuditRecord::role_change("failover", &state, &next)
        });
        if let Err(e) = node.commit_role(&stream, next.clone(), txn) {
            return run.refuse(
                Step::Commit,
                format!("cannot record the promotion: {e:#}; nothing changed"),
            );
        }
        run.done(Step::Commit);
    }
    tracing::warn!(epoch = next.epoch, stream = %stream, fork = run.r.durable_position, "FAILOVER: this node is now primary");

    // 6. fence the old primary: best effort from here on.
    match &peer_cfg {
        None => {
            // Said in the plan and the warnings already.
            run.warned(Step::FenceOldPrimary, false);
        }
        Some(c) => match fence_old_primary(node, c, next.epoch, &req.reason).await {
            FenceAnswer::Fenced(resp) => {
                run.r.old_primary_reached = true;
                if let Some(w) = resp.written.iter().find(|w| w.stream == stream.as_str()) {
                    run.r.known_loss_bytes = w.position.saturating_sub(run.r.durable_position);
                }
                run.done(Step::FenceOldPrimary);
            }
            FenceAnswer::NotReached(e) => {
                run.r
                    .warnings
                    .push(format!("old primary not reached to fence it: {e}"));
                run.warned(Step::FenceOldPrimary, false);
            }
            FenceAnswer::Unknown(e) => {
                tracing::warn!(
                    %stream,
                    epoch = next.epoch,
                    error = %e,
                    "the fence request went out but no answer came: the old primary may have \
                     fenced itself or not; it cannot ship to this node at the old epoch, and it \
                     fences itself when it meets the new one"
                );
                run.r
                    .warnings
                    .push(format!("old primary not reached to fence it: {e}"));
                run.warned(Step::FenceOldPrimary, true);
            }
        },
    }

    // 7. promote hook
    let outcome = hooks::run_configured(
        node,
        &stream,
        "promote",
        next.epoch,
        "primary",
        Some(run.r.durable_position),
    )
    .await;
    run.r.hook_report = outcome.summary("promote");
    crate::ops::audit_hook(node, &stream, &who, next.epoch, &run.r.hook_report);
    if outcome.failed() {
        run.warned(Step::PromoteHook, false);
    } else {
        run.done(Step::PromoteHook);
    }
    run.r
}

/// "may be lost: LSN A (timeline T) up to B (timeline U)".
fn loss_range(r: &pb::FailoverResponse) -> String {
    let lsn = |l: u64| drd_core::pg::lsn::Lsn(l).to_string();
    if r.primary_last_lsn == 0 {
        return format!(
            "the DR copy ends at LSN {} (timeline {}); the primary's last written LSN is unknown",
            lsn(r.durable_lsn),
            r.durable_timeline
        );
    }
    if (r.primary_last_timeline, r.primary_last_lsn) <= (r.durable_timeline, r.durable_lsn) {
        return format!(
            "no WAL lost: the DR copy ends at LSN {} (timeline {}), at or past the primary's last \
             written LSN {} (timeline {})",
            lsn(r.durable_lsn),
            r.durable_timeline,
            lsn(r.primary_last_lsn),
            r.primary_last_timeline
        );
    }
    format!(
        "WAL that may be lost: from LSN {} (timeline {}), where the DR copy ends, up to LSN {} \
         (timeline {}), the primary's last written position as last heard",
        lsn(r.durable_lsn),
        r.durable_timeline,
        lsn(r.primary_last_lsn),
        r.primary_last_timeline
    )
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "(unknown)"
    } else {
        s
    }
}

/// The old primary's answer to the fence request.
enum FenceAnswer {
    /// It answered: it fenced itself for the stream (or was not its
    /// primary any more).
    Fenced(pb::FenceResponse),
    /// No connection (the request never went out), or it refused the
    /// request: it did not fence itself at our word.
    NotReached(String),
    /// The request went out and no answer came (a timeout, a broken
    /// connection): it may have fenced itself or not.
    Unknown(String),
}

/// Asks the old primary to fence itself for `cfg`'s stream (its other
/// streams are not this failover's business). Connecting and the call
/// share one `FENCE_TIMEOUT`.
async fn fence_old_primary(
    node: &Node,
    cfg: &crate::config::StreamConfig,
    epoch: u64,
    reason: &str,
) -> FenceAnswer {
    let deadline = tokio::time::Instant::now() + FENCE_TIMEOUT;
    let no_answer = || format!("no answer within {FENCE_TIMEOUT:?}");
    let mut c = match tokio::time::timeout_at(deadline, peer::connect_for_calls(node, cfg)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return FenceAnswer::NotReached(e),
        Err(_) => return FenceAnswer::NotReached(no_answer()),
    };
    let call = c.fence(pb::FenceRequest {
        from_node: node.config.node_id.to_string(),
        epoch,
        reason: reason.to_string(),
        stream: cfg.name.to_string(),
    });
    match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(r)) => FenceAnswer::Fenced(r.into_inner()),
        // The transport's codes: the request may have been delivered.
        Ok(Err(s))
            if matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
            ) =>
        {
            FenceAnswer::Unknown(s.message().to_string())
        }
        // Its own refusal (e.g. a stream name it does not take).
        Ok(Err(s)) => FenceAnswer::NotReached(s.message().to_string()),
        Err(_) => FenceAnswer::Unknown(no_answer()),
    }
}
