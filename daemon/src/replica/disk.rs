//! The replica's disk worker for one session: takes validated messages off a
//! bounded queue, asks the [`Receiver`] rules what to do, writes, and makes
//! the result durable in groups (group commit): after a batch — as much as is
//! queued, up to `group_commit_bytes` or [`MAX_SEALS_PER_GROUP`] seals — it
//! makes the group durable (see [`Syncer::flush`] for each sync and why)
//! and only then acks the new durable position.
//!
//! Seals are part of the group: a seal's checksum is verified when it
//! arrives (invariant 2: the record says sealed only after it matched), and
//! its fdatasync and rename wait for the group's flush, so many small
//! segments share one directory fsync and one catalog commit.
//!
//! It runs on a blocking thread: file I/O and fsync block.

use crate::catalog::{Catalog, PartialCheck, SegmentRecord, StreamMeta};
use crate::clock::unix_ms;
use crate::fsutil;
use crate::locks::LockExt;
use crate::node::ReceiveSlot;
use crate::receiver::{ChunkAction, Receiver, Reject, SealAction, Tail};
use drd_core::durability;
use drd_proto::pb;
use drd_proto::{Chunk, Seal, SegmentName, ShipMsg, StreamName};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tonic::Status;

/// At most this many seals go into one group. Each holds its file open
/// until the group's flush, and the group's ack waits for all of them;
/// past a few hundred, sharing the directory fsync and the commit gains
/// little more.
pub const MAX_SEALS_PER_GROUP: usize = 256;

/// Threads that fdatasync a group's sealed files side by side (see
/// `Syncer::sync_files`): a few already let the file system commit them
/// together; more only add threads.
const SYNC_THREADS: usize = 8;

/// Outcome of one message, for the batch loop.
enum Applied {
    Bytes(u64),
    Nothing,
}

