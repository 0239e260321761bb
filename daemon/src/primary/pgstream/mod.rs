//! `source = "postgres"`: drd receives the database's WAL over PostgreSQL's
//! physical streaming replication protocol, through a replication slot,
//! and writes it into the stream's `wal_dir` as segment files named and
//! sized as PostgreSQL names them; the shipper ships them from there.

pub mod conn;
pub mod conninfo;
