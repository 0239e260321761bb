//! Brings a stream's landing directory back in line with the catalog after a
//! crash, before anything is served: the catalog's durable size is the truth.
//!
//! - bytes past the durable size of the partial segment were never acked:
//!   they are cut off (and the cut is fsynced);
//! - a segment renamed to its final name whose seal was not yet committed
//!   gets its `.partial` name back (the primary re-sends the seal, and it is
//!   verified again). A group commit seals several segments at once and
//!   renames them all before its catalog commit, so this may be the tail
//!   record's file or files past the tail with no record at all
//!   ([`unrecorded_complete`]);
//! - a segment recorded sealed whose file is still under its `.partial`
//!   name (a rename lost) is checked against the record's SHA-256 and
//!   renamed. drd commits a seal only after the rename and the directory
//!   fsync, so this needs the directory's entries to have been changed
//!   behind its back or lost; it is checked all the same, walking back
//!   from the tail while sealed records lack their file;
//! - a partial tail whose file is missing while its record says no byte of
//!   it was ever acked (its previous point is 0) is created empty: its
//!   directory entry did not reach the disk, and nothing in it was acked;
//! - the partial segment's durable bytes are checked against the CRC32C in
//!   its record. A group's fdatasync runs alongside its catalog commit, so
//!   after a power loss the record may name bytes that never reached the
//!   disk (and were never acked): then the record's previous point, synced
//!   before that commit began, must match, and the segment is cut back to
//!   it ([`Reconciled::cut_back_to`]; the caller rewrites the record);
//! - anything else — fewer bytes than the catalog says, or bytes that match
//!   neither point — means the landing directory was changed behind drd's
//!   back or the disk lost synced data: that is an error, never papered
//!   over.

use crate::storage::catalog::{PartialCheck, SegmentRecord};
use crate::storage::fsutil;
use anyhow::{bail, Context};
use drd_proto::{SegmentName, PARTIAL_SUFFIX};
use std::path::Path;

/// What reconciliation changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub truncated_bytes: u64,
    pub unsealed: bool,
    /// Sealed segments found under their `.partial` name, checked against
    /// their SHA-256 and renamed to their complete name.
    pub renamed_sealed: Vec<String>,
    /// Complete-named files past the tail with no record, given back their
    /// `.partial` name (never acked; see [`unrecorded_complete`]).
    pub unrecorded: Vec<String>,
    /// The record's size did not check out but its previous point did: the
    /// partial segment was cut back to this size, and the catalog record
    /// must say so (see [`cut_back_record`]).
    pub cut_back_to: Option<u64>,
}

/// The tail record after a cut back to its previous point. Only for a
/// record that [`reconcile_tail`] cut back (`cut_back_to` is set), which it
/// does only with the record's check.
pub fn cut_back_record(rec: &SegmentRecord) -> SegmentRecord {
    // `cut_back_to` is set only inside `if let Some(check) = rec.check`.
    #[allow(clippy::expect_used)]
    let check = rec.check.expect("cut back only with a check");
    SegmentRecord {
        size: check.prev_size,
        check: Some(PartialCheck {
            crc32c: check.prev_crc32c,
            prev_size: check.prev_size,
            prev_crc32c: check.prev_crc32c,
        }),
        ..rec.clone()
    }
}

/// Reconciles one stream's landing directory: the tail segment, the
/// sealed records just before it, and complete-named files past it.
/// `tail` is the catalog's last segment record (None: the stream holds
/// nothing yet); `previous` returns the record before the one given.
pub fn reconcile_stream(
    landing: &Path,
    tail: Option<&SegmentRecord>,
    mut previous: impl FnMut(&SegmentRecord) -> anyhow::Result<Option<SegmentRecord>>,
) -> anyhow::Result<Reconciled> {
    let Some(tail) = tail else {
        return Ok(Reconciled::default());
    };
    // A sealed tail's own rename is finished here; a partial one's
    // predecessor may be sealed in the same commit.
    let mut renamed_sealed = Vec::new();
    let mut cur = if tail.sealed {
        Some(tail.clone())
    } else {
        previous(tail)?
    };
    while let Some(rec) =
        cur.filter(|r| r.sealed && !r.fork && !r.in_source && r.pruned_at_ms.is_none())
    {
        if !finish_rename(landing, &rec)? {
            break;
        }
        renamed_sealed.push(rec.name.clone());
        cur = previous(&rec)?;
    }
    if !renamed_sealed.is_empty() {
        // One fsync for the renames: the complete names are durable.
        fsutil::fsync_dir(landing)
            .with_context(|| format!("cannot fsync {}", landing.display()))?;
    }
    let mut out = reconcile_tail(landing, Some(tail))?;
    out.renamed_sealed = renamed_sealed;
    out.unrecorded = unrecorded_complete(landing, tail)?;
    Ok(out)
}

