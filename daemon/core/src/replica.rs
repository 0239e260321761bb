//! The replica's session for one stream, without I/O: the group being built
//! (the records it touched, the previous durable point's CRC, the segments
//! it sealed, the tail's accepted bytes), when a group may be cut, and its
//! flush as a [`Group`] that says which step comes next, what to ack and
//! when, and what to put back when the tail's fdatasync failed.
//!
//! The daemon's disk worker (`replica/disk.rs`) and drd-sim's replica both
//! drive it: they feed it each message and each completed I/O as an
//! [`Event`] and carry out the [`Command`]s it returns — file writes,
//! fdatasyncs, renames, the directory fsync, the catalog commit, the acks.
//! The per-message rules are [`crate::receiver`]'s, the order of a flush's
//! steps is [`crate::durability::Flush`]'s; this module holds the state
//! between them, so that neither driver keeps a copy of it.
//!
//! A message's I/O is reported back before the next message: a chunk is
//! *accepted* (counted in the tail, hashed into its CRC, recorded at the
//! next commit) only once its write returned; a seal only once the driver
//! reported the digest of the stored bytes and it matched. A flush runs
//! beside the next group's writes; only one runs at a time.

use crate::durability::{Flush, OrderError, Step};
use crate::receiver::{ChunkAction, Receiver, Reject, SealAction, Tail};
use crate::tail::PartialCheck;
use drd_proto::{Chunk, Epoch, Seal, SegmentName};

/// At most this many seals go into one group. Each holds its file open
/// until the group's flush, and the group's ack waits for all of them;
/// past a few hundred, sharing the directory fsync and the commit gains
/// little more.
pub const MAX_SEALS_PER_GROUP: usize = 256;

/// A segment's catalog record as the session keeps it: the fields the
/// receive path decides. Drivers add their own (e.g. whether the file is
/// a fork segment) when they store it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub segment: SegmentName,
    /// Stream position of the segment's first byte.
    pub start: u64,
    /// Durable size: what the commit of this record says is on disk.
    pub size: u64,
    /// Complete: its whole-file checksum matched (invariant 2).
    pub sealed: bool,
    /// Whole-file SHA-256 and hash chain value, once sealed.
    pub sha256: Option<[u8; 32]>,
    pub chain: Option<[u8; 32]>,
    /// While partial: the CRCs that let a restart tell whether `size` is on
    /// disk (see [`PartialCheck`]).
    pub check: Option<PartialCheck>,
    /// Epoch of the chunk that started the segment.
    pub epoch: Epoch,
    /// Unix ms (passed in) when the first byte arrived and when the seal
    /// was verified.
    pub received_at_ms: u64,
    pub sealed_at_ms: Option<u64>,
}

impl Record {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// A segment sealed in a group: its flush makes the complete name durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedSegment {
    pub segment: SegmentName,
    /// Bytes were written to it since the last flush: fdatasync it before
    /// the rename (a complete name must never point at bytes that are not
    /// durable).
    pub sync: bool,
}

/// An ack of a durable position: the end of the tail, or of a segment
/// sealed in the group before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub durable: u64,
    /// None when the log is empty.
    pub segment: Option<SegmentName>,
    pub size: u64,
    pub sealed: bool,
}

impl Ack {
    fn of(rec: Option<&Record>) -> Self {
        Ack {
            durable: rec.map_or(0, Record::end),
            segment: rec.map(|r| r.segment.clone()),
            size: rec.map_or(0, |r| r.size),
            sealed: rec.is_some_and(|r| r.sealed),
        }
    }
}

/// What happened, as the driver reports it.
#[derive(Clone, Debug)]
pub enum Event {
    /// A validated chunk arrived; `now_ms` is the time its segment's record
    /// notes as received if it starts one.
    Chunk { chunk: Chunk, now_ms: u64 },
    /// [`Command::Create`] done: an empty `.partial` file exists.
    Created,
    /// [`Command::Write`] done: the chunk's bytes are in the file.
    Written,
    /// A validated seal arrived.
    Seal(Seal),
    /// [`Command::Digest`] done: the SHA-256 of the stored bytes.
    Digest { sha256: [u8; 32], now_ms: u64 },
    /// A keepalive (it is answered with an ack).
    Keepalive { epoch: Epoch },
    /// The driver refused a message itself, or an I/O step of a message
    /// failed: nothing of it is accepted; flush what was, then close.
    Failed,
    /// The input queue ran dry (or the group is full): time to flush.
    Drained,
    /// The flush handed out with [`Command::Flush`] is over and succeeded.
    Flushed,
    /// That flush failed: nothing of its group was acked.
    FlushFailed,
}

