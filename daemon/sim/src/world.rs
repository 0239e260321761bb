//! One seeded schedule: 2 to 4 drd nodes and 1 to 4 streams, driven by the
//! real drd-core rules over drd-core's in-memory disk
//! ([`drd_core::storage::mem::MemDisk`], through the storage traits), a simulated
//! network and a simulated clock.
//!
//! Each stream lives at two nodes, its first primary and its DR node
//! ([`Shape`]): node N-1 is the DR site of every stream but the last, and
//! the first primary of that one, so one node holds replicas of several
//! streams and is primary of another (roles and epochs are per stream, as
//! in the daemon). A quarter of the seeds (all with `--legacy`) have the
//! first simulator's shape, 2 nodes and 1 stream, and then the same
//! schedule as before for the same seed.
//!
//! What is per (node, stream) — a *slot*: the catalog (records, chain
//! head, role and epoch, fork), the database's source, the sessions, what
//! it acked, the stream's directory on the node's disk (its own directory
//! fsync). What is per node: up or down and its incarnation (a crash or
//! power cut hits every stream there, a full disk too), and the links to
//! other nodes (partitions, one way too). What is per stream: the newest
//! primary's log (the oracle), old sessions for the replay fault, a
//! switchover in progress. Connections are between two slots of a stream.
//!
//! The drivers here do what the daemon's do (`primary/shipper.rs`,
//! `replica/disk.rs`, `replica/reconcile.rs`, `ops/`): they carry out the
//! core's decisions — every rule (handshake, resume point, window, seal,
//! epoch and continuity checks, when to ack, crash recovery of a partial
//! tail, the rejoin cut, role changes) is drd-core's or drd-proto's code.
//!
//! Faults come at random moments: partitions (one way or both), connection
//! resets, process crashes (kill -9: the page cache survives), power cuts
//! (unsynced writes lost, torn at sector granularity), a full disk, bit rot
//! at rest (sealed and partial files), a corrupted frame, a duplicated or
//! reordered chunk, a replayed session of an older epoch, a hostile ack.
//! A rejoin's quarantine can be cut short by a crash. Operator actions, each
//! on one stream: failover and rejoin (carried out as drd-core's
//! `failover::Failover` and `rejoin::Rejoin` order their steps), switchover
//! (`switchover::Switchover`), pause, verify.
//!
//! After every step the invariants of DESIGN.md are checked per stream (the
//! checks at each event, [`World::check_replica_log`]); an operator's step
//! must not change another stream's role or epoch at any node; after the
//! fault phase everything heals and every stream's lag must reach 0 in
//! bounded time.

use bytes::Bytes;
use drd_core::durability::Step;
use drd_core::failover::{self, OldPrimary, Outcome as FoOutcome};
use drd_core::rejoin::{self, Outcome as RjOutcome};
use drd_core::replica::{self, Command, Event, GroupEvent, SealedSegment};
use drd_core::roles::{self, Role, RoleState};
use drd_core::sender::{self, Cursor, Next, ReplicaEnd, Resume, SourceView};
use drd_core::storage::mem::{landing_path, Entropy, Landing, MemDisk, MemError};
use drd_core::storage::{Catalog as _, FileState, SegmentStore, Source};
use drd_core::switchover::{self, OnFailure, Step as SwStep};
use drd_core::tail::PartialCheck;
use drd_core::{chain, fork, handshake};
use drd_proto::{pb, Chunk, Seal, SegmentName, ShipMsg};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

mod faults;
mod ops;

/// Simulated time in microseconds.
pub type Us = u64;
const MS: Us = 1_000;
const SEC: Us = 1_000_000;

/// Largest segment the simulated database writes.
const SEG_BYTES: u64 = 256;
const LIMITS: sender::Limits = sender::Limits {
    chunk_bytes: 64,
    window_bytes: 256,
};
/// A session with no message for this long is given up (both sides).
const IDLE: Us = 400 * MS;
/// Fault phase of each schedule; then everything heals.
const FAULT_PHASE: Us = 3 * SEC;
/// How many streams' worth of writes a schedule makes at most (each of S
/// streams writes at a tick with probability WRITE_STREAMS / S).
const WRITE_STREAMS: f64 = 2.0;
/// Liveness: after healing, every stream's lag must reach 0 within this.
const LIVENESS: Us = 30 * SEC;

/// Kinds of fault, for the summary table.
pub const FAULTS: [&str; 14] = [
    "partition",
    "one-way partition",
    "connection reset",
    "crash (kill -9)",
    "power cut",
    "disk full",
    "bit rot (sealed)",
    "bit rot (partial)",
    "corrupt frame",
    "duplicate chunk",
    "reorder chunks",
    "replayed old session",
    "hostile ack",
    "crash during quarantine",
];
/// The faults drawn at random moments; the last one strikes only during
/// a rejoin's quarantine step.
const DRAWN_FAULTS: usize = 13;
const QUARANTINE_CRASH: usize = 13;

/// What one schedule did and found.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub sim_us: Us,
    pub events: u64,
    pub faults: [u64; FAULTS.len()],
    pub failovers: u64,
    pub switchovers: u64,
    pub switchovers_rolled_back: u64,
    pub rejoins: u64,
    /// Failovers refused before their commit (drd-core's failover outcome).
    pub failovers_refused: u64,
    /// Failovers whose fence request never went out, or got no answer.
    pub fence_not_reached: u64,
    pub fence_unknown: u64,
    /// Rejoins refused with nothing changed, or stopped after the
    /// quarantine began (drd-core's rejoin outcome).
    pub rejoins_refused: u64,
    pub rejoins_partly_quarantined: u64,
    pub verifies: u64,
    pub bytes_written: u64,
    /// The schedule's shape: nodes, streams, (node, stream) slots.
    pub nodes: u64,
    pub streams: u64,
    pub node_streams: u64,
    /// Schedules whose replica stopped on corruption it detected (a seal
    /// whose checksum did not match after bit rot): lag cannot reach 0
    /// without an operator, so liveness is not required of it.
    pub stalled_on_detected_corruption: bool,
    /// `--io-faults`: flush steps that failed, by [`IO_ERRORS`].
    pub io_errors: [u64; IO_ERRORS.len()],
    pub violations: Vec<String>,
}

/// The flush steps `--io-faults` fails (EIO), in the summary's order.
pub const IO_ERRORS: [&str; 3] = [
    "tail fdatasync failed",
    "seal fdatasync failed (pre-rename)",
    "catalog commit failed",
];

/// With `--io-faults`, the chance that one flush step fails.
const IO_ERROR_P: f64 = 0.02;

fn name_of(idx: u64) -> SegmentName {
    #[allow(clippy::expect_used)] // 24 hex digits are always a valid name
    SegmentName::new(format!("{idx:024X}")).expect("valid segment name")
}

fn idx_of(name: &str) -> Option<u64> {
    let base = name.strip_suffix(drd_proto::PARTIAL_SUFFIX).unwrap_or(name);
    (base.len() == 24).then(|| u64::from_str_radix(base, 16).ok())?
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The schedule's generator as the choices of a power cut: the same draws
/// as when the disk was the simulator's own, so a seed's schedule is
/// unchanged.
struct Draws<'a>(&'a mut SmallRng);

impl Entropy for Draws<'_> {
    fn upto(&mut self, n: usize) -> usize {
        self.0.random_range(0..=n)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p)
    }
}

/// Where a segment of a node's log is: the database's WAL (read as a
/// [`Source`]) or the landing directory (a [`SegmentStore`]), partial or
/// complete.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Loc {
    Wal(u64),
    Land(u64, FileState),
}

impl Loc {
    /// The whole file; empty if there is none.
    fn read(&self, disk: &mut MemDisk) -> Vec<u8> {
        match *self {
            Loc::Wal(i) => disk.wal().read(&name_of(i), 0, u64::MAX),
            Loc::Land(i, st) => disk.landing().read(&name_of(i), st, 0, u64::MAX),
        }
        .unwrap_or_default()
    }

    /// The file's size; None if there is none.
    fn len(&self, disk: &mut MemDisk) -> Option<u64> {
        match *self {
            Loc::Wal(i) => {
                let name = name_of(i);
                let listed = disk.wal().list(Some(&name)).ok()?;
                listed
                    .into_iter()
                    .next()
                    .filter(|s| s.name == name)
                    .map(|s| s.size)
            }
            Loc::Land(i, st) => disk.landing().size(&name_of(i), st).ok().flatten(),
        }
    }

    /// The file's path on the [`MemDisk`]: for what the storage traits do
    /// not cover (a rejoin's quarantine, which is the ops layer's own).
    fn path(&self) -> String {
        match *self {
            Loc::Wal(i) => wal(i),
            Loc::Land(i, st) => land(i, st == FileState::Partial),
        }
    }
}

/// Where a catalog record's bytes are (replica/reconcile.rs's choice): the
/// source, or the complete file if its seal renamed it, else the partial.
fn rec_loc(disk: &mut MemDisk, r: &Rec) -> Loc {
    if r.in_source {
        return Loc::Wal(r.idx);
    }
    let complete = Loc::Land(r.idx, FileState::Complete);
    if r.sealed && complete.len(disk).is_some() {
        complete
    } else {
        Loc::Land(r.idx, FileState::Partial)
    }
}

/// A segment record in a node's catalog (RocksDB in the daemon).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    idx: u64,
    start: u64,
    size: u64,
    sealed: bool,
    sha: Option<[u8; 32]>,
    chain: Option<[u8; 32]>,
    check: Option<PartialCheck>,
    fork: bool,
    in_source: bool,
}