/// A sealed segment whose complete name is missing: if its `.partial` file
/// holds exactly the sealed bytes (size and SHA-256 as recorded), renames
/// it (the caller fsyncs the directory) and returns true; false if the
/// complete name is there (nothing to do). Anything else is an error.
fn finish_rename(landing: &Path, rec: &SegmentRecord) -> anyhow::Result<bool> {
    let name =
        SegmentName::new(rec.name.clone()).context("catalog holds an invalid segment name")?;
    let complete = landing.join(name.as_str());
    if complete.exists() {
        return Ok(false);
    }
    let partial = landing.join(name.partial_file_name());
    let file = std::fs::File::open(&partial).with_context(|| {
        format!(
            "sealed segment {} is missing (and so is its .partial file)",
            complete.display()
        )
    })?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", partial.display()))?
        .len();
    let digest = crate::storage::segments::hash_file(&file)
        .with_context(|| format!("cannot read {}", partial.display()))?;
    if len != rec.size || rec.sha256.as_deref() != Some(hex::encode(digest).as_str()) {
        bail!(
            "sealed segment {} is missing and {} ({len} bytes) does not hold its sealed bytes \
             ({} bytes, SHA-256 {}): the landing directory was changed outside drd or the disk \
             lost synced data — run `drctl verify`, then rebuild this replica with `drctl rejoin`",
            complete.display(),
            partial.display(),
            rec.size,
            rec.sha256.as_deref().unwrap_or("unknown")
        );
    }
    std::fs::rename(&partial, &complete)
        .with_context(|| format!("cannot rename {} to its complete name", partial.display()))?;
    Ok(true)
}

