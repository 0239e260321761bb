//! `drctl failover`, `switchover`, `rejoin`, `pause`/`resume`, `history`:
//! requests to the daemon and reports an on-call DBA can read at 3 a.m.
//! Switchover (its drain to lag 0) and rejoin (its move of the bytes past
//! the fork into quarantine) show progress on a terminal while they run.

use crate::{print_json, progress, time, JsonArg};
use anyhow::Context;
use clap::Args;
use drd::config::DataLoss;
use drd::display::{bytes, table};
use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use serde_json::json;
use std::process::ExitCode;
use tonic::transport::Channel;

#[derive(Args)]
pub struct FailoverArgs {
    /// Stream to report on (default: the node's only stream).
    #[arg(long)]
    pub stream: Option<String>,
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
    /// Why (recorded in the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[arg(long)]
    pub json: bool,
}

pub async fn failover(
    c: &mut ControlClient<Channel>,
    a: &FailoverArgs,
) -> anyhow::Result<ExitCode> {
    let (mut max_b, mut max_s) = (0, 0.0);
    match a.max_data_loss {
        Some(DataLoss::Bytes(b)) => max_b = b.max(1),
        Some(DataLoss::Seconds(s)) => max_s = if s > 0.0 { s } else { f64::MIN_POSITIVE },
        None => {}
    }
    let r = c
        .failover(pb::FailoverRequest {
            stream: a.stream.clone().unwrap_or_default(),
            yes: a.yes,
            dry_run: a.dry_run,
            reason: a.reason.clone(),
            max_data_loss_bytes: max_b,
            max_data_loss_seconds: max_s,
            force: a.force,
        })
        .await
        .context("failover request failed")?
        .into_inner();
    if a.json {
        print_json(&json!({
            "refused": r.refused, "dry_run": r.dry_run, "stream": r.stream,
            "old_epoch": r.old_epoch, "new_epoch": r.new_epoch,
            "durable_position": r.durable_position, "durable_at_ms": r.durable_at_ms,
            "primary_reported_position": r.primary_reported_position,
            "possible_loss_bytes": r.possible_loss_bytes, "possible_loss_seconds": r.possible_loss_seconds,
            "old_primary": r.old_primary, "old_primary_reached": r.old_primary_reached,
            "known_loss_bytes": r.known_loss_bytes, "primary_looks_alive": r.primary_looks_alive,
            "hook_report": r.hook_report, "plan": r.plan, "warnings": r.warnings,
        }))?;
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

pub async fn switchover(
    c: &mut ControlClient<Channel>,
    a: &SwitchoverArgs,
    no_progress: bool,
) -> anyhow::Result<ExitCode> {
    let token = progress::token("switchover");
    let mut call = c.clone();
    let request = call.switchover(pb::SwitchoverRequest {
        dry_run: a.dry_run,
        reason: a.reason.clone(),
        drain_timeout_seconds: a.drain_timeout,
        progress_token: token.clone(),
    });
    let show = progress::wanted(a.json, no_progress);
    let r = progress::follow(c.clone(), &token, "switchover", show, request)
        .await
        .context("switchover request failed")?
        .into_inner();
    if a.json {
        print_json(&json!({
            "ok": r.ok, "failed_step": r.failed_step, "error": r.error, "steps": r.steps,
            "new_epoch": r.new_epoch, "fork_position": r.fork_position,
            "new_primary": r.new_primary, "dry_run": r.dry_run,
        }))?;
    } else {
        for (i, s) in r.steps.iter().enumerate() {
            println!("{:>2}. {s}", i + 1);
        }
        if r.ok && !r.dry_run {
            println!(
                "SWITCHOVER DONE: {} is primary at epoch {}; zero bytes lost (fork at {}). This node is now its replica.",
                r.new_primary, r.new_epoch, r.fork_position
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

pub async fn rejoin(
    c: &mut ControlClient<Channel>,
    a: &ReasonArgs,
    no_progress: bool,
) -> anyhow::Result<ExitCode> {
    let token = progress::token("rejoin");
    let mut call = c.clone();
    let request = call.rejoin(pb::RejoinRequest {
        reason: a.reason.clone(),
        progress_token: token.clone(),
    });
    let show = progress::wanted(a.json, no_progress);
    let r = match progress::follow(c.clone(), &token, "rejoin", show, request).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            eprintln!("drctl: rejoin refused: {}", s.message());
            return Ok(ExitCode::FAILURE);
        }
    };
    if a.json {
        print_json(&json!({
            "stream": r.stream, "fork_position": r.fork_position, "fork_segment": r.fork_segment,
            "new_epoch": r.new_epoch, "new_primary": r.new_primary,
            "quarantine_dir": r.quarantine_dir, "quarantined_bytes": r.quarantined_bytes,
            "quarantined_files": r.quarantined_files.max(r.quarantined.len() as u64),
            "quarantined": r.quarantined.iter().map(|q| json!({"path": q.path, "bytes": q.bytes, "from": q.from})).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "REJOINED: this node is a replica of {} at epoch {}; the logs fork at position {} in segment {}.",
        r.new_primary, r.new_epoch, r.fork_position, r.fork_segment
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
    let r = c
        .pause(pb::PauseRequest {
            pause,
            reason: a.reason.clone(),
        })
        .await
        .context("request failed")?
        .into_inner();
    if a.json {
        print_json(&json!({ "paused": r.paused }))?;
    } else if r.paused {
        println!(
            "shipping paused (the replica keeps everything it has); `drctl resume` restarts it"
        );
    } else {
        println!("shipping resumed");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn history(c: &mut ControlClient<Channel>, a: &JsonArg) -> anyhow::Result<ExitCode> {
    let r = c
        .history(pb::HistoryRequest {})
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
