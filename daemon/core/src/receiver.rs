//! The replica's protocol rules for one stream, without I/O: epoch checks,
//! position continuity and seal checks. The disk worker feeds it validated
//! messages and carries out its decisions; unit tests drive it in memory.
//!
//! The state distinguishes what was *accepted* (written, maybe not yet
//! fsynced) from what is *durable*: continuity is checked against the former,
//! acks report the latter.

use crate::mutation::{self, Mutation};
use drd_proto::{Chunk, Epoch, Seal, SegmentName};

/// The last segment of a stream's log as the receiver sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    pub segment: SegmentName,
    pub start: u64,
    /// Bytes accepted so far (written, perhaps not yet durable).
    pub size: u64,
    pub sealed: bool,
}

impl Tail {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// Why a message is refused. The stream ends with this error; nothing of the
/// message is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("epoch {got} is lower than this node's epoch {current}: the sender is a stale primary and must fence itself")]
    StaleEpoch { got: Epoch, current: Epoch },
    #[error("discontinuity: expected {expected}, got segment {segment} at offset {offset} (segment start {segment_start})")]
    Discontinuity {
        expected: String,
        segment: String,
        offset: u64,
        segment_start: u64,
    },
    #[error("segment {segment} is already complete here; a segment is never overwritten")]
    AlreadySealed { segment: String },
    #[error("chunk of segment {segment}: start {segment_start} + offset {offset} + {len} bytes is beyond the largest position")]
    Overflow {
        segment: String,
        segment_start: u64,
        offset: u64,
        len: u64,
    },
    #[error("seal of {segment}: size {sealed} does not match the {received} bytes received")]
    SealSize {
        segment: String,
        sealed: u64,
        received: u64,
    },
    #[error("seal of {segment}: hash chain mismatch (primary {expected}, replica {actual}); the primary's log is not the one this replica holds")]
    SealChain {
        segment: String,
        expected: String,
        actual: String,
    },
    #[error("seal of {segment}: whole-file SHA-256 mismatch (primary {expected}, replica {actual}); the segment stays partial and is not visible")]
    SealChecksum {
        segment: String,
        expected: String,
        actual: String,
    },
}

/// What to do with an accepted chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkAction {
    /// Append to the current partial segment.
    Append,
    /// Start a new partial segment (the previous one, if any, is sealed).
    StartSegment,
}

/// What to do with an accepted seal.
#[derive(Debug, PartialEq, Eq)]
pub enum SealAction {
    /// Verify the whole-file checksum, then make the segment complete.
    Verify,
    /// The same seal again (e.g. after a reconnect): already done, just ack.
    AlreadyDone,
}

/// Receiver state of one stream.
#[derive(Clone, Debug)]
pub struct Receiver {
    /// This node's epoch; messages from a lower one are refused.
    pub epoch: Epoch,
    pub tail: Option<Tail>,
}

impl Receiver {
    pub fn new(epoch: Epoch, tail: Option<Tail>) -> Self {
        Self { epoch, tail }
    }

    fn check_epoch(&self, got: Epoch) -> Result<(), Reject> {
        if got < self.epoch && !mutation::active(Mutation::AcceptLowerEpoch) {
            return Err(Reject::StaleEpoch {
                got,
                current: self.epoch,
            });
        }
        Ok(())
    }

    fn expected(&self) -> String {
        match &self.tail {
            None => "the first byte of a segment (offset 0)".into(),
            Some(t) if t.sealed => format!(
                "offset 0 of a segment after {} at position {}",
                t.segment,
                t.end()
            ),
            Some(t) => format!("segment {} at offset {}", t.segment, t.size),
        }
    }

    fn discontinuity(&self, segment: &SegmentName, offset: u64, segment_start: u64) -> Reject {
        Reject::Discontinuity {
            expected: self.expected(),
            segment: segment.to_string(),
            offset,
            segment_start,
        }
    }

    /// Decides on a chunk and, if accepted, advances the accepted position.
    pub fn on_chunk(&mut self, c: &Chunk) -> Result<ChunkAction, Reject> {
        let action = self.decide_chunk(c)?;
        self.accept_chunk(action, c);
        Ok(action)
    }