/// A segment verified and sealed in the current group, whose bytes and
/// complete name the group's flush makes durable.
struct SealedFile {
    file: Arc<File>,
    /// Bytes written since the last fdatasync handed to the syncer: the
    /// flush must fdatasync it before the rename.
    dirty: bool,
    partial: PathBuf,
    complete: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Reject(#[from] Reject),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
}

impl From<DiskError> for Status {
    fn from(e: DiskError) -> Self {
        match e {
            DiskError::Reject(Reject::StaleEpoch { .. }) => {
                Status::failed_precondition(e.to_string())
            }
            DiskError::Reject(_) => Status::invalid_argument(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}

/// Per-session disk state.
pub struct DiskWorker {
    pub stream: StreamName,
    pub landing: PathBuf,
    pub catalog: Arc<Catalog>,
    pub slot: Arc<ReceiveSlot>,
    pub receiver: Receiver,
    /// Catalog record of the tail segment, as durable so far.
    tail_rec: Option<SegmentRecord>,
    /// Records changed since the last commit (a sealed segment, a new one).
    changed: Vec<SegmentRecord>,
    /// Segments sealed since the last flush, in order: renamed by it.
    sealed: Vec<SealedFile>,
    /// A `.partial` file was created since the last flush: its directory
    /// entry is made durable by that flush's directory fsync.
    new_entry: bool,
    meta: StreamMeta,
    file: Option<Arc<File>>,
    /// Running SHA-256 of the tail file and how many bytes it covers; None
    /// when the session began mid-segment (re-hashed from disk at seal).
    hasher: Option<RunningHash>,
    /// CRC32C of the tail file's accepted bytes (`0..tail size`).
    crc: u32,
    /// The last committed durable point of the tail: (size, CRC32C).
    committed: (u64, u32),
    /// Bytes written since the last fdatasync.
    dirty: bool,
    /// Something changed since the last ack (bytes, seal, or a keepalive to
    /// answer).
    need_ack: bool,
    group_commit_bytes: u64,
    primary_epoch: u64,
    /// The flush running on the syncer thread, and the tail's (size, CRC)
    /// that becomes `committed` when it succeeds (None when the flush
    /// does not record a partial tail, or the tail has changed since).
    in_flight: Option<Option<(u64, u32)>>,
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl DiskWorker {
    pub fn new(
        stream: StreamName,
        landing: PathBuf,
        catalog: Arc<Catalog>,
        slot: Arc<ReceiveSlot>,
        node_epoch: u64,
        group_commit_bytes: u64,
        primary: &drd_proto::NodeId,
    ) -> Result<Self, DiskError> {
        let tail_rec = catalog.tail(&stream)?;
        let mut meta = catalog.stream_meta(&stream)?;
        // Persisted with the first commit: the failover report names it.
        meta.last_primary = Some(primary.to_string());
        let tail = match &tail_rec {
            Some(r) => Some(Tail {
                segment: r.segment_name()?,
                start: r.start,
                size: r.size,
                sealed: r.sealed,
            }),
            None => None,
        };
        let mut w = Self {
            stream,
            landing,
            catalog,
            slot,
            receiver: Receiver::new(node_epoch, tail),
            tail_rec,
            changed: Vec::new(),
            sealed: Vec::new(),
            new_entry: false,
            meta,
            file: None,
            hasher: None,
            crc: 0,
            committed: (0, 0),
            dirty: false,
            need_ack: false,
            group_commit_bytes,
            primary_epoch: node_epoch,
            in_flight: None,
        };
        w.open_tail()?;
        Ok(w)
    }

    /// Opens the partial tail file, cut back to its durable size: bytes a
    /// previous session wrote but did not make durable are not trusted.
    fn open_tail(&mut self) -> Result<(), DiskError> {
        let Some(rec) = self.tail_rec.as_ref().filter(|r| !r.sealed) else {
            return Ok(());
        };
        let path = self
            .landing
            .join(format!("{}{}", rec.name, drd_proto::PARTIAL_SUFFIX));
        if rec.size > 0 && !path.exists() {
            // Creating it would stand zeros for durable bytes (reconciliation
            // at startup would have refused the same).
            return Err(io_err(&path)(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the catalog records {} durable bytes of it", rec.size),
            )));
        }
        let f = fsutil::open_for_write(&path).map_err(io_err(&path))?;
        let len = f.metadata().map_err(io_err(&path))?.len();
        if len != rec.size {
            f.set_len(rec.size).map_err(io_err(&path))?;
            // The cut must be durable before new bytes land after it.
            f.sync_all().map_err(io_err(&path))?;
        }
        // Reconciliation checked the stored CRC at startup, and nothing
        // else writes the file; records from before drd kept one are hashed.
        self.crc = match rec.check {
            Some(c) => c.crc32c,
            None => crc_prefix(&f, rec.size).map_err(io_err(&path))?,
        };
        self.committed = (rec.size, self.crc);
        self.file = Some(Arc::new(f));
        Ok(())
    }

    /// Chain value after the last sealed segment, for the Welcome.
    pub fn chain_head(&self) -> [u8; 32] {
        self.meta.chain_head()
    }

    pub fn durable_position(&self) -> u64 {
        self.tail_rec.as_ref().map_or(0, SegmentRecord::end)
    }

    fn partial_path(&self, seg: &SegmentName) -> PathBuf {
        self.landing.join(seg.partial_file_name())
    }

    /// The session loop: batches, group commit, acks. Returns when the queue
    /// closes or a message is refused (then the error is sent as the stream's
    /// final status).
    ///
    /// Flushes run on a second thread, one at a time, while this one goes on
    /// writing what arrives next: a group's fdatasync and commit overlap the
    /// next group's writes and hashing instead of alternating with them.
    /// The syncer acks each group itself as soon as it is durable.
    pub fn run(
        mut self,
        mut rx: mpsc::Receiver<ShipMsg>,
        acks: mpsc::Sender<Result<pb::ReplicaMessage, Status>>,
    ) {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<FlushJob>(1);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(), DiskError>>();
        let syncer = Syncer {
            stream: self.stream.clone(),
            landing: self.landing.clone(),
            catalog: self.catalog.clone(),
            slot: self.slot.clone(),
            acks: acks.clone(),
        };
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for job in jobs_rx {
                    let r = syncer.flush(job);
                    let failed = r.is_err();
                    if done_tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
            let mut flusher = Flusher {
                jobs: jobs_tx,
                done: done_rx,
            };
            self.session(&mut rx, &mut flusher, &acks);
            // Dropping `flusher` ends the syncer; the scope waits for it.
        });
    }

    fn session(
        &mut self,
        rx: &mut mpsc::Receiver<ShipMsg>,
        flusher: &mut Flusher,
        acks: &mpsc::Sender<Result<pb::ReplicaMessage, Status>>,
    ) {
        let mut idle = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            let waited_us = idle.elapsed().as_micros() as u64;
            let mut batch = 0u64;
            let mut refused = None;
            let mut next = Some(first);
            let t0 = Instant::now();
            while let Some(msg) = next.take() {
                match self.apply(msg) {
                    Ok(Applied::Bytes(n)) => batch += n,
                    Ok(Applied::Nothing) => {}
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
                if batch >= self.group_commit_bytes || self.sealed.len() >= MAX_SEALS_PER_GROUP {
                    break;
                }
                next = rx.try_recv().ok();
            }
            tracing::trace!(
                batch,
                waited_us,
                apply_us = t0.elapsed().as_micros() as u64,
                "batch applied"
            );
            // What was accepted before a refusal was valid: make it durable
            // and ack it, then end the stream with the refusal.
            if let Err(e) = self.flush(flusher) {
                refused.get_or_insert(e);
            }
            if refused.is_some() {
                if let Err(e) = self.settle(flusher) {
                    refused.get_or_insert(e);
                }
            }
            if let Some(e) = refused {
                tracing::warn!(stream = %self.stream, error = %e, "refused replication data");
                self.slot.state.locked().last_error = e.to_string();
                let _ = acks.blocking_send(Err(e.into()));
                return;
            }
            idle = Instant::now();
        }
        // The primary closed the stream: the last group's ack still goes out.
        if let Err(e) = self.settle(flusher) {
            tracing::warn!(stream = %self.stream, error = %e, "the last flush failed");
            self.slot.state.locked().last_error = e.to_string();
            let _ = acks.blocking_send(Err(e.into()));
        }
    }

    fn apply(&mut self, msg: ShipMsg) -> Result<Applied, DiskError> {
        match msg {
            ShipMsg::Chunk(c) => self.apply_chunk(c).map(Applied::Bytes),
            // The rename waits for the group's flush, which runs after the
            // one in flight (if any) has made the earlier bytes durable.
            ShipMsg::Seal(s) => self.apply_seal(&s).map(|()| Applied::Nothing),
            ShipMsg::Keepalive {
                epoch,
                source_position,
            } => {
                if epoch < self.receiver.epoch {
                    return Err(Reject::StaleEpoch {
                        got: epoch,
                        current: self.receiver.epoch,
                    }
                    .into());
                }
                self.note_source(source_position);
                self.need_ack = true;
                Ok(Applied::Nothing)
            }
            // The session handles Hello; a second one is a protocol error
            // caught there.
            ShipMsg::Hello(_) => Ok(Applied::Nothing),
        }
    }

    fn note_source(&mut self, pos: u64) {
        self.meta.source_position = self.meta.source_position.max(pos);
    }

    fn apply_chunk(&mut self, c: Chunk) -> Result<u64, DiskError> {
        let len = c.data.len() as u64;
        // Every byte that arrives counts as received, accepted or not.
        self.meta.network_bytes += len;
        crate::metrics::chunk_received(self.stream.as_str(), len);
        let action = self.receiver.decide_chunk(&c)?;
        self.primary_epoch = c.epoch;
        if action == ChunkAction::StartSegment {
            // A new tail: the flush in flight, if any, recorded the old
            // one; its outcome must not set `committed` for the new one.
            // (Its failure is still reported by `settle`.)
            if let Some(committed) = &mut self.in_flight {
                *committed = None;
            }
            self.start_segment(&c)?;
        }
        let path = self.partial_path(&c.segment);
        // The tail file is open whenever the receiver accepts a chunk: an
        // Append continues the tail opened by `open_tail` or
        // `start_segment`, and a StartSegment has just opened it above.
        #[allow(clippy::expect_used)]
        let file = self.file.as_ref().expect("tail file open after accept");
        // Accepted only once written: a failed write (disk full) leaves the
        // accepted size where it was, so no commit can record these bytes.
        file.write_all_at(&c.data, c.offset)
            .map_err(io_err(&path))?;
        self.receiver.accept_chunk(action, &c);
        self.crc = crc32c::crc32c_append(self.crc, &c.data);
        if let Some(h) = &mut self.hasher {
            h.update(c.offset, &c.data);
        }
        self.dirty = true;
        self.need_ack = true;
        self.note_source(c.source_position);
        Ok(len)
    }

    /// Creates the next partial segment file. The catalog record is written
    /// with the batch's commit; until then the file holds no acked byte, and
    /// reconciliation after a crash ignores it.
    fn start_segment(&mut self, c: &Chunk) -> Result<(), DiskError> {
        // A node whose log so far is its own source (a former primary) has
        // no landing directory yet.
        fsutil::create_dir_durable(&self.landing).map_err(io_err(&self.landing))?;
        let path = self.partial_path(&c.segment);
        let f = fsutil::open_for_write(&path).map_err(io_err(&path))?;
        // A leftover file of this name holds no acked byte: start empty.
        f.set_len(0).map_err(io_err(&path))?;
        // No fsync of the directory here: fdatasync covers the file's bytes,
        // not its name, and the group's flush fsyncs the directory once for
        // every entry created in the group, before its catalog commit can
        // say bytes of this segment are durable (see `Syncer::flush`).
        self.new_entry = true;
        self.file = Some(Arc::new(f));
        self.hasher = RunningHash::start();
        self.crc = 0;
        self.committed = (0, 0);
        self.meta.segments += 1;
        self.tail_rec = Some(SegmentRecord {
            name: c.segment.to_string(),
            start: c.segment_start,
            size: 0,
            sealed: false,
            sha256: None,
            epoch: c.epoch,
            received_at_ms: unix_ms(),
            sealed_at_ms: None,
            fork: false,
            in_source: false,
            chain: None,
            check: Some(PartialCheck::default()),
            pruned_at_ms: None,
        });
        Ok(())
    }

    /// Verifies a seal's checksum and seals the tail in the current group:
    /// its record says sealed from this group's commit on, and the group's
    /// flush fdatasyncs and renames the file before that commit.
    fn apply_seal(&mut self, s: &Seal) -> Result<(), DiskError> {
        self.note_source(s.source_position);
        match self.receiver.on_seal(s)? {
            SealAction::AlreadyDone => {
                self.need_ack = true;
                return Ok(());
            }
            SealAction::Verify => {}
        }
        let path = self.partial_path(&s.segment);
        // `on_seal` asks to verify only a seal of the unsealed tail, whose
        // file `open_tail` or `start_segment` opened; only this seal closes it.
        #[allow(clippy::expect_used)]
        let file = self.file.as_ref().expect("tail file open before seal");
        let digest: [u8; 32] = match self.hasher.take().map(RunningHash::finish) {
            Some((covered, digest)) if covered == s.size => digest,
            _ => hash_file(file).map_err(io_err(&path))?,
        };
        Receiver::check_digest(s, &digest, &self.meta.chain_head())?;
        // Invariant 2: the checksum matched. The fdatasync, the rename and
        // the directory fsync that make it complete on disk are the
        // group's (see `Syncer::flush`); until its commit the record is
        // not sealed, and reconciliation undoes a rename that got ahead.
        self.sealed.push(SealedFile {
            file: file.clone(),
            dirty: self.dirty,
            partial: path,
            complete: self.landing.join(s.segment.as_str()),
        });
        self.dirty = false;
        self.file = None;
        self.receiver.sealed();
        // The tail being sealed has a record: `new` read it from the
        // catalog or `start_segment` made it.
        #[allow(clippy::expect_used)]
        let rec = self.tail_rec.as_mut().expect("tail record before seal");
        rec.size = s.size;
        rec.sealed = true;
        rec.sha256 = Some(hex::encode(digest));
        rec.sealed_at_ms = Some(unix_ms());
        rec.chain = Some(hex::encode(s.chain));
        rec.check = None;
        self.meta.chain_head = rec.chain.clone();
        self.meta.sealed_segments += 1;
        self.changed.push(rec.clone());
        self.need_ack = true;
        tracing::debug!(stream = %self.stream, segment = %s.segment, size = s.size, "segment sealed and verified");
        Ok(())
    }

    /// Hands everything accepted so far to the syncer, which makes it
    /// durable and acks it. Waits for the flush before it first.
    fn flush(&mut self, flusher: &mut Flusher) -> Result<(), DiskError> {
        if !self.need_ack {
            return Ok(());
        }
        let t0 = Instant::now();
        self.settle(flusher)?;
        tracing::trace!(
            elapsed_us = t0.elapsed().as_micros() as u64,
            "waited for the previous flush"
        );
        let mut rollback = None;
        if let (Some(rec), Some(tail)) = (self.tail_rec.as_mut(), self.receiver.tail.as_ref()) {
            // A segment just started whose first write failed has a record
            // but no accepted byte yet: it stays at size 0.
            if rec.name == tail.segment.as_str() && !rec.sealed {
                // If the fdatasync fails, the record goes back to this
                // point, the last one fully synced.
                let (size, crc) = self.committed;
                let mut back = rec.clone();
                back.size = size;
                back.check = Some(PartialCheck {
                    crc32c: crc,
                    prev_size: size,
                    prev_crc32c: crc,
                });
                rollback = Some(back);
                rec.size = tail.size;
                rec.check = Some(PartialCheck {
                    crc32c: self.crc,
                    prev_size: self.committed.0,
                    prev_crc32c: self.committed.1,
                });
            }
            if !self.changed.iter().any(|c| c.name == rec.name) {
                self.changed.push(rec.clone());
            } else if let Some(c) = self.changed.iter_mut().find(|c| c.name == rec.name) {
                *c = rec.clone();
            }
        }
        self.meta.durable_at_ms = unix_ms();
        let records = std::mem::take(&mut self.changed);
        // The tail's ack says whether the tail is sealed; a group that
        // sealed segments before it acks the last of those first (sync
        // wal-push and spool pruning wait for a segment's sealed ack).
        let tail_sealed = self.tail_rec.as_ref().is_none_or(|r| r.sealed);
        let sealed_ack = records
            .iter()
            .rev()
            .find(|r| r.sealed && !tail_sealed)
            .cloned();
        let job = FlushJob {
            // fdatasync covers every byte written before it is called, so
            // once it is handed over the file is clean as of this point.
            file: self.dirty.then(|| self.file.clone()).flatten(),
            sealed: std::mem::take(&mut self.sealed),
            new_entry: std::mem::take(&mut self.new_entry),
            records,
            meta: self.meta.clone(),
            tail: self.tail_rec.clone(),
            sealed_ack,
            rollback: rollback.filter(|_| self.dirty),
        };
        self.dirty = false;
        self.need_ack = false;
        let committed = self
            .tail_rec
            .as_ref()
            .filter(|r| !r.sealed)
            .map(|r| (r.size, r.check.map_or(0, |c| c.crc32c)));
        if flusher.jobs.send(job).is_err() {
            // The syncer stopped after a failure; `settle` reports it.
            return self.settle(flusher);
        }
        self.in_flight = Some(committed);
        Ok(())
    }

    /// Waits for the running flush, if any, and takes in its outcome.
    fn settle(&mut self, flusher: &mut Flusher) -> Result<(), DiskError> {
        let Some(committed) = self.in_flight.take() else {
            return Ok(());
        };
        match flusher.done.recv() {
            Ok(Ok(())) => {
                if let Some(c) = committed {
                    self.committed = c;
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DiskError::Io {
                path: self.landing.display().to_string(),
                source: std::io::Error::other("the flush thread stopped"),
            }),
        }
    }
}

/// The SHA-256 of a segment as it is written, computed on a thread of its
/// own: on the writing thread it took two fifths of that thread's time,
/// and the writes of the next bytes waited for it.
struct RunningHash {
    /// Bytes hashed so far: `0..covered` of the segment, in order.
    covered: u64,
    tx: std::sync::mpsc::SyncSender<bytes::Bytes>,
    thread: std::thread::JoinHandle<[u8; 32]>,
}

impl RunningHash {
    /// None if no thread can be started: the seal then hashes the file.
    fn start() -> Option<Self> {
        // Bounded: at most this many chunks wait to be hashed.
        let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(8);
        let thread = std::thread::Builder::new()
            .name("drd-hash".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for data in rx {
                    h.update(&data);
                }
                h.finalize().into()
            })
            .map_err(|e| tracing::warn!(error = %e, "cannot start a hashing thread; the seal will hash the file"))
            .ok()?;
        Some(Self {
            covered: 0,
            tx,
            thread,
        })
    }

    /// Hashes `data` if it continues the hashed prefix (a re-sent chunk
    /// does not).
    fn update(&mut self, offset: u64, data: &bytes::Bytes) {
        if offset == self.covered {
            // The thread ends only when `tx` is dropped, so this cannot fail.
            let _ = self.tx.send(data.clone());
            self.covered += data.len() as u64;
        }
    }

    /// The bytes covered and their digest.
    fn finish(self) -> (u64, [u8; 32]) {
        drop(self.tx);
        // The thread fails only by panicking (a bug): propagate that panic.
        let digest = self
            .thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (self.covered, digest)
    }
}

/// The syncer's side of the pipeline, owned by the writing thread.
struct Flusher {
    jobs: std::sync::mpsc::SyncSender<FlushJob>,
    done: std::sync::mpsc::Receiver<Result<(), DiskError>>,
}

/// One group to make durable: a snapshot taken by the writing thread.
struct FlushJob {
    /// The tail file, when bytes were written since the last fdatasync.
    file: Option<Arc<File>>,
    /// Segments sealed in the group, in order: fdatasynced (if written
    /// since the last flush) and renamed to their complete names.
    sealed: Vec<SealedFile>,
    /// A `.partial` file was created in the group.
    new_entry: bool,
    records: Vec<SegmentRecord>,
    meta: StreamMeta,
    /// The tail's record as this flush makes it durable (for the ack).
    tail: Option<SegmentRecord>,
    /// The last segment sealed in the group when it is not the tail: it
    /// gets an ack of its own before the tail's.
    sealed_ack: Option<SegmentRecord>,
    /// The tail's record at the last fully synced point, put back if the
    /// fdatasync fails after the commit went through.
    rollback: Option<SegmentRecord>,
}

/// Makes groups durable and acks them, on its own thread.
struct Syncer {
    stream: StreamName,
    landing: PathBuf,
    catalog: Arc<Catalog>,
    slot: Arc<ReceiveSlot>,
    acks: mpsc::Sender<Result<pb::ReplicaMessage, Status>>,
}

impl Syncer {
    /// Makes one group durable, then acks it. What it waits for, in order:
    ///
    /// 1. fdatasync of each file sealed in the group that was written since
    ///    the last flush: its bytes and size reach the disk before its
    ///    complete name is given (a rename must never make the complete
    ///    name point at bytes that are not durable).
    /// 2. the renames `.partial` → complete name, then ONE fsync of the
    ///    landing directory (see [`Self::make_names_durable`]);
    /// 3. the synced catalog commit of the group's records, which begins
    ///    only after 1 and 2: a committed record never says sealed unless
    ///    the complete name is on disk, and never names a `.partial` file
    ///    whose entry could still be lost.
    ///
    /// Alongside all three runs the fdatasync of the partial tail. If power
    /// fails in between, the commit may be on disk before the tail's bytes;
    /// the record's CRC tells a restart to fall back to the previous point,
    /// which was fully synced before this commit began (flushes run one at
    /// a time; see PartialCheck and reconcile.rs). The ack waits for all.
    ///
    /// A group with no seal and no new file (the middle of a large
    /// segment) skips 1 and 2: one flush of latency, the tail's fdatasync
    /// ∥ the commit.
    fn flush(&self, job: FlushJob) -> Result<(), DiskError> {
        // !!! TEST-ONLY: the deliberately broken early-ack mode (see
        // `read_loop`) also holds each flush back, so that its acks run
        // well ahead of what is durable and a kill -9 reliably loses acked
        // bytes. Without it the pipelined flushes close the gap within a
        // few ms and the chaos suite's proof that its checker catches this
        // bug became a matter of luck.
        #[cfg(all(feature = "chaos-testing", debug_assertions))]
        if crate::replica::chaos::unsafe_early_ack() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let refs: Vec<&SegmentRecord> = job.records.iter().collect();
        // drd-core's group-commit rule says when the commit may begin and
        // when the group may be acked; this carries out the steps.
        let mut steps =
            durability::Flush::new(job.file.is_some(), !job.sealed.is_empty() || job.new_entry);
        let order = |e: durability::OrderError| DiskError::Io {
            path: self.landing.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        };
        let (synced, committed) = std::thread::scope(|scope| {
            let sync = job.file.as_ref().map(|f| {
                scope.spawn(move || {
                    let t0 = Instant::now();
                    // fdatasync: the bytes and the file size (needed to
                    // read them back) reach the disk; mtime need not.
                    let r = f.sync_data().map(|()| t0.elapsed());
                    self.step("fdatasync tail");
                    r
                })
            });
            let committed = self.make_names_durable(&job).and_then(|()| {
                if steps.makes_names_durable() {
                    steps.done(durability::Step::NamesDurable).map_err(order)?;
                }
                if !steps.may_commit() {
                    return Err(order(durability::OrderError {
                        step: durability::Step::Committed,
                        why: "the names it records are not durable",
                    }));
                }
                let t0 = Instant::now();
                let r = self.catalog.commit(&self.stream, &refs, &job.meta);
                self.step("commit");
                tracing::trace!(
                    elapsed_us = t0.elapsed().as_micros() as u64,
                    "catalog commit"
                );
                if r.is_err() {
                    // The records still say partial (if the failed write
                    // did reach the disk, reconciliation finishes the
                    // renames after checking each SHA-256).
                    self.undo_renames(&job.sealed);
                }
                r.map_err(DiskError::from)?;
                steps.done(durability::Step::Committed).map_err(order)
            });
            // The thread fails only by panicking (a bug): propagate that panic.
            let synced = sync.map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            (synced, committed)
        });
        match synced {
            Some(Ok(elapsed)) => {
                tracing::trace!(elapsed_us = elapsed.as_micros() as u64, "fdatasync");
                crate::metrics::fsync(self.stream.as_str(), elapsed);
            }
            Some(Err(e)) => {
                // The commit may already record bytes that did not reach
                // the disk: put the record back to the last synced point
                // before refusing (nothing here was acked).
                let name = job.tail.as_ref().map_or(String::new(), |r| r.name.clone());
                if committed.is_ok() {
                    if let Some(back) = &job.rollback {
                        self.catalog.commit(&self.stream, &[back], &job.meta)?;
                    }
                }
                return Err(io_err(&self.landing.join(name))(e));
            }
            None => {}
        }
        committed?;
        if steps.syncs_tail() {
            steps.done(durability::Step::TailSynced).map_err(order)?;
        }
        if !steps.ackable() {
            return Err(order(durability::OrderError {
                step: durability::Step::TailSynced,
                why: "the group is not durable yet",
            }));
        }
        let durable = job.tail.as_ref().map_or(0, SegmentRecord::end);
        {
            let mut st = self.slot.state.locked();
            st.durable = durable;
            st.tail = job.tail.clone();
            let now = Instant::now();
            if durable >= job.meta.source_position {
                st.caught_up_at = now;
            }
            st.meta = job.meta;
            st.rate.record(durable, now);
        }
        // If the primary has gone, nobody reads the acks; that is fine: the
        // position is durable and the next Welcome reports it.
        if let Some(r) = &job.sealed_ack {
            self.step("ack");
            let _ = self.acks.blocking_send(Ok(ack(Some(r))));
        }
        self.step("ack");
        let _ = self.acks.blocking_send(Ok(ack(job.tail.as_ref())));
        tracing::trace!(durable, "acked");
        Ok(())
    }

    /// Steps 1 and 2 of [`Self::flush`], for a group that sealed a segment
    /// or created a `.partial` file.
    ///
    /// The one directory fsync stands for what was, per segment, an fsync
    /// of the directory when its `.partial` was created and another after
    /// its rename: fdatasync covers a file's bytes, not its name, and this
    /// fsync makes durable every entry created and every rename done in
    /// the group (on failure or power loss before it, none of them is
    /// acked or recorded; reconciliation undoes renames that reached the
    /// disk anyway, and a `.partial` entry that did not is a file with no
    /// record, or with one whose bytes were never acked).
    fn make_names_durable(&self, job: &FlushJob) -> Result<(), DiskError> {
        if job.sealed.is_empty() && !job.new_entry {
            return Ok(());
        }
        let t0 = Instant::now();
        // fdatasync before the rename; see step 1 above.
        let dirty: Vec<&SealedFile> = job.sealed.iter().filter(|s| s.dirty).collect();
        self.sync_files(&dirty)?;
        let synced_us = t0.elapsed().as_micros() as u64;
        let mut renamed = 0;
        let mut r = Ok(());
        for s in &job.sealed {
            r = std::fs::rename(&s.partial, &s.complete).map_err(io_err(&s.complete));
            if r.is_err() {
                break;
            }
            self.step(&format!("rename {}", s.partial.display()));
            renamed += 1;
        }
        let t1 = Instant::now();
        if r.is_ok() {
            r = fsutil::fsync_dir(&self.landing).map_err(io_err(&self.landing));
            self.step("fsync dir");
        }
        if r.is_err() {
            self.undo_renames(&job.sealed[..renamed]);
            return r;
        }
        tracing::trace!(
            seals = job.sealed.len(),
            synced_us,
            dir_fsync_us = t1.elapsed().as_micros() as u64,
            "group: seals synced, renamed, directory fsynced"
        );
        Ok(())
    }
}

impl Syncer {
    /// Notes a step of a flush, for the unit tests' check of their order.
    #[cfg(test)]
    fn step(&self, what: &str) {
        tests::STEPS
            .locked()
            .push((self.landing.clone(), what.to_string()));
    }
    #[cfg(not(test))]
    #[inline(always)]
    fn step(&self, _what: &str) {}
}

impl Syncer {
    /// After a failed flush nothing of the group is recorded: gives the
    /// renamed files back their `.partial` names, so that the next session
    /// (which does not reconcile) finds its tail where the catalog says.
    /// No fsync: a restart reconciles whichever names reached the disk.
    fn undo_renames(&self, renamed: &[SealedFile]) {
        for s in renamed.iter().rev() {
            if let Err(e) = std::fs::rename(&s.complete, &s.partial) {
                tracing::error!(file = %s.complete.display(), error = %e,
                    "cannot give a segment back its .partial name after a failed flush");
            }
        }
    }

    /// fdatasyncs `files` on up to [`SYNC_THREADS`] threads at once, and
    /// returns the first error. A journaling file system commits the syncs
    /// that wait at the same time together (ext4's jbd2, XFS's log), so
    /// the group's files cost a few journal commits instead of one each
    /// (256 new 4 KiB files on this project's test machine: ~500 ms one
    /// after another, 20–40 ms on 4–16 threads).
    fn sync_files(&self, files: &[&SealedFile]) -> Result<(), DiskError> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || -> Result<(), DiskError> {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(s) = files.get(i) else {
                    return Ok(());
                };
                s.file.sync_data().map_err(io_err(&s.partial))?;
                self.step(&format!("fdatasync {}", s.partial.display()));
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
}

/// The ack of a durable position: the end of `rec`, the tail or a segment
/// sealed in the group before it.
fn ack(rec: Option<&SegmentRecord>) -> pb::ReplicaMessage {
    pb::ReplicaMessage {
        msg: Some(pb::replica_message::Msg::Ack(pb::Ack {
            durable_position: rec.map_or(0, SegmentRecord::end),
            segment: rec.map(|r| r.name.clone()).unwrap_or_default(),
            segment_size: rec.map_or(0, |r| r.size),
            sealed: rec.is_some_and(|r| r.sealed),
        })),
    }
}

/// CRC32C of the first `len` bytes of a file.
/// Runs `decide` (a drd-core rule such as `tail::recover`) with the CRC32C
/// of `f`'s prefixes; an error reading them is returned instead of its
/// answer.
pub fn with_crc_prefixes<T>(
    f: &File,
    decide: impl FnOnce(&mut dyn FnMut(u64) -> u32) -> T,
) -> std::io::Result<T> {
    let mut read_err = None;
    let answer = decide(&mut |len| {
        crc_prefix(f, len).unwrap_or_else(|e| {
            read_err.get_or_insert(e);
            0
        })
    });
    read_err.map_or(Ok(answer), Err)
}

pub fn crc_prefix(f: &File, len: u64) -> std::io::Result<u32> {
    let mut crc = 0u32;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let want = (len - off).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..want], off)?;
        crc = crc32c::crc32c_append(crc, &buf[..want]);
        off += want as u64;
    }
    Ok(crc)
}

/// SHA-256 of a whole file, read from disk.
pub fn hash_file(f: &File) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::reconcile;
    use std::path::Path;
    use std::sync::Mutex;