/// What the driver must do, in the order given.
#[derive(Debug)]
pub enum Command {
    /// Create (or empty) the segment's `.partial` file; report
    /// [`Event::Created`]. No directory fsync: the group's flush makes the
    /// new entry durable before its commit names the file.
    Create { segment: SegmentName },
    /// Write `chunk.data` at `chunk.offset` of its segment's `.partial`
    /// file; report [`Event::Written`].
    Write(Chunk),
    /// Compute the SHA-256 of the segment's stored bytes, all of them
    /// (`size` is what the seal covers: a longer file must not match);
    /// report [`Event::Digest`].
    Digest { segment: SegmentName, size: u64 },
    /// The segment's checksum and chain matched: it is sealed in this group
    /// (its record says so from the group's commit on).
    Sealed(Record),
    /// End the session with this refusal, after the flush of what was
    /// accepted before it.
    Refuse(Reject),
    /// A flush is running: wait for it ([`Event::Flushed`] or
    /// [`Event::FlushFailed`]), then report [`Event::Drained`] again — or,
    /// a driver that cannot wait, drain again when it is over.
    AwaitFlush,
    /// Make this group durable: carry out [`Group::start`]'s commands.
    Flush(Box<Group>),
    /// The session refused or failed and has nothing left to flush.
    Close,
    /// fdatasync the tail's `.partial` file: its first `len` bytes; report
    /// [`GroupEvent`] for [`Step::TailSynced`]. May run beside the rest.
    SyncTail { segment: SegmentName, len: u64 },
    /// For each sealed segment: fdatasync it if `sync`, rename `.partial` to
    /// the complete name; then one fsync of the landing directory (which
    /// also makes the `.partial` entries created in the group durable).
    /// Report [`Step::NamesDurable`].
    MakeNamesDurable { seals: Vec<SealedSegment> },
    /// The synced catalog commit of these records (and the chain head
    /// after the group's seals). Report [`Step::Committed`].
    Commit {
        records: Vec<Record>,
        chain_head: [u8; 32],
    },
    /// The tail's fdatasync failed after the commit recorded its bytes:
    /// commit this record (the last fully synced point) instead.
    RollBack(Record),
    /// The group failed after its names were made durable and its commit
    /// will not record them: give these segments back their `.partial`
    /// names (the catalog still says partial; not durably: a restart
    /// reconciles whichever names reached the disk).
    UndoNames { seals: Vec<SealedSegment> },
    /// Send this ack.
    Ack(Ack),
}

/// A driver reported an event the session did not ask for: a bug in the
/// driver, never the peer's doing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Misuse {
    #[error("replica session: {0}")]
    Unexpected(&'static str),
    #[error(transparent)]
    Order(#[from] OrderError),
}

/// An I/O step of a message the session is waiting for.
#[derive(Clone, Debug)]
enum Pending {
    Create { chunk: Chunk, now_ms: u64 },
    Write { action: ChunkAction, chunk: Chunk },
    Digest(Seal),
}

/// The replica's receive state of one stream for one session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The per-message rules and the accepted end of the log.
    receiver: Receiver,
    /// The tail segment's record, as durable so far (its size and check
    /// move to the accepted ones when a group is cut).
    tail: Option<Record>,
    /// Records changed since the last group (sealed segments, a new one).
    changed: Vec<Record>,
    /// Segments sealed since the last group, in order.
    seals: Vec<SealedSegment>,
    /// A `.partial` file was created since the last group.
    new_entry: bool,
    /// CRC32C of the tail's accepted bytes (`0..tail size`).
    crc: u32,
    /// The tail's last committed durable point: (size, CRC32C). The next
    /// record's check names it as the previous point.
    committed: (u64, u32),
    /// Bytes accepted since the last group's flush took the tail's sync.
    dirty: bool,
    /// Something changed since the last group (bytes, a seal, a keepalive
    /// to answer).
    need_ack: bool,
    /// Chain value after the last sealed segment.
    chain_head: [u8; 32],
    /// The flush running, and the tail's (size, CRC) that becomes
    /// `committed` when it succeeds (None when it does not record a partial
    /// tail, or the tail has changed since).
    in_flight: Option<Option<(u64, u32)>>,
    /// The I/O of the current message that the driver has yet to report:
    /// until then nothing of the message counts as accepted.
    pending: Option<Pending>,
    /// Refused or failed: accept nothing more.
    closing: bool,
    /// A flush failed: flush nothing more either. What the failed group's
    /// files hold is unknown (Linux may drop the dirty pages of a failed
    /// writeback and report the error once), so bytes accepted after it
    /// began may sit on a hole; the next session resumes from what the
    /// catalog says is durable, and the primary sends them again.
    flush_failed: bool,
    /// Bytes accepted since the last [`Event::Drained`]: a batch stops at
    /// `group_commit_bytes`, so that one flush never waits for an
    /// unbounded backlog.
    batch_bytes: u64,
    group_commit_bytes: u64,
}

impl Session {
    /// A session at this node's `epoch`, resuming after `tail` (the last
    /// record in the catalog) whose accepted bytes have CRC32C `tail_crc`,
    /// with `chain_head` after the last sealed segment.
    pub fn new(
        epoch: Epoch,
        tail: Option<Record>,
        tail_crc: u32,
        chain_head: [u8; 32],
        group_commit_bytes: u64,
    ) -> Self {
        let receiver_tail = tail.as_ref().map(|r| Tail {
            segment: r.segment.clone(),
            start: r.start,
            size: r.size,
            sealed: r.sealed,
        });
        let partial = tail.as_ref().filter(|r| !r.sealed);
        Session {
            receiver: Receiver::new(epoch, receiver_tail),
            committed: partial.map_or((0, 0), |r| (r.size, tail_crc)),
            crc: partial.map_or(0, |_| tail_crc),
            tail,
            changed: Vec::new(),
            seals: Vec::new(),
            new_entry: false,
            dirty: false,
            need_ack: false,
            chain_head,
            in_flight: None,
            pending: None,
            closing: false,
            flush_failed: false,
            batch_bytes: 0,
            group_commit_bytes,
        }
    }

    /// The accepted end of the log (what the Welcome reports at the start).
    pub fn tail(&self) -> Option<&Tail> {
        self.receiver.tail.as_ref()
    }

    /// The tail's record as durable so far (at the start: the catalog's).
    pub fn record(&self) -> Option<&Record> {
        self.tail.as_ref()
    }

    pub fn epoch(&self) -> Epoch {
        self.receiver.epoch
    }

    pub fn chain_head(&self) -> [u8; 32] {
        self.chain_head
    }

