//! The replica's disk worker for one session: takes validated messages off a
//! bounded queue, feeds them to drd-core's [`Session`] and carries out what
//! it says — writes, the seal's digest, and the group commit: after a batch
//! (as much as is queued, until the session says the group is full:
//! `group_commit_bytes` or [`MAX_SEALS_PER_GROUP`] seals) the session cuts
//! a [`Group`], which this makes durable (see [`Syncer::flush`] for each
//! sync and why) and only then acks the new durable position.
//!
//! The group's bookkeeping — the records it touched, the previous point's
//! CRC, the sealed files and their ack, the rollback after a failed
//! fdatasync — is the core's; the files are a [`FileStore`] and the
//! commits a [`StreamCatalog`] (drd-core's storage traits over the landing
//! directory and the RocksDB catalog); this file holds the threads and
//! carries the core's commands out through them.
//!
//! Seals are part of the group: a seal's checksum is verified when it
//! arrives (invariant 2: the record says sealed only after it matched), and
//! its fdatasync and rename wait for the group's flush, so many small
//! segments share one directory fsync and one catalog commit.
//!
//! It runs on a blocking thread: file I/O and fsync block.

use crate::clock::unix_ms;
use crate::locks::LockExt;
use crate::node::ReceiveSlot;
use crate::receiver::{Reject, Tail};
use crate::storage::catalog::{Catalog, SegmentRecord, StreamMeta};
use crate::storage::segments::{FileStore, StoreError};
use crate::storage::stream_catalog::{core_record, StreamCatalog};
use drd_core::durability::Step;
use drd_core::replica::{self, Command, Event, Group, GroupEvent, Misuse, Record, Session};
use drd_core::storage::{Catalog as _, SegmentStore as _};
use drd_proto::pb;
use drd_proto::{Chunk, Seal, SegmentName, ShipMsg, StreamName};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tonic::Status;

pub use drd_core::replica::MAX_SEALS_PER_GROUP;

