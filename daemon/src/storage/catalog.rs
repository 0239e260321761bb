//! The catalog: RocksDB holding everything about a node that is not segment
//! bytes — per stream its role and epoch at this node, the segments (name,
//! start position, durable size, checksum, state, epoch, times) and
//! counters.
//!
//! Keys (values are JSON, so an operator can read them with `ldb`):
//! - `role/{stream}` → [`RoleState`]: the stream's role and epoch here
//! - `node/state` → [`RoleState`]: the node-wide role of releases before
//!   roles were per stream; read once, when [`Catalog::migrate_roles`] gives
//!   every stream it held that role, then removed
//! - `stream/{stream}/meta` → [`StreamMeta`]
//! - `stream/{stream}/seg/{segment}` → [`SegmentRecord`], ordered by name
//! - `stream/{stream}/pos/{start:020}/{segment}` → empty: an index by start
//!   position, so the segment holding a position is one seek away however
//!   long the log (written with every record; built once by
//!   [`Catalog::open`] for catalogs from before it existed)
//! - `stream/{stream}/retention` → [`RetentionState`]: the DR site's
//!   pruning boundary and counters (its own key: the disk writer rewrites
//!   `meta` with every commit)
//! - `stream/{stream}/fetched` → [`Fetched`]: the newest segment
//!   `drctl wal-fetch` served (only ever moves forward)
//! - `audit/{seq:020}` → [`AuditRecord`], append-only
//! - `hook/{name}/{stream}/{epoch:020}` → marker: the hook ran for that
//!   stream's epoch change
//! - `drill/{stream}/{seq:020}` → a drill's history entry, append-only and
//!   hash-chained ([`super::drills`])
//! - `laghist/{stream}/{bucket_ms:020}` → a bucket of the downsampled lag
//!   history, the last 24 h ([`crate::laghistory`])
//!
//! Names are validated before they get here (no `/`), so prefixes are exact.
//! Every write that an ack depends on is synced (`WriteOptions::set_sync`).

use crate::locks::LockExt;
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
    /// Records are stored with validated names, so one that is not a valid
    /// segment name was read back from a catalog changed outside drd.
    #[error(
        "catalog segment record {name:?} has an invalid name ({source}); the catalog was \
         changed outside drd or is damaged: restore the data directory from a backup"
    )]
    BadSegmentName {
        name: String,
        source: drd_proto::ProtocolError,
    },
    #[error(
        "catalog role record for stream {name:?} has an invalid stream name ({source}); the \
         catalog was changed outside drd or is damaged: restore the data directory from a backup"
    )]
    BadStreamName {
        name: String,
        source: drd_proto::ProtocolError,
    },
}

pub type Result<T> = std::result::Result<T, CatalogError>;

pub use drd_core::roles::{Role, RoleState};

/// Where a stream's current epoch forked from the previous one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub segment: String,
    pub position: u64,
    pub epoch: Epoch,
}

/// One entry of the append-only audit log of role changes and operator
/// actions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: u64,
    /// e.g. `failover`, `switchover`, `promote`, `demote`, `fence`, `rejoin`,
    /// `pause`, `resume`, `switchover-rolled-back`.
    pub action: String,
    /// OS user of the control-socket peer, or the remote node's id.
    pub user: String,
    /// Where the request came from (control socket pid, peer node).
    pub origin: String,
    pub reason: String,
    pub epoch_before: Epoch,
    pub epoch_after: Epoch,
    pub role_before: String,
    pub role_after: String,
    /// RPO figures, quarantined files, hook results: free text.
    pub detail: String,
    /// The stream the entry is about ("" in entries written before roles
    /// were per stream: they applied to every stream of the node).
    #[serde(default)]
    pub stream: String,
}

impl AuditRecord {
    /// The entry of `action` that took a stream's role from `before` to
    /// `after` (the same state twice for an action that changes neither);
    /// the caller adds who, why and the detail.
    pub fn role_change(action: &str, before: &RoleState, after: &RoleState) -> Self {
        Self {
            action: action.into(),
            epoch_before: before.epoch,
            epoch_after: after.epoch,
            role_before: before.role.as_str().into(),
            role_after: after.role.as_str().into(),
            ..Default::default()
        }
    }
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
    /// Closed at a fork: complete at this (shorter) length; a promoted
    /// replica keeps the file as `NAME.partial`.
    #[serde(default)]
    pub fork: bool,
    /// The file is in this node's own source (`wal_dir`): a segment it
    /// shipped as primary. Otherwise it is in the landing directory.
    #[serde(default)]
    pub in_source: bool,
    /// Hash chain value after this segment (hex), once sealed.
    #[serde(default)]
    pub chain: Option<String>,
    /// While partial: checksums that let a restart tell whether `size` is
    /// really on disk (see [`PartialCheck`]). None in records written
    /// before drd kept them, and once sealed.
    #[serde(default)]
    pub check: Option<PartialCheck>,
    /// Unix ms when the primary removed the file from its spool (the
    /// replica held it sealed and verified, and `spool_retention` had
    /// passed). The record stays: it anchors positions, answers a
    /// re-push of the same segment with a byte comparison, and keeps the
    /// hash chain verifiable across the pruning boundary. None while the
    /// file is there (and always for a `tail` stream or a landing copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_at_ms: Option<u64>,
}

