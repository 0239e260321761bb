//! `drctl mode STREAM sync|async --reason …`: an audited change of a
//! stream's sync/async mode at its primary (e.g. async while the DR link is
//! down, so that COMMITs stop waiting for it).

use clap::{Args, ValueEnum};
use drd_client::display::unix_ms_utc;
use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use serde_json::json;
use std::process::ExitCode;
use tonic::transport::Channel;

#[derive(Clone, Copy, ValueEnum)]
pub enum Mode {
    /// COMMIT (or wal-push) waits until the DR replica holds the WAL.
    Sync,
    /// Report what is durable locally; the DR site follows as it can.
    Async,
}

#[derive(Args)]
pub struct ModeArgs {
    /// The stream (at its primary).
    pub stream: String,
    pub mode: Mode,
    /// Why (required; recorded in the audit log and shown by drctl status).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub json: crate::JsonArg,
}

pub async fn run(c: &mut ControlClient<Channel>, a: &ModeArgs) -> anyhow::Result<ExitCode> {
    let mode = match a.mode {
        Mode::Sync => "sync",
        Mode::Async => "async",
    };
    let r = match c
        .set_mode(pb::SetModeRequest {
            stream: a.stream.clone(),
            mode: mode.into(),
            reason: a.reason.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            eprintln!("drctl: mode change refused: {}", s.message());
            return Ok(ExitCode::FAILURE);
        }
    };
    if a.json.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "stream": r.stream, "mode": r.mode, "configured": r.configured,
                "override": r.r#override.as_ref().map(|o| json!({
                    "mode": o.mode, "at_ms": o.at_ms, "user": o.user, "reason": o.reason,
                })),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    match &r.r#override {
        Some(o) => println!(
            "{}: mode {} (overrides the configured {}) since {} by {}: {:?}",
            r.stream,
            r.mode,
            r.configured,
            unix_ms_utc(o.at_ms),
            o.user,
            o.reason
        ),
        None => println!(
            "{}: mode {} (as configured; override removed)",
            r.stream, r.mode
        ),
    }
    if r.mode == "async" && r.configured == "sync" {
        println!(
            "  commits no longer wait for the DR site: those from now on are NOT covered by zero \
             loss. `drctl mode {} sync --reason …` restores it.",
            r.stream
        );
    }
    Ok(ExitCode::SUCCESS)
}
