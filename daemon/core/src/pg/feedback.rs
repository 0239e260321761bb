//! What drd reports to PostgreSQL as its write and flush positions in
//! standby status updates, and when. Without I/O: the driver reports what
//! happened (WAL written, fdatasync'd, acked by the DR site) and asks
//! [`Feedback::poll`] what to send; times are passed in.
//!
//! In sync mode the flush position is what the DR site holds durable, so a
//! synchronous commit at the primary returns only once its WAL is at the DR
//! site. In async mode it is what drd holds durable locally. Either way the
//! reported positions never go backwards within a timeline: the walsender
//! moves the slot's restart_lsn to the flush position it is told, whatever
//! it is, and a step back could look like an invalidated slot.

use super::lsn::Lsn;

/// The longest drd goes without a status update: pg_receivewal's default
/// (`--status-interval` 10 s). It is well inside `wal_sender_timeout` (60 s
/// by default), after which the walsender drops a silent standby.
pub const STATUS_INTERVAL_MS: u64 = 10_000;

/// The shortest gap between two status updates in async mode when only the
/// position changed: no commit waits for them, and a reply per XLogData
/// message would double the traffic on the link for nothing.
pub const ASYNC_MIN_INTERVAL_MS: u64 = 100;

/// Which durable position drd reports as its flush position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// drd's own durable position: commits do not wait for the DR site.
    Async,
    /// The DR site's durable position: a synchronous commit waits until
    /// its WAL is durable at the DR site.
    Sync,
}

/// The reporting state of one replication stream (one slot), across its
/// connections and timelines.
#[derive(Clone, Debug)]
pub struct Feedback {
    /// Which durable position the flush position follows.
    mode: Mode,
    /// The timeline being streamed; positions reported on an earlier one
    /// do not clamp this one's.
    tli: u32,
    /// The end of the WAL written to the local file on this timeline.
    written: Lsn,
    /// The end of the WAL fdatasync'd locally on this timeline.
    local_durable: Lsn,
    /// The DR site's durable end, as an LSN on the timeline it belongs to;
    /// it counts only while that is the timeline streamed.
    dr_durable: Option<(u32, Lsn)>,
    /// The (write, flush) last sent on this timeline: the floor under every
    /// later report.
    sent: (Lsn, Lsn),
    /// When the last status update was sent (ms).
    sent_at: u64,
    /// Send at the next poll whatever the intervals say: a new stream (the
    /// walsender waits for a first reply) or a mode change.
    send_now: bool,
}

impl Feedback {
    /// A fresh stream on timeline `tli`: nothing written, nothing reported;
    /// the first poll sends (as pg_receivewal does on every new stream).
    pub fn new(mode: Mode, tli: u32) -> Feedback {
        Feedback {
            mode,
            tli,
            written: Lsn::INVALID,
            local_durable: Lsn::INVALID,
            dr_durable: None,
            sent: (Lsn::INVALID, Lsn::INVALID),
            sent_at: 0,
            send_now: true,
        }
    }

