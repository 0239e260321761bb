//! `drctl switchover` as an explicit step machine, without I/O: the steps
//! in their order, and what a failure at each one means. The daemon
//! (`ops/switchover.rs`) and drd-sim carry out the steps and report each
//! outcome; this says what comes next.
//!
//! ```text
//!  Preflight → StopWrites → Drain → Verify → Promote → Demote → done
//!      │           │          │        │         │         │
//!      └───────────┴──────────┴────────┴─────────┘         └─▶ fence this node
//!                   roll back (writes resume)                   (writes stay stopped)
//! ```
//!
//! Until the replica is promoted nothing has changed hands: a failure rolls
//! back, and writes may resume here. Once it is promoted, the other node is
//! primary at a newer epoch; if this node then fails to demote itself it
//! must not resume writes as a primary — every COMMIT its database accepted
//! from then on would be lost at the rejoin — so it fences itself, and an
//! operator runs `drctl rejoin`.

use crate::mutation::{self, Mutation};

/// One step of a switchover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The replica answers and is at this node's epoch.
    Preflight,
    /// The pre-switchover hook stops writes at the database.
    StopWrites,
    /// Lag 0 with the source no longer growing.
    Drain,
    /// The logs agree (hash chain at the last sealed segment, the active
    /// segment's prefix by SHA-256).
    Verify,
    /// The replica becomes primary at epoch + 1.
    Promote,
    /// This node closes its log at the fork and becomes a replica.
    Demote,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Preflight,
        Step::StopWrites,
        Step::Drain,
        Step::Verify,
        Step::Promote,
        Step::Demote,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::StopWrites => "pre-switchover hook",
            Step::Drain => "drain",
            Step::Verify => "verify",
            Step::Promote => "promote replica",
            Step::Demote => "demote",
        }
    }

    fn next(self) -> Option<Step> {
        let i = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(i + 1).copied()
    }
}

/// What the driver does after a step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Nothing changed hands: roles stay; shipping is released and, when
    /// writes were stopped, the abort hook lets them resume.
    RollBack { resume_writes: bool },
    /// The replica is primary at `new_epoch`: this node fences itself
    /// (writes stay stopped) until `drctl rejoin`.
    Fence,
}

/// A step reported out of order: a bug in the driver.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("switchover step {got:?} reported, but the next step is {expected:?}")]
pub struct OrderError {
    pub got: Step,
    pub expected: Option<Step>,
}

/// A switchover in progress at the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switchover {
    /// The next step to carry out (None: done).
    next: Option<Step>,
}

impl Default for Switchover {
    fn default() -> Self {
        Self::new()
    }
}

impl Switchover {
    pub fn new() -> Self {
        Switchover {
            next: Some(Step::Preflight),
        }
    }

    /// The step to carry out now (None: the switchover is complete).
    pub fn next(&self) -> Option<Step> {
        self.next
    }

    /// Records that `step` succeeded; returns the one that follows.
    pub fn succeeded(&mut self, step: Step) -> Result<Option<Step>, OrderError> {
        if self.next != Some(step) {
            return Err(OrderError {
                got: step,
                expected: self.next,
            });
        }
        self.next = step.next();
        Ok(self.next)
    }

    /// What to do now that `step` failed. The switchover is over either way.
    pub fn failed(&mut self, step: Step) -> OnFailure {
        self.next = None;
        if step == Step::Demote && !mutation::active(Mutation::RollBackAfterPromote) {
            return OnFailure::Fence;
        }
        // Once the stop-writes hook was tried, the abort hook runs (a hook
        // that failed half-way may have stopped them).
        OnFailure::RollBack {
            resume_writes: step >= Step::StopWrites,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_run_in_order_and_failures_before_the_promotion_roll_back() {
        let mut s = Switchover::new();
        for step in Step::ALL {
            assert_eq!(s.next(), Some(step));
            s.succeeded(step).unwrap();
        }
        assert_eq!(s.next(), None);

        let mut s = Switchover::new();
        assert!(s.succeeded(Step::Drain).is_err(), "out of order");
        assert_eq!(
            s.failed(Step::Preflight),
            OnFailure::RollBack {
                resume_writes: false
            }
        );
        let mut s = Switchover::new();
        s.succeeded(Step::Preflight).unwrap();
        s.succeeded(Step::StopWrites).unwrap();
        assert_eq!(
            s.failed(Step::Drain),
            OnFailure::RollBack {
                resume_writes: true
            }
        );
        assert_eq!(s.next(), None);
    }

    #[test]
    fn a_failed_demotion_after_the_promotion_fences_instead_of_resuming_writes() {
        let mut s = Switchover::new();
        for step in &Step::ALL[..5] {
            s.succeeded(*step).unwrap();
        }
        assert_eq!(s.next(), Some(Step::Demote));
        assert_eq!(s.failed(Step::Demote), OnFailure::Fence);
    }
}
