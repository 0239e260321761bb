//! Object-store targets: one task per `[[stream.target]]` writes the
//! stream's log, as this node holds it, into the bucket — each sealed
//! segment once (create-only, linked into the hash chain), and the growing
//! segment's new bytes every `upload_interval` as uniquely named partial
//! objects, so the bucket's RPO is bounded by time. It runs whatever the
//! stream's role: a primary ships straight to a cloud region, a DR site
//! tiers its copy. Nothing here deletes or overwrites an object
//! (`drd_bucket::Bucket` has no such call).
//!
//! Progress is kept in the catalog (`target/STREAM/HASH`): the last sealed
//! segment written and the end of the last partial. It is written without
//! fsync: after a crash the task starts from an older point, finds those
//! objects already there with the same content (`Written::AlreadyThere`)
//! and goes on, so nothing is lost and nothing is duplicated with other
//! bytes.

use crate::config::{StreamConfig, TargetConfig};
use crate::locks::LockExt;
use crate::node::Shipper;
use crate::storage::catalog::{Catalog, Role, SegmentRecord};
pub use crate::target_state::{TargetState, TargetView};
use drd_bucket::{Archive, ArchiveError, SealedSegment, Written};
use drd_proto::{SegmentName, StreamName};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Pause after an error before the next attempt (the store's own retries,
/// with backoff, have run out by then).
const ERROR_PAUSE: Duration = Duration::from_secs(5);
/// A conflict (an object with other content under our name) needs an
/// operator; the task re-checks this often and reports meanwhile.
const CONFLICT_PAUSE: Duration = Duration::from_secs(60);
/// How often the task looks for newly sealed segments.
const POLL: Duration = Duration::from_millis(500);

/// Where a target has got to, in the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The last sealed segment written (or found already there).
    pub sealed: Option<String>,
    /// Its chain value (hex): the next segment's `prev_chain`.
    pub chain: Option<String>,
    /// The growing segment whose bytes `[0, partial_end)` are uploaded.
    pub partial: Option<String>,
    pub partial_end: u64,
}

/// What one target task runs with.
pub struct TargetContext {
    pub stream: StreamConfig,
    pub target: TargetConfig,
    pub catalog: Arc<Catalog>,
    pub role: Arc<crate::node::StreamRole>,
    /// This node's shipper of the stream: where a primary's growing
    /// segment is (`current_segment`) and how much of it the DR site holds.
    pub shipper: Arc<Shipper>,
    pub node_id: String,
    pub data_dir: PathBuf,
    pub state: Arc<TargetState>,
}

/// Catalog key of a target's progress: the URL's digest keeps the key
/// short and free of `/` from the URL.
pub fn progress_key(stream: &StreamName, url: &str) -> String {
    let h = drd_bucket::object::sha256_hex(url.trim_end_matches('/').as_bytes());
    format!("target/{stream}/{}", &h[..16])
}

/// The lowest sealed segment any target of `stream` still needs (None: the
/// targets hold everything sealed, or there are none). Retention must keep
/// it and what follows.
pub fn oldest_needed(catalog: &Catalog, cfg: &StreamConfig) -> Option<Option<String>> {
    let mut oldest: Option<Option<String>> = None;
    for t in &cfg.targets {
        let p: Progress = catalog
            .records::<Progress>(&progress_key(&cfg.name, &t.url), None, false, 1)
            .ok()
            .and_then(|v| v.into_iter().next().map(|(_, p)| p))
            .unwrap_or_default();
        oldest = Some(match oldest {
            None => p.sealed,
            Some(None) => None,
            Some(Some(o)) => p.sealed.map(|s| o.min(s)),
        });
    }
    oldest
}

fn unix_ms() -> u64 {
    crate::clock::unix_ms()
}

/// Runs one target until shutdown.
pub async fn run(ctx: TargetContext, shutdown: CancellationToken) {
    use tracing::Instrument;
    let span = tracing::info_span!("target", stream = %ctx.stream.name, url = %ctx.target.url);
    upload(ctx, shutdown).instrument(span).await
}

