//! Brings a stream's landing directory back in line with the catalog after a
//! crash, before anything is served: the catalog's durable size is the truth.
//!
//! - bytes past the durable size of the partial segment were never acked:
//!   they are cut off (and the cut is fsynced);
//! - a segment renamed to its final name whose seal was not yet committed
//!   gets its `.partial` name back (the primary re-sends the seal, and it is
//!   verified again);
//! - fewer bytes on disk than the catalog says were acked means the landing
//!   directory was changed behind drd's back: that is an error, never
//!   papered over.

use crate::catalog::SegmentRecord;
use crate::fsutil;
use anyhow::{bail, Context};
use drd_proto::{SegmentName, PARTIAL_SUFFIX};
use std::path::Path;

/// What reconciliation changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub truncated_bytes: u64,
    pub unsealed: bool,
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
