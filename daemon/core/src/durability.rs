//! When a replica may ack: the group-commit rule, without I/O.
//!
//! A group (many chunks and seals, one flush) becomes *durable* only after
//! all of these have completed:
//!
//! 1. the fdatasync of the partial tail, when bytes were written to it;
//! 2. for a group that sealed a segment or created a `.partial` file: the
//!    fdatasync of each sealed file, the renames and one fsync of the
//!    landing directory ("names durable");
//! 3. the synced catalog commit of the group's records, which may begin
//!    only after 2 (a committed record never says sealed unless the
//!    complete name is on disk).
//!
//! Only then is the group's position acked (invariant 1). 1 may run beside
//! 2 and 3: a power cut between them leaves a commit ahead of its bytes,
//! which [`crate::tail::recover`] detects by the record's CRC and undoes,
//! falling back to the previous point — never below what was acked, since
//! nothing of this group was.
//!
//! Each group's [`crate::replica::Group`] asks a [`Flush`] when to commit
//! and when to ack; the daemon's disk worker (`replica/disk.rs`) and
//! drd-sim's replica both carry out what the group says.

use crate::mutation::{self, Mutation};

/// One step of a group's flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The partial tail's fdatasync returned.
    TailSynced,
    /// Sealed files synced, renamed, directory fsynced.
    NamesDurable,
    /// The synced catalog commit returned.
    Committed,
}

/// A step reported out of order: a bug in the driver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("flush step {step:?} reported out of order ({why})")]
pub struct OrderError {
    pub step: Step,
    pub why: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    No,
    Pending,
    Done,
}

impl Need {
    fn of(needed: bool) -> Need {
        if needed {
            Need::Pending
        } else {
            Need::No
        }
    }
    fn settled(self) -> bool {
        self != Need::Pending
    }
}

/// The progress of one group's flush towards its ack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flush {
    tail: Need,
    names: Need,
    commit: Need,
}

impl Flush {
    /// A flush of a group that wrote to the tail (`tail_dirty`) and/or
    /// sealed segments or created a file (`new_names`). Every group commits.
    pub fn new(tail_dirty: bool, new_names: bool) -> Self {
        Flush {
            tail: Need::of(tail_dirty),
            names: Need::of(new_names),
            commit: Need::Pending,
        }
    }

    /// Whether the tail's fdatasync is part of this flush.
    pub fn syncs_tail(&self) -> bool {
        self.tail != Need::No
    }

    /// Whether names must be made durable before the commit.
    pub fn makes_names_durable(&self) -> bool {
        self.names != Need::No
    }

    /// Whether the catalog commit may begin: only once the names it records
    /// are durable.
    pub fn may_commit(&self) -> bool {
        self.commit == Need::Pending && self.names.settled()
    }

    /// Records a completed step.
    pub fn done(&mut self, step: Step) -> Result<(), OrderError> {
        let slot = match step {
            Step::TailSynced => &mut self.tail,
            Step::NamesDurable => &mut self.names,
            Step::Committed => {
                if !self.names.settled() {
                    return Err(OrderError {
                        step,
                        why: "the commit ran before the names it records were durable",
                    });
                }
                &mut self.commit
            }
        };
        if *slot != Need::Pending {
            return Err(OrderError {
                step,
                why: "not pending",
            });
        }
        *slot = Need::Done;
        Ok(())
    }

    /// Whether every step of the flush has completed.
    pub fn finished(&self) -> bool {
        self.tail.settled() && self.names.settled() && self.commit.settled()
    }

    /// Whether the group may be acked: every step it needs has completed.
    pub fn ackable(&self) -> bool {
        let tail = self.tail.settled() || mutation::active(Mutation::AckBeforeDataSync);
        let commit = self.commit.settled() || mutation::active(Mutation::AckBeforeCommit);
        tail && self.names.settled() && commit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_only_after_the_data_sync_and_the_commit() {
        let mut f = Flush::new(true, false);
        assert!(f.may_commit());
        f.done(Step::Committed).unwrap();
        assert!(!f.ackable(), "commit alone is not durable");
        f.done(Step::TailSynced).unwrap();
        assert!(f.ackable());

        let mut f = Flush::new(true, false);
        f.done(Step::TailSynced).unwrap();
        assert!(
            !f.ackable(),
            "synced bytes without their record are not durable"
        );
        f.done(Step::Committed).unwrap();
        assert!(f.ackable());
    }

    #[test]
    fn the_commit_waits_for_the_names() {
        let mut f = Flush::new(false, true);
        assert!(!f.may_commit());
        assert!(f.done(Step::Committed).is_err());
        f.done(Step::NamesDurable).unwrap();
        assert!(f.may_commit());
        f.done(Step::Committed).unwrap();
        assert!(f.ackable());
        assert!(f.done(Step::Committed).is_err(), "twice");
        assert!(f.done(Step::TailSynced).is_err(), "not part of this flush");
    }
}
