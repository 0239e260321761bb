//! Closing a stream's log at a fork, and cutting a log back to one.
//!
//! Promotion closes the received log at its durable end: a partial last
//! segment becomes complete *at that length* (a fork segment), its file kept
//! as `NAME.partial`. Demotion closes the source log the same way at the
//! drained position. Rejoin cuts a fenced node's log back to the new
//! primary's fork; what lay beyond is moved to quarantine, never deleted.

use crate::clock::unix_ms;
use crate::config::StreamConfig;
use crate::node::Node;
use crate::storage::catalog::{Fork, SegmentRecord, Txn};
use crate::storage::fsutil;
use anyhow::{bail, Context};
use drd_proto::{SegmentName, StreamName};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// SHA-256 of the first `len` bytes of a file.
pub fn hash_prefix(path: &Path, len: u64) -> anyhow::Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f.take(len), &mut h)?;
    if n != len {
        bail!(
            "{} has only {n} bytes, expected at least {len}",
            path.display()
        );
    }
    Ok(hex::encode(h.finalize()))
}

/// Where the bytes of a segment record live on this node.
pub fn segment_path(node: &Node, stream: &StreamName, rec: &SegmentRecord) -> Option<PathBuf> {
    crate::walpos::segment_path(node, stream, &rec.name, rec.in_source)
}

/// Promotion: closes the received log of `stream` at its durable end.
/// Returns the fork (None when nothing was received).
pub fn close_received_log(
    node: &Node,
    stream: &StreamName,
    new_epoch: u64,
    txn: &mut Txn,
) -> anyhow::Result<Option<Fork>> {
    let cat = &node.catalog;
    let mut meta = cat.stream_meta(stream)?;
    let Some(mut rec) = cat.tail(stream)? else {
        return Ok(None);
    };
    if !rec.sealed {
        let partial = node.config.landing_dir(stream).join(format!(
            "{}{}",
            rec.name,
            drd_proto::PARTIAL_SUFFIX
        ));
        // The partial must still match its record: drd-core's tail::fork_point.
        let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let file = std::fs::File::open(&partial)
            .with_context(|| format!("cannot open {}", partial.display()))?;
        let kept = crate::replica::disk::with_crc_prefixes(&file, |crc_at| {
            drd_core::tail::fork_point(rec.size, rec.check, len, crc_at)
        })
        .with_context(|| format!("cannot read {}", partial.display()))?;
        let kept = kept.map_err(|e| {
            anyhow::anyhow!(
                "the partial segment {} does not match its catalog record ({e}): its bytes \
                 changed at rest, and a failover does not promote a corrupt log; nothing was \
                 changed — run `drctl verify`, then restore the segment from the primary site \
                 or a backup",
                partial.display()
            )
        })?;
        if kept.cut_back {
            tracing::warn!(
                segment = %rec.name,
                recorded = rec.size,
                kept = kept.keep,
                "the partial segment's last group does not match its record; the fork is at \
                 the previous durable point"
            );
            rec.size = kept.keep;
        }
        // Bytes past the durable size were never acked: cut them first, so
        // the kept file is exactly the verified prefix.
        if len > rec.size {
            fsutil::truncate_durable(&partial, rec.size)?;
        }
        let sha = hash_prefix(&partial, rec.size)?;
        // `hash_prefix` returns the hex of a 32-byte SHA-256.
        #[allow(clippy::expect_used)]
        let digest = crate::chain::from_hex(&sha).expect("hex digest");
        let chain = crate::chain::link(&meta.chain_head(), &digest, &rec.name, rec.size);
        rec.sha256 = Some(sha);
        rec.sealed = true;
        rec.fork = true;
        rec.sealed_at_ms = Some(unix_ms());
        rec.chain = Some(hex::encode(chain));
        meta.chain_head = rec.chain.clone();
        meta.sealed_segments += 1;
        txn.segment(stream, &rec);
    }
    let fork = Fork {
        segment: rec.name.clone(),
        position: rec.end(),
        epoch: new_epoch,
    };
    meta.fork = Some(fork.clone());
    txn.meta(stream, &meta);
    Ok(Some(fork))
}

