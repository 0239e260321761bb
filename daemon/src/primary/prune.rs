//! Spool retention at the primary: a `source = "spool"` stream's `wal_dir`
//! (filled by `drctl wal-push`) would otherwise keep every segment forever
//! and fill the database host's disk.
//!
//! A spooled segment goes once the replica holds it sealed and verified
//! (its acks say so, [`crate::node::PushState::sealed_acked`]), this
//! node's catalog records it shipped and sealed, and it is older than
//! `spool_retention`. What a rejoin, a switchover or the shipper still needs
//! stays: the fork segment, the log's last segment (positions and the next
//! seal continue from it), the replica's last sealed segment (where a
//! failover at the DR site would fork), and anything not yet acked sealed. A `tail`
//! stream's directory belongs to the database and is never touched.
//!
//! The decision is [`plan`], a pure function; [`pass`] carries it out.
//!
//! ## Order of a removal, and its fsyncs
//!
//! The catalog record is kept (marked `pruned_at_ms`): it anchors positions
//! after the file is gone, lets a re-push of the same segment be compared
//! byte for byte, and keeps the hash chain verifiable. A removal is:
//!
//! 1. mark the records pruned, one synced RocksDB batch for the pass;
//! 2. unlink the files;
//! 3. no directory fsync.
//!
//! Record first: after a crash between the two, the catalog says "pruned"
//! while the file is still there — the next pass (one runs at start) sees a
//! pruned record with a file and removes it. The other order would leave a
//! catalog that believes a file is there which is gone: `drctl verify` would
//! report it missing and the shipper's gap check could not see the hole.
//! The batch is synced so that the mark is on disk before any unlink can be
//! (ext4 may commit the unlink to its journal first). The directory is not
//! fsynced: an unlink lost in a power cut only brings back a file whose
//! record says pruned, which the next pass removes again; and the next
//! `wal-push` fsyncs the directory anyway.

use crate::config::StreamConfig;
use crate::node::{Shipper, StreamRole};
use crate::primary::source::{scan, SourceSegment};
use crate::storage::catalog::{Catalog, Role, SegmentRecord, Txn};
use drd_proto::SegmentName;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Safety-net pass besides the one after every seal the replica acks: it
/// is what removes segments whose `spool_retention` ran out while nothing
/// was shipped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(5);

/// Everything spool pruning of one stream uses, built by the composition
/// root (`Node::spool_pruner`): the passes hold this, not the node.
#[derive(Clone)]
pub struct SpoolPruner {
    pub cfg: StreamConfig,
    /// The stream's live state: its replica's sealed acks, its spool usage.
    pub shipper: Arc<Shipper>,
    /// The stream's role here: only a primary prunes, and a pass holds its
    /// transition gate.
    pub role: Arc<StreamRole>,
    /// This node's log of the stream, whose records a removal marks.
    pub catalog: Arc<Catalog>,
}

/// The facts one decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// Newest segment the replica acked sealed; every segment up to it is
    /// sealed there. "" before the first.
    pub sealed_acked: &'a str,
    /// The fork segment of the current epoch (`StreamMeta::fork`).
    pub fork: Option<&'a str>,
    /// The last segment of this node's log (`Catalog::tail`).
    pub tail: Option<&'a str>,
    pub now_ms: u64,
    pub retention: Duration,
    /// The stream's object-store targets: None without any, else the
    /// newest sealed segment every one of them holds (None inside: not
    /// the first yet). A segment no target holds yet stays.
    pub targets_hold: Option<Option<&'a str>>,
}

/// Why a spool file stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// No sealed record in this node's log: not shipped (or not sealed) yet.
    NotShipped,
    /// The replica has not acked it sealed.
    NotAckedSealed,
    /// The current epoch's fork segment: a rejoin checks the shared prefix
    /// against it.
    Fork,
    /// The newest segment of the spool or of the log: the next seal and
    /// the positions continue from it.
    Tail,
    /// The replica's newest sealed segment: a failover at the DR site
    /// would fork there, and this node's rejoin checks the shared prefix
    /// against its copy of it.
    ReplicaTail,
    /// Younger than `spool_retention`: this long (ms) to go.
    Retention { left_ms: u64 },
    /// The record says the file is not this node's source (a landing copy).
    NotInSource,
    /// An object-store target does not hold it yet.
    NotInTarget,
}

