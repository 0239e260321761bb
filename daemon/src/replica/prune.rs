//! Carries out the DR site's retention policy ([`super::retention`]) for
//! each received stream: a pass every [`PRUNE_INTERVAL`] while this node is
//! a replica, and `drctl prune` (`--dry-run` shows what a pass would remove
//! and why, and changes nothing).
//!
//! ## Order of a removal, and its fsyncs
//!
//! A pass removes up to [`BATCH_SEGMENTS`] segments (and [`BATCH_BYTES`]),
//! oldest first:
//!
//! 1. one synced catalog batch deletes their records and position index
//!    entries, moves the pruning boundary (the last segment removed, its
//!    end position and the hash chain value after it) and lists the files
//!    to unlink, with one audit record for the batch;
//! 2. the files are unlinked;
//! 3. the list is cleared (not synced: if that write is lost, the next
//!    pass unlinks files that are already gone, which is harmless);
//! 4. the deleted keys are compacted, so RocksDB gives their space back.
//!
//! Records first, synced, so that a catalog never names a file that is
//! gone (`drctl verify` would report it missing, `wal-fetch` would offer
//! it). A crash between 1 and 2 leaves files with no record: the list in
//! the retention state names them, and the next pass (one runs at start)
//! unlinks them. The directory is not fsynced after the unlinks: an unlink
//! lost in a power cut brings back a file that has no record, which
//! nothing serves; the list still names it until step 3 is on disk.
//!
//! Deleting large files makes this VM's fsyncs stall (discard on the
//! mount), which would delay replication acks: the batch bounds keep one
//! pass's deletions small, and the next batch waits [`BATCH_PAUSE`].

use super::retention::{self, Facts, Keep, Planner, Policy, Remove, Retention};
use crate::caller::Caller;
use crate::node::Roles;
use crate::storage::catalog::{
    AuditRecord, Catalog, PruneBoundary, Role, RoleState, SegmentRecord, Txn,
};
use drd_proto::{SegmentName, StreamName};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often each stream's policy is applied.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(30);
/// Most segments one batch removes (one catalog commit, one audit record).
pub const BATCH_SEGMENTS: usize = 1_000;
/// Most bytes one batch removes: bounds the burst of file deletions.
pub const BATCH_BYTES: u64 = 1 << 30;
/// Pause between batches while a backlog is removed.
pub const BATCH_PAUSE: Duration = Duration::from_millis(200);
/// Most segments a reply lists (the counts cover all of them).
pub const MAX_LISTED: usize = 1_000;

/// Only one pass at a time per node (the timer and `drctl prune`).
static PRUNE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Everything the DR site's retention passes use, built by the composition
/// root (`Node::retention_pruner`): the passes hold this, not the node.
pub struct RetentionPruner {
    /// The received streams' records, which a pass deletes.
    pub catalog: Arc<Catalog>,
    /// Every stream's role here: only a replica's copy is pruned, and a
    /// pass holds the stream's transition gate.
    pub roles: Arc<Roles>,
    /// `[replica.retention]`; None without a `[replica]` section.
    pub retention: Option<Retention>,
    /// Where the landing files are (`data_dir`).
    pub data_dir: PathBuf,
    /// The configured streams: what their object-store targets hold
    /// bounds what retention removes.
    pub streams: Vec<crate::config::StreamConfig>,
}

impl RetentionPruner {
    /// `stream`'s policy here, if it has one.
    fn policy_for(&self, stream: &StreamName) -> Option<&Policy> {
        self.retention.as_ref()?.for_stream(stream)
    }
}

/// One segment a pass removed (or would remove).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub segment: String,
    pub size: u64,
    pub age_ms: u64,
    pub why: Remove,
}

/// What a pass did (or, dry, would do).
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub stream: String,
    /// The policy applied, as text; None: the stream has none here.
    pub policy: Option<String>,
    /// The node is not a replica: nothing is pruned (the log it serves as
    /// primary, or a fenced node's, is not the DR copy).
    pub not_replica: Option<String>,
    pub segments: u64,
    pub bytes: u64,
    /// The first [`MAX_LISTED`] of them, oldest first.
    pub listed: Vec<Item>,
    /// The oldest segment that stays, and why.
    pub kept: Option<(SegmentRecord, Keep)>,
    /// A real pass stopped at a batch bound: more goes in the next one.
    pub more: bool,
    /// The boundary after the pass.
    pub boundary: Option<PruneBoundary>,
    /// The newest segment `wal-fetch` served.
    pub fetched: Option<String>,
}

