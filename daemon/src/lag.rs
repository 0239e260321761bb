//! Lag and throughput bookkeeping, without clocks of its own: callers pass the
//! time in, so the rules are testable.
//!
//! Lag in seconds is the age of the oldest byte that is written but not yet
//! durable at the replica. We remember when each written position was first
//! seen; the oldest such mark above the durable position gives that age.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Marks closer together than this are merged; merging only ever makes the
/// reported lag larger (by at most this much), never smaller.
const MERGE_WINDOW: Duration = Duration::from_millis(10);
/// Upper bound on remembered marks (memory bound under any backlog).
const MAX_MARKS: usize = 4096;
/// Throughput is averaged over this window.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Remembers when written positions were first seen.
#[derive(Debug, Default)]
pub struct LagTracker {
    /// (position, first seen): bytes below `position` existed at that time.
    marks: VecDeque<(u64, Instant)>,
    written: u64,
}

impl LagTracker {
    /// Records that the source has `written` bytes at time `now`.
    pub fn observe_written(&mut self, written: u64, now: Instant) {
        if written <= self.written {
            return;
        }
        self.written = written;
        match self.marks.back_mut() {
            Some((pos, t)) if now.duration_since(*t) < MERGE_WINDOW => *pos = written,
            _ => {
                if self.marks.len() >= MAX_MARKS {
                    self.compact();
                }
                self.marks.push_back((written, now))
            }
        }
    }

    /// Halves the marks by merging neighbours: (p1, t1), (p2, t2) become
    /// (p2, t1), which keeps every byte's time at or before its true time.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.marks);
        let mut it = old.into_iter();
        while let Some((p1, t1)) = it.next() {
            let p = it.next().map_or(p1, |(p2, _)| p2);
            self.marks.push_back((p, t1));
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Starts over at `written` when this node's log is now shorter than
    /// what was tracked: a rejoin moved everything past the fork into
    /// quarantine, so the old high-water mark names bytes that no longer
    /// exist and would be reported as lag forever. A log that only grew is
    /// left alone (its first-seen times stay, so lag is never understated).
    pub fn rebase(&mut self, written: u64, now: Instant) {
        if written < self.written {
            self.marks.clear();
            self.written = 0;
        }
        self.observe_written(written, now);
    }

    /// Age of the oldest byte above `durable`; zero when caught up.
    pub fn lag(&mut self, durable: u64, now: Instant) -> Duration {
        // A mark whose whole range is durable is no longer needed. The first
        // remaining mark covers the oldest non-durable byte.
        while let Some(&(pos, _)) = self.marks.front() {
            if pos <= durable {
                self.marks.pop_front();
            } else {
                break;
            }
        }
        match self.marks.front() {
            Some(&(_, t)) if durable < self.written => now.saturating_duration_since(t),
            _ => Duration::ZERO,
        }
    }
}

/// Bytes per second of a growing counter over the last few seconds.
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    pub fn record(&mut self, value: u64, now: Instant) {
        if let Some(&(t, _)) = self.samples.back() {
            if now.duration_since(t) < Duration::from_millis(100) {
                return;
            }
        }
        self.samples.push_back((now, value));
        while let Some(&(t, _)) = self.samples.front() {
            if now.duration_since(t) > RATE_WINDOW && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn rate(&self, now: Instant) -> f64 {
        let (Some(&(t0, v0)), Some(&(_, v1))) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        let secs = now.duration_since(t0).as_secs_f64();
        if secs <= 0.0 || now.duration_since(t0) > RATE_WINDOW * 2 && v1 == v0 {
            return 0.0;
        }
        (v1.saturating_sub(v0)) as f64 / secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_unacked_byte() {
        let t0 = Instant::now();
        let mut l = LagTracker::default();
        assert_eq!(l.lag(0, t0), Duration::ZERO);
        l.observe_written(100, t0);
        l.observe_written(200, t0 + Duration::from_secs(1));
        let now = t0 + Duration::from_secs(3);
        assert_eq!(l.lag(0, now), Duration::from_secs(3));
        assert_eq!(l.lag(99, now), Duration::from_secs(3));
        assert_eq!(l.lag(100, now), Duration::from_secs(2));
        assert_eq!(l.lag(200, now), Duration::ZERO);
    }

    #[test]
    fn rebase_forgets_a_log_that_was_cut_back() {
        let t0 = Instant::now();
        let mut l = LagTracker::default();
        l.observe_written(5_177_344, t0);
        // A rejoin cut the log back to the fork: the old mark must go.
        l.rebase(851_968, t0 + Duration::from_secs(1));
        assert_eq!(l.written(), 851_968);
        assert_eq!(l.lag(851_968, t0 + Duration::from_secs(2)), Duration::ZERO);
        // A log that grew keeps its first-seen time.
        l.rebase(900_000, t0 + Duration::from_secs(3));
        assert_eq!(l.written(), 900_000);
        assert_eq!(
            l.lag(851_968, t0 + Duration::from_secs(4)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn marks_stay_bounded_and_never_understate() {
        let t0 = Instant::now();
        let mut l = LagTracker::default();
        for i in 1..100_000u64 {
            l.observe_written(i, t0 + Duration::from_millis(i * 20));
        }
        assert!(l.marks.len() <= MAX_MARKS);
        let now = t0 + Duration::from_millis(100_000 * 20);
        // Byte 50_000 was written at ~1000 s; the report may only be older.
        assert!(l.lag(50_000, now) >= Duration::from_millis((100_000 - 50_001) * 20));
    }
}
