//! `drctl wal-push` — PostgreSQL's `archive_command` — on the daemon side.
//!
//! drctl streams the file's bytes over the control socket (it reads the file
//! with PostgreSQL's permissions; drd never opens a path a client names, so
//! a member of the socket's group cannot make drd read files for it). The
//! daemon writes them once ([`crate::storage::spool`]): a segment into the stream's
//! spool (`wal_dir` with `source = "spool"`), where the shipper picks it up
//! and seals it as soon as it is shipped; a `.history`/`.backup`/`.partial`
//! file into the side-file directory ([`crate::sidefiles`]).
//!
//! When the push succeeds depends on the stream's `mode`: `async` once the
//! file is durable here; `sync` once the replica confirmed it — a segment
//! acked sealed (durable and verified), a side file stored — or an error
//! after `sync_timeout_seconds`, and PostgreSQL retries.

use crate::config::{SourceMode, StreamConfig, SyncMode};
use crate::node::{Node, Shipper};
use crate::ops::Caller;
use crate::sidefiles::{self, WalFileKind};
use crate::storage::catalog::Role;
use crate::storage::spool::{Incoming, Published, SpoolError};
use drd_proto::{pb, SegmentName};
use std::sync::Arc;
use tonic::{Status, Streaming};

fn pick<'a>(node: &'a Node, stream: &str) -> Result<(&'a StreamConfig, &'a Arc<Shipper>), Status> {
    let streams = &node.config.streams;
    let cfg =
        if stream.is_empty() {
            match streams.as_slice() {
                [one] => one,
                [] => return Err(Status::failed_precondition(
                    "this node ships no stream (no [[stream]] in its config); run wal-push at the \
                     primary's drd",
                )),
                many => {
                    return Err(Status::invalid_argument(format!(
                        "this node ships several streams; name one with --stream ({})",
                        many.iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        } else {
            streams
                .iter()
                .find(|s| s.name.as_str() == stream)
                .ok_or_else(|| {
                    Status::not_found(format!("this node ships no stream named {stream:?}"))
                })?
        };
    let shipper = node
        .shippers
        .iter()
        .find(|s| s.stream == cfg.name)
        .ok_or_else(|| Status::internal("no shipper for a configured stream"))?;
    Ok((cfg, shipper))
}

pub async fn wal_push(
    node: &Arc<Node>,
    mut inbound: Streaming<pb::WalPushRequest>,
    who: Caller,
) -> Result<pb::WalPushResponse, Status> {
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("empty wal-push request"))?;
    let (cfg, shipper) = pick(node, &first.stream)?;
    let name = first.name.clone();
    let kind = WalFileKind::classify(&name).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{:?} is not a file PostgreSQL archives (a WAL segment, TTTTTTTT.history, \
             SEGMENT.OFFSET.backup or SEGMENT.partial); nothing stored",
            name.chars().take(64).collect::<String>()
        ))
    })?;
    if cfg.source != SourceMode::Spool {
        return Err(Status::failed_precondition(format!(
            "stream {} reads its wal_dir directly (source = \"tail\"); wal-push needs \
             source = \"spool\" and a spool directory that only drd writes",
            cfg.name
        )));
    }
    let state = node
        .stream_role(&cfg.name)
        .map_err(|e| Status::internal(format!("{e:#}")))?
        .state();
    if state.role != Role::Primary {
        return Err(Status::failed_precondition(format!(
            "{} is {} at epoch {} on this node; WAL is archived only at the primary (use \
             archive_mode = on, not always, on a standby)",
            cfg.name,
            state.role.as_str(),
            state.epoch
        )));
    }
    let limit = if kind.is_shipped_side_file() {
        sidefiles::MAX_SIDE_FILE_BYTES as u64
    } else {
        sidefiles::MAX_SEGMENT_BYTES
    };
    if first.size == 0 {
        // PostgreSQL never archives an empty file; an empty segment could
        // not be sealed at the replica.
        return Err(Status::invalid_argument(format!(
            "{name} is empty; nothing stored"
        )));
    }
    if first.size > limit {
        return Err(Status::invalid_argument(format!(
            "{name} has {} bytes, more than the {limit} a {} file may have",
            first.size,
            kind.as_str()
        )));
    }

    let mut new_segment = false;
    let published = {
        let _one = crate::node::PUSH_LOCK.lock().await;
        if kind == WalFileKind::Segment {
            check_order(node, cfg, &name)?;
            new_segment =
                !cfg.wal_dir.join(&name).exists() && shipped_record(node, cfg, &name)?.is_none();
            if new_segment {
                check_room(node, cfg, shipper, &name, first.size).await?;
            }
        }
        let dir = if kind.is_side_file() {
            sidefiles::side_dir(&node.config.data_dir, &cfg.name)
        } else {
            cfg.wal_dir.clone()
        };
        let mut file = blocking({
            let (name, stream) = (name.clone(), cfg.name.clone());
            move || {
                // Under the lock no other push runs: any temporary file is
                // left over from a crash.
                match crate::storage::spool::remove_stale_temps(&dir) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(%stream, dir = %dir.display(), removed = n,
                        "removed temporary files of unfinished pushes"),
                    Err(e) => tracing::warn!(%stream, dir = %dir.display(), error = %e,
                        "cannot clean up temporary files"),
                }
                Incoming::create(&dir, &name)
            }
        })
        .await?;
        let mut data = first.data;
        loop {
            if file.size() + data.len() as u64 > first.size {
                return Err(Status::invalid_argument(format!(
                    "{name}: more bytes than the announced {}; nothing stored",
                    first.size
                )));
            }
            if !data.is_empty() {
                file = blocking(move || {
                    file.write(&data)?;
                    Ok(file)
                })
                .await?;
            }
            match inbound.message().await? {
                Some(m) => data = m.data,
                None => break,
            }
        }
        if file.size() != first.size {
            return Err(Status::invalid_argument(format!(
                "{name}: {} bytes arrived, {} were announced; nothing stored",
                file.size(),
                first.size
            )));
        }
        let shipped = if kind == WalFileKind::Segment {
            shipped_record(node, cfg, &name)?
        } else {
            None
        };
        match shipped {
            // Shipped earlier and no longer in the spool: compare with the log.
            Some(rec) if !cfg.wal_dir.join(&name).exists() => {
                let sha256 = file.sha256();
                let same =
                    rec.sha256.as_deref() == Some(sha256.as_str()) && rec.size == file.size();
                drop(file);
                if !same {
                    let why = format!(
                        "segment {name} was already shipped with different content \
                         (sha256 {}); refusing it",
                        rec.sha256.unwrap_or_default()
                    );
                    return Err(conflict(&cfg.name, &name, &who, why));
                }
                Published {
                    path: cfg.wal_dir.join(&name),
                    size: rec.size,
                    sha256,
                    already_present: true,
                }
            }
            _ => match tokio::task::spawn_blocking(move || file.publish())
                .await
                .map_err(|e| Status::internal(format!("file task failed: {e}")))?
            {
                Ok(p) => p,
                Err(e @ SpoolError::Conflict { .. }) => {
                    return Err(conflict(&cfg.name, &name, &who, e.to_string()))
                }
                Err(e) => return Err(e.into()),
            },
        }
    };
    if new_segment && !published.already_present {
        let mut u = shipper.spool_usage();
        u.bytes += published.size;
        u.segments += 1;
        u.full = false;
    }
    tracing::info!(stream = %cfg.name, %name, kind = kind.as_str(), size = published.size,
        already_present = published.already_present, user = %who.user, "wal-push: stored");

    // `drctl mode` may have overridden the configured mode.
    let mode = node
        .roles
        .role_of(&cfg.name)
        .map_or(cfg.mode, |st| cfg.mode.in_effect(&st));
    let mut r = pb::WalPushResponse {
        stream: cfg.name.to_string(),
        kind: kind.as_str().into(),
        already_present: published.already_present,
        mode: mode.as_str().into(),
        replica_confirmed: false,
        sha256: published.sha256,
        path: published.path.display().to_string(),
    };
    if kind.is_shipped_side_file() {
        shipper.push.wake.notify_one();
    }
    if mode == SyncMode::Async || kind == WalFileKind::Partial {
        // `.partial` files stay here: PostgreSQL never restores them.
        return Ok(r);
    }
    if kind == WalFileKind::Segment {
        wait_sealed(node, cfg, shipper, &name).await?;
    } else {
        wait_side_file(cfg, shipper, &name).await?;
    }
    r.replica_confirmed = true;
    Ok(r)
}