/// Plans (and unless `dry_run`, carries out one batch of) the policy for
/// `stream`. Runs on a blocking thread.
fn pass_blocking(
    pruner: &RetentionPruner,
    stream: &StreamName,
    policy: &Policy,
    dry_run: bool,
    who: &Caller,
) -> anyhow::Result<Outcome> {
    let cat = &pruner.catalog;
    let mut state = cat.retention(stream)?;
    let landing = crate::config::landing_dir(&pruner.data_dir, stream);
    // A crash after an earlier batch's commit left files to unlink.
    if !dry_run && !state.unlink.is_empty() {
        unlink_all(&landing, &state.unlink)?;
        state.unlink.clear();
        let mut t = Txn::default();
        t.retention(stream, &state);
        cat.commit_txn(t)?;
    }
    let fetched = cat.fetched(stream)?;
    let last_sealed = cat.last_sealed(stream)?;
    let stored_bytes = if policy.max_bytes.is_some() {
        let mut total = 0u64;
        cat.for_each_segment(stream, None, |r| {
            total = total.saturating_add(retention::stored_size(r));
            Ok(true)
        })?;
        total
    } else {
        0
    };
    let now_ms = crate::clock::unix_ms();
    let targets_hold = pruner
        .streams
        .iter()
        .find(|c| &c.name == stream)
        .and_then(|c| crate::targets::oldest_needed(cat, c));
    let facts = Facts {
        targets_hold: targets_hold.as_ref().map(|h| h.as_deref()),
        now_ms,
        fetched: fetched.as_ref().map(|f| f.segment.as_str()),
        last_sealed: last_sealed.as_ref().map(|r| r.name.as_str()),
        stored_bytes,
    };
    let mut planner = Planner::new(policy, facts);
    let mut out = Outcome {
        stream: stream.to_string(),
        policy: Some(policy.to_string()),
        fetched: fetched.as_ref().map(|f| f.segment.clone()),
        ..Default::default()
    };
    let mut batch: Vec<SegmentRecord> = Vec::new();
    let mut batch_bytes = 0u64;
    cat.for_each_segment(stream, None, |rec| match planner.next(rec) {
        Ok(why) => {
            if !dry_run
                && (batch.len() >= BATCH_SEGMENTS
                    || (!batch.is_empty() && batch_bytes.saturating_add(rec.size) > BATCH_BYTES))
            {
                out.more = true;
                return Ok(false);
            }
            out.segments += 1;
            out.bytes = out.bytes.saturating_add(retention::stored_size(rec));
            if out.listed.len() < MAX_LISTED {
                out.listed.push(Item {
                    segment: rec.name.clone(),
                    size: rec.size,
                    age_ms: retention::age_ms(rec, now_ms),
                    why,
                });
            }
            if !dry_run {
                batch_bytes = batch_bytes.saturating_add(rec.size);
                batch.push(rec.clone());
            }
            Ok(true)
        }
        Err(keep) => {
            out.kept = Some((rec.clone(), keep));
            Ok(false)
        }
    })?;
    if dry_run || batch.is_empty() {
        out.boundary = state.boundary;
        return Ok(out);
    }
    // `batch` is not empty here.
    #[allow(clippy::expect_used)]
    let last = batch.last().expect("a batch").clone();
    let first = batch[0].name.clone();
    let last_name = last.segment_name()?;
    let boundary = PruneBoundary {
        segment: last.name.clone(),
        end: last.end(),
        chain: last.chain.clone().unwrap_or_default(),
        at_ms: now_ms,
    };
    // Step 1: records out, boundary and the unlink list in, synced.
    let mut t = Txn::default();
    for r in &batch {
        t.delete_segment(stream, r);
    }
    state.boundary = Some(boundary.clone());
    state.pruned_segments = state.pruned_segments.saturating_add(out.segments);
    state.pruned_bytes = state.pruned_bytes.saturating_add(out.bytes);
    state.unlink = batch
        .iter()
        .filter(|r| retention::stored_size(r) > 0 && !r.in_source)
        .map(|r| r.name.clone())
        .collect();
    t.retention(stream, &state);
    let role = pruner
        .roles
        .role_of(stream)
        .unwrap_or_else(|| RoleState::new(Role::Replica, 0));
    let kept_text = out.kept.as_ref().map_or_else(
        || "nothing".to_string(),
        |(r, k)| format!("{} ({k})", r.name),
    );
    t.audit(AuditRecord {
        user: who.user.clone(),
        origin: who.origin.clone(),
        reason: format!("retention policy of stream {stream}: {policy}"),
        detail: format!(
            "removed {} segments ({}) {first}..{}, chain value after it {}; oldest kept {kept_text}",
            out.segments,
            crate::display::bytes(out.bytes),
            last.name,
            boundary.chain,
        ),
        ..AuditRecord::role_change("prune", &role, &role)
    });
    cat.commit_txn(t)?;
    // Step 2: the files. No directory fsync (see the module doc).
    unlink_all(&landing, &state.unlink)?;
    // Step 3: the list done; not synced (see the module doc).
    state.unlink.clear();
    let mut t = Txn::default();
    t.retention(stream, &state);
    cat.commit_txn(t)?;
    // Step 4: give the space of the deleted keys back.
    cat.compact_pruned(stream, &last_name, last.start);
    tracing::info!(%stream, segments = out.segments, bytes = out.bytes, first = %first,
        last = %last.name, oldest_kept = %kept_text,
        "retention: removed segments by this DR site's policy");
    out.boundary = Some(boundary);
    Ok(out)
}

