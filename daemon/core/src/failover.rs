//! `drctl failover` as an explicit step machine, without I/O: the steps in
//! their order, and what a failure at each one means. The daemon
//! (`ops/failover.rs`) carries out the steps and reports each outcome; this
//! says what comes next. drd-sim can drive the same machine.
//!
//! ```text
//!  Preflight → Confirm → EndSession → CloseLog → Commit → FenceOldPrimary → PromoteHook → done
//!      │          │           │           │         │            │                │
//!      └──────────┴───────────┴───────────┴─────────┘            └────────────────┴─▶ a warning;
//!         refused: nothing changed, the stream stays a replica           the failover stands
//! ```
//!
//! A failover is the unplanned case: the primary is gone, or must be
//! replaced. Until the promotion is committed (one synced catalog
//! transaction: the fork, the new role at epoch + 1 and the audit record)
//! nothing has changed hands, and a failure refuses the failover with
//! nothing to undo — the stream stays a replica at its epoch, and if its
//! replication session was ended, the primary's next Hello opens a new one.
//! (Closing the log may cut bytes past the durable size from the partial
//! tail; they were never acked, and a refusal keeps the catalog as it was.)
//!
//! Once committed, this node is primary at the new epoch whatever follows.
//! Telling the old primary to fence itself and running the promote hook
//! are best effort: a failure of either is a warning in the report, and
//! the failover goes on to the next step. The fence is the one step whose
//! outcome can be unknown: the request went out and no answer came, so the
//! old primary may have fenced itself or not. Either way it cannot ship to
//! this node any more: its next Hello here is refused as stale, and it
//! fences itself (`handshake::admit`, invariant 3).

use std::fmt;

/// One step of a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// The stream is a replica here and its epoch can grow (the RPO
    /// report's numbers are read).
    Preflight,
    /// The operator's confirmations: the primary is no longer connected
    /// (or `--yes`), and the possible loss is within the limit (or
    /// `--force`). A dry run ends after this step.
    Confirm,
    /// Under the stream's transition gate its replication session ends
    /// (only this stream's: the others go on receiving).
    EndSession,
    /// The received log is closed at its longest verified prefix
    /// (`tail::fork_point`): the partial tail becomes the fork segment.
    CloseLog,
    /// The fork, the new role (primary at epoch + 1) and the audit record,
    /// in one synced catalog transaction. The point of no return.
    Commit,
    /// The old primary is told to fence itself (when a peer is configured
    /// and it answers).
    FenceOldPrimary,
    /// The promote hook runs (the database at this site takes writes).
    PromoteHook,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Preflight,
        Step::Confirm,
        Step::EndSession,
        Step::CloseLog,
        Step::Commit,
        Step::FenceOldPrimary,
        Step::PromoteHook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Confirm => "confirm",
            Step::EndSession => "end replication",
            Step::CloseLog => "close the log at the fork",
            Step::Commit => "record the promotion",
            Step::FenceOldPrimary => "fence the old primary",
            Step::PromoteHook => "promote hook",
        }
    }

    fn next(self) -> Option<Step> {
        let i = Self::ALL.iter().position(|s| *s == self)?;
        Self::ALL.get(i + 1).copied()
    }

    /// Whether the promotion is committed once this step is reached.
    fn after_commit(self) -> bool {
        self > Step::Commit
    }
}

/// What the driver does after a step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Before the commit: the failover is refused and nothing changed
    /// hands; the stream stays a replica at its epoch. Nothing to undo:
    /// when `session_ended`, its replication session was ended, and the
    /// primary's next Hello (if it is alive) opens a new one.
    Refuse { session_ended: bool },
    /// After the commit: this node is primary at the new epoch regardless.
    /// The failure is a warning in the report; carry on with `next` (None:
    /// the failover is over).
    Warn { next: Option<Step> },
}

/// What is known of the old primary once the failover is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldPrimary {
    /// Not asked yet (the failover has not reached the fence).
    NotAsked,
    /// It answered the fence request: it stopped shipping this stream.
    Fenced,
    /// No peer configured, no connection (the request never went out), or
    /// it refused the request: it did not fence itself at our word, and may
    /// still be primary at the old epoch until it meets the new one.
    NotReached,
    /// The request went out and no answer came: it may have fenced itself
    /// or not.
    Unknown,
}

