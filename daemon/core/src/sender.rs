//! The primary's rules for one replication session, without I/O: where to
//! resume from the replica's word, what to send next (a chunk within the
//! in-flight window, a seal, or nothing until the source grows), and which
//! acks to believe.
//!
//! The daemon's shipper (`primary/shipper.rs`) and drd-sim's primary both
//! drive it: they tell it what the source looks like and carry out its
//! [`Next`] decision, then report what they did.

use crate::mutation::{self, Mutation};
use drd_proto::SegmentName;

/// What the replica's Welcome says it holds at the end of its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaEnd {
    pub segment: SegmentName,
    pub start: u64,
    pub size: u64,
    pub sealed: bool,
}

/// Where a session starts, from the replica's durable position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The replica holds nothing: ship from this log's first segment.
    FromFirst,
    /// Continue the replica's partial segment at its durable size.
    Continue(Cursor),
    /// The replica's last segment is sealed: ship the one after it, which
    /// starts at `next_start`.
    After {
        sealed: SegmentName,
        next_start: u64,
    },
}

/// Why the sender stops a session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("segment {segment}: start {start} + {len} bytes is beyond the largest position")]
    Overflow {
        segment: String,
        start: u64,
        len: u64,
    },
    #[error(
        "segment {segment} shrank from {sent} to {size} bytes; WAL segments must be append-only"
    )]
    Shrank {
        segment: String,
        sent: u64,
        size: u64,
    },
    #[error(
        "the replica acked position {acked} but this session sent bytes only up to {sent}; \
         its acks are not believed (a bug in the replica's drd, or not a drd at all)"
    )]
    AckPastSent { acked: u64, sent: u64 },
    #[error(
        "the replica acked segment {segment:?} as sealed, but its seal was never sent \
         (last seal sent: {last}); its acks are not believed"
    )]
    SealNeverSent { segment: String, last: String },
}

/// The end position of `len` bytes of a segment that starts at `start`,
/// checked: positions from a peer must never wrap.
pub fn position_after(segment: &SegmentName, start: u64, len: u64) -> Result<u64, SendError> {
    start.checked_add(len).ok_or_else(|| SendError::Overflow {
        segment: segment.to_string(),
        start,
        len,
    })
}

/// Where to resume, from the end of the replica's log (None: it holds
/// nothing). The replica's durable position is the truth: after any crash,
/// partition or restart, shipping resumes at exactly that byte.
pub fn resume(end: Option<&ReplicaEnd>) -> Result<Resume, SendError> {
    let Some(e) = end else {
        return Ok(Resume::FromFirst);
    };
    if !e.sealed {
        return Ok(Resume::Continue(Cursor {
            segment: e.segment.clone(),
            start: e.start,
            offset: e.size,
        }));
    }
    Ok(Resume::After {
        sealed: e.segment.clone(),
        next_start: position_after(&e.segment, e.start, e.size)?,
    })
}

/// The segment being shipped and how much of it has been sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub segment: SegmentName,
    /// Stream position of the segment's first byte.
    pub start: u64,
    /// Bytes of the segment sent so far (or held by the replica).
    pub offset: u64,
}

/// What the driver knows of the cursor's segment in the source right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceView {
    /// The segment's current size in the source.
    pub size: u64,
    /// A newer segment exists (so this one is complete), or the source is
    /// a spool whose files are complete when they appear.
    pub complete: bool,
}

/// The sender's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read and send `len` bytes at the cursor's offset; the chunk ends at
    /// stream position `end`.
    Chunk { len: u64, end: u64 },
    /// The in-flight window is full: wait for an ack past `need` − window.
    WaitForAcks { end: u64 },
    /// The segment is complete at `size`: re-check its size, hash it and
    /// send its seal.
    Seal { size: u64 },
    /// Caught up with the active segment: wait for it to grow.
    WaitForSource,
}

/// Limits of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest chunk (bytes of data).
    pub chunk_bytes: u64,
    /// Bytes sent but not yet acked, at most.
    pub window_bytes: u64,
}

impl Limits {
    /// The session's limits: the primary's own window, narrowed to what the
    /// replica granted in its Welcome (`granted`, 0 = no limit). A chunk is
    /// never larger than the window (or one chunk could never go out), and
    /// neither is ever 0.
    pub fn new(chunk_bytes: u64, own_window: u64, granted: u64) -> Self {
        let window = match granted {
            0 => own_window,
            g => own_window.min(g),
        }
        .max(1);
        Self {
            chunk_bytes: chunk_bytes.min(window).max(1),
            window_bytes: window,
        }
    }
}