    /// Decides on a chunk without changing anything: the caller writes it,
    /// then calls [`Receiver::accept_chunk`]. A chunk whose write failed
    /// (disk full) must not count as accepted, or the next group commit
    /// would record bytes that are not in the file.
    pub fn decide_chunk(&self, c: &Chunk) -> Result<ChunkAction, Reject> {
        self.check_epoch(c.epoch)?;
        // Checked on receipt too (drd_proto); a chunk built otherwise must
        // not make the tail's end wrap either.
        let len = c.data.len() as u64;
        if c.segment_start
            .checked_add(c.offset)
            .and_then(|p| p.checked_add(len))
            .is_none()
        {
            return Err(Reject::Overflow {
                segment: c.segment.to_string(),
                segment_start: c.segment_start,
                offset: c.offset,
                len,
            });
        }
        let action = match &self.tail {
            Some(t) if t.segment == c.segment => {
                if t.sealed {
                    return Err(Reject::AlreadySealed {
                        segment: c.segment.to_string(),
                    });
                }
                if c.segment_start != t.start || c.offset != t.size {
                    return Err(self.discontinuity(&c.segment, c.offset, c.segment_start));
                }
                ChunkAction::Append
            }
            Some(t) if c.segment < t.segment => {
                return Err(Reject::AlreadySealed {
                    segment: c.segment.to_string(),
                })
            }
            Some(t) => {
                if !(t.sealed && c.offset == 0 && c.segment_start == t.end()) {
                    return Err(self.discontinuity(&c.segment, c.offset, c.segment_start));
                }
                ChunkAction::StartSegment
            }
            None if c.offset != 0 => {
                return Err(self.discontinuity(&c.segment, c.offset, c.segment_start))
            }
            None => ChunkAction::StartSegment,
        };
        Ok(action)
    }

    /// Advances the accepted position past a chunk that `decide_chunk`
    /// accepted and that was written.
    pub fn accept_chunk(&mut self, action: ChunkAction, c: &Chunk) {
        let len = c.data.len() as u64;
        match action {
            ChunkAction::Append => {
                if let Some(t) = &mut self.tail {
                    t.size += len;
                }
            }
            ChunkAction::StartSegment => {
                self.tail = Some(Tail {
                    segment: c.segment.clone(),
                    start: c.segment_start,
                    size: len,
                    sealed: false,
                })
            }
        }
    }

    /// Decides on a seal. On `Verify` the caller checks the checksum and then
    /// calls [`Receiver::sealed`].
    pub fn on_seal(&self, s: &Seal) -> Result<SealAction, Reject> {
        self.check_epoch(s.epoch)?;
        let Some(t) = self
            .tail
            .as_ref()
            .filter(|t| t.segment == s.segment && t.start == s.segment_start)
        else {
            return Err(self.discontinuity(&s.segment, s.size, s.segment_start));
        };
        if s.size != t.size {
            return Err(Reject::SealSize {
                segment: s.segment.to_string(),
                sealed: s.size,
                received: t.size,
            });
        }
        if t.sealed {
            return Ok(SealAction::AlreadyDone);
        }
        Ok(SealAction::Verify)
    }

    /// Records that the tail's checksum matched and it is now complete.
    pub fn sealed(&mut self) {
        if let Some(t) = &mut self.tail {
            t.sealed = true;
        }
    }

