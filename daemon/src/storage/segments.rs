//! The replica's landing directory of one stream on disk: drd-core's
//! [`SegmentStore`] over `<landing>/<name>.partial` and `<landing>/<name>`.
//!
//! [`FileStore`] is cheap to clone (its state is shared behind an `Arc`):
//! the disk worker's writing thread and its syncer each hold one. It keeps
//! the open handles of the partial files it created or opened, so that the
//! hot path (a write per chunk, the tail's fdatasync per group) never
//! reopens a file. Each sync it does, or leaves out, says why where it is.
//!
//! The bytes of the file being written are gathered and written around
//! the page cache, whole blocks with `O_DIRECT` (see [`super::direct`]):
//! the page-cache copy was most of a replica's CPU in a catch-up. Anything
//! that needs them in the file — the tail's sync, a seal, a read, a size,
//! a cut, a write to another file — writes what is gathered first.

use crate::locks::LockExt;
use crate::storage::direct::{self, AlignedBuf, Direct, WriteBehind};
use crate::storage::fsutil;
use drd_core::replica::SealedSegment;
use drd_core::storage::{FileState, SegmentStore};
use drd_proto::SegmentName;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Threads that fdatasync a group's sealed files side by side (see
/// [`FileStore::sync_files`]): a few already let the file system commit
/// them together; more only add threads.
const SYNC_THREADS: usize = 8;

/// Bytes read at a time when hashing a file.
const HASH_PIECE: usize = 1 << 20;

/// An I/O error on one file of the store, naming it.
#[derive(Debug, thiserror::Error)]
#[error("I/O error on {path}: {source}")]
pub struct StoreError {
    pub path: String,
    pub source: std::io::Error,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError {
        path: path.display().to_string(),
        source,
    }
}

/// A stream's landing directory (see the module docs).
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    landing: PathBuf,
    /// The partial files this store created or opened, by segment: the
    /// writes, the tail's fdatasync and the seal's go through these
    /// handles. A sealed file leaves when its group made its complete name
    /// durable (nothing writes it after that).
    open: Mutex<HashMap<SegmentName, Arc<Handles>>>,
    /// The appends to the file being written that are not in it yet (one
    /// file at a time: the replica writes its log in order). Held while
    /// they are written, so a sync of that file waits for them, and kept
    /// when writing them fails, so that every later sync fails too (a
    /// sync must never succeed over bytes that are not in the file).
    pending: Mutex<Option<Pending>>,
    /// The buffer of the last file written, for the next one.
    spare: Mutex<Option<AlignedBuf>>,
}

/// An open partial file: its buffered handle (reads, the tail's write,
/// the syncs, the cut) and, where the file system has it, an `O_DIRECT`
/// one for whole blocks.
pub struct Handles {
    plain: File,
    direct: Option<File>,
}

impl Handles {
    fn open(path: &Path, plain: File) -> std::io::Result<Self> {
        Ok(Self {
            plain,
            direct: direct::open_direct(path)?,
        })
    }

    /// The buffered handle: reads through it see every byte written
    /// through the store before the last sync, read or size.
    pub fn file(&self) -> &File {
        &self.plain
    }

    fn io(&self) -> Direct<'_> {
        Direct {
            direct: self.direct.as_ref(),
            plain: &self.plain,
        }
    }
}

/// The appends to one partial file not yet in it (see [`Inner::pending`]).
struct Pending {
    segment: SegmentName,
    file: Arc<Handles>,
    bytes: WriteBehind,
}

impl Pending {
    fn flush(&mut self) -> std::io::Result<()> {
        self.bytes.flush(&self.file.io())
    }
}

impl Drop for Inner {
    /// Writes what is gathered, as the file's handle would have on its
    /// own: no byte of it was acked (an ack follows a sync, and a sync
    /// writes it first), but a later session finds the file as written.
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.get_mut().ok().and_then(Option::take) {
            if let Err(e) = p.flush() {
                tracing::warn!(segment = %p.segment, error = %e,
                    "cannot write a segment's last unacked bytes as its session ends");
            }
        }
    }
}