/// Runs blocking file I/O off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, SpoolError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("file task failed: {e}")))?
        .map_err(Status::from)
}

impl From<SpoolError> for Status {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Conflict { .. } => Status::already_exists(e.to_string()),
            SpoolError::Io { .. } => Status::internal(e.to_string()),
        }
    }
}

/// A refused overwrite: logged here (where it is handled) and reported.
fn conflict(stream: &drd_proto::StreamName, name: &str, who: &Caller, why: String) -> Status {
    tracing::error!(%stream, %name, user = %who.user, origin = %who.origin, error = %why,
        "wal-push REFUSED: same name, different bytes");
    Status::already_exists(why)
}

/// The segment's record in this node's log, if it was shipped.
fn shipped_record(
    node: &Node,
    cfg: &StreamConfig,
    name: &str,
) -> Result<Option<crate::storage::catalog::SegmentRecord>, Status> {
    let seg = SegmentName::new(name).map_err(Status::from)?;
    node.catalog
        .segment(&cfg.name, &seg)
        .map_err(|e| Status::internal(e.to_string()))
}

/// The spool's segments and bytes now.
fn spool_usage(cfg: &StreamConfig) -> Result<(u64, u64), Status> {
    let listing = crate::primary::source::scan(&cfg.wal_dir)
        .map_err(|e| Status::internal(format!("cannot list {}: {e}", cfg.wal_dir.display())))?;
    Ok((
        listing.len() as u64,
        listing.iter().map(|s| s.size).sum::<u64>(),
    ))
}