    /// Switches the mode (`drctl mode`). To async: the flush position rises
    /// to the local durable one at once, and waiting commits return. To
    /// sync: the flush position holds where it is until the DR site passes
    /// it. The next poll sends either way.
    pub fn set_mode(&mut self, mode: Mode) {
        if mode != self.mode {
            self.mode = mode;
            self.send_now = true;
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// WAL up to `end` was received and written to the local file.
    pub fn written(&mut self, end: Lsn) {
        self.written = self.written.max(end);
    }

    /// WAL up to `end` is durable locally (fdatasync returned).
    pub fn local_durable(&mut self, end: Lsn) {
        self.local_durable = self.local_durable.max(end);
    }

    /// The DR site acked its copy durable up to `end` on timeline `tli`.
    /// A later ack on the same timeline never lowers it; one on another
    /// timeline replaces it.
    pub fn dr_durable(&mut self, tli: u32, end: Lsn) {
        self.dr_durable = match self.dr_durable {
            Some((t, prev)) if t == tli => Some((t, prev.max(end))),
            _ => Some((tli, end)),
        };
    }

    /// A new START_REPLICATION on timeline `tli`; the next poll sends. On
    /// another timeline the LSNs are a new series: what was written, made
    /// durable and reported on the old one no longer counts, so the clamp
    /// starts again from [`Lsn::INVALID`] (which PostgreSQL ignores as a
    /// flush position). The DR site's position is kept with its timeline.
    pub fn timeline(&mut self, tli: u32) {
        self.send_now = true;
        if tli != self.tli {
            self.tli = tli;
            self.written = Lsn::INVALID;
            self.local_durable = Lsn::INVALID;
            self.sent = (Lsn::INVALID, Lsn::INVALID);
        }
    }

    /// The (write, flush) that would be reported now. Never below what was
    /// last sent on this timeline, and flush ≤ write.
    ///
    /// Async: write = written, flush = local durable. Sync: flush = the
    /// lesser of the local and the DR site's durable ends (the DR's only
    /// when on this timeline; none yet means no advance), and write =
    /// flush, except that write does not fall back below a write position
    /// reported earlier in async mode.
    pub fn position(&self) -> (Lsn, Lsn) {
        let (sent_write, sent_flush) = self.sent;
        let flush = match self.mode {
            Mode::Async => self.local_durable,
            Mode::Sync => match self.dr_durable {
                Some((tli, dr)) if tli == self.tli => self.local_durable.min(dr),
                _ => Lsn::INVALID,
            },
        }
        .max(sent_flush);
        let write = match self.mode {
            Mode::Async => self.written,
            Mode::Sync => flush,
        }
        .max(flush)
        .max(sent_write);
        (write, flush)
    }

    /// The (write, flush) to send now, if a status update is due, recorded
    /// as sent at `now_ms`; the driver adds apply = [`Lsn::INVALID`] and the
    /// time. Due: on a new stream or mode change; when the server asked
    /// (`reply_requested`); when the position changed (sync: at once,
    /// async: [`ASYNC_MIN_INTERVAL_MS`] after the last send); and
    /// [`STATUS_INTERVAL_MS`] after the last send in any case.
    pub fn poll(&mut self, now_ms: u64, reply_requested: bool) -> Option<(Lsn, Lsn)> {
        let position = self.position();
        if !(reply_requested || now_ms >= self.due_at(position)) {
            return None;
        }
        self.sent = position;
        self.sent_at = now_ms;
        self.send_now = false;
        Some(position)
    }

    /// The time (ms) by which [`Feedback::poll`] must be called even if
    /// nothing happens; at or before the last send when one is due already.
    pub fn next_due(&self) -> u64 {
        self.due_at(self.position())
    }

    /// When a report of `position` falls due.
    fn due_at(&self, position: (Lsn, Lsn)) -> u64 {
        if self.send_now {
            return self.sent_at;
        }
        let wait = if position == self.sent {
            STATUS_INTERVAL_MS
        } else {
            match self.mode {
                Mode::Sync => 0,
                Mode::Async => ASYNC_MIN_INTERVAL_MS,
            }
        };
        self.sent_at.saturating_add(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: fn(u64) -> Lsn = Lsn;

    /// A feedback that already sent its first report (0/0) at 0 ms.
    fn started(mode: Mode, tli: u32) -> Feedback {
        let mut f = Feedback::new(mode, tli);
        assert_eq!(f.poll(0, false), Some((Lsn::INVALID, Lsn::INVALID)));
        f
    }

    #[test]
    fn a_fresh_stream_reports_at_once() {
        let mut f = Feedback::new(Mode::Sync, 1);
        assert_eq!(f.next_due(), 0);
        assert_eq!(f.poll(5_000, false), Some((Lsn::INVALID, Lsn::INVALID)));
        assert_eq!(f.next_due(), 15_000);
        assert_eq!(f.poll(5_001, false), None);
    }

    #[test]
    fn async_reports_written_and_local_durable() {
        let mut f = started(Mode::Async, 1);
        f.written(L(0x300));
        f.local_durable(L(0x200));
        assert_eq!(f.position(), (L(0x300), L(0x200)));
        // The DR site does not matter in async mode.
        f.dr_durable(1, L(0x100));
        assert_eq!(f.position(), (L(0x300), L(0x200)));
        // Flush never exceeds write.
        f.local_durable(L(0x400));
        assert_eq!(f.position(), (L(0x400), L(0x400)));
    }

    #[test]
    fn sync_reports_the_lesser_of_local_and_dr_durable() {
        let mut f = started(Mode::Sync, 1);
        f.written(L(0x900));
        // Nothing at the DR site yet: nothing to report.
        f.local_durable(L(0x500));
        assert_eq!(f.position(), (Lsn::INVALID, Lsn::INVALID));
        f.dr_durable(1, L(0x300));
        assert_eq!(f.position(), (L(0x300), L(0x300)));
        // The DR site past drd's own durable end (it was sent WAL drd had
        // written but not yet synced): still only what is durable here.
        f.dr_durable(1, L(0x700));
        assert_eq!(f.position(), (L(0x500), L(0x500)));
        f.local_durable(L(0x800));
        assert_eq!(f.position(), (L(0x700), L(0x700)));
    }

    /// A small deterministic generator for the property tests.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn sync_never_passes_either_durable_end_and_nothing_goes_back() {
        for seed in 1..200 {
            let mut rng = Rng(seed);
            let mut f = Feedback::new(Mode::Sync, 2);
            let (mut local, mut dr) = (Lsn::INVALID, Lsn::INVALID);
            let mut last = (Lsn::INVALID, Lsn::INVALID);
            for now in 0..300 {
                let v = L(rng.below(10_000));
                match rng.below(5) {
                    0 => f.written(v),
                    1 => {
                        f.local_durable(v);
                        local = local.max(v);
                    }
                    2 => {
                        f.dr_durable(2, v);
                        dr = dr.max(v);
                    }
                    // An old timeline's ack never counts.
                    3 => f.dr_durable(1, L(20_000)),
                    _ => {}
                }
                if let Some((write, flush)) = f.poll(now, rng.below(4) == 0) {
                    assert!(flush <= local && flush <= dr, "seed {seed}");
                    assert_eq!(write, flush, "seed {seed}");
                    assert!(write >= last.0 && flush >= last.1, "seed {seed}");
                    last = (write, flush);
                }
            }
        }
    }

    #[test]
    fn reports_never_go_back_across_mode_switches() {
        for seed in 1..200 {
            let mut rng = Rng(seed);
            let mut f = Feedback::new(Mode::Async, 1);
            let mut last = (Lsn::INVALID, Lsn::INVALID);
            for now in 0..300 {
                let v = L(rng.below(10_000));
                match rng.below(6) {
                    0 => f.written(v),
                    1 => f.local_durable(v),
                    2 => f.dr_durable(1, v),
                    3 => f.set_mode(Mode::Sync),
                    4 => f.set_mode(Mode::Async),
                    _ => {}
                }
                let (write, flush) = f.position();
                assert!(flush <= write, "seed {seed}");
                assert!(write >= last.0 && flush >= last.1, "seed {seed}");
                if let Some(sent) = f.poll(now * 50, false) {
                    assert_eq!(sent, (write, flush));
                    last = sent;
                }
            }
        }
    }

    #[test]
    fn lower_positions_are_ignored() {
        let mut f = started(Mode::Sync, 1);
        f.local_durable(L(0x500));
        f.dr_durable(1, L(0x400));
        assert_eq!(f.poll(1, false), Some((L(0x400), L(0x400))));
        f.local_durable(L(0x100));
        f.dr_durable(1, L(0x200));
        assert_eq!(f.position(), (L(0x400), L(0x400)));
        // A DR position on another timeline, then back on this one lower
        // than before: the report holds.
        f.dr_durable(3, L(0x900));
        f.dr_durable(1, L(0x300));
        assert_eq!(f.position(), (L(0x400), L(0x400)));
    }

    #[test]
    fn dr_durable_on_an_old_timeline_does_not_count() {
        let mut f = started(Mode::Sync, 1);
        f.local_durable(L(0x500));
        f.dr_durable(1, L(0x500));
        assert_eq!(f.poll(1, false), Some((L(0x500), L(0x500))));
        f.timeline(2);
        // A new series: the clamp starts again, and the DR site's position
        // is on timeline 1.
        assert_eq!(f.position(), (Lsn::INVALID, Lsn::INVALID));
        f.written(L(0x600));
        f.local_durable(L(0x600));
        f.dr_durable(1, L(0x800));
        assert_eq!(f.position(), (Lsn::INVALID, Lsn::INVALID));
        f.dr_durable(2, L(0x580));
        assert_eq!(f.position(), (L(0x580), L(0x580)));
    }

    #[test]
    fn a_new_timeline_resets_local_positions_too() {
        let mut f = started(Mode::Async, 1);
        f.written(L(0x900));
        f.local_durable(L(0x900));
        assert_eq!(f.poll(200, false), Some((L(0x900), L(0x900))));
        f.timeline(2);
        // The new stream starts lower (at the segment of the switch point).
        f.written(L(0x700));
        f.local_durable(L(0x600));
        assert_eq!(f.poll(201, false), Some((L(0x700), L(0x600))));
    }

    #[test]
    fn the_same_timeline_again_keeps_the_clamp_and_sends() {
        let mut f = started(Mode::Async, 1);
        f.written(L(0x900));
        f.local_durable(L(0x900));
        assert_eq!(f.poll(200, false), Some((L(0x900), L(0x900))));
        f.timeline(1);
        assert_eq!(f.next_due(), 200);
        assert_eq!(f.poll(201, false), Some((L(0x900), L(0x900))));
    }

    #[test]
    fn sync_to_async_raises_flush_at_once() {
        let mut f = started(Mode::Sync, 1);
        f.written(L(0x900));
        f.local_durable(L(0x800));
        f.dr_durable(1, L(0x300));
        assert_eq!(f.poll(10, false), Some((L(0x300), L(0x300))));
        f.set_mode(Mode::Async);
        assert_eq!(f.mode(), Mode::Async);
        // Within ASYNC_MIN_INTERVAL_MS of the last send, and still sent.
        assert_eq!(f.next_due(), 10);
        assert_eq!(f.poll(11, false), Some((L(0x900), L(0x800))));
    }

    #[test]
    fn async_to_sync_holds_flush_until_the_dr_catches_up() {
        let mut f = started(Mode::Async, 1);
        f.written(L(0x900));
        f.local_durable(L(0x800));
        f.dr_durable(1, L(0x300));
        assert_eq!(f.poll(200, false), Some((L(0x900), L(0x800))));
        f.set_mode(Mode::Sync);
        assert_eq!(f.mode(), Mode::Sync);
        assert_eq!(f.poll(201, false), Some((L(0x900), L(0x800))));
        f.local_durable(L(0xA00));
        f.dr_durable(1, L(0x7FF));
        assert_eq!(f.position(), (L(0x900), L(0x800)));
        assert_eq!(f.poll(202, false), None);
        f.dr_durable(1, L(0x880));
        assert_eq!(f.poll(203, false), Some((L(0x900), L(0x880))));
        f.dr_durable(1, L(0x980));
        assert_eq!(f.poll(204, false), Some((L(0x980), L(0x980))));
        // Setting the mode it already has changes nothing.
        f.set_mode(Mode::Sync);
        assert_eq!(f.poll(205, false), None);
    }

    #[test]
    fn sync_sends_every_advance_at_once() {
        let mut f = started(Mode::Sync, 1);
        f.local_durable(L(0x900));
        for (now, dr) in [(1, 0x100), (2, 0x200), (3, 0x300)] {
            f.dr_durable(1, L(dr));
            assert_eq!(f.next_due(), now - 1);
            assert_eq!(f.poll(now, false), Some((L(dr), L(dr))));
        }
        // A write alone does not move a sync report.
        f.written(L(0xA00));
        assert_eq!(f.poll(4, false), None);
        assert_eq!(f.next_due(), 3 + STATUS_INTERVAL_MS);
    }

    #[test]
    fn async_sends_changes_at_most_every_100_ms() {
        let mut f = started(Mode::Async, 1);
        f.written(L(0x100));
        assert_eq!(f.next_due(), ASYNC_MIN_INTERVAL_MS);
        assert_eq!(f.poll(99, false), None);
        assert_eq!(f.poll(100, false), Some((L(0x100), Lsn::INVALID)));
        f.local_durable(L(0x100));
        assert_eq!(f.next_due(), 200);
        assert_eq!(f.poll(150, false), None);
        f.written(L(0x200));
        assert_eq!(f.poll(199, false), None);
        assert_eq!(f.poll(230, false), Some((L(0x200), L(0x100))));
        assert_eq!(f.next_due(), 230 + STATUS_INTERVAL_MS);
    }

    #[test]
    fn an_unchanged_position_is_sent_every_status_interval() {
        for mode in [Mode::Async, Mode::Sync] {
            let mut f = started(mode, 1);
            assert_eq!(f.next_due(), STATUS_INTERVAL_MS);
            assert_eq!(f.poll(STATUS_INTERVAL_MS - 1, false), None);
            assert_eq!(
                f.poll(STATUS_INTERVAL_MS, false),
                Some((Lsn::INVALID, Lsn::INVALID))
            );
            assert_eq!(f.next_due(), 2 * STATUS_INTERVAL_MS);
            // A late poll sends, and the interval counts from then.
            assert_eq!(
                f.poll(3 * STATUS_INTERVAL_MS + 7, false),
                Some((Lsn::INVALID, Lsn::INVALID))
            );
            assert_eq!(f.next_due(), 4 * STATUS_INTERVAL_MS + 7);
        }
    }

    #[test]
    fn reply_requested_forces_a_send() {
        for mode in [Mode::Async, Mode::Sync] {
            let mut f = started(mode, 1);
            assert_eq!(f.poll(1, true), Some((Lsn::INVALID, Lsn::INVALID)));
            f.written(L(0x100));
            f.local_durable(L(0x80));
            // Inside the async interval, and still sent.
            let expect = match mode {
                Mode::Async => (L(0x100), L(0x80)),
                Mode::Sync => (Lsn::INVALID, Lsn::INVALID),
            };
            assert_eq!(f.poll(2, true), Some(expect));
            assert_eq!(f.poll(3, false), None);
        }
    }

    #[test]
    fn a_clock_that_steps_back_does_not_panic() {
        let mut f = started(Mode::Async, 1);
        assert_eq!(f.poll(u64::MAX, false), Some((Lsn::INVALID, Lsn::INVALID)));
        assert_eq!(f.next_due(), u64::MAX);
        f.written(L(1));
        assert_eq!(f.poll(5, false), None);
        assert_eq!(f.poll(5, true), Some((L(1), Lsn::INVALID)));
    }
}
