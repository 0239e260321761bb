//! The chaos run's WAL writer and its oracle: a thread that appends
//! deterministic pseudo-random bytes at a fixed pace into the current
//! primary's WAL directory, and keeps in memory what the stream's log must
//! hold — every segment's bytes in name order with its stream position.
//! A failover cuts the oracle at the fork (what the old primary wrote past
//! it is no longer part of the log); the writer then continues at the new
//! primary with a segment name past the fork segment.

use crate::seg_name;
use rand::{RngCore, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One segment of the expected log.
#[derive(Debug, Clone)]
pub struct OracleSegment {
    pub number: u64,
    pub name: String,
    /// Stream position of the segment's first byte.
    pub start: u64,
    pub data: Vec<u8>,
}

impl OracleSegment {
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// What the stream's log must hold, in name order.
#[derive(Debug, Default)]
pub struct Oracle {
    pub segments: Vec<OracleSegment>,
    /// Bytes cut off at failovers (written by an old primary past the fork).
    pub cut_bytes: u64,
}

impl Oracle {
    pub fn total(&self) -> u64 {
        self.segments.last().map_or(0, OracleSegment::end)
    }

    pub fn get(&self, name: &str) -> Option<&OracleSegment> {
        self.segments.iter().find(|s| s.name == name)
    }

    fn append(&mut self, number: u64, data: &[u8]) {
        let total = self.total();
        match self.segments.last_mut() {
            Some(last) if last.number == number => last.data.extend_from_slice(data),
            last => {
                assert!(
                    last.is_none_or(|l| l.number < number),
                    "segments are written in name order"
                );
                self.segments.push(OracleSegment {
                    number,
                    name: seg_name(number),
                    start: total,
                    data: data.to_vec(),
                });
            }
        }
    }

    /// Cuts the log at `position` (a failover's fork).
    pub fn truncate(&mut self, position: u64) {
        let before = self.total();
        self.segments.retain(|s| s.start < position);
        if let Some(last) = self.segments.last_mut() {
            if last.end() > position {
                last.data.truncate((position - last.start) as usize);
            }
        }
        self.cut_bytes += before - self.total();
    }
}

/// The writer's state, shared with the chaos driver (which pauses it and
/// moves it between sites under the same lock, so a move never races a
/// write).
pub struct WriterState {
    /// The current primary's WAL directory.
    pub dir: PathBuf,
    /// Segment being written and how many bytes it has.
    pub seg: u64,
    pub in_seg: usize,
    pub paused: bool,
    pub oracle: Oracle,
    segment_bytes: usize,
    rng: rand::rngs::StdRng,
    buf: Vec<u8>,
}

impl WriterState {
    /// Appends `len` bytes at the writer's place, rolling to the next
    /// segment at `segment_bytes`.
    pub fn append(&mut self, mut len: usize) {
        while len > 0 {
            let k = len.min(self.segment_bytes - self.in_seg);
            self.buf.resize(k, 0);
            self.rng.fill_bytes(&mut self.buf);
            let path = self.dir.join(seg_name(self.seg));
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            f.write_all(&self.buf)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            let buf = std::mem::take(&mut self.buf);
            self.oracle.append(self.seg, &buf);
            self.buf = buf;
            self.in_seg += k;
            len -= k;
            if self.in_seg == self.segment_bytes {
                self.seg += 1;
                self.in_seg = 0;
            }
        }
    }

    /// Moves the writer to `dir`, starting segment `seg`.
    pub fn move_to(&mut self, dir: &Path, seg: u64) {
        self.dir = dir.to_path_buf();
        self.seg = seg;
        self.in_seg = 0;
    }

    /// The number of the oracle's last segment (0 when empty).
    pub fn last_segment(&self) -> u64 {
        self.oracle.segments.last().map_or(0, |s| s.number)
    }
}

/// The pacing thread around a shared [`WriterState`].
pub struct Writer {
    pub state: Arc<Mutex<WriterState>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing `step` bytes every `pace` into `dir`, segment 1 on.
    pub fn start(dir: &Path, seed: u64, segment_bytes: usize, step: usize, pace: Duration) -> Self {
        let state = Arc::new(Mutex::new(WriterState {
            dir: dir.to_path_buf(),
            seg: 1,
            in_seg: 0,
            paused: false,
            oracle: Oracle::default(),
            segment_bytes,
            rng: rand::rngs::StdRng::seed_from_u64(seed ^ 0x5741_4c21),
            buf: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            // Bounded by the stop flag, which every run sets in its teardown.
            while !sp.load(Ordering::Relaxed) {
                {
                    let mut w = st.lock().unwrap_or_else(|e| e.into_inner());
                    if !w.paused {
                        w.append(step);
                    }
                }
                // Pacing the writer (a steady WAL rate), not synchronisation.
                std::thread::sleep(pace);
            }
        });
        Self {
            state,
            stop,
            handle: Some(handle),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn total(&self) -> u64 {
        self.lock().oracle.total()
    }

    pub fn set_paused(&self, on: bool) {
        self.lock().paused = on;
    }

    /// Stops the thread (idempotent).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_at_the_fork() {
        let mut o = Oracle::default();
        o.append(1, &[1; 10]);
        o.append(2, &[2; 10]);
        o.append(3, &[3; 5]);
        o.truncate(15);
        assert_eq!(o.total(), 15);
        assert_eq!(o.segments.len(), 2);
        assert_eq!(o.cut_bytes, 10);
        o.truncate(10);
        assert_eq!(o.segments.len(), 1);
        o.append(4, &[4; 3]);
        assert_eq!(o.get(&seg_name(4)).unwrap().start, 10);
    }
}
