//! In-memory storage: a disk with the durability semantics that decide whether a DR
//! copy survives a power cut:
//!
//! - a file's bytes are durable only up to its last fdatasync; a power cut
//!   keeps the synced prefix and, of what was written after it, a random
//!   number of sectors (in order, each one the new bytes or zeros: a torn
//!   write at sector granularity);
//! - directory entries (create, rename, remove) are durable only after an
//!   fsync of the directory; a power cut keeps a random prefix of the
//!   operations since (a metadata journal commits them in order);
//! - a process crash (kill -9) loses nothing written: the page cache stays;
//! - the disk can be full (writes fail, nothing changes) and can rot bytes
//!   at rest.
//!
//! [`MemDisk`] is one node's disk. As a [`SegmentStore`] it holds a
//! stream's landing directory under `land/`; as a [`Source`] the
//! database's WAL directory under `wal/` (written with
//! [`MemDisk::append_durable`], as a database fsyncs its WAL before a
//! COMMIT returns). [`MemCatalog`] is a catalog whose commit is atomic and
//! durable (a synced RocksDB write batch). drd-sim runs both; they pass the
//! same [`super::contract`] suite as the daemon's files and RocksDB.
//!
//! Randomness (which sectors of a torn write survive) is passed in as an
//! [`Entropy`]: nothing here draws it.

use super::{Catalog, FileState, SegmentStore, Source, SourceSegment};
use crate::replica::{Record, SealedSegment};
use drd_proto::SegmentName;

use std::collections::BTreeMap;

/// The choices a power cut makes, drawn by the caller (drd-sim's seeded
/// generator).
pub trait Entropy {
    /// A number in `0..=n`.
    fn upto(&mut self, n: usize) -> usize;
    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool;
}

/// Why an operation of the in-memory disk failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// The disk is full: nothing changed.
    #[error("no space left on the device")]
    Full,
    #[error("{0}: no such file")]
    Missing(String),
}

/// The landing directory's and the WAL directory's prefixes.
pub const LANDING: &str = "land";
pub const WAL: &str = "wal";

/// Torn writes keep or lose whole sectors of this many bytes.
pub const SECTOR: usize = 16;

#[derive(Clone, Debug, Default)]
pub struct File {
    pub data: Vec<u8>,
    /// Bytes `0..synced` are durable.
    pub synced: usize,
}

/// One directory operation as the journal commits it: atomically (a
/// rename changes two names at once).
#[derive(Clone, Debug)]
struct DirOp(Vec<(String, Option<u64>)>);

/// One node's disk: files by id, names by path.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    files: BTreeMap<u64, File>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    journal: Vec<DirOp>,
    next_id: u64,
    pub full: bool,
}

impl MemDisk {
    pub fn exists(&self, path: &str) -> bool {
        self.names.contains_key(path)
    }

    pub fn len(&self, path: &str) -> Option<u64> {
        self.file(path).map(|f| f.data.len() as u64)
    }

    pub fn file(&self, path: &str) -> Option<&File> {
        self.names.get(path).and_then(|id| self.files.get(id))
    }

    fn file_mut(&mut self, path: &str) -> Option<&mut File> {
        let id = *self.names.get(path)?;
        self.files.get_mut(&id)
    }

    pub fn read(&self, path: &str) -> &[u8] {
        self.file(path).map_or(&[][..], |f| &f.data[..])
    }

