//! The shipping side: the WAL source and its index, the per-stream
//! shipper, and spool retention.

pub mod index;
pub mod pgstream;
pub mod prune;
pub mod shipper;
pub mod source;
pub mod wire;
