//! `drctl verify`: re-hash every stored segment and check the hash chain.
//! Exit 0 when every segment matches; 1 naming the first one that does not.
//! On a terminal a progress bar (bytes and segments hashed, rate, ETA) runs
//! on stderr meanwhile.

use crate::{print_json, progress};
use anyhow::Context;
use clap::Args;
use drd_client::display::bytes;
use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use serde_json::json;
use std::process::ExitCode;
use tonic::transport::Channel;

#[derive(Args)]
pub struct VerifyArgs {
    /// Stream (default: the node's only stream).
    #[arg(long, default_value = "")]
    pub stream: String,
    /// Print JSON for scripts instead of a report (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// `--from URL [--identity FILE]`: the copy in a bucket, without a drd.
    #[command(flatten)]
    pub bucket: crate::bucket::FromArgs,
}

pub async fn run(
    c: &mut ControlClient<Channel>,
    a: &VerifyArgs,
    no_progress: bool,
) -> anyhow::Result<ExitCode> {
    let token = progress::token("verify");
    let mut call = c.clone();
    let request = call.verify(pb::VerifyRequest {
        stream: a.stream.clone(),
        progress_token: token.clone(),
    });
    let show = progress::wanted(a.json, no_progress);
    let r = progress::follow(c.clone(), &token, "verify", show, request)
        .await
        .context("verify request failed")?
        .into_inner();
    // Builds before the count existed listed every problem.
    let total = r.problems_total.max(r.problems.len() as u64);
    if a.json {
        print_json(&json!({
            "stream": r.stream,
            "ok": total == 0,
            "segments_checked": r.segments_checked,
            "bytes_checked": r.bytes_checked,
            "chain_head": r.chain_head,
            "pruned_through": r.pruned_through,
            "start_chain": r.start_chain,
            "problems_total": total,
            "problems": r.problems.iter().map(|p| json!({"segment": p.segment, "problem": p.problem})).collect::<Vec<_>>(),
        }))?;
    } else if total == 0 {
        println!(
            "VERIFIED: {} segments of {} ({}) match their recorded SHA-256 and the hash chain (head {}).",
            r.segments_checked,
            r.stream,
            bytes(r.bytes_checked),
            r.chain_head
        );
        if !r.pruned_through.is_empty() {
            println!(
                "Retention at this DR site removed everything through {}: the chain was checked \
                 from the value recorded there ({}).",
                r.pruned_through, r.start_chain
            );
        }
    } else {
        println!(
            "VERIFY FAILED for {}: {} of {} segments are not what was verified at seal time.",
            r.stream, total, r.segments_checked
        );
        // The daemon lists at least the first problem whenever it counts one.
        let first = r
            .problems
            .first()
            .map_or("(not listed)", |p| p.segment.as_str());
        for (i, p) in r.problems.iter().enumerate() {
            let label = if i == 0 { "first bad segment" } else { "also" };
            println!("{label}: {} — {}", p.segment, p.problem);
        }
        if total > r.problems.len() as u64 {
            println!(
                "… and {} more (the daemon's log lists every one)",
                total - r.problems.len() as u64
            );
        }
        println!(
            "Do not restore from this copy past {first}; fetch the segment again from the other site."
        );
    }
    Ok(if total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