pub use drd_core::tail::PartialCheck;

impl SegmentRecord {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }

    /// The record's name as a segment name, or an error naming a record
    /// damaged on disk.
    pub fn segment_name(&self) -> Result<SegmentName> {
        SegmentName::new(self.name.clone()).map_err(|source| CatalogError::BadSegmentName {
            name: self.name.clone(),
            source,
        })
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
    /// A `source = "postgres"` stream: the highest (timeline, LSN) of its
    /// database's end of WAL that the primary reported (zero: none).
    #[serde(default)]
    pub source_timeline: u32,
    #[serde(default)]
    pub source_lsn: u64,
    /// Unix ms at which the durable position last moved.
    #[serde(default)]
    pub durable_at_ms: u64,
    /// The fork of the current epoch, if this node went through one.
    #[serde(default)]
    pub fork: Option<Fork>,
    /// Hash chain value after the last sealed segment (hex).
    #[serde(default)]
    pub chain_head: Option<String>,
}

impl StreamMeta {
    /// The chain value the next sealed segment links to.
    pub fn chain_head(&self) -> [u8; 32] {
        self.chain_head
            .as_deref()
            .and_then(crate::chain::from_hex)
            .unwrap_or(crate::chain::GENESIS)
    }
}

/// Where the DR site's retention cut the log: every record before and at
/// `segment` is gone (records and files), and verification starts from
/// `chain`, the hash chain value after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneBoundary {
    /// The last segment removed.
    pub segment: String,
    /// Stream position just past it: the log here starts at or after this.
    pub end: u64,
    /// Hash chain value after it (hex), as recorded when it was sealed.
    pub chain: String,
    /// Unix ms of the pass that moved the boundary here.
    pub at_ms: u64,
}

/// The DR site's retention state of a stream (see `replica::prune`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionState {
    pub boundary: Option<PruneBoundary>,
    /// Segments and bytes retention removed here, all time.
    pub pruned_segments: u64,
    pub pruned_bytes: u64,
    /// Files whose records the last pass removed, until they are unlinked:
    /// a crash between the commit and the unlinks leaves them here, and the
    /// next pass finishes the job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlink: Vec<String>,
}

/// The newest segment `drctl wal-fetch` served from this node: the DR
/// database has read everything before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    pub segment: String,
    pub at_ms: u64,
}

/// The catalog database.
pub struct Catalog {
    db: DB,
    /// Next audit sequence number; guarded so two writers never share one.
    next_audit: std::sync::Mutex<u64>,
}

/// Changes committed together in one synced RocksDB batch: a role change,
/// its log changes and its audit record are all there after a crash, or
/// none is.
#[derive(Default)]
pub struct Txn {
    batch: WriteBatch,
    audit: Vec<AuditRecord>,
    /// A record that could not be added (see [`Txn::segment`]): the commit
    /// fails with it and writes nothing.
    invalid: Option<CatalogError>,
}

