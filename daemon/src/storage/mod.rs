//! Storage: what the daemon keeps on disk, below the drivers.
//!
//! - [`catalog`]: the RocksDB catalog (segment records, roles, epochs, the
//!   audit log), every commit synced.
//! - [`drills`]: the drill history, append-only and hash-chained.
//! - [`spool`]: write-once files with a content hash (wal-push's spool,
//!   side files).
//! - [`fsutil`]: durable directory creation and the directory fsync.
//! - [`segments`]: a replica's landing directory (drd-core's segment store).
//! - [`stream_catalog`]: one stream's records in the catalog (drd-core's
//!   catalog).
pub mod catalog;
pub mod direct;
pub mod drills;
pub mod fsutil;
pub mod segments;
pub mod spool;
pub mod stream_catalog;