impl Rec {
    fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The durable catalog: what a synced RocksDB commit made durable.
#[derive(Clone, Debug)]
struct Catalog {
    recs: BTreeMap<u64, Rec>,
    chain_head: [u8; 32],
    state: RoleState,
    /// The fork of this node's current epoch: (segment, position).
    fork: Option<(u64, u64)>,
}

/// A group being made durable at a replica (replica/disk.rs's FlushJob):
/// drd-core's [`replica::Group`] and the I/O it asked for.
#[derive(Debug)]
struct Job {
    id: u64,
    group: Box<replica::Group>,
    /// The tail segment and how many of its bytes the fdatasync covers.
    tail: Option<(SegmentName, u64)>,
    /// The segments sealed in the group, renamed (after an fdatasync when
    /// asked) by its MakeNamesDurable.
    renames: Vec<SealedSegment>,
    /// What the commit writes, once it began.
    records: Vec<replica::Record>,
    chain_head: [u8; 32],
    commit_started: bool,
    committed: bool,
    conn: u64,
}

/// A replica's session (replica/disk.rs's DiskWorker, one at a time):
/// drd-core's [`replica::Session`] holds its state; this holds the I/O.
#[derive(Debug)]
struct Recv {
    conn: u64,
    session: replica::Session,
    /// The tail's catalog record as the session began: what the core does
    /// not keep (fork, in_source) comes from it.
    base: Option<Rec>,
    job: Option<Job>,
    flush_queued: bool,
    last_seen: Us,
}

/// A primary's session (primary/shipper.rs's session).
#[derive(Debug)]
struct Send {
    conn: u64,
    welcomed: bool,
    session: sender::Session,
    cursor: Option<Cursor>,
    /// The replica's last sealed segment when there is no cursor yet.
    after: Option<(u64, u64)>,
    chain: [u8; 32],
    epoch: u64,
    last_seen: Us,
}

#[derive(Debug)]
struct Node {
    up: bool,
    /// Bumped at each crash: events of an older incarnation are void.
    life: u64,
    cat: Catalog,
    disk: MemDisk,
    /// The database's WAL segments at this node: index → start position.
    src: BTreeMap<u64, u64>,
    /// The database writes (only at the newest primary, not held).
    db_on: bool,
    db_hold: bool,
    recv: Option<Recv>,
    send: Option<Send>,
    /// The highest position this node acked as a replica.
    acked_max: u64,
    /// Sealed segments whose bytes rotted at rest (excluded from byte
    /// checks; verify must find them).
    rotted: BTreeSet<u64>,
    /// Segments whose partial bytes rotted before their seal.
    rotted_partial: BTreeSet<u64>,
    stalled_on_rot: bool,
    paused: bool,
    /// A switchover promoted the other node: this one must write nothing
    /// more as a primary.
    handed_over: bool,
    /// Bytes past a fork that a cut began to quarantine and did not
    /// finish: the next cut must leave them in quarantine too.
    quar_owed: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Msg {
    Hello {
        epoch: u64,
    },
    Welcome(ReplicaEndMsg),
    Refuse {
        epoch: u64,
        stale: bool,
    },
    Ship(Box<pb::ShipMessage>),
    Ack {
        durable: u64,
        sealed: bool,
        segment: String,
    },
    Fence {
        epoch: u64,
    },
    Close,
}

#[derive(Debug, Clone)]
struct ReplicaEndMsg {
    durable: u64,
    end: Option<ReplicaEnd>,
    chain: [u8; 32],
}

#[derive(Debug)]
enum Ev {
    Deliver {
        conn: u64,
        to: usize,
        msg: Msg,
    },
    DbWrite,
    Connect {
        node: usize,
        life: u64,
    },
    Flush {
        node: usize,
        life: u64,
    },
    FlushStep {
        node: usize,
        life: u64,
        job: u64,
        step: Step,
    },
    Restart {
        node: usize,
    },
    Fault,
    Heal,
    Operator,
    Idle,
    SwitchoverCheck {
        stream: usize,
    },
}

/// Stream `s`'s slots: `2s` at its first primary's node, `2s + 1` at its
/// DR node; a slot's peer is the other one.
fn peer(slot: usize) -> usize {
    slot ^ 1
}

fn stream_of(slot: usize) -> usize {
    slot / 2
}

/// How many nodes a schedule has and which two are each stream's homes.
#[derive(Debug, Clone)]
pub struct Shape {
    pub nodes: usize,
    /// Per stream: [first primary's node, DR node].
    homes: Vec<[usize; 2]>,
}

impl Shape {
    /// The shape of a seed's schedule, drawn from its own RNG (the
    /// schedule's draws are not moved by it). A quarter of the seeds, and
    /// every seed with `legacy`, keep the first simulator's shape: 2 nodes,
    /// 1 stream, node 0 its primary — the same schedule as before for the
    /// same seed. The others: 2..=4 nodes and 1..=4 streams; node N-1 is
    /// the DR node of every stream but the last, and (with 2 streams or
    /// more) the first primary of the last one, which replicates to
    /// another node: one node is the DR site of several streams and primary
    /// of another (roles per stream).
    fn of(seed: u64, legacy: bool) -> Shape {
        let mut r = SmallRng::seed_from_u64(seed ^ 0x5ba9_e000_0000_0002);
        if legacy || r.random_bool(0.25) {
            return Shape {
                nodes: 2,
                homes: vec![[0, 1]],
            };
        }
        let nodes = r.random_range(2..=4);
        let streams = r.random_range(1..=4);
        let dr = nodes - 1;
        let homes = (0..streams)
            .map(|s| {
                let other = r.random_range(0..dr);
                if streams > 1 && s == streams - 1 {
                    [dr, other]
                } else {
                    [other, dr]
                }
            })
            .collect();
        Shape { nodes, homes }
    }

    pub fn streams(&self) -> usize {
        self.homes.len()
    }

    /// The node a slot lives at.
    fn node_of(&self, slot: usize) -> usize {
        self.homes[slot / 2][slot % 2]
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} nodes, {} streams:", self.nodes, self.streams())?;
        for (s, [from, to]) in self.homes.iter().enumerate() {
            write!(f, " stream {s}: node {from} -> node {to};")?;
        }
        Ok(())
    }
}

/// The world of one seed.
pub struct World {
    rng: SmallRng,
    /// Draws added after the schedules' shape was fixed (the crash during
    /// a quarantine): seeded apart, so that `rng`'s sequence, and with it
    /// every older schedule, stays as it was.
    aux: SmallRng,
    /// `--io-faults`: the draws of failed fdatasyncs and commits, seeded
    /// apart from `rng` (None: the flushes never fail, as in the soaked
    /// schedules).
    io: Option<SmallRng>,
    now: Us,
    seq: u64,
    queue: BinaryHeap<Reverse<(Us, u64, usize)>>,
    events: Vec<Option<Ev>>,
    /// How many nodes and streams, and where each stream lives.
    shape: Shape,
    /// One slot per (node, stream): stream `s` lives in slots `2s` (its
    /// first primary's node) and `2s + 1` (its DR node); see [`peer`].
    nodes: Vec<Node>,
    /// Per stream: the newest primary's log, what a correct DR copy must be
    /// a prefix of, and the slot that owns it.
    canon: Vec<Vec<u8>>,
    canon_owner: Vec<usize>,
    /// Per stream: lag reached 0 after the faults healed.
    caught: Vec<bool>,
    conns: BTreeMap<u64, ConnState>,
    next_conn: u64,
    /// Links between nodes (not slots) that lose what is sent: [from][to].
    links_down: Vec<Vec<bool>>,
    /// Per stream: sessions' messages as sent, for the replay fault:
    /// (epoch, messages).
    history: Vec<Vec<(u64, Vec<Msg>)>>,
    next_job: u64,
    healed: bool,
    heal_at: Us,
    /// Per stream: a switchover in progress.
    switchover: Vec<Option<Switchover>>,
    trace: bool,
    pub out: Outcome,
    /// Pending network faults for the next chunk on a connection.
    corrupt_next: bool,
    dup_next: bool,
    reorder_next: bool,
    held_reorder: Option<(u64, usize, Msg)>,
}

#[derive(Debug, Clone, Copy)]
struct ConnState {
    from: usize,
    to: usize,
    open: bool,
    /// Last delivery time per direction (to the replica, to the primary):
    /// a stream delivers in order.
    last: [Us; 2],
    /// Replayed traffic of an old session: the primary end is gone.
    replay: bool,
}

#[derive(Debug, Clone)]
struct Switchover {
    primary: usize,
    deadline: Us,
    /// drd-core's step machine.
    steps: switchover::Switchover,
}

impl World {
    pub fn new(seed: u64, trace: bool, legacy: bool, io_faults: bool) -> Self {
        let shape = Shape::of(seed, legacy);
        let mk = |role| Node {
            up: true,
            life: 0,
            cat: Catalog {
                recs: BTreeMap::new(),
                chain_head: chain::GENESIS,
                state: RoleState::new(role, 1),
                fork: None,
            },
            disk: MemDisk::default(),
            src: BTreeMap::new(),
            db_on: role == Role::Primary,
            db_hold: false,
            recv: None,
            send: None,
            acked_max: 0,
            rotted: BTreeSet::new(),
            rotted_partial: BTreeSet::new(),
            stalled_on_rot: false,
            paused: false,
            handed_over: false,
            quar_owed: Vec::new(),
        };
        let mut w = World {
            rng: SmallRng::seed_from_u64(seed),
            aux: SmallRng::seed_from_u64(seed ^ 0x5eed_a0c5_0000_0001),
            io: io_faults.then(|| SmallRng::seed_from_u64(seed ^ 0x10e5_f0a1_0000_0003)),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes: (0..shape.streams())
                .flat_map(|_| [mk(Role::Primary), mk(Role::Replica)])
                .collect(),
            canon: vec![Vec::new(); shape.streams()],
            canon_owner: (0..shape.streams()).map(|s| 2 * s).collect(),
            caught: vec![false; shape.streams()],
            conns: BTreeMap::new(),
            next_conn: 1,
            links_down: vec![vec![false; shape.nodes]; shape.nodes],
            history: vec![Vec::new(); shape.streams()],
            next_job: 1,
            healed: false,
            heal_at: FAULT_PHASE,
            switchover: vec![None; shape.streams()],
            shape,
            trace,
            out: Outcome::default(),
            corrupt_next: false,
            dup_next: false,
            reorder_next: false,
            held_reorder: None,
        };
        w.out.nodes = w.shape.nodes as u64;
        w.out.streams = w.shape.streams() as u64;
        w.out.node_streams = w.nodes.len() as u64;
        w.log(|| format!("{}", w.shape));
        for p in (0..w.nodes.len()).step_by(2) {
            w.nodes[p].src.insert(1, 0);
            w.nodes[p].disk.append_durable(&wal(1), &[]);
        }
        w.at(0, Ev::DbWrite);
        for p in (0..w.nodes.len()).step_by(2) {
            w.at(0, Ev::Connect { node: p, life: 0 });
        }
        let f = w.rng.random_range(50 * MS..400 * MS);
        w.at(f, Ev::Fault);
        let o = w.rng.random_range(100 * MS..800 * MS);
        w.at(o, Ev::Operator);
        w.at(IDLE / 2, Ev::Idle);
        w.at(FAULT_PHASE, Ev::Heal);
        w
    }

