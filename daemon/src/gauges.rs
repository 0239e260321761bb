//! The gauges: copies the node's status — the same one `drctl status`
//! shows (roles, epochs, positions, lag, connection, spool) — and the
//! catalog's segment counts into the metrics that [`crate::metrics`] names,
//! once a [`SAMPLE_INTERVAL`], so the two always agree.

use crate::metrics::*;
use crate::node::Node;
use crate::storage::catalog::Role;
use ::metrics::{counter, gauge};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often gauges are copied from the node's status.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the catalog is scanned for stored segments and bytes (a
/// RocksDB prefix scan per stream: cheap, but not every second).
pub const CATALOG_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Copies the node's status into the gauges until shutdown.
pub async fn sample(node: Arc<Node>, shutdown: CancellationToken) {
    if let Some(budget) = node.config.rpo_budget {
        match budget {
            crate::config::DataLoss::Bytes(b) => gauge!(RPO_BUDGET_BYTES).set(b as f64),
            crate::config::DataLoss::Seconds(s) => gauge!(RPO_BUDGET_SECONDS).set(s),
        }
    }
    bandwidth_limit("*", node.bandwidth.rate());
    for s in &node.shippers {
        bandwidth_limit(s.stream.as_str(), s.bandwidth.rate());
    }
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_catalog: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        sample_status(&node);
        sample_targets(&node);
        if last_catalog.is_none_or(|t| t.elapsed() >= CATALOG_SAMPLE_INTERVAL) {
            last_catalog = Some(tokio::time::Instant::now());
            let n = node.clone();
            // A RocksDB scan: off the async threads.
            let _ = tokio::task::spawn_blocking(move || sample_catalog(&n)).await;
        }
    }
}

/// Every object-store target's counters, lag and state.
pub fn sample_targets(node: &Node) {
    use std::sync::atomic::Ordering::Relaxed;
    let now = crate::clock::unix_ms();
    for t in &node.targets {
        let (s, u) = (t.stream.clone(), t.url.clone());
        let v = crate::locks::LockExt::locked(&t.inner).clone();
        counter!(TARGET_OBJECTS, "stream" => s.clone(), "url" => u.clone(), "kind" => "segment")
            .absolute(v.segments);
        counter!(TARGET_OBJECTS, "stream" => s.clone(), "url" => u.clone(), "kind" => "partial")
            .absolute(v.partials);
        counter!(TARGET_BYTES, "stream" => s.clone(), "url" => u.clone()).absolute(v.bytes);
        for (op, c) in [
            ("put", &t.stats.puts),
            ("get", &t.stats.gets),
            ("list", &t.stats.lists),
        ] {
            counter!(TARGET_REQUESTS, "stream" => s.clone(), "url" => u.clone(), "op" => op)
                .absolute(c.load(Relaxed));
        }
        counter!(TARGET_RETRIES, "stream" => s.clone(), "url" => u.clone())
            .absolute(t.stats.retries.load(Relaxed));
        counter!(TARGET_FAILURES, "stream" => s.clone(), "url" => u.clone())
            .absolute(t.stats.failures.load(Relaxed));
        gauge!(TARGET_LAG_SECONDS, "stream" => s.clone(), "url" => u.clone())
            .set(t.lag_seconds(now));
        let ok = !matches!(v.state.as_str(), "error" | "conflict");
        gauge!(TARGET_OK, "stream" => s, "url" => u).set(if ok { 1.0 } else { 0.0 });
    }
}

