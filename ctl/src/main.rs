//! `drctl`: the operator's CLI for drd. It talks to the local daemon over the
//! control socket.
//!
//! Exit codes: 0 success; 1 the command ran and found a problem; 2 usage or
//! configuration error; 3 the daemon could not be reached.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use drd::config::{Config, DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH};
use drd::display;
use drd_proto::pb;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code when the daemon cannot be reached.
const EXIT_UNREACHABLE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "drctl",
    version,
    about = "Operate drd: status, lag, failover, WAL push/fetch"
)]
struct Cli {
    /// Control socket of the daemon (default: `control.socket` from the
    /// config file, else /run/drd/drd.sock).
    #[arg(long, global = true, env = "DRD_SOCKET")]
    socket: Option<PathBuf>,
    /// Configuration file to take the socket path from.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH, env = "DRD_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Role, epoch and per-stream positions, lag, throughput and errors.
    Status(StatusArgs),
}

#[derive(Args)]
struct StatusArgs {
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
}

/// The socket to use: flag, then config file, then the default.
fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    if cli.config.exists() {
        if let Ok(c) = Config::load(&cli.config) {
            return c.control_socket;
        }
    }
    PathBuf::from(DEFAULT_SOCKET_PATH)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let socket = socket_path(cli);
    match &cli.command {
        Cmd::Status(a) => status(&socket, a).await,
    }
}

async fn connect(
    socket: &Path,
) -> Result<pb::control_client::ControlClient<tonic::transport::Channel>, ExitCode> {
    drd::control::connect(socket).await.map_err(|e| {
        eprintln!(
            "drctl: cannot reach drd at {}: {e}\n\
             Is drd running (systemctl status drd)? Is the path right (--socket, or control.socket in {})? \
             Are you in the drd group?",
            socket.display(),
            DEFAULT_CONFIG_PATH
        );
        ExitCode::from(EXIT_UNREACHABLE)
    })
}

async fn status(socket: &Path, a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = match connect(socket).await {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let s = client
        .status(pb::StatusRequest {})
        .await
        .context("status request failed")?
        .into_inner();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
    } else {
        println!(
            "node {}  role {}  epoch {}  drd {}  up {}s\n",
            s.node_id,
            display::role_name(s.role),
            s.epoch,
            s.version,
            s.uptime_seconds
        );
        print!("{}", display::status_table(std::slice::from_ref(&s)));
    }
    Ok(ExitCode::SUCCESS)
}

fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    json!({
        "node_id": s.node_id,
        "role": display::role_name(s.role).to_lowercase(),
        "epoch": s.epoch,
        "version": s.version,
        "uptime_seconds": s.uptime_seconds,
        "streams": s.streams.iter().map(|t| json!({
            "name": t.name,
            "direction": t.direction,
            "peer": t.peer,
            "connected": t.connected,
            "written_position": t.written_position,
            "durable_position": t.durable_position,
            "lag_bytes": t.lag_bytes,
            "lag_seconds": t.lag_seconds,
            "network_bytes": t.network_bytes,
            "segments": t.segments,
            "sealed_segments": t.sealed_segments,
            "current_segment": t.current_segment,
            "reconnects": t.reconnects,
            "throughput_bytes_per_second": t.throughput_bytes_per_second,
            "last_error": t.last_error,
        })).collect::<Vec<_>>(),
    })
}