    /// Compares the seal's digest with the one computed over the stored
    /// bytes, and its chain value with the one computed from this replica's
    /// chain head.
    pub fn check_digest(s: &Seal, actual: &[u8; 32], chain_head: &[u8; 32]) -> Result<(), Reject> {
        if mutation::active(Mutation::SkipSealChecksum) {
            return Ok(());
        }
        if &s.sha256 != actual {
            return Err(Reject::SealChecksum {
                segment: s.segment.to_string(),
                expected: hex::encode(s.sha256),
                actual: hex::encode(actual),
            });
        }
        let chain = crate::chain::link(chain_head, actual, s.segment.as_str(), s.size);
        if s.chain != chain {
            return Err(Reject::SealChain {
                segment: s.segment.to_string(),
                expected: hex::encode(s.chain),
                actual: hex::encode(chain),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn seg(n: &str) -> SegmentName {
        SegmentName::new(n).unwrap()
    }

    fn chunk(epoch: Epoch, name: &str, start: u64, offset: u64, len: usize) -> Chunk {
        Chunk {
            epoch,
            segment: seg(name),
            segment_start: start,
            offset,
            data: Bytes::from(vec![7u8; len]),
            source_position: 0,
            written_at_ms: 0,
            source_lsn: Default::default(),
            data_crc32c: None,
        }
    }

    fn seal(epoch: Epoch, name: &str, start: u64, size: u64) -> Seal {
        Seal {
            epoch,
            segment: seg(name),
            segment_start: start,
            size,
            sha256: [0; 32],
            source_position: 0,
            chain: crate::chain::link(&crate::chain::GENESIS, &[0; 32], name, size),
        }
    }

    #[test]
    fn a_log_grows_segment_by_segment() {
        let mut r = Receiver::new(1, None);
        assert_eq!(
            r.on_chunk(&chunk(1, "a", 0, 0, 10)),
            Ok(ChunkAction::StartSegment)
        );
        assert_eq!(
            r.on_chunk(&chunk(1, "a", 0, 10, 5)),
            Ok(ChunkAction::Append)
        );
        // The next segment cannot start before this one is sealed.
        assert!(matches!(
            r.on_chunk(&chunk(1, "b", 15, 0, 5)),
            Err(Reject::Discontinuity { .. })
        ));
        assert_eq!(r.on_seal(&seal(1, "a", 0, 15)), Ok(SealAction::Verify));
        r.sealed();
        assert_eq!(r.on_seal(&seal(1, "a", 0, 15)), Ok(SealAction::AlreadyDone));
        // Wrong start position for the next segment.
        assert!(r.on_chunk(&chunk(1, "b", 14, 0, 5)).is_err());
        assert_eq!(
            r.on_chunk(&chunk(1, "b", 15, 0, 5)),
            Ok(ChunkAction::StartSegment)
        );
        assert_eq!(r.tail.as_ref().unwrap().end(), 20);
    }

    #[test]
    fn gaps_overlaps_and_rewrites_are_refused() {
        let mut r = Receiver::new(1, None);
        assert!(
            r.on_chunk(&chunk(1, "a", 0, 5, 5)).is_err(),
            "first chunk not at 0"
        );
        r.on_chunk(&chunk(1, "a", 0, 0, 10)).unwrap();
        assert!(r.on_chunk(&chunk(1, "a", 0, 11, 1)).is_err(), "gap");
        assert!(r.on_chunk(&chunk(1, "a", 0, 9, 1)).is_err(), "overlap");
        assert_eq!(r.tail.as_ref().unwrap().size, 10, "refusals change nothing");
        assert!(matches!(
            r.on_seal(&seal(1, "a", 0, 11)),
            Err(Reject::SealSize { .. })
        ));
        r.sealed();
        assert!(matches!(
            r.on_chunk(&chunk(1, "a", 0, 10, 1)),
            Err(Reject::AlreadySealed { .. })
        ));
        r.on_chunk(&chunk(1, "c", 10, 0, 1)).unwrap();
        assert!(matches!(
            r.on_chunk(&chunk(1, "b", 11, 0, 1)),
            Err(Reject::AlreadySealed { .. })
        ));
    }

    /// Issue 15: a first chunk near u64::MAX was accepted, and the tail's
    /// end (start + size) then overflowed on the next message.
    #[test]
    fn positions_past_the_largest_are_refused() {
        let mut r = Receiver::new(1, None);
        let e = r.on_chunk(&chunk(1, "a", u64::MAX - 5, 0, 10)).unwrap_err();
        assert!(matches!(e, Reject::Overflow { .. }), "{e:?}");
        assert!(e.to_string().contains(&(u64::MAX - 5).to_string()), "{e}");
        assert!(r.tail.is_none(), "nothing accepted");
        r.on_chunk(&chunk(1, "a", 0, 0, 10)).unwrap();
        assert!(matches!(
            r.on_chunk(&chunk(1, "b", u64::MAX, u64::MAX, 1)),
            Err(Reject::Overflow { .. })
        ));
        assert!(r.on_seal(&seal(1, "a", u64::MAX, u64::MAX)).is_err());
        assert_eq!(r.tail.as_ref().unwrap().end(), 10);
    }

    #[test]
    fn lower_epochs_are_refused() {
        let mut r = Receiver::new(3, None);
        assert!(matches!(
            r.on_chunk(&chunk(2, "a", 0, 0, 1)),
            Err(Reject::StaleEpoch { got: 2, current: 3 })
        ));
        assert!(r.tail.is_none());
        assert!(r.on_chunk(&chunk(3, "a", 0, 0, 1)).is_ok());
        assert!(matches!(
            r.on_seal(&seal(2, "a", 0, 1)),
            Err(Reject::StaleEpoch { .. })
        ));
    }

    #[test]
    fn digest_mismatch_is_named() {
        let s = seal(1, "a", 0, 1);
        let g = crate::chain::GENESIS;
        assert!(Receiver::check_digest(&s, &[0; 32], &g).is_ok());
        let e = Receiver::check_digest(&s, &[1; 32], &g).unwrap_err();
        assert!(e.to_string().contains("SHA-256 mismatch"));
        let e = Receiver::check_digest(&s, &[0; 32], &[9; 32]).unwrap_err();
        assert!(
            matches!(e, Reject::SealChain { .. }),
            "a seal that does not extend our chain"
        );
    }
}