/// Complete-named segment files after `tail` in name order, which have no
/// record: a group's renames reached the disk but its catalog commit did
/// not (drd renames before it commits). Nothing of them was acked; each
/// gets its `.partial` name back (a stray, left alone and reported, until
/// the primary sends the segment again and it is rewritten from the
/// start), so that a complete name always has a sealed record. Returns
/// their names.
pub fn unrecorded_complete(landing: &Path, tail: &SegmentRecord) -> anyhow::Result<Vec<String>> {
    if tail.in_source {
        // This node's own log goes on in its source directory.
        return Ok(Vec::new());
    }
    let dir = match std::fs::read_dir(landing) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", landing.display())),
    };
    let mut found = Vec::new();
    for entry in dir {
        let entry = entry.with_context(|| format!("cannot list {}", landing.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.ends_with(PARTIAL_SUFFIX) || name.as_str() <= tail.name.as_str() {
            continue;
        }
        let Ok(seg) = SegmentName::new(name.clone()) else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let partial = landing.join(seg.partial_file_name());
        if partial.exists() {
            // Not ours to choose between them: leave both, reported.
            tracing::warn!(file = %name, "an unrecorded complete file and its .partial both exist; left alone");
            continue;
        }
        std::fs::rename(landing.join(&name), &partial)
            .with_context(|| format!("cannot rename {name} back to .partial"))?;
        found.push(name);
    }
    if !found.is_empty() {
        fsutil::fsync_dir(landing)
            .with_context(|| format!("cannot fsync {}", landing.display()))?;
    }
    found.sort();
    Ok(found)
}

/// Reconciles the tail segment of one stream. `tail` is the catalog's last
/// segment record (None: the stream holds nothing yet).
pub fn reconcile_tail(landing: &Path, tail: Option<&SegmentRecord>) -> anyhow::Result<Reconciled> {
    let mut out = Reconciled::default();
    let Some(rec) = tail else { return Ok(out) };
    if rec.in_source {
        // A segment this node shipped as primary: it lives in the source
        // directory, which the landing directory's reconciliation does not own.
        return Ok(out);
    }
    let name =
        SegmentName::new(rec.name.clone()).context("catalog holds an invalid segment name")?;
    let complete = landing.join(name.as_str());
    let partial = landing.join(name.partial_file_name());
    if rec.sealed {
        // A fork segment keeps its `.partial` name (PostgreSQL's convention).
        let complete = if rec.fork && !complete.exists() {
            partial.clone()
        } else {
            complete
        };
        let len = std::fs::metadata(&complete)
            .with_context(|| format!("sealed segment {} is missing", complete.display()))?
            .len();
        if len != rec.size {
            bail!(
                "sealed segment {} has {len} bytes but the catalog recorded {}; \
                 the landing directory was changed outside drd — restore the file \
                 from the primary or run `drctl verify`",
                complete.display(),
                rec.size
            );
        }
        return Ok(out);
    }
    if !partial.exists() && complete.exists() {
        // Renamed during a seal whose catalog commit did not happen: the seal
        // was never acked, so the segment is partial again.
        fsutil::rename_durable(&complete, &partial)
            .with_context(|| format!("cannot rename {} back to .partial", complete.display()))?;
        out.unsealed = true;
    }
    let len = match std::fs::metadata(&partial) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && rec.size == 0 => return Ok(out),
        // The group that created the file fsyncs the directory before its
        // commit, so this needs a lost entry all the same; but a previous
        // point of 0 means no byte of the segment was ever acked (an ack
        // follows a completed flush, and that flush's size is the next
        // record's previous point): start the segment over, empty.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && rec.check.is_some_and(|c| c.prev_size == 0) =>
        {
            let f = fsutil::open_for_write(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            // The new entry must be durable before the record says so.
            f.sync_all()
                .and_then(|()| fsutil::fsync_dir(landing))
                .with_context(|| format!("cannot fsync {}", partial.display()))?;
            out.cut_back_to = Some(0);
            return Ok(out);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "partial segment {} is missing but the catalog recorded {} durable bytes",
                    partial.display(),
                    rec.size
                )
            })
        }
    };
    // How much of the file holds is drd-core's decision (tail::recover):
    // the record's size if its CRC matches, else the previous point.
    let file = std::fs::File::open(&partial)
        .with_context(|| format!("cannot open {}", partial.display()))?;
    let decided = crate::replica::disk::with_crc_prefixes(&file, |crc_at| {
        drd_core::tail::recover(rec.size, rec.check, len, crc_at)
    })
    .with_context(|| format!("cannot read {}", partial.display()))?;
    let kept = match decided {
        Ok(k) => k,
        Err(drd_core::tail::TailError::NoMatch { .. }) => bail!(
            "partial segment {} ({len} bytes) matches the catalog's checksum neither at \
             its durable size {} nor at the previous point {}: the landing directory was \
             changed outside drd or the disk lost synced data — run `drctl verify`, then \
             rebuild this replica with `drctl rejoin`",
            partial.display(),
            rec.size,
            rec.check.map_or(0, |c| c.prev_size)
        ),
        Err(drd_core::tail::TailError::Short { .. }) => bail!(
            "partial segment {} has {len} bytes but {} were acked as durable; \
             the landing directory was changed outside drd",
            partial.display(),
            rec.size
        ),
    };
    if kept.cut_back {
        out.cut_back_to = Some(kept.keep);
    }
    if len > kept.keep {
        fsutil::truncate_durable(&partial, kept.keep)
            .with_context(|| format!("cannot truncate {}", partial.display()))?;
        out.truncated_bytes = len - kept.keep;
    } else if kept.sync {
        // See tail::Recovered::sync: the bytes may be only in the page cache.
        file.sync_data()
            .with_context(|| format!("cannot fdatasync {}", partial.display()))?;
    }
    Ok(out)
}

