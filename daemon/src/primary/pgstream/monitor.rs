//! Slot safety: a second, ordinary connection to the stream's database
//! polls the replication slot every [`SLOT_POLL`], so that a stalled drd
//! (or DR link, in sync mode) cannot fill the database's disk silently —
//! the WAL the slot holds back, its `wal_status`, and an invalidated slot
//! are in `drctl status` and the metrics (`drd_pg_slot_*`), with alert
//! rules in `deploy/prometheus/drd-alerts.yml`.

use super::conn::{Connection, Kind};
use crate::config::PostgresSource;
use crate::locks::LockExt;
use crate::node::{Shipper, StreamRole};
use crate::storage::catalog::Role;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the slot is polled.
pub const SLOT_POLL: Duration = Duration::from_secs(10);

/// The slot's row, with the WAL it retains. `pg_current_wal_lsn()` fails on
/// a standby, hence the CASE. The slot name is validated at config time
/// (lower-case letters, digits, underscores), so quoting it as a literal is
/// safe.
fn slot_query(slot: &str) -> String {
    format!(
        "SELECT s.wal_status, \
                CASE WHEN pg_is_in_recovery() OR s.restart_lsn IS NULL THEN NULL \
                     ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint END \
                  AS retained_bytes, \
                current_setting('synchronous_commit') AS synchronous_commit \
           FROM pg_replication_slots s \
          WHERE s.slot_name = '{slot}' AND s.slot_type = 'physical'"
    )
}

/// What the slot monitor of one stream uses.
pub struct SlotWatch {
    pub source: PostgresSource,
    /// The stream's live state: the monitor fills in its `pg` slot fields.
    pub status: Arc<Shipper>,
    pub role: Arc<StreamRole>,
}

/// Polls until `shutdown`, while this node is the stream's primary.
pub async fn run(ctx: SlotWatch, shutdown: CancellationToken) {
    let ci = ctx.source.conninfo.with_dbname("postgres");
    let ci = match ctx.source.conninfo.dbname() {
        Some(_) => ctx.source.conninfo.clone(),
        None => ci,
    };
    let mut conn: Option<Connection> = None;
    let mut warned_remote_apply = false;
    let mut tick = tokio::time::interval(SLOT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if ctx.role.state().role != Role::Primary {
            conn = None;
            continue;
        }
        if conn.is_none() {
            match Connection::connect(&ci, Kind::Database).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "slot monitor: cannot connect");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let rows = match c.query(&slot_query(&ctx.source.slot)).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "slot monitor: query failed");
                conn = None;
                continue;
            }
        };
        let Some(row) = rows.first() else {
            // Not created yet (the session creates it), or dropped.
            let mut pg = ctx.status.pg.locked();
            pg.slot_wal_status.clear();
            continue;
        };
        let status = row.get("wal_status").unwrap_or("").to_string();
        let retained = row
            .get("retained_bytes")
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(0, |v| v.max(0) as u64);
        if row.get("synchronous_commit") == Some("remote_apply") && !warned_remote_apply {
            warned_remote_apply = true;
            tracing::warn!(slot = %ctx.source.slot,
                "the database's synchronous_commit is remote_apply: drd never applies WAL (it \
                 reports apply = 0, as pg_receivewal does), so such commits would wait forever \
                 if drd is a synchronous standby; use on or remote_write");
        }
        let mut pg = ctx.status.pg.locked();
        if status == "lost" && !pg.slot_lost {
            tracing::error!(slot = %ctx.source.slot,
                "PostgreSQL invalidated replication slot \"{}\" (max_slot_wal_keep_size): WAL it \
                 held never reached drd and the DR copy has a gap. Rebuild the DR standby from a \
                 new base backup: see \"The slot\" in deploy/postgresql/README.md", ctx.source.slot);
        }
        if status == "unreserved" && pg.slot_wal_status != "unreserved" {
            tracing::warn!(slot = %ctx.source.slot, retained_bytes = retained,
                "the slot's WAL is past max_slot_wal_keep_size: PostgreSQL removes it at the next \
                 checkpoint unless drd catches up");
        }
        // Set by the session too, on a gap it met; a slot that is back
        // (recreated) and streaming clears it there.
        if status == "lost" {
            pg.slot_lost = true;
        }
        pg.slot_wal_status = status;
        pg.slot_retained_bytes = retained;
    }
}