/// Demotion: closes the source log at `fork_position`, which must be the end
/// of the active segment `segment` (starting at `start`): writes must have
/// stopped and the replica drained.
pub fn close_source_log(
    node: &Node,
    cfg: &StreamConfig,
    segment: &SegmentName,
    start: u64,
    fork_position: u64,
    new_epoch: u64,
    txn: &mut Txn,
) -> anyhow::Result<Fork> {
    // A spool stream seals each segment as soon as it is shipped: its
    // "active" segment is then already sealed, with its chain link, and
    // ends at the fork. Sealing it again would link it into the chain a
    // second time (and `drctl verify` would report the chain broken there):
    // record the fork at the log's end instead.
    if node
        .catalog
        .segment(&cfg.name, segment)?
        .is_some_and(|r| r.sealed && r.start == start && r.end() == fork_position)
    {
        return mark_fork_at_end(node, &cfg.name, fork_position, new_epoch, txn);
    }
    let path = cfg.wal_dir.join(segment.as_str());
    let len = fork_position
        .checked_sub(start)
        .context("fork position before the active segment's start")?;
    let size = std::fs::metadata(&path)
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if size != len {
        bail!(
            "{} has {size} bytes but the fork is at byte {len} of it: writes did not stop",
            path.display()
        );
    }
    let now = unix_ms();
    let mut meta = node.catalog.stream_meta(&cfg.name)?;
    let sha = hash_prefix(&path, len)?;
    // `hash_prefix` returns the hex of a 32-byte SHA-256.
    #[allow(clippy::expect_used)]
    let digest = crate::chain::from_hex(&sha).expect("hex digest");
    let chain = hex::encode(crate::chain::link(
        &meta.chain_head(),
        &digest,
        segment.as_str(),
        len,
    ));
    meta.chain_head = Some(chain.clone());
    let rec = SegmentRecord {
        name: segment.to_string(),
        start,
        size: len,
        sealed: true,
        chain: Some(chain),
        sha256: Some(sha),
        epoch: node.role_of(&cfg.name).map_or(0, |s| s.epoch),
        received_at_ms: now,
        sealed_at_ms: Some(now),
        fork: true,
        in_source: true,
        check: None,
        pruned_at_ms: None,
    };
    let fork = Fork {
        segment: segment.to_string(),
        position: fork_position,
        epoch: new_epoch,
    };
    meta.fork = Some(fork.clone());
    meta.sealed_segments += 1;
    txn.segment(&cfg.name, &rec).meta(&cfg.name, &meta);
    Ok(fork)
}

/// Demotion of a node that wrote nothing since its last fork: its log already
/// ends with a sealed segment at `fork_position`; record the new fork there.
pub fn mark_fork_at_end(
    node: &Node,
    stream: &StreamName,
    fork_position: u64,
    new_epoch: u64,
    txn: &mut Txn,
) -> anyhow::Result<Fork> {
    let tail = node
        .catalog
        .tail(stream)?
        .filter(|t| t.sealed && t.end() == fork_position)
        .with_context(|| {
            format!("the log of {stream} does not end with a sealed segment at {fork_position}")
        })?;
    let mut meta = node.catalog.stream_meta(stream)?;
    let fork = Fork {
        segment: tail.name,
        position: fork_position,
        epoch: new_epoch,
    };
    meta.fork = Some(fork.clone());
    txn.meta(stream, &meta);
    Ok(fork)
}

/// A file moved (or a tail copied) into quarantine.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub path: PathBuf,
    pub bytes: u64,
    pub from: PathBuf,
}

/// The new primary's fork segment as it reported it.
#[derive(Debug, Clone)]
pub struct RemoteFork {
    pub segment: SegmentName,
    pub start: u64,
    pub position: u64,
    pub sha256: String,
    /// Hash chain value after the fork segment at the new primary.
    pub chain: String,
    pub epoch: u64,
}