    /// Names under `dir/` (the part after the slash), sorted.
    pub fn list(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        self.names
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k[prefix.len()..].to_string())
            .collect()
    }

    fn put_names(&mut self, changes: Vec<(String, Option<u64>)>) {
        for (path, id) in &changes {
            match id {
                Some(id) => self.names.insert(path.clone(), *id),
                None => self.names.remove(path),
            };
        }
        self.journal.push(DirOp(changes));
    }

    /// Creates (or truncates to empty) a file. Its name is durable only
    /// after the directory's fsync.
    pub fn create(&mut self, path: &str) -> Result<(), MemError> {
        if self.full {
            return Err(MemError::Full);
        }
        if let Some(f) = self.file_mut(path) {
            f.data.clear();
            f.synced = 0;
            return Ok(());
        }
        let id = self.next_id;
        self.next_id += 1;
        self.files.insert(id, File::default());
        self.put_names(vec![(path.to_string(), Some(id))]);
        Ok(())
    }

    /// Writes at `offset` (the page cache: durable only after a sync).
    pub fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), MemError> {
        if self.full {
            return Err(MemError::Full);
        }
        let Some(f) = self.file_mut(path) else {
            return Err(MemError::Missing(path.to_string()));
        };
        let off = offset as usize;
        if f.data.len() < off + data.len() {
            f.data.resize(off + data.len(), 0);
        }
        f.data[off..off + data.len()].copy_from_slice(data);
        // Rewriting synced bytes makes them not durable until the next sync
        // (conservative: a power cut may then lose them).
        f.synced = f.synced.min(off);
        Ok(())
    }

    /// Appends and makes durable at once (the database's own WAL writes:
    /// it fsyncs them before a COMMIT returns).
    pub fn append_durable(&mut self, path: &str, data: &[u8]) {
        if !self.exists(path) {
            let id = self.next_id;
            self.next_id += 1;
            self.files.insert(id, File::default());
            self.names.insert(path.to_string(), id);
            self.durable_names.insert(path.to_string(), id);
        }
        if let Some(f) = self.file_mut(path) {
            f.data.extend_from_slice(data);
            f.synced = f.data.len();
        }
    }

    /// fdatasync of the first `upto` bytes written (what was written
    /// before the call: later writes are not covered).
    pub fn sync_upto(&mut self, path: &str, upto: u64) {
        if let Some(f) = self.file_mut(path) {
            f.synced = f.synced.max((upto as usize).min(f.data.len()));
        }
    }

    pub fn sync(&mut self, path: &str) {
        self.sync_upto(path, u64::MAX);
    }

    /// rename(2): atomic, durable after the directory's fsync.
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(id) = self.names.get(from).copied() {
            self.put_names(vec![(to.to_string(), Some(id)), (from.to_string(), None)]);
        }
    }

    /// ftruncate + fsync: durable at once (the daemon's truncate_durable).
    pub fn truncate_durable(&mut self, path: &str, len: u64) {
        if let Some(f) = self.file_mut(path) {
            f.data.truncate(len as usize);
            f.synced = f.data.len();
        }
    }

    /// fsync of the directory: every name operation so far is durable.
    pub fn sync_dir(&mut self) {
        self.durable_names = self.names.clone();
        self.journal.clear();
    }

    /// A whole-file durable copy under a new name, durable at once (the
    /// daemon's move to quarantine: copy or rename, then fsyncs).
    pub fn move_durable(&mut self, from: &str, to: &str) {
        self.rename(from, to);
        if let Some(f) = self.file_mut(to) {
            f.synced = f.data.len();
        }
        self.sync_dir();
    }

    pub fn write_durable(&mut self, path: &str, data: &[u8]) {
        let id = self.next_id;
        self.next_id += 1;
        self.files.insert(
            id,
            File {
                data: data.to_vec(),
                synced: data.len(),
            },
        );
        self.names.insert(path.to_string(), id);
        self.sync_dir();
    }

    /// A power cut: what was not durable is lost, some of it torn.
    pub fn power_cut(&mut self, rng: &mut dyn Entropy) {
        // Directory: the durable names plus a random prefix of the journal.
        let keep = rng.upto(self.journal.len());
        let mut names = self.durable_names.clone();
        for DirOp(changes) in &self.journal[..keep] {
            for (path, id) in changes {
                match id {
                    Some(id) => names.insert(path.clone(), *id),
                    None => names.remove(path),
                };
            }
        }
        self.names = names;
        self.durable_names = self.names.clone();
        self.journal.clear();
        for f in self.files.values_mut() {
            tear(f, rng);
        }
        self.full = false;
    }

    /// An fdatasync of `path` failed (EIO): the kernel may have dropped the
    /// dirty pages of the failed writeback, so what was not synced is lost
    /// or torn, as at a power cut of that one file; a later read sees
    /// what is left.
    pub fn lose_unsynced(&mut self, path: &str, rng: &mut dyn Entropy) {
        if let Some(f) = self.file_mut(path) {
            tear(f, rng);
        }
    }

    /// Flips one bit of the file at `path`, at rest (synced bytes too).
    pub fn rot(&mut self, path: &str, at: usize) {
        if let Some(f) = self.file_mut(path) {
            if let Some(b) = f.data.get_mut(at) {
                *b ^= 0x10;
            }
        }
    }
}

