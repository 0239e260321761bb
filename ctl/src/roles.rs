//! `drctl failover`, `switchover`, `rejoin`, `pause`/`resume`, `history`:
//! requests to the daemon and reports an on-call DBA can read at 3 a.m.
//! Switchover (its drain to lag 0) and rejoin (its move of the bytes past
//! the fork into quarantine) show progress on a terminal while they run.
//!
//! Roles belong to a stream at a node: each command acts on the stream
//! `--stream` names (or the node's only one), or with `--all` on every
//! stream it applies to — a whole site's failover — with one report that
//! lists each stream's result (exit 0 only if every one succeeded).

use crate::{print_json, progress, time};
use anyhow::Context;
use clap::Args;
use drd_client::config::DataLoss;
use drd_client::display::{bytes, lsn, table};
use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use serde_json::json;
use std::process::ExitCode;
use tonic::transport::Channel;

/// Which streams a role command acts on.
#[derive(Args, Clone)]
pub struct Target {
    /// The stream to act on (default: the node's only stream).
    #[arg(long, conflicts_with = "all")]
    pub stream: Option<String>,
    /// Every stream of this node the command applies to (failover: those it
    /// is a replica of; switchover: those it is primary of; rejoin: the
    /// fenced ones; pause/resume: all), with one report.
    #[arg(long)]
    pub all: bool,
}

/// Requests `--all` keeps in flight at once (each takes only its own
/// stream's role gate at the daemon; a dead old primary costs each
/// failover a few seconds of fence timeout, so they overlap).
const ALL_IN_FLIGHT: usize = 16;

#[derive(Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub target: Target,
    /// Go ahead even though the primary still looks alive.
    #[arg(long)]
    pub yes: bool,
    /// Run every check and print the plan and expected loss; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Refuse if more could be lost than this: bytes (16MiB) or time (30s).
    /// Default: `rpo_budget` from the config.
    #[arg(long, value_parser = DataLoss::parse)]
    pub max_data_loss: Option<DataLoss>,
    /// Accept a loss above the limit.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub target: Target,
    /// Check that the switchover can run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, default_value = "")]
    pub reason: String,
    /// How long to wait for the replica to drain, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ReasonArgs {
    #[command(flatten)]
    pub target: Target,
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[arg(long)]
    pub json: bool,
}

/// One stream's result in an `--all` report.
struct Outcome {
    stream: String,
    ok: bool,
    /// `2 → 3`, or the epoch it stays at.
    epoch: String,
    /// What happened, in a few words (the error when it failed).
    detail: String,
    json: serde_json::Value,
}

/// The streams `--all` acts on: those of this node whose role is one of
/// `roles` (every stream when `roles` is empty).
async fn all_streams(
    c: &mut ControlClient<Channel>,
    roles: &[pb::Role],
) -> anyhow::Result<Vec<String>> {
    let s = c
        .status(pb::StatusRequest {})
        .await
        .context("status request failed")?
        .into_inner();
    Ok(s.streams
        .iter()
        .filter(|t| {
            roles.is_empty()
                || roles
                    .iter()
                    .any(|r| *r as i32 == drd_client::display::stream_role(&s, t))
        })
        .map(|t| t.name.clone())
        .collect())
}