    /// Refused or failed: the driver takes no more messages.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// A flush is running.
    pub fn flushing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The group is full ([`MAX_SEALS_PER_GROUP`] seals, or the batch's
    /// bytes reached the group size): report [`Event::Drained`] now.
    pub fn batch_full(&self) -> bool {
        self.batch_bytes >= self.group_commit_bytes || self.seals.len() >= MAX_SEALS_PER_GROUP
    }

    /// Takes in one event and returns what to do.
    pub fn handle(&mut self, ev: Event) -> Result<Vec<Command>, Misuse> {
        match ev {
            Event::Chunk { chunk, now_ms } => {
                self.idle()?;
                Ok(self.on_chunk(chunk, now_ms))
            }
            Event::Created => self.on_created(),
            Event::Written => self.on_written(),
            Event::Seal(s) => {
                self.idle()?;
                self.on_seal(s)
            }
            Event::Digest { sha256, now_ms } => self.on_digest(sha256, now_ms),
            Event::Keepalive { epoch } => {
                self.idle()?;
                Ok(self.on_keepalive(epoch))
            }
            Event::Failed => {
                self.pending = None;
                self.closing = true;
                Ok(Vec::new())
            }
            Event::Drained => {
                self.idle()?;
                Ok(self.drained())
            }
            Event::Flushed => match self.in_flight.take() {
                Some(point) => {
                    if let Some(c) = point {
                        self.committed = c;
                    }
                    Ok(Vec::new())
                }
                None => Err(Misuse::Unexpected("a flush reported that was not running")),
            },
            Event::FlushFailed => {
                if self.in_flight.take().is_none() {
                    return Err(Misuse::Unexpected("a flush failed that was not running"));
                }
                self.closing = true;
                self.flush_failed = true;
                Ok(Vec::new())
            }
        }
    }

    /// A message or the end of a batch while a message's I/O is
    /// unreported: the driver skipped a report.
    fn idle(&self) -> Result<(), Misuse> {
        if self.pending.is_some() {
            return Err(Misuse::Unexpected(
                "an event before the previous message's I/O was reported",
            ));
        }
        Ok(())
    }

    fn refuse(&mut self, r: Reject) -> Vec<Command> {
        self.closing = true;
        vec![Command::Refuse(r)]
    }

    fn on_chunk(&mut self, chunk: Chunk, now_ms: u64) -> Vec<Command> {
        if self.closing {
            return Vec::new();
        }
        match self.receiver.decide_chunk(&chunk) {
            Err(r) => self.refuse(r),
            Ok(ChunkAction::StartSegment) => {
                let segment = chunk.segment.clone();
                self.pending = Some(Pending::Create { chunk, now_ms });
                vec![Command::Create { segment }]
            }
            Ok(ChunkAction::Append) => {
                let cmd = Command::Write(chunk.clone());
                self.pending = Some(Pending::Write {
                    action: ChunkAction::Append,
                    chunk,
                });
                vec![cmd]
            }
        }
    }

    /// A new tail: its record is written with the group's commit; until
    /// then the file holds no acked byte, and recovery ignores it.
    fn on_created(&mut self) -> Result<Vec<Command>, Misuse> {
        let Some(Pending::Create { chunk, now_ms }) = self.pending.take() else {
            return Err(Misuse::Unexpected("a file created that was not asked for"));
        };
        // The flush in flight, if any, recorded the old tail; its outcome
        // must not set `committed` for the new one.
        if let Some(point) = &mut self.in_flight {
            *point = None;
        }
        self.new_entry = true;
        self.crc = 0;
        self.committed = (0, 0);
        self.tail = Some(Record {
            segment: chunk.segment.clone(),
            start: chunk.segment_start,
            size: 0,
            sealed: false,
            sha256: None,
            chain: None,
            check: Some(PartialCheck::default()),
            epoch: chunk.epoch,
            received_at_ms: now_ms,
            sealed_at_ms: None,
        });
        let cmd = Command::Write(chunk.clone());
        self.pending = Some(Pending::Write {
            action: ChunkAction::StartSegment,
            chunk,
        });
        Ok(vec![cmd])
    }

    /// Accepted only once written: a failed write (disk full) leaves the
    /// accepted size where it was, so no commit can record these bytes.
    fn on_written(&mut self) -> Result<Vec<Command>, Misuse> {
        let Some(Pending::Write { action, chunk }) = self.pending.take() else {
            return Err(Misuse::Unexpected(
                "a write reported that was not asked for",
            ));
        };
        self.receiver.accept_chunk(action, &chunk);
        // The running CRC of the partial file: from the wire CRC the chunk
        // was checked against when there is one (no second pass over the
        // bytes; `crc32c_combine` costs O(log len)), else from the bytes.
        self.crc = match chunk.data_crc32c {
            Some(crc) => crc32c::crc32c_combine(self.crc, crc, chunk.data.len()),
            None => crc32c::crc32c_append(self.crc, &chunk.data),
        };
        self.dirty = true;
        self.need_ack = true;
        self.batch_bytes += chunk.data.len() as u64;
        Ok(Vec::new())
    }

    fn on_seal(&mut self, s: Seal) -> Result<Vec<Command>, Misuse> {
        if self.closing {
            return Ok(Vec::new());
        }
        match self.receiver.on_seal(&s) {
            Err(r) => Ok(self.refuse(r)),
            Ok(SealAction::AlreadyDone) => {
                self.need_ack = true;
                Ok(Vec::new())
            }
            Ok(SealAction::Verify) => {
                if self.seals.len() >= MAX_SEALS_PER_GROUP {
                    return Err(Misuse::Unexpected(
                        "a seal past MAX_SEALS_PER_GROUP: the group must be flushed first",
                    ));
                }
                let cmd = Command::Digest {
                    segment: s.segment.clone(),
                    size: s.size,
                };
                self.pending = Some(Pending::Digest(s));
                Ok(vec![cmd])
            }
        }
    }

    /// Invariant 2: the record says sealed only after the checksum of the
    /// stored bytes matched. The fdatasync, the rename and the directory
    /// fsync that make it complete on disk are the group's flush; until its
    /// commit the record is not sealed.
    fn on_digest(&mut self, sha256: [u8; 32], now_ms: u64) -> Result<Vec<Command>, Misuse> {
        let Some(Pending::Digest(s)) = self.pending.take() else {
            return Err(Misuse::Unexpected(
                "a digest reported that was not asked for",
            ));
        };
        if let Err(r) = Receiver::check_digest(&s, &sha256, &self.chain_head) {
            return Ok(self.refuse(r));
        }
        // `on_seal` asks to verify only a seal of the unsealed tail, whose
        // record the session has (from the catalog or `on_created`).
        let Some(rec) = self.tail.as_mut() else {
            return Err(Misuse::Unexpected("a seal verified without a tail record"));
        };
        self.seals.push(SealedSegment {
            segment: s.segment.clone(),
            sync: self.dirty,
        });
        self.dirty = false;
        self.receiver.sealed();
        rec.size = s.size;
        rec.sealed = true;
        rec.sha256 = Some(sha256);
        rec.sealed_at_ms = Some(now_ms);
        rec.chain = Some(s.chain);
        rec.check = None;
        self.chain_head = s.chain;
        self.changed.push(rec.clone());
        self.need_ack = true;
        Ok(vec![Command::Sealed(rec.clone())])
    }

    fn on_keepalive(&mut self, epoch: Epoch) -> Vec<Command> {
        if self.closing {
            return Vec::new();
        }
        if epoch < self.receiver.epoch {
            let current = self.receiver.epoch;
            return self.refuse(Reject::StaleEpoch {
                got: epoch,
                current,
            });
        }
        self.need_ack = true;
        Vec::new()
    }

    /// Cuts the group: everything accepted so far goes to one flush.
    fn drained(&mut self) -> Vec<Command> {
        self.batch_bytes = 0;
        if self.flush_failed
            && !crate::mutation::active(crate::mutation::Mutation::FlushAfterFailedFlush)
        {
            // Nothing accepted since goes to a flush (see `flush_failed`).
            return vec![Command::Close];
        }
        if !self.need_ack {
            if self.closing && self.in_flight.is_none() {
                return vec![Command::Close];
            }
            return Vec::new();
        }
        if self.in_flight.is_some() {
            // One flush at a time: the next one's previous point must be
            // fully synced before its commit begins (see `tail::recover`).
            return vec![Command::AwaitFlush];
        }
        let mut rollback = None;
        if let (Some(rec), Some(tail)) = (self.tail.as_mut(), self.receiver.tail.as_ref()) {
            // A segment just started whose first write failed has a record
            // but no accepted byte yet: it stays at size 0.
            if rec.segment == tail.segment && !rec.sealed {
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
                    prev_size: size,
                    prev_crc32c: crc,
                });
            }
            match self.changed.iter_mut().find(|c| c.segment == rec.segment) {
                Some(c) => *c = rec.clone(),
                None => self.changed.push(rec.clone()),
            }
        }
        let records = std::mem::take(&mut self.changed);
        // The tail's ack says whether the tail is sealed; a group that
        // sealed segments before it acks the last of those first (sync
        // wal-push and spool pruning wait for a segment's sealed ack).
        let tail_sealed = self.tail.as_ref().is_none_or(|r| r.sealed);
        let sealed_ack = records
            .iter()
            .rev()
            .find(|r| r.sealed && !tail_sealed)
            .cloned();
        // fdatasync covers every byte written before it is called, so once
        // it is handed over the file is clean as of this point.
        let tail_sync = self
            .dirty
            .then(|| self.tail.as_ref().map(|t| (t.segment.clone(), t.size)))
            .flatten();
        let seals = std::mem::take(&mut self.seals);
        let new_entry = std::mem::take(&mut self.new_entry);
        let group = Group {
            steps: Flush::new(tail_sync.is_some(), !seals.is_empty() || new_entry),
            tail_pending: tail_sync.is_some(),
            names_pending: !seals.is_empty() || new_entry,
            names_done: false,
            tail_sync,
            seals,
            records,
            chain_head: self.chain_head,
            tail: self.tail.clone(),
            sealed_ack,
            rollback: rollback.filter(|_| self.dirty),
            started: false,
            commit: Phase::NotStarted,
            failed: false,
            acked: false,
        };
        self.dirty = false;
        self.need_ack = false;
        self.in_flight = Some(
            self.tail
                .as_ref()
                .filter(|r| !r.sealed)
                .map(|r| (r.size, r.check.map_or(0, |c| c.crc32c))),
        );
        vec![Command::Flush(Box::new(group))]
    }
}

