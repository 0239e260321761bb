//! The receiving side: sessions, the disk worker, crash reconciliation.

pub mod chaos;
pub mod disk;
pub mod prune;
pub mod reconcile;
pub mod retention;
pub mod server;
