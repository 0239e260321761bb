//! `drctl wal-push PATH`: PostgreSQL's `archive_command`
//! (`drctl wal-push %p`). Reads the file with the caller's own permissions
//! and streams it to the local drd, which stores it once in the stream's
//! spool and answers when it is safe: durable here (`mode = "async"`) or
//! confirmed by the replica (`mode = "sync"`). Exit 0 only then; 1 when the
//! push was refused or not confirmed in time (PostgreSQL retries); 3 when
//! drd cannot be reached.

use anyhow::Context;
use clap::Args;
use drd_proto::pb::control_client::ControlClient;
use std::path::PathBuf;
use std::process::ExitCode;
use tonic::transport::Channel;

#[derive(Args)]
pub struct PushArgs {
    /// File to archive (PostgreSQL's %p, relative to the data directory).
    pub path: PathBuf,
    /// Stream (default: the node's only stream).
    #[arg(long, default_value = "")]
    pub stream: String,
    /// Print what happened (JSON) on success; otherwise only errors are printed.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(c: &mut ControlClient<Channel>, a: &PushArgs) -> anyhow::Result<ExitCode> {
    let name = a
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} does not name a file", a.path.display()))?
        .to_string();
    let file = tokio::fs::File::open(&a.path)
        .await
        .with_context(|| format!("cannot open {}", a.path.display()))?;
    let size = file
        .metadata()
        .await
        .with_context(|| format!("cannot stat {}", a.path.display()))?
        .len();
    match drd_client::walpush::push_file(c, &a.stream, &name, file, size).await {
        Ok(r) => {
            if a.json {
                crate::print_json(&serde_json::json!({
                    "stream": r.stream,
                    "name": name,
                    "kind": r.kind,
                    "size": size,
                    "sha256": r.sha256,
                    "already_present": r.already_present,
                    "mode": r.mode,
                    "replica_confirmed": r.replica_confirmed,
                    "path": r.path,
                }))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(s) => {
            eprintln!("drctl: wal-push {name}: {}", s.message());
            Ok(ExitCode::FAILURE)
        }
    }
}