/// Runs `one` for each of `streams`, at most `in_flight` at a time, and
/// prints one report: a table (or `--json`: `{"streams": [...],
/// "succeeded": N, "failed": M}`). Exit 0 only if every stream succeeded.
async fn run_all<F, Fut>(
    what: &str,
    streams: Vec<String>,
    in_flight: usize,
    json_out: bool,
    one: F,
) -> anyhow::Result<ExitCode>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    use futures::StreamExt;
    if streams.is_empty() {
        if json_out {
            print_json(&json!({"streams": [], "succeeded": 0, "failed": 0}))?;
        } else {
            eprintln!("drctl: {what} --all: no stream of this node applies (see `drctl status`)");
        }
        return Ok(ExitCode::FAILURE);
    }
    if !json_out {
        eprintln!("{what} of {} streams...", streams.len());
    }
    let mut results: Vec<Outcome> = futures::stream::iter(streams.into_iter().map(one))
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    results.sort_by(|a, b| a.ok.cmp(&b.ok).then(a.stream.cmp(&b.stream)));
    let failed = results.iter().filter(|r| !r.ok).count();
    let succeeded = results.len() - failed;
    if json_out {
        print_json(&json!({
            "streams": results.iter().map(|r| r.json.clone()).collect::<Vec<_>>(),
            "succeeded": succeeded,
            "failed": failed,
        }))?;
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                vec![
                    r.stream.clone(),
                    if r.ok { "ok" } else { "FAILED" }.into(),
                    r.epoch.clone(),
                    r.detail.clone(),
                ]
            })
            .collect();
        print!("{}", table(&["STREAM", "RESULT", "EPOCH", "DETAIL"], &rows));
        println!(
            "{}: {succeeded} of {} streams succeeded{}",
            what.to_uppercase(),
            results.len(),
            if failed > 0 {
                format!(", {failed} FAILED (listed first)")
            } else {
                String::new()
            }
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn failover_request(a: &FailoverArgs, stream: String) -> pb::FailoverRequest {
    let (mut max_b, mut max_s) = (0, 0.0);
    match a.max_data_loss {
        Some(DataLoss::Bytes(b)) => max_b = b.max(1),
        Some(DataLoss::Seconds(s)) => max_s = if s > 0.0 { s } else { f64::MIN_POSITIVE },
        None => {}
    }
    pb::FailoverRequest {
        stream,
        yes: a.yes,
        dry_run: a.dry_run,
        reason: a.reason.clone(),
        max_data_loss_bytes: max_b,
        max_data_loss_seconds: max_s,
        force: a.force,
    }
}

fn failover_json(r: &pb::FailoverResponse) -> serde_json::Value {
    json!({
        "ok": r.refused.is_empty(),
        "refused": r.refused, "dry_run": r.dry_run, "stream": r.stream,
        "old_epoch": r.old_epoch, "new_epoch": r.new_epoch,
        "durable_position": r.durable_position, "durable_at_ms": r.durable_at_ms,
        "primary_reported_position": r.primary_reported_position,
        "possible_loss_bytes": r.possible_loss_bytes, "possible_loss_seconds": r.possible_loss_seconds,
        "old_primary": r.old_primary, "old_primary_reached": r.old_primary_reached,
        "known_loss_bytes": r.known_loss_bytes, "primary_looks_alive": r.primary_looks_alive,
        "hook_report": r.hook_report, "plan": r.plan, "warnings": r.warnings,
        "durable_lsn": (r.durable_lsn != 0).then(|| lsn(r.durable_lsn)),
        "durable_timeline": r.durable_timeline,
        "primary_last_lsn": (r.primary_last_lsn != 0).then(|| lsn(r.primary_last_lsn)),
        "primary_last_timeline": r.primary_last_timeline,
    })
}

pub async fn failover(
    c: &mut ControlClient<Channel>,
    a: &FailoverArgs,
) -> anyhow::Result<ExitCode> {
    if a.target.all {
        let streams = all_streams(c, &[pb::Role::Replica]).await?;
        let what = if a.dry_run {
            "failover dry run"
        } else {
            "failover"
        };
        return run_all(what, streams, ALL_IN_FLIGHT, a.json, |stream| {
            let mut c = c.clone();
            let req = failover_request(a, stream.clone());
            async move {
                match c.failover(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let ok = r.refused.is_empty();
                        let detail = if !ok {
                            r.refused.clone()
                        } else if r.dry_run {
                            format!("would promote; possible loss {} / {:.1} s", bytes(r.possible_loss_bytes), r.possible_loss_seconds)
                        } else {
                            format!(
                                "primary; fork at {}; possible loss {} / {:.1} s; old primary {}; {}",
                                r.durable_position,
                                bytes(r.possible_loss_bytes),
                                r.possible_loss_seconds,
                                if r.old_primary_reached { "fenced" } else { "not reached" },
                                r.hook_report
                            )
                        };
                        Outcome {
                            stream,
                            ok,
                            epoch: if ok && !r.dry_run {
                                format!("{} → {}", r.old_epoch, r.new_epoch)
                            } else {
                                r.old_epoch.to_string()
                            },
                            detail,
                            json: failover_json(&r),
                        }
                    }
                    Err(e) => failed_call(stream, e),
                }
            }
        })
        .await;
    }
    let r = c
        .failover(failover_request(
            a,
            a.target.stream.clone().unwrap_or_default(),
        ))
        .await
        .context("failover request failed")?
        .into_inner();
    if a.json {
        print_json(&failover_json(&r))?;
    } else {
        let head = if !r.refused.is_empty() {
            "FAILOVER REFUSED"
        } else if r.dry_run {
            "FAILOVER DRY RUN (nothing changed)"
        } else {
            "FAILOVER DONE"
        };
        println!(
            "{head}: stream {}, epoch {} → {}",
            r.stream, r.old_epoch, r.new_epoch
        );
        println!(
            "  last durable position   {} ({}) at {}",
            r.durable_position,
            bytes(r.durable_position),
            time(r.durable_at_ms)
        );
        println!(
            "  primary last reported   {} → possible loss at least {} bytes ({}), {:.1} s",
            r.primary_reported_position,
            r.possible_loss_bytes,
            bytes(r.possible_loss_bytes),
            r.possible_loss_seconds
        );
        if r.durable_lsn != 0 {
            println!(
                "  WAL at the DR site      up to LSN {} on timeline {}",
                lsn(r.durable_lsn),
                r.durable_timeline
            );
            if r.primary_last_lsn == 0 {
                println!("  primary's database      end of WAL never reported (not a source = \"postgres\" stream)");
            } else if r.primary_last_timeline == r.durable_timeline
                && r.primary_last_lsn > r.durable_lsn
            {
                println!(
                    "  may be lost             LSN {} .. {} on timeline {} ({} bytes, at least)",
                    lsn(r.durable_lsn),
                    lsn(r.primary_last_lsn),
                    r.durable_timeline,
                    r.primary_last_lsn - r.durable_lsn
                );
            } else if r.primary_last_timeline == r.durable_timeline {
                println!(
                    "  primary's database      last reported LSN {}: nothing beyond the DR copy is known",
                    lsn(r.primary_last_lsn)
                );
            } else {
                println!(
                    "  primary's database      last reported LSN {} on timeline {}",
                    lsn(r.primary_last_lsn),
                    r.primary_last_timeline
                );
            }
        }
        println!(
            "  old primary             {}{}",
            if r.old_primary.is_empty() {
                "(unknown)"
            } else {
                &r.old_primary
            },
            if r.primary_looks_alive {
                " — STILL CONNECTED"
            } else {
                ""
            }
        );
        if r.refused.is_empty() && !r.dry_run {
            if r.old_primary_reached {
                println!(
                    "  fenced old primary      yes; bytes known lost: {} ({})",
                    r.known_loss_bytes,
                    bytes(r.known_loss_bytes)
                );
            } else {
                println!("  fenced old primary      no (unreachable): it will fence itself when it reconnects");
            }
            println!("  {}", r.hook_report);
        }
        if r.dry_run || !r.refused.is_empty() {
            println!("plan:");
            for (i, p) in r.plan.iter().enumerate() {
                println!("  {}. {p}", i + 1);
            }
        }
        for w in &r.warnings {
            println!("warning: {w}");
        }
        if !r.refused.is_empty() {
            eprintln!("drctl: failover refused: {}", r.refused);
        }
    }
    Ok(if r.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A request of an `--all` run that did not get an answer.
fn failed_call(stream: String, e: tonic::Status) -> Outcome {
    Outcome {
        json: json!({"stream": stream, "ok": false, "error": e.message()}),
        stream,
        ok: false,
        epoch: String::new(),
        detail: e.message().to_string(),
    }
}

fn switchover_json(r: &pb::SwitchoverResponse) -> serde_json::Value {
    json!({
        "ok": r.ok, "stream": r.stream, "failed_step": r.failed_step, "error": r.error,
        "steps": r.steps, "new_epoch": r.new_epoch, "fork_position": r.fork_position,
        "new_primary": r.new_primary, "dry_run": r.dry_run,
    })
}

pub async fn switchover(
    c: &mut ControlClient<Channel>,
    a: &SwitchoverArgs,
    no_progress: bool,
) -> anyhow::Result<ExitCode> {
    let request = |stream: String, progress_token: String| pb::SwitchoverRequest {
        dry_run: a.dry_run,
        reason: a.reason.clone(),
        drain_timeout_seconds: a.drain_timeout,
        progress_token,
        stream,
    };
    if a.target.all {
        let streams = all_streams(c, &[pb::Role::Primary]).await?;
        // One at a time: each stops its database's writes and drains.
        return run_all("switchover", streams, 1, a.json, |stream| {
            let mut c = c.clone();
            let req = request(stream.clone(), String::new());
            async move {
                match c.switchover(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        Outcome {
                            stream,
                            ok: r.ok,
                            epoch: if r.ok {
                                r.new_epoch.to_string()
                            } else {
                                String::new()
                            },
                            detail: if r.ok {
                                format!(
                                    "{} is primary; fork at {}; zero bytes lost",
                                    r.new_primary, r.fork_position
                                )
                            } else {
                                format!("step {}: {}", r.failed_step, r.error)
                            },
                            json: switchover_json(&r),
                        }
                    }
                    Err(e) => failed_call(stream, e),
                }
            }
        })
        .await;
    }
    let token = progress::token("switchover");
    let mut call = c.clone();
    let request = call.switchover(request(
        a.target.stream.clone().unwrap_or_default(),
        token.clone(),
    ));
    let show = progress::wanted(a.json, no_progress);
    let r = progress::follow(c.clone(), &token, "switchover", show, request)
        .await
        .context("switchover request failed")?
        .into_inner();
    if a.json {
        print_json(&switchover_json(&r))?;
    } else {
        for (i, s) in r.steps.iter().enumerate() {
            println!("{:>2}. {s}", i + 1);
        }
        if r.ok && !r.dry_run {
            println!(
                "SWITCHOVER DONE: {} is primary of {} at epoch {}; zero bytes lost (fork at {}). This node is now its replica.",
                r.new_primary, r.stream, r.new_epoch, r.fork_position
            );
        } else if r.ok {
            println!("SWITCHOVER DRY RUN: the checks passed; nothing changed.");
        } else {
            eprintln!(
                "drctl: switchover failed at step '{}': {}. Roles were rolled back.",
                r.failed_step, r.error
            );
        }
    }
    Ok(if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn rejoin_json(r: &pb::RejoinResponse) -> serde_json::Value {
    json!({
        "ok": true,
        "stream": r.stream, "fork_position": r.fork_position, "fork_segment": r.fork_segment,
        "new_epoch": r.new_epoch, "new_primary": r.new_primary,
        "quarantine_dir": r.quarantine_dir, "quarantined_bytes": r.quarantined_bytes,
        "quarantined_files": r.quarantined_files.max(r.quarantined.len() as u64),
        "quarantined": r.quarantined.iter().map(|q| json!({"path": q.path, "bytes": q.bytes, "from": q.from})).collect::<Vec<_>>(),
    })
}

pub async fn rejoin(
    c: &mut ControlClient<Channel>,
    a: &ReasonArgs,
    no_progress: bool,
) -> anyhow::Result<ExitCode> {
    let request = |stream: String, progress_token: String| pb::RejoinRequest {
        reason: a.reason.clone(),
        progress_token,
        stream,
    };
    if a.target.all {
        let streams = all_streams(c, &[pb::Role::Fenced]).await?;
        return run_all("rejoin", streams, 4, a.json, |stream| {
            let mut c = c.clone();
            let req = request(stream.clone(), String::new());
            async move {
                match c.rejoin(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        Outcome {
                            stream,
                            ok: true,
                            epoch: r.new_epoch.to_string(),
                            detail: format!(
                                "replica of {}; fork at {}; {} quarantined",
                                r.new_primary,
                                r.fork_position,
                                bytes(r.quarantined_bytes)
                            ),
                            json: rejoin_json(&r),
                        }
                    }
                    Err(e) => failed_call(stream, e),
                }
            }
        })
        .await;
    }
    let token = progress::token("rejoin");
    let mut call = c.clone();
    let request = call.rejoin(request(
        a.target.stream.clone().unwrap_or_default(),
        token.clone(),
    ));
    let show = progress::wanted(a.json, no_progress);
    let r = match progress::follow(c.clone(), &token, "rejoin", show, request).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            eprintln!("drctl: rejoin refused: {}", s.message());
            return Ok(ExitCode::FAILURE);
        }
    };
    if a.json {
        print_json(&rejoin_json(&r))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "REJOINED: this node is a replica of {} for {} at epoch {}; the logs fork at position {} in segment {}.",
        r.new_primary, r.stream, r.new_epoch, r.fork_position, r.fork_segment
    );
    if r.quarantined.is_empty() {
        println!("Nothing lay past the fork: no bytes were lost.");
    } else {
        println!(
            "{} bytes written here after the fork were moved to {} (never deleted):",
            r.quarantined_bytes, r.quarantine_dir
        );
        let rows: Vec<Vec<String>> = r
            .quarantined
            .iter()
            .map(|q| vec![q.path.clone(), bytes(q.bytes), q.from.clone()])
            .collect();
        print!("{}", table(&["QUARANTINED FILE", "SIZE", "FROM"], &rows));
        let more = r
            .quarantined_files
            .saturating_sub(r.quarantined.len() as u64);
        if more > 0 {
            println!("... and {more} more files: all are in {}", r.quarantine_dir);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn pause(
    c: &mut ControlClient<Channel>,
    a: &ReasonArgs,
    pause: bool,
) -> anyhow::Result<ExitCode> {
    let request = |stream: String| pb::PauseRequest {
        pause,
        reason: a.reason.clone(),
        stream,
    };
    if a.target.all {
        let streams = all_streams(c, &[]).await?;
        let what = if pause { "pause" } else { "resume" };
        return run_all(what, streams, ALL_IN_FLIGHT, a.json, |stream| {
            let mut c = c.clone();
            let req = request(stream.clone());
            async move {
                match c.pause(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        Outcome {
                            json: json!({"stream": r.stream, "ok": true, "paused": r.paused}),
                            stream,
                            ok: true,
                            epoch: String::new(),
                            detail: if r.paused { "paused" } else { "resumed" }.into(),
                        }
                    }
                    Err(e) => failed_call(stream, e),
                }
            }
        })
        .await;
    }
    let r = match c
        .pause(request(a.target.stream.clone().unwrap_or_default()))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            eprintln!(
                "drctl: {} refused: {}",
                if pause { "pause" } else { "resume" },
                s.message()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    if a.json {
        print_json(&json!({ "paused": r.paused, "stream": r.stream }))?;
    } else if r.paused {
        println!(
            "shipping of {} paused (the replica keeps everything it has); `drctl resume --stream {}` restarts it",
            r.stream, r.stream
        );
    } else {
        println!("shipping of {} resumed", r.stream);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct HistoryArgs {
    /// Only this stream's entries (and those from before roles were per
    /// stream, which applied to every stream).
    #[arg(long)]
    pub stream: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn history(c: &mut ControlClient<Channel>, a: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let r = c
        .history(pb::HistoryRequest {
            stream: a.stream.clone().unwrap_or_default(),
        })
        .await
        .context("history request failed")?
        .into_inner();
    if a.json {
        let entries: Vec<_> = r
            .entries
            .iter()
            .map(|e| {
                json!({
                    "seq": e.seq, "at_ms": e.at_ms, "at": time(e.at_ms), "action": e.action,
                    "stream": e.stream,
                    "user": e.user, "origin": e.origin, "reason": e.reason,
                    "epoch_before": e.epoch_before, "epoch_after": e.epoch_after,
                    "role_before": e.role_before, "role_after": e.role_after, "detail": e.detail,
                })
            })
            .collect();
        print_json(&json!(entries))?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = r
        .entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                time(e.at_ms),
                e.action.clone(),
                if e.stream.is_empty() {
                    "(all)".into()
                } else {
                    e.stream.clone()
                },
                e.user.clone(),
                format!("{}→{}", e.epoch_before, e.epoch_after),
                if e.role_before == e.role_after {
                    e.role_after.clone()
                } else {
                    format!("{}→{}", e.role_before, e.role_after)
                },
                e.reason.clone(),
                e.detail.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "SEQ",
                "TIME (UTC)",
                "ACTION",
                "STREAM",
                "USER",
                "EPOCH",
                "ROLE",
                "REASON",
                "DETAIL"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}
