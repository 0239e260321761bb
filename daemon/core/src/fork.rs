//! Rejoin's cut, without I/O: a former primary's log is cut back to the new
//! primary's fork position, and what lay past it goes to quarantine
//! (invariant 5: nothing is deleted silently). The driver supplies what it
//! holds; this decides what moves and checks first, so that nothing changes
//! when the shared prefix does not match.

use crate::mutation::{self, Mutation};
use drd_proto::SegmentName;

/// The new primary's fork: its fork segment and the position where its log
/// ended when it was promoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    pub segment: SegmentName,
    pub start: u64,
    pub position: u64,
}

/// Why a node cannot rejoin by cutting back. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CutError {
    #[error(
        "the new primary's fork position {position} lies before the start {start} of its \
         fork segment {segment}; refusing to rejoin (nothing changed)"
    )]
    BeforeStart {
        segment: String,
        start: u64,
        position: u64,
    },
    #[error(
        "this node holds {have} bytes of the fork segment {segment}, fewer than the {need} \
         the new primary holds: this node is behind the fork, not past it"
    )]
    Behind {
        segment: String,
        have: u64,
        need: u64,
    },
    #[error(
        "the first {len} bytes of {segment} differ from the new primary's copy; the logs \
         diverged before the fork — refusing to rejoin"
    )]
    Diverged { segment: String, len: u64 },
}

/// What the cut does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Bytes of the fork segment that stay (the shared prefix).
    pub keep: u64,
    /// Bytes of the fork segment past the fork: copied to quarantine, then
    /// cut from the file.
    pub tail_bytes: u64,
    /// Whole segments after the fork segment: moved to quarantine.
    pub quarantine: Vec<SegmentName>,
}

impl Fork {
    /// Bytes of the fork segment before the fork position.
    pub fn len_in_segment(&self) -> Result<u64, CutError> {
        self.position
            .checked_sub(self.start)
            .ok_or_else(|| CutError::BeforeStart {
                segment: self.segment.to_string(),
                start: self.start,
                position: self.position,
            })
    }

    /// Plans the cut. `have` is how many bytes of the fork segment this
    /// node holds; `prefix_matches(n)` tells whether its first `n` bytes are
    /// the new primary's (asked only when `have` ≥ n); `held` lists every
    /// segment this node holds, in any order.
    pub fn plan(
        &self,
        have: u64,
        prefix_matches: impl FnOnce(u64) -> bool,
        held: impl IntoIterator<Item = SegmentName>,
    ) -> Result<Cut, CutError> {
        let keep = self.len_in_segment()?;
        if have < keep {
            return Err(CutError::Behind {
                segment: self.segment.to_string(),
                have,
                need: keep,
            });
        }
        if !prefix_matches(keep) {
            return Err(CutError::Diverged {
                segment: self.segment.to_string(),
                len: keep,
            });
        }
        let mut quarantine: Vec<SegmentName> =
            held.into_iter().filter(|s| *s > self.segment).collect();
        quarantine.sort();
        quarantine.dedup();
        if mutation::active(Mutation::ForgetForkCut) {
            return Ok(Cut {
                keep: have,
                tail_bytes: 0,
                quarantine: Vec::new(),
            });
        }
        Ok(Cut {
            keep,
            tail_bytes: have - keep,
            quarantine,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: u64) -> SegmentName {
        SegmentName::new(format!("{n:024X}")).unwrap()
    }

    #[test]
    fn what_lies_past_the_fork_goes_to_quarantine() {
        let f = Fork {
            segment: seg(2),
            start: 100,
            position: 130,
        };
        let cut = f
            .plan(80, |n| n == 30, [seg(3), seg(1), seg(4), seg(2)])
            .unwrap();
        assert_eq!(
            cut,
            Cut {
                keep: 30,
                tail_bytes: 50,
                quarantine: vec![seg(3), seg(4)]
            }
        );
        assert!(matches!(
            f.plan(20, |_| true, []),
            Err(CutError::Behind { .. })
        ));
        assert!(matches!(
            f.plan(80, |_| false, []),
            Err(CutError::Diverged { .. })
        ));
        let before = Fork {
            position: 99,
            ..f.clone()
        };
        assert!(matches!(
            before.plan(80, |_| true, []),
            Err(CutError::BeforeStart { .. })
        ));
    }
}
