//! Writes the WAL a `source = "postgres"` stream receives into its
//! `wal_dir`: one file per segment, named and sized as PostgreSQL names
//! them, append-only and never pre-allocated — so the shipper, which reads
//! `wal_dir` as it reads a `tail` directory, sees a segment grow byte range
//! by byte range and seals it once its successor exists.
//!
//! It runs on a blocking thread of its own, fed by a bounded channel: when
//! the channel is full the session stops reading the socket, and the
//! walsender waits (the only flow control the protocol has).
//!
//! # Durability
//!
//! - A new segment file's name is made durable (`fsync` of `wal_dir`) when
//!   the file is created, before any of its bytes count as durable.
//! - Bytes are written with `pwrite` and published as *written* at once:
//!   the shipper may read them while the local `fdatasync` runs, so the
//!   local fsync is never on the commit path of a sync stream.
//! - `fdatasync` runs on a thread of its own ([`Syncer`]) whenever the
//!   channel runs dry or `group_commit_bytes` were written, so that the
//!   writer goes on writing — and the shipper shipping — while it runs: a
//!   commit that arrives during a local fdatasync is not held back by it
//!   (in sync mode its COMMIT waits for the DR site, not for this disk).
//!   When a segment is complete the writer fdatasyncs it itself before it
//!   opens the next. Only synced bytes are published as *locally durable*.
//!
//! # Resuming
//!
//! A session starts at the beginning of the segment its log ends in. Bytes
//! already in the file are compared with what PostgreSQL sends (they differ
//! only after a power loss took bytes that were never fdatasync'd: a
//! warning says so) and written again either way, then fdatasync'd before
//! they count as durable: the page cache may hold them from a process that
//! crashed before its own fdatasync, or clean after a failed one.

use super::error::PgStreamError;
use crate::node::Shipper;
use bytes::Bytes;
use drd_core::pg::header;
use drd_core::pg::lsn::{Lsn, SegSize};
use drd_proto::SegmentName;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::{mpsc, watch};

/// WAL messages queued between the socket and the writer: at most 128 KiB
/// each, so about 8 MiB in flight.
pub const QUEUE_MESSAGES: usize = 64;

/// What the session asks of the writer.
pub enum Cmd {
    /// WAL of timeline `tli` starting at `start`.
    Data { tli: u32, start: Lsn, bytes: Bytes },
}

/// The writer's published progress on the session's timeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every byte before this LSN is in `wal_dir` (page cache).
    pub written: Lsn,
    /// Every byte before this LSN is fdatasync'd, in a file whose name is
    /// durable.
    pub durable: Lsn,
}

/// The session's end of the writer.
pub struct Handle {
    pub tx: mpsc::Sender<Cmd>,
    pub progress: watch::Receiver<Progress>,
    pub join: tokio::task::JoinHandle<Result<(), PgStreamError>>,
}

/// Starts a writer for one session. `sysid` is the database's system
/// identifier (checked against every segment's first page).
pub fn start(
    wal_dir: PathBuf,
    seg: SegSize,
    sysid: u64,
    group_commit_bytes: u64,
    start: Lsn,
    shipper: Arc<Shipper>,
) -> Handle {
    let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
    let (ptx, prx) = watch::channel(Progress {
        written: start,
        durable: start,
    });
    let progress = Arc::new(ptx);
    let w = Writer {
        dir: wal_dir,
        seg,
        sysid,
        group_commit_bytes,
        file: None,
        end: start,
        durable: start,
        unsynced: 0,
        syncer: Syncer::start(progress.clone()),
        progress,
        rewrote: false,
        shipper,
    };
    let join = tokio::task::spawn_blocking(move || w.run(rx));
    Handle {
        tx,
        progress: prx,
        join,
    }
}

struct Open {
    segment: SegmentName,
    path: PathBuf,
    file: Arc<File>,
    tli: u32,
    segno: u64,
    /// Bytes in the file (what an earlier process left, or what we wrote).
    len: u64,
}

