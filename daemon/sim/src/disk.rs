//! A simulated disk with the durability semantics that decide whether a DR
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

use rand::Rng;
use std::collections::BTreeMap;

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
pub struct Disk {
    files: BTreeMap<u64, File>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    journal: Vec<DirOp>,
    next_id: u64,
    pub full: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskFull;

impl Disk {
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
    pub fn create(&mut self, path: &str) -> Result<(), DiskFull> {
        if self.full {
            return Err(DiskFull);
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
    pub fn write_at(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), DiskFull> {
        if self.full {
            return Err(DiskFull);
        }
        let Some(f) = self.file_mut(path) else {
            return Err(DiskFull);
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
    pub fn power_cut(&mut self, rng: &mut impl Rng) {
        // Directory: the durable names plus a random prefix of the journal.
        let keep = rng.random_range(0..=self.journal.len());
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
            let unsynced = f.data.len() - f.synced;
            if unsynced == 0 {
                continue;
            }
            // Of the unsynced bytes, a random number of sectors reached the
            // disk, each holding the new bytes or zeros.
            let sectors = unsynced.div_ceil(SECTOR);
            let kept = rng.random_range(0..=sectors);
            let end = (f.synced + kept * SECTOR).min(f.data.len());
            for s in 0..kept {
                if rng.random_bool(0.25) {
                    let a = f.synced + s * SECTOR;
                    let b = (a + SECTOR).min(end);
                    f.data[a..b].fill(0);
                }
            }
            f.data.truncate(end);
            f.synced = end;
        }
        self.full = false;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_power_cut_keeps_only_what_was_synced_and_some_torn_sectors() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            let mut d = Disk::default();
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
        }
    }
}