/// A step of a group's flush as the driver reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    Done(Step),
    Failed(Step),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Started,
    Done,
    Failed,
}

/// One group being made durable: which step comes next, when it may be
/// acked (drd-core's [`Flush`] rule: after the tail's fdatasync, the names
/// and the commit), and what to put back when the tail's fdatasync failed.
/// The driver may carry it to another thread: it holds everything its
/// flush needs.
#[derive(Clone, Debug)]
pub struct Group {
    /// The group-commit rule: which steps this group needs, which are done.
    steps: Flush,
    /// The tail to fdatasync and how many of its bytes that covers.
    tail_sync: Option<(SegmentName, u64)>,
    /// The tail's fdatasync and the names step are still running: the
    /// group is not over (a failed one ends them too).
    tail_pending: bool,
    names_pending: bool,
    /// The names step succeeded: the seals carry their complete names.
    names_done: bool,
    /// Segments sealed in the group, in order: renamed by its names step.
    seals: Vec<SealedSegment>,
    /// What its commit writes, and the chain head after its seals.
    records: Vec<Record>,
    chain_head: [u8; 32],
    /// The tail's record as this flush makes it durable (for the ack).
    tail: Option<Record>,
    /// The last segment sealed in the group when it is not the tail: it
    /// gets an ack of its own before the tail's.
    sealed_ack: Option<Record>,
    /// The tail's record at the last fully synced point, put back if the
    /// fdatasync fails after the commit went through.
    rollback: Option<Record>,
    /// [`Group::start`] ran (it hands out the first steps once).
    started: bool,
    /// Where the catalog commit is: it begins only after the names.
    commit: Phase,
    /// A step failed: no ack, no commit that has not begun.
    failed: bool,
    /// The acks went out (once).
    acked: bool,
}