/// What survives of a file's unsynced bytes when they are lost: a random
/// number of sectors reached the disk, each holding the new bytes or zeros.
fn tear(f: &mut File, rng: &mut dyn Entropy) {
    let unsynced = f.data.len() - f.synced;
    if unsynced == 0 {
        return;
    }
    let sectors = unsynced.div_ceil(SECTOR);
    let kept = rng.upto(sectors);
    let end = (f.synced + kept * SECTOR).min(f.data.len());
    for s in 0..kept {
        if rng.chance(0.25) {
            let a = f.synced + s * SECTOR;
            let b = (a + SECTOR).min(end);
            f.data[a..b].fill(0);
        }
    }
    f.data.truncate(end);
    f.synced = end;
}

impl MemDisk {
    /// The landing directory `land/` as a stream's [`SegmentStore`].
    pub fn landing(&mut self) -> Landing<'_> {
        Landing(self)
    }

    /// The WAL directory `wal/` as the primary's [`Source`].
    pub fn wal(&mut self) -> Wal<'_> {
        Wal(self)
    }
}

/// The path on a [`MemDisk`] of a segment's file in the landing directory
/// (for what works on the disk itself: faults, checks).
pub fn landing_path(segment: &SegmentName, state: FileState) -> String {
    match state {
        FileState::Partial => format!("{LANDING}/{}", segment.partial_file_name()),
        FileState::Complete => format!("{LANDING}/{segment}"),
    }
}

fn slice(data: &[u8], offset: u64, len: u64) -> Vec<u8> {
    let from = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let to = usize::try_from(offset.saturating_add(len))
        .unwrap_or(usize::MAX)
        .min(data.len());
    data[from..to].to_vec()
}

/// A [`MemDisk`]'s landing directory (see [`MemDisk::landing`]).
pub struct Landing<'a>(&'a mut MemDisk);

impl Landing<'_> {
    fn rename_back(&mut self, seals: &[SealedSegment]) {
        for s in seals.iter().rev() {
            self.0.rename(
                &landing_path(&s.segment, FileState::Complete),
                &landing_path(&s.segment, FileState::Partial),
            );
        }
    }
}