impl FileStore {
    /// The store of the landing directory `landing`, which need not exist
    /// yet (the first [`SegmentStore::create`] creates it).
    pub fn new(landing: PathBuf) -> Self {
        Self {
            inner: Arc::new(Inner {
                landing,
                open: Mutex::new(HashMap::new()),
                pending: Mutex::new(None),
                spare: Mutex::new(None),
            }),
        }
    }

    pub fn landing(&self) -> &Path {
        &self.inner.landing
    }

    fn path(&self, segment: &SegmentName, state: FileState) -> PathBuf {
        match state {
            FileState::Partial => self.inner.landing.join(segment.partial_file_name()),
            FileState::Complete => self.inner.landing.join(segment.as_str()),
        }
    }

    /// Opens an existing partial file (a session resuming its tail) and
    /// keeps its handle; returns it with the file's length.
    pub fn open(&mut self, segment: &SegmentName) -> Result<(Arc<Handles>, u64), StoreError> {
        self.write_pending(segment, true)?;
        let path = self.path(segment, FileState::Partial);
        let f = fsutil::open_for_write(&path).map_err(io_err(&path))?;
        let len = f.metadata().map_err(io_err(&path))?.len();
        let f = Arc::new(Handles::open(&path, f).map_err(io_err(&path))?);
        self.inner.open.locked().insert(segment.clone(), f.clone());
        Ok((f, len))
    }

    /// The handle of the segment's partial file: the one kept, or the
    /// file opened (never created) and kept from now on.
    fn partial(&self, segment: &SegmentName) -> Result<Arc<Handles>, StoreError> {
        if let Some(f) = self.inner.open.locked().get(segment) {
            return Ok(f.clone());
        }
        let path = self.path(segment, FileState::Partial);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let f = Arc::new(Handles::open(&path, f).map_err(io_err(&path))?);
        self.inner.open.locked().insert(segment.clone(), f.clone());
        Ok(f)
    }

    /// Writes the gathered appends of `segment`, if any, into its file;
    /// with `close`, also stops gathering for it (its next write starts
    /// anew), keeping the buffer for the next file. On failure the appends
    /// stay gathered (see [`Inner::pending`]).
    fn write_pending(&self, segment: &SegmentName, close: bool) -> Result<(), StoreError> {
        let mut pending = self.inner.pending.locked();
        let Some(p) = pending.as_mut().filter(|p| p.segment == *segment) else {
            return Ok(());
        };
        p.flush().map_err(|e| self.partial_err(segment, e))?;
        if close {
            if let Some(p) = pending.take() {
                *self.inner.spare.locked() = Some(p.bytes.into_buf());
            }
        }
        Ok(())
    }

    /// An I/O error on the segment's partial file. The path is made only
    /// on an error: the hot path (a write per chunk) builds none.
    fn partial_err(&self, segment: &SegmentName, source: std::io::Error) -> StoreError {
        io_err(&self.path(segment, FileState::Partial))(source)
    }