/// `.partial` files in the landing directory other than the tail's: left
/// alone (never deleted) and reported.
pub fn stray_partials(landing: &Path, tail: Option<&SegmentRecord>) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(landing) else {
        return Vec::new();
    };
    let tail_partial = tail.map(|t| format!("{}{}", t.name, PARTIAL_SUFFIX));
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(PARTIAL_SUFFIX) && Some(n) != tail_partial.as_ref())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(size: u64, sealed: bool) -> SegmentRecord {
        SegmentRecord {
            name: "seg1".into(),
            start: 0,
            size,
            sealed,
            sha256: None,
            epoch: 1,
            received_at_ms: 0,
            sealed_at_ms: None,
            fork: false,
            in_source: false,
            chain: None,
            check: None,
            pruned_at_ms: None,
        }
    }

    #[test]
    fn unacked_tail_is_cut_and_unsealed_rename_undone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("seg1.partial"), vec![1u8; 100]).unwrap();
        let r = reconcile_tail(d.path(), Some(&rec(60, false))).unwrap();
        assert_eq!(r.truncated_bytes, 40);
        assert_eq!(
            std::fs::metadata(d.path().join("seg1.partial"))
                .unwrap()
                .len(),
            60
        );

        std::fs::rename(d.path().join("seg1.partial"), d.path().join("seg1")).unwrap();
        let r = reconcile_tail(d.path(), Some(&rec(60, false))).unwrap();
        assert!(r.unsealed);
        assert!(d.path().join("seg1.partial").exists());
    }

    fn checked(size: u64, crc: u32, prev_size: u64, prev_crc: u32) -> SegmentRecord {
        SegmentRecord {
            check: Some(PartialCheck {
                crc32c: crc,
                prev_size,
                prev_crc32c: prev_crc,
            }),
            ..rec(size, false)
        }
    }

    #[test]
    fn a_commit_ahead_of_its_bytes_falls_back_to_the_previous_point() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seg1.partial");
        let data: Vec<u8> = (0..100u8).collect();
        let crc60 = crc32c::crc32c(&data[..60]);
        let crc100 = crc32c::crc32c(&data);

        // Power loss after the commit of 100 bytes, before their fdatasync:
        // bytes 60.. never reached the disk (zeros, or the file is short).
        let mut lost = data[..60].to_vec();
        lost.resize(100, 0);
        std::fs::write(&p, &lost).unwrap();
        let r = reconcile_tail(d.path(), Some(&checked(100, crc100, 60, crc60))).unwrap();
        assert_eq!(r.cut_back_to, Some(60));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 60);
        let fixed = cut_back_record(&checked(100, crc100, 60, crc60));
        assert_eq!((fixed.size, fixed.check.unwrap().crc32c), (60, crc60));

        std::fs::write(&p, &data[..70]).unwrap();
        let r = reconcile_tail(d.path(), Some(&checked(100, crc100, 60, crc60))).unwrap();
        assert_eq!((r.cut_back_to, r.truncated_bytes), (Some(60), 10));

        // Both points intact: the record stands, unacked extra bytes go.
        let mut more = data.clone();
        more.extend_from_slice(&[7; 20]);
        std::fs::write(&p, &more).unwrap();
        let r = reconcile_tail(d.path(), Some(&checked(100, crc100, 60, crc60))).unwrap();
        assert_eq!((r.cut_back_to, r.truncated_bytes), (None, 20));

        // Bytes that match neither point: an error, and the file is untouched.
        let mut bad = data.clone();
        bad[10] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        let e = reconcile_tail(d.path(), Some(&checked(100, crc100, 60, crc60))).unwrap_err();
        assert!(format!("{e:#}").contains("checksum"), "{e:#}");
        assert_eq!(std::fs::read(&p).unwrap(), bad);
    }

    #[test]
    fn missing_acked_bytes_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("seg1.partial"), vec![1u8; 10]).unwrap();
        let e = reconcile_tail(d.path(), Some(&rec(60, false))).unwrap_err();
        assert!(format!("{e:#}").contains("acked"));
        std::fs::write(d.path().join("seg1"), vec![1u8; 10]).unwrap();
        assert!(reconcile_tail(d.path(), Some(&rec(60, true))).is_err());
    }

    fn named(name: &str, size: u64, sealed: bool) -> SegmentRecord {
        SegmentRecord {
            name: name.into(),
            ..rec(size, sealed)
        }
    }

    fn sealed_with(name: &str, data: &[u8]) -> SegmentRecord {
        use sha2::Digest;
        SegmentRecord {
            sha256: Some(hex::encode(sha2::Sha256::digest(data))),
            ..named(name, data.len() as u64, true)
        }
    }

    /// `previous` over records in name order.
    fn before(
        recs: &[SegmentRecord],
    ) -> impl FnMut(&SegmentRecord) -> anyhow::Result<Option<SegmentRecord>> + '_ {
        |r| Ok(recs.iter().rev().find(|p| p.name < r.name).cloned())
    }

    #[test]
    fn sealed_segments_whose_rename_was_lost_are_checked_and_renamed() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        // seg1 settled earlier; seg2 and seg3 sealed by the last commit
        // but still `.partial` on disk; seg4 the partial tail.
        std::fs::write(p("seg1"), [1; 10]).unwrap();
        std::fs::write(p("seg2.partial"), [2; 10]).unwrap();
        std::fs::write(p("seg3.partial"), [3; 10]).unwrap();
        std::fs::write(p("seg4.partial"), [4; 5]).unwrap();
        let recs = vec![
            sealed_with("seg1", &[1; 10]),
            sealed_with("seg2", &[2; 10]),
            sealed_with("seg3", &[3; 10]),
            named("seg4", 5, false),
        ];
        let r = reconcile_stream(d.path(), recs.last(), before(&recs)).unwrap();
        assert_eq!(
            r.renamed_sealed,
            vec!["seg3".to_string(), "seg2".to_string()]
        );
        for n in ["seg2", "seg3"] {
            assert!(p(n).exists() && !p(&format!("{n}.partial")).exists());
        }
        // A second run finds nothing to do.
        let r = reconcile_stream(d.path(), recs.last(), before(&recs)).unwrap();
        assert_eq!(r, Reconciled::default());

        // A sealed tail too.
        std::fs::rename(p("seg3"), p("seg3.partial")).unwrap();
        let r = reconcile_stream(d.path(), recs.get(2), before(&recs)).unwrap();
        assert_eq!(r.renamed_sealed, vec!["seg3".to_string()]);
    }

    #[test]
    fn a_sealed_segment_that_does_not_check_out_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let recs = vec![sealed_with("seg1", &[1; 10]), named("seg2", 0, false)];
        // Different bytes under the .partial name: refused, left as is.
        std::fs::write(d.path().join("seg1.partial"), [9; 10]).unwrap();
        let e = reconcile_stream(d.path(), recs.last(), before(&recs)).unwrap_err();
        assert!(
            format!("{e:#}").contains("does not hold its sealed bytes"),
            "{e:#}"
        );
        assert!(d.path().join("seg1.partial").exists() && !d.path().join("seg1").exists());
        // Neither name: refused.
        std::fs::remove_file(d.path().join("seg1.partial")).unwrap();
        let e = reconcile_stream(d.path(), recs.last(), before(&recs)).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
    }

    #[test]
    fn complete_files_past_the_last_record_get_their_partial_name_back() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        // A group renamed seg2 (its record still partial) and seg3 (no
        // record yet) and created seg4.partial; its commit was lost.
        std::fs::write(p("seg1"), [1; 10]).unwrap();
        std::fs::write(p("seg2"), [2; 10]).unwrap();
        std::fs::write(p("seg3"), [3; 10]).unwrap();
        std::fs::write(p("seg4.partial"), [4; 3]).unwrap();
        let recs = vec![sealed_with("seg1", &[1; 10]), named("seg2", 6, false)];
        let r = reconcile_stream(d.path(), recs.last(), before(&recs)).unwrap();
        assert!(r.unsealed);
        assert_eq!(r.truncated_bytes, 4);
        assert_eq!(r.unrecorded, vec!["seg3".to_string()]);
        assert!(p("seg1").exists(), "a recorded complete file stays");
        assert_eq!(std::fs::read(p("seg2.partial")).unwrap(), vec![2; 6]);
        assert!(p("seg3.partial").exists() && !p("seg3").exists());
        let mut strays = stray_partials(d.path(), recs.last());
        strays.sort();
        assert_eq!(strays, vec!["seg3.partial", "seg4.partial"]);
    }

    #[test]
    fn a_missing_partial_is_an_error_unless_no_byte_of_it_was_acked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seg1.partial");
        // The group's commit recorded 100 bytes of a new file whose entry
        // was lost: its previous point is 0, so nothing was acked.
        let first = checked(100, 7, 0, 0);
        let r = reconcile_tail(d.path(), Some(&first)).unwrap();
        assert_eq!(r.cut_back_to, Some(0));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        let fixed = cut_back_record(&first);
        assert_eq!((fixed.size, fixed.check.unwrap().crc32c), (0, 0));

        // 60 bytes were acked before: the file must be there.
        std::fs::remove_file(&p).unwrap();
        let e = reconcile_tail(d.path(), Some(&checked(100, 7, 60, 8))).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
        assert!(!p.exists());
    }
}