    /// Each flush step, with the landing directory it ran for (tests run
    /// in parallel; each keeps to its own directory).
    pub(super) static STEPS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

    fn steps(landing: &Path) -> Vec<String> {
        STEPS
            .locked()
            .iter()
            .filter(|(l, _)| l == landing)
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn seg(n: u64) -> SegmentName {
        SegmentName::new(format!("0000000100000000{n:08X}")).unwrap()
    }

    /// The messages that ship segments `1..=sealed` whole and sealed, then
    /// `tail` bytes of the next one; each segment is 100 bytes of its number.
    fn log(sealed: u64, tail: usize) -> Vec<ShipMsg> {
        let mut out = Vec::new();
        let mut chain = crate::chain::GENESIS;
        let mut start = 0u64;
        for n in 1..=sealed + 1 {
            let len = if n > sealed { tail } else { 100 };
            let data = vec![n as u8; len];
            out.push(ShipMsg::Chunk(Chunk {
                epoch: 1,
                segment: seg(n),
                segment_start: start,
                offset: 0,
                data: bytes::Bytes::from(data.clone()),
                source_position: 0,
                written_at_ms: 0,
            }));
            if n > sealed {
                break;
            }
            let digest: [u8; 32] = Sha256::digest(&data).into();
            chain = crate::chain::link(&chain, &digest, seg(n).as_str(), len as u64);
            out.push(ShipMsg::Seal(Seal {
                epoch: 1,
                segment: seg(n),
                segment_start: start,
                size: len as u64,
                sha256: digest,
                source_position: 0,
                chain,
            }));
            start += len as u64;
        }
        out
    }

    /// Runs one session over `msgs`, all queued before it starts (so they
    /// make one group), and returns its acks as (position, segment, sealed).
    fn session(
        landing: &Path,
        catalog: &Arc<Catalog>,
        msgs: Vec<ShipMsg>,
    ) -> Vec<(u64, String, bool)> {
        let stream = StreamName::new("s").unwrap();
        let slot = Arc::new(ReceiveSlot::new(
            stream.clone(),
            None,
            StreamMeta::default(),
        ));
        let primary = drd_proto::NodeId::new("p").unwrap();
        let w = DiskWorker::new(
            stream,
            landing.into(),
            catalog.clone(),
            slot,
            1,
            1 << 30,
            &primary,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel(msgs.len().max(1));
        for m in msgs {
            tx.try_send(m).unwrap();
        }
        drop(tx);
        let (acks_tx, mut acks_rx) = mpsc::channel(64);
        w.run(rx, acks_tx);
        let mut out = Vec::new();
        while let Ok(m) = acks_rx.try_recv() {
            let Some(pb::replica_message::Msg::Ack(a)) = m.unwrap().msg else {
                panic!("not an ack")
            };
            out.push((a.durable_position, a.segment, a.sealed));
        }
        out
    }

    #[test]
    fn a_group_seals_several_segments_with_one_directory_fsync() {
        let d = tempfile::tempdir().unwrap();
        let landing = d.path().join("landing");
        let catalog = Arc::new(Catalog::open(&d.path().join("catalog")).unwrap());
        let acks = session(&landing, &catalog, log(3, 50));

        // The last seal is acked, then the tail; both only once durable.
        assert_eq!(
            acks,
            vec![
                (300, seg(3).to_string(), true),
                (350, seg(4).to_string(), false)
            ]
        );
        for n in 1..=3 {
            assert_eq!(
                std::fs::read(landing.join(seg(n).as_str())).unwrap(),
                vec![n as u8; 100]
            );
            assert!(!landing.join(seg(n).partial_file_name()).exists());
            let rec = catalog
                .segment(&StreamName::new("s").unwrap(), &seg(n))
                .unwrap()
                .unwrap();
            assert!(rec.sealed && rec.sha256.is_some(), "{rec:?}");
        }
        assert_eq!(
            std::fs::read(landing.join(seg(4).partial_file_name())).unwrap(),
            vec![4; 50]
        );

        // One group: each sealed file fdatasynced before its rename, one
        // directory fsync after every rename, then the commit, then acks.
        let steps = steps(&landing);
        let at = |s: &str| {
            steps
                .iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("no {s:?} in {steps:?}"))
        };
        assert_eq!(
            steps.iter().filter(|s| *s == "fsync dir").count(),
            1,
            "{steps:?}"
        );
        for n in 1..=3 {
            let p = landing.join(seg(n).partial_file_name());
            let sync = at(&format!("fdatasync {}", p.display()));
            let rename = at(&format!("rename {}", p.display()));
            assert!(sync < rename && rename < at("fsync dir"), "{steps:?}");
        }
        assert!(at("fsync dir") < at("commit"), "{steps:?}");
        assert!(
            at("commit") < at("ack") && at("fdatasync tail") < at("ack"),
            "{steps:?}"
        );

        // Nothing for a restart to fix; the next session resumes at 350.
        let stream = StreamName::new("s").unwrap();
        let tail = catalog.tail(&stream).unwrap();
        let r = reconcile::reconcile_stream(&landing, tail.as_ref(), |r| {
            Ok(catalog.previous(&stream, &r.segment_name()?)?)
        })
        .unwrap();
        assert_eq!(r, reconcile::Reconciled::default());
        assert_eq!(session(&landing, &catalog, Vec::new()), vec![]);
        assert_eq!(tail.unwrap().end(), 350);
    }

    #[test]
    fn groups_are_cut_at_the_seal_limit() {
        let d = tempfile::tempdir().unwrap();
        let landing = d.path().join("landing");
        let catalog = Arc::new(Catalog::open(&d.path().join("catalog")).unwrap());
        let n = MAX_SEALS_PER_GROUP as u64 + 2;
        let acks = session(&landing, &catalog, log(n, 1));
        assert_eq!(acks.last().unwrap().0, n * 100 + 1);
        // Two groups: the first stops at the limit.
        assert_eq!(
            steps(&landing).iter().filter(|s| *s == "fsync dir").count(),
            2
        );
        assert_eq!(
            acks[0],
            (
                MAX_SEALS_PER_GROUP as u64 * 100,
                seg(MAX_SEALS_PER_GROUP as u64).to_string(),
                true
            )
        );
        for i in 1..=n {
            assert!(landing.join(seg(i).as_str()).exists());
        }
    }
}
