//! `drctl switchover`: the planned change with zero loss, run at the
//! primary. Steps, each named in the report:
//!
//! 1. preflight — the replica answers and is at our epoch;
//! 2. pre-switchover hook — stop writes at the database;
//! 3. drain — wait for lag 0 with the source no longer growing;
//! 4. verify — the hash chain agrees at our last sealed segment (so every
//!    sealed segment does) and the active segment's prefix matches by
//!    SHA-256;
//! 5. promote replica — it runs its promote hook, then becomes primary;
//! 6. demote — this node closes its log at the fork and becomes a replica.
//!
//! The order and what a failure means are drd-core's step machine
//! (`drd_core::switchover`): a failure before the replica is promoted rolls
//! back (roles stay as they were and the abort hook lets writes resume); a
//! failure to demote this node after the promotion fences it instead —
//! writes stay stopped, since the other node is primary now (before, it
//! rolled back and let a second primary's database take COMMITs that the
//! rejoin would then quarantine).

use crate::hooks;
use crate::locks::LockExt;
use crate::node::Node;
use crate::node::StreamRole;
use crate::ops::{fork, logcmp, peer, Caller};
use crate::storage::catalog::{AuditRecord, Role, Txn};
use drd_core::switchover::{OnFailure, Step, Switchover};
use drd_proto::{pb, SegmentName, StreamName};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default time to wait for the replica to drain.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The source must stay unchanged this long at lag 0 to count as drained.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

struct Run<'a> {
    node: &'a Arc<Node>,
    /// The stream switched over, and its role here (the node's other
    /// streams keep theirs).
    stream: StreamName,
    role: Arc<StreamRole>,
    who: &'a Caller,
    reason: String,
    r: pb::SwitchoverResponse,
    /// This attempt's id (its start, unix ms): `pre_switchover` and
    /// `abort_switchover` run once per attempt, since they run before the
    /// epoch changes and a failed switchover may be tried again at the same
    /// epoch. Only the hook's run record uses it; `DRD_EPOCH` is the epoch.
    attempt: u64,
    /// drd-core's step machine: which step comes next, and what a failure
    /// at each one means.
    sw: Switchover,
}

impl Run<'_> {
    /// Records that `step` succeeded (the code below runs them in order).
    fn done(&mut self, step: Step) {
        if let Err(e) = self.sw.succeeded(step) {
            tracing::error!(error = %e, "switchover steps out of order (a bug in drd)");
        }
    }

    fn step(&mut self, s: String) {
        tracing::warn!(step = %s, "switchover");
        self.r.steps.push(s);
    }

    /// `pre_switchover` / `abort_switchover`: this node is still primary at
    /// its current epoch.
    async fn attempt_hook(&self, name: &str) -> hooks::HookOutcome {
        let epoch = self.role.state().epoch;
        hooks::run_configured_for_attempt(
            self.node,
            &self.stream,
            name,
            self.attempt,
            epoch,
            "primary",
        )
        .await
    }

    /// After `step` failed: rolls back (writes may resume, roles unchanged)
    /// or, once the replica was promoted, fences this node (drd-core's
    /// `Switchover::failed` decides).
    async fn fail(mut self, step: Step, error: String) -> pb::SwitchoverResponse {
        let pre_hook_ran = match self.sw.failed(step) {
            OnFailure::RollBack { resume_writes } => resume_writes,
            OnFailure::Fence => return self.fence_after_promotion(step, error).await,
        };
        let step = step.name();
        self.node.hold_shipping(&self.stream, false);
        if pre_hook_ran {
            let o = self.attempt_hook("abort_switchover").await;
            self.step(format!("rollback: {}", o.summary("abort_switchover")));
        }
        let state = self.role.state();
        self.step(format!(
            "rolled back: this node stays {} of the stream at epoch {}",
            state.role.as_str(),
            state.epoch
        ));
        let mut txn = Txn::default();
        txn.audit(AuditRecord {
            user: self.who.user.clone(),
            origin: self.who.origin.clone(),
            reason: self.reason.clone(),
            detail: format!("step {step} failed: {error}"),
            stream: self.stream.to_string(),
            ..AuditRecord::role_change("switchover-rolled-back", &state, &state)
        });
        let _ = self.node.catalog.commit_txn(txn);
        self.r.ok = false;
        self.r.failed_step = step.to_string();
        self.r.error = error;
        self.r
    }

    /// The replica is primary at the new epoch but this node could not
    /// demote itself: it fences itself (shipping stops for good, writes
    /// stay stopped) and the operator runs `drctl rejoin`.
    async fn fence_after_promotion(mut self, step: Step, error: String) -> pb::SwitchoverResponse {
        let new_epoch = self.r.new_epoch;
        let reason = format!(
            "switchover: the replica was promoted at epoch {new_epoch}, but this node could \
             not demote itself ({error}); writes stay stopped — run `drctl rejoin --stream {}`",
            self.stream
        );
        let state = self.role.state();
        let fenced = {
            let _gate = self.role.transition.write().await;
            let state = self.role.state();
            match crate::roles::fence(&state, new_epoch, &reason) {
                Some(next) => {
                    let mut txn = Txn::default();
                    txn.audit(AuditRecord {
                        user: self.who.user.clone(),
                        origin: self.who.origin.clone(),
                        reason: self.reason.clone(),
                        detail: format!("step {} failed: {error}", step.name()),
                        ..AuditRecord::role_change("switchover-fenced", &state, &next)
                    });
                    self.node.commit_role(&self.stream, next, txn).map(|_| ())
                }
                None => Ok(()),
            }
        };
        self.node.hold_shipping(&self.stream, false);
        match fenced {
            Ok(()) => self.step(format!(
                "fenced: this node stops as primary at epoch {} (the replica is primary at \
                 epoch {new_epoch}); writes stay stopped — run `drctl rejoin`",
                state.epoch
            )),
            Err(e) => self.step(format!(
                "could not record the fence either ({e:#}); stop this node's database and \
                 drd, then run `drctl rejoin`"
            )),
        }
        self.r.ok = false;
        self.r.failed_step = step.name().to_string();
        self.r.error = error;
        self.r
    }
}