/// Why a spool file goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remove {
    /// Sealed and verified at the replica and older than the retention:
    /// mark the record, then unlink.
    Retired,
    /// The record was marked pruned but the file is still there (a crash or
    /// power cut between mark and unlink): unlink.
    Unfinished,
    /// Sealed and verified at the replica but younger than the retention;
    /// goes because the spool is at `spool_max_bytes` (see [`make_room`]).
    MakeRoom,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep(Keep),
    Remove(Remove),
}

/// Decides, for every file of the spool (in name order, with its catalog
/// record if any), whether it stays or goes. Pure: no files, no clock.
pub fn plan(files: &[(SourceSegment, Option<SegmentRecord>)], f: &Facts) -> Vec<Decision> {
    let newest_file = files.last().map(|(s, _)| s.name.as_str());
    files
        .iter()
        .map(|(file, rec)| {
            let name = file.name.as_str();
            let Some(rec) = rec.as_ref().filter(|r| r.sealed) else {
                return Decision::Keep(Keep::NotShipped);
            };
            if rec.pruned_at_ms.is_some() {
                return Decision::Remove(Remove::Unfinished);
            }
            if !rec.in_source {
                return Decision::Keep(Keep::NotInSource);
            }
            if rec.fork || f.fork == Some(name) {
                return Decision::Keep(Keep::Fork);
            }
            if f.tail.is_none_or(|t| name >= t) || Some(name) == newest_file {
                return Decision::Keep(Keep::Tail);
            }
            if f.sealed_acked.is_empty() || name > f.sealed_acked {
                return Decision::Keep(Keep::NotAckedSealed);
            }
            if name == f.sealed_acked {
                return Decision::Keep(Keep::ReplicaTail);
            }
            if f.targets_hold.is_some_and(|h| h.is_none_or(|h| name > h)) {
                return Decision::Keep(Keep::NotInTarget);
            }
            let since = rec.sealed_at_ms.unwrap_or(rec.received_at_ms);
            let due = since.saturating_add(f.retention.as_millis() as u64);
            if f.now_ms < due {
                return Decision::Keep(Keep::Retention {
                    left_ms: due - f.now_ms,
                });
            }
            Decision::Remove(Remove::Retired)
        })
        .collect()
}

