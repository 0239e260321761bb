//! PostgreSQL physical replication rules, without I/O: LSNs and segment
//! names, the CopyData payloads, the long page header, timeline history
//! files, and what drd reports to PostgreSQL as its write/flush position.

pub mod feedback;
pub mod header;
pub mod history;
pub mod lsn;
pub mod msg;
pub mod records;