impl RemoteFork {
    /// The fork as the new primary reported it (its `LogInfo`: the fork
    /// segment's record and the fork position), checked before any
    /// arithmetic: the fork position must lie within the fork segment.
    pub fn from_peer(
        seg: &drd_proto::pb::SegmentInfo,
        position: u64,
        epoch: u64,
    ) -> Result<Self, drd_proto::ProtocolError> {
        let segment = SegmentName::new(seg.name.clone())?;
        let impossible = |expected: String| drd_proto::ProtocolError::Impossible {
            what: "fork",
            value: format!(
                "position {position} in segment {segment} (start {}, {} bytes)",
                seg.start, seg.size
            ),
            expected,
        };
        let end = seg
            .start
            .checked_add(seg.size)
            .ok_or_else(|| impossible(format!("the segment to end at most at {}", u64::MAX)))?;
        if !(seg.start..=end).contains(&position) {
            return Err(impossible(format!(
                "a fork position from {} to {end}, inside its fork segment",
                seg.start
            )));
        }
        Ok(RemoteFork {
            segment,
            start: seg.start,
            position,
            sha256: seg.sha256.clone(),
            chain: seg.chain.clone(),
            epoch,
        })
    }

    /// The fork from the new primary's checked record of its fork segment
    /// (see [`Self::from_peer`] for the checks).
    pub fn from_rec(
        seg: &crate::ops::logcmp::Rec,
        position: u64,
        epoch: u64,
    ) -> Result<Self, drd_proto::ProtocolError> {
        let info = drd_proto::pb::SegmentInfo {
            name: seg.name.to_string(),
            start: seg.start,
            size: seg.size,
            sealed: seg.sealed,
            sha256: seg.sha256.clone(),
            chain: seg.chain.clone().unwrap_or_default(),
            ..Default::default()
        };
        Self::from_peer(&info, position, epoch)
    }

    /// Bytes of the fork segment before the fork position.
    pub fn len_in_segment(&self) -> anyhow::Result<u64> {
        self.position.checked_sub(self.start).with_context(|| {
            format!(
                "the new primary's fork position {} lies before the start {} of its fork \
                 segment {}; refusing to rejoin (nothing changed)",
                self.position, self.start, self.segment
            )
        })
    }
}

/// Rejoin's cut, checked and listed ([`plan_cut`]): nothing has changed
/// yet. [`quarantine`] carries it out; [`record_cut`] records it.
#[derive(Debug)]
pub struct CutPlan {
    /// Where this node holds the fork segment, and whether that is its
    /// source directory (else its landing directory).
    fork_file: PathBuf,
    in_source: bool,
    /// Bytes of the fork segment this node holds, and how many of them
    /// stay (the shared prefix, up to the fork position).
    have: u64,
    keep: u64,
    /// Every file past the fork: where it is, its file name, its size.
    past_fork: Vec<(PathBuf, String, u64)>,
}