/// Turns kept-for-retention files into removals, oldest first, until
/// `need` more bytes fit under `limit`. `early` is the plan with no
/// retention: only what it removes may go. Pure, like [`plan`].
pub fn make_room(
    files: &[(SourceSegment, Option<SegmentRecord>)],
    decisions: &mut [Decision],
    early: &[Decision],
    need: u64,
    limit: u64,
) {
    let mut kept: u64 = files
        .iter()
        .zip(decisions.iter())
        .filter(|(_, d)| matches!(d, Decision::Keep(_)))
        .map(|((f, _), _)| f.size)
        .sum();
    for (i, (file, _)) in files.iter().enumerate() {
        if kept.saturating_add(need) <= limit {
            return;
        }
        let young = matches!(decisions[i], Decision::Keep(Keep::Retention { .. }));
        if young && early[i] == Decision::Remove(Remove::Retired) {
            decisions[i] = Decision::Remove(Remove::MakeRoom);
            kept -= file.size;
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub segments: u64,
    pub bytes: u64,
}

/// Runs one pruning pass over `cfg`'s spool, if this node is its primary,
/// and refreshes the spool's usage. With `room_for`, segments that are safe
/// at the replica but younger than `spool_retention` go too, oldest first,
/// until that many more bytes fit under `spool_max_bytes` (the spool is at
/// its limit: a refused `wal-push` is worse than a shorter local copy).
///
/// The caller holds [`crate::node::PUSH_LOCK`], so no push
/// publishes into the spool meanwhile.
pub async fn pass(pruner: &SpoolPruner, room_for: Option<u64>) -> anyhow::Result<Pruned> {
    if !pruner.cfg.source.drd_owned() {
        return Ok(Pruned::default());
    }
    // No role change (a switchover's demotion, a rejoin's cut back) while
    // records are marked: they rewrite the same records.
    let _gate = pruner.role.transition.read().await;
    let primary = pruner.role.state().role == Role::Primary;
    let pruner = pruner.clone();
    tokio::task::spawn_blocking(move || pass_blocking(&pruner, primary, room_for))
        .await
        .map_err(|e| anyhow::anyhow!("prune task failed: {e}"))?
}

fn pass_blocking(
    pruner: &SpoolPruner,
    primary: bool,
    room_for: Option<u64>,
) -> anyhow::Result<Pruned> {
    let SpoolPruner {
        cfg,
        shipper,
        catalog,
        ..
    } = pruner;
    let stream = &cfg.name;
    let listing = scan(&cfg.wal_dir)?;
    let mut done = Pruned::default();
    if primary {
        let mut files = Vec::with_capacity(listing.len());
        for s in &listing {
            files.push((s.clone(), catalog.segment(stream, &s.name)?));
        }
        let meta = catalog.stream_meta(stream)?;
        let tail = catalog.tail(stream)?;
        let sealed_acked = shipper.push.sealed_acked.borrow().clone();
        let now_ms = crate::clock::unix_ms();
        let targets_hold = crate::targets::oldest_needed(catalog, cfg);
        let facts = Facts {
            targets_hold: targets_hold.as_ref().map(|h| h.as_deref()),
            sealed_acked: &sealed_acked,
            fork: meta.fork.as_ref().map(|f| f.segment.as_str()),
            tail: tail.as_ref().map(|t| t.name.as_str()),
            now_ms,
            retention: cfg.spool_retention,
        };
        let mut decisions = plan(&files, &facts);
        if let Some(need) = room_for {
            let early = plan(
                &files,
                &Facts {
                    retention: Duration::ZERO,
                    ..facts
                },
            );
            make_room(&files, &mut decisions, &early, need, cfg.spool_max_bytes);
        }
        let mut txn = Txn::default();
        let mut marked = 0;
        let mut remove: Vec<(&SegmentName, u64, &Remove)> = Vec::new();
        for ((file, rec), d) in files.iter().zip(&decisions) {
            let Decision::Remove(why) = d else { continue };
            match (why, rec) {
                (Remove::Unfinished, _) => {}
                (Remove::Retired | Remove::MakeRoom, Some(rec)) => {
                    txn.segment(
                        stream,
                        &SegmentRecord {
                            pruned_at_ms: Some(now_ms),
                            ..rec.clone()
                        },
                    );
                    marked += 1;
                }
                // `plan` retires only recorded segments; never unlink
                // without a mark.
                (Remove::Retired | Remove::MakeRoom, None) => continue,
            }
            remove.push((&file.name, file.size, why));
        }
        // Step 1: the marks, synced, before any unlink (see the module doc).
        if marked > 0 {
            catalog.commit_txn(txn)?;
        }
        // Step 2: the files. No directory fsync (see the module doc).
        for (name, size, why) in remove {
            let path = cfg.wal_dir.join(name.as_str());
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(anyhow::anyhow!("cannot remove {}: {e}", path.display()));
                }
            }
            done.segments += 1;
            done.bytes += size;
            match why {
                Remove::Retired => tracing::info!(%stream, segment = %name, size,
                    replica_sealed_through = %sealed_acked,
                    retention = ?facts.retention,
                    "spool: removed a segment the replica holds sealed and verified"),
                Remove::MakeRoom => tracing::warn!(%stream, segment = %name, size,
                    replica_sealed_through = %sealed_acked,
                    "spool: at spool_max_bytes; removed a segment the replica holds sealed \
                     and verified before its spool_retention ran out"),
                Remove::Unfinished => tracing::info!(%stream, segment = %name, size,
                    "spool: removed a segment already marked pruned (an earlier removal was \
                     interrupted)"),
            }
        }
    }
    let left: Vec<_> = listing.iter().collect();
    let bytes: u64 = left.iter().map(|s| s.size).sum::<u64>() - done.bytes;
    let segments = left.len() as u64 - done.segments;
    let mut u = shipper.spool_usage();
    u.bytes = bytes;
    u.segments = segments;
    u.pruned_segments += done.segments;
    u.pruned_bytes += done.bytes;
    if done.segments > 0 {
        u.full = false;
    }
    drop(u);
    crate::metrics::spool_pruned(stream.as_str(), done.segments, done.bytes);
    Ok(done)
}