/// Role, epoch and every stream's positions, lag and connection.
pub fn sample_status(node: &Node) {
    for (stream, state) in node.roles() {
        let stream = stream.to_string();
        for role in [Role::Primary, Role::Replica, Role::Fenced] {
            gauge!(ROLE, "stream" => stream.clone(), "role" => role.as_str())
                .set(if state.role == role { 1.0 } else { 0.0 });
        }
        gauge!(EPOCH, "stream" => stream.clone()).set(state.epoch as f64);
        gauge!(FENCED, "stream" => stream.clone()).set(if state.role == Role::Fenced {
            1.0
        } else {
            0.0
        });
        gauge!(PAUSED, "stream" => stream).set(if state.paused { 1.0 } else { 0.0 });
    }
    for v in node.stream_views() {
        let stream = v.name;
        gauge!(LAG_BYTES, "stream" => stream.clone()).set(v.lag_bytes as f64);
        gauge!(LAG_SECONDS, "stream" => stream.clone()).set(v.lag_seconds);
        gauge!(WRITTEN_POSITION, "stream" => stream.clone()).set(v.written_position as f64);
        gauge!(DURABLE_POSITION, "stream" => stream.clone()).set(v.durable_position as f64);
        gauge!(CONNECTED, "stream" => stream.clone()).set(if v.connected { 1.0 } else { 0.0 });
        if let Some(sp) = &v.spool {
            gauge!(SPOOL_BYTES, "stream" => stream.clone()).set(sp.bytes as f64);
            gauge!(SPOOL_SEGMENTS, "stream" => stream.clone()).set(sp.segments as f64);
            gauge!(SPOOL_LIMIT_BYTES, "stream" => stream.clone()).set(sp.limit_bytes as f64);
            gauge!(SPOOL_FULL, "stream" => stream.clone()).set(if sp.full { 1.0 } else { 0.0 });
        }
        if let Some(pg) = &v.postgres {
            pg_gauges(&stream, pg);
        }
        if v.direction == "shipping" {
            gauge!(MODE_OVERRIDDEN, "stream" => stream.clone()).set(if v.mode_override.is_some() {
                1.0
            } else {
                0.0
            });
        }
        counter!(RECONNECTS, "stream" => stream).absolute(v.reconnects);
    }
}

/// Segments and bytes each stream holds in the catalog.
fn sample_catalog(node: &Node) {
    for stream in node.stream_names() {
        // One record at a time: a year of segments is never held at once.
        let (mut count, mut bytes) = (0u64, 0u64);
        let walked = node.catalog.for_each_segment(&stream, None, |s| {
            // A spooled segment pruned at the primary keeps its record but
            // is no longer stored here.
            if s.pruned_at_ms.is_none() {
                count += 1;
                bytes = bytes.saturating_add(s.size);
            }
            Ok(true)
        });
        match walked {
            Ok(()) => {
                gauge!(STORED_SEGMENTS, "stream" => stream.to_string()).set(count as f64);
                gauge!(STORED_BYTES, "stream" => stream.to_string()).set(bytes as f64);
            }
            Err(e) => tracing::debug!(%stream, error = %e, "cannot read the catalog for metrics"),
        }
    }
}

/// A `source = "postgres"` stream's database side.
fn pg_gauges(stream: &str, pg: &crate::node::PgState) {
    let g = |name: &'static str, v: f64| gauge!(name, "stream" => stream.to_string()).set(v);
    g(PG_CONNECTED, if pg.connected { 1.0 } else { 0.0 });
    g(PG_TIMELINE, f64::from(pg.timeline));
    g(PG_SERVER_LSN, pg.server_end.0 as f64);
    g(PG_RECEIVED_LSN, pg.written.0 as f64);
    g(PG_REPORTED_FLUSH_LSN, pg.reported_flush.0 as f64);
    g(
        PG_UNCONFIRMED_BYTES,
        pg.server_end.saturating_sub(pg.reported_flush) as f64,
    );
    g(PG_SLOT_LOST, if pg.slot_lost { 1.0 } else { 0.0 });
    if !pg.slot_wal_status.is_empty() {
        g(PG_SLOT_RETAINED_BYTES, pg.slot_retained_bytes as f64);
        for status in ["reserved", "extended", "unreserved", "lost"] {
            gauge!(PG_SLOT_WAL_STATUS, "stream" => stream.to_string(), "status" => status).set(
                if pg.slot_wal_status == status {
                    1.0
                } else {
                    0.0
                },
            );
        }
    }
}
