//! `drctl`: the operator's CLI for drd. It talks to the local daemon over the
//! control socket.
//!
//! Exit codes: 0 success / OK; 1 the command ran and found a problem (a
//! refused failover, a failed switchover step, a missing segment; for
//! `drctl lag`: WARNING); 2 usage or configuration error (`drctl lag`:
//! CRITICAL); 3 the daemon could not be reached (`drctl lag`: UNKNOWN).
//!
//! Long work (verify, rejoin, switchover, `status --watch`) shows progress
//! bars on stderr when it is a terminal; never with `--json`.

#![recursion_limit = "256"]

mod bucket;
mod certs;
mod docs;
mod drill;
mod fetch;
mod lag;
mod mode;
mod progress;
mod prune;
mod push;
mod roles;
mod status;
mod verify;

use clap::{Args, Parser, Subcommand};
use drd_client::config::{DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH};
use drd_proto::pb::control_client::ControlClient;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tonic::transport::Channel;

/// Exit code when the daemon cannot be reached (Nagios' UNKNOWN).
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "drctl",
    version = env!("DRD_VERSION_LINE"),
    about = "Operate drd: status, lag, failover, switchover, rejoin, WAL fetch"
)]
struct Cli {
    /// Control socket of the daemon (default: `control.socket` from the
    /// config file, else /run/drd/drd.sock).
    #[arg(long, global = true, env = "DRD_SOCKET")]
    socket: Option<PathBuf>,
    /// Configuration file to take the socket path from.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH, env = "DRD_CONFIG")]
    config: PathBuf,
    /// Remote daemon's control API (`control.listen`), e.g.
    /// https://rochester-dr1.example:7602 — mTLS with --cert/--key/--ca.
    #[arg(long, global = true, env = "DRD_ADDR", requires_all = ["cert", "key", "ca"])]
    addr: Option<String>,
    /// Client certificate for --addr (e.g. from `drctl certs init --node ops-admin`).
    #[arg(long, global = true, env = "DRD_CERT")]
    cert: Option<PathBuf>,
    #[arg(long, global = true, env = "DRD_KEY")]
    key: Option<PathBuf>,
    #[arg(long, global = true, env = "DRD_CA")]
    ca: Option<PathBuf>,
    /// Name the remote daemon's certificate must carry (default: the host in --addr).
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// Never draw progress bars (they are drawn only on a terminal anyway,
    /// on stderr, and never with --json).
    #[arg(long, global = true, env = "DRCTL_NO_PROGRESS")]
    no_progress: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Role, epoch and per-stream positions, lag, throughput and errors;
    /// --watch follows a catch-up live.
    Status(status::StatusArgs),
    /// Lag check with Nagios/Icinga exit codes (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
    Lag(lag::LagArgs),
    /// Unplanned failover of a stream (--stream) or of every stream (--all), run at the DR node: become its primary at epoch + 1.
    Failover(roles::FailoverArgs),
    /// Planned switchover of a stream with zero loss, run at its primary.
    Switchover(roles::SwitchoverArgs),
    /// Make this node a replica of a stream it is fenced for, from its current primary.
    Rejoin(roles::ReasonArgs),
    /// Stop shipping a stream (the replica keeps everything it has).
    Pause(roles::ReasonArgs),
    /// Restart shipping a stream after `drctl pause`.
    Resume(roles::ReasonArgs),
    /// Override a stream's sync/async mode at its primary, audited (e.g.
    /// async while the DR link is down); the configured mode removes it.
    Mode(mode::ModeArgs),
    /// The audit log: role and epoch changes and operator actions.
    History(roles::HistoryArgs),
    /// Copy a complete, verified segment (or a .history/.backup file) to DEST (PostgreSQL's restore_command: `drctl wal-fetch %f %p`).
    WalFetch(fetch::FetchArgs),
    /// Archive a WAL file through drd (PostgreSQL's archive_command: `drctl wal-push %p`).
    WalPush(push::PushArgs),
    /// Re-hash every stored segment and check the hash chain; names the first bad one.
    Verify(verify::VerifyArgs),
    /// DR drill at the DR site: restore the verified copy into a scratch
    /// database, measure RTO and RPO, write a signed report; `drill verify
    /// DIR` checks a report, `drill history` lists the drills.
    Drill(drill::DrillArgs),
    /// Apply the DR site's retention policy now; --dry-run shows what it would remove and why.
    Prune(prune::PruneArgs),
    /// List a bucket's objects (`--from URL`; no daemon needed), a page at a time.
    Ls(bucket::LsArgs),
    /// Keys for client-side encryption of object-store targets (no daemon needed).
    #[command(subcommand)]
    Keys(bucket::KeysCmd),
    /// Certificates for a first deployment (no daemon needed).
    #[command(subcommand)]
    Certs(certs::CertsCmd),
    /// Print a shell completion script to stdout (no daemon needed), e.g.
    /// `drctl completions bash > /etc/bash_completion.d/drctl`.
    Completions(docs::CompletionsArgs),
    /// Write man pages (drctl.1, drctl-status.1, ...) into a directory.
    #[command(hide = true)]
    Man(docs::ManArgs),
}