/// A new segment of `size` bytes must fit under `spool_max_bytes`. When it
/// does not, what the replica already holds sealed goes first, even if
/// younger than `spool_retention` (a shorter local copy beats a refused
/// archive_command); if it still does not fit, the push is refused and
/// nothing is stored — PostgreSQL keeps the segment and retries.
async fn check_room(
    node: &Arc<Node>,
    cfg: &StreamConfig,
    shipper: &Arc<Shipper>,
    name: &str,
    size: u64,
) -> Result<(), Status> {
    let limit = cfg.spool_max_bytes;
    if size > limit {
        // No pruning can help: refused every time, so say what to change.
        shipper.spool_usage().refused_pushes += 1;
        crate::metrics::spool_refused(cfg.name.as_str(), false);
        return Err(Status::resource_exhausted(format!(
            "{name} has {size} bytes, more than stream {}'s whole spool_max_bytes = {limit}; \
             nothing stored, and PostgreSQL's retries will fail the same way: raise \
             spool_max_bytes to hold many segments (the default is 16GiB) and restart drd",
            cfg.name
        )));
    }
    let (_, bytes) = spool_usage(cfg)?;
    if bytes.saturating_add(size) <= limit {
        return Ok(());
    }
    let pruned = match node.spool_pruner(cfg, shipper) {
        Ok(pruner) => crate::primary::prune::pass(&pruner, Some(size)).await,
        Err(e) => Err(e),
    };
    match pruned {
        Ok(_) => {}
        Err(e) => tracing::warn!(stream = %cfg.name, error = %format!("{e:#}"),
            "spool: pruning pass failed"),
    }
    let (segments, bytes) = spool_usage(cfg)?;
    if bytes.saturating_add(size) <= limit {
        return Ok(());
    }
    {
        let mut u = shipper.spool_usage();
        u.bytes = bytes;
        u.segments = segments;
        u.full = true;
        u.refused_pushes += 1;
    }
    crate::metrics::spool_refused(cfg.name.as_str(), true);
    let v = shipper.view(std::time::Instant::now());
    let replica = if v.connected {
        format!("connected, {} bytes behind", v.lag_bytes)
    } else if v.last_error.is_empty() {
        format!("not connected to {}", cfg.peer_label())
    } else {
        format!("not connected to {}: {}", cfg.peer_label(), v.last_error)
    };
    let why = format!(
        "spool of stream {} is full: {} holds {segments} segments, {bytes} bytes, and {name} \
         ({size} bytes) would pass spool_max_bytes = {limit}; nothing stored. PostgreSQL keeps \
         the segment in pg_wal and retries archive_command. Segments leave the spool only once \
         the replica holds them sealed and verified (replica {replica}): check the DR link and \
         `drctl status` on both nodes",
        cfg.name,
        cfg.wal_dir.display()
    );
    tracing::error!(stream = %cfg.name, %name, bytes, limit, %replica,
        "wal-push REFUSED: spool at spool_max_bytes");
    Err(Status::resource_exhausted(why))
}

