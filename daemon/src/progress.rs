//! Progress of the long operations an operator waits for (`drctl verify`,
//! `rejoin`, `switchover`): each registers here while it runs and counts
//! its work; `Status` lists them, and `drctl` polls that while its own
//! request runs to draw a progress bar. The list is bounded
//! ([`MAX_OPERATIONS`]) and so is every entry: nothing here grows with the
//! size of the log.

use drd_proto::pb;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Most operations one status reply lists (more never run at once in
/// practice: role changes are serialised, verifies are an operator's).
pub const MAX_OPERATIONS: usize = 16;

/// Longest progress token kept from a client (longer ones are cut).
pub use drd_client::progress::MAX_TOKEN_LEN;

/// The operations running on this node.
#[derive(Default)]
pub struct Operations {
    running: Arc<Mutex<Vec<Arc<Operation>>>>,
}

/// One running operation's counters. Updated by the thread doing the work,
/// read by `Status`: atomics and a small lock, never held across I/O.
#[derive(Debug)]
pub struct Operation {
    token: String,
    kind: &'static str,
    stream: String,
    started: Instant,
    phase: Mutex<String>,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    items_done: AtomicU64,
    items_total: AtomicU64,
}

/// Keeps an operation listed until it is dropped (when the work ends,
/// however it ends).
pub struct Running {
    op: Arc<Operation>,
    running: Arc<Mutex<Vec<Arc<Operation>>>>,
}

impl Operations {
    /// Lists a new operation of `kind` on `stream`, named by the client's
    /// `token` (so it can find its own among others).
    pub fn start(&self, kind: &'static str, stream: &str, token: &str) -> Running {
        let op = Arc::new(Operation {
            token: token
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(MAX_TOKEN_LEN)
                .collect(),
            kind,
            stream: stream.to_string(),
            started: Instant::now(),
            phase: Mutex::new(String::new()),
            bytes_done: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            items_done: AtomicU64::new(0),
            items_total: AtomicU64::new(0),
        });
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(op.clone());
        Running {
            op,
            running: self.running.clone(),
        }
    }

    /// What `Status` reports: the oldest [`MAX_OPERATIONS`] running.
    pub fn snapshot(&self) -> Vec<pb::OperationProgress> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        running
            .iter()
            .take(MAX_OPERATIONS)
            .map(|o| o.snapshot())
            .collect()
    }
}

impl Operation {
    /// Names the step now running (e.g. "hashing segments").
    pub fn set_phase(&self, phase: impl Into<String>) {
        *self
            .phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = phase.into();
    }

    /// The work to do, once it is known.
    pub fn set_totals(&self, bytes: u64, items: u64) {
        self.bytes_total.store(bytes, Ordering::Relaxed);
        self.items_total.store(items, Ordering::Relaxed);
    }

    /// Work done so far (absolute).
    pub fn set_done(&self, bytes: u64, items: u64) {
        self.bytes_done.store(bytes, Ordering::Relaxed);
        self.items_done.store(items, Ordering::Relaxed);
    }

    /// Counts more work done.
    pub fn add_done(&self, bytes: u64, items: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.items_done.fetch_add(items, Ordering::Relaxed);
    }

    fn snapshot(&self) -> pb::OperationProgress {
        pb::OperationProgress {
            token: self.token.clone(),
            kind: self.kind.to_string(),
            stream: self.stream.clone(),
            phase: self
                .phase
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            items_done: self.items_done.load(Ordering::Relaxed),
            items_total: self.items_total.load(Ordering::Relaxed),
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

impl std::ops::Deref for Running {
    type Target = Operation;
    fn deref(&self) -> &Operation {
        &self.op
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|o| !Arc::ptr_eq(o, &self.op));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_is_listed_with_its_counts_until_it_ends() {
        let ops = Operations::default();
        assert!(ops.snapshot().is_empty());
        let a = ops.start("verify", "ehr-prod", "tok-1\x1b[2J");
        a.set_totals(1000, 10);
        a.set_phase("hashing segments");
        a.add_done(100, 1);
        a.add_done(150, 1);
        {
            let b = ops.start("rejoin", "ehr-prod", "");
            b.set_done(5, 1);
            let s = ops.snapshot();
            assert_eq!(s.len(), 2);
            assert_eq!(s[1].kind, "rejoin");
            assert_eq!(s[1].bytes_done, 5);
        }
        let s = ops.snapshot();
        assert_eq!(s.len(), 1, "an ended operation is no longer listed");
        let v = &s[0];
        assert_eq!(v.token, "tok-1[2J", "no control characters from a client");
        assert_eq!((v.kind.as_str(), v.stream.as_str()), ("verify", "ehr-prod"));
        assert_eq!(v.phase, "hashing segments");
        assert_eq!((v.bytes_done, v.bytes_total), (250, 1000));
        assert_eq!((v.items_done, v.items_total), (2, 10));
        drop(a);
        assert!(ops.snapshot().is_empty());
    }

    #[test]
    fn the_list_is_bounded() {
        let ops = Operations::default();
        let held: Vec<_> = (0..MAX_OPERATIONS + 5)
            .map(|i| ops.start("verify", "s", &i.to_string()))
            .collect();
        let s = ops.snapshot();
        assert_eq!(s.len(), MAX_OPERATIONS);
        assert_eq!(s[0].token, "0", "the oldest are listed");
        drop(held);
        let long = "x".repeat(1000);
        assert_eq!(
            ops.start("verify", "s", &long).snapshot().token.len(),
            MAX_TOKEN_LEN
        );
    }
}