    /// fdatasyncs `files` on up to [`SYNC_THREADS`] threads at once, and
    /// returns the first error. A journaling file system commits the syncs
    /// that wait at the same time together (ext4's jbd2, XFS's log), so
    /// the group's files cost a few journal commits instead of one each
    /// (256 new 4 KiB files on this project's test machine: ~500 ms one
    /// after another, 20–40 ms on 4–16 threads).
    fn sync_files(&self, files: &[(PathBuf, Arc<Handles>)]) -> Result<(), StoreError> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || -> Result<(), StoreError> {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((path, file)) = files.get(i) else {
                    return Ok(());
                };
                file.plain.sync_data().map_err(io_err(path))?;
                self.step(&format!("fdatasync {}", path.display()));
            }
        };
        let threads = files.len().min(SYNC_THREADS);
        if threads <= 1 {
            return work();
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
            let mut first = Ok(());
            for h in handles {
                // A thread fails only by panicking (a bug): propagate that panic.
                let r = h
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                if first.is_ok() {
                    first = r;
                }
            }
            first
        })
    }

    /// Gives renamed files back their `.partial` names, the last renamed
    /// first. No fsync: a restart reconciles whichever names reached the
    /// disk. Goes on past a failure (logged here, naming the file) and
    /// returns the first.
    fn rename_back(&self, renamed: &[SealedSegment]) -> Result<(), StoreError> {
        let mut first = Ok(());
        for s in renamed.iter().rev() {
            let complete = self.path(&s.segment, FileState::Complete);
            let partial = self.path(&s.segment, FileState::Partial);
            if let Err(e) = std::fs::rename(&complete, &partial) {
                tracing::error!(file = %complete.display(), error = %e,
                    "cannot give a segment back its .partial name after a failed flush");
                if first.is_ok() {
                    first = Err(io_err(&complete)(e));
                }
            }
        }
        first
    }

    /// Notes a step of a flush, for the unit tests' check of their order.
    #[cfg(test)]
    fn step(&self, what: &str) {
        steps::record(&self.inner.landing, what);
    }
    #[cfg(not(test))]
    #[inline(always)]
    fn step(&self, _what: &str) {}
}

impl SegmentStore for FileStore {
    type Error = StoreError;

    /// The partial file's catalog record is written with the group's
    /// commit; until then the file holds no acked byte, and reconciliation
    /// after a crash ignores it.
    fn create(&mut self, segment: &SegmentName) -> Result<(), StoreError> {
        let landing = &self.inner.landing;
        // A node whose log so far is its own source (a former primary) has
        // no landing directory yet.
        fsutil::create_dir_durable(landing).map_err(io_err(landing))?;
        // Appends gathered for a file of this name are not for this one.
        self.write_pending(segment, true)?;
        let path = self.path(segment, FileState::Partial);
        let f = fsutil::open_for_write(&path).map_err(io_err(&path))?;
        // A leftover file of this name holds no acked byte: start empty.
        f.set_len(0).map_err(io_err(&path))?;
        let f = Handles::open(&path, f).map_err(io_err(&path))?;
        // No fsync of the directory here: fdatasync covers the file's bytes,
        // not its name, and the group's flush fsyncs the directory once for
        // every entry created in the group (`make_names_durable`), before
        // its catalog commit can say bytes of this segment are durable.
        self.inner
            .open
            .locked()
            .insert(segment.clone(), Arc::new(f));
        Ok(())
    }

    /// Gathered, and written a buffer at a time (see the module docs). No
    /// sync: the group's flush makes these bytes durable (the tail's
    /// fdatasync, or the seal's before its rename), writing what is
    /// gathered first.
    fn write(&mut self, segment: &SegmentName, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let mut pending = self.inner.pending.locked();
        let p = match pending.take() {
            Some(p) if p.segment == *segment && p.bytes.end() == offset => pending.insert(p),
            gathered => {
                // Another file, or not where this one's appends end: what
                // is gathered goes into its file first (kept if that fails).
                let buf = match gathered {
                    Some(mut p) => {
                        if let Err(e) = p.flush() {
                            let err = self.partial_err(&p.segment, e);
                            *pending = Some(p);
                            return Err(err);
                        }
                        p.bytes.into_buf()
                    }
                    None => self.inner.spare.locked().take().unwrap_or_default(),
                };
                let file = self.partial(segment)?;
                let bytes = WriteBehind::start(buf, file.file(), offset)
                    .map_err(|e| self.partial_err(segment, e))?;
                pending.insert(Pending {
                    segment: segment.clone(),
                    file,
                    bytes,
                })
            }
        };
        p.bytes
            .append(&p.file.io(), data)
            .map_err(|e| self.partial_err(segment, e))
    }