/// Rejoin, first half: checks that this node's log of `cfg.name` can be cut
/// back to `fork` (it holds the fork segment, whose prefix up to the fork
/// is the new primary's) and lists what lies past it. Changes nothing.
/// Counts what will move in `progress`.
pub fn plan_cut(
    node: &Node,
    cfg: &StreamConfig,
    fork: &RemoteFork,
    progress: &crate::progress::Operation,
) -> anyhow::Result<CutPlan> {
    let stream = &cfg.name;
    let landing = node.config.landing_dir(stream);
    fork.len_in_segment()?;
    // Where this node holds the fork segment: its source, or its landing dir.
    let candidates = [
        (cfg.wal_dir.join(fork.segment.as_str()), true),
        (landing.join(fork.segment.as_str()), false),
        (landing.join(fork.segment.partial_file_name()), false),
    ];
    let (fork_file, in_source) = candidates
        .into_iter()
        .find(|(p, _)| p.exists())
        .with_context(|| {
            format!(
                "this node does not hold the fork segment {}; it cannot rejoin by cutting back — \
                 rebuild it from the new primary instead",
                fork.segment
            )
        })?;
    progress.set_phase(format!("checking the shared prefix of {}", fork.segment));
    let have = std::fs::metadata(&fork_file)?.len();
    // Every segment file this node holds, in its source and landing dirs.
    let mut held = Vec::new();
    for dir in [cfg.wal_dir.clone(), landing.clone()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            let base = name
                .strip_suffix(drd_proto::PARTIAL_SUFFIX)
                .unwrap_or(&name);
            if let Ok(seg) = SegmentName::new(base) {
                held.push((seg, dir.join(&name), name));
            }
        }
    }
    // What moves is drd-core's decision (fork::Fork::plan); it checks first,
    // so nothing changes when the shared prefix does not match.
    let mut ours = None;
    let plan = drd_core::fork::Fork {
        segment: fork.segment.clone(),
        start: fork.start,
        position: fork.position,
    }
    .plan(
        have,
        |len| {
            let h = hash_prefix(&fork_file, len);
            let same = h.as_ref().is_ok_and(|h| *h == fork.sha256);
            ours = Some(h);
            same
        },
        held.iter().map(|(seg, _, _)| seg.clone()),
    );
    if let Some(Err(e)) = ours {
        return Err(e.context(format!("cannot read {}", fork_file.display())));
    }
    let plan = plan.map_err(|e| match (&e, ours) {
        (drd_core::fork::CutError::Diverged { .. }, Some(Ok(h))) => anyhow::anyhow!(
            "{e} (sha256 of this node's {} is {h}, the new primary's {})",
            fork_file.display(),
            fork.sha256
        ),
        _ => anyhow::anyhow!("{e}"),
    })?;

    // Checks passed: list what lies past the fork, so the progress has a
    // total.
    let mut past_fork = Vec::new();
    for (seg, from, name) in held {
        if !plan.quarantine.contains(&seg) {
            continue;
        }
        let bytes = std::fs::metadata(&from)?.len();
        past_fork.push((from, name, bytes));
    }
    let tail_bytes = plan.tail_bytes;
    progress.set_totals(
        past_fork
            .iter()
            .map(|(_, _, b)| *b)
            .fold(tail_bytes, u64::saturating_add),
        past_fork.len() as u64 + u64::from(tail_bytes > 0),
    );
    Ok(CutPlan {
        fork_file,
        in_source,
        have,
        keep: plan.keep,
        past_fork,
    })
}

/// Rejoin, second half: moves everything past the fork into `quarantine`
/// (never deletes it) and cuts the fork segment back to the fork. The first
/// step of a rejoin that changes anything. Counts the files and bytes it
/// moves in `progress`.
pub fn quarantine(
    plan: &CutPlan,
    fork: &RemoteFork,
    quarantine: &Path,
    progress: &crate::progress::Operation,
) -> anyhow::Result<Vec<Quarantined>> {
    let (fork_file, have, fork_len) = (&plan.fork_file, plan.have, plan.keep);
    progress.set_phase(format!("moving to quarantine {}", quarantine.display()));
    fsutil::create_dir_durable(quarantine)?;
    let mut moved = Vec::new();
    for (from, name, bytes) in &plan.past_fork {
        let to = quarantine.join(name);
        fsutil::move_durable(from, &to)
            .with_context(|| format!("cannot move {} to quarantine", from.display()))?;
        progress.add_done(*bytes, 1);
        moved.push(Quarantined {
            path: to,
            bytes: *bytes,
            from: from.clone(),
        });
    }
    if have > fork_len {
        let to = quarantine.join(format!("{}.after-fork-at-{fork_len}", fork.segment));
        let mut src = std::fs::File::open(fork_file)?;
        src.seek(SeekFrom::Start(fork_len))?;
        let mut out = std::fs::File::create(&to)?;
        std::io::copy(&mut src, &mut out)?;
        out.flush()?;
        // The copy must be durable before the original bytes are cut.
        out.sync_all()?;
        moved.push(Quarantined {
            path: to,
            bytes: have - fork_len,
            from: fork_file.clone(),
        });
        fsutil::truncate_durable(fork_file, fork_len)?;
        progress.add_done(have - fork_len, 1);
    }
    fsutil::fsync_dir(quarantine)?;
    Ok(moved)
}

