//! `drctl rejoin` as an explicit step machine, without I/O: the steps in
//! their order, and what a failure at each one means. The daemon
//! (`ops/rejoin.rs`) carries out the steps and reports each outcome; this
//! says what comes next. drd-sim can drive the same machine.
//!
//! ```text
//!  Preflight → FindFork → CompareBeforeFork → PlanCut → Quarantine → Commit → Resume → done
//!      │          │               │               │          │           │        │
//!      └──────────┴───────────────┴───────────────┘          └───────────┘        └─▶ rejoined,
//!          refused: nothing changed, stays fenced        stays fenced; what moved     with a warning
//!                                                        stays in quarantine —
//!                                                        rejoin again
//! ```
//!
//! A fenced node (a former primary) becomes a replica of the new primary.
//! Every step up to the cut's plan only reads — this node's log, and the
//! new primary's answers, which change nothing there — so a failure refuses
//! the rejoin and nothing changed. The quarantine is the first step that
//! changes anything: files past the fork move to the quarantine directory
//! and the fork segment is cut back. Nothing is moved back after a failure
//! (invariant 5: never lose what lay past the fork), and nothing needs to
//! be: the node stays fenced, so it ships nothing, and a second rejoin
//! finds less to move and finishes the cut. The same holds when the commit
//! (the cut's records, the role of replica at the new epoch and the audit
//! record, in one synced catalog transaction) fails. Once it is committed
//! the node is a replica at the new epoch, and receiving resumes when the
//! new primary connects.

/// One step of a rejoin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The stream is fenced here and has a `[[stream]]` (its peer is the
    /// new primary).
    Preflight,
    /// The new primary answers, is primary at a newer epoch, and reports
    /// its fork (segment and position), the same in both of its answers.
    FindFork,
    /// The logs agree before the fork segment (the hash chain at the
    /// segment before it).
    CompareBeforeFork,
    /// Under the stream's transition gate: the role again, then the cut
    /// (`fork::Fork::plan`): this node holds the fork segment's shared
    /// prefix, and what lies past the fork is listed.
    PlanCut,
    /// What lies past the fork moves to quarantine; the fork segment is cut
    /// at the fork. The first step that changes anything.
    Quarantine,
    /// The cut's records, the role (replica at the new epoch) and the audit
    /// record, in one synced catalog transaction.
    Commit,
    /// The new role is announced; the new primary ships the new epoch's
    /// segments to this node.
    Resume,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Preflight,
        Step::FindFork,
        Step::CompareBeforeFork,
        Step::PlanCut,
        Step::Quarantine,
        Step::Commit,
        Step::Resume,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::FindFork => "find the fork",
            Step::CompareBeforeFork => "compare the logs before the fork",
            Step::PlanCut => "plan the cut",
            Step::Quarantine => "quarantine",
            Step::Commit => "record the new role",
            Step::Resume => "resume",
        }
    }

    fn next(self) -> Option<Step> {
        let i = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(i + 1).copied()
    }
}

/// What the driver does after a step failed. The rejoin is over either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Nothing changed: the stream stays fenced at its epoch.
    Refuse,
    /// The stream stays fenced (it ships nothing). Part or all of what lay
    /// past the fork is in the quarantine directory already, and stays
    /// there; `drctl rejoin` again finishes the cut.
    StayFenced,
    /// The stream is a replica at the new epoch; the failure is a warning
    /// (receiving resumes when the new primary connects).
    Warn,
}

/// How a rejoin ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Refused at `step`: nothing changed.
    Refused { step: Step },
    /// Stopped at `step` (the quarantine or the commit): fenced, with what
    /// was moved in quarantine (see [`OnFailure::StayFenced`]).
    PartlyQuarantined { step: Step },
    /// A replica of the new primary at its epoch; `warning`: the last step
    /// failed (see [`OnFailure::Warn`]).
    Rejoined { warning: bool },
}

/// A step reported out of order: a bug in the driver. The machine is
/// unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rejoin step {got:?} reported, but the next step is {expected:?}")]
pub struct OrderError {
    pub got: Step,
    pub expected: Option<Step>,
}