impl Group {
    /// The first steps: the tail's fdatasync (beside the rest), then the
    /// names or, when the group sealed nothing and created no file, the
    /// commit right away (one flush of latency: fdatasync ∥ commit).
    pub fn start(&mut self) -> Result<Vec<Command>, Misuse> {
        if self.started {
            return Err(Misuse::Unexpected("a group started twice"));
        }
        self.started = true;
        let mut out = Vec::new();
        if let Some((segment, len)) = &self.tail_sync {
            out.push(Command::SyncTail {
                segment: segment.clone(),
                len: *len,
            });
        }
        if self.steps.makes_names_durable() {
            out.push(Command::MakeNamesDurable {
                seals: self.seals.clone(),
            });
        } else {
            self.begin_commit(&mut out);
        }
        Ok(out)
    }

    fn begin_commit(&mut self, out: &mut Vec<Command>) {
        if self.commit == Phase::NotStarted && !self.failed && self.steps.may_commit() {
            self.commit = Phase::Started;
            out.push(Command::Commit {
                records: self.records.clone(),
                chain_head: self.chain_head,
            });
        }
    }

    /// Takes in a completed or failed step.
    pub fn handle(&mut self, ev: GroupEvent) -> Result<Vec<Command>, Misuse> {
        let mut out = Vec::new();
        match ev {
            GroupEvent::Done(step) => {
                self.steps.done(step)?;
                match step {
                    Step::TailSynced => self.tail_pending = false,
                    Step::NamesDurable => {
                        self.names_pending = false;
                        self.names_done = true;
                        if self.failed {
                            // The tail failed first: no commit will name
                            // these files complete.
                            self.undo_names(&mut out);
                        }
                        self.begin_commit(&mut out);
                    }
                    Step::Committed => {
                        self.commit = Phase::Done;
                        if self.failed {
                            self.roll_back(&mut out);
                        }
                    }
                }
                if !self.failed && !self.acked && self.steps.ackable() {
                    self.acked = true;
                    if let Some(s) = &self.sealed_ack {
                        out.push(Command::Ack(Ack::of(Some(s))));
                    }
                    out.push(Command::Ack(Ack::of(self.tail.as_ref())));
                }
            }
            GroupEvent::Failed(step) => {
                self.failed = true;
                match step {
                    Step::TailSynced => {
                        self.tail_pending = false;
                        // The commit may already record bytes that did not
                        // reach the disk (nothing here was acked).
                        if self.commit == Phase::Done {
                            self.roll_back(&mut out);
                        }
                    }
                    // The commit never begins: the records would name
                    // files whose names are not durable.
                    Step::NamesDurable => self.names_pending = false,
                    Step::Committed => {
                        self.commit = Phase::Failed;
                        self.undo_names(&mut out);
                    }
                }
            }
        }
        Ok(out)
    }

    fn undo_names(&mut self, out: &mut Vec<Command>) {
        if crate::mutation::active(crate::mutation::Mutation::KeepNamesAfterFailedGroup) {
            return;
        }
        if self.names_done && !self.seals.is_empty() {
            out.push(Command::UndoNames {
                seals: self.seals.clone(),
            });
        }
    }

    fn roll_back(&mut self, out: &mut Vec<Command>) {
        if crate::mutation::active(crate::mutation::Mutation::SkipTailRollback) {
            return;
        }
        if let Some(back) = self.rollback.take() {
            out.push(Command::RollBack(back));
        }
    }

    /// The tail's record as this flush makes it durable.
    pub fn tail(&self) -> Option<&Record> {
        self.tail.as_ref()
    }

    /// The segments sealed in the group, in order.
    pub fn seals(&self) -> &[SealedSegment] {
        &self.seals
    }

