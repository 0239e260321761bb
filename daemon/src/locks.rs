//! Taking drd's `std::sync::Mutex`es: one place that decides what a
//! poisoned lock means, instead of an `unwrap` at every call site.
//!
//! A lock is poisoned when another thread panicked while holding it. That
//! panic is a bug in drd, and the data behind the lock may be half-updated:
//! [`LockExt::locked`] propagates the panic to the thread that takes the
//! lock next rather than carry on with state that broke an invariant.
//! (Where the data is safe to use anyway, a caller says so with
//! `PoisonError::into_inner` instead, as `progress` does.)

use std::sync::{Mutex, MutexGuard};

/// [`Mutex::lock`] that propagates a poisoning panic.
pub trait LockExt<T: ?Sized> {
    /// Locks the mutex, blocking until it is free.
    ///
    /// # Panics
    ///
    /// If another thread panicked while holding the lock.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    #[track_caller]
    // Poisoned: another thread panicked while holding the lock; we propagate
    // that panic rather than use data it may have left half-updated.
    #[allow(clippy::expect_used)]
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock()
            .expect("another thread panicked while holding this lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_free_lock_is_taken() {
        let m = Mutex::new(1);
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
    }

    #[test]
    fn a_poisoned_lock_propagates_the_panic() {
        let m = Arc::new(Mutex::new(0));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.locked();
            panic!("holding the lock");
        })
        .join();
        let r = std::panic::catch_unwind(|| *m.locked());
        assert!(r.is_err());
    }
}