impl SegmentStore for Landing<'_> {
    type Error = MemError;

    fn create(&mut self, segment: &SegmentName) -> Result<(), MemError> {
        self.0.create(&landing_path(segment, FileState::Partial))
    }

    fn write(&mut self, segment: &SegmentName, offset: u64, data: &[u8]) -> Result<(), MemError> {
        let path = landing_path(segment, FileState::Partial);
        self.0.write_at(&path, offset, data)
    }

    fn read(
        &mut self,
        segment: &SegmentName,
        state: FileState,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, MemError> {
        let path = landing_path(segment, state);
        match self.0.file(&path) {
            Some(f) => Ok(slice(&f.data, offset, len)),
            None => Err(MemError::Missing(path)),
        }
    }

    fn size(&mut self, segment: &SegmentName, state: FileState) -> Result<Option<u64>, MemError> {
        Ok(self.0.len(&landing_path(segment, state)))
    }

    fn sync(&mut self, segment: &SegmentName, len: u64) -> Result<(), MemError> {
        let path = landing_path(segment, FileState::Partial);
        if !self.0.exists(&path) {
            return Err(MemError::Missing(path));
        }
        self.0.sync_upto(&path, len);
        Ok(())
    }

    fn make_names_durable(&mut self, seals: &[SealedSegment]) -> Result<(), MemError> {
        for (i, s) in seals.iter().enumerate() {
            let partial = landing_path(&s.segment, FileState::Partial);
            if !self.0.exists(&partial) {
                self.rename_back(&seals[..i]);
                return Err(MemError::Missing(partial));
            }
            // fdatasync before the rename: a complete name must never point
            // at bytes that are not durable.
            if s.sync {
                self.0.sync(&partial);
            }
            self.0
                .rename(&partial, &landing_path(&s.segment, FileState::Complete));
        }
        self.0.sync_dir();
        Ok(())
    }

    fn undo_names(&mut self, seals: &[SealedSegment]) -> Result<(), MemError> {
        self.rename_back(seals);
        Ok(())
    }

    fn cut(&mut self, segment: &SegmentName, len: u64) -> Result<(), MemError> {
        let path = landing_path(segment, FileState::Partial);
        if !self.0.exists(&path) {
            return Err(MemError::Missing(path));
        }
        self.0.truncate_durable(&path, len);
        Ok(())
    }

    fn list(&mut self) -> Result<Vec<(SegmentName, FileState)>, MemError> {
        let mut out: Vec<(SegmentName, FileState)> = self
            .0
            .list(LANDING)
            .into_iter()
            .filter_map(|n| match n.strip_suffix(drd_proto::PARTIAL_SUFFIX) {
                Some(base) => SegmentName::new(base).ok().map(|s| (s, FileState::Partial)),
                None => SegmentName::new(n).ok().map(|s| (s, FileState::Complete)),
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

/// A [`MemDisk`]'s WAL directory (see [`MemDisk::wal`]).
pub struct Wal<'a>(&'a mut MemDisk);

impl Source for Wal<'_> {
    type Error = MemError;

    fn list(&mut self, from: Option<&SegmentName>) -> Result<Vec<SourceSegment>, MemError> {
        let mut out: Vec<SourceSegment> = self
            .0
            .list(WAL)
            .into_iter()
            .filter_map(|n| SegmentName::new(n).ok())
            .filter(|n| from.is_none_or(|f| n >= f))
            .map(|name| SourceSegment {
                size: self.0.len(&format!("{WAL}/{name}")).unwrap_or(0),
                name,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read(&mut self, segment: &SegmentName, offset: u64, len: u64) -> Result<Vec<u8>, MemError> {
        let path = format!("{WAL}/{segment}");
        match self.0.file(&path) {
            Some(f) => Ok(slice(&f.data, offset, len)),
            None => Err(MemError::Missing(path)),
        }
    }
}

/// A catalog in memory: a commit replaces records atomically and is
/// durable at once (the daemon's is a synced RocksDB write batch), so a
/// power cut loses nothing of it. `fail_next` makes the next commit fail
/// with nothing written, as a full disk would.
#[derive(Clone, Debug, Default)]
pub struct MemCatalog {
    records: std::collections::BTreeMap<SegmentName, Record>,
    chain_head: [u8; 32],
    pub fail_next: bool,
}

/// The in-memory catalog's one failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("catalog commit failed (planted)")]
pub struct CommitFailed;

impl Catalog for MemCatalog {
    type Error = CommitFailed;

    fn load(&mut self) -> Result<(Vec<Record>, [u8; 32]), CommitFailed> {
        let mut recs: Vec<Record> = self.records.values().cloned().collect();
        recs.sort_by_key(|r| r.start);
        Ok((recs, self.chain_head))
    }

    fn commit(&mut self, records: &[Record], chain_head: [u8; 32]) -> Result<(), CommitFailed> {
        if std::mem::take(&mut self.fail_next) {
            return Err(CommitFailed);
        }
        for r in records {
            self.records.insert(r.segment.clone(), r.clone());
        }
        self.chain_head = chain_head;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::contract;

    /// A small deterministic generator (xorshift) for the tests' power cuts.
    struct Xorshift(u64);

    impl Entropy for Xorshift {
        fn upto(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % (n as u64 + 1)) as usize
        }
        fn chance(&mut self, p: f64) -> bool {
            (self.upto(1_000_000) as f64) < p * 1_000_000.0
        }
    }

    #[test]
    fn a_power_cut_keeps_only_what_was_synced_and_some_torn_sectors() {
        let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
        let (mut both, mut torn) = (false, false);
        for _ in 0..200 {
            let mut d = MemDisk::default();
            d.create("l/a").unwrap();
            d.write_at("l/a", 0, &[1; 40]).unwrap();
            d.sync("l/a");
            d.sync_dir();
            d.write_at("l/a", 40, &[2; 100]).unwrap();
            d.rename("l/a", "l/b");
            d.power_cut(&mut rng);
            let path = if d.exists("l/a") { "l/a" } else { "l/b" };
            assert!(d.exists("l/a") != d.exists("l/b"), "a rename is atomic");
            let data = d.read(path);
            assert!(data.len() >= 40 && data.len() <= 140);
            assert_eq!(&data[..40], &[1; 40]);
            assert!(data[40..].iter().all(|b| *b == 2 || *b == 0));
            both |= path == "l/b";
            torn |= data[40..].contains(&0);
        }
        assert!(
            both && torn,
            "200 cuts never kept the rename or never tore a sector"
        );
    }

    #[test]
    fn the_landing_directory_passes_the_segment_store_suite() {
        let mut d = MemDisk::default();
        contract::segment_store(&mut d.landing()).unwrap();
    }

    #[test]
    fn the_wal_directory_passes_the_source_suite() {
        let mut d = MemDisk::default();
        for (n, data) in contract::SOURCE_FIXTURE {
            d.append_durable(&format!("{WAL}/{n}"), data);
        }
        d.append_durable(&format!("{WAL}/not-a-segment.partial"), b"x");
        contract::source(&mut d.wal()).unwrap();
    }

    #[test]
    fn the_memory_catalog_passes_the_catalog_suite() {
        contract::catalog(&mut MemCatalog::default()).unwrap();
    }

    #[test]
    fn a_failed_commit_changes_nothing() {
        let mut c = MemCatalog {
            fail_next: true,
            ..MemCatalog::default()
        };
        let seg = SegmentName::new("000000010000000000000001").unwrap();
        let rec = Record {
            segment: seg,
            start: 0,
            size: 1,
            sealed: false,
            sha256: None,
            chain: None,
            check: None,
            epoch: 1,
            received_at_ms: 0,
            sealed_at_ms: None,
        };
        assert!(c.commit(&[rec], [1; 32]).is_err());
        assert_eq!(c.load().unwrap(), (vec![], [0; 32]));
    }

    #[test]
    fn a_durable_group_survives_a_power_cut_and_an_unsynced_one_may_not() {
        let seg = SegmentName::new("000000010000000000000001").unwrap();
        let mut rng = Xorshift(7);
        let mut lost = false;
        for _ in 0..100 {
            let mut d = MemDisk::default();
            let mut l = d.landing();
            l.create(&seg).unwrap();
            l.write(&seg, 0, &[5; 64]).unwrap();
            let seals = [SealedSegment {
                segment: seg.clone(),
                sync: true,
            }];
            l.make_names_durable(&seals).unwrap();
            d.power_cut(&mut rng);
            assert_eq!(
                d.landing().read(&seg, FileState::Complete, 0, 100).unwrap(),
                vec![5; 64]
            );
            // Written and renamed without the sync: may be lost or torn.
            let mut d = MemDisk::default();
            let mut l = d.landing();
            l.create(&seg).unwrap();
            l.write(&seg, 0, &[5; 64]).unwrap();
            d.power_cut(&mut rng);
            let data = d.landing().read(&seg, FileState::Partial, 0, 100);
            lost |= data.map_or(true, |b| b != vec![5; 64]);
        }
        assert!(lost, "100 power cuts never lost unsynced bytes");
    }

    /// A store that breaks one rule: the suite must say which.
    struct Broken<'a> {
        inner: Landing<'a>,
        flaw: &'static str,
    }

    impl SegmentStore for Broken<'_> {
        type Error = MemError;
        fn create(&mut self, s: &SegmentName) -> Result<(), MemError> {
            if self.flaw == "create keeps bytes"
                && self.inner.size(s, FileState::Partial)?.is_some()
            {
                return Ok(());
            }
            self.inner.create(s)
        }
        fn write(&mut self, s: &SegmentName, o: u64, d: &[u8]) -> Result<(), MemError> {
            self.inner.write(s, o, d)
        }
        fn read(
            &mut self,
            s: &SegmentName,
            st: FileState,
            o: u64,
            l: u64,
        ) -> Result<Vec<u8>, MemError> {
            self.inner.read(s, st, o, l)
        }
        fn size(&mut self, s: &SegmentName, st: FileState) -> Result<Option<u64>, MemError> {
            self.inner.size(s, st)
        }
        fn digest(&mut self, s: &SegmentName, size: u64) -> Result<[u8; 32], MemError> {
            if self.flaw == "digest of the first size bytes" {
                use sha2::{Digest, Sha256};
                let head = self.inner.read(s, FileState::Partial, 0, size)?;
                return Ok(Sha256::digest(&head).into());
            }
            self.inner.digest(s, size)
        }
        fn sync(&mut self, s: &SegmentName, l: u64) -> Result<(), MemError> {
            self.inner.sync(s, l)
        }
        fn make_names_durable(&mut self, seals: &[SealedSegment]) -> Result<(), MemError> {
            if self.flaw == "partial rename" {
                for s in seals {
                    let seal = std::slice::from_ref(s);
                    self.inner.make_names_durable(seal)?;
                }
                return Ok(());
            }
            self.inner.make_names_durable(seals)
        }
        fn undo_names(&mut self, seals: &[SealedSegment]) -> Result<(), MemError> {
            self.inner.undo_names(seals)
        }
        fn cut(&mut self, s: &SegmentName, l: u64) -> Result<(), MemError> {
            if self.flaw == "cut does nothing" {
                return Ok(());
            }
            self.inner.cut(s, l)
        }
        fn list(&mut self) -> Result<Vec<(SegmentName, FileState)>, MemError> {
            self.inner.list()
        }
    }

    #[test]
    fn the_segment_store_suite_fails_a_broken_store() {
        for flaw in [
            "create keeps bytes",
            "digest of the first size bytes",
            "partial rename",
            "cut does nothing",
        ] {
            let mut d = MemDisk::default();
            let mut b = Broken {
                inner: d.landing(),
                flaw,
            };
            let r = contract::segment_store(&mut b);
            assert!(r.is_err(), "the suite passed a store whose flaw is: {flaw}");
        }
    }

    #[test]
    fn the_catalog_suite_fails_a_catalog_that_appends() {
        /// Keeps every commit's records instead of replacing them.
        #[derive(Default)]
        struct Appends(Vec<Record>, [u8; 32]);
        impl Catalog for Appends {
            type Error = CommitFailed;
            fn load(&mut self) -> Result<(Vec<Record>, [u8; 32]), CommitFailed> {
                let mut v = self.0.clone();
                v.sort_by_key(|r| r.start);
                Ok((v, self.1))
            }
            fn commit(&mut self, r: &[Record], h: [u8; 32]) -> Result<(), CommitFailed> {
                self.0.extend_from_slice(r);
                self.1 = h;
                Ok(())
            }
        }
        assert!(contract::catalog(&mut Appends::default()).is_err());
    }
}