/// Rejoin: records the cut in `txn` (committed with the new role). Drops
/// the records past the fork and records the fork segment as the new
/// primary has it.
pub fn record_cut(
    node: &Node,
    cfg: &StreamConfig,
    fork: &RemoteFork,
    plan: &CutPlan,
    txn: &mut Txn,
) -> anyhow::Result<()> {
    let stream = &cfg.name;
    // Catalog: drop records past the fork (only those: the walk starts at
    // the fork segment), record the fork segment.
    node.catalog
        .for_each_segment(stream, Some(&fork.segment), |rec| {
            txn.delete_segment(stream, rec);
            Ok(true)
        })?;
    // The fork segment's own record may start elsewhere on this node: its
    // old position index entry goes with it.
    if let Some(old) = node.catalog.segment(stream, &fork.segment)? {
        txn.delete_segment(stream, &old);
    }
    let now = unix_ms();
    txn.segment(
        stream,
        &SegmentRecord {
            name: fork.segment.to_string(),
            start: fork.start,
            size: plan.keep,
            sealed: true,
            sha256: Some(fork.sha256.clone()),
            chain: Some(fork.chain.clone()),
            check: None,
            pruned_at_ms: None,
            epoch: fork.epoch,
            received_at_ms: now,
            sealed_at_ms: Some(now),
            fork: true,
            in_source: plan.in_source,
        },
    );
    let mut meta = node.catalog.stream_meta(stream)?;
    meta.fork = Some(Fork {
        segment: fork.segment.to_string(),
        position: fork.position,
        epoch: fork.epoch,
    });
    meta.source_position = fork.position;
    meta.chain_head = Some(fork.chain.clone());
    txn.meta(stream, &meta);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drd_proto::pb::SegmentInfo;

    fn seg(start: u64, size: u64) -> SegmentInfo {
        SegmentInfo {
            name: "000000010000000000000002".into(),
            start,
            size,
            sealed: true,
            ..Default::default()
        }
    }

    /// Issue 15: rejoin computed `fork position - segment start` on the new
    /// primary's word, unchecked: a fork before its segment's start was a
    /// panic in debug builds and a huge length in release.
    #[test]
    fn hostile_forks_from_the_new_primary_are_refused() {
        let ok = RemoteFork::from_peer(&seg(16 << 20, 5000), (16 << 20) + 5000, 3).unwrap();
        assert_eq!(ok.len_in_segment().unwrap(), 5000);
        assert_eq!(
            RemoteFork::from_peer(&seg(100, 50), 100, 3)
                .unwrap()
                .len_in_segment()
                .unwrap(),
            0
        );
        for (s, position) in [
            (seg(1000, 10), 999),                // before the segment
            (seg(1000, 10), 1011),               // past its end
            (seg(1000, 10), u64::MAX),           // far beyond the log
            (seg(u64::MAX - 1, 10), u64::MAX),   // a segment that cannot end
            (seg(u64::MAX, u64::MAX), u64::MAX), // sizes at u64::MAX
        ] {
            let e = RemoteFork::from_peer(&s, position, 3)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("impossible fork") && e.contains(&format!("position {position}")),
                "{e}"
            );
        }
        let bad_name = SegmentInfo {
            name: "../x".into(),
            ..seg(0, 10)
        };
        assert!(RemoteFork::from_peer(&bad_name, 5, 3).is_err());
        // Built by hand, past the checks: still an error, not a panic.
        let hand = RemoteFork {
            position: 5,
            start: 10,
            ..ok
        };
        let e = format!("{:#}", hand.len_in_segment().unwrap_err());
        assert!(
            e.contains("fork position 5") && e.contains("start 10"),
            "{e}"
        );
    }
}
