//! drd-core: the protocol rules of drd without I/O.
//!
//! Nothing here opens a socket or a file, reads a clock or spawns a task:
//! the rules take what happened (a message, a completed sync, the time,
//! passed in) and return what to do. The daemon (`drd`) carries out the
//! decisions against real files, RocksDB and gRPC; drd-sim carries them out
//! against a simulated disk and network, under millions of seeded
//! schedules. tests/run checks that this crate's dependency tree holds no
//! tokio, tonic, RocksDB, filesystem or clock crate.
//!
//! - [`receiver`]: the replica's per-chunk rules (epoch, continuity, seal).
//! - [`durability`]: when a replica may ack a group (data sync + commit).
//! - [`replica`]: the replica's session: the group being built, its flush, acks.
//! - [`tail`]: how much of a partial tail survives a crash.
//! - [`sender`]: the primary's session: resume point, window, seal, acks.
//! - [`handshake`]: a replica's answer to a Hello (accept, stale, fence).
//! - [`roles`]: role transitions (promote, demote, fence, rejoin).
//! - [`switchover`]: `drctl switchover` as a step machine (roll back or fence).
//! - [`failover`]: `drctl failover` as a step machine (refuse, or warn once promoted).
//! - [`rejoin`]: `drctl rejoin` as a step machine (refuse, or stay fenced once the
//!   quarantine began).
//! - [`fork`]: the rejoin cut: what lies past the fork goes to quarantine.
//! - [`storage`]: the traits the drivers store through (segment store, catalog,
//!   source), their in-memory implementations and the contract suite of both.
//! - [`chain`]: the hash chain over sealed segments.
//! - [`mutation`]: drd-sim's planted bugs (compiled only for drd-sim).
#![forbid(unsafe_code)]

pub mod chain;
pub mod durability;
pub mod failover;
pub mod fork;
pub mod handshake;
pub mod mutation;
pub mod pg;
pub mod receiver;
pub mod rejoin;
pub mod replica;
pub mod roles;
pub mod sender;
pub mod storage;
pub mod switchover;
pub mod tail;