/// A new segment must sort after everything the stream holds: the log is
/// ordered by name and the shipper never goes back.
fn check_order(node: &Node, cfg: &StreamConfig, name: &str) -> Result<(), Status> {
    if cfg.wal_dir.join(name).exists() || shipped_record(node, cfg, name)?.is_some() {
        return Ok(()); // pushed again: compared with what is there
    }
    let newest_spooled = crate::primary::source::scan(&cfg.wal_dir)
        .map_err(|e| Status::internal(format!("cannot list {}: {e}", cfg.wal_dir.display())))?
        .pop()
        .map(|s| s.name.to_string());
    let newest_logged = node
        .catalog
        .tail(&cfg.name)
        .map_err(|e| Status::internal(e.to_string()))?
        .map(|t| t.name);
    if let Some(newer) = newest_spooled.into_iter().chain(newest_logged).max() {
        if newer.as_str() > name {
            return Err(Status::failed_precondition(format!(
                "segment {name} sorts before {newer}, which stream {} already holds; the log is \
                 ordered by name, so {name} cannot be added now (is another server archiving \
                 into this stream?)",
                cfg.name
            )));
        }
    }
    Ok(())
}

/// Waits until the replica acked a segment at or after `name` sealed, and
/// this node's log records `name` as shipped and sealed (so the ack is about
/// the log that holds it, not about a replica that is somehow ahead).
async fn wait_sealed(
    node: &Node,
    cfg: &StreamConfig,
    shipper: &Shipper,
    name: &str,
) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + cfg.sync_timeout;
    let mut rx = shipper.push.sealed_acked.subscribe();
    match tokio::time::timeout_at(deadline, rx.wait_for(|s| s.as_str() >= name)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return Err(Status::unavailable("drd is shutting down")),
        Err(_) => return Err(not_confirmed(cfg, shipper, name)),
    }
    loop {
        // The shipper records the seal right after sending it; the ack can
        // overtake that commit by a moment.
        if shipped_record(node, cfg, name)?.is_some_and(|r| r.sealed) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(not_confirmed(cfg, shipper, name));
        }
        tokio::time::sleep(SEAL_RECORD_POLL).await;
    }
}

/// How often `wait_sealed` looks for the shipper's record of a seal.
const SEAL_RECORD_POLL: std::time::Duration = std::time::Duration::from_millis(10);

async fn wait_side_file(cfg: &StreamConfig, shipper: &Shipper, name: &str) -> Result<(), Status> {
    let mut rx = shipper.push.side.subscribe();
    let waited = tokio::time::timeout(
        cfg.sync_timeout,
        rx.wait_for(|s| s.confirmed.contains(name) || s.refused.contains_key(name)),
    )
    .await;
    match waited {
        Ok(Ok(s)) => match s.refused.get(name) {
            None => Ok(()),
            Some(why) => Err(Status::failed_precondition(format!(
                "the replica refused {name}: {why}"
            ))),
        },
        Ok(Err(_)) => Err(Status::unavailable("drd is shutting down")),
        Err(_) => Err(not_confirmed(cfg, shipper, name)),
    }
}

fn not_confirmed(cfg: &StreamConfig, shipper: &Shipper, name: &str) -> Status {
    let v = shipper.view(std::time::Instant::now());
    let why = if !v.connected {
        format!(
            "not connected to {}{}",
            cfg.peer_label(),
            if v.last_error.is_empty() {
                String::new()
            } else {
                format!(": {}", v.last_error)
            }
        )
    } else {
        format!("connected, {} bytes behind", v.lag_bytes)
    };
    tracing::warn!(stream = %cfg.name, %name, timeout = ?cfg.sync_timeout, %why,
        "wal-push: the replica did not confirm in time");
    Status::deadline_exceeded(format!(
        "{name} is durable here, but the replica did not confirm it within {}s \
         (mode = \"sync\"; replica {why}); PostgreSQL will retry. Check `drctl status`.",
        cfg.sync_timeout.as_secs()
    ))
}

// The client side (drctl, tests), re-exported where it always was.
pub use drd_client::walpush::{push_file, PUSH_CHUNK_BYTES};