/// Outcome of one message, for the batch loop.
enum Applied {
    Bytes(u64),
    Nothing,
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
    Catalog(#[from] crate::storage::catalog::CatalogError),
    /// The disk worker did not follow drd-core's session (a bug in drd).
    #[error(transparent)]
    Session(#[from] Misuse),
}

/// The landing directory's errors name their file, as the disk worker's own.
impl From<StoreError> for DiskError {
    fn from(e: StoreError) -> Self {
        DiskError::Io {
            path: e.path,
            source: e.source,
        }
    }
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
    /// drd-core's receive session: what was accepted, the group being
    /// built, the flush in flight.
    session: Session,
    /// The tail's catalog record as the session began: the fields the
    /// core does not keep (fork, in_source, pruned_at_ms) come from it
    /// when its record is committed again.
    base: Option<SegmentRecord>,
    meta: StreamMeta,
    /// The landing directory; it keeps the partial files open.
    store: FileStore,
    /// Segments sealed in the current group, in order: the group's flush
    /// syncs and renames them.
    sealed: Vec<SegmentName>,
    /// Running SHA-256 of the tail file and how many bytes it covers; None
    /// when the session began mid-segment (re-hashed from disk at seal).
    hasher: Option<RunningHash>,
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A command the disk worker's writing thread does not carry out here: a
/// bug in drd.
fn unexpected(what: &'static str) -> DiskError {
    DiskError::Session(Misuse::Unexpected(what))
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
        let base = catalog.tail(&stream)?;
        let mut meta = catalog.stream_meta(&stream)?;
        // Persisted with the first commit: the failover report names it.
        meta.last_primary = Some(primary.to_string());
        let tail = base.as_ref().map(core_record).transpose()?;
        let mut store = FileStore::new(landing.clone());
        let crc = match &base {
            Some(rec) => open_tail(&mut store, rec)?,
            None => None,
        };
        let session = Session::new(
            node_epoch,
            tail,
            crc.unwrap_or(0),
            meta.chain_head(),
            group_commit_bytes,
        );
        Ok(Self {
            stream,
            landing,
            catalog,
            slot,
            session,
            base,
            meta,
            store,
            sealed: Vec::new(),
            hasher: None,
        })
    }

    /// The end of the log as this session begins (for the Welcome).
    pub fn tail(&self) -> Option<&Tail> {
        self.session.tail()
    }

    /// Chain value after the last sealed segment, for the Welcome.
    pub fn chain_head(&self) -> [u8; 32] {
        self.meta.chain_head()
    }

    pub fn durable_position(&self) -> u64 {
        self.session.record().map_or(0, Record::end)
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
            store: self.store.clone(),
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
                if self.session.batch_full() {
                    break;
                }
                next = rx.try_recv().ok();
                if next.is_none() && self.session.flushing() {
                    // One flush at a time: the next group is handed over
                    // only once the running one is durable. Wait for it
                    // here, then take in what arrived meanwhile, so that
                    // it goes into the next group rather than the one
                    // after (a sync-mode commit would wait two flushes).
                    let t = Instant::now();
                    if let Err(e) = self.settle(flusher) {
                        refused = Some(e);
                        break;
                    }
                    tracing::trace!(
                        elapsed_us = t.elapsed().as_micros() as u64,
                        "waited for the previous flush"
                    );
                    next = rx.try_recv().ok();
                }
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
            ShipMsg::Seal(s) => self.apply_seal(s).map(|()| Applied::Nothing),
            ShipMsg::Keepalive {
                epoch,
                source_position,
                source_lsn,
            } => {
                let cmds = self.session.handle(Event::Keepalive { epoch })?;
                self.carry_out(cmds)?;
                self.note_source(source_position);
                self.note_source_lsn(source_lsn);
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

    fn note_source_lsn(&mut self, at: drd_proto::SourceLsn) {
        let m = &mut self.meta;
        if (at.timeline, at.lsn) > (m.source_timeline, m.source_lsn) {
            m.source_timeline = at.timeline;
            m.source_lsn = at.lsn;
        }
    }

    fn apply_chunk(&mut self, c: Chunk) -> Result<u64, DiskError> {
        let len = c.data.len() as u64;
        // Every byte that arrives counts as received, accepted or not.
        self.meta.network_bytes += len;
        crate::metrics::chunk_received(self.stream.as_str(), len);
        let source_position = c.source_position;
        let source_lsn = c.source_lsn;
        let cmds = self.session.handle(Event::Chunk {
            chunk: c,
            now_ms: unix_ms(),
        })?;
        self.carry_out(cmds)?;
        self.note_source(source_position);
        self.note_source_lsn(source_lsn);
        Ok(len)
    }

    /// Verifies a seal's checksum and seals the tail in the current group:
    /// its record says sealed from this group's commit on, and the group's
    /// flush fdatasyncs and renames the file before that commit.
    fn apply_seal(&mut self, s: Seal) -> Result<(), DiskError> {
        self.note_source(s.source_position);
        let cmds = self.session.handle(Event::Seal(s))?;
        self.carry_out(cmds)
    }

    /// Carries out the session's commands for one message, reporting each
    /// one's outcome. A failed step is reported too: nothing of the message
    /// is accepted, and the session flushes what was before it.
    fn carry_out(&mut self, cmds: Vec<Command>) -> Result<(), DiskError> {
        let mut queue = VecDeque::from(cmds);
        while let Some(cmd) = queue.pop_front() {
            let next = match cmd {
                Command::Create { segment } => match self.start_segment(&segment) {
                    Ok(()) => self.session.handle(Event::Created)?,
                    Err(e) => return self.failed(e),
                },
                Command::Write(c) => match self.write(&c) {
                    Ok(()) => self.session.handle(Event::Written)?,
                    Err(e) => return self.failed(e),
                },
                Command::Digest { segment, size } => match self.digest(&segment, size) {
                    Ok(sha256) => self.session.handle(Event::Digest {
                        sha256,
                        now_ms: unix_ms(),
                    })?,
                    Err(e) => return self.failed(e),
                },
                Command::Sealed(rec) => {
                    self.sealed_file(&rec)?;
                    Vec::new()
                }
                Command::Refuse(r) => return Err(r.into()),
                _ => return Err(unexpected("a flush command for a message")),
            };
            queue.extend(next);
        }
        Ok(())
    }

    fn failed(&mut self, e: DiskError) -> Result<(), DiskError> {
        self.session.handle(Event::Failed)?;
        Err(e)
    }

    /// Creates the next partial segment file. The catalog record is written
    /// with the batch's commit; until then the file holds no acked byte, and
    /// reconciliation after a crash ignores it.
    fn start_segment(&mut self, segment: &SegmentName) -> Result<(), DiskError> {
        // Without a directory fsync: the group's flush makes the new entry
        // durable with its others (see `FileStore::create`, `Syncer::flush`).
        self.store.create(segment)?;
        self.hasher = RunningHash::start();
        self.meta.segments += 1;
        Ok(())
    }

    /// Writes a chunk the session accepted into the tail file. It counts
    /// as accepted only once written: a failed write (disk full) leaves the
    /// accepted size where it was, so no commit can record these bytes.
    fn write(&mut self, c: &Chunk) -> Result<(), DiskError> {
        // The store holds the tail file open whenever the session accepts
        // a chunk: an append continues the tail opened by `open_tail` or
        // `start_segment`, and a new segment has just been created.
        self.store.write(&c.segment, c.offset, &c.data)?;
        if let Some(h) = &mut self.hasher {
            h.update(c.offset, &c.data);
        }
        Ok(())
    }

    /// The SHA-256 of the tail's first `size` bytes: the running hash when
    /// it covers them, otherwise read back from the file.
    fn digest(&mut self, segment: &SegmentName, size: u64) -> Result<[u8; 32], DiskError> {
        // The session asks to verify only a seal of the unsealed tail, whose
        // file `open_tail` or `start_segment` opened in the store.
        match self.hasher.take().map(RunningHash::finish) {
            Some((covered, digest)) if covered == size => Ok(digest),
            _ => Ok(self.store.digest(segment, size)?),
        }
    }

    /// Invariant 2: the checksum matched. The fdatasync, the rename and the
    /// directory fsync that make it complete on disk are the group's (see
    /// `Syncer::flush`); until its commit the record is not sealed, and
    /// reconciliation undoes a rename that got ahead.
    fn sealed_file(&mut self, rec: &Record) -> Result<(), DiskError> {
        self.sealed.push(rec.segment.clone());
        self.meta.chain_head = rec.chain.map(hex::encode);
        self.meta.sealed_segments += 1;
        tracing::debug!(stream = %self.stream, segment = %rec.segment, size = rec.size, "segment sealed and verified");
        Ok(())
    }

    /// Hands everything accepted so far to the syncer, which makes it
    /// durable and acks it. Waits for the flush before it first.
    fn flush(&mut self, flusher: &mut Flusher) -> Result<(), DiskError> {
        loop {
            let mut waited = false;
            for cmd in self.session.handle(Event::Drained)? {
                match cmd {
                    // One flush at a time: then the session cuts the group.
                    Command::AwaitFlush => {
                        let t0 = Instant::now();
                        self.settle(flusher)?;
                        tracing::trace!(
                            elapsed_us = t0.elapsed().as_micros() as u64,
                            "waited for the previous flush"
                        );
                        waited = true;
                    }
                    Command::Flush(group) => return self.hand_over(group, flusher),
                    // Nothing left to flush after a refusal: the caller
                    // ends the stream.
                    Command::Close => return Ok(()),
                    _ => return Err(unexpected("a message's command at a flush")),
                }
            }
            if !waited {
                return Ok(());
            }
        }
    }

    /// Sends a group to the syncer with what its flush needs besides the
    /// store's files: a snapshot of the stream's metadata for its commit.
    fn hand_over(&mut self, group: Box<Group>, flusher: &mut Flusher) -> Result<(), DiskError> {
        self.meta.durable_at_ms = unix_ms();
        let files = std::mem::take(&mut self.sealed);
        if files.len() != group.seals().len()
            || files
                .iter()
                .zip(group.seals())
                .any(|(name, s)| *name != s.segment)
        {
            return Err(unexpected("the group's seals are not the files sealed"));
        }
        let job = FlushJob {
            group,
            meta: self.meta.clone(),
            base: self.base.clone(),
        };
        if flusher.jobs.send(job).is_err() {
            // The syncer stopped after a failure; `settle` reports it.
            return self.settle(flusher);
        }
        Ok(())
    }

    /// Waits for the running flush, if any, and takes in its outcome.
    fn settle(&mut self, flusher: &mut Flusher) -> Result<(), DiskError> {
        if !self.session.flushing() {
            return Ok(());
        }
        match flusher.done.recv() {
            Ok(Ok(())) => {
                self.session.handle(Event::Flushed)?;
                Ok(())
            }
            Ok(Err(e)) => {
                self.session.handle(Event::FlushFailed)?;
                Err(e)
            }
            Err(_) => {
                self.session.handle(Event::FlushFailed)?;
                Err(DiskError::Io {
                    path: self.landing.display().to_string(),
                    source: std::io::Error::other("the flush thread stopped"),
                })
            }
        }
    }
}

/// Opens the partial tail file of `rec` in the store (nothing when it is
/// sealed), cut back to its durable size: bytes a previous session wrote
/// but did not make durable are not trusted. Returns the CRC32C of those
/// bytes.
fn open_tail(store: &mut FileStore, rec: &SegmentRecord) -> Result<Option<u32>, DiskError> {
    if rec.sealed {
        return Ok(None);
    }
    let segment = rec.segment_name()?;
    let path = store.landing().join(segment.partial_file_name());
    if rec.size > 0 && !path.exists() {
        // Creating it would stand zeros for durable bytes (reconciliation
        // at startup would have refused the same).
        return Err(io_err(&path)(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the catalog records {} durable bytes of it", rec.size),
        )));
    }
    let (f, len) = store.open(&segment)?;
    if len != rec.size {
        // Durable (set_len + sync_all) before new bytes land after it.
        store.cut(&segment, rec.size)?;
    }
    // Reconciliation checked the stored CRC at startup, and nothing
    // else writes the file; records from before drd kept one are hashed.
    let crc = match rec.check {
        Some(c) => c.crc32c,
        None => crc_prefix(f.file(), rec.size).map_err(io_err(&path))?,
    };
    Ok(Some(crc))
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

/// One group to make durable: drd-core's [`Group`] (its records, its steps,
/// its acks) and what carrying it out takes.
///
/// The files are the store's: the group's commands name the tail to
/// fdatasync and the sealed segments to sync and rename.
struct FlushJob {
    group: Box<Group>,
    meta: StreamMeta,
    /// The tail's record as the session began (see `catalog_record`).
    base: Option<SegmentRecord>,
}

/// Makes groups durable and acks them, on its own thread.
struct Syncer {
    stream: StreamName,
    landing: PathBuf,
    catalog: Arc<Catalog>,
    /// The writing thread's store, shared: the same open files.
    store: FileStore,
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
    ///    landing directory (see `FileStore::make_names_durable`);
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
    ///
    /// drd-core's [`Group`] says which step comes next, when the group may
    /// be acked and what to put back when the tail's fdatasync failed; this
    /// carries out the steps and reports each.
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
        #[cfg(test)]
        {
            self.step("flush");
            gate::pass(&self.landing);
        }
        let FlushJob {
            mut group,
            meta,
            base,
        } = job;
        let mut catalog = StreamCatalog::new(self.catalog.clone(), self.stream.clone(), base, meta);
        let order = |e: Misuse| DiskError::Io {
            path: self.landing.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        };
        let mut rest = Vec::new();
        let mut tail = None;
        for cmd in group.start().map_err(order)? {
            match cmd {
                Command::SyncTail { segment, len } => tail = Some((segment, len)),
                other => rest.push(other),
            }
        }
        let mut acks = Vec::new();
        let (synced, committed) = std::thread::scope(|scope| {
            let sync = tail.as_ref().map(|(segment, len)| {
                let mut store = self.store.clone();
                scope.spawn(move || {
                    let t0 = Instant::now();
                    // fdatasync (see `FileStore::sync`).
                    let r = store.sync(segment, *len).map(|()| t0.elapsed());
                    self.step("fdatasync tail");
                    r
                })
            });
            let committed = self.names_and_commit(&mut group, rest, &mut catalog, &mut acks);
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
                // the disk: the group puts the record back to the last
                // synced point before refusing (nothing here was acked).
                for cmd in group
                    .handle(GroupEvent::Failed(Step::TailSynced))
                    .map_err(order)?
                {
                    if let Command::RollBack(back) = cmd {
                        let head = catalog.meta().chain_head();
                        catalog.commit(std::slice::from_ref(&back), head)?;
                    }
                }
                return Err(e.into());
            }
            None => {}
        }
        committed?;
        if tail.is_some() {
            for cmd in group
                .handle(GroupEvent::Done(Step::TailSynced))
                .map_err(order)?
            {
                if let Command::Ack(a) = cmd {
                    acks.push(a);
                }
            }
        }
        if !group.acked() {
            return Err(order(Misuse::Unexpected("the group is not durable yet")));
        }
        let tail = group.tail().map(|r| catalog.record(r));
        let durable = tail.as_ref().map_or(0, SegmentRecord::end);
        let meta = catalog.into_meta();
        {
            let mut st = self.slot.state.locked();
            st.durable = durable;
            st.tail = tail;
            let now = Instant::now();
            if durable >= meta.source_position {
                st.caught_up_at = now;
            }
            st.meta = meta;
            st.rate.record(durable, now);
        }
        // If the primary has gone, nobody reads the acks; that is fine: the
        // position is durable and the next Welcome reports it. A group that
        // sealed segments before its tail acks the last of those first.
        for a in &acks {
            self.step("ack");
            let _ = self.acks.blocking_send(Ok(ack(a)));
        }
        tracing::trace!(durable, "acked");
        Ok(())
    }

    /// Steps 1–3 of [`Self::flush`] as the group asks for them: the names
    /// (when the group sealed a segment or created a file), then the
    /// commit. Acks the group allows on the way are collected in `acks`.
    fn names_and_commit(
        &self,
        group: &mut Group,
        cmds: Vec<Command>,
        catalog: &mut StreamCatalog,
        acks: &mut Vec<replica::Ack>,
    ) -> Result<(), DiskError> {
        let order = |e: Misuse| DiskError::Io {
            path: self.landing.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        };
        let mut store = self.store.clone();
        let mut queue = VecDeque::from(cmds);
        while let Some(cmd) = queue.pop_front() {
            let next = match cmd {
                // Steps 1 and 2, for a group that sealed a segment or
                // created a `.partial` file: see `FileStore::make_names_durable`
                // for its one directory fsync.
                Command::MakeNamesDurable { seals } => {
                    if let Err(e) = store.make_names_durable(&seals) {
                        group
                            .handle(GroupEvent::Failed(Step::NamesDurable))
                            .map_err(order)?;
                        return Err(e.into());
                    }
                    group.handle(GroupEvent::Done(Step::NamesDurable))
                }
                // The chain head is the one `meta` got when each seal matched.
                Command::Commit {
                    records,
                    chain_head,
                } => {
                    let t0 = Instant::now();
                    let r = catalog.commit(&records, chain_head);
                    self.step("commit");
                    tracing::trace!(
                        elapsed_us = t0.elapsed().as_micros() as u64,
                        "catalog commit"
                    );
                    if let Err(e) = r {
                        // The records still say partial (if the failed write
                        // did reach the disk, reconciliation finishes the
                        // renames after checking each SHA-256). A name not
                        // given back is logged by the store; a restart
                        // reconciles it.
                        for cmd in group
                            .handle(GroupEvent::Failed(Step::Committed))
                            .map_err(order)?
                        {
                            if let Command::UndoNames { seals } = cmd {
                                let _ = store.undo_names(&seals);
                            }
                        }
                        return Err(e.into());
                    }
                    group.handle(GroupEvent::Done(Step::Committed))
                }
                Command::Ack(a) => {
                    acks.push(a);
                    continue;
                }
                _ => return Err(unexpected("a message's command in a flush")),
            }
            .map_err(order)?;
            queue.extend(next);
        }
        Ok(())
    }

    /// Notes a step of a flush, for the unit tests' check of their order.
    #[cfg(test)]
    fn step(&self, what: &str) {
        crate::storage::segments::steps::record(&self.landing, what);
    }
    #[cfg(not(test))]
    #[inline(always)]
    fn step(&self, _what: &str) {}
}

/// The ack of a durable position: the end of the tail or of a segment
/// sealed in the group before it.
fn ack(a: &replica::Ack) -> pb::ReplicaMessage {
    pb::ReplicaMessage {
        msg: Some(pb::replica_message::Msg::Ack(pb::Ack {
            durable_position: a.durable,
            segment: a
                .segment
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            segment_size: a.size,
            sealed: a.sealed,
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

/// Test-only: holds a landing directory's flushes at their start until
/// released, so that a test can make messages arrive during a flush.
#[cfg(test)]
mod gate {
    use crate::locks::LockExt;
    use std::path::{Path, PathBuf};
    use std::sync::{Condvar, Mutex};

    static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static OPENED: Condvar = Condvar::new();

    pub fn hold(landing: &Path) {
        HELD.locked().push(landing.to_path_buf());
    }

    pub fn release(landing: &Path) {
        HELD.locked().retain(|l| l != landing);
        OPENED.notify_all();
    }

    pub fn pass(landing: &Path) {
        let mut held = HELD.locked();
        while held.iter().any(|l| l == landing) {
            held = OPENED.wait(held).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::reconcile;
    use crate::storage::segments::steps::of as steps;
    use std::path::Path;

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
                source_lsn: Default::default(),
                data_crc32c: None,
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

    /// A disk worker for stream "s" at epoch 1 that never cuts a group for
    /// its size.
    fn worker(landing: &Path, catalog: &Arc<Catalog>) -> DiskWorker {
        let stream = StreamName::new("s").unwrap();
        let slot = Arc::new(ReceiveSlot::new(
            stream.clone(),
            None,
            StreamMeta::default(),
        ));
        let primary = drd_proto::NodeId::new("p").unwrap();
        DiskWorker::new(
            stream,
            landing.into(),
            catalog.clone(),
            slot,
            1,
            1 << 30,
            &primary,
        )
        .unwrap()
    }

    /// The acks a session sent, as (position, segment, sealed).
    fn acks_of(
        rx: &mut mpsc::Receiver<Result<pb::ReplicaMessage, Status>>,
    ) -> Vec<(u64, String, bool)> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            let Some(pb::replica_message::Msg::Ack(a)) = m.unwrap().msg else {
                panic!("not an ack")
            };
            out.push((a.durable_position, a.segment, a.sealed));
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
        let w = worker(landing, catalog);
        let (tx, rx) = mpsc::channel(msgs.len().max(1));
        for m in msgs {
            tx.try_send(m).unwrap();
        }
        drop(tx);
        let (acks_tx, mut acks_rx) = mpsc::channel(64);
        w.run(rx, acks_tx);
        acks_of(&mut acks_rx)
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

    fn tail_chunk(offset: u64, len: usize) -> ShipMsg {
        ShipMsg::Chunk(Chunk {
            epoch: 1,
            segment: seg(1),
            segment_start: 0,
            offset,
            data: bytes::Bytes::from(vec![7u8; len]),
            source_position: 0,
            written_at_ms: 0,
            source_lsn: Default::default(),
            data_crc32c: None,
        })
    }

    /// What arrives while a flush runs goes into the next group, whole:
    /// a sync-mode commit waits for the flush in flight and one more, not
    /// two more (before, the bytes that came while the writer waited for
    /// the running flush were left for the group after the next).
    #[test]
    fn what_arrives_during_a_flush_goes_into_the_next_group() {
        let d = tempfile::tempdir().unwrap();
        let landing = d.path().join("landing");
        let catalog = Arc::new(Catalog::open(&d.path().join("catalog")).unwrap());
        let w = worker(&landing, &catalog);
        let (tx, rx) = mpsc::channel(16);
        let (acks_tx, mut acks_rx) = mpsc::channel(64);
        let worker = std::thread::spawn(move || w.run(rx, acks_tx));
        let flushes = |n: usize| {
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while steps(&landing).iter().filter(|s| *s == "flush").count() < n {
                assert!(
                    Instant::now() < deadline,
                    "no flush {n}: {:?}",
                    steps(&landing)
                );
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        };
        gate::hold(&landing);
        tx.blocking_send(tail_chunk(0, 10)).unwrap();
        flushes(1);
        // The first flush is held: these two arrive while it runs, the
        // second while the writer waits for it.
        tx.blocking_send(tail_chunk(10, 10)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        tx.blocking_send(tail_chunk(20, 10)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        gate::release(&landing);
        drop(tx);
        worker.join().unwrap();
        let acked: Vec<u64> = acks_of(&mut acks_rx).iter().map(|a| a.0).collect();
        assert_eq!(acked, vec![10, 30], "one flush for both late chunks");
        assert_eq!(
            steps(&landing).iter().filter(|s| *s == "flush").count(),
            2,
            "{:?}",
            steps(&landing)
        );
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