fn unlink_all(landing: &std::path::Path, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        // Names in the catalog were validated when they were stored; a
        // damaged one is skipped rather than joined into a path.
        let Ok(seg) = SegmentName::new(name.as_str()) else {
            tracing::warn!(segment = %name, "retention: invalid name in the unlink list; skipped");
            continue;
        };
        // A segment closed at a fork keeps the `.partial` name
        // (PostgreSQL's convention); any other has its complete name.
        for path in [
            landing.join(seg.as_str()),
            landing.join(seg.partial_file_name()),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot remove {}: {e}", path.display()),
            }
        }
    }
    Ok(())
}

/// Applies `stream`'s policy once: dry (plan only), or one batch. Holds
/// the role-transition gate (no failover or rejoin rewrites records
/// meanwhile) and the node's prune lock.
pub async fn pass(
    pruner: &Arc<RetentionPruner>,
    stream: &StreamName,
    dry_run: bool,
    who: Caller,
) -> anyhow::Result<Outcome> {
    let Some(policy) = pruner.policy_for(stream).cloned() else {
        return Ok(Outcome {
            stream: stream.to_string(),
            ..Default::default()
        });
    };
    let _one = PRUNE_LOCK.lock().await;
    let stream_role = pruner.roles.stream_role(stream)?;
    let _gate = stream_role.transition.read().await;
    let role = stream_role.state().role;
    if role != Role::Replica {
        return Ok(Outcome {
            stream: stream.to_string(),
            policy: Some(policy.to_string()),
            not_replica: Some(format!(
                "{stream} is {} on this node: retention applies to the DR copy a replica keeps",
                role.as_str()
            )),
            ..Default::default()
        });
    }
    let (n, s) = (pruner.clone(), stream.clone());
    let out = tokio::task::spawn_blocking(move || pass_blocking(&n, &s, &policy, dry_run, &who))
        .await
        .map_err(|e| anyhow::anyhow!("prune task failed: {e}"))??;
    if !dry_run {
        publish(&pruner.catalog, stream, &out);
    }
    Ok(out)
}

/// Metrics after a pass.
fn publish(catalog: &Catalog, stream: &StreamName, out: &Outcome) {
    let Ok(state) = catalog.retention(stream) else {
        return;
    };
    let oldest = out.kept.as_ref().map(|(r, _)| {
        let age = retention::age_ms(r, crate::clock::unix_ms()) as f64 / 1000.0;
        (age, r.start)
    });
    crate::metrics::retention(
        stream.as_str(),
        state.pruned_segments,
        state.pruned_bytes,
        oldest,
    );
}

/// Applies every received stream's policy each [`PRUNE_INTERVAL`] until
/// `shutdown`; a backlog goes batch by batch, [`BATCH_PAUSE`] apart.
pub async fn run(pruner: Arc<RetentionPruner>, shutdown: CancellationToken) {
    let has_policy = pruner
        .retention
        .as_ref()
        .is_some_and(|r| r.default.is_some() || !r.streams.is_empty());
    if !has_policy {
        return;
    }
    let who = Caller {
        user: "drd".into(),
        origin: "retention policy ([replica.retention])".into(),
    };
    loop {
        let mut more = false;
        for stream in pruner.roles.stream_names() {
            if pruner.policy_for(&stream).is_none() {
                continue;
            }
            match pass(&pruner, &stream, false, who.clone()).await {
                Ok(o) => more |= o.more,
                Err(e) => tracing::warn!(%stream, error = %format!("{e:#}"),
                    "retention: pruning pass failed; retrying"),
            }
        }
        let wait = if more { BATCH_PAUSE } else { PRUNE_INTERVAL };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
