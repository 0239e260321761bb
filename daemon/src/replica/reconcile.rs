//! Brings a stream's landing directory back in line with the catalog after a
//! crash, before anything is served: the catalog's durable size is the truth.
//!
//! - bytes past the durable size of the partial segment were never acked:
//!   they are cut off (and the cut is fsynced);
//! - a segment renamed to its final name whose seal was not yet committed
//!   gets its `.partial` name back (the primary re-sends the seal, and it is
//!   verified again);
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

use crate::catalog::{PartialCheck, SegmentRecord};
use crate::fsutil;
use anyhow::{bail, Context};
use drd_proto::{SegmentName, PARTIAL_SUFFIX};
use std::path::Path;

/// What reconciliation changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub truncated_bytes: u64,
    pub unsealed: bool,
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
    if let Some(check) = rec.check {
        let file = std::fs::File::open(&partial)
            .with_context(|| format!("cannot open {}", partial.display()))?;
        let crc_at = |size: u64| -> anyhow::Result<Option<u32>> {
            if len < size {
                return Ok(None);
            }
            crate::replica::disk::crc_prefix(&file, size)
                .map(Some)
                .with_context(|| format!("cannot read {}", partial.display()))
        };
        let keep = if crc_at(rec.size)? == Some(check.crc32c) {
            rec.size
        } else if crc_at(check.prev_size)? == Some(check.prev_crc32c) {
            out.cut_back_to = Some(check.prev_size);
            check.prev_size
        } else {
            bail!(
                "partial segment {} ({len} bytes) matches the catalog's checksum neither at \
                 its durable size {} nor at the previous point {}: the landing directory was \
                 changed outside drd or the disk lost synced data — run `drctl verify`, then \
                 rebuild this replica with `drctl rejoin`",
                partial.display(),
                rec.size,
                check.prev_size
            );
        };
        if len > keep {
            fsutil::truncate_durable(&partial, keep)
                .with_context(|| format!("cannot truncate {}", partial.display()))?;
            out.truncated_bytes = len - keep;
        }
        return Ok(out);
    }
    if len < rec.size {
        bail!(
            "partial segment {} has {len} bytes but {} were acked as durable; \
             the landing directory was changed outside drd",
            partial.display(),
            rec.size
        );
    }
    if len > rec.size {
        fsutil::truncate_durable(&partial, rec.size)
            .with_context(|| format!("cannot truncate {}", partial.display()))?;
        out.truncated_bytes = len - rec.size;
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
}