    pub fn acked(&self) -> bool {
        self.acked
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// No step is pending any more: report [`Event::Flushed`] (or
    /// [`Event::FlushFailed`] when [`Group::failed`]) to the session.
    pub fn over(&self) -> bool {
        let pending = self.tail_pending || self.names_pending || self.commit == Phase::Started;
        let waiting_commit = self.commit == Phase::NotStarted && !self.failed;
        self.started && !pending && !waiting_commit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sha2::{Digest, Sha256};

    fn seg(n: u64) -> SegmentName {
        SegmentName::new(format!("{n:024X}")).unwrap()
    }

    fn chunk(epoch: Epoch, n: u64, start: u64, offset: u64, data: &[u8]) -> Chunk {
        Chunk {
            epoch,
            segment: seg(n),
            segment_start: start,
            offset,
            data: Bytes::copy_from_slice(data),
            source_position: 0,
            written_at_ms: 0,
            source_lsn: Default::default(),
            data_crc32c: None,
        }
    }

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn seal(n: u64, start: u64, data: &[u8], head: &[u8; 32]) -> Seal {
        let digest = sha(data);
        Seal {
            epoch: 1,
            segment: seg(n),
            segment_start: start,
            size: data.len() as u64,
            sha256: digest,
            source_position: 0,
            chain: crate::chain::link(head, &digest, seg(n).as_str(), data.len() as u64),
        }
    }

    /// Feeds a chunk and reports its I/O as done.
    fn write(s: &mut Session, c: Chunk) {
        let mut cmds = s
            .handle(Event::Chunk {
                chunk: c,
                now_ms: 5,
            })
            .unwrap();
        while let Some(cmd) = cmds.pop() {
            match cmd {
                Command::Create { .. } => cmds = s.handle(Event::Created).unwrap(),
                Command::Write(_) => assert!(s.handle(Event::Written).unwrap().is_empty()),
                other => panic!("{other:?}"),
            }
        }
    }

    fn seal_verified(s: &mut Session, seal: Seal, stored: &[u8]) -> Vec<Command> {
        let cmds = s.handle(Event::Seal(seal)).unwrap();
        assert!(matches!(cmds[..], [Command::Digest { .. }]), "{cmds:?}");
        s.handle(Event::Digest {
            sha256: sha(stored),
            now_ms: 9,
        })
        .unwrap()
    }

    fn flush(s: &mut Session) -> Box<Group> {
        let mut cmds = s.handle(Event::Drained).unwrap();
        match cmds.pop() {
            Some(Command::Flush(g)) if cmds.is_empty() => g,
            other => panic!("{other:?}"),
        }
    }

    fn acks(cmds: &[Command]) -> Vec<Ack> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Ack(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_group_is_acked_only_after_its_data_sync_names_and_commit() {
        let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 1 << 20);
        write(&mut s, chunk(1, 1, 0, 0, b"aaaa"));
        let sealed = seal_verified(&mut s, seal(1, 0, b"aaaa", &crate::chain::GENESIS), b"aaaa");
        assert!(matches!(&sealed[..], [Command::Sealed(r)] if r.sealed && r.size == 4));
        write(&mut s, chunk(1, 2, 4, 0, b"bb"));
        let mut g = flush(&mut s);
        assert!(s.flushing());

        let cmds = g.start().unwrap();
        assert!(
            matches!(&cmds[..], [Command::SyncTail { len: 2, .. }, Command::MakeNamesDurable { seals }]
                if seals == &[SealedSegment { segment: seg(1), sync: true }]),
            "{cmds:?}"
        );
        // The commit waits for the names; the ack for the commit and the
        // tail's fdatasync.
        let cmds = g.handle(GroupEvent::Done(Step::NamesDurable)).unwrap();
        let [Command::Commit { records, .. }] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        assert_eq!(records.len(), 2);
        assert!(records[0].sealed && !records[1].sealed && records[1].size == 2);
        assert!(acks(&g.handle(GroupEvent::Done(Step::Committed)).unwrap()).is_empty());
        assert!(!g.over());
        let cmds = g.handle(GroupEvent::Done(Step::TailSynced)).unwrap();
        assert_eq!(
            acks(&cmds),
            vec![
                Ack {
                    durable: 4,
                    segment: Some(seg(1)),
                    size: 4,
                    sealed: true
                },
                Ack {
                    durable: 6,
                    segment: Some(seg(2)),
                    size: 2,
                    sealed: false
                }
            ],
            "the sealed segment's ack first, then the tail's"
        );
        assert!(g.over() && !g.failed());
        s.handle(Event::Flushed).unwrap();

        // The next group's record names this one's point as its previous.
        write(&mut s, chunk(1, 2, 4, 2, b"cc"));
        let mut g = flush(&mut s);
        let cmds = g.start().unwrap();
        let Command::Commit { records, .. } = &cmds[1] else {
            panic!("{cmds:?}")
        };
        let check = records[0].check.unwrap();
        assert_eq!((check.prev_size, records[0].size), (2, 4));
        assert_eq!(check.prev_crc32c, crc32c::crc32c(b"bb"));
        assert_eq!(check.crc32c, crc32c::crc32c(b"bbcc"));
    }

    #[test]
    fn the_running_crc_from_wire_crcs_is_the_crc_of_the_bytes() {
        let crc_after = |with_wire_crc: bool| {
            let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 1 << 20);
            for (offset, data) in [(0, &b"abc"[..]), (3, &[7u8; 1000][..]), (1003, b"z")] {
                let mut c = chunk(1, 1, 0, offset, data);
                c.data_crc32c = with_wire_crc.then(|| crc32c::crc32c(data));
                write(&mut s, c);
            }
            let g = flush(&mut s);
            g.tail().and_then(|r| r.check).unwrap().crc32c
        };
        let mut bytes = b"abc".to_vec();
        bytes.extend([7u8; 1000]);
        bytes.push(b'z');
        assert_eq!(crc_after(false), crc32c::crc32c(&bytes));
        assert_eq!(crc_after(true), crc32c::crc32c(&bytes));
    }

    #[test]
    fn nothing_is_acked_past_what_was_written() {
        let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 1 << 20);
        write(&mut s, chunk(1, 1, 0, 0, b"aaaa"));
        // The next write fails (disk full): it is not accepted.
        let cmds = s
            .handle(Event::Chunk {
                chunk: chunk(1, 1, 0, 4, b"bbbb"),
                now_ms: 0,
            })
            .unwrap();
        assert!(matches!(cmds[..], [Command::Write(_)]));
        assert!(
            s.handle(Event::Drained).is_err(),
            "the write's outcome first"
        );
        s.handle(Event::Failed).unwrap();
        assert!(s.closing());
        let mut g = flush(&mut s);
        let cmds = g.start().unwrap();
        let mut acked = Vec::new();
        for step in [Step::NamesDurable, Step::Committed, Step::TailSynced] {
            acked.extend(acks(&g.handle(GroupEvent::Done(step)).unwrap()));
        }
        assert!(matches!(cmds[0], Command::SyncTail { len: 4, .. }));
        assert_eq!(acked.len(), 1);
        assert_eq!(acked[0].durable, 4);
        s.handle(Event::Flushed).unwrap();
        // Nothing more is taken; the session closes.
        assert!(s
            .handle(Event::Chunk {
                chunk: chunk(1, 1, 0, 4, b"bbbb"),
                now_ms: 0
            })
            .unwrap()
            .is_empty());
        assert!(matches!(
            s.handle(Event::Drained).unwrap()[..],
            [Command::Close]
        ));
    }

