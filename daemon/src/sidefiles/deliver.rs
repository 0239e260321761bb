//! The primary's delivery of side files (`.history`, `.backup`) to its
//! replica, beside the log: while this node is primary and not paused, every
//! side file the replica has not confirmed in this epoch is sent with
//! `PutFile`. A file pushed while the replica is away (e.g. the history file
//! a promoted database writes while the old site is down) is delivered when
//! it comes back. Sending twice is harmless: the replica accepts identical
//! content again and refuses different content.

use crate::config::StreamConfig;
use crate::node::{Node, Shipper};
use crate::sidefiles::{shipped_side_files, side_dir, MAX_SIDE_FILE_BYTES};
use crate::storage::catalog::Role;
use drd_proto::pb;
use drd_proto::pb::replication_client::ReplicationClient;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::Instrument;

/// Why one file was not delivered.
enum NotSent {
    /// The replica refused it for good (different content, bad name).
    Refused(String),
    /// Try again later (unreachable, stale epoch, I/O).
    Later(String),
}

/// Runs until `shutdown`.
pub async fn run(
    node: Arc<Node>,
    cfg: StreamConfig,
    status: Arc<Shipper>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("side-files", stream = %cfg.name, peer = %cfg.peer_label());
    deliver(node, cfg, status, shutdown).instrument(span).await
}

async fn deliver(
    node: Arc<Node>,
    cfg: StreamConfig,
    status: Arc<Shipper>,
    shutdown: CancellationToken,
) {
    let dir = side_dir(&node.config.data_dir, &cfg.name);
    let mut state_rx = match node.stream_role(&cfg.name) {
        Ok(r) => r.subscribe(),
        Err(e) => {
            tracing::error!(stream = %cfg.name, error = %e, "cannot read the stream's role; side files are not shipped");
            return;
        }
    };
    let mut client: Option<ReplicationClient<Channel>> = None;
    let mut epoch_seen = 0;
    let mut last_problem = String::new();
    loop {
        let st = state_rx.borrow_and_update().clone();
        if st.epoch != epoch_seen {
            // A new epoch may mean a new replica: confirm everything again.
            status.push.side.send_modify(|s| {
                s.confirmed.clear();
                s.refused.clear();
            });
            epoch_seen = st.epoch;
            client = None;
        }
        if st.role == Role::Primary && !st.paused {
            let pending: Vec<String> = {
                let s = status.push.side.borrow();
                shipped_side_files(&dir)
                    .into_iter()
                    .filter(|n| !s.confirmed.contains(n) && !s.refused.contains_key(n))
                    .collect()
            };
            for name in pending {
                match send(&node, &cfg, &mut client, &name, st.epoch).await {
                    Ok(stored) => {
                        tracing::info!(%name, stored, "side file delivered to the replica");
                        last_problem.clear();
                        status.push.side.send_modify(|s| {
                            s.confirmed.insert(name);
                        });
                    }
                    Err(NotSent::Refused(why)) => {
                        tracing::error!(%name, error = %why, "the replica REFUSED a side file");
                        status.push.side.send_modify(|s| {
                            s.refused.insert(name, why);
                        });
                    }
                    Err(NotSent::Later(why)) => {
                        if why != last_problem {
                            tracing::warn!(%name, error = %why, "side file not delivered yet; retrying");
                            last_problem = why;
                        }
                        client = None;
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = state_rx.changed() => if changed.is_err() { return },
            _ = status.push.wake.notified() => {}
            _ = tokio::time::sleep(node.config.tuning.rescan_interval()) => {}
        }
    }
}

/// Sends one side file; Ok(true) if the replica stored it, Ok(false) if it
/// already had it.
async fn send(
    node: &Node,
    cfg: &StreamConfig,
    client: &mut Option<ReplicationClient<Channel>>,
    name: &str,
    epoch: u64,
) -> Result<bool, NotSent> {
    let path = side_dir(&node.config.data_dir, &cfg.name).join(name);
    let data = tokio::fs::read(&path)
        .await
        .map_err(|e| NotSent::Later(format!("cannot read {}: {e}", path.display())))?;
    if data.len() > MAX_SIDE_FILE_BYTES {
        return Err(NotSent::Refused(format!(
            "{} has {} bytes, more than a side file may have ({MAX_SIDE_FILE_BYTES})",
            path.display(),
            data.len()
        )));
    }
    let sha256 = Sha256::digest(&data).to_vec();
    let c = match client {
        Some(c) => c,
        None => client.insert(
            crate::ops::peer::connect_for_calls(node, cfg)
                .await
                .map_err(NotSent::Later)?,
        ),
    };
    let req = pb::PutFileRequest {
        stream: cfg.name.to_string(),
        name: name.to_string(),
        sha256,
        data,
        epoch,
        from_node: node.config.node_id.to_string(),
    };
    match c.put_file(req).await {
        Ok(r) => Ok(r.into_inner().stored),
        Err(s) => match s.code() {
            tonic::Code::AlreadyExists | tonic::Code::InvalidArgument => {
                Err(NotSent::Refused(s.message().to_string()))
            }
            _ => Err(NotSent::Later(format!("{}: {}", s.code(), s.message()))),
        },
    }
}