    fn read(
        &mut self,
        segment: &SegmentName,
        state: FileState,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        if state == FileState::Partial {
            self.write_pending(segment, false)?;
        }
        let path = self.path(segment, state);
        let f = File::open(&path).map_err(io_err(&path))?;
        fsutil::read_range(&f, offset, len).map_err(io_err(&path))
    }

    fn size(&mut self, segment: &SegmentName, state: FileState) -> Result<Option<u64>, StoreError> {
        if state == FileState::Partial {
            self.write_pending(segment, false)?;
        }
        let path = self.path(segment, state);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Read back through the kept handle (the seal of a tail whose running
    /// hash does not cover it: the session began mid-segment).
    fn digest(&mut self, segment: &SegmentName, _size: u64) -> Result<[u8; 32], StoreError> {
        self.write_pending(segment, false)?;
        let file = self.partial(segment)?;
        hash_file(file.file()).map_err(|e| self.partial_err(segment, e))
    }

    /// fdatasync: the bytes and the file size (needed to read them back)
    /// reach the disk; mtime need not. What is gathered is written first
    /// (the writes after that may go on while the fdatasync runs).
    fn sync(&mut self, segment: &SegmentName, _len: u64) -> Result<(), StoreError> {
        self.write_pending(segment, false)?;
        let file = self.partial(segment)?;
        file.plain
            .sync_data()
            .map_err(|e| self.partial_err(segment, e))
    }

    /// The one directory fsync stands for what was, per segment, an fsync
    /// of the directory when its `.partial` was created and another after
    /// its rename: fdatasync covers a file's bytes, not its name, and this
    /// fsync makes durable every entry created and every rename done in
    /// the group (on failure or power loss before it, none of them is
    /// acked or recorded; reconciliation undoes renames that reached the
    /// disk anyway, and a `.partial` entry that did not is a file with no
    /// record, or with one whose bytes were never acked).
    fn make_names_durable(&mut self, seals: &[SealedSegment]) -> Result<(), StoreError> {
        let t0 = Instant::now();
        // The seals' bytes are all in their files before their syncs;
        // nothing appends to a sealed file again.
        for s in seals {
            self.write_pending(&s.segment, true)?;
        }
        // fdatasync before the rename: its bytes and size reach the disk
        // before its complete name is given (a rename must never make the
        // complete name point at bytes that are not durable). A file not
        // written since the last flush was synced by it.
        let dirty = seals
            .iter()
            .filter(|s| s.sync)
            .map(|s| {
                Ok((
                    self.path(&s.segment, FileState::Partial),
                    self.partial(&s.segment)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.sync_files(&dirty)?;
        let synced_us = t0.elapsed().as_micros() as u64;
        let mut renamed = 0;
        let mut r = Ok(());
        for s in seals {
            let partial = self.path(&s.segment, FileState::Partial);
            let complete = self.path(&s.segment, FileState::Complete);
            r = std::fs::rename(&partial, &complete).map_err(io_err(&complete));
            if r.is_err() {
                break;
            }
            self.step(&format!("rename {}", partial.display()));
            renamed += 1;
        }
        let t1 = Instant::now();
        if r.is_ok() {
            let landing = &self.inner.landing;
            r = fsutil::fsync_dir(landing).map_err(io_err(landing));
            self.step("fsync dir");
        }
        if r.is_err() {
            // Already logged one by one; the group's error is the one to report.
            let _ = self.rename_back(&seals[..renamed]);
            return r;
        }
        // Complete now: nothing writes these files again.
        let mut open = self.inner.open.locked();
        for s in seals {
            open.remove(&s.segment);
        }
        drop(open);
        tracing::trace!(
            seals = seals.len(),
            synced_us,
            dir_fsync_us = t1.elapsed().as_micros() as u64,
            "group: seals synced, renamed, directory fsynced"
        );
        Ok(())
    }

    /// After a failed flush nothing of the group is recorded: gives the
    /// renamed files back their `.partial` names, so that the next session
    /// (which does not reconcile) finds its tail where the catalog says.
    fn undo_names(&mut self, seals: &[SealedSegment]) -> Result<(), StoreError> {
        self.rename_back(seals)
    }

    fn cut(&mut self, segment: &SegmentName, len: u64) -> Result<(), StoreError> {
        // The bytes before the cut are all in the file, and the appends
        // start anew after it.
        self.write_pending(segment, true)?;
        let path = self.path(segment, FileState::Partial);
        let file = self.partial(segment)?;
        file.plain.set_len(len).map_err(io_err(&path))?;
        // The cut must be durable before new bytes land after it.
        file.plain.sync_all().map_err(io_err(&path))
    }

    fn list(&mut self) -> Result<Vec<(SegmentName, FileState)>, StoreError> {
        let landing = &self.inner.landing;
        let entries = match std::fs::read_dir(landing) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(landing)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(landing))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let (base, state) = match name.strip_suffix(drd_proto::PARTIAL_SUFFIX) {
                Some(base) => (base.to_string(), FileState::Partial),
                None => (name, FileState::Complete),
            };
            let Ok(segment) = SegmentName::new(base) else {
                continue;
            };
            if entry.file_type().map_err(io_err(&entry.path()))?.is_file() {
                out.push((segment, state));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// SHA-256 of a whole file, read from disk.
pub fn hash_file(f: &File) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; HASH_PIECE];
    let mut off = 0u64;
    loop {
        let n = f.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().into())
}

/// The flush steps the store and the disk worker did, for the unit tests'
/// check of their order.
#[cfg(test)]
pub(crate) mod steps {
    use crate::locks::LockExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// Each flush step, with the landing directory it ran for (tests run
    /// in parallel; each keeps to its own directory).
    static STEPS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

    pub fn record(landing: &Path, what: &str) {
        STEPS
            .locked()
            .push((landing.to_path_buf(), what.to_string()));
    }

    /// The steps recorded for `landing`, in order.
    pub fn of(landing: &Path) -> Vec<String> {
        STEPS
            .locked()
            .iter()
            .filter(|(l, _)| l == landing)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drd_core::storage::contract;

    fn seg(n: u64) -> SegmentName {
        SegmentName::new(format!("0000000100000000{n:08X}")).unwrap()
    }

    #[test]
    fn the_landing_directory_passes_the_segment_store_suite() {
        let d = tempfile::tempdir().unwrap();
        // Not there yet: the first create makes it.
        let mut s = FileStore::new(d.path().join("landing"));
        contract::segment_store(&mut s).unwrap();
    }

    #[test]
    fn a_failed_rename_undoes_the_renames_before_it() {
        let d = tempfile::tempdir().unwrap();
        let landing = d.path().join("landing");
        let mut s = FileStore::new(landing.clone());
        for n in 1..=3 {
            s.create(&seg(n)).unwrap();
            s.write(&seg(n), 0, b"bytes").unwrap();
        }
        // The second seal's file is gone, its handle still open: its
        // fdatasync works, its rename fails.
        std::fs::remove_file(landing.join(seg(2).partial_file_name())).unwrap();
        let seals: Vec<SealedSegment> = (1..=3)
            .map(|n| SealedSegment {
                segment: seg(n),
                sync: true,
            })
            .collect();
        let e = s.make_names_durable(&seals).unwrap_err();
        assert!(e.path.ends_with(seg(2).as_str()), "{e}");
        assert_eq!(
            s.list().unwrap(),
            vec![(seg(1), FileState::Partial), (seg(3), FileState::Partial)]
        );
        let steps = steps::of(&landing);
        assert!(
            steps.contains(&format!(
                "rename {}",
                landing.join(seg(1).partial_file_name()).display()
            )),
            "{steps:?}"
        );
        assert!(!steps.iter().any(|s| s == "fsync dir"), "{steps:?}");
        // The handles are kept: the group can be tried again.
        assert_eq!(
            s.read(&seg(1), FileState::Partial, 0, 100).unwrap(),
            b"bytes"
        );
    }
}