pub async fn switchover(
    node: &Arc<Node>,
    req: pb::SwitchoverRequest,
    who: Caller,
) -> pb::SwitchoverResponse {
    let failed = |error: String| pb::SwitchoverResponse {
        dry_run: req.dry_run,
        failed_step: Step::Preflight.name().to_string(),
        error,
        ..Default::default()
    };
    let stream = match crate::ops::failover::pick_stream(node, &req.stream) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let role = match node.stream_role(&stream) {
        Ok(r) => r,
        Err(e) => return failed(format!("{e:#}")),
    };
    let mut run = Run {
        node,
        stream: stream.clone(),
        role: role.clone(),
        who: &who,
        reason: req.reason.clone(),
        r: pb::SwitchoverResponse {
            dry_run: req.dry_run,
            stream: stream.to_string(),
            ..Default::default()
        },
        attempt: crate::clock::unix_ms(),
        sw: Switchover::new(),
    };
    let state = role.state();
    if state.role != Role::Primary {
        return run
            .fail(
                Step::Preflight,
                format!(
                    "{stream} is {} on this node; run switchover on its current primary",
                    state.role.as_str()
                ),
            )
            .await;
    }
    let (Some(cfg), Some(shipper)) = (
        node.config.streams.iter().find(|c| c.name == stream),
        node.shipper(&stream).cloned(),
    ) else {
        return run
            .fail(
                Step::Preflight,
                format!("{stream} has no [[stream]] in this node's config: nothing ships it"),
            )
            .await;
    };
    // Listed in `Status` while it runs, for `drctl switchover`'s progress.
    let progress = node
        .operations
        .start("switchover", cfg.name.as_str(), &req.progress_token);
    progress.set_phase("preflight: asking the replica");

    // 1. preflight
    let mut client = match peer::connect_for_calls(node, cfg).await {
        Ok(c) => c,
        Err(e) => return run.fail(Step::Preflight, e).await,
    };
    let info = match client
        .log_info(pb::LogInfoRequest {
            stream: cfg.name.to_string(),
            ..Default::default()
        })
        .await
    {
        Ok(i) => i.into_inner(),
        Err(s) => {
            return run
                .fail(
                    Step::Preflight,
                    format!("the replica did not answer: {}", s.message()),
                )
                .await
        }
    };
    if info.role != pb::Role::Replica as i32 || info.epoch != state.epoch {
        return run
            .fail(
                Step::Preflight,
                format!(
                    "{} is not a replica at epoch {} (role {}, epoch {})",
                    info.node_id,
                    state.epoch,
                    crate::display::role_name(info.role),
                    info.epoch
                ),
            )
            .await;
    }
    run.r.new_primary = info.node_id.clone();
    run.step(format!(
        "preflight: {} is a replica at epoch {}",
        info.node_id, info.epoch
    ));
    if req.dry_run {
        run.step("dry run: would run the pre_switchover hook, drain to lag 0, verify checksums, promote the replica, demote this node".into());
        run.r.ok = true;
        return run.r;
    }

    run.done(Step::Preflight);

    // 2. stop writes
    progress.set_phase("pre_switchover hook: stopping writes");
    let o = run.attempt_hook("pre_switchover").await;
    run.step(o.summary("pre_switchover"));
    if o.failed() {
        return run
            .fail(Step::StopWrites, o.summary("pre_switchover"))
            .await;
    }

    run.done(Step::StopWrites);

    // 3. drain
    let timeout = if req.drain_timeout_seconds > 0.0 {
        Duration::from_secs_f64(req.drain_timeout_seconds)
    } else {
        DEFAULT_DRAIN_TIMEOUT
    };
    let deadline = Instant::now() + timeout;
    let mut quiet_since: Option<(Instant, u64)> = None;
    progress.set_phase("drain: waiting for lag 0");
    // The largest lag seen since the drain began: progress counts the
    // bytes drained out of it.
    let mut drain_total = 0u64;
    let (fork_position, segment, start) = loop {
        let v = shipper.view(Instant::now());
        drain_total = drain_total.max(v.lag_bytes);
        progress.set_totals(drain_total, 0);
        progress.set_done(drain_total.saturating_sub(v.lag_bytes), 0);
        let (seg, start, recording) = {
            let st = shipper.state.locked();
            (
                st.current_segment.clone(),
                st.current_start,
                st.recording_seal,
            )
        };
        // An empty `seg`: nothing written since this node's own fork; its
        // log ends with a sealed segment and the fork is that end. Our own
        // record of the last seal must be in the catalog before step 4
        // compares the two logs.
        if v.connected && v.lag_bytes == 0 && !recording {
            match quiet_since {
                Some((t, pos)) if pos == v.written_position && t.elapsed() >= DRAIN_QUIET => {
                    break (v.written_position, seg, start)
                }
                Some((_, pos)) if pos == v.written_position => {}
                _ => quiet_since = Some((Instant::now(), v.written_position)),
            }
        } else {
            quiet_since = None;
        }
        if Instant::now() > deadline {
            return run
                .fail(
                    Step::Drain,
                    format!(
                        "lag did not reach 0 with writes stopped within {timeout:?} (lag {} bytes, connected {})",
                        v.lag_bytes, v.connected
                    ),
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    run.r.fork_position = fork_position;
    run.step(format!("drain: lag 0 at position {fork_position}"));
    run.done(Step::Drain);

    // 4. verify: compare the logs at our last sealed segment (equal hash
    // chain values there mean every sealed segment up to it agrees), then
    // the active segment's prefix byte for byte by SHA-256. Two bounded
    // lookups, however long the log.
    progress.set_phase("verify: comparing the logs with the replica");
    let ours = match node.catalog.last_sealed(&cfg.name) {
        Ok(r) => r,
        Err(e) => return run.fail(Step::Verify, e.to_string()).await,
    };
    let ours = match ours.as_ref().map(logcmp::Rec::from_record).transpose() {
        Ok(r) => r,
        Err(e) => return run.fail(Step::Verify, format!("our own record: {e}")).await,
    };
    let theirs = match client
        .log_info(pb::LogInfoRequest {
            stream: cfg.name.to_string(),
            hash_tail: true,
            lookup_segment: ours
                .as_ref()
                .map(|r| r.name.to_string())
                .unwrap_or_default(),
            ..Default::default()
        })
        .await
    {
        Ok(i) => i.into_inner(),
        Err(s) => return run.fail(Step::Verify, s.message().to_string()).await,
    };
    let theirs =
        match logcmp::PeerLog::from_response(&theirs, ours.as_ref().map(|r| r.name.as_str())) {
            Ok(t) => t,
            Err(e) => {
                let e = format!("the replica's answer: {e}");
                return run.fail(Step::Verify, e).await;
            }
        };
    let sealed = match logcmp::check_last_sealed(ours.as_ref(), &theirs) {
        Ok(a) => a,
        Err(e) => return run.fail(Step::Verify, e).await,
    };
    let active_len = if segment.is_empty() {
        0
    } else {
        // `start` may come from the replica's Welcome: checked, not trusted.
        match fork_position.checked_sub(start) {
            Some(len) => len,
            None => {
                let e = format!(
                    "active segment {segment} starts at position {start}, past the drained \
                     position {fork_position}: the two logs disagree"
                );
                return run.fail(Step::Verify, e).await;
            }
        }
    };
    let our_active = if segment.is_empty() {
        String::new()
    } else {
        match fork::hash_prefix(&cfg.wal_dir.join(&segment), active_len) {
            Ok(h) => h,
            Err(e) => return run.fail(Step::Verify, format!("{e:#}")).await,
        }
    };
    let their_tail = theirs.tail.as_ref().filter(|t| t.name.as_str() == segment);
    let active_checked = match their_tail {
        Some(t) if t.start == start && t.size == active_len && t.sha256 == our_active => true,
        None if active_len == 0 => false,
        t => {
            let theirs = match t {
                Some(t) => format!(
                    "start {} with {} bytes and sha256 {}",
                    t.start, t.size, t.sha256
                ),
                None => format!(
                    "no such segment (its last is {})",
                    theirs
                        .tail
                        .as_ref()
                        .map_or("none".to_string(), |t| t.name.to_string())
                ),
            };
            let e = format!(
                "active segment {segment}: start {start} with {active_len} bytes and sha256 \
                 {our_active} here, {theirs} at the replica"
            );
            return run.fail(Step::Verify, e).await;
        }
    };
    let sealed_report = match &sealed {
        Some(a) => a.to_string(),
        None => "no sealed segment here yet".to_string(),
    };
    run.step(if segment.is_empty() {
        format!("verify: {sealed_report} (nothing written since the last fork)")
    } else if active_checked {
        format!("verify: {sealed_report}; the active {segment} matches by SHA-256 at {active_len} bytes")
    } else {
        format!("verify: {sealed_report}; the active {segment} is still empty")
    });
    let verified = format!("{sealed_report}, active segment {active_len} bytes");

    run.done(Step::Verify);

    progress.set_phase("promote: the replica takes over");
    // 5. promote the replica. Hold our shipping first: once the replica is
    // primary at the new epoch, neither side may read the other's epoch as
    // a reason to fence until this node has demoted itself.
    node.hold_shipping(&stream, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while shipper.state.locked().connected {
        if Instant::now() > deadline {
            let e = "shipping did not stop within 10 s".to_string();
            return run.fail(Step::Promote, e).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let promoted = client
        .promote(pb::PromoteRequest {
            stream: cfg.name.to_string(),
            from_node: node.config.node_id.to_string(),
            epoch: state.epoch,
            fork_position,
            reason: req.reason.clone(),
            requested_by: who.user.clone(),
        })
        .await;
    let new_epoch = match promoted {
        Ok(p) => {
            let p = p.into_inner();
            run.step(format!(
                "promote: {} is primary at epoch {} ({})",
                info.node_id, p.new_epoch, p.hook_report
            ));
            p.new_epoch
        }
        Err(s) => {
            return run
                .fail(Step::Promote, format!("{}: {}", info.node_id, s.message()))
                .await
        }
    };
    run.r.new_epoch = new_epoch;
    run.done(Step::Promote);

    // 6. demote this node
    progress.set_phase("demote: this node becomes a replica");
    let seg = match segment.is_empty() {
        true => None,
        false => match SegmentName::new(segment.clone()) {
            Ok(s) => Some(s),
            Err(e) => return run.fail(Step::Demote, e.to_string()).await,
        },
    };
    // The transition gate is held only for the demotion itself: a failure
    // is handled after it is released (the fence takes it again).
    let demoted: Result<(), String> = {
        let _gate = role.transition.write().await;
        let state = role.state();
        match crate::roles::demote(&state, new_epoch) {
            Err(e) => Err(e.to_string()),
            Ok(next) => {
                let mut txn = Txn::default();
                let closed = match &seg {
                    Some(seg) => fork::close_source_log(
                        node,
                        cfg,
                        seg,
                        start,
                        fork_position,
                        new_epoch,
                        &mut txn,
                    ),
                    None => {
                        fork::mark_fork_at_end(node, &cfg.name, fork_position, new_epoch, &mut txn)
                    }
                };
                match closed {
                    Err(e) => Err(format!("{e:#}")),
                    Ok(_) => {
                        txn.audit(AuditRecord {
                            user: who.user.clone(),
                            origin: who.origin.clone(),
                            reason: req.reason.clone(),
                            detail: format!(
                                "{} promoted; fork at {fork_position} in {segment}; verified: {verified}; zero bytes lost",
                                info.node_id
                            ),
                            ..AuditRecord::role_change("switchover", &state, &next)
                        });
                        node.commit_role(&stream, next, txn)
                            .map(|_| ())
                            .map_err(|e| format!("{e:#}"))
                    }
                }
            }
        }
    };
    if let Err(e) = demoted {
        return run.fail(Step::Demote, e).await;
    }
    run.step(format!(
        "demote: this node is a replica of {} at epoch {new_epoch}",
        info.node_id
    ));
    run.done(Step::Demote);
    let o = hooks::run_configured(
        node,
        &stream,
        "demote",
        new_epoch,
        "replica",
        Some(fork_position),
    )
    .await;
    run.step(o.summary("demote"));
    crate::ops::audit_hook(node, &stream, &who, new_epoch, &o.summary("demote"));
    run.r.ok = true;
    run.r
}
