//! `drctl drill` (issue 21): a DR drill at the DR site, without touching
//! replication or the live DR database.
//!
//! 1. **snapshot** the verified log: durable position, the primary's last
//!    known written position, the hash-chain head, the newest sealed
//!    segment (and the LSNs, for a PostgreSQL stream);
//! 2. **verify** every stored sealed segment at rest (`drctl verify`'s
//!    walk); a broken copy fails the drill here, naming the segment, and
//!    nothing is restored from it;
//! 3. **restore** into a scratch directory through `[hooks] drill_restore`
//!    (the operator's procedure), then **check** with `drill_check` and
//!    **teardown** with `drill_teardown` (always, once the restore began);
//! 4. measure RTO (drill start → check succeeded) and RPO (the lag at the
//!    snapshot, and the restored LSN's distance from the primary's);
//! 5. write the report (JSON, HTML), seal it with the node's mTLS key,
//!    keep the files under `{data_dir}/drills/STREAM/ID/`, append the
//!    drill to the history, set the metrics.
//!
//! The drill runs in a task of its own: a client that goes away does not
//! cut it short (the scratch database would be left running).

use crate::caller::Caller;
use crate::hooks::{self, HookEnv, HookOutcome};
use crate::node::Node;
use crate::ops::failover::pick_stream;
use crate::storage::catalog::Role;
use crate::storage::drills::{self, DrillEntry};
use drd_client::drill::{
    self, clip_output, hook_value, seal, Outcome, Problem, Report, Rpo, Rto, Snapshot, Step,
    Verdict, Verify, REPORT_FORMAT, REPORT_HTML, REPORT_JSON, REPORT_SIG,
};
use drd_core::pg::lsn::Lsn;
use drd_proto::{pb, StreamName};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;

/// Runs a drill of `req.stream` and answers with its sealed report.
pub async fn drill(
    node: Arc<Node>,
    req: pb::DrillRequest,
    who: Caller,
) -> Result<pb::DrillResponse, Status> {
    let stream = pick_stream(&node, &req.stream).map_err(Status::invalid_argument)?;
    preflight(&node, &stream)?;
    // One drill at a time per stream: two would share nothing but the
    // DR standby they back up from, and their figures would mix.
    if !crate::locks::LockExt::locked(&node.drills).insert(stream.clone()) {
        return Err(Status::failed_precondition(format!(
            "a drill of {stream} is already running on this node; wait for it to end \
             (`drctl status` shows its progress)"
        )));
    }
    let task_node = node.clone();
    let task_stream = stream.clone();
    let run = tokio::spawn(async move {
        let r = run_drill(&task_node, &task_stream, &req, &who).await;
        crate::locks::LockExt::locked(&task_node.drills).remove(&task_stream);
        r
    });
    run.await
        .map_err(|e| Status::internal(format!("the drill task failed: {e}")))?
}

/// What must hold before a drill starts; refused with what to do.
fn preflight(node: &Node, stream: &StreamName) -> Result<(), Status> {
    let state = node
        .stream_role(stream)
        .map_err(|e| Status::failed_precondition(format!("{e:#}")))?
        .state();
    if state.role != Role::Replica {
        return Err(Status::failed_precondition(format!(
            "{stream} is {} on this node: a drill runs at the DR site, where the stream is a \
             replica (run `drctl drill` there)",
            state.role.as_str()
        )));
    }
    if node.config.hooks.drill_restore.is_none() {
        return Err(Status::failed_precondition(
            "no `[hooks] drill_restore` in this node's config: a drill restores through the \
             operator's procedure (see deploy/drill/README.md; deploy/postgresql/drill-hook.sh \
             does it for PostgreSQL)",
        ));
    }
    if node.tls.is_none() {
        return Err(Status::failed_precondition(
            "this node has no [tls] material: drill reports are signed with the node's mTLS \
             key, so a drill needs one (see `drctl certs init`)",
        ));
    }
    Ok(())
}

/// The drill's clock: every step's start is an offset from the drill's.
struct Clock {
    started: Instant,
    started_ms: u64,
}