/// Prunes `cfg`'s spool after every seal the replica acks and every
/// [`PRUNE_INTERVAL`], until `shutdown`. Does nothing for a `tail` stream.
pub async fn run(pruner: SpoolPruner, shutdown: CancellationToken) {
    if !pruner.cfg.source.drd_owned() {
        return;
    }
    let mut acked = pruner.shipper.push.sealed_acked.subscribe();
    loop {
        {
            let _one = crate::node::PUSH_LOCK.lock().await;
            if let Err(e) = pass(&pruner, None).await {
                tracing::warn!(stream = %pruner.cfg.name, error = %format!("{e:#}"),
                    "spool: pruning pass failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = acked.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u64) -> String {
        format!("00000001{n:016X}")
    }

    fn file(n: u64) -> SourceSegment {
        SourceSegment {
            name: SegmentName::new(name(n)).unwrap(),
            size: 100,
        }
    }

    fn sealed(n: u64, at_ms: u64) -> SegmentRecord {
        SegmentRecord {
            name: name(n),
            start: (n - 1) * 100,
            size: 100,
            sealed: true,
            sha256: Some("00".repeat(32)),
            epoch: 1,
            received_at_ms: at_ms,
            sealed_at_ms: Some(at_ms),
            fork: false,
            in_source: true,
            chain: None,
            check: None,
            pruned_at_ms: None,
        }
    }

    /// Segments 1..=5 sealed at t=1000, 6 pushed but not shipped.
    fn spool() -> Vec<(SourceSegment, Option<SegmentRecord>)> {
        let mut v: Vec<_> = (1..=5).map(|n| (file(n), Some(sealed(n, 1000)))).collect();
        v.push((file(6), None));
        v
    }

    fn facts<'a>(acked: &'a str, tail: &'a str, now_ms: u64, retention_ms: u64) -> Facts<'a> {
        Facts {
            sealed_acked: acked,
            fork: None,
            tail: Some(tail),
            now_ms,
            retention: Duration::from_millis(retention_ms),
            targets_hold: None,
        }
    }

    fn removed(d: &[Decision]) -> Vec<usize> {
        (0..d.len())
            .filter(|&i| matches!(d[i], Decision::Remove(_)))
            .map(|i| i + 1)
            .collect()
    }

    #[test]
    fn only_what_the_replica_acked_sealed_goes() {
        let (a3, t5) = (name(3), name(5));
        let d = plan(&spool(), &facts(&a3, &t5, 5000, 0));
        assert_eq!(removed(&d), [1, 2]);
        assert_eq!(d[2], Decision::Keep(Keep::ReplicaTail));
        assert_eq!(d[3], Decision::Keep(Keep::NotAckedSealed));
        assert_eq!(d[4], Decision::Keep(Keep::Tail));
        assert_eq!(d[5], Decision::Keep(Keep::NotShipped));
        // Nothing acked yet (e.g. right after a restart, before the Welcome).
        let d = plan(&spool(), &facts("", &t5, 5000, 0));
        assert!(removed(&d).is_empty(), "{d:?}");
    }

    #[test]
    fn the_tail_stays_even_when_acked() {
        let files: Vec<_> = (1..=3).map(|n| (file(n), Some(sealed(n, 0)))).collect();
        let (a3, t3) = (name(3), name(3));
        let d = plan(&files, &facts(&a3, &t3, 10, 0));
        assert_eq!(removed(&d), [1, 2]);
        assert_eq!(d[2], Decision::Keep(Keep::Tail));
        // The replica behind the log's tail: its last sealed segment stays.
        let a2 = name(2);
        let d = plan(&files, &facts(&a2, &t3, 10, 0));
        assert_eq!(removed(&d), [1]);
        assert_eq!(d[1], Decision::Keep(Keep::ReplicaTail));
        // No catalog tail at all: nothing is known to be shipped.
        let d = plan(
            &files,
            &Facts {
                tail: None,
                ..facts(&a3, &t3, 10, 0)
            },
        );
        assert!(removed(&d).is_empty());
    }

    #[test]
    fn retention_counts_from_the_seal() {
        let (a5, t5) = (name(5), name(5));
        let mut files = spool();
        files[1].1.as_mut().unwrap().sealed_at_ms = Some(4000);
        let d = plan(&files, &facts(&a5, &t5, 4500, 3000));
        // 1, 3, 4 sealed at 1000: due at 4000. 2 sealed at 4000: due at 7000.
        assert_eq!(removed(&d), [1, 3, 4]);
        assert_eq!(d[1], Decision::Keep(Keep::Retention { left_ms: 2500 }));
        let d = plan(&files, &facts(&a5, &t5, 3999, 3000));
        assert!(removed(&d).is_empty());
        let d = plan(&files, &facts(&a5, &t5, 7000, 3000));
        assert_eq!(removed(&d), [1, 2, 3, 4]);
    }

    #[test]
    fn at_the_limit_the_oldest_safe_segments_make_room() {
        let (a4, t5) = (name(4), name(5));
        let files = spool(); // six files of 100 bytes
        let f = facts(&a4, &t5, 2000, 3_600_000);
        let early = plan(
            &files,
            &Facts {
                retention: Duration::ZERO,
                ..f
            },
        );
        // Room for 100 more under 600: one file must go, the oldest.
        let mut d = plan(&files, &f);
        assert!(removed(&d).is_empty());
        make_room(&files, &mut d, &early, 100, 600);
        assert_eq!(removed(&d), [1]);
        assert_eq!(d[0], Decision::Remove(Remove::MakeRoom));
        // Room for 400: only 1..=3 may go (4 is the replica's last sealed
        // segment, 5 the tail, 6 not shipped) — not enough, but all of them.
        let mut d = plan(&files, &f);
        make_room(&files, &mut d, &early, 400, 600);
        assert_eq!(removed(&d), [1, 2, 3]);
        // Room enough already: nothing goes early.
        let mut d = plan(&files, &f);
        make_room(&files, &mut d, &early, 0, 600);
        assert!(removed(&d).is_empty());
    }

    #[test]
    fn a_segment_no_target_holds_yet_stays() {
        let (a5, t5, h2) = (name(5), name(5), name(2));
        let files = spool();
        let f = Facts {
            targets_hold: Some(Some(&h2)),
            ..facts(&a5, &t5, 5000, 0)
        };
        let d = plan(&files, &f);
        assert_eq!(removed(&d), [1, 2]);
        assert_eq!(d[2], Decision::Keep(Keep::NotInTarget));
        let f = Facts {
            targets_hold: Some(None),
            ..facts(&a5, &t5, 5000, 0)
        };
        assert!(removed(&plan(&files, &f)).is_empty());
    }

    #[test]
    fn fork_unsealed_and_foreign_records_stay_and_unfinished_removals_finish() {
        let (a5, t5, f2) = (name(5), name(5), name(2));
        let mut files = spool();
        files[0].1.as_mut().unwrap().sealed = false;
        files[2].1.as_mut().unwrap().in_source = false;
        files[3].1.as_mut().unwrap().pruned_at_ms = Some(1);
        let f = Facts {
            fork: Some(&f2),
            ..facts(&a5, &t5, 5000, 0)
        };
        let d = plan(&files, &f);
        assert_eq!(d[0], Decision::Keep(Keep::NotShipped));
        assert_eq!(d[1], Decision::Keep(Keep::Fork));
        assert_eq!(d[2], Decision::Keep(Keep::NotInSource));
        assert_eq!(d[3], Decision::Remove(Remove::Unfinished));
        // A record marked as a fork segment stays without StreamMeta::fork.
        files[1].1.as_mut().unwrap().fork = true;
        let d = plan(&files, &facts(&a5, &t5, 5000, 0));
        assert_eq!(d[1], Decision::Keep(Keep::Fork));
        // A pruned mark is finished even if the replica's acks are not
        // known yet (before the first Welcome after a restart).
        let d = plan(&files, &facts("", &t5, 5000, 0));
        assert_eq!(removed(&d), [4]);
    }
}
