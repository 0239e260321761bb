//! `drctl prune`: apply the DR site's retention policy now, or with
//! `--dry-run` show what it would remove and why (nothing changes). The
//! policy is the DR node's own (`[replica.retention]` in its config); this
//! command cannot go below it. Exit 0 on success, 1 on an error.

use crate::print_json;
use anyhow::Context;
use clap::Args;
use drd_client::display::{bytes, table};
use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Args)]
pub struct PruneArgs {
    /// Stream (default: the node's only stream).
    #[arg(long, default_value = "")]
    pub stream: String,
    /// Show what the policy would remove and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON for scripts instead of a report.
    #[arg(long)]
    pub json: bool,
}

/// Segments listed in the human report (the counts cover all; `--json`
/// carries what the daemon listed).
const SHOWN: usize = 20;

fn age(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

pub async fn run(c: &mut ControlClient<Channel>, a: &PruneArgs) -> anyhow::Result<ExitCode> {
    let r = c
        .prune(pb::PruneRequest {
            stream: a.stream.clone(),
            dry_run: a.dry_run,
        })
        .await
        .context("prune request failed")?
        .into_inner();
    if a.json {
        print_json(&json!({
            "stream": r.stream,
            "dry_run": r.dry_run,
            "policy": r.policy,
            "not_pruning": r.not_pruning,
            "segments": r.segments,
            "bytes": r.bytes,
            "listed": r.listed.iter().map(|s| json!({
                "segment": s.segment, "size": s.size, "age_ms": s.age_ms, "reason": s.reason,
            })).collect::<Vec<_>>(),
            "oldest_kept": r.oldest_kept,
            "oldest_kept_age_ms": r.oldest_kept_age_ms,
            "kept_because": r.kept_because,
            "pruned_through": r.pruned_through,
            "fetched": r.fetched,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.policy.is_empty() {
        println!(
            "Stream {} has no retention policy here: this node keeps everything it received. \
             Set [replica.retention] min_retention (and max_retention / max_bytes) in its config.",
            r.stream
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("Stream {}: {}", r.stream, r.policy);
    if !r.not_pruning.is_empty() {
        println!("Nothing is pruned: {}.", r.not_pruning);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if r.dry_run { "Would remove" } else { "Removed" };
    println!("{verb} {} segments ({}).", r.segments, bytes(r.bytes));
    if !r.listed.is_empty() {
        let rows: Vec<Vec<String>> = r
            .listed
            .iter()
            .take(SHOWN)
            .map(|s| {
                vec![
                    s.segment.clone(),
                    bytes(s.size),
                    age(s.age_ms),
                    s.reason.clone(),
                ]
            })
            .collect();
        print!("{}", table(&["SEGMENT", "SIZE", "AGE", "WHY"], &rows));
        if r.segments > SHOWN as u64 {
            println!(
                "… and {} more (--json lists up to 1,000)",
                r.segments - SHOWN as u64
            );
        }
    }
    if r.oldest_kept.is_empty() {
        println!("Keeps: nothing yet.");
    } else {
        println!(
            "Oldest kept: {} (sealed {} ago): {}.",
            r.oldest_kept,
            age(r.oldest_kept_age_ms),
            r.kept_because
        );
    }
    if !r.pruned_through.is_empty() {
        println!(
            "Everything through {} is gone; drctl verify checks the rest from the chain value \
             recorded there.",
            r.pruned_through
        );
    }
    match r.fetched.as_str() {
        "" => println!("The DR database has fetched nothing through drctl wal-fetch yet."),
        f => println!("Newest segment the DR database fetched: {f}."),
    }
    if r.dry_run {
        println!("Dry run: nothing was changed. Run without --dry-run to prune now (the daemon also prunes every 30 s).");
    }
    Ok(ExitCode::SUCCESS)
}
