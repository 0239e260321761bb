//! The receiving side: sessions, the disk worker, crash reconciliation.

pub mod disk;
pub mod reconcile;
pub mod server;
