//! Where a WAL stream's log stands in PostgreSQL's terms: the segment size
//! a segment file declares, the LSN its log ends at, and where a database
//! replaying it stops (for the failover report and the promote hook).

use crate::node::Node;
use drd_proto::StreamName;
use std::path::PathBuf;

/// The file of segment `name` here: the primary's own `wal_dir` for a
/// segment still in the source, else the landing directory — under its
/// name once sealed, `NAME.partial` while it is the tail.
pub fn segment_path(
    node: &Node,
    stream: &StreamName,
    name: &str,
    in_source: bool,
) -> Option<PathBuf> {
    if in_source {
        let cfg = node.config.streams.iter().find(|s| &s.name == stream)?;
        return Some(cfg.wal_dir.join(name));
    }
    landing_path(&node.config.data_dir, stream, name)
}

/// [`segment_path`] for a driver that holds the stream's config and the
/// data directory rather than the node.
pub fn segment_path_for(
    data_dir: &std::path::Path,
    cfg: &crate::config::StreamConfig,
    name: &str,
    in_source: bool,
) -> Option<PathBuf> {
    if in_source {
        return Some(cfg.wal_dir.join(name));
    }
    landing_path(data_dir, &cfg.name, name)
}

/// The landing directory's file of segment `name`: sealed, or `.partial`.
fn landing_path(data_dir: &std::path::Path, stream: &StreamName, name: &str) -> Option<PathBuf> {
    let landing = crate::config::landing_dir(data_dir, stream);
    let name = drd_proto::SegmentName::new(name.to_string()).ok()?;
    [name.as_str().to_string(), name.partial_file_name()]
        .into_iter()
        .map(|n| landing.join(n))
        .find(|p| p.exists())
}

/// The long page header a PostgreSQL segment file starts with (None: not a
/// WAL segment, or too short to say).
pub fn long_header(path: &std::path::Path) -> Option<drd_core::pg::header::LongHeader> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let mut first = [0u8; drd_core::pg::header::LONG_HEADER_LEN];
    f.read_exact_at(&mut first, 0).ok()?;
    drd_core::pg::header::parse(&first).ok()
}

/// The WAL segment size a PostgreSQL segment file declares in its first
/// page (None: not a WAL segment, or too short to say).
pub fn wal_segment_size(path: &std::path::Path) -> Option<u64> {
    long_header(path).map(|h| u64::from(h.seg_size))
}

/// Where the stream's log ends here in PostgreSQL's terms, when it is a
/// WAL stream: its last segment's timeline and the LSN after its last
/// durable byte. The segment size comes from the segment's first page.
pub fn wal_end(node: &Node, stream: &StreamName) -> Option<(u32, drd_core::pg::lsn::Lsn)> {
    let tail = node.catalog.tail(stream).ok()??;
    let path = segment_path(node, stream, &tail.name, tail.in_source)?;
    let size = wal_segment_size(&path)?;
    let seg = drd_core::pg::lsn::SegSize::new(size).ok()?;
    seg.lsn_in(&tail.name, tail.size)
}

/// Where a database replaying the stream's log here stops: the end of the
/// last complete WAL record in its last segment, as
/// `pg_last_wal_replay_lsn()` reports it once replay got there (None: not a
/// WAL stream, or no record completes in that segment — nothing to wait for).
pub fn replay_end(node: &Node, stream: &StreamName) -> Option<(u32, drd_core::pg::lsn::Lsn)> {
    let tail = node.catalog.tail(stream).ok()??;
    let path = segment_path(node, stream, &tail.name, tail.in_source)?;
    let seg = drd_core::pg::lsn::SegSize::new(wal_segment_size(&path)?).ok()?;
    let (tli, start) = seg.lsn_in(&tail.name, 0)?;
    // Only the verified prefix: zeros after it would read as WAL.
    let prefix =
        crate::storage::fsutil::read_range(&std::fs::File::open(&path).ok()?, 0, tail.size).ok()?;
    let end = drd_core::pg::records::replay_end(&prefix, start, seg).ok()?;
    (end.lsn > start).then_some((tli, end.lsn))
}