impl Clock {
    fn after_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

async fn run_drill(
    node: &Arc<Node>,
    stream: &StreamName,
    req: &pb::DrillRequest,
    who: &Caller,
) -> Result<pb::DrillResponse, Status> {
    let clock = Clock {
        started: Instant::now(),
        started_ms: crate::clock::unix_ms(),
    };
    let progress = node
        .operations
        .start("drill", stream.as_str(), &req.progress_token);
    let mut report = Report {
        format: REPORT_FORMAT,
        id: drill::drill_id(stream.as_str(), clock.started_ms),
        stream: stream.to_string(),
        node_id: node.config.node_id.to_string(),
        drd_version: drd_client::version::VERSION_LINE.to_string(),
        user: who.user.clone(),
        origin: who.origin.clone(),
        reason: req.reason.clone(),
        started_at_ms: clock.started_ms,
        lag_bucket_seconds: crate::laghistory::BUCKET_MS / 1000,
        ..Default::default()
    };
    tracing::warn!(%stream, id = %report.id, "drill: starting");

    // 1. snapshot
    progress.set_phase("snapshot of the verified log");
    let at = clock.after_ms();
    report.snapshot = snapshot(node, stream)?;
    report.primary = node
        .catalog
        .stream_meta(stream)
        .ok()
        .and_then(|m| m.last_primary)
        .unwrap_or_default();
    report.steps.push(Step {
        name: "snapshot".into(),
        started_after_ms: at,
        duration_ms: clock.after_ms().saturating_sub(at),
        outcome: Outcome::Passed,
        summary: format!(
            "durable position {} ({} sealed segments, newest {}); the primary had written {}",
            report.snapshot.durable_position,
            report.snapshot.sealed_segments,
            or_none(&report.snapshot.last_segment),
            report.snapshot.primary_written_position
        ),
        ..Default::default()
    });

    // 2. verify at rest
    progress.set_phase("verifying every stored segment");
    let at = clock.after_ms();
    let verified = {
        let node = node.clone();
        let req = pb::VerifyRequest {
            stream: stream.to_string(),
            progress_token: String::new(),
        };
        tokio::task::spawn_blocking(move || crate::ops::verify::verify(&node, req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
    };
    let verify_ok = match verified {
        Ok(v) => {
            report.verify = Verify {
                segments_checked: v.segments_checked,
                bytes_checked: v.bytes_checked,
                problems_total: v.problems_total,
                problems: v
                    .problems
                    .into_iter()
                    .map(|p| Problem {
                        segment: p.segment,
                        problem: p.problem,
                    })
                    .collect(),
            };
            let ok = report.verify.problems_total == 0;
            report.steps.push(Step {
                name: "verify".into(),
                started_after_ms: at,
                duration_ms: clock.after_ms().saturating_sub(at),
                outcome: if ok { Outcome::Passed } else { Outcome::Failed },
                summary: match report.verify.problems.first() {
                    None => format!(
                        "{} sealed segments ({} bytes) match their checksums and the hash chain",
                        report.verify.segments_checked, report.verify.bytes_checked
                    ),
                    Some(p) => format!(
                        "{} problem(s); the first at segment {}: {}",
                        report.verify.problems_total, p.segment, p.problem
                    ),
                },
                ..Default::default()
            });
            ok
        }
        Err(e) => {
            report.steps.push(Step {
                name: "verify".into(),
                started_after_ms: at,
                duration_ms: clock.after_ms().saturating_sub(at),
                outcome: Outcome::Failed,
                summary: format!("the verification could not run: {}", e.message()),
                ..Default::default()
            });
            false
        }
    };

    // 3. restore, check, teardown
    let scratch = scratch_dir(node, &report.id);
    report.scratch_dir = scratch.display().to_string();
    if verify_ok {
        restore_check_teardown(node, stream, &clock, &scratch, &progress, &mut report).await;
    } else {
        for name in ["restore", "check", "teardown"] {
            report.steps.push(Step {
                name: name.into(),
                started_after_ms: clock.after_ms(),
                outcome: Outcome::Skipped,
                summary: "not run: the DR copy failed verification, so nothing was restored \
                          from it"
                    .into(),
                ..Default::default()
            });
        }
        report.scratch_removed = !scratch.exists();
    }

    // 4. RTO and RPO
    let rto = report
        .step("check")
        .filter(|s| s.outcome == Outcome::Passed)
        .map(|s| s.started_after_ms.saturating_add(s.duration_ms) as f64 / 1000.0);
    report.rto = Rto {
        seconds: rto,
        method: "wall-clock time on the DR node from the drill's start (before the snapshot) \
                 to the moment the check hook succeeded against the restored scratch database; \
                 it includes verifying the copy at rest, the base backup and the replay of the \
                 WAL drd holds"
            .into(),
    };
    report.rpo = rpo(&report.snapshot, report.step("restore"));
    report.verdict = verdict(&report);
    report.finished_at_ms = crate::clock::unix_ms();
    let now_ms = report.finished_at_ms;
    report.lag_history = node
        .lag_history
        .points(&node.catalog, stream, now_ms)
        .unwrap_or_default();
    // The snapshot itself ends the history: the lag at the moment the RPO
    // was measured.
    let snap = &report.snapshot;
    if report
        .lag_history
        .last()
        .is_none_or(|l| l.at_ms < snap.taken_at_ms)
    {
        report.lag_history.push(drill::LagPoint {
            at_ms: snap.taken_at_ms,
            max_lag_seconds: snap.lag_seconds,
            max_lag_bytes: snap.lag_bytes,
            connected: snap.primary_connected,
        });
    }

    // 5. seal, keep, record
    progress.set_phase("writing the signed report");
    let stored = seal_and_store(node, stream, &report)?;
    let entry = drills::append(&node.catalog, stream, history_entry(&report, &stored))
        .map_err(|e| Status::internal(format!("cannot record the drill in the history: {e}")))?;
    crate::metrics::drill_result(
        &entry,
        report.verdict.passed.then_some(report.finished_at_ms),
        true,
    );
    if report.verdict.passed {
        tracing::warn!(%stream, id = %report.id, rto = ?report.rto.seconds, rpo_bytes = report.rpo.bytes, "drill: passed");
    } else {
        tracing::error!(%stream, id = %report.id, why = %entry.why, "drill: FAILED");
    }
    Ok(pb::DrillResponse {
        id: report.id.clone(),
        passed: report.verdict.passed,
        report_json: stored.json,
        report_html: stored.html,
        report_sig: stored.sig,
        stored_in: stored.dir.display().to_string(),
    })
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "none"
    } else {
        s
    }
}

/// What the DR copy holds now.
fn snapshot(node: &Node, stream: &StreamName) -> Result<Snapshot, Status> {
    let internal = |e: crate::storage::catalog::CatalogError| Status::internal(e.to_string());
    let slot = node
        .receive_slot(stream)
        .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
    let view = slot.view(Instant::now());
    let meta = node.catalog.stream_meta(stream).map_err(internal)?;
    let last = node.catalog.last_sealed(stream).map_err(internal)?;
    let wal_end = crate::walpos::wal_end(node, stream);
    let source = (meta.source_lsn != 0).then_some((meta.source_timeline, meta.source_lsn));
    let taken_at_ms = crate::clock::unix_ms();
    Ok(Snapshot {
        taken_at_ms,
        durable_position: view.durable_position,
        durable_at_ms: meta.durable_at_ms,
        primary_written_position: view.written_position,
        primary_heard_at_ms: if view.connected { taken_at_ms } else { 0 },
        primary_connected: view.connected,
        lag_bytes: view.lag_bytes,
        lag_seconds: view.lag_seconds,
        chain_head: last
            .as_ref()
            .and_then(|r| r.chain.clone())
            .unwrap_or_default(),
        last_segment: last.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
        sealed_segments: view.sealed_segments,
        durable_lsn: wal_end.map(|(_, l)| l.to_string()),
        durable_timeline: wal_end.map(|(t, _)| t),
        primary_lsn: source.map(|(_, l)| Lsn(l).to_string()),
        primary_timeline: source.map(|(t, _)| t),
    })
}

/// `{drill_scratch_dir or data_dir/drill-scratch}/ID`.
fn scratch_dir(node: &Node, id: &str) -> PathBuf {
    node.config
        .hooks
        .drill_scratch_dir
        .clone()
        .unwrap_or_else(|| node.config.data_dir.join("drill-scratch"))
        .join(id)
}

/// Runs the three hooks; teardown whenever the restore began.
async fn restore_check_teardown(
    node: &Node,
    stream: &StreamName,
    clock: &Clock,
    scratch: &Path,
    progress: &crate::progress::Running,
    report: &mut Report,
) {
    let h = &node.config.hooks;
    let timeout = Duration::from_secs(h.drill_timeout_seconds);
    if let Err(e) = make_scratch(scratch) {
        report.steps.push(Step {
            name: "restore".into(),
            started_after_ms: clock.after_ms(),
            outcome: Outcome::Failed,
            summary: format!(
                "cannot create the scratch directory {}: {e}",
                scratch.display()
            ),
            ..Default::default()
        });
        report.scratch_removed = !scratch.exists();
        return;
    }
    let epoch = node.role_of(stream).map_or(0, |r| r.epoch);
    let env = HookEnv {
        node_id: node.config.node_id.as_str(),
        stream,
        epoch,
        role: "replica",
        fork_position: None,
        fork_lsn: None,
        attempt: None,
    };
    let extra = [
        ("DRD_DRILL_ID", report.id.clone()),
        ("DRD_DRILL_DIR", scratch.display().to_string()),
        ("DRD_DRILL_SEGMENT", report.snapshot.last_segment.clone()),
        (
            "DRD_DRILL_LSN",
            report.snapshot.durable_lsn.clone().unwrap_or_default(),
        ),
        (
            "DRD_SOCKET",
            node.config.control_socket.display().to_string(),
        ),
    ];
    let run_hook = |name: &'static str, command: Option<String>| {
        let env = &env;
        let extra = &extra;
        async move {
            let at = clock.after_ms();
            let Some(command) = command else {
                return Step {
                    name: name.trim_start_matches("drill_").into(),
                    started_after_ms: at,
                    outcome: Outcome::Skipped,
                    summary: format!("no `[hooks] {name}` configured"),
                    ..Default::default()
                };
            };
            let mut cmd = hooks::command_for(name, &command, env);
            for (k, v) in extra {
                cmd.env(k, v);
            }
            let outcome = hooks::execute(name, cmd, timeout, env).await;
            let (outcome, summary, output) = match outcome {
                HookOutcome::Succeeded { output } => {
                    (Outcome::Passed, format!("{name} hook succeeded"), output)
                }
                HookOutcome::Failed { reason, output } => (
                    Outcome::Failed,
                    format!("{name} hook failed: {reason}"),
                    output,
                ),
                // `execute` makes no claim, so neither happens here.
                HookOutcome::NotConfigured | HookOutcome::AlreadyRan => (
                    Outcome::Skipped,
                    format!("{name} hook not run"),
                    String::new(),
                ),
            };
            Step {
                name: name.trim_start_matches("drill_").into(),
                started_after_ms: at,
                duration_ms: clock.after_ms().saturating_sub(at),
                outcome,
                summary,
                command,
                output: clip_output(&output),
            }
        }
    };

    progress.set_phase("restoring into a scratch database (drill_restore hook)");
    let restore = run_hook("drill_restore", h.drill_restore.clone()).await;
    let restored = restore.outcome == Outcome::Passed;
    report.steps.push(restore);
    if restored {
        progress.set_phase("checking the scratch database (drill_check hook)");
        let check = run_hook("drill_check", h.drill_check.clone()).await;
        report.database_version = hook_value(&check.output, "version");
        report.steps.push(check);
    } else {
        report.steps.push(Step {
            name: "check".into(),
            started_after_ms: clock.after_ms(),
            outcome: Outcome::Skipped,
            summary: "not run: the restore failed".into(),
            ..Default::default()
        });
    }
    progress.set_phase("removing the scratch database (drill_teardown hook)");
    report
        .steps
        .push(run_hook("drill_teardown", h.drill_teardown.clone()).await);
    if let Err(e) = std::fs::remove_dir_all(scratch) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::error!(dir = %scratch.display(), error = %e, "drill: cannot remove the scratch directory");
        }
    }
    report.scratch_removed = !scratch.exists();
}