#[derive(Args)]
pub struct JsonArg {
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The socket to use: flag, then config file, then the default.
fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    if cli.config.exists() {
        if let Ok(socket) = drd_client::config::control_socket(&cli.config) {
            return socket;
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
        Cmd::Certs(c) => return certs::run(c),
        Cmd::Keys(c) => return bucket::keys(c),
        Cmd::Ls(a) => return bucket::ls(a).await,
        // At a restore site where no drd runs: straight from the bucket.
        Cmd::WalFetch(a) if a.bucket.from.is_some() => {
            return Ok(bucket::wal_fetch(&a.bucket, &a.name, &a.dest).await)
        }
        Cmd::Verify(a) if a.bucket.from.is_some() => {
            return bucket::verify(&a.bucket, a.json, cli.no_progress).await
        }
        Cmd::Completions(a) => return docs::completions(a),
        Cmd::Man(a) => return docs::man(a),
        // Works without a daemon (an auditor's machine): it asks the local
        // one only for what it alone knows.
        Cmd::Drill(drill::DrillArgs {
            cmd: Some(drill::DrillCmd::Verify(v)),
            ..
        }) => {
            let ca = drill::ca_for_verify(cli.ca.as_deref(), &cli.config);
            return drill::verify(v, ca.as_deref(), &socket).await;
        }
        _ => {}
    }
    let no_progress = cli.no_progress;
    let connected = match &cli.addr {
        Some(addr) => connect_remote(cli, addr).await,
        None => connect(&socket).await,
    };
    let mut client = match connected {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match &cli.command {
        Cmd::Status(a) => status::run(&mut client, a, no_progress).await,
        Cmd::Lag(a) => lag::run(&mut client, a).await,
        Cmd::Failover(a) => roles::failover(&mut client, a).await,
        Cmd::Switchover(a) => roles::switchover(&mut client, a, no_progress).await,
        Cmd::Rejoin(a) => roles::rejoin(&mut client, a, no_progress).await,
        Cmd::Pause(a) => roles::pause(&mut client, a, true).await,
        Cmd::Resume(a) => roles::pause(&mut client, a, false).await,
        Cmd::Mode(a) => mode::run(&mut client, a).await,
        Cmd::History(a) => roles::history(&mut client, a).await,
        Cmd::WalFetch(a) => fetch::run(&mut client, a).await,
        Cmd::WalPush(a) => push::run(&mut client, a).await,
        Cmd::Verify(a) => verify::run(&mut client, a, no_progress).await,
        Cmd::Prune(a) => prune::run(&mut client, a).await,
        Cmd::Drill(a) => match &a.cmd {
            None => drill::run(&mut client, a, no_progress).await,
            Some(drill::DrillCmd::History(h)) => drill::history(&mut client, h).await,
            Some(drill::DrillCmd::Verify(_)) => unreachable!("handled before connecting"),
        },
        Cmd::Certs(_) | Cmd::Keys(_) | Cmd::Ls(_) | Cmd::Completions(_) | Cmd::Man(_) => {
            unreachable!("handled before connecting")
        }
    }
}

/// Connects to a remote daemon's control API over mTLS.
async fn connect_remote(cli: &Cli, addr: &str) -> Result<ControlClient<Channel>, ExitCode> {
    let unreachable = |what: String| {
        eprintln!("drctl: {what}");
        ExitCode::from(EXIT_UNREACHABLE)
    };
    let files = drd_client::tls::TlsFiles {
        ca: cli.ca.clone().unwrap_or_default(),
        cert: cli.cert.clone().unwrap_or_default(),
        key: cli.key.clone().unwrap_or_default(),
    };
    let m = drd_client::tls::load(&files)
        .map_err(|e| unreachable(format!("cannot load the client certificate: {e}")))?;
    let host = addr
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .to_string();
    let name = cli.server_name.clone().unwrap_or(host);
    let ep = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| unreachable(format!("bad --addr {addr:?}: {e}")))?
        .tls_config(drd_client::tls::client_tls(&m, &name))
        .map_err(|e| unreachable(format!("TLS setup failed: {e}")))?;
    let channel = ep.connect().await.map_err(|e| {
        unreachable(format!(
            "cannot reach drd at {addr}: {}\nIs control.listen set there, and is this certificate in its control.allowed_clients?",
            drd_client::peer::describe(&e)
        ))
    })?;
    Ok(ControlClient::new(channel))
}

async fn connect(socket: &Path) -> Result<ControlClient<Channel>, ExitCode> {
    drd_client::control::connect(socket).await.map_err(|e| {
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

/// Prints a value as pretty JSON.
pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `1763880000000` → `2025-11-23T06:40:00Z`.
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}