    fn at(&mut self, t: Us, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((t.max(self.now), self.seq, self.events.len() - 1)));
    }

    fn after(&mut self, d: Us, ev: Ev) {
        self.at(self.now + d, ev);
    }

    fn violation(&mut self, what: String) {
        let what = self.named(&what);
        if self.trace {
            println!("{:>10} VIOLATION {what}", self.now);
        }
        if self.out.violations.len() < 20 {
            self.out
                .violations
                .push(format!("t={}us: {what}", self.now));
        }
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>10} {}", self.now, self.named(&what()));
        }
    }

    /// Messages name a (node, stream) slot as `slot K`; what is printed
    /// names its node and stream: `node N/sS` (`node N` alone: the node).
    fn named(&self, what: &str) -> String {
        let mut out = String::with_capacity(what.len() + 8);
        let mut rest = what;
        while let Some(i) = rest.find("slot ") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 5..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            match after[..digits].parse::<usize>() {
                Ok(k) if k < self.nodes.len() => {
                    out.push_str(&format!("node {}/s{}", self.shape.node_of(k), stream_of(k)));
                }
                _ => out.push_str(&rest[i..i + 5 + digits]),
            }
            rest = &after[digits..];
        }
        out.push_str(rest);
        out
    }

    /// Runs the schedule to its end.
    pub fn run(mut self) -> Outcome {
        let end = FAULT_PHASE + LIVENESS;
        while let Some(Reverse((t, _, i))) = self.queue.pop() {
            if t > end {
                break;
            }
            self.now = t;
            let Some(ev) = self.events[i].take() else {
                continue;
            };
            self.out.events += 1;
            self.step(ev);
            if !self.out.violations.is_empty() {
                break;
            }
            if self.healed && self.all_caught_up() {
                self.final_checks();
                self.out.sim_us = self.now;
                return self.out;
            }
        }
        self.out.sim_us = self.now;
        if self.out.violations.is_empty() {
            for st in 0..self.shape.streams() {
                let p = self.canon_owner[st];
                let r = peer(p);
                if self.caught[st] {
                    continue;
                }
                if self.nodes[p].stalled_on_rot || self.nodes[r].stalled_on_rot {
                    self.out.stalled_on_detected_corruption = true;
                    continue;
                }
                let msg = format!(
                    "liveness: stream {st}: {}s after the faults healed, lag is not 0 (canon {} \
                     bytes, replica slot {r} durable {} as {:?}, primary slot {p} believes {:?}, \
                     slot {p} {:?})",
                    LIVENESS / SEC,
                    self.canon[st].len(),
                    self.log_end(r),
                    self.nodes[r].cat.state.role,
                    self.nodes[p].send.as_ref().map(|s| s.session.acked()),
                    self.nodes[p].cat.state.role,
                );
                self.violation(msg);
            }
            if self.out.violations.is_empty() {
                self.final_checks();
            }
        }
        self.out
    }

    /// Every stream's lag has reached 0 since the faults healed (once
    /// there, it stays: nothing writes after the heal).
    fn all_caught_up(&mut self) -> bool {
        let mut all = true;
        for st in 0..self.shape.streams() {
            if !self.caught[st] {
                self.caught[st] = self.caught_up(st);
                all &= self.caught[st];
            }
        }
        all
    }

    fn caught_up(&self, st: usize) -> bool {
        let p = self.canon_owner[st];
        let r = peer(p);
        let want = self.canon[st].len() as u64;
        self.nodes[r].cat.state.role == Role::Replica
            && self.nodes[p].cat.state.role == Role::Primary
            && self.log_end(r) == want
            && self.nodes[r].recv.as_ref().is_none_or(|s| s.job.is_none())
            && self.nodes[p]
                .send
                .as_ref()
                .is_some_and(|s| s.welcomed && s.session.acked() == want)
    }

    /// Every slot's (role, epoch).
    fn roles(&self) -> Vec<(Role, u64)> {
        self.nodes
            .iter()
            .map(|n| (n.cat.state.role, n.cat.state.epoch))
            .collect()
    }

    /// An operator's step on one stream never changes another stream's
    /// role or epoch at any node (roles are per stream).
    fn check_isolation(&mut self, before: &[(Role, u64)], acted: Option<usize>) {
        let after = self.roles();
        for (slot, (b, a)) in before.iter().zip(&after).enumerate() {
            if b != a && acted != Some(stream_of(slot)) {
                let msg = format!(
                    "an operation on stream {acted:?} changed slot {slot} of stream {} from {b:?} \
                     to {a:?}",
                    stream_of(slot)
                );
                self.violation(msg);
            }
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { conn, to, msg } => self.deliver(conn, to, msg),
            Ev::DbWrite => self.db_write(),
            Ev::Connect { node, life } => {
                if self.nodes[node].life == life {
                    self.connect(node)
                }
            }
            Ev::Flush { node, life } => {
                if self.nodes[node].life == life {
                    if let Some(r) = self.nodes[node].recv.as_mut() {
                        r.flush_queued = false;
                    }
                    self.flush(node)
                }
            }
            Ev::FlushStep {
                node,
                life,
                job,
                step,
            } => {
                if self.nodes[node].life == life {
                    self.flush_step(node, job, step)
                }
            }
            Ev::Restart { node } => self.restart(node),
            Ev::Fault => {
                if !self.healed {
                    self.fault();
                    let d = self.rng.random_range(20 * MS..500 * MS);
                    self.after(d, Ev::Fault);
                }
            }
            Ev::Heal => self.heal(),
            Ev::Operator => {
                self.operator();
                let d = if self.healed {
                    self.rng.random_range(100 * MS..300 * MS)
                } else {
                    self.rng.random_range(100 * MS..900 * MS)
                };
                self.after(d, Ev::Operator);
            }
            Ev::Idle => {
                self.idle();
                self.after(IDLE / 4, Ev::Idle);
            }
            Ev::SwitchoverCheck { stream } => {
                self.on_stream(stream, |w| w.switchover_check(stream));
            }
        }
    }

    // ----- the network -----

    fn open_conn(&mut self, from: usize, to: usize, replay: bool) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            ConnState {
                from,
                to,
                open: true,
                last: [self.now; 2],
                replay,
            },
        );
        id
    }

    /// Whether what slot `from` sends to slot `to` is lost (the link
    /// between their nodes is cut).
    fn blocked(&self, from: usize, to: usize) -> bool {
        self.links_down[self.shape.node_of(from)][self.shape.node_of(to)]
    }

    /// Sends on a connection: in order, after a random latency; lost (and
    /// the connection with it) across a partition.
    fn send_msg(&mut self, conn: u64, to: usize, msg: Msg) {
        let Some(c) = self.conns.get(&conn).copied() else {
            return;
        };
        if !c.open {
            return;
        }
        let from = if to == c.to { c.from } else { c.to };
        if self.blocked(from, to) {
            // The segment never arrives; the stream is dead. Both ends
            // notice only by their idle timeouts.
            self.log(|| format!("net: conn {conn} {from}->{to} lost {}", short(&msg)));
            if let Some(c) = self.conns.get_mut(&conn) {
                c.open = false;
            }
            return;
        }
        let dir = usize::from(to == c.from);
        let lat = self.rng.random_range(50..2_000);
        let t = (self.now + lat).max(c.last[dir]);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last[dir] = t;
        }
        if let Msg::Ship(_) = &msg {
            if let Some(h) = self.history[stream_of(to)].last_mut() {
                if h.1.len() < 64 {
                    h.1.push(msg.clone());
                }
            }
        }
        let msg = self.network_faults(conn, to, msg, t);
        if let Some(msg) = msg {
            self.at(t, Ev::Deliver { conn, to, msg });
        }
    }

    /// A hostile or broken network between the TLS ends: a flipped bit
    /// (the chunk CRC must catch it), a duplicated or reordered chunk (the
    /// continuity checks must).
    fn network_faults(&mut self, conn: u64, to: usize, mut msg: Msg, t: Us) -> Option<Msg> {
        let Msg::Ship(m) = &mut msg else {
            return Some(msg);
        };
        let Some(pb::ship_message::Msg::Chunk(c)) = &mut m.msg else {
            return Some(msg);
        };
        if self.corrupt_next && !c.data.is_empty() {
            self.corrupt_next = false;
            let mut d = c.data.to_vec();
            let i = self.rng.random_range(0..d.len());
            d[i] ^= 1 << self.rng.random_range(0..8);
            c.data = Bytes::from(d);
            self.log(|| format!("net: corrupted a chunk on conn {conn}"));
        }
        if self.dup_next {
            self.dup_next = false;
            self.at(
                t + 1,
                Ev::Deliver {
                    conn,
                    to,
                    msg: msg.clone(),
                },
            );
            self.log(|| format!("net: duplicated a chunk on conn {conn}"));
        }
        if self.reorder_next {
            self.reorder_next = false;
            self.held_reorder = Some((conn, to, msg));
            self.log(|| format!("net: holding a chunk on conn {conn} to reorder it"));
            return None;
        }
        if let Some((hc, hto, held)) = self.held_reorder.take() {
            if hc == conn {
                self.at(
                    t + 1,
                    Ev::Deliver {
                        conn,
                        to: hto,
                        msg: held,
                    },
                );
            }
        }
        Some(msg)
    }

    fn close_conn(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.open = false;
        }
    }

    fn deliver(&mut self, conn: u64, to: usize, msg: Msg) {
        let Some(c) = self.conns.get(&conn).copied() else {
            return;
        };
        if !self.nodes[to].up {
            self.close_conn(conn);
            return;
        }
        // A replayed session has no live sender: nothing goes back.
        let replay = c.replay;
        if !c.open && !replay {
            return;
        }
        self.log(|| format!("deliver conn {conn} -> slot {to}: {}", short(&msg)));
        match msg {
            Msg::Hello { epoch } => self.on_hello(to, conn, epoch),
            Msg::Ship(m) => self.on_ship(to, conn, *m),
            Msg::Welcome(w) => self.on_welcome(to, conn, w),
            Msg::Refuse { epoch, stale } => self.on_refuse(to, conn, epoch, stale),
            Msg::Ack {
                durable,
                sealed,
                segment,
            } => self.on_ack(to, conn, durable, sealed, &segment),
            Msg::Fence { epoch } => self.fence(to, epoch, "the new primary told it to"),
            Msg::Close => {
                if self.nodes[to].send.as_ref().is_some_and(|s| s.conn == conn) {
                    self.end_send(to);
                }
                if self.nodes[to].recv.as_ref().is_some_and(|s| s.conn == conn) {
                    self.end_recv(to);
                }
            }
        }
    }

    // ----- the database at the primary -----

    /// The databases write: the newest primary's WAL is the log every
    /// replica must hold; a stale primary (cut off by a partition, not yet
    /// fenced) writes too, into a log that its rejoin must quarantine.
    fn db_write(&mut self) {
        let d = self.rng.random_range(MS / 2..8 * MS);
        self.after(d, Ev::DbWrite);
        // With many streams each writes less often: a seed's cost stays
        // about that of two streams.
        let share = WRITE_STREAMS / self.shape.streams() as f64;
        for p in 0..self.nodes.len() {
            let n = &self.nodes[p];
            if self.healed || !n.up || !n.db_on || n.db_hold || n.cat.state.role != Role::Primary {
                continue;
            }
            if share < 1.0 && !self.rng.random_bool(share) {
                continue;
            }
            let n = &self.nodes[p];
            let Some((&idx, &start)) = n.src.iter().next_back() else {
                continue;
            };
            if n.handed_over {
                let msg = format!(
                    "invariant 4: slot {p}'s database accepted writes after its switchover \
                     handed the stream to slot {}: those COMMITs would be lost",
                    peer(p)
                );
                self.violation(msg);
                return;
            }
            let size = n.disk.len(&wal(idx)).unwrap_or(0);
            let idx = if size >= SEG_BYTES {
                let i = idx + 1;
                self.nodes[p].src.insert(i, start + size);
                self.nodes[p].disk.append_durable(&wal(i), &[]);
                i
            } else {
                idx
            };
            let len = self.rng.random_range(1..=64u64).min(SEG_BYTES);
            let data: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
            self.nodes[p].disk.append_durable(&wal(idx), &data);
            if p == self.canon_owner[stream_of(p)] {
                self.canon[stream_of(p)].extend_from_slice(&data);
                self.out.bytes_written += len;
            }
            self.pump(p);
        }
    }

    // ----- the primary's shipper -----

    fn connect(&mut self, node: usize) {
        let n = &self.nodes[node];
        if !n.up || n.send.is_some() || n.cat.state.role != Role::Primary || n.paused {
            return;
        }
        let epoch = n.cat.state.epoch;
        let conn = self.open_conn(node, peer(node), false);
        self.nodes[node].send = Some(Send {
            conn,
            welcomed: false,
            session: sender::Session::default(),
            cursor: None,
            after: None,
            chain: chain::GENESIS,
            epoch,
            last_seen: self.now,
        });
        let h = &mut self.history[stream_of(node)];
        h.push((epoch, vec![Msg::Hello { epoch }]));
        if h.len() > 8 {
            h.remove(0);
        }
        self.log(|| format!("slot {node} connects (conn {conn}, epoch {epoch})"));
        self.send_msg(conn, peer(node), Msg::Hello { epoch });
    }

    fn end_send(&mut self, node: usize) {
        if let Some(s) = self.nodes[node].send.take() {
            self.close_conn(s.conn);
            self.log(|| format!("slot {node} ends its session (conn {})", s.conn));
        }
        let life = self.nodes[node].life;
        let d = self.rng.random_range(20 * MS..200 * MS);
        self.after(d, Ev::Connect { node, life });
    }

    /// The first segment of this node's log after `after` (None: the
    /// first of all): (index, start).
    fn seg_after(&self, node: usize, after: Option<u64>) -> Option<(u64, u64)> {
        let n = &self.nodes[node];
        let from = after.map_or(0, |a| a + 1);
        let r = n.cat.recs.range(from..).next().map(|(&i, r)| (i, r.start));
        let s = n.src.range(from..).next().map(|(&i, &st)| (i, st));
        match (r, s) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// One segment of this node's log: (start, where, sealed).
    fn seg_at(&mut self, node: usize, idx: u64) -> Option<(u64, Loc, bool)> {
        let n = &mut self.nodes[node];
        if let Some(r) = n.cat.recs.get(&idx) {
            return Some((r.start, rec_loc(&mut n.disk, r), r.sealed));
        }
        n.src.get(&idx).map(|&st| (st, Loc::Wal(idx), false))
    }

    /// Every segment of this node's log: index → (start, where, sealed).
    fn own_log(&mut self, node: usize) -> BTreeMap<u64, (u64, Loc, bool)> {
        let n = &mut self.nodes[node];
        let mut log = BTreeMap::new();
        for r in n.cat.recs.values() {
            log.insert(r.idx, (r.start, rec_loc(&mut n.disk, r), r.sealed));
        }
        for (&i, &s) in &n.src {
            log.entry(i).or_insert((s, Loc::Wal(i), false));
        }
        log
    }

    fn on_welcome(&mut self, node: usize, conn: u64, w: ReplicaEndMsg) {
        let Some(s) = self.nodes[node].send.as_mut().filter(|s| s.conn == conn) else {
            return;
        };
        s.last_seen = self.now;
        s.welcomed = true;
        s.session = sender::Session::new(w.durable, w.end.as_ref());
        s.chain = w.chain;
        let log = self.own_log(node);
        let resumed = match sender::resume(w.end.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                self.violation(format!("slot {node}: an honest Welcome was refused: {e}"));
                return;
            }
        };
        let cursor = match resumed {
            Resume::FromFirst => log.iter().next().map(|(&i, &(start, _, _))| Cursor {
                segment: name_of(i),
                start,
                offset: 0,
            }),
            Resume::Continue(c) => {
                if idx_of(c.segment.as_str()).is_none_or(|i| !log.contains_key(&i)) {
                    self.violation(format!(
                        "slot {node}: the replica's partial segment {} is not in this log",
                        c.segment
                    ));
                    return;
                }
                Some(c)
            }
            Resume::After { sealed, next_start } => {
                let i = idx_of(sealed.as_str()).unwrap_or(0);
                match log.range(i + 1..).next() {
                    Some((&n, &(start, _, _))) => {
                        if start != next_start {
                            self.violation(format!(
                                "slot {node}: segment {n} starts at {start} but the replica's log \
                                 ends at {next_start}"
                            ));
                            return;
                        }
                        Some(Cursor {
                            segment: name_of(n),
                            start,
                            offset: 0,
                        })
                    }
                    None => {
                        if let Some(s) = self.nodes[node].send.as_mut() {
                            s.after = Some((i, next_start));
                        }
                        None
                    }
                }
            }
        };
        if let Some(s) = self.nodes[node].send.as_mut() {
            s.cursor = cursor;
        }
        self.pump(node);
    }

    /// Sends what the sender allows now.
    fn pump(&mut self, node: usize) {
        for _ in 0..64 {
            let n = &self.nodes[node];
            if !n.up || n.cat.state.role != Role::Primary {
                if n.send.is_some() && n.cat.state.role == Role::Fenced {
                    // A fenced node ships nothing.
                    self.end_send(node);
                }
                return;
            }
            let Some(s) = n.send.as_ref().filter(|s| s.welcomed) else {
                return;
            };
            let conn = s.conn;
            let cur = match &s.cursor {
                Some(c) => c.clone(),
                None => {
                    // Wait for a segment after the replica's last sealed one.
                    let Some((i, next_start)) = s.after else {
                        let Some((i, start)) = self.seg_after(node, None) else {
                            return;
                        };
                        let c = Cursor {
                            segment: name_of(i),
                            start,
                            offset: 0,
                        };
                        if let Some(s) = self.nodes[node].send.as_mut() {
                            s.cursor = Some(c);
                        }
                        continue;
                    };
                    let Some((n2, start)) = self.seg_after(node, Some(i)) else {
                        return;
                    };
                    if start != next_start {
                        self.violation(format!("slot {node}: a gap after segment {i}"));
                        return;
                    }
                    if let Some(s) = self.nodes[node].send.as_mut() {
                        s.cursor = Some(Cursor {
                            segment: name_of(n2),
                            start,
                            offset: 0,
                        });
                        s.after = None;
                    }
                    continue;
                }
            };
            let i = idx_of(cur.segment.as_str()).unwrap_or(0);
            let Some((_, loc, sealed)) = self.seg_at(node, i) else {
                self.violation(format!("slot {node}: segment {i} disappeared from its log"));
                return;
            };
            let data = loc.read(&mut self.nodes[node].disk);
            let size = self.nodes[node]
                .cat
                .recs
                .get(&i)
                .filter(|r| r.sealed)
                .map_or(data.len() as u64, |r| r.size);
            let complete = sealed || self.seg_after(node, Some(i)).is_some();
            let Some(s) = self.nodes[node].send.as_ref() else {
                return;
            };
            let next = s
                .session
                .next(&cur, SourceView { size, complete }, LIMITS, u64::MAX);
            match next {
                Err(e) => {
                    self.violation(format!("slot {node}: sender stopped on its own log: {e}"));
                    return;
                }
                Ok(Next::WaitForAcks { .. }) | Ok(Next::WaitForSource) => return,
                Ok(Next::Chunk { len, end }) => {
                    let a = cur.offset as usize;
                    let bytes = Bytes::copy_from_slice(&data[a..a + len as usize]);
                    let epoch = self.nodes[node].cat.state.epoch;
                    let chunk = Chunk {
                        epoch,
                        segment: cur.segment.clone(),
                        segment_start: cur.start,
                        offset: cur.offset,
                        data: bytes,
                        source_position: self.canon[stream_of(node)].len() as u64,
                        written_at_ms: self.now / MS,
                        source_lsn: Default::default(),
                        data_crc32c: None,
                    };
                    if let Some(s) = self.nodes[node].send.as_mut() {
                        s.session.sent_chunk(end);
                        if let Some(c) = s.cursor.as_mut() {
                            c.offset += len;
                        }
                    }
                    let m = pb::ShipMessage::from(ShipMsg::Chunk(chunk));
                    self.send_msg(conn, peer(node), Msg::Ship(Box::new(m)));
                }
                Ok(Next::Seal { size }) => {
                    let digest = sha(&data[..size as usize]);
                    let Some(s) = self.nodes[node].send.as_mut() else {
                        return;
                    };
                    s.chain = chain::link(&s.chain, &digest, cur.segment.as_str(), size);
                    let seal = Seal {
                        epoch: s.epoch,
                        segment: cur.segment.clone(),
                        segment_start: cur.start,
                        size,
                        sha256: digest,
                        source_position: self.canon[stream_of(node)].len() as u64,
                        chain: s.chain,
                    };
                    let chain_after = s.chain;
                    s.session.sent_seal(&cur.segment);
                    let next_start = cur.start + size;
                    s.cursor = None;
                    s.after = Some((i, next_start));
                    // The primary records its sealed source segment.
                    let n = &mut self.nodes[node];
                    if !n.cat.recs.get(&i).is_some_and(|r| r.sealed) {
                        n.cat.recs.insert(
                            i,
                            Rec {
                                idx: i,
                                start: cur.start,
                                size,
                                sealed: true,
                                sha: Some(digest),
                                chain: Some(chain_after),
                                check: None,
                                fork: false,
                                in_source: matches!(loc, Loc::Wal(_)),
                            },
                        );
                        n.cat.chain_head = chain_after;
                    }
                    let m = pb::ShipMessage::from(ShipMsg::Seal(seal));
                    self.send_msg(conn, peer(node), Msg::Ship(Box::new(m)));
                }
            }
        }
    }

    fn on_ack(&mut self, node: usize, conn: u64, durable: u64, sealed: bool, segment: &str) {
        // What the replica really holds durable: what it acked, or its
        // durable log end (a Welcome reports that).
        let replica_acked = self.nodes[peer(node)]
            .acked_max
            .max(self.log_end(peer(node)));
        let Some(s) = self.nodes[node].send.as_mut().filter(|s| s.conn == conn) else {
            return;
        };
        s.last_seen = self.now;
        match s.session.on_ack(durable, sealed, segment) {
            Ok(_) => {
                if s.session.acked() > replica_acked {
                    let msg = format!(
                        "slot {node} believes the replica holds {} bytes durable, but it acked \
                         only {replica_acked}: lag and sync acks would lie",
                        s.session.acked()
                    );
                    self.violation(msg);
                }
                self.pump(node);
            }
            Err(e) => {
                self.log(|| format!("slot {node} refuses an ack: {e}"));
                self.end_send(node);
            }
        }
    }

    fn on_refuse(&mut self, node: usize, conn: u64, epoch: u64, stale: bool) {
        if self.nodes[node]
            .send
            .as_ref()
            .is_none_or(|s| s.conn != conn)
        {
            return;
        }
        self.end_send(node);
        if stale {
            self.fence(node, epoch, "the replica has a newer epoch");
        }
    }

    /// roles::fence: a primary that learns of a newer epoch stops.
    fn fence(&mut self, node: usize, epoch: u64, why: &str) {
        let st = self.nodes[node].cat.state.clone();
        if let Some(next) = roles::fence(&st, epoch, why) {
            self.log(|| format!("slot {node}: {:?} -> {:?} ({why})", st.role, next.role));
            self.nodes[node].cat.state = next;
            if self.nodes[node].cat.state.role == Role::Fenced {
                self.nodes[node].db_on = false;
                self.nodes[node].handed_over = false;
                if self.nodes[node].send.is_some() {
                    self.end_send(node);
                }
            }
        }
    }

    // ----- the replica's session -----

    fn on_hello(&mut self, node: usize, conn: u64, epoch: u64) {
        let replay = self.conns.get(&conn).is_some_and(|c| c.replay);
        if self.nodes[node]
            .recv
            .as_ref()
            .is_some_and(|r| r.job.is_some())
        {
            // A new session waits for the old one's flush (the daemon
            // ends the old session and waits for its disk worker).
            self.after(
                MS,
                Ev::Deliver {
                    conn,
                    to: node,
                    msg: Msg::Hello { epoch },
                },
            );
            return;
        }
        let st = self.nodes[node].cat.state.clone();
        match handshake::admit(&st, epoch) {
            handshake::Admit::Accept { adopt } => {
                if epoch < st.epoch {
                    self.violation(format!(
                        "invariant 3: slot {node} at epoch {} accepted a session from epoch {epoch}",
                        st.epoch
                    ));
                    return;
                }
                if let Some(e) = adopt {
                    if let Some(next) = roles::fence(&st, e, "") {
                        self.nodes[node].cat.state = next;
                    }
                }
                self.end_recv(node);
                self.start_recv(node, conn);
            }
            handshake::Admit::Stale { current } => {
                if !replay {
                    self.send_msg(
                        conn,
                        peer(node),
                        Msg::Refuse {
                            epoch: current,
                            stale: true,
                        },
                    );
                }
            }
            handshake::Admit::FenceSelf { seen } => {
                self.fence(node, seen, "a newer primary connected");
                self.send_msg(conn, peer(node), Msg::Close);
            }
            handshake::Admit::Retry
            | handshake::Admit::RefusePrimary
            | handshake::Admit::RefuseFenced => {
                self.send_msg(conn, peer(node), Msg::Close);
            }
        }
    }

    fn start_recv(&mut self, node: usize, conn: u64) {
        let n = &self.nodes[node];
        let tail_rec = n.cat.recs.values().next_back().cloned();
        let crc = tail_rec
            .as_ref()
            .and_then(|r| r.check)
            .map_or(0, |c| c.crc32c);
        let epoch = n.cat.state.epoch;
        let welcome = ReplicaEndMsg {
            durable: tail_rec.as_ref().map_or(0, Rec::end),
            end: tail_rec.as_ref().map(|r| ReplicaEnd {
                segment: name_of(r.idx),
                start: r.start,
                size: r.size,
                sealed: r.sealed,
            }),
            chain: n.cat.chain_head,
        };
        // No group size limit: a batch is what arrives at one instant.
        let session = replica::Session::new(
            epoch,
            tail_rec.as_ref().map(core_rec),
            crc,
            n.cat.chain_head,
            u64::MAX,
        );
        self.nodes[node].recv = Some(Recv {
            conn,
            session,
            base: tail_rec,
            job: None,
            flush_queued: false,
            last_seen: self.now,
        });
        self.send_msg(conn, peer(node), Msg::Welcome(welcome));
    }

    fn end_recv(&mut self, node: usize) {
        if let Some(r) = self.nodes[node].recv.take() {
            self.close_conn(r.conn);
        }
    }

    fn on_ship(&mut self, node: usize, conn: u64, m: pb::ShipMessage) {
        let Some(r) = self.nodes[node].recv.as_mut() else {
            return;
        };
        if r.conn != conn || r.session.closing() {
            return;
        }
        r.last_seen = self.now;
        // The real wire boundary: drd-proto validates (CRC, names, sizes).
        let msg = match ShipMsg::try_from(m) {
            Ok(m) => m,
            Err(e) => {
                self.log(|| format!("slot {node} refuses a message: {e}"));
                self.refuse(node);
                return;
            }
        };
        let r = match msg {
            ShipMsg::Chunk(c) => self.apply_chunk(node, c),
            ShipMsg::Seal(s) => self.apply_seal(node, s),
            ShipMsg::Keepalive { epoch, .. } => self.apply_keepalive(node, epoch),
            ShipMsg::Hello(_) => Ok(()),
        };
        if let Err(e) = r {
            self.log(|| format!("slot {node} refuses: {e}"));
            self.refuse(node);
            return;
        }
        let full = self.nodes[node]
            .recv
            .as_ref()
            .is_some_and(|r| r.session.batch_full());
        if full {
            self.flush(node);
        }
        self.queue_flush(node);
    }

    fn queue_flush(&mut self, node: usize) {
        let life = self.nodes[node].life;
        if let Some(r) = self.nodes[node].recv.as_mut() {
            if !r.flush_queued {
                r.flush_queued = true;
                // The batch: whatever else arrives at this instant joins it.
                self.after(0, Ev::Flush { node, life });
            }
        }
    }

    /// What was accepted before a refusal is made durable and acked; then
    /// the session ends.
    fn refuse(&mut self, node: usize) {
        if let Some(r) = self.nodes[node].recv.as_mut() {
            // Only a report the session did not ask for fails here, and
            // this one it always takes.
            let _ = r.session.handle(Event::Failed);
        }
        self.queue_flush(node);
    }

    /// A driver that does not follow drd-core's session is a bug in the
    /// simulator; it stops the message like a refusal.
    fn misuse(&mut self, node: usize, e: replica::Misuse) -> String {
        self.violation(format!("slot {node}: {e}"));
        e.to_string()
    }

    fn apply_chunk(&mut self, node: usize, c: Chunk) -> Result<(), String> {
        let now_ms = self.now / MS;
        let n = &mut self.nodes[node];
        let Some(r) = n.recv.as_mut() else {
            return Ok(());
        };
        let epoch = c.epoch;
        let cmds = match r.session.handle(Event::Chunk { chunk: c, now_ms }) {
            Ok(cmds) => cmds,
            Err(e) => return Err(self.misuse(node, e)),
        };
        let mut queue = VecDeque::from(cmds);
        if let Some(Command::Refuse(e)) = queue.front() {
            return Err(e.to_string());
        }
        if epoch < n.cat.state.epoch {
            let msg = format!(
                "invariant 3: slot {node} at epoch {} accepted a chunk of epoch {epoch}",
                n.cat.state.epoch
            );
            self.violation(msg);
            return Err("lower epoch".into());
        }
        while let Some(cmd) = queue.pop_front() {
            let done = match cmd {
                Command::Create { segment } => {
                    // A name the simulator cannot index is refused, as before.
                    idx_of(segment.as_str()).ok_or("bad name")?;
                    n.disk.landing().create(&segment).map_err(io_error)?;
                    r.session.handle(Event::Created)
                }
                Command::Write(c) => {
                    idx_of(c.segment.as_str()).ok_or("bad name")?;
                    n.disk
                        .landing()
                        .write(&c.segment, c.offset, &c.data)
                        .map_err(io_error)?;
                    r.session.handle(Event::Written)
                }
                Command::Refuse(e) => return Err(e.to_string()),
                other => return Err(format!("unexpected command for a chunk: {other:?}")),
            };
            match done {
                Ok(next) => queue.extend(next),
                Err(e) => return Err(self.misuse(node, e)),
            }
        }
        Ok(())
    }

    fn apply_seal(&mut self, node: usize, s: Seal) -> Result<(), String> {
        let now_ms = self.now / MS;
        let n = &mut self.nodes[node];
        let Some(r) = n.recv.as_mut() else {
            return Ok(());
        };
        let start = s.segment_start as usize;
        let cmds = match r.session.handle(Event::Seal(s)) {
            Ok(cmds) => cmds,
            Err(e) => return Err(self.misuse(node, e)),
        };
        for cmd in cmds {
            let (segment, size) = match cmd {
                Command::Refuse(e) => return Err(e.to_string()),
                Command::Digest { segment, size } => (segment, size),
                other => return Err(format!("unexpected command for a seal: {other:?}")),
            };
            let idx = idx_of(segment.as_str()).ok_or("bad name")?;
            // The store's digest of the seal's size (a partial file
            // missing is a driver bug: the session created it).
            let digest = match n.disk.landing().digest(&segment, size) {
                Ok(d) => d,
                Err(e) => {
                    let msg = format!("slot {node}: digest of segment {idx}: {e}");
                    self.violation(msg);
                    return Err(e.to_string());
                }
            };
            // The oracle: are the file's bytes, all of them, the primary's?
            let bytes = n.disk.read(&land(idx, true));
            let intact = self.canon[stream_of(node)].get(start..start + bytes.len()) == Some(bytes);
            let verdict = match r.session.handle(Event::Digest {
                sha256: digest,
                now_ms,
            }) {
                Ok(cmds) => cmds,
                Err(e) => return Err(self.misuse(node, e)),
            };
            for cmd in verdict {
                match cmd {
                    Command::Refuse(e) => {
                        if !intact {
                            // Detected: the segment stays partial and invisible.
                            n.stalled_on_rot = true;
                        }
                        return Err(e.to_string());
                    }
                    Command::Sealed(_) if !intact => {
                        let msg = format!(
                            "invariant 2: slot {node} made segment {idx} complete although its \
                             bytes are not the primary's"
                        );
                        self.violation(msg);
                        return Err("corrupt".into());
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn apply_keepalive(&mut self, node: usize, epoch: u64) -> Result<(), String> {
        let Some(r) = self.nodes[node].recv.as_mut() else {
            return Ok(());
        };
        match r.session.handle(Event::Keepalive { epoch }) {
            Ok(cmds) => match cmds.into_iter().next() {
                Some(Command::Refuse(e)) => Err(e.to_string()),
                _ => Ok(()),
            },
            Err(e) => Err(self.misuse(node, e)),
        }
    }

    /// replica/disk.rs's `flush`: the group the session cuts goes to the
    /// syncer.
    fn flush(&mut self, node: usize) {
        let life = self.nodes[node].life;
        let job_id = self.next_job;
        let Some(r) = self.nodes[node].recv.as_mut() else {
            return;
        };
        if r.job.is_some() {
            // One flush at a time: this group follows when it is done.
            return;
        }
        let cmds = match r.session.handle(Event::Drained) {
            Ok(cmds) => cmds,
            Err(e) => {
                self.misuse(node, e);
                return;
            }
        };
        let mut group = None;
        for cmd in cmds {
            match cmd {
                Command::Flush(g) => group = Some(g),
                Command::Close => {
                    let conn = r.conn;
                    self.end_recv(node);
                    self.send_msg(conn, peer(node), Msg::Close);
                    return;
                }
                // Not here: the job's end queues the next flush.
                Command::AwaitFlush => return,
                other => {
                    self.violation(format!("slot {node}: {other:?} at a flush"));
                    return;
                }
            }
        }
        let Some(mut group) = group else {
            return;
        };
        self.next_job += 1;
        let first = match group.start() {
            Ok(cmds) => cmds,
            Err(e) => {
                self.misuse(node, e);
                return;
            }
        };
        let mut job = Job {
            id: job_id,
            group,
            tail: None,
            renames: Vec::new(),
            records: Vec::new(),
            chain_head: [0; 32],
            commit_started: false,
            committed: false,
            conn: r.conn,
        };
        let mut names = false;
        let mut commit = None;
        for cmd in first {
            match cmd {
                Command::SyncTail { segment, len } => job.tail = Some((segment, len)),
                Command::MakeNamesDurable { seals } => {
                    names = true;
                    job.renames = seals;
                }
                Command::Commit {
                    records,
                    chain_head,
                } => commit = Some((records, chain_head)),
                other => {
                    self.violation(format!("slot {node}: {other:?} to start a flush"));
                    return;
                }
            }
        }
        let syncs_tail = job.tail.is_some();
        r.job = Some(job);
        // The disk's latencies: an fdatasync from 50 µs to 8 ms.
        if syncs_tail {
            let d = self.rng.random_range(50..8 * MS);
            self.after(
                d,
                Ev::FlushStep {
                    node,
                    life,
                    job: job_id,
                    step: Step::TailSynced,
                },
            );
        }
        if names {
            let d = self.rng.random_range(50..4 * MS);
            self.after(
                d,
                Ev::FlushStep {
                    node,
                    life,
                    job: job_id,
                    step: Step::NamesDurable,
                },
            );
        } else if let Some((records, chain_head)) = commit {
            self.start_commit(node, job_id, &records, chain_head);
        }
    }

    fn start_commit(
        &mut self,
        node: usize,
        job_id: u64,
        records: &[replica::Record],
        chain_head: [u8; 32],
    ) {
        let life = self.nodes[node].life;
        let Some(r) = self.nodes[node].recv.as_mut() else {
            return;
        };
        let Some(j) = r.job.as_mut().filter(|j| j.id == job_id) else {
            return;
        };
        j.records = records.to_vec();
        j.chain_head = chain_head;
        j.commit_started = true;
        let d = self.rng.random_range(50..4 * MS);
        self.after(
            d,
            Ev::FlushStep {
                node,
                life,
                job: job_id,
                step: Step::Committed,
            },
        );
    }

    fn flush_step(&mut self, node: usize, job_id: u64, step: Step) {
        let healed = self.healed;
        if let Some(io) = self.io.as_mut().filter(|_| !healed) {
            if io.random_bool(IO_ERROR_P) {
                self.flush_step_fails(node, job_id, step);
                return;
            }
        }
        let n = &mut self.nodes[node];
        let Some(r) = n.recv.as_mut() else { return };
        let Some(j) = r.job.as_mut().filter(|j| j.id == job_id) else {
            return;
        };
        let io = match step {
            Step::TailSynced => match &j.tail {
                Some((segment, len)) => n.disk.landing().sync(segment, *len),
                None => Ok(()),
            },
            // Each seal's fdatasync (when bytes were written since the
            // last one), its rename, then the directory's fsync.
            Step::NamesDurable => n.disk.landing().make_names_durable(&j.renames),
            Step::Committed => {
                let mut cat = SlotCatalog {
                    cat: &mut n.cat,
                    base: r.base.as_ref(),
                };
                let Ok(()) = cat.commit(&j.records, j.chain_head);
                j.committed = true;
                Ok(())
            }
        };
        if let Err(e) = io {
            // The session's own files: missing is a driver bug (nothing
            // else removes them while a flush is in flight).
            self.violation(format!("slot {node}: {step:?}: {e}"));
            return;
        }
        let cmds = match j.group.handle(GroupEvent::Done(step)) {
            Ok(cmds) => cmds,
            Err(e) => {
                self.misuse(node, e);
                return;
            }
        };
        self.after_flush_step(node, job_id, cmds);
    }

    /// Carries out what a flush step's outcome asks for: the commit once
    /// the names are durable, a rollback of the tail's record, the acks.
    pub(super) fn after_flush_step(&mut self, node: usize, job_id: u64, cmds: Vec<Command>) {
        let mut acks = Vec::new();
        let mut commit = None;
        for cmd in cmds {
            match cmd {
                Command::Commit {
                    records,
                    chain_head,
                } => commit = Some((records, chain_head)),
                Command::Ack(a) => acks.push(a),
                // The tail's fdatasync failed after the commit recorded its
                // bytes: the last fully synced point goes back (the
                // daemon's Syncer commits it at once, as here).
                Command::RollBack(back) => {
                    let n = &mut self.nodes[node];
                    let Some(r) = n.recv.as_mut() else { return };
                    let head = r.job.as_ref().map_or(n.cat.chain_head, |j| j.chain_head);
                    let mut cat = SlotCatalog {
                        cat: &mut n.cat,
                        base: r.base.as_ref(),
                    };
                    let Ok(()) = cat.commit(std::slice::from_ref(&back), head);
                    self.log(|| {
                        format!(
                            "slot {node}: tail record rolled back to {} bytes",
                            back.size
                        )
                    });
                }
                // The group failed after its renames: give the names back.
                Command::UndoNames { seals } => {
                    if let Err(e) = self.nodes[node].disk.landing().undo_names(&seals) {
                        self.violation(format!(
                            "slot {node}: undo of a failed group's renames: {e}"
                        ));
                        return;
                    }
                }
                other => {
                    self.violation(format!("slot {node}: {other:?} after a flush step"));
                    return;
                }
            }
        }
        if let Some((records, chain_head)) = commit {
            self.start_commit(node, job_id, &records, chain_head);
        }
        self.maybe_ack(node, acks);
    }

    /// Sends the acks drd-core's group allowed; retires the job when every
    /// step is done.
    fn maybe_ack(&mut self, node: usize, acks: Vec<replica::Ack>) {
        let n = &mut self.nodes[node];
        let Some(r) = n.recv.as_mut() else { return };
        let Some(j) = r.job.as_ref() else { return };
        let conn = j.conn;
        let done = j.group.over();
        if done {
            let ev = if j.group.failed() {
                Event::FlushFailed
            } else {
                Event::Flushed
            };
            r.job = None;
            if let Err(e) = r.session.handle(ev) {
                self.misuse(node, e);
                return;
            }
        }
        for a in acks {
            self.log(|| format!("slot {node} acks {} durable", a.durable));
            let n = &mut self.nodes[node];
            n.acked_max = n.acked_max.max(a.durable);
            self.send_msg(
                conn,
                peer(node),
                Msg::Ack {
                    durable: a.durable,
                    sealed: a.sealed,
                    segment: a.segment.map(|s| s.to_string()).unwrap_or_default(),
                },
            );
        }
        if done {
            // The next group, if one accumulated meanwhile.
            self.queue_flush(node);
        }
    }

    // ----- crashes, power cuts, recovery -----

    /// The slots (node, stream) at a node.
    fn slots_at(&self, host: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&k| self.shape.node_of(k) == host)
            .collect()
    }

    /// A kill -9 or power cut of a node: every stream there goes down with
    /// it (one process, one disk).
    fn crash(&mut self, host: usize, power: bool) {
        let mut any = false;
        for node in self.slots_at(host) {
            let coin = self.rng.random_bool(0.5);
            let n = &mut self.nodes[node];
            if !n.up {
                continue;
            }
            any = true;
            // A synced commit in progress is in RocksDB's log or not.
            if let Some(r) = n.recv.as_ref() {
                let begun = r.job.as_ref().filter(|j| j.commit_started && !j.committed);
                if let Some(j) = begun.filter(|_| coin) {
                    let mut cat = SlotCatalog {
                        cat: &mut n.cat,
                        base: r.base.as_ref(),
                    };
                    let Ok(()) = cat.commit(&j.records, j.chain_head);
                }
            }
            n.up = false;
            n.life += 1;
            n.recv = None;
            n.send = None;
            if power {
                if self.trace {
                    for f in n.disk.list("land") {
                        let p = format!("land/{f}");
                        let file = n.disk.file(&p).cloned().unwrap_or_default();
                        println!(
                            "           before the cut: s{}/{p} {} bytes, {} synced",
                            stream_of(node),
                            file.data.len(),
                            file.synced
                        );
                    }
                }
                n.disk.power_cut(&mut Draws(&mut self.rng));
            }
        }
        if !any {
            return;
        }
        self.log(|| {
            format!(
                "node {host} {}",
                if power { "loses power" } else { "is killed" }
            )
        });
        let d = self.rng.random_range(10 * MS..800 * MS);
        self.after(d, Ev::Restart { node: host });
    }

    /// The daemon's start at a node: reconcile each stream's landing
    /// directory with the catalog (replica/reconcile.rs), then check what
    /// survived.
    fn restart(&mut self, host: usize) {
        for node in self.slots_at(host) {
            self.restart_slot(node);
        }
    }

    fn restart_slot(&mut self, node: usize) {
        if self.nodes[node].up {
            return;
        }
        let n = &mut self.nodes[node];
        n.up = true;
        let life = n.life;
        if let Err(e) = reconcile(n) {
            let tail = n.cat.recs.values().next_back().map(|r| r.idx);
            if tail.is_some_and(|t| n.rotted_partial.contains(&t)) {
                // The daemon refuses to start on a tail that rotted below
                // its previous durable point: detected, the operator's turn.
                n.up = false;
                n.stalled_on_rot = true;
                self.log(|| format!("slot {node} refuses to start: {e}"));
                return;
            }
            let msg = format!("slot {node} cannot recover after a crash: {e}");
            self.violation(msg);
            return;
        }
        self.log(|| format!("slot {node} restarts"));
        if self.nodes[node].cat.state.role == Role::Replica {
            self.check_replica_log(node, "after a restart");
        }
        if self.nodes[node].cat.state.role == Role::Primary {
            self.after(MS, Ev::Connect { node, life });
        }
    }

    fn log_end(&self, node: usize) -> u64 {
        self.nodes[node]
            .cat
            .recs
            .values()
            .next_back()
            .map_or(0, Rec::end)
    }

    /// This node's log as its catalog and files say, segment by segment:
    /// (index, start, bytes).
    fn log_segments(&mut self, node: usize) -> Result<Vec<(u64, u64, Vec<u8>)>, String> {
        let n = &mut self.nodes[node];
        let mut out = Vec::new();
        let mut pos = None;
        for r in n.cat.recs.values() {
            if pos.is_some_and(|p| p != r.start) {
                return Err(format!(
                    "a gap before segment {} (start {})",
                    r.idx, r.start
                ));
            }
            let data = rec_loc(&mut n.disk, r).read(&mut n.disk);
            if (data.len() as u64) < r.size {
                return Err(format!(
                    "segment {} has {} bytes on disk but {} recorded",
                    r.idx,
                    data.len(),
                    r.size
                ));
            }
            out.push((r.idx, r.start, data[..r.size as usize].to_vec()));
            pos = Some(r.end());
        }
        Ok(out)
    }

    /// Invariants 1 and 2 at a replica: its log is a prefix of the newest
    /// primary's (byte-identical), and holds at least every byte it acked.
    fn check_replica_log(&mut self, node: usize, when: &str) {
        let segs = match self.log_segments(node) {
            Ok(s) => s,
            Err(e) => {
                self.violation(format!("slot {node} {when}: {e}"));
                return;
            }
        };
        let end = segs.last().map_or(0, |(_, s, d)| s + d.len() as u64);
        let acked = self.nodes[node].acked_max;
        let tail_rotted = self.nodes[node]
            .cat
            .recs
            .values()
            .next_back()
            .is_some_and(|t| self.nodes[node].rotted_partial.contains(&t.idx));
        if end < acked && tail_rotted {
            // The rot took acked bytes; recovery detected it and fell back.
            self.nodes[node].acked_max = end;
        } else if end < acked {
            self.violation(format!(
                "invariant 1: slot {node} {when} holds {end} bytes but acked {acked}"
            ));
            return;
        }
        for (idx, start, data) in segs {
            if self.nodes[node].rotted.contains(&idx)
                || self.nodes[node].rotted_partial.contains(&idx)
            {
                continue;
            }
            let a = start as usize;
            let b = a + data.len();
            let canon = &self.canon[stream_of(node)];
            if canon.get(a..b) != Some(&data[..]) {
                self.violation(format!(
                    "invariant 1: slot {node} {when}: segment {idx} (bytes {a}..{b}) differs \
                     from the primary's log (canon {} bytes)",
                    canon.len()
                ));
                return;
            }
        }
    }

    fn final_checks(&mut self) {
        for node in 0..self.nodes.len() {
            if self.nodes[node].cat.state.role == Role::Replica && self.nodes[node].up {
                self.check_replica_log(node, "at the end");
                self.verify(node);
            }
        }
    }
}

/// A slot's catalog as a session's flush commits to it
/// ([`drd_core::storage::Catalog`]): the records drd-core's group commits,
/// each stored as the simulator's record with what the receive path does
/// not decide (`fork`, `in_source`) from the session's `base` (see
/// [`sim_rec`]).
struct SlotCatalog<'a> {
    cat: &'a mut Catalog,
    base: Option<&'a Rec>,
}

impl drd_core::storage::Catalog for SlotCatalog<'_> {
    type Error = std::convert::Infallible;

    /// The records as drd-core keeps them (without what the simulator's
    /// catalog does not hold: epochs and times are 0).
    fn load(&mut self) -> Result<(Vec<replica::Record>, [u8; 32]), Self::Error> {
        let recs = self.cat.recs.values().map(core_rec).collect();
        Ok((recs, self.cat.chain_head))
    }

    /// Atomic and durable at once, as a synced RocksDB write batch: a power
    /// cut either finds it done or not begun (see [`World::crash`]).
    fn commit(
        &mut self,
        records: &[replica::Record],
        chain_head: [u8; 32],
    ) -> Result<(), Self::Error> {
        for r in records {
            let rec = sim_rec(r, self.base);
            self.cat.recs.insert(rec.idx, rec);
        }
        self.cat.chain_head = chain_head;
        Ok(())
    }
}

/// A catalog record as drd-core's replica session keeps it.
fn core_rec(r: &Rec) -> replica::Record {
    replica::Record {
        segment: name_of(r.idx),
        start: r.start,
        size: r.size,
        sealed: r.sealed,
        sha256: r.sha,
        chain: r.chain,
        check: r.check,
        epoch: 0,
        received_at_ms: 0,
        sealed_at_ms: None,
    }
}

/// The record to store for the session's `rec`: the one the session began
/// with (`base`) keeps what the receive path does not decide, and a sealed
/// one is never changed by it (as replica/disk.rs's `catalog_record`).
fn sim_rec(rec: &replica::Record, base: Option<&Rec>) -> Rec {
    let idx = idx_of(rec.segment.as_str()).unwrap_or(u64::MAX);
    match base.filter(|b| b.idx == idx) {
        Some(b) if b.sealed => b.clone(),
        Some(b) => Rec {
            size: rec.size,
            sealed: rec.sealed,
            sha: rec.sha256,
            chain: rec.chain,
            check: rec.check,
            ..b.clone()
        },
        None => Rec {
            idx,
            start: rec.start,
            size: rec.size,
            sealed: rec.sealed,
            sha: rec.sha256,
            chain: rec.chain,
            check: rec.check,
            fork: false,
            in_source: false,
        },
    }
}

/// replica/reconcile.rs at start: the tail's files against its record.
fn reconcile(n: &mut Node) -> Result<(), String> {
    let Some(rec) = n.cat.recs.values().next_back().cloned() else {
        return Ok(());
    };
    if rec.in_source {
        return Ok(());
    }
    let seg = name_of(rec.idx);
    let partial = land(rec.idx, true);
    let mut store = n.disk.landing();
    let size = |store: &mut Landing<'_>, st| store.size(&seg, st).map_err(|e| e.to_string());
    let complete_len = size(&mut store, FileState::Complete)?;
    if rec.sealed {
        let (path, len) = if rec.fork && complete_len.is_none() {
            (partial, size(&mut store, FileState::Partial)?)
        } else {
            (land(rec.idx, false), complete_len)
        };
        let len = len.ok_or(format!("sealed segment {path} is missing"))?;
        if len != rec.size {
            return Err(format!(
                "sealed segment {path} has {len} bytes, {} recorded",
                rec.size
            ));
        }
        return Ok(());
    }
    if size(&mut store, FileState::Partial)?.is_none() && complete_len.is_some() {
        // Renamed by a flush whose commit did not happen: the catalog says
        // partial. The rename back, then the directory's fsync (a group of
        // no seals makes only the names durable).
        let seals = [SealedSegment {
            segment: seg.clone(),
            sync: false,
        }];
        store.undo_names(&seals).map_err(|e| e.to_string())?;
        store.make_names_durable(&[]).map_err(|e| e.to_string())?;
    }
    let Some(len) = size(&mut store, FileState::Partial)? else {
        if rec.size == 0 || rec.check.is_some_and(|c| c.prev_size == 0) {
            // A durable empty file, made even on a full disk (as the
            // simulator always has): the store's create would fail there.
            n.disk.write_durable(&partial, &[]);
            if rec.size > 0 {
                let mut r = rec.clone();
                r.size = 0;
                r.check = Some(PartialCheck::default());
                n.cat.recs.insert(r.idx, r);
            }
            return Ok(());
        }
        return Err(format!(
            "partial segment {partial} is missing, {} bytes recorded",
            rec.size
        ));
    };
    let data = store
        .read(&seg, FileState::Partial, 0, u64::MAX)
        .map_err(|e| e.to_string())?;
    let kept = drd_core::tail::recover(rec.size, rec.check, len, |k| {
        crc32c::crc32c(&data[..k as usize])
    })
    .map_err(|e| format!("partial segment {partial}: {e}"))?;
    if kept.cut_back {
        let mut r = rec.clone();
        let c = rec.check.unwrap_or_default();
        r.size = c.prev_size;
        r.check = Some(PartialCheck {
            crc32c: c.prev_crc32c,
            prev_size: c.prev_size,
            prev_crc32c: c.prev_crc32c,
        });
        n.cat.recs.insert(r.idx, r);
    }
    let mut store = n.disk.landing();
    if len > kept.keep {
        store.cut(&seg, kept.keep).map_err(|e| e.to_string())?;
    } else if kept.sync {
        store.sync(&seg, u64::MAX).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn wal(idx: u64) -> String {
    format!("wal/{idx:024X}")
}

fn land(idx: u64, partial: bool) -> String {
    let state = if partial {
        FileState::Partial
    } else {
        FileState::Complete
    };
    landing_path(&name_of(idx), state)
}

/// A refusal's reason for a failed write of the landing directory.
fn io_error(e: MemError) -> String {
    match e {
        MemError::Full => "disk full".to_string(),
        e => e.to_string(),
    }
}

fn hex_of(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn short(m: &Msg) -> String {
    match m {
        Msg::Ship(p) => match &p.msg {
            Some(pb::ship_message::Msg::Chunk(c)) => {
                format!(
                    "chunk {} @{}+{} e{}",
                    &c.segment[16..],
                    c.offset,
                    c.data.len(),
                    c.epoch
                )
            }
            Some(pb::ship_message::Msg::Seal(s)) => {
                format!("seal {} size {} e{}", &s.segment[16..], s.size, s.epoch)
            }
            _ => "ship".into(),
        },
        Msg::Welcome(w) => format!("welcome durable {}", w.durable),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A power cut draws from the schedule's generator exactly what the
    /// simulator's own disk drew before it moved into drd-core: a seed's
    /// whole schedule after the cut depends on it.
    #[test]
    fn a_power_cut_draws_what_the_simulators_own_disk_drew() {
        for seed in 0..200 {
            let mut d = MemDisk::default();
            // Two name operations in the journal, and 100 unsynced bytes:
            // 7 sectors.
            d.create("land/a").unwrap();
            d.create("land/b").unwrap();
            d.write_at("land/a", 0, &[7; 100]).unwrap();
            let mut rng = SmallRng::seed_from_u64(seed);
            d.power_cut(&mut Draws(&mut rng));

            let mut by_hand = SmallRng::seed_from_u64(seed);
            let keep = by_hand.random_range(0..=2usize);
            let kept = by_hand.random_range(0..=7usize);
            for _ in 0..kept {
                by_hand.random_bool(0.25);
            }
            assert_eq!(rng.random::<u64>(), by_hand.random::<u64>(), "seed {seed}");
            assert_eq!(d.exists("land/a"), keep >= 1);
            assert_eq!(d.exists("land/b"), keep >= 2);
            if keep >= 1 {
                assert_eq!(d.len("land/a"), Some((kept as u64 * 16).min(100)));
            }
        }
    }
}