/// A fresh scratch directory, private to the drd user (it will hold a
/// copy of the database).
fn make_scratch(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// RPO at the snapshot, in drd's terms and, where the restore reported
/// where its replay ended, in PostgreSQL's.
fn rpo(snap: &Snapshot, restore: Option<&Step>) -> Rpo {
    let restored_lsn = restore.and_then(|s| hook_value(&s.output, "restored_lsn"));
    let gap = match (&snap.primary_lsn, &restored_lsn) {
        (Some(p), Some(r)) => match (p.parse::<Lsn>(), r.parse::<Lsn>()) {
            (Ok(p), Ok(r)) => Some(p.0.saturating_sub(r.0)),
            _ => None,
        },
        _ => None,
    };
    Rpo {
        bytes: snap.lag_bytes,
        seconds: snap.lag_seconds,
        restored_lsn,
        restored_lsn_gap_bytes: gap,
        method: "at the snapshot: the primary's written position as this node last heard it \
                 (keepalives and chunks) minus the DR copy's durable position, in bytes; in \
                 seconds, the time since the DR copy last held everything the primary had \
                 written (0 when caught up; never understated). Where the restore hook reported \
                 where replay ended, the primary's LSN minus that LSN"
            .into(),
    }
}

/// Passed when every step that had to run passed and nothing was left.
fn verdict(r: &Report) -> Verdict {
    let mut reasons = Vec::new();
    if let Some(p) = r.verify.problems.first() {
        reasons.push(format!(
            "the DR copy is damaged: segment {} {} ({} problem(s) in all)",
            p.segment, p.problem, r.verify.problems_total
        ));
    }
    for s in &r.steps {
        match (s.name.as_str(), s.outcome) {
            (_, Outcome::Failed) if s.name != "verify" || r.verify.problems.is_empty() => {
                reasons.push(format!("{}: {}", s.name, s.summary))
            }
            ("restore" | "check", Outcome::Skipped) if r.verify.problems.is_empty() => {
                reasons.push(format!("{}: {}", s.name, s.summary))
            }
            _ => {}
        }
    }
    if !r.scratch_removed {
        reasons.push(format!(
            "the scratch directory {} is still there after teardown",
            r.scratch_dir
        ));
    }
    Verdict {
        passed: reasons.is_empty(),
        reasons,
    }
}

/// The drill's files as stored.
struct Stored {
    dir: PathBuf,
    json: Vec<u8>,
    html: Vec<u8>,
    sig: Vec<u8>,
}

/// Renders, signs and writes the three files into
/// `{data_dir}/drills/STREAM/ID/`.
fn seal_and_store(node: &Node, stream: &StreamName, report: &Report) -> Result<Stored, Status> {
    let json = report.to_json();
    let html = drill::html::render(report).into_bytes();
    let Some(tls) = &node.tls else {
        return Err(Status::failed_precondition("no TLS material to sign with"));
    };
    let seal = seal::seal(
        tls,
        node.config.node_id.as_str(),
        crate::clock::unix_ms(),
        &[(REPORT_JSON, &json), (REPORT_HTML, &html)],
    )
    .map_err(|e| Status::internal(format!("cannot sign the drill report: {e}")))?;
    let sig = seal.to_json();
    let dir = node
        .config
        .data_dir
        .join("drills")
        .join(stream.as_str())
        .join(&report.id);
    write_files(
        &dir,
        &[
            (REPORT_JSON, &json),
            (REPORT_HTML, &html),
            (REPORT_SIG, &sig),
        ],
    )
    .map_err(|e| {
        Status::internal(format!(
            "cannot write the drill report into {}: {e}",
            dir.display()
        ))
    })?;
    Ok(Stored {
        dir,
        json,
        html,
        sig,
    })
}

/// Writes each file and fsyncs it and then the directory: the history
/// entry (synced) names these files, so they must be there after a crash.
fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> std::io::Result<()> {
    use std::io::Write;
    crate::storage::fsutil::create_dir_durable(dir)?;
    for (name, bytes) in files {
        let mut f = std::fs::File::create(dir.join(name))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    crate::storage::fsutil::fsync_dir(dir)
}

fn history_entry(r: &Report, stored: &Stored) -> DrillEntry {
    DrillEntry {
        id: r.id.clone(),
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
        passed: r.verdict.passed,
        rto_seconds: r.rto.seconds,
        rpo_bytes: r.rpo.bytes,
        rpo_seconds: r.rpo.seconds,
        user: r.user.clone(),
        reason: r.reason.clone(),
        why: r.verdict.reasons.first().cloned().unwrap_or_default(),
        report_sha256: hex::encode(Sha256::digest(&stored.json)),
        seal_sha256: hex::encode(Sha256::digest(&stored.sig)),
        stored_in: stored.dir.display().to_string(),
        ..Default::default()
    }
}

/// `drctl drill history`.
pub fn history(
    node: &Node,
    req: pb::DrillHistoryRequest,
) -> Result<pb::DrillHistoryResponse, Status> {
    let internal = |e: crate::storage::catalog::CatalogError| Status::internal(e.to_string());
    let limit = match req.limit {
        0 => 100,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    let streams = if req.stream.is_empty() {
        node.stream_names()
    } else {
        vec![StreamName::new(req.stream.as_str())
            .map_err(|e| Status::invalid_argument(e.to_string()))?]
    };
    let mut out = pb::DrillHistoryResponse {
        chain_ok: true,
        ..Default::default()
    };
    let mut all = Vec::new();
    for s in &streams {
        let check = drills::check_chain(&node.catalog, s).map_err(internal)?;
        out.total = out.total.saturating_add(check.entries);
        if let Some(p) = check.problem {
            out.chain_ok = false;
            if out.chain_problem.is_empty() {
                out.chain_problem = format!("{s}: {p}");
            }
        }
        all.extend(drills::newest(&node.catalog, s, limit).map_err(internal)?);
    }
    all.sort_by_key(|e| std::cmp::Reverse(e.started_at_ms));
    all.truncate(limit);
    out.drills = all.into_iter().map(pb_record).collect();
    Ok(out)
}

fn pb_record(e: DrillEntry) -> pb::DrillRecord {
    pb::DrillRecord {
        seq: e.seq,
        id: e.id,
        stream: e.stream,
        started_at_ms: e.started_at_ms,
        finished_at_ms: e.finished_at_ms,
        passed: e.passed,
        rto_seconds: e.rto_seconds.unwrap_or(-1.0),
        rpo_bytes: e.rpo_bytes,
        rpo_seconds: e.rpo_seconds,
        user: e.user,
        reason: e.reason,
        why: e.why,
        report_sha256: e.report_sha256,
        seal_sha256: e.seal_sha256,
        prev_hash: e.prev_hash,
        entry_hash: e.entry_hash,
        stored_in: e.stored_in,
    }
}

/// `drctl drill verify`'s questions to the node that signed a report.
pub fn check(node: &Node, req: pb::DrillCheckRequest) -> Result<pb::DrillCheckResponse, Status> {
    let internal = |e: crate::storage::catalog::CatalogError| Status::internal(e.to_string());
    let stream = StreamName::new(req.stream.as_str())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let recorded = drills::find_report(&node.catalog, &stream, &req.report_sha256)
        .map_err(internal)?
        .is_some();
    let mut out = pb::DrillCheckResponse {
        recorded,
        ..Default::default()
    };
    if req.segment.is_empty() {
        out.detail =
            "the report names no sealed segment (an empty log): no chain head to compare".into();
        return Ok(out);
    }
    let seg = drd_proto::SegmentName::new(req.segment.as_str())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    match node.catalog.segment(&stream, &seg).map_err(internal)? {
        Some(r) if r.pruned_at_ms.is_none() || r.chain.is_some() => {
            out.chain_at_segment = r.chain.unwrap_or_default();
            out.chain_matches =
                !out.chain_at_segment.is_empty() && out.chain_at_segment == req.chain_head;
            out.detail = if out.chain_matches {
                format!(
                    "this node's log holds chain head {} at segment {seg}",
                    req.chain_head
                )
            } else {
                format!(
                    "this node's log holds chain value {:?} at segment {seg}, the report says {}",
                    out.chain_at_segment, req.chain_head
                )
            };
        }
        _ => {
            out.detail = format!(
                "this node no longer holds segment {seg} (pruned by retention, or never held)"
            );
        }
    }
    Ok(out)
}

/// Tears down what a drill left when drd stopped in the middle of one (a
/// restart kills the hooks, not always the scratch server they started):
/// runs `drill_teardown` for every scratch directory left, then removes it.
pub async fn clean_leftovers(node: Arc<Node>) {
    let base = scratch_dir(&node, "x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(&base) else {
        return;
    };
    for dir in entries.filter_map(|e| Some(e.ok()?.path())) {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(stream) = id
            .rsplit_once('-')
            .and_then(|(s, _)| StreamName::new(s).ok())
        else {
            tracing::warn!(dir = %dir.display(), "drill scratch directory with an unexpected name: left alone");
            continue;
        };
        tracing::warn!(dir = %dir.display(), "a drill was cut short by a restart: tearing its scratch database down");
        if let Some(command) = &node.config.hooks.drill_teardown {
            let env = HookEnv {
                node_id: node.config.node_id.as_str(),
                stream: &stream,
                epoch: node.role_of(&stream).map_or(0, |r| r.epoch),
                role: "replica",
                fork_position: None,
                fork_lsn: None,
                attempt: None,
            };
            let mut cmd = hooks::command_for("drill_teardown", command, &env);
            cmd.env("DRD_DRILL_ID", &id)
                .env("DRD_DRILL_DIR", &dir)
                .env("DRD_SOCKET", &node.config.control_socket);
            let timeout = Duration::from_secs(node.config.hooks.drill_timeout_seconds);
            let outcome = hooks::execute("drill_teardown", cmd, timeout, &env).await;
            if outcome.failed() {
                tracing::error!(dir = %dir.display(), "{}: the scratch directory is kept", outcome.summary("drill_teardown"));
                continue;
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot remove a drill's scratch directory");
        }
    }
}

/// Samples the lag of every stream this node receives into the lag
/// history (what a drill report charts) until `cancel`.
pub async fn record_lag(node: Arc<Node>, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(crate::laghistory::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_ms = crate::clock::unix_ms();
        for v in node.stream_views() {
            if v.direction != "receiving" {
                continue;
            }
            let Ok(stream) = StreamName::new(v.name.as_str()) else {
                continue;
            };
            if let Err(e) = node.lag_history.sample(
                &node.catalog,
                &stream,
                v.lag_seconds,
                v.lag_bytes,
                v.connected,
                now_ms,
            ) {
                tracing::warn!(%stream, error = %e, "cannot record the lag history");
            }
        }
    }
}

/// Sets the drill gauges from the history when the daemon starts, so a
/// restart does not make "no drill ever passed" out of a passed one.
pub fn seed_metrics(node: &Node) {
    for s in node.stream_names() {
        let Ok(newest) = drills::newest(&node.catalog, &s, 1000) else {
            continue;
        };
        let Some(last) = newest.first() else {
            continue;
        };
        let last_success = newest.iter().find(|e| e.passed).map(|e| e.finished_at_ms);
        crate::metrics::drill_result(last, last_success, false);
    }
}