/// One session's state at the primary: what was sent, what the replica has
/// acked, and the checks on its acks.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// Stream position just past the last chunk handed to the transport.
    sent_end: u64,
    /// The replica's durable position as acked (or welcomed).
    acked: u64,
    /// The last segment whose seal was handed to the transport (or that the
    /// replica's Welcome reported sealed).
    sealed: Option<String>,
}

/// What an ack the sender believed tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub durable: u64,
    /// The segment the ack reports sealed (durable and verified at the
    /// replica: sync wal-push and spool pruning wait for this).
    pub sealed: Option<String>,
}

impl Session {
    /// A session that starts from the replica's Welcome.
    pub fn new(durable: u64, end: Option<&ReplicaEnd>) -> Self {
        Session {
            sent_end: durable,
            acked: durable,
            sealed: end.filter(|e| e.sealed).map(|e| e.segment.to_string()),
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn sent_end(&self) -> u64 {
        self.sent_end
    }

    /// What to do next at `cur`, given the source's view of its segment,
    /// the limits and `cap` (the bandwidth limiter's largest chunk now).
    pub fn next(
        &self,
        cur: &Cursor,
        src: SourceView,
        limits: Limits,
        cap: u64,
    ) -> Result<Next, SendError> {
        if cur.offset < src.size {
            let len = (src.size - cur.offset)
                .min(limits.chunk_bytes)
                .min(cap)
                .max(1);
            let end = position_after(&cur.segment, cur.start, cur.offset + len)?;
            if end.saturating_sub(self.acked) > limits.window_bytes {
                return Ok(Next::WaitForAcks { end });
            }
            return Ok(Next::Chunk { len, end });
        }
        if cur.offset > src.size {
            return Err(SendError::Shrank {
                segment: cur.segment.to_string(),
                sent: cur.offset,
                size: src.size,
            });
        }
        if src.complete {
            return Ok(Next::Seal { size: src.size });
        }
        Ok(Next::WaitForSource)
    }

    /// Whether the window lets a chunk ending at `end` go out now.
    pub fn window_open(&self, end: u64, limits: Limits) -> bool {
        end.saturating_sub(self.acked) <= limits.window_bytes
    }

    /// Records a chunk handed to the transport, before the send: its ack
    /// can only come after it.
    pub fn sent_chunk(&mut self, end: u64) {
        self.sent_end = self.sent_end.max(end);
    }

    /// Records a seal handed to the transport.
    pub fn sent_seal(&mut self, segment: &SegmentName) {
        self.sealed = Some(segment.to_string());
    }

    /// Checks an ack against what was sent. A replica that acks bytes or a
    /// seal it was never sent is broken or hostile; believing it would show
    /// lag 0 — and let a sync `wal-push` report success — for WAL that is
    /// not at the DR site.
    pub fn on_ack(
        &mut self,
        durable: u64,
        sealed: bool,
        segment: &str,
    ) -> Result<Acked, SendError> {
        if durable > self.sent_end && !mutation::active(Mutation::BelieveAnyAck) {
            return Err(SendError::AckPastSent {
                acked: durable,
                sent: self.sent_end,
            });
        }
        if sealed {
            // Segment names are ordered: a seal ack may repeat an older one.
            if self.sealed.as_deref().is_none_or(|s| segment > s)
                && !mutation::active(Mutation::BelieveAnyAck)
            {
                return Err(SendError::SealNeverSent {
                    segment: segment.to_string(),
                    last: self.sealed.clone().unwrap_or_else(|| "none".into()),
                });
            }
        }
        // Acks of one session only grow; an older one (reordered by a
        // driver) does not move the position back.
        self.acked = self.acked.max(durable);
        Ok(Acked {
            durable,
            sealed: sealed.then(|| segment.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: u64) -> SegmentName {
        SegmentName::new(format!("{n:024X}")).unwrap()
    }

    const L: Limits = Limits {
        chunk_bytes: 100,
        window_bytes: 250,
    };

    #[test]
    fn resumes_at_the_replicas_durable_byte() {
        assert_eq!(resume(None).unwrap(), Resume::FromFirst);
        let partial = ReplicaEnd {
            segment: seg(1),
            start: 1000,
            size: 40,
            sealed: false,
        };
        assert_eq!(
            resume(Some(&partial)).unwrap(),
            Resume::Continue(Cursor {
                segment: seg(1),
                start: 1000,
                offset: 40
            })
        );
        let sealed = ReplicaEnd {
            sealed: true,
            ..partial
        };
        assert_eq!(
            resume(Some(&sealed)).unwrap(),
            Resume::After {
                sealed: seg(1),
                next_start: 1040
            }
        );
        let wraps = ReplicaEnd {
            start: u64::MAX,
            ..sealed
        };
        assert!(matches!(
            resume(Some(&wraps)),
            Err(SendError::Overflow { .. })
        ));
    }

    /// Issue 18: a DR node with many streams grants each a smaller window
    /// than the primary's own; a grant below the chunk size still lets
    /// chunks go out (smaller ones), and 0 (an older replica) changes
    /// nothing.
    #[test]
    fn a_granted_window_narrows_the_session_and_chunks_fit_in_it() {
        assert_eq!(
            Limits::new(1 << 20, 8 << 20, 0),
            Limits {
                chunk_bytes: 1 << 20,
                window_bytes: 8 << 20
            }
        );
        assert_eq!(
            Limits::new(1 << 20, 8 << 20, 2 << 20),
            Limits {
                chunk_bytes: 1 << 20,
                window_bytes: 2 << 20
            }
        );
        let tight = Limits::new(1 << 20, 8 << 20, 300_000);
        assert_eq!(
            tight,
            Limits {
                chunk_bytes: 300_000,
                window_bytes: 300_000
            }
        );
        // With nothing in flight, a chunk goes out under the tight window.
        let s = Session::default();
        let cur = Cursor {
            segment: seg(1),
            start: 0,
            offset: 0,
        };
        let src = SourceView {
            size: 4 << 20,
            complete: false,
        };
        assert_eq!(
            s.next(&cur, src, tight, u64::MAX).unwrap(),
            Next::Chunk {
                len: 300_000,
                end: 300_000
            }
        );
        assert_eq!(
            Limits::new(0, 0, 0),
            Limits {
                chunk_bytes: 1,
                window_bytes: 1
            }
        );
    }

    #[test]
    fn chunks_stay_within_the_window_then_seal() {
        let mut s = Session::new(0, None);
        let mut cur = Cursor {
            segment: seg(1),
            start: 0,
            offset: 0,
        };
        let src = SourceView {
            size: 300,
            complete: false,
        };
        assert_eq!(
            s.next(&cur, src, L, u64::MAX).unwrap(),
            Next::Chunk { len: 100, end: 100 }
        );
        s.sent_chunk(100);
        cur.offset = 100;
        s.sent_chunk(200);
        cur.offset = 200;
        // 300 - 0 acked > 250: wait.
        assert_eq!(
            s.next(&cur, src, L, u64::MAX).unwrap(),
            Next::WaitForAcks { end: 300 }
        );
        s.on_ack(100, false, "").unwrap();
        assert_eq!(
            s.next(&cur, src, L, 30).unwrap(),
            Next::Chunk { len: 30, end: 230 }
        );
        cur.offset = 300;
        assert_eq!(s.next(&cur, src, L, u64::MAX).unwrap(), Next::WaitForSource);
        let done = SourceView {
            complete: true,
            ..src
        };
        assert_eq!(
            s.next(&cur, done, L, u64::MAX).unwrap(),
            Next::Seal { size: 300 }
        );
        let shrank = SourceView { size: 10, ..src };
        assert!(matches!(
            s.next(&cur, shrank, L, u64::MAX),
            Err(SendError::Shrank { .. })
        ));
    }

    #[test]
    fn acks_past_what_was_sent_are_refused() {
        let mut s = Session::new(50, None);
        s.sent_chunk(100);
        assert!(matches!(
            s.on_ack(101, false, ""),
            Err(SendError::AckPastSent { .. })
        ));
        assert_eq!(s.on_ack(100, false, "").unwrap().durable, 100);
        // A seal that was never sent.
        let name = seg(1).to_string();
        assert!(matches!(
            s.on_ack(100, true, &name),
            Err(SendError::SealNeverSent { .. })
        ));
        s.sent_seal(&seg(1));
        assert!(s.on_ack(100, true, &name).is_ok());
        // An older seal again is fine; a newer one is not.
        assert!(s.on_ack(100, true, seg(0).as_ref()).is_ok());
        assert!(s.on_ack(100, true, seg(2).as_ref()).is_err());
    }
}