impl Txn {
    /// Sets `stream`'s role and epoch at this node.
    pub fn role(&mut self, stream: &StreamName, s: &RoleState) -> &mut Self {
        self.batch.put(role_key(stream), encode(s));
        self
    }
    /// Adds a segment record. A record with an invalid name is not added,
    /// and makes [`Catalog::commit_txn`] fail.
    pub fn segment(&mut self, stream: &StreamName, rec: &SegmentRecord) -> &mut Self {
        match rec.segment_name() {
            Ok(seg) => put_segment(&mut self.batch, stream, &seg, rec),
            Err(e) => {
                self.invalid.get_or_insert(e);
            }
        }
        self
    }
    /// Removes a segment record and its position index entry. A record with
    /// an invalid name makes [`Catalog::commit_txn`] fail.
    pub fn delete_segment(&mut self, stream: &StreamName, rec: &SegmentRecord) -> &mut Self {
        match rec.segment_name() {
            Ok(seg) => {
                self.batch.delete(seg_key(stream, &seg));
                self.batch.delete(pos_key(stream, rec.start, &seg));
            }
            Err(e) => {
                self.invalid.get_or_insert(e);
            }
        }
        self
    }
    pub fn meta(&mut self, stream: &StreamName, meta: &StreamMeta) -> &mut Self {
        self.batch.put(meta_key(stream), encode(meta));
        self
    }
    pub fn audit(&mut self, rec: AuditRecord) -> &mut Self {
        self.audit.push(rec);
        self
    }
    /// Names `stream` in every audit record of the batch that names none.
    pub fn stamp_stream(&mut self, stream: &StreamName) -> &mut Self {
        for a in &mut self.audit {
            if a.stream.is_empty() {
                a.stream = stream.to_string();
            }
        }
        self
    }
    pub fn retention(&mut self, stream: &StreamName, state: &RetentionState) -> &mut Self {
        self.batch.put(retention_key(stream), encode(state));
        self
    }
}

fn retention_key(stream: &StreamName) -> String {
    format!("stream/{stream}/retention")
}

fn fetched_key(stream: &StreamName) -> String {
    format!("stream/{stream}/fetched")
}

fn seg_prefix(stream: &StreamName) -> String {
    format!("stream/{stream}/seg/")
}

fn seg_key(stream: &StreamName, seg: &SegmentName) -> String {
    format!("stream/{stream}/seg/{seg}")
}

/// Index entry of a segment by its start position (zero-padded, so key
/// order is position order; equal starts — empty segments — sort by name).
fn pos_key(stream: &StreamName, start: u64, seg: &SegmentName) -> String {
    format!("stream/{stream}/pos/{start:020}/{seg}")
}

fn pos_prefix(stream: &StreamName) -> String {
    format!("stream/{stream}/pos/")
}

/// A segment record and its entry in the position index, in one batch.
fn put_segment(
    batch: &mut WriteBatch,
    stream: &StreamName,
    seg: &SegmentName,
    rec: &SegmentRecord,
) {
    batch.put(seg_key(stream, seg), encode(rec));
    batch.put(pos_key(stream, rec.start, seg), b"");
}

/// Size of one RocksDB memtable of the catalog (two at most).
const CATALOG_MEMTABLE_BYTES: usize = 2 << 20;
/// The catalog's block cache: index, filter and data blocks.
const CATALOG_CACHE_BYTES: usize = 2 << 20;

/// Marks a catalog whose position index is complete.
const POS_INDEX_KEY: &str = "catalog/pos-index";
/// Records per batch while building the position index of an old catalog.
const POS_INDEX_BATCH: usize = 10_000;

fn meta_key(stream: &StreamName) -> String {
    format!("stream/{stream}/meta")
}

/// The node-wide role of releases before roles were per stream.
const LEGACY_NODE_STATE_KEY: &str = "node/state";
const ROLE_PREFIX: &str = "role/";

fn role_key(stream: &StreamName) -> String {
    format!("{ROLE_PREFIX}{stream}")
}
const AUDIT_PREFIX: &str = "audit/";

fn audit_key(seq: u64) -> String {
    format!("{AUDIT_PREFIX}{seq:020}")
}

fn hook_key(name: &str, stream: &StreamName, epoch: Epoch) -> String {
    format!("hook/{name}/{stream}/{epoch:020}")
}

fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| CatalogError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

