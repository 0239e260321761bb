//! `drctl verify`: re-hash every stored segment and check the hash chain.
//! Exit 0 when every segment matches; 1 naming the first one that does not.

use crate::print_json;
use anyhow::Context;
use clap::Args;
use drd::display::bytes;
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
    #[arg(long)]
    pub json: bool,
}

pub async fn run(c: &mut ControlClient<Channel>, a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let r = c
        .verify(pb::VerifyRequest {
            stream: a.stream.clone(),
        })
        .await
        .context("verify request failed")?
        .into_inner();
    if a.json {
        print_json(&json!({
            "stream": r.stream,
            "ok": r.problems.is_empty(),
            "segments_checked": r.segments_checked,
            "bytes_checked": r.bytes_checked,
            "chain_head": r.chain_head,
            "problems": r.problems.iter().map(|p| json!({"segment": p.segment, "problem": p.problem})).collect::<Vec<_>>(),
        }))?;
    } else if r.problems.is_empty() {
        println!(
            "VERIFIED: {} segments of {} ({}) match their recorded SHA-256 and the hash chain (head {}).",
            r.segments_checked,
            r.stream,
            bytes(r.bytes_checked),
            r.chain_head
        );
    } else {
        println!(
            "VERIFY FAILED for {}: {} of {} segments are not what was verified at seal time.",
            r.stream,
            r.problems.len(),
            r.segments_checked
        );
        println!(
            "first bad segment: {} — {}",
            r.problems[0].segment, r.problems[0].problem
        );
        for p in &r.problems[1..] {
            println!("also: {} — {}", p.segment, p.problem);
        }
        println!(
            "Do not restore from this copy past {}; fetch the segment again from the other site.",
            r.problems[0].segment
        );
    }
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