struct Writer {
    dir: PathBuf,
    seg: SegSize,
    sysid: u64,
    group_commit_bytes: u64,
    file: Option<Open>,
    /// The next LSN to write.
    end: Lsn,
    durable: Lsn,
    /// Bytes written or verified since the last fdatasync was asked for.
    unsynced: u64,
    syncer: Syncer,
    progress: Arc<watch::Sender<Progress>>,
    /// A mismatch was rewritten in the current file (warned once per file).
    rewrote: bool,
    /// Told of each write, so that it ships the bytes at once.
    shipper: Arc<Shipper>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PgStreamError + '_ {
    move |source| PgStreamError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) -> Result<(), PgStreamError> {
        let r = self.serve(&mut rx);
        let stopped = self.syncer.stop();
        // Whatever ended the session, what was written is made durable
        // (and published) before the next session looks at the files.
        let s = self.sync();
        r.and(stopped).and(s)
    }

    fn serve(&mut self, rx: &mut mpsc::Receiver<Cmd>) -> Result<(), PgStreamError> {
        while let Some(cmd) = rx.blocking_recv() {
            self.syncer.check()?;
            self.handle(cmd)?;
            // Group commit: take what else is queued, then one fdatasync
            // (on the syncer's thread).
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd)?,
                    Err(_) => break,
                }
                if self.unsynced >= self.group_commit_bytes {
                    self.ask_sync()?;
                }
            }
            self.ask_sync()?;
        }
        Ok(())
    }

    fn handle(&mut self, cmd: Cmd) -> Result<(), PgStreamError> {
        let Cmd::Data { tli, start, bytes } = cmd;
        if start != self.end {
            return Err(PgStreamError::Protocol(format!(
                "got WAL at {start}, expected it at {}",
                self.end
            )));
        }
        let mut at = start;
        let mut rest: &[u8] = &bytes;
        while !rest.is_empty() {
            let segno = self.seg.segno(at);
            let off = self.seg.offset(at);
            let room = self.seg.bytes() - off;
            let n = room.min(rest.len() as u64);
            let (now, later) = rest.split_at(n as usize);
            self.open(tli, segno, off)?;
            if off == 0 {
                self.check_header(now, at)?;
            }
            self.put(off, now)?;
            at = at.checked_add(n).ok_or_else(|| {
                PgStreamError::Protocol(format!("WAL at {at} runs past the last LSN"))
            })?;
            self.end = at;
            rest = later;
            if off + n == self.seg.bytes() {
                // The segment is complete: durable now, and closed. The
                // next byte starts a new file.
                self.sync()?;
                self.file = None;
            }
        }
        self.publish();
        Ok(())
    }

    /// Makes `(tli, segno)` the open file, creating it at offset 0.
    fn open(&mut self, tli: u32, segno: u64, off: u64) -> Result<(), PgStreamError> {
        if self
            .file
            .as_ref()
            .is_some_and(|f| f.tli == tli && f.segno == segno)
        {
            return Ok(());
        }
        self.sync()?;
        self.file = None;
        let name = self.seg.segment_name(tli, segno);
        let segment = SegmentName::new(name.clone())
            .map_err(|e| PgStreamError::Local(format!("segment name {name:?}: {e}")))?;
        let path = self.dir.join(&name);
        let created = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => Some(Arc::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
            Err(e) => return Err(io(&path)(e)),
        };
        let (file, len) = match created {
            Some(f) => {
                if off != 0 {
                    return Err(PgStreamError::Protocol(format!(
                        "WAL of segment {name} began at offset {off}, not at its start"
                    )));
                }
                // The new name must be durable before any of the file's
                // bytes count as durable: fsync the directory now, once
                // per segment.
                crate::storage::fsutil::fsync_dir(&self.dir).map_err(io(&self.dir))?;
                (f, 0)
            }
            None => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                let len = f.metadata().map_err(io(&path))?.len();
                let f = Arc::new(f);
                if len > self.seg.bytes() {
                    return Err(PgStreamError::Local(format!(
                        "{} holds {len} bytes, more than a {}-byte segment: not a WAL segment \
                         drd wrote; move it away",
                        path.display(),
                        self.seg.bytes()
                    )));
                }
                if off > len {
                    return Err(PgStreamError::Local(format!(
                        "{} holds {len} bytes; PostgreSQL sent WAL from offset {off}: drd's \
                         copy has a hole",
                        path.display()
                    )));
                }
                (f, len)
            }
        };
        self.rewrote = false;
        self.file = Some(Open {
            segment,
            path,
            file,
            tli,
            segno,
            len,
        });
        Ok(())
    }

    /// A segment's first page must be this cluster's, of this size, at this
    /// segment's address: anything else is another database's WAL.
    fn check_header(&self, first: &[u8], at: Lsn) -> Result<(), PgStreamError> {
        if first.len() < header::LONG_HEADER_LEN {
            return Ok(());
        }
        let h = header::parse(first).map_err(|e| PgStreamError::Protocol(e.to_string()))?;
        h.check(Some(self.sysid), self.seg, at)
            .map_err(|e| PgStreamError::Cluster(e.to_string()))
    }

    /// Writes `data` at `off` of the open file, or compares it with what an
    /// earlier process wrote there.
    fn put(&mut self, off: u64, data: &[u8]) -> Result<(), PgStreamError> {
        let Some(f) = self.file.as_mut() else {
            return Err(PgStreamError::Local("no open segment file".into()));
        };
        let n = data.len() as u64;
        let overlap = f.len.saturating_sub(off).min(n);
        if overlap > 0 && !self.rewrote {
            let mut have = vec![0u8; overlap as usize];
            f.file.read_exact_at(&mut have, off).map_err(io(&f.path))?;
            if have[..] != data[..overlap as usize] {
                self.rewrote = true;
                tracing::warn!(segment = %f.segment, offset = off,
                    "bytes of the local copy differ from what PostgreSQL sends (they were not \
                     durable before a crash); rewriting them from PostgreSQL");
            }
        }
        // Always written, even where the bytes match: after a failed
        // fdatasync the page cache may hold them clean yet not on disk, and
        // only a write makes the next fdatasync cover them.
        f.file.write_all_at(data, off).map_err(io(&f.path))?;
        f.len = f.len.max(off + n);
        self.unsynced += n;
        self.shipper.wrote.wrote(&f.segment);
        Ok(())
    }

    /// Asks the syncer for an fdatasync covering every byte before `end`
    /// (or syncs here, if its thread could not be started).
    fn ask_sync(&mut self) -> Result<(), PgStreamError> {
        if self.unsynced == 0 {
            return Ok(());
        }
        if self.syncer.thread.is_none() {
            return self.sync();
        }
        if let Some(f) = &self.file {
            self.syncer.ask(f.file.clone(), f.path.clone(), self.end);
        }
        self.unsynced = 0;
        Ok(())
    }

    /// fdatasync of the open file here and now: every byte before `end` is
    /// durable (the earlier files were synced when they were completed or
    /// switched).
    fn sync(&mut self) -> Result<(), PgStreamError> {
        if self.unsynced == 0 && self.durable == self.end && self.syncer.idle() {
            return Ok(());
        }
        if let Some(f) = &self.file {
            // The durability point of the stream's local copy: in async
            // mode this is what drd reports to PostgreSQL as flushed.
            f.file.sync_data().map_err(io(&f.path))?;
        }
        self.unsynced = 0;
        self.durable = self.end;
        publish_durable(&self.progress, self.end);
        Ok(())
    }

    fn publish(&self) {
        let end = self.end;
        self.progress.send_modify(|p| p.written = end);
    }
}

