//! Planted bugs for drd-sim (`drd-sim --list-mutations`), the proof that
//! the simulator can fail: each one breaks one rule of the real core, and
//! CI requires the simulator to catch each within its seed budget.
//!
//! Without the `mutations` feature (every build but drd-sim's) the switch
//! is a constant `false` and the planted paths compile away.

/// A known bug that can be planted in the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The replica acks a group before the tail's fdatasync returned.
    AckBeforeDataSync,
    /// The replica acks a group before its catalog commit returned.
    AckBeforeCommit,
    /// The replica accepts chunks from a lower epoch.
    AcceptLowerEpoch,
    /// Chunk CRC32C mismatches are ignored on receipt (in drd-proto).
    SkipCrc,
    /// A seal's whole-file SHA-256 is not compared.
    SkipSealChecksum,
    /// Rejoin keeps what lies past the fork position instead of cutting it.
    ForgetForkCut,
    /// The primary believes any ack, even past what it sent.
    BelieveAnyAck,
    /// Recovery after a crash trusts the catalog's size of a partial tail
    /// without checking its CRC.
    TrustTailRecord,
    /// Recovery reports a kept partial tail durable without fdatasyncing
    /// it (the bug drd-sim found in replica/reconcile.rs).
    SkipRecoverySync,
    /// A promotion makes the partial tail the fork segment without checking
    /// it against its record's CRC (the bug drd-sim found in ops/fork.rs).
    ForkUncheckedPartial,
    /// A switchover whose demotion fails after the replica was promoted
    /// rolls back (writes resume at a second primary) instead of fencing.
    RollBackAfterPromote,
    SkipTailRollback,
    FlushAfterFailedFlush,
    KeepNamesAfterFailedGroup,
}

impl Mutation {
    /// Every mutation, with its command-line name and what it breaks.
    pub const ALL: [(Mutation, &'static str, &'static str); 14] = [
        (
            Mutation::AckBeforeDataSync,
            "ack-before-data-sync",
            "replica acks a group before the tail's fdatasync (invariant 1)",
        ),
        (
            Mutation::AckBeforeCommit,
            "ack-before-catalog-commit",
            "replica acks a group before its catalog commit (invariant 1)",
        ),
        (
            Mutation::AcceptLowerEpoch,
            "accept-lower-epoch",
            "replica accepts data from a lower epoch (invariant 3)",
        ),
        (
            Mutation::SkipCrc,
            "skip-crc",
            "chunk CRC32C not checked on receipt (invariants 1, 2)",
        ),
        (
            Mutation::SkipSealChecksum,
            "skip-seal-checksum",
            "seal's whole-file SHA-256 not compared (invariant 2)",
        ),
        (
            Mutation::ForgetForkCut,
            "forget-fork-cut",
            "rejoin keeps the old primary's bytes past the fork (invariants 4, 5)",
        ),
        (
            Mutation::BelieveAnyAck,
            "believe-any-ack",
            "primary believes acks past what it sent (lag and sync acks lie)",
        ),
        (
            Mutation::TrustTailRecord,
            "trust-tail-record",
            "crash recovery trusts a partial tail's record without its CRC (invariant 1)",
        ),
        (
            Mutation::SkipRecoverySync,
            "skip-recovery-sync",
            "crash recovery reports page-cache bytes durable without fdatasync (invariant 1)",
        ),
        (
            Mutation::ForkUncheckedPartial,
            "fork-unchecked-partial",
            "failover seals a rotted partial tail as the fork segment (invariants 1, 2)",
        ),
        (
            Mutation::RollBackAfterPromote,
            "rollback-after-promote",
            "a failed demotion after the promotion resumes writes (invariant 4)",
        ),
        (
            Mutation::SkipTailRollback,
            "skip-tail-rollback",
            "a failed tail fdatasync leaves the committed record claiming its bytes (invariant 1)",
        ),
        (
            Mutation::FlushAfterFailedFlush,
            "flush-after-failed-flush",
            "a replica session flushes and acks more after a failed flush (invariant 1)",
        ),
        (
            Mutation::KeepNamesAfterFailedGroup,
            "keep-names-after-failed-group",
            "a failed group's renames stay although its commit never recorded them (invariant 1)",
        ),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(m, _, _)| *m == self)
            .map_or("?", |(_, n, _)| n)
    }

    pub fn from_name(name: &str) -> Option<Mutation> {
        Self::ALL
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(m, _, _)| *m)
    }
}

#[cfg(feature = "mutations")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
}

/// Whether `m` is planted on this thread (always false without the
/// `mutations` feature).
#[inline(always)]
pub fn active(m: Mutation) -> bool {
    #[cfg(feature = "mutations")]
    {
        PLANTED.with(|p| p.get()) == Some(m)
    }
    #[cfg(not(feature = "mutations"))]
    {
        let _ = m;
        false
    }
}

/// Plants `m` (or none) on this thread: drd-sim runs one seed per thread.
#[cfg(feature = "mutations")]
pub fn plant(m: Option<Mutation>) {
    PLANTED.with(|p| p.set(m));
    drd_proto::mutation::set_skip_crc(m == Some(Mutation::SkipCrc));
}