/// A rejoin in progress at a fenced node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejoin {
    /// The next step to carry out (None: over).
    next: Option<Step>,
    /// How it ended, once it has.
    outcome: Option<Outcome>,
}

impl Default for Rejoin {
    fn default() -> Self {
        Self::new()
    }
}

impl Rejoin {
    pub fn new() -> Self {
        Rejoin {
            next: Some(Step::Preflight),
            outcome: None,
        }
    }

    /// The step to carry out now (None: the rejoin is over).
    pub fn next(&self) -> Option<Step> {
        self.next
    }

    fn expect(&self, step: Step) -> Result<(), OrderError> {
        if self.next != Some(step) {
            return Err(OrderError {
                got: step,
                expected: self.next,
            });
        }
        Ok(())
    }

    /// Records that `step` succeeded; returns the one that follows.
    pub fn succeeded(&mut self, step: Step) -> Result<Option<Step>, OrderError> {
        self.expect(step)?;
        self.next = step.next();
        if self.next.is_none() {
            self.outcome = Some(Outcome::Rejoined { warning: false });
        }
        Ok(self.next)
    }

    /// What to do now that `step` failed.
    pub fn failed(&mut self, step: Step) -> Result<OnFailure, OrderError> {
        self.expect(step)?;
        self.next = None;
        let (on, outcome) = if step < Step::Quarantine {
            (OnFailure::Refuse, Outcome::Refused { step })
        } else if step < Step::Resume {
            (OnFailure::StayFenced, Outcome::PartlyQuarantined { step })
        } else {
            (OnFailure::Warn, Outcome::Rejoined { warning: true })
        };
        self.outcome = Some(outcome);
        Ok(on)
    }

    /// How the rejoin ended (None while it runs).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: Step) -> Rejoin {
        let mut r = Rejoin::new();
        for s in Step::ALL.iter().take_while(|s| **s != step) {
            r.succeeded(*s).unwrap();
        }
        assert_eq!(r.next(), Some(step));
        r
    }

    #[test]
    fn steps_run_in_order_and_end_rejoined() {
        let mut r = Rejoin::new();
        for (i, step) in Step::ALL.into_iter().enumerate() {
            assert_eq!(r.next(), Some(step));
            assert_eq!(r.outcome(), None);
            assert_eq!(r.succeeded(step).unwrap(), Step::ALL.get(i + 1).copied());
        }
        assert_eq!(r.outcome(), Some(Outcome::Rejoined { warning: false }));
    }

    #[test]
    fn each_failure_point_refuses_stays_fenced_or_warns() {
        for step in Step::ALL {
            let mut r = at(step);
            let (on, outcome) = match step {
                Step::Preflight | Step::FindFork | Step::CompareBeforeFork | Step::PlanCut => {
                    (OnFailure::Refuse, Outcome::Refused { step })
                }
                Step::Quarantine | Step::Commit => {
                    (OnFailure::StayFenced, Outcome::PartlyQuarantined { step })
                }
                Step::Resume => (OnFailure::Warn, Outcome::Rejoined { warning: true }),
            };
            assert_eq!(r.failed(step), Ok(on), "{step:?}");
            assert_eq!(r.outcome(), Some(outcome), "{step:?}");
            assert_eq!(r.next(), None);
            // Over: nothing more may be reported.
            assert!(r.succeeded(Step::Resume).is_err());
            assert!(r.failed(step).is_err());
            assert_eq!(r.outcome(), Some(outcome), "unchanged by the errors");
        }
    }

    #[test]
    fn steps_out_of_order_are_errors_and_change_nothing() {
        let mut r = Rejoin::new();
        assert_eq!(
            r.succeeded(Step::Quarantine),
            Err(OrderError {
                got: Step::Quarantine,
                expected: Some(Step::Preflight)
            })
        );
        assert!(r.failed(Step::Commit).is_err());
        assert_eq!(r, Rejoin::new());
        r.succeeded(Step::Preflight).unwrap();
        r.succeeded(Step::FindFork).unwrap();
        // Skipping the comparison is refused.
        let e = r.succeeded(Step::PlanCut).unwrap_err();
        assert!(e.to_string().contains("CompareBeforeFork"), "{e}");
        assert_eq!(r.next(), Some(Step::CompareBeforeFork));
    }
}