// Serializing these plain structs (no maps, no custom Serialize) to JSON
// cannot fail.
#[allow(clippy::expect_used)]
fn encode<T: Serialize>(v: &T) -> Vec<u8> {
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
        // Small records, read mostly by single seeks near the log's end:
        // small memtables and a small block cache keep the daemon's memory
        // bounded however long the log (issue 16: under 64 MiB with 100,000
        // segments). RocksDB's defaults (4 MiB memtables here before, an
        // 8 MiB block cache, index blocks outside it) suit a database, not
        // a catalog of a few hundred bytes per segment.
        opts.set_write_buffer_size(CATALOG_MEMTABLE_BYTES);
        opts.set_max_write_buffer_number(2);
        let cache = rocksdb::Cache::new_lru_cache(CATALOG_CACHE_BYTES)?;
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        // Index and filter blocks count against the cache instead of
        // growing with the number of SST files.
        table.set_cache_index_and_filter_blocks(true);
        opts.set_block_based_table_factory(&table);
        opts.set_keep_log_file_num(5);
        let db = DB::open(&opts, dir)?;
        // The next audit number follows the last one stored.
        let end = "audit0";
        let last = db
            .iterator(IteratorMode::From(end.as_bytes(), Direction::Reverse))
            .next()
            .transpose()?
            .filter(|(k, _)| k.starts_with(AUDIT_PREFIX.as_bytes()))
            .map(|(k, v)| decode::<AuditRecord>(&k, &v))
            .transpose()?
            .map_or(0, |r| r.seq);
        let cat = Self {
            db,
            next_audit: std::sync::Mutex::new(last + 1),
        };
        cat.build_pos_index()?;
        Ok(cat)
    }

    /// Catalogs written before the position index existed get it once,
    /// here, from their segment records.
    fn build_pos_index(&self) -> Result<()> {
        if self.db.get(POS_INDEX_KEY)?.is_some() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let mut n = 0usize;
        for stream in self.streams()? {
            self.for_each_segment(&stream, None, |rec| {
                put_segment(&mut batch, &stream, &rec.segment_name()?, rec);
                n += 1;
                if n.is_multiple_of(POS_INDEX_BATCH) {
                    self.db
                        .write_opt(std::mem::take(&mut batch), &synced())
                        .map_err(CatalogError::from)?;
                }
                Ok(true)
            })?;
        }
        batch.put(POS_INDEX_KEY, b"1");
        self.db.write_opt(batch, &synced())?;
        if n > 0 {
            tracing::info!(records = n, "catalog: built the position index");
        }
        Ok(())
    }

    /// Commits a transaction (synced). Audit records get their sequence
    /// numbers and timestamps here.
    pub fn commit_txn(&self, mut txn: Txn) -> Result<Vec<AuditRecord>> {
        if let Some(e) = txn.invalid.take() {
            return Err(e);
        }
        let mut next = self.next_audit.locked();
        let mut seq = *next;
        let mut written = Vec::new();
        for mut rec in txn.audit.drain(..) {
            rec.seq = seq;
            if rec.at_ms == 0 {
                rec.at_ms = crate::clock::unix_ms();
            }
            txn.batch.put(audit_key(seq), encode(&rec));
            written.push(rec);
            seq += 1;
        }
        self.db.write_opt(txn.batch, &synced())?;
        *next = seq;
        Ok(written)
    }

    /// The whole audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditRecord>> {
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::From(
            AUDIT_PREFIX.as_bytes(),
            Direction::Forward,
        )) {
            let (k, v) = item?;
            if !k.starts_with(AUDIT_PREFIX.as_bytes()) {
                break;
            }
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Records, before it runs, that hook `name` runs for `stream`'s change
    /// to `epoch`; returns false if it already did (a hook never runs twice
    /// for one change).
    pub fn claim_hook(&self, name: &str, stream: &StreamName, epoch: Epoch) -> Result<bool> {
        let key = hook_key(name, stream, epoch);
        if self.db.get(key.as_bytes())?.is_some() {
            return Ok(false);
        }
        self.db
            .put_opt(key, encode(&crate::clock::unix_ms()), &synced())?;
        Ok(true)
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.db.get(key.as_bytes())? {
            Some(v) => Ok(Some(decode(key.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key` for a module that keeps its own small
    /// records here (the drill history, the lag history), each family
    /// under a prefix of its own. `sync`: whether the write must be on disk
    /// before this returns (the caller says why).
    pub fn put_record<T: Serialize>(&self, key: &str, value: &T, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.put_opt(key.as_bytes(), encode(value), &wo)?;
        Ok(())
    }

    /// At most `limit` records under `prefix`, in key order (or reversed,
    /// newest first for time-ordered keys), starting at `from` (a full key,
    /// inclusive) or at the prefix's first (last) key.
    pub fn records<T: DeserializeOwned>(
        &self,
        prefix: &str,
        from: Option<&str>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(String, T)>> {
        // Sorts after every key under the prefix (keys are ASCII).
        let end = format!("{prefix}\u{10FFFF}");
        let start = from.unwrap_or(if reverse { &end } else { prefix });
        let dir = if reverse {
            Direction::Reverse
        } else {
            Direction::Forward
        };
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::From(start.as_bytes(), dir)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Removes every key in `[from, to)` (not synced: used for history
    /// that may come back after a crash, which its reader tolerates).
    pub fn delete_records(&self, from: &str, to: &str) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range(from.as_bytes(), to.as_bytes());
        self.db.write(batch)?;
        Ok(())
    }

    /// `stream`'s role and epoch at this node (None: never set).
    pub fn role(&self, stream: &StreamName) -> Result<Option<RoleState>> {
        self.get(&role_key(stream))
    }

    /// Every stream's stored role and epoch, by name.
    pub fn roles(&self) -> Result<Vec<(StreamName, RoleState)>> {
        let mut out = Vec::new();
        let iter = self.db.iterator(IteratorMode::From(
            ROLE_PREFIX.as_bytes(),
            Direction::Forward,
        ));
        for item in iter {
            let (k, v) = item?;
            let Some(name) = k.strip_prefix(ROLE_PREFIX.as_bytes()) else {
                break;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let stream = StreamName::new(name.clone())
                .map_err(|source| CatalogError::BadStreamName { name, source })?;
            out.push((stream, decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Gives each of `streams` that has no role of its own the node-wide
    /// role a release before roles per stream stored, and removes that
    /// node-wide record — in one synced batch, so a crash leaves either
    /// the old record or the new ones. Returns how many streams got it.
    pub fn migrate_roles(&self, streams: &[StreamName]) -> Result<usize> {
        let Some(legacy) = self.get::<RoleState>(LEGACY_NODE_STATE_KEY)? else {
            return Ok(0);
        };
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for s in streams {
            if self.role(s)?.is_none() {
                batch.put(role_key(s), encode(&legacy));
                n += 1;
            }
        }
        batch.delete(LEGACY_NODE_STATE_KEY);
        self.db.write_opt(batch, &synced())?;
        Ok(n)
    }

    /// Writes the node-wide role record of releases before roles per
    /// stream (tests of [`Catalog::migrate_roles`] only).
    #[doc(hidden)]
    pub fn write_legacy_node_state(&self, state: &RoleState) -> Result<()> {
        self.db
            .put_opt(LEGACY_NODE_STATE_KEY, encode(state), &synced())?;
        Ok(())
    }

    pub fn stream_meta(&self, stream: &StreamName) -> Result<StreamMeta> {
        Ok(self.get(&meta_key(stream))?.unwrap_or_default())
    }

    /// Streams that have a record here, in name order. Seeks past each
    /// stream's keys, so it costs one seek per stream, not one step per
    /// segment.
    pub fn streams(&self) -> Result<Vec<StreamName>> {
        let mut out = Vec::new();
        let mut from = b"stream/".to_vec();
        loop {
            let Some(item) = self
                .db
                .iterator(IteratorMode::From(&from, Direction::Forward))
                .next()
            else {
                break;
            };
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(b"stream/") else {
                break;
            };
            let Some(slash) = rest.iter().position(|&b| b == b'/') else {
                // Not a key of ours; step past it.
                from = [&k[..], b"\0"].concat();
                continue;
            };
            let name = String::from_utf8_lossy(&rest[..slash]).into_owned();
            if let Ok(n) = StreamName::new(name.as_str()) {
                if self.db.get(meta_key(&n).as_bytes())?.is_some() {
                    out.push(n);
                }
            }
            // One past every key of this stream: '/' + 1 == '0'.
            from = format!("stream/{name}0").into_bytes();
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

    /// The stream's first segment named after `after` (the very first
    /// with None), if any.
    pub fn segment_after(
        &self,
        stream: &StreamName,
        after: Option<&SegmentName>,
    ) -> Result<Option<SegmentRecord>> {
        let mut found = None;
        self.for_each_segment(stream, after, |r| {
            found = Some(r.clone());
            Ok(false)
        })?;
        Ok(found)
    }

    /// All segments of the stream, in name order. Grows with the log: for
    /// work that must see every record (verify); replies use the bounded
    /// lookups below.
    pub fn segments(&self, stream: &StreamName) -> Result<Vec<SegmentRecord>> {
        let mut out = Vec::new();
        self.for_each_segment(stream, None, |r| {
            out.push(r.clone());
            Ok(true)
        })?;
        Ok(out)
    }

    /// Calls `f` with each record after `after` (None = from the first), in
    /// name order, until it returns false. Holds one record at a time.
    pub fn for_each_segment(
        &self,
        stream: &StreamName,
        after: Option<&SegmentName>,
        mut f: impl FnMut(&SegmentRecord) -> Result<bool>,
    ) -> Result<()> {
        let prefix = seg_prefix(stream);
        let from = match after {
            Some(a) => seg_key(stream, a),
            None => prefix.clone(),
        };
        for item in self
            .db
            .iterator(IteratorMode::From(from.as_bytes(), Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if after.is_some() && k.as_ref() == from.as_bytes() {
                continue;
            }
            if !f(&decode(&k, &v)?)? {
                break;
            }
        }
        Ok(())
    }

    /// The stream's first segment by name, if any.
    pub fn first(&self, stream: &StreamName) -> Result<Option<SegmentRecord>> {
        let mut first = None;
        self.for_each_segment(stream, None, |r| {
            first = Some(r.clone());
            Ok(false)
        })?;
        Ok(first)
    }

    /// Records before `before` (None = from the end), newest first, until
    /// `f` returns false.
    fn for_each_segment_back(
        &self,
        stream: &StreamName,
        before: Option<&SegmentName>,
        mut f: impl FnMut(SegmentRecord) -> Result<bool>,
    ) -> Result<()> {
        let prefix = seg_prefix(stream);
        let from = match before {
            Some(b) => seg_key(stream, b),
            // One past every key with this prefix: '/' + 1 == '0'.
            None => format!("stream/{stream}/seg0"),
        };
        for item in self
            .db
            .iterator(IteratorMode::From(from.as_bytes(), Direction::Reverse))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if k.as_ref() == from.as_bytes() {
                continue;
            }
            if !f(decode(&k, &v)?)? {
                break;
            }
        }
        Ok(())
    }

    /// The last sealed segment of the stream, if any (normally the last or
    /// the one before it: only the newest segment is ever partial).
    pub fn last_sealed(&self, stream: &StreamName) -> Result<Option<SegmentRecord>> {
        let mut found = None;
        self.for_each_segment_back(stream, None, |r| {
            if r.sealed {
                found = Some(r);
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(found)
    }

    /// The record just before segment `seg` in name order, if any.
    pub fn previous(
        &self,
        stream: &StreamName,
        seg: &SegmentName,
    ) -> Result<Option<SegmentRecord>> {
        let mut found = None;
        self.for_each_segment_back(stream, Some(seg), |r| {
            found = Some(r);
            Ok(false)
        })?;
        Ok(found)
    }

    /// The segment that holds the byte at `position`, or the last segment
    /// when `position` is the end of the log. None for a position in a gap
    /// (a node that joined later), before the first or past the end. One
    /// seek in the position index.
    pub fn segment_at(&self, stream: &StreamName, position: u64) -> Result<Option<SegmentRecord>> {
        let prefix = pos_prefix(stream);
        // Past every entry that starts at `position`: '/' + 1 == '0'.
        let from = format!("{prefix}{position:020}0");
        for item in self
            .db
            .iterator(IteratorMode::From(from.as_bytes(), Direction::Reverse))
        {
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(prefix.as_bytes()) else {
                break;
            };
            let rest = String::from_utf8_lossy(rest);
            let Some((start, name)) = rest.split_once('/') else {
                continue;
            };
            let (Ok(start), Ok(name)) = (start.parse::<u64>(), SegmentName::new(name)) else {
                continue;
            };
            match self.segment(stream, &name)? {
                // An entry left by a record whose start changed: skip it.
                Some(rec) if rec.start == start => {
                    let holds = position < rec.end()
                        || (position == rec.end()
                            && self.tail(stream)?.is_some_and(|t| t.name == rec.name));
                    return Ok(holds.then_some(rec));
                }
                _ => continue,
            }
        }
        Ok(None)
    }

    /// At most `limit` records after `after` (None = from the first), in
    /// name order, and whether more follow.
    pub fn page(
        &self,
        stream: &StreamName,
        after: Option<&SegmentName>,
        limit: usize,
    ) -> Result<(Vec<SegmentRecord>, bool)> {
        let mut out = Vec::new();
        let mut more = false;
        self.for_each_segment(stream, after, |r| {
            if out.len() == limit {
                more = true;
                return Ok(false);
            }
            out.push(r.clone());
            Ok(true)
        })?;
        Ok((out, more))
    }

    /// The stream's retention state at the DR site (default: nothing pruned).
    pub fn retention(&self, stream: &StreamName) -> Result<RetentionState> {
        Ok(self.get(&retention_key(stream))?.unwrap_or_default())
    }

    /// The newest segment `wal-fetch` served, if any.
    pub fn fetched(&self, stream: &StreamName) -> Result<Option<Fetched>> {
        self.get(&fetched_key(stream))
    }

    /// Records that `wal-fetch` served `seg`, if it is newer than the
    /// newest served so far. Not synced: a mark lost in a crash only moves
    /// back to an older segment, which makes retention keep more, never
    /// less. The caller serialises calls (read, compare, write).
    pub fn note_fetched(&self, stream: &StreamName, seg: &SegmentName, at_ms: u64) -> Result<()> {
        if self
            .fetched(stream)?
            .is_some_and(|f| f.segment.as_str() >= seg.as_str())
        {
            return Ok(());
        }
        let f = Fetched {
            segment: seg.to_string(),
            at_ms,
        };
        self.db.put(fetched_key(stream), encode(&f))?;
        Ok(())
    }

    /// Compacts the segment records and position index entries of `stream`
    /// up to and including segment `through` / position `through_start`,
    /// so that the space of records retention deleted is given back (a
    /// deleted key is only a tombstone until compaction).
    pub fn compact_pruned(&self, stream: &StreamName, through: &SegmentName, through_start: u64) {
        let seg_from = seg_prefix(stream);
        let seg_to = format!("{}\0", seg_key(stream, through));
        self.db
            .compact_range(Some(seg_from.as_bytes()), Some(seg_to.as_bytes()));
        let pos_from = pos_prefix(stream);
        // Past every entry that starts at `through_start`: '/' + 1 == '0'.
        let pos_to = format!("{pos_from}{through_start:020}0");
        self.db
            .compact_range(Some(pos_from.as_bytes()), Some(pos_to.as_bytes()));
    }

    /// Total size of the catalog's files on disk (SST and WAL), for the
    /// operator and the many-segments test.
    pub fn disk_size(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.total-sst-files-size")
            .ok()
            .flatten()
            .unwrap_or(0)
            .saturating_add(
                self.db
                    .property_int_value("rocksdb.size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0),
            )
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
            put_segment(&mut batch, stream, &rec.segment_name()?, rec);
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
            fork: false,
            in_source: false,
            chain: None,
            check: None,
            pruned_at_ms: None,
        }
    }

    #[test]
    fn audit_log_is_append_only_and_numbered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let mut t = Txn::default();
        t.audit(AuditRecord {
            action: "failover".into(),
            ..Default::default()
        });
        t.audit(AuditRecord {
            action: "rejoin".into(),
            ..Default::default()
        });
        cat.commit_txn(t).unwrap();
        drop(cat);
        let cat = Catalog::open(dir.path()).unwrap();
        let mut t = Txn::default();
        t.audit(AuditRecord {
            action: "pause".into(),
            ..Default::default()
        });
        cat.commit_txn(t).unwrap();
        let log = cat.audit_log().unwrap();
        let seqs: Vec<_> = log.iter().map(|r| (r.seq, r.action.as_str())).collect();
        assert_eq!(seqs, [(1, "failover"), (2, "rejoin"), (3, "pause")]);
        let (ehr, lab) = (
            StreamName::new("ehr").unwrap(),
            StreamName::new("lab").unwrap(),
        );
        assert!(cat.claim_hook("promote", &ehr, 2).unwrap());
        assert!(!cat.claim_hook("promote", &ehr, 2).unwrap());
        assert!(cat.claim_hook("promote", &ehr, 3).unwrap());
        // Epochs are per stream: another stream's change to epoch 2 runs
        // its own hook.
        assert!(cat.claim_hook("promote", &lab, 2).unwrap());
    }

    #[test]
    fn a_record_with_an_invalid_name_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let a = StreamName::new("a").unwrap();
        let bad = rec("../s1", 0, 10);
        let e = cat
            .commit(&a, &[&rec("s1", 0, 10), &bad], &StreamMeta::default())
            .unwrap_err();
        assert!(matches!(e, CatalogError::BadSegmentName { .. }), "{e}");
        assert!(e.to_string().contains("restore the data directory"), "{e}");
        let mut t = Txn::default();
        t.segment(&a, &rec("s2", 10, 5)).segment(&a, &bad);
        t.audit(AuditRecord::default());
        let e = cat.commit_txn(t).unwrap_err();
        assert!(matches!(e, CatalogError::BadSegmentName { .. }), "{e}");
        assert_eq!(cat.tail(&a).unwrap(), None);
        assert!(cat.audit_log().unwrap().is_empty());
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
        let name = |n: &str| SegmentName::new(n).unwrap();
        let after = |s: Option<&str>| {
            cat.segment_after(&a, s.map(name).as_ref())
                .unwrap()
                .map(|r| r.name)
        };
        assert_eq!(after(None).as_deref(), Some("s1"));
        assert_eq!(after(Some("s1")).as_deref(), Some("s2"));
        assert_eq!(after(Some("s0")).as_deref(), Some("s1"));
        assert_eq!(after(Some("s2")), None, "not into stream a-b");
        assert_eq!(cat.segments(&a).unwrap().len(), 2);
        assert_eq!(cat.streams().unwrap(), vec![a, ab, b]);
    }

    #[test]
    fn bounded_lookups_and_the_position_index_of_an_old_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let a = StreamName::new("a").unwrap();
        let name = |n: &str| SegmentName::new(n).unwrap();
        {
            let cat = Catalog::open(dir.path()).unwrap();
            // As a catalog from before the index: records only, no marker.
            for r in [rec("s1", 0, 10), rec("s2", 10, 0), rec("s3", 10, 5)] {
                cat.db.put(seg_key(&a, &name(&r.name)), encode(&r)).unwrap();
            }
            cat.db
                .put(meta_key(&a), encode(&StreamMeta::default()))
                .unwrap();
            cat.db.delete(POS_INDEX_KEY).unwrap();
            assert_eq!(cat.segment_at(&a, 3).unwrap(), None);
        }
        let cat = Catalog::open(dir.path()).unwrap();
        let at = |p| cat.segment_at(&a, p).unwrap().map(|r| r.name);
        assert_eq!(at(0).as_deref(), Some("s1"));
        assert_eq!(at(9).as_deref(), Some("s1"));
        // s2 is empty at 10: the byte at 10 is s3's.
        assert_eq!(at(10).as_deref(), Some("s3"));
        assert_eq!(at(15).as_deref(), Some("s3"));
        assert_eq!(at(16), None);
        assert_eq!(cat.first(&a).unwrap().unwrap().name, "s1");
        assert_eq!(cat.previous(&a, &name("s3")).unwrap().unwrap().name, "s2");
        assert_eq!(cat.previous(&a, &name("s1")).unwrap(), None);
        assert_eq!(cat.last_sealed(&a).unwrap(), None);
        let mut sealed = rec("s2", 10, 0);
        sealed.sealed = true;
        cat.commit(&a, &[&sealed], &StreamMeta::default()).unwrap();
        assert_eq!(cat.last_sealed(&a).unwrap().unwrap().name, "s2");
        // Deleting a record removes its index entry too.
        let mut t = Txn::default();
        t.delete_segment(&a, &rec("s3", 10, 5));
        cat.commit_txn(t).unwrap();
        assert_eq!(at(12), None);
        assert_eq!(at(10).as_deref(), Some("s2"));
        let (page, more) = cat.page(&a, Some(&name("s1")), 1).unwrap();
        assert_eq!((page[0].name.as_str(), more), ("s2", false));
    }

    #[test]
    fn roles_round_trip_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let (a, b) = (
            StreamName::new("ehr").unwrap(),
            StreamName::new("lab").unwrap(),
        );
        assert_eq!(cat.role(&a).unwrap(), None);
        let mut txn = Txn::default();
        txn.role(&a, &RoleState::new(Role::Replica, 3));
        txn.role(&b, &RoleState::new(Role::Primary, 7));
        cat.commit_txn(txn).unwrap();
        drop(cat);
        let cat = Catalog::open(dir.path()).unwrap();
        assert_eq!(
            cat.role(&a).unwrap(),
            Some(RoleState::new(Role::Replica, 3))
        );
        assert_eq!(
            cat.roles().unwrap(),
            vec![
                (a, RoleState::new(Role::Replica, 3)),
                (b, RoleState::new(Role::Primary, 7))
            ]
        );
    }

    /// A catalog from before roles per stream: every stream it held gets
    /// the node's role, once; a stream with a role of its own keeps it.
    #[test]
    fn node_wide_role_migrates_to_each_stream_once() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let (a, b) = (
            StreamName::new("ehr").unwrap(),
            StreamName::new("lab").unwrap(),
        );
        let mut fenced = RoleState::new(Role::Fenced, 4);
        fenced.fenced_reason = Some("saw epoch 5".into());
        cat.write_legacy_node_state(&fenced).unwrap();
        let mut txn = Txn::default();
        txn.role(&b, &RoleState::new(Role::Replica, 9));
        cat.commit_txn(txn).unwrap();
        assert_eq!(cat.migrate_roles(&[a.clone(), b.clone()]).unwrap(), 1);
        assert_eq!(cat.role(&a).unwrap(), Some(fenced));
        assert_eq!(
            cat.role(&b).unwrap(),
            Some(RoleState::new(Role::Replica, 9))
        );
        // The node-wide record is gone: a stream seen later does not get it.
        let c = StreamName::new("billing").unwrap();
        assert_eq!(cat.migrate_roles(std::slice::from_ref(&c)).unwrap(), 0);
        assert_eq!(cat.role(&c).unwrap(), None);
    }
}
