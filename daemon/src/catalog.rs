//! The catalog: RocksDB holding everything about a node that is not segment
//! bytes — its role and epoch, and per stream the segments (name, start
//! position, durable size, checksum, state, epoch, times) and counters.
//!
//! Keys (values are JSON, so an operator can read them with `ldb`):
//! - `node/state` → [`NodeState`]
//! - `stream/{stream}/meta` → [`StreamMeta`]
//! - `stream/{stream}/seg/{segment}` → [`SegmentRecord`], ordered by name
//!
//! Names are validated before they get here (no `/`), so prefixes are exact.
//! Every write that an ack depends on is synced (`WriteOptions::set_sync`).

use drd_proto::{Epoch, SegmentName, StreamName};
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog (RocksDB) error: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("catalog record {key:?} is corrupt: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, CatalogError>;

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    Fenced,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Fenced => "fenced",
        }
    }
}

/// Role and epoch, stored durably on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub role: Role,
    pub epoch: Epoch,
}

/// One segment of a stream's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub name: String,
    /// Stream position of the segment's first byte.
    pub start: u64,
    /// Durable size: bytes fsynced and acked (final size once sealed).
    pub size: u64,
    /// Complete and verified against the primary's whole-file checksum.
    pub sealed: bool,
    /// SHA-256 (hex) of the whole file, once sealed.
    pub sha256: Option<String>,
    /// Epoch of the primary that sent the segment's first byte.
    pub epoch: Epoch,
    /// Unix ms when the first byte arrived, and when the seal was verified.
    pub received_at_ms: u64,
    pub sealed_at_ms: Option<u64>,
}

impl SegmentRecord {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// Per-stream counters and facts that are not per segment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Bytes received over the network (replica) or read and sent (primary),
    /// all time. Counts bytes that were later re-sent, so it shows waste.
    pub network_bytes: u64,
    pub segments: u64,
    pub sealed_segments: u64,
    /// Node id of the last primary that shipped this stream here.
    pub last_primary: Option<String>,
    /// Highest source position the primary reported.
    pub source_position: u64,
}

/// The catalog database.
pub struct Catalog {
    db: DB,
}

fn seg_prefix(stream: &StreamName) -> String {
    format!("stream/{stream}/seg/")
}

fn seg_key(stream: &StreamName, seg: &SegmentName) -> String {
    format!("stream/{stream}/seg/{seg}")
}

fn meta_key(stream: &StreamName) -> String {
    format!("stream/{stream}/meta")
}

const NODE_STATE_KEY: &str = "node/state";

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| CatalogError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(v).expect("catalog record serializes")
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    // The catalog write is what makes a position durable for the replica's
    // reconciliation after a crash; it must be on disk before we ack.
    wo.set_sync(true);
    wo
}

impl Catalog {
    /// Opens (creating if needed) the catalog in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Small records: keep the memtable small so RSS stays low.
        opts.set_write_buffer_size(4 * 1024 * 1024);
        opts.set_max_write_buffer_number(2);
        opts.set_keep_log_file_num(5);
        let db = DB::open(&opts, dir)?;
        Ok(Self { db })
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.db.get(key.as_bytes())? {
            Some(v) => Ok(Some(decode(key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn node_state(&self) -> Result<Option<NodeState>> {
        self.get(NODE_STATE_KEY)
    }

    pub fn set_node_state(&self, state: NodeState) -> Result<()> {
        self.db.put_opt(NODE_STATE_KEY, encode(&state), &synced())?;
        Ok(())
    }

    pub fn stream_meta(&self, stream: &StreamName) -> Result<StreamMeta> {
        Ok(self.get(&meta_key(stream))?.unwrap_or_default())
    }

    /// Streams that have a record here, in name order.
    pub fn streams(&self) -> Result<Vec<StreamName>> {
        let mut out = Vec::new();
        let iter = self
            .db
            .iterator(IteratorMode::From(b"stream/", Direction::Forward));
        for item in iter {
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(b"stream/") else {
                break;
            };
            let rest = String::from_utf8_lossy(rest);
            if let Some(name) = rest.strip_suffix("/meta") {
                if let Ok(n) = StreamName::new(name) {
                    out.push(n);
                }
            }
        }
        // Key order is byte order ("a-b/" sorts before "a/"); callers want names.
        out.sort();
        Ok(out)
    }

    pub fn segment(&self, stream: &StreamName, seg: &SegmentName) -> Result<Option<SegmentRecord>> {
        self.get(&seg_key(stream, seg))
    }

    /// The stream's last segment by name, if any.
    pub fn tail(&self, stream: &StreamName) -> Result<Option<SegmentRecord>> {
        let prefix = seg_prefix(stream);
        // One past every key with this prefix: '/' + 1 == '0'.
        let end = format!("stream/{stream}/seg0");
        let mut iter = self
            .db
            .iterator(IteratorMode::From(end.as_bytes(), Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (k, v) = item?;
                if k.starts_with(prefix.as_bytes()) {
                    Ok(Some(decode(&k, &v)?))
                } else {
                    Ok(None)
                }
            }
            None => Ok(None),
        }
    }

    /// All segments of the stream, in name order.
    pub fn segments(&self, stream: &StreamName) -> Result<Vec<SegmentRecord>> {
        let prefix = seg_prefix(stream);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix.as_bytes(), Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Writes segment records and the stream's meta in one synced batch.
    pub fn commit(
        &self,
        stream: &StreamName,
        segments: &[&SegmentRecord],
        meta: &StreamMeta,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for rec in segments {
            // Records come from validated names; a bad one here is a bug.
            let seg = SegmentName::new(rec.name.clone()).expect("validated segment name");
            batch.put(seg_key(stream, &seg), encode(rec));
        }
        batch.put(meta_key(stream), encode(meta));
        self.db.write_opt(batch, &synced())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, start: u64, size: u64) -> SegmentRecord {
        SegmentRecord {
            name: name.into(),
            start,
            size,
            sealed: false,
            sha256: None,
            epoch: 1,
            received_at_ms: 0,
            sealed_at_ms: None,
        }
    }

    #[test]
    fn tail_is_the_last_segment_of_its_own_stream() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let a = StreamName::new("a").unwrap();
        let ab = StreamName::new("a-b").unwrap();
        let b = StreamName::new("b").unwrap();
        assert_eq!(cat.tail(&a).unwrap(), None);
        cat.commit(
            &a,
            &[&rec("s1", 0, 10), &rec("s2", 10, 5)],
            &StreamMeta::default(),
        )
        .unwrap();
        cat.commit(&b, &[&rec("s9", 0, 1)], &StreamMeta::default())
            .unwrap();
        cat.commit(&ab, &[&rec("s7", 0, 1)], &StreamMeta::default())
            .unwrap();
        assert_eq!(cat.tail(&a).unwrap().unwrap().name, "s2");
        assert_eq!(cat.tail(&b).unwrap().unwrap().name, "s9");
        assert_eq!(cat.segments(&a).unwrap().len(), 2);
        assert_eq!(cat.streams().unwrap(), vec![a, ab, b]);
    }

    #[test]
    fn node_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        assert_eq!(cat.node_state().unwrap(), None);
        let s = NodeState {
            role: Role::Replica,
            epoch: 3,
        };
        cat.set_node_state(s).unwrap();
        drop(cat);
        let cat = Catalog::open(dir.path()).unwrap();
        assert_eq!(cat.node_state().unwrap(), Some(s));
    }
}
