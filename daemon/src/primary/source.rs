//! The primary's source: a WAL directory of append-only segment files,
//! ordered by name. Every segment but the newest is sealed; the newest is
//! active and may still grow. Changes are noticed through inotify (`notify`)
//! and, as a safety net, a periodic rescan.

use drd_proto::SegmentName;
use notify::{RecursiveMode, Watcher};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Notify;

/// One segment file as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSegment {
    pub name: SegmentName,
    pub size: u64,
}

/// Files that are not segments: temporary files of writers.
fn ignored(name: &str) -> bool {
    name.ends_with(".tmp") || name.starts_with("xlogtemp")
}

/// Lists the segment files of `dir` in name order. Entries whose names are
/// not valid segment names (hidden files, sub-directories such as
/// PostgreSQL's `archive_status`) are skipped.
pub fn scan(dir: &Path) -> std::io::Result<Vec<SourceSegment>> {
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

/// Watches a directory and pings `wake` on every change. Dropping it stops
/// the watch.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
}

impl DirWatch {
    pub fn start(dir: &Path, wake: Arc<Notify>) -> notify::Result<Self> {
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok() {
                    wake.notify_one();
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Self { _watcher: watcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