    #[test]
    fn a_failed_group_gives_its_renamed_segments_back_their_partial_names() {
        // Commit failed after the names: undo. Tail failed before the names
        // were done: undo when they are, and no commit.
        for tail_fails_first in [false, true] {
            let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 1 << 20);
            write(&mut s, chunk(1, 1, 0, 0, b"aaaa"));
            seal_verified(&mut s, seal(1, 0, b"aaaa", &crate::chain::GENESIS), b"aaaa");
            write(&mut s, chunk(1, 2, 4, 0, b"bb"));
            let mut g = flush(&mut s);
            g.start().unwrap();
            let undo = |cmds: &[Command]| {
                cmds.iter().any(|c| {
                    matches!(c, Command::UndoNames { seals } if seals.len() == 1 && seals[0].segment == seg(1))
                })
            };
            if tail_fails_first {
                assert!(!undo(
                    &g.handle(GroupEvent::Failed(Step::TailSynced)).unwrap()
                ));
                let cmds = g.handle(GroupEvent::Done(Step::NamesDurable)).unwrap();
                assert!(undo(&cmds), "{cmds:?}");
                assert!(!cmds.iter().any(|c| matches!(c, Command::Commit { .. })));
            } else {
                let cmds = g.handle(GroupEvent::Done(Step::NamesDurable)).unwrap();
                assert!(cmds.iter().any(|c| matches!(c, Command::Commit { .. })));
                assert!(undo(
                    &g.handle(GroupEvent::Failed(Step::Committed)).unwrap()
                ));
                g.handle(GroupEvent::Done(Step::TailSynced)).unwrap();
            }
            assert!(g.over() && g.failed() && !g.acked());
        }
    }

    #[test]
    fn after_a_failed_flush_nothing_more_is_flushed() {
        let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 1 << 20);
        write(&mut s, chunk(1, 1, 0, 0, b"aaaa"));
        let mut g = flush(&mut s);
        g.start().unwrap();
        // Written while the flush runs: accepted, owed an ack.
        write(&mut s, chunk(1, 1, 0, 4, b"bbbb"));
        g.handle(GroupEvent::Done(Step::NamesDurable)).unwrap();
        g.handle(GroupEvent::Failed(Step::TailSynced)).unwrap();
        g.handle(GroupEvent::Done(Step::Committed)).unwrap();
        assert!(g.over() && g.failed());
        s.handle(Event::FlushFailed).unwrap();
        // The tail's pages may be gone: the bytes written after the failed
        // group are not flushed (and so never acked) by this session.
        assert!(matches!(
            s.handle(Event::Drained).unwrap()[..],
            [Command::Close]
        ));
    }

    #[test]
    fn a_failed_tail_sync_rolls_the_record_back_and_acks_nothing() {
        let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 1 << 20);
        write(&mut s, chunk(1, 1, 0, 0, b"aaaa"));
        let mut g = flush(&mut s);
        g.start().unwrap();
        for step in [Step::NamesDurable, Step::Committed, Step::TailSynced] {
            g.handle(GroupEvent::Done(step)).unwrap();
        }
        s.handle(Event::Flushed).unwrap();

        write(&mut s, chunk(1, 1, 0, 4, b"bbbb"));
        let mut g = flush(&mut s);
        let cmds = g.start().unwrap();
        assert!(matches!(
            cmds[..],
            [Command::SyncTail { len: 8, .. }, Command::Commit { .. }]
        ));
        assert!(acks(&g.handle(GroupEvent::Done(Step::Committed)).unwrap()).is_empty());
        let cmds = g.handle(GroupEvent::Failed(Step::TailSynced)).unwrap();
        let [Command::RollBack(back)] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        assert_eq!(back.size, 4, "back to the last fully synced point");
        assert_eq!(
            back.check,
            Some(PartialCheck {
                crc32c: crc32c::crc32c(b"aaaa"),
                prev_size: 4,
                prev_crc32c: crc32c::crc32c(b"aaaa")
            })
        );
        assert!(g.over() && g.failed() && !g.acked());
        s.handle(Event::FlushFailed).unwrap();
        assert!(s.closing());

        // A tail sync that fails while the commit runs: the rollback
        // follows the commit; one that fails first stops nothing else but
        // the ack.
        let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 1 << 20);
        write(&mut s, chunk(1, 1, 0, 0, b"aaaa"));
        let mut g = flush(&mut s);
        g.start().unwrap();
        g.handle(GroupEvent::Failed(Step::TailSynced)).unwrap();
        g.handle(GroupEvent::Done(Step::NamesDurable)).unwrap();
        let cmds = g.handle(GroupEvent::Done(Step::Committed)).unwrap();
        assert!(
            matches!(&cmds[..], [Command::RollBack(b)] if b.size == 0),
            "{cmds:?}"
        );
        assert!(g.over() && !g.acked());
    }

    #[test]
    fn failed_names_never_reach_the_catalog() {
        let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 1 << 20);
        write(&mut s, chunk(1, 1, 0, 0, b"aaaa"));
        let mut g = flush(&mut s);
        g.start().unwrap();
        assert!(g
            .handle(GroupEvent::Failed(Step::NamesDurable))
            .unwrap()
            .is_empty());
        assert!(!g.over(), "the tail's fdatasync still runs");
        assert!(acks(&g.handle(GroupEvent::Done(Step::TailSynced)).unwrap()).is_empty());
        assert!(g.over() && g.failed());
        assert!(
            g.handle(GroupEvent::Done(Step::Committed)).is_err(),
            "a commit that was never asked for"
        );
    }

    #[test]
    fn a_group_holds_at_most_max_seals() {
        let mut s = Session::new(1, None, 0, crate::chain::GENESIS, u64::MAX);
        let mut head = crate::chain::GENESIS;
        for n in 0..MAX_SEALS_PER_GROUP as u64 {
            assert!(!s.batch_full());
            write(&mut s, chunk(1, n + 1, n, 0, b"x"));
            let sl = seal(n + 1, n, b"x", &head);
            head = sl.chain;
            seal_verified(&mut s, sl, b"x");
        }
        assert!(s.batch_full());
        let n = MAX_SEALS_PER_GROUP as u64;
        write(&mut s, chunk(1, n + 1, n, 0, b"x"));
        assert!(
            s.handle(Event::Seal(seal(n + 1, n, b"x", &head))).is_err(),
            "one seal too many"
        );
        let mut s2 = s.clone();
        let mut g = flush(&mut s2);
        assert_eq!(g.seals().len(), MAX_SEALS_PER_GROUP);
        assert!(!s2.batch_full());
        g.start().unwrap();

        // The group size in bytes cuts a batch too.
        let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 8);
        write(&mut s, chunk(1, 1, 0, 0, b"aaaa"));
        assert!(!s.batch_full());
        write(&mut s, chunk(1, 1, 0, 4, b"bbbb"));
        assert!(s.batch_full());
    }

    #[test]
    fn refused_messages_change_nothing_and_close_the_session() {
        let mut s = Session::new(2, None, 0, crate::chain::GENESIS, 1 << 20);
        let cmds = s
            .handle(Event::Chunk {
                chunk: chunk(1, 1, 0, 0, b"a"),
                now_ms: 0,
            })
            .unwrap();
        assert!(matches!(
            cmds[..],
            [Command::Refuse(Reject::StaleEpoch { got: 1, current: 2 })]
        ));
        assert!(s.closing() && s.tail().is_none());
        assert!(matches!(
            s.handle(Event::Drained).unwrap()[..],
            [Command::Close]
        ));

        // A gap past what was accepted; a chunk past the window of a sealed
        // segment; a seal whose bytes differ.
        let mut s = Session::new(2, None, 0, crate::chain::GENESIS, 1 << 20);
        write(&mut s, chunk(2, 1, 0, 0, b"aaaa"));
        let cmds = s
            .handle(Event::Chunk {
                chunk: chunk(2, 1, 0, 5, b"b"),
                now_ms: 0,
            })
            .unwrap();
        assert!(matches!(
            cmds[..],
            [Command::Refuse(Reject::Discontinuity { .. })]
        ));
        assert_eq!(s.tail().unwrap().size, 4);
        // What was accepted before is still flushed and acked.
        let mut g = flush(&mut s);
        assert_eq!(g.tail().unwrap().size, 4);
        g.start().unwrap();

        let mut s = Session::new(2, None, 0, crate::chain::GENESIS, 1 << 20);
        write(&mut s, chunk(2, 1, 0, 0, b"aaaa"));
        let mut sl = seal(1, 0, b"aaaa", &crate::chain::GENESIS);
        sl.epoch = 2;
        let cmds = seal_verified(&mut s, sl, b"aaab");
        assert!(matches!(
            cmds[..],
            [Command::Refuse(Reject::SealChecksum { .. })]
        ));
        assert!(!s.tail().unwrap().sealed, "stays partial");
        let mut g = flush(&mut s);
        assert!(g.seals().is_empty());
        assert!(!g.start().unwrap().iter().any(|c| matches!(
            c,
            Command::Commit { records, .. } if records.iter().any(|r| r.sealed)
        )));
    }

    #[test]
    fn one_flush_at_a_time_and_a_new_tail_keeps_its_own_point() {
        let mut s = Session::new(1, None, 0, crate::chain::GENESIS, 1 << 20);
        write(&mut s, chunk(1, 1, 0, 0, b"aaaa"));
        let mut g = flush(&mut s);
        g.start().unwrap();
        write(&mut s, chunk(1, 1, 0, 4, b"bb"));
        assert!(matches!(
            s.handle(Event::Drained).unwrap()[..],
            [Command::AwaitFlush]
        ));
        let seal1 = seal(1, 0, b"aaaabb", &crate::chain::GENESIS);
        seal_verified(&mut s, seal1, b"aaaabb");
        write(&mut s, chunk(1, 2, 6, 0, b"c"));
        for step in [Step::NamesDurable, Step::Committed, Step::TailSynced] {
            g.handle(GroupEvent::Done(step)).unwrap();
        }
        s.handle(Event::Flushed).unwrap();
        let mut g = flush(&mut s);
        let cmds = g.start().unwrap();
        let [Command::SyncTail { .. }, Command::MakeNamesDurable { seals }] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        assert!(seals[0].sync, "bytes were written since the last sync");
        let cmds = g.handle(GroupEvent::Done(Step::NamesDurable)).unwrap();
        let [Command::Commit { records, .. }] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        // The new tail's check starts from nothing, not from segment 1.
        let check = records[1].check.unwrap();
        assert_eq!((check.prev_size, check.prev_crc32c), (0, 0));
        assert_eq!(records[1].received_at_ms, 5);
        assert_eq!(records[0].sealed_at_ms, Some(9));
        s.handle(Event::Flushed).unwrap();
        assert!(s.handle(Event::Flushed).is_err(), "reported twice");
    }
}