/// How a failover ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Refused at `step`: nothing changed hands (see [`OnFailure::Refuse`]).
    Refused { step: Step, session_ended: bool },
    /// This node is primary of the stream at the new epoch.
    /// `hook_failed`: the promote hook failed (or could not run), so the
    /// database here may not take writes yet.
    Promoted {
        old_primary: OldPrimary,
        hook_failed: bool,
    },
}

/// What the driver reported about a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    Succeeded,
    Failed,
    /// A remote call whose effect is not known (sent, no answer).
    Unknown,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Report::Succeeded => "success",
            Report::Failed => "failure",
            Report::Unknown => "an unknown outcome",
        })
    }
}

/// A step reported out of order, or an outcome a step cannot have: a bug
/// in the driver. The machine is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("failover step {got:?} reported ({report}), but the next step is {expected:?}")]
    OutOfOrder {
        got: Step,
        report: Report,
        expected: Option<Step>,
    },
    #[error("failover step {0:?} is carried out here: its outcome cannot be unknown")]
    NotRemote(Step),
}

/// A failover in progress at the DR node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// The next step to carry out (None: over).
    next: Option<Step>,
    /// The old primary's fence, as far as it is known.
    old_primary: OldPrimary,
    /// The promote hook failed.
    hook_failed: bool,
    /// Set when the failover was refused.
    refused: Option<(Step, bool)>,
}

impl Default for Failover {
    fn default() -> Self {
        Self::new()
    }
}

impl Failover {
    pub fn new() -> Self {
        Failover {
            next: Some(Step::Preflight),
            old_primary: OldPrimary::NotAsked,
            hook_failed: false,
            refused: None,
        }
    }

    /// The step to carry out now (None: the failover is over).
    pub fn next(&self) -> Option<Step> {
        self.next
    }

    /// Whether the promotion is committed (this node is primary at the new
    /// epoch whatever happens next).
    pub fn committed(&self) -> bool {
        self.refused.is_none() && self.next.is_none_or(Step::after_commit)
    }

    fn expect(&self, step: Step, report: Report) -> Result<(), StepError> {
        if self.next != Some(step) {
            return Err(StepError::OutOfOrder {
                got: step,
                report,
                expected: self.next,
            });
        }
        Ok(())
    }

    /// Records that `step` succeeded; returns the one that follows.
    pub fn succeeded(&mut self, step: Step) -> Result<Option<Step>, StepError> {
        self.expect(step, Report::Succeeded)?;
        if step == Step::FenceOldPrimary {
            self.old_primary = OldPrimary::Fenced;
        }
        self.next = step.next();
        Ok(self.next)
    }

    /// What to do now that `step` failed.
    pub fn failed(&mut self, step: Step) -> Result<OnFailure, StepError> {
        self.expect(step, Report::Failed)?;
        if !step.after_commit() {
            // Preflight and Confirm run before the session is touched.
            let session_ended = step > Step::EndSession;
            self.next = None;
            self.refused = Some((step, session_ended));
            return Ok(OnFailure::Refuse { session_ended });
        }
        match step {
            Step::FenceOldPrimary => self.old_primary = OldPrimary::NotReached,
            Step::PromoteHook => self.hook_failed = true,
            _ => {}
        }
        self.next = step.next();
        Ok(OnFailure::Warn { next: self.next })
    }

    /// The fence request went out but no answer came (a timeout, a broken
    /// connection): it may have taken effect. The failover stands; the
    /// report warns, and the hook follows.
    pub fn unknown(&mut self, step: Step) -> Result<OnFailure, StepError> {
        self.expect(step, Report::Unknown)?;
        if step != Step::FenceOldPrimary {
            return Err(StepError::NotRemote(step));
        }
        self.old_primary = OldPrimary::Unknown;
        self.next = step.next();
        Ok(OnFailure::Warn { next: self.next })
    }

