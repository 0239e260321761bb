//! The shipping side: the WAL source and the per-stream shipper.

pub mod index;
pub mod shipper;
pub mod source;
pub mod wire;
