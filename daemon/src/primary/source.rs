//! The primary's source: a WAL directory of append-only segment files,
//! ordered by name. Every segment but the newest is sealed; the newest is
//! active and may still grow. Changes are noticed through inotify (`notify`)
//! and, as a safety net, a periodic rescan.

use crate::primary::index::{ignored, is_read_only, SourceIndex};
use drd_proto::SegmentName;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Notify;

/// One segment file as last seen.
pub use drd_core::storage::SourceSegment;

/// A WAL directory as drd-core's [`drd_core::storage::Source`]: listed by
/// [`scan_from`], read with `pread`. Borrows the directory's path: it
/// keeps no state, so making one costs nothing.
pub struct DirSource<'a> {
    dir: &'a Path,
}

/// An I/O error on a WAL directory or one of its files, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct SourceError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl<'a> DirSource<'a> {
    pub fn new(dir: &'a Path) -> Self {
        Self { dir }
    }
}

impl drd_core::storage::Source for DirSource<'_> {
    type Error = SourceError;

    fn list(&mut self, from: Option<&SegmentName>) -> Result<Vec<SourceSegment>, SourceError> {
        scan_from(self.dir, from).map_err(|source| SourceError {
            path: self.dir.to_path_buf(),
            source,
        })
    }

    fn read(
        &mut self,
        segment: &SegmentName,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, SourceError> {
        let path = self.dir.join(segment.as_str());
        let err = |source| SourceError {
            path: path.clone(),
            source,
        };
        let f = std::fs::File::open(&path).map_err(err)?;
        // Fewer bytes where the segment ends now (an active one may grow).
        crate::storage::fsutil::read_range(&f, offset, len).map_err(err)
    }
}

/// Lists the segment files of `dir` in name order. Entries whose names are
/// not valid segment names (hidden files, sub-directories such as
/// PostgreSQL's `archive_status`) are skipped.
pub fn scan(dir: &Path) -> std::io::Result<Vec<SourceSegment>> {
    scan_from(dir, None)
}

/// Like [`scan`], but only segments named `from` or later: the shipper
/// needs nothing before its cursor, and a WAL directory can hold thousands
/// of old segments that need not be stat'ed on every change.
pub fn scan_from(dir: &Path, from: Option<&SegmentName>) -> std::io::Result<Vec<SourceSegment>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if ignored(&name) {
            continue;
        }
        let Ok(name) = SegmentName::new(name) else {
            continue;
        };
        if from.is_some_and(|f| &name < f) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Removed between readdir and stat.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.is_file() {
            continue;
        }
        out.push(SourceSegment {
            name,
            size: meta.len(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Watches a directory, applies every event to `index` (in the order they
/// come, before anyone is woken) and pings `wake` on every change. Dropping
/// it stops the watch.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
}

impl DirWatch {
    pub fn start(dir: &Path, wake: Arc<Notify>, index: Arc<SourceIndex>) -> notify::Result<Self> {
        let watched = index.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                index.on_event(&res);
                match res {
                    // Opening or reading a file changes nothing; the
                    // shipper's own reads (and any archiver's or backup
                    // tool's) would otherwise wake it for a rescan.
                    // A close after writing still counts.
                    Ok(e) if is_read_only(&e.kind) => {}
                    _ => wake.notify_one(),
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        watched.watch_started();
        Ok(Self { _watcher: watcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drd_core::storage::contract;

    #[test]
    fn a_wal_directory_passes_the_source_suite() {
        let d = tempfile::tempdir().unwrap();
        for (name, data) in contract::SOURCE_FIXTURE {
            std::fs::write(d.path().join(name), data).unwrap();
        }
        // Not segments (any other file name is one: drd ships any log):
        // the listing skips them.
        std::fs::write(d.path().join("000000010000000000000002.tmp"), b"x").unwrap();
        std::fs::write(d.path().join(".hidden"), b"x").unwrap();
        std::fs::create_dir(d.path().join("archive_status")).unwrap();
        std::fs::create_dir(d.path().join("000000010000000000000004")).unwrap();
        contract::source(&mut DirSource::new(d.path())).unwrap();
    }

    #[test]
    fn scan_orders_segments_and_skips_the_rest() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("000000010000000000000002"), b"bb").unwrap();
        std::fs::write(d.path().join("000000010000000000000001"), b"a").unwrap();
        std::fs::write(d.path().join(".hidden"), b"x").unwrap();
        std::fs::write(d.path().join("x.tmp"), b"x").unwrap();
        std::fs::create_dir(d.path().join("archive_status")).unwrap();
        let s = scan(d.path()).unwrap();
        let names: Vec<_> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["000000010000000000000001", "000000010000000000000002"]
        );
        assert_eq!(s[1].size, 2);
        let later = scan_from(d.path(), Some(&s[1].name)).unwrap();
        assert_eq!(later, vec![s[1].clone()]);
    }

    #[test]
    fn only_reads_are_ignored_by_the_watch() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        use notify::EventKind;
        assert!(is_read_only(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_read_only(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_read_only(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_read_only(&EventKind::Modify(ModifyKind::Any)));
        assert!(!is_read_only(&EventKind::Create(CreateKind::File)));
    }
}