async fn upload(ctx: TargetContext, shutdown: CancellationToken) {
    let bucket = match drd_bucket::Bucket::open(
        &ctx.target.url,
        ctx.target.endpoint.as_deref(),
        drd_bucket::RetryPolicy::default(),
    ) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the target; nothing is uploaded to it");
            let mut v = ctx.state.inner.locked();
            v.state = "error".into();
            v.last_error = e.to_string();
            return;
        }
    };
    let mut bucket = bucket;
    bucket.stats = ctx.state.stats.clone();
    let archive = Archive::new(bucket, ctx.stream.name.as_str(), &ctx.node_id);
    let key = progress_key(&ctx.stream.name, &ctx.target.url);
    let mut progress: Progress = ctx
        .catalog
        .records::<Progress>(&key, None, false, 1)
        .ok()
        .and_then(|v| v.into_iter().next().map(|(_, p)| p))
        .unwrap_or_default();
    {
        tracing::info!(
            after = progress.sealed.as_deref().unwrap_or("(the start)"),
            encryption = ?ctx.target.sealer,
            "uploading the stream's log to the target"
        );
    }
    let mut last_partial = Instant::now() - ctx.target.upload_interval;
    // Side files known to be in the bucket (their catalog marks, cached).
    let mut sides_done = std::collections::BTreeSet::new();
    loop {
        let step = async {
            let wrote = upload_sealed(&ctx, &archive, &mut progress, &key).await?;
            note_growing(&ctx, &progress);
            if last_partial.elapsed() >= ctx.target.upload_interval {
                last_partial = Instant::now();
                upload_partial(&ctx, &archive, &mut progress, &key).await?;
                upload_side_files(&ctx, &archive, &key, &mut sides_done).await?;
            }
            Ok::<bool, ArchiveError>(wrote)
        };
        let pause = match step.await {
            Ok(true) => Duration::ZERO,
            Ok(false) => POLL,
            Err(e) => {
                let conflict = matches!(e, ArchiveError::Conflict { .. });
                if conflict {
                    tracing::error!(error = %e, "refused to overwrite an object; uploads to \
                        this target stop until an operator resolves it");
                } else {
                    tracing::warn!(error = %e, "upload failed; trying again");
                }
                let mut v = ctx.state.inner.locked();
                v.state = if conflict { "conflict" } else { "error" }.into();
                v.last_error = e.to_string();
                if conflict {
                    CONFLICT_PAUSE
                } else {
                    ERROR_PAUSE
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn save(ctx: &TargetContext, key: &str, p: &Progress) {
    // No fsync: a progress record lost in a crash only makes the task
    // re-check objects that are there already (see the module comment).
    if let Err(e) = ctx.catalog.put_record(key, p, false) {
        tracing::warn!(error = %e, "cannot record the target's progress; it will re-check \
            objects after a restart");
    }
}

/// The chain value before `rec`: the previous record's, the DR site's
/// retention boundary's, or the chain's start.
fn prev_chain(
    ctx: &TargetContext,
    rec: &SegmentRecord,
    progress: &Progress,
) -> anyhow::Result<[u8; 32]> {
    if let Some(c) = progress
        .chain
        .as_deref()
        .and_then(drd_core::chain::from_hex)
    {
        return Ok(c);
    }
    let name = rec.segment_name()?;
    if let Some(p) = ctx.catalog.previous(&ctx.stream.name, &name)? {
        return p
            .chain
            .as_deref()
            .and_then(drd_core::chain::from_hex)
            .ok_or_else(|| {
                anyhow::anyhow!("segment {} before {} has no chain value", p.name, rec.name)
            });
    }
    if let Some(b) = ctx.catalog.retention(&ctx.stream.name)?.boundary {
        return drd_core::chain::from_hex(&b.chain)
            .ok_or_else(|| anyhow::anyhow!("the retention boundary's chain value is damaged"));
    }
    Ok(drd_core::chain::GENESIS)
}

fn internal(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Store(drd_bucket::StoreError::Request {
        op: "read",
        object: "the local log".into(),
        why: e.to_string(),
    })
}

/// Sealed segments one call writes at most, so that the growing segment's
/// partials keep their interval.
const SEALED_PER_CALL: usize = 4;

/// Writes the next sealed segments (at most [`SEALED_PER_CALL`]). True:
/// something was written.
///
/// One segment ahead is read and encrypted on a blocking thread while the
/// current one is put, so the CPU work and the upload overlap; at most two
/// encrypted segments are held (the one being put, the next).
async fn upload_sealed(
    ctx: &TargetContext,
    archive: &Archive,
    progress: &mut Progress,
    key: &str,
) -> Result<bool, ArchiveError> {
    // The segments to write, in order, each with the chain values before
    // and after it.
    let mut todo: Vec<(SegmentRecord, [u8; 32], [u8; 32])> = Vec::new();
    let mut after = match progress.sealed.as_deref() {
        Some(s) => Some(SegmentName::new(s.to_string()).map_err(internal)?),
        None => None,
    };
    let mut prev: Option<[u8; 32]> = None;
    while todo.len() < SEALED_PER_CALL {
        let Some(rec) = ctx
            .catalog
            .segment_after(&ctx.stream.name, after.as_ref())
            .map_err(internal)?
        else {
            break;
        };
        if !rec.sealed {
            break;
        }
        let p = match prev {
            Some(p) => p,
            None => prev_chain(ctx, &rec, progress).map_err(internal)?,
        };
        let chain = rec
            .chain
            .as_deref()
            .and_then(drd_core::chain::from_hex)
            .ok_or_else(|| internal(format!("segment {} has no chain value", rec.name)))?;
        prev = Some(chain);
        after = Some(rec.segment_name().map_err(internal)?);
        todo.push((rec, p, chain));
    }
    let mut wrote = false;
    let mut next = todo
        .first()
        .and_then(|(r, p, c)| prepare(ctx, archive, r, (*p, *c)));
    for i in 0..todo.len() {
        let rec = &todo[i].0;
        {
            let mut v = ctx.state.inner.locked();
            v.state = "uploading".into();
            if v.behind_since_ms == 0 {
                v.behind_since_ms = rec.sealed_at_ms.unwrap_or_else(unix_ms);
            }
        }
        let this = next.take();
        next = todo
            .get(i + 1)
            .and_then(|(r, p, c)| prepare(ctx, archive, r, (*p, *c)));
        let Some(this) = this else {
            // Gone from this node's spool before the target could have it:
            // a target configured on a stream that had pruned already (the
            // pruning waits for configured targets). The bucket's copy
            // starts, or has a gap, here; verify --from says so.
            tracing::warn!(segment = %rec.name,
                "not in the bucket: removed from this node's spool before this target was \
                 configured; the bucket's copy continues after it");
            progress.sealed = Some(rec.name.clone());
            progress.chain = rec.chain.clone();
            save(ctx, key, progress);
            continue;
        };
        let prepared = this.await.map_err(internal)??;
        if rec.sha256.as_deref() != Some(prepared.plain_sha256()) {
            return Err(internal(format!(
                "segment {} no longer matches its record here (SHA-256 {}, recorded {}); \
                 not uploaded — run `drctl verify`",
                rec.name,
                prepared.plain_sha256(),
                rec.sha256.as_deref().unwrap_or("none")
            )));
        }
        let w = archive.put_segment(prepared).await?;
        if w == Written::AlreadyThere {
            tracing::info!(segment = %rec.name, "already in the bucket with the same content");
        }
        progress.sealed = Some(rec.name.clone());
        progress.chain = rec.chain.clone();
        if progress.partial.as_deref() == Some(rec.name.as_str()) {
            progress.partial = None;
            progress.partial_end = 0;
        }
        save(ctx, key, progress);
        let mut v = ctx.state.inner.locked();
        v.segments += 1;
        v.bytes += rec.size;
        v.last_segment = rec.name.clone();
        v.last_error.clear();
        v.behind_since_ms = 0;
        wrote = true;
    }
    Ok(wrote)
}

/// Starts reading and encrypting `rec` (with the chain values before and
/// after it) on a blocking thread: file I/O and CPU work (ChaCha20-Poly1305
/// over the segment), off the async threads. The file streams through the
/// encryption in 1 MiB pieces, so only the encrypted object is held, and
/// the plaintext's SHA-256 is taken on the way. None: the segment was
/// pruned here, there is nothing to read.
fn prepare(
    ctx: &TargetContext,
    archive: &Archive,
    rec: &SegmentRecord,
    (prev, chain): ([u8; 32], [u8; 32]),
) -> Option<tokio::task::JoinHandle<Result<drd_bucket::archive::Prepared, ArchiveError>>> {
    if rec.pruned_at_ms.is_some() {
        return None;
    }
    let path =
        crate::walpos::segment_path_for(&ctx.data_dir, &ctx.stream, &rec.name, rec.in_source);
    let (archive, sealer, rec) = (archive.clone(), ctx.target.sealer.clone(), rec.clone());
    Some(tokio::task::spawn_blocking(move || {
        let path =
            path.ok_or_else(|| internal(format!("segment {}'s file is missing", rec.name)))?;
        let seg = SealedSegment {
            name: &rec.name,
            start: rec.start,
            bytes: &[],
            prev_chain: prev,
            chain,
            epoch: rec.epoch,
        };
        let mut f = std::fs::File::open(&path).map_err(|e| ArchiveError::Read {
            name: rec.name.clone(),
            why: format!("{}: {e}", path.display()),
        })?;
        archive.prepare_segment_from(&sealer, &seg, &mut f, rec.size)
    }))
}

/// The growing segment here: (name, stream start, bytes durable, file).
fn growing(ctx: &TargetContext) -> anyhow::Result<Option<(String, u64, u64, PathBuf)>> {
    let role = ctx.role.state().role;
    if role == Role::Primary {
        // The primary's own growing segment, as far as the DR site holds
        // it durably: the bucket never has bytes the DR site might not.
        let st = ctx.shipper.state.locked();
        if st.current_segment.is_empty() || st.durable <= st.current_start {
            return Ok(None);
        }
        let name = st.current_segment.clone();
        let held = st.durable - st.current_start;
        let start = st.current_start;
        drop(st);
        if ctx
            .catalog
            .segment(&ctx.stream.name, &SegmentName::new(name.clone())?)?
            .is_some_and(|r| r.sealed)
        {
            return Ok(None);
        }
        return Ok(Some((
            name.clone(),
            start,
            held,
            ctx.stream.wal_dir.join(&name),
        )));
    }
    let Some(tail) = ctx.catalog.tail(&ctx.stream.name)? else {
        return Ok(None);
    };
    if tail.sealed || tail.size == 0 {
        return Ok(None);
    }
    let path =
        crate::walpos::segment_path_for(&ctx.data_dir, &ctx.stream, &tail.name, tail.in_source)
            .ok_or_else(|| {
                anyhow::anyhow!("the growing segment {}'s file is missing", tail.name)
            })?;
    Ok(Some((tail.name, tail.start, tail.size, path)))
}

/// Marks the target behind as soon as the growing segment holds bytes the
/// bucket does not, so that its upload lag counts between partials too
/// (from when this task first saw them: at most [`POLL`] late).
fn note_growing(ctx: &TargetContext, progress: &Progress) {
    let Ok(Some((name, _, held, _))) = growing(ctx) else {
        return;
    };
    if progress
        .sealed
        .as_deref()
        .is_some_and(|s| s >= name.as_str())
    {
        return;
    }
    let from = if progress.partial.as_deref() == Some(name.as_str()) {
        progress.partial_end
    } else {
        0
    };
    if held > from {
        let mut v = ctx.state.inner.locked();
        if v.behind_since_ms == 0 {
            v.behind_since_ms = unix_ms();
        }
    }
}

/// Uploads the growing segment's bytes that the bucket does not have yet.
async fn upload_partial(
    ctx: &TargetContext,
    archive: &Archive,
    progress: &mut Progress,
    key: &str,
) -> Result<(), ArchiveError> {
    let Some((name, start, held, path)) = growing(ctx).map_err(internal)? else {
        let mut v = ctx.state.inner.locked();
        if v.state != "conflict" {
            v.state = "caught up".into();
        }
        v.caught_up_at_ms = unix_ms();
        return Ok(());
    };
    // Only a segment after the last sealed one written: an older one is
    // still to come whole.
    if progress
        .sealed
        .as_deref()
        .is_some_and(|s| s >= name.as_str())
    {
        return Ok(());
    }
    let from = if progress.partial.as_deref() == Some(name.as_str()) {
        progress.partial_end
    } else {
        0
    };
    if held <= from {
        let mut v = ctx.state.inner.locked();
        v.state = "caught up".into();
        v.caught_up_at_ms = unix_ms();
        v.behind_since_ms = 0;
        return Ok(());
    }
    let bytes = tokio::task::spawn_blocking(move || read_range(&path, from, held))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    if bytes.is_empty() {
        return Ok(());
    }
    let end = from + bytes.len() as u64;
    let epoch = ctx.role.state().epoch;
    let k = archive
        .write_partial(&ctx.target.sealer, &name, start, from, &bytes, epoch)
        .await?;
    tracing::debug!(object = %k, bytes = bytes.len(), "partial upload");
    progress.partial = Some(name);
    progress.partial_end = end;
    save(ctx, key, progress);
    let mut v = ctx.state.inner.locked();
    v.partials += 1;
    v.bytes += bytes.len() as u64;
    v.state = "caught up".into();
    v.caught_up_at_ms = unix_ms();
    v.behind_since_ms = 0;
    v.last_error.clear();
    Ok(())
}

/// Uploads the stream's side files (`.history`, `.backup`) that the bucket
/// does not hold yet; each is marked in the catalog once written.
async fn upload_side_files(
    ctx: &TargetContext,
    archive: &Archive,
    key: &str,
    done: &mut std::collections::BTreeSet<String>,
) -> Result<(), ArchiveError> {
    let dir = crate::sidefiles::side_dir(&ctx.data_dir, &ctx.stream.name);
    for name in crate::sidefiles::shipped_side_files(&dir) {
        if done.contains(&name) {
            continue;
        }
        let mark = format!("{key}/side/{name}");
        let marked = ctx
            .catalog
            .records::<u64>(&mark, None, false, 1)
            .map_err(internal)?
            .into_iter()
            .any(|(k, _)| k == mark);
        if !marked {
            let path = dir.join(&name);
            let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
                .await
                .map_err(internal)?
                .map_err(internal)?;
            let epoch = ctx.role.state().epoch;
            archive
                .write_side(&ctx.target.sealer, &name, &bytes, epoch)
                .await?;
            tracing::info!(file = %name, "side file uploaded");
            // No fsync: a lost mark makes the next pass find the same
            // object there (Written::AlreadyThere).
            if let Err(e) = ctx.catalog.put_record(&mark, &unix_ms(), false) {
                tracing::warn!(error = %e, "cannot mark the side file uploaded");
            }
        }
        done.insert(name);
    }
    Ok(())
}

/// Bytes `[from, to)` of the file (an error if it is shorter).
fn read_range(path: &std::path::Path, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    // A primary's durable point can run past the file it last named for a
    // moment (the next segment began): only what the file holds.
    let to = to.min(f.metadata()?.len());
    let len = usize::try_from(to.saturating_sub(from))
        .map_err(|_| std::io::Error::other("segment too large"))?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, from)?;
    Ok(buf)
}
