//! The shipping side: the WAL source, the per-stream shipper, and spool
//! retention.

pub mod prune;
pub mod shipper;
pub mod source;
pub mod wire;