    /// How the failover ended (None while it runs).
    pub fn outcome(&self) -> Option<Outcome> {
        if let Some((step, session_ended)) = self.refused {
            return Some(Outcome::Refused {
                step,
                session_ended,
            });
        }
        self.next.is_none().then_some(Outcome::Promoted {
            old_primary: self.old_primary,
            hook_failed: self.hook_failed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: Step) -> Failover {
        let mut f = Failover::new();
        for s in Step::ALL.iter().take_while(|s| **s != step) {
            f.succeeded(*s).unwrap();
        }
        assert_eq!(f.next(), Some(step));
        f
    }

    #[test]
    fn steps_run_in_order_and_a_clean_failover_promotes() {
        let mut f = Failover::new();
        for (i, step) in Step::ALL.into_iter().enumerate() {
            assert_eq!(f.next(), Some(step));
            assert_eq!(f.outcome(), None);
            assert_eq!(f.committed(), i > 4, "{step:?}");
            assert_eq!(f.succeeded(step).unwrap(), Step::ALL.get(i + 1).copied());
        }
        assert!(f.committed());
        assert_eq!(
            f.outcome(),
            Some(Outcome::Promoted {
                old_primary: OldPrimary::Fenced,
                hook_failed: false
            })
        );
    }

    #[test]
    fn a_failure_before_the_commit_refuses_and_says_whether_the_session_ended() {
        for (step, session_ended) in [
            (Step::Preflight, false),
            (Step::Confirm, false),
            (Step::EndSession, false),
            (Step::CloseLog, true),
            (Step::Commit, true),
        ] {
            let mut f = at(step);
            assert_eq!(f.failed(step), Ok(OnFailure::Refuse { session_ended }));
            assert_eq!(f.next(), None);
            assert!(!f.committed(), "{step:?}");
            assert_eq!(
                f.outcome(),
                Some(Outcome::Refused {
                    step,
                    session_ended
                })
            );
            // Over: nothing more may be reported.
            assert!(f.succeeded(Step::FenceOldPrimary).is_err());
        }
    }

    #[test]
    fn after_the_commit_a_failure_is_a_warning_and_the_failover_goes_on() {
        let mut f = at(Step::FenceOldPrimary);
        assert!(f.committed());
        assert_eq!(
            f.failed(Step::FenceOldPrimary),
            Ok(OnFailure::Warn {
                next: Some(Step::PromoteHook)
            })
        );
        assert_eq!(f.outcome(), None, "the hook still runs");
        assert_eq!(
            f.failed(Step::PromoteHook),
            Ok(OnFailure::Warn { next: None })
        );
        assert_eq!(
            f.outcome(),
            Some(Outcome::Promoted {
                old_primary: OldPrimary::NotReached,
                hook_failed: true
            })
        );
    }

    #[test]
    fn a_fence_without_an_answer_has_an_unknown_outcome() {
        let mut f = at(Step::FenceOldPrimary);
        assert_eq!(
            f.unknown(Step::FenceOldPrimary),
            Ok(OnFailure::Warn {
                next: Some(Step::PromoteHook)
            })
        );
        f.succeeded(Step::PromoteHook).unwrap();
        assert_eq!(
            f.outcome(),
            Some(Outcome::Promoted {
                old_primary: OldPrimary::Unknown,
                hook_failed: false
            })
        );
        // Only the remote call can have an unknown outcome.
        let mut f = at(Step::Commit);
        assert_eq!(
            f.unknown(Step::Commit),
            Err(StepError::NotRemote(Step::Commit))
        );
        assert_eq!(f.next(), Some(Step::Commit), "unchanged");
    }

    #[test]
    fn steps_out_of_order_are_errors_and_change_nothing() {
        let mut f = Failover::new();
        let e = f.succeeded(Step::Commit).unwrap_err();
        assert_eq!(
            e,
            StepError::OutOfOrder {
                got: Step::Commit,
                report: Report::Succeeded,
                expected: Some(Step::Preflight)
            }
        );
        assert!(e.to_string().contains("Commit"), "{e}");
        assert!(f.failed(Step::CloseLog).is_err());
        assert!(f.unknown(Step::FenceOldPrimary).is_err());
        assert_eq!(f, Failover::new());
        // A step reported twice.
        f.succeeded(Step::Preflight).unwrap();
        assert!(f.succeeded(Step::Preflight).is_err());
        assert_eq!(f.next(), Some(Step::Confirm));
        // After a refusal, the machine is over.
        f.failed(Step::Confirm).unwrap();
        assert!(f.failed(Step::Confirm).is_err());
        assert!(f.succeeded(Step::EndSession).is_err());
    }
}