/// Raises the published durable point (never lowers it: the syncer may
/// finish an older request after the writer synced further itself).
fn publish_durable(progress: &watch::Sender<Progress>, end: Lsn) {
    progress.send_if_modified(|p| {
        let raise = end > p.durable;
        if raise {
            p.durable = end;
        }
        raise
    });
}

/// The writer's fdatasync thread: takes the latest request (older ones are
/// covered by it: one fdatasync syncs everything written to the file
/// before it), syncs, publishes.
struct Syncer {
    shared: Arc<(Mutex<SyncState>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SyncState {
    want: Option<(Arc<File>, PathBuf, Lsn)>,
    busy: bool,
    stop: bool,
    error: Option<String>,
}

impl Syncer {
    fn start(progress: Arc<watch::Sender<Progress>>) -> Self {
        let shared = Arc::new((Mutex::new(SyncState::default()), Condvar::new()));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("drd-pg-sync".into())
            .spawn(move || Self::serve(&s, &progress))
            .ok();
        Self { shared, thread }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(shared: &(Mutex<SyncState>, Condvar), progress: &watch::Sender<Progress>) {
        let (m, cv) = shared;
        let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let Some((file, path, end)) = st.want.take() else {
                if st.stop {
                    return;
                }
                st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            st.busy = true;
            drop(st);
            // The durability point of the stream's local copy (see the
            // module doc): in async mode what drd reports as flushed.
            let r = file.sync_data();
            st = m.lock().unwrap_or_else(|e| e.into_inner());
            st.busy = false;
            match r {
                Ok(()) => publish_durable(progress, end),
                Err(e) => {
                    st.error
                        .get_or_insert_with(|| format!("{}: fdatasync: {e}", path.display()));
                }
            }
            cv.notify_all();
        }
    }

    /// A request to sync `file` up to `end`, replacing an older one.
    fn ask(&self, file: Arc<File>, path: PathBuf, end: Lsn) {
        let mut st = self.lock();
        st.want = Some((file, path, end));
        drop(st);
        self.shared.1.notify_all();
    }

    /// Nothing asked and nothing running.
    fn idle(&self) -> bool {
        let st = self.lock();
        st.want.is_none() && !st.busy
    }

    /// A failed fdatasync ends the session: nothing after it may count
    /// as durable.
    fn check(&self) -> Result<(), PgStreamError> {
        match &self.lock().error {
            Some(e) => Err(PgStreamError::Local(e.clone())),
            None => Ok(()),
        }
    }

    /// Lets the thread finish what was asked, and stops it.
    fn stop(&mut self) -> Result<(), PgStreamError> {
        self.lock().stop = true;
        self.shared.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.check()
    }
}

/// The end of the stream's WAL in `wal_dir`: its last segment file, if it
/// holds any, as (timeline, LSN after its last byte).
pub fn local_end(dir: &Path, seg: SegSize) -> Result<Option<(u32, Lsn, String)>, PgStreamError> {
    let listing = crate::primary::source::scan(dir).map_err(io(dir))?;
    let Some(last) = listing
        .iter()
        .rev()
        .find(|s| seg.parse_segment_name(s.name.as_str()).is_some())
    else {
        return Ok(None);
    };
    let (tli, lsn) = seg
        .lsn_in(last.name.as_str(), last.size.min(seg.bytes()))
        .ok_or_else(|| {
            PgStreamError::Local(format!(
                "{}: {} bytes is more than a {}-byte segment",
                last.name,
                last.size,
                seg.bytes()
            ))
        })?;
    Ok(Some((tli, lsn, last.name.to_string())))
}
