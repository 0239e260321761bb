//! drd-client: what both the daemon and a client of it (`drctl`) need, and
//! nothing that only the daemon does — no catalog, no RocksDB, no
//! replication. drctl links this crate and `drd-proto`, never `drd`
//! (`tests/client-check` proves it on `cargo tree -p drctl`).
//!
//! - [`display`]: bytes, rates, durations, roles as operators read them;
//! - [`units`]: sizes and durations as config files and flags write them;
//! - [`config`]: where the config and the control socket are, and data-loss
//!   amounts (`rpo_budget`, `--max-data-loss`);
//! - [`certs`] and [`tls`]: a first deployment's CA and certificates, and
//!   loading and checking them for mTLS (both ends);
//! - [`drill`]: DR drill reports — the model, the HTML page, the signature;
//! - [`version`]: build information and the protocol-version warning;
//! - [`control`], [`walpush`], [`peer`], [`progress`]: the client's end of
//!   the control API (connect, stream a `wal-push`, describe a failed
//!   connection, progress tokens).

#![forbid(unsafe_code)]

pub mod certs;
pub mod config;
pub mod control;
pub mod display;
pub mod drill;
pub mod peer;
pub mod progress;
pub mod tls;
pub mod units;
pub mod version;
pub mod walpush;
