//! Prometheus metrics on `[metrics] listen`: every name and help text is
//! registered here, and the hot paths call the small functions below.
//!
//! Two kinds of numbers: counters the data path bumps as it goes (bytes and
//! chunks shipped or received, fsync latency, hook runs), and gauges
//! [`crate::gauges`] copies once a second from the same status that
//! `drctl status` shows (positions, lag, connection, role, epoch), so the two
//! always agree. Without `[metrics] listen` no recorder is installed and
//! every call here is a no-op.

use anyhow::Context;
use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::net::SocketAddr;
use std::time::Duration;

/// fsync latency buckets (seconds): an SSD's fdatasync is well under a
/// millisecond, a busy disk or a network volume can take a second.
const FSYNC_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

// Per stream (label `stream`).
pub const LAG_BYTES: &str = "drd_lag_bytes";
pub const LAG_SECONDS: &str = "drd_lag_seconds";
pub const WRITTEN_POSITION: &str = "drd_written_position_bytes";
pub const DURABLE_POSITION: &str = "drd_durable_position_bytes";
pub const CONNECTED: &str = "drd_stream_connected";
pub const RECONNECTS: &str = "drd_reconnects_total";
pub const SHIPPED_BYTES: &str = "drd_shipped_bytes_total";
pub const SHIPPED_CHUNKS: &str = "drd_shipped_chunks_total";
pub const SHIPPED_WIRE_BYTES: &str = "drd_shipped_wire_bytes_total";
pub const RECEIVED_BYTES: &str = "drd_received_bytes_total";
pub const RECEIVED_CHUNKS: &str = "drd_received_chunks_total";
pub const FSYNC_SECONDS: &str = "drd_fsync_duration_seconds";
pub const STORED_SEGMENTS: &str = "drd_stored_segments";
pub const STORED_BYTES: &str = "drd_stored_bytes";
pub const BANDWIDTH_LIMIT: &str = "drd_bandwidth_limit_bytes_per_second";
// Per spool stream (`source = "spool"`), at the primary.
pub const SPOOL_BYTES: &str = "drd_spool_bytes";
pub const SPOOL_SEGMENTS: &str = "drd_spool_segments";
pub const SPOOL_LIMIT_BYTES: &str = "drd_spool_limit_bytes";
pub const SPOOL_FULL: &str = "drd_spool_full";
pub const SPOOL_PRUNED_SEGMENTS: &str = "drd_spool_pruned_segments_total";
pub const SPOOL_PRUNED_BYTES: &str = "drd_spool_pruned_bytes_total";
pub const SPOOL_REFUSED: &str = "drd_spool_refused_pushes_total";
// Per `source = "postgres"` stream, at the primary.
pub const PG_CONNECTED: &str = "drd_pg_connected";
pub const PG_TIMELINE: &str = "drd_pg_timeline";
pub const PG_SERVER_LSN: &str = "drd_pg_server_flush_lsn";
pub const PG_RECEIVED_LSN: &str = "drd_pg_received_lsn";
pub const PG_REPORTED_FLUSH_LSN: &str = "drd_pg_reported_flush_lsn";
pub const PG_UNCONFIRMED_BYTES: &str = "drd_pg_unconfirmed_bytes";
pub const PG_SLOT_RETAINED_BYTES: &str = "drd_pg_slot_retained_bytes";
pub const PG_SLOT_WAL_STATUS: &str = "drd_pg_slot_wal_status";
pub const PG_SLOT_LOST: &str = "drd_pg_slot_lost";
pub const MODE_OVERRIDDEN: &str = "drd_mode_overridden";
// Per received stream with a retention policy, at the DR site.
pub const RETENTION_PRUNED_SEGMENTS: &str = "drd_retention_pruned_segments_total";
pub const RETENTION_PRUNED_BYTES: &str = "drd_retention_pruned_bytes_total";
pub const RETENTION_OLDEST_AGE: &str = "drd_retention_oldest_segment_age_seconds";
pub const RETENTION_OLDEST_POSITION: &str = "drd_retention_oldest_position_bytes";
// Per stream at this node (roles are per stream).
pub const ROLE: &str = "drd_role";
pub const EPOCH: &str = "drd_epoch";
pub const FENCED: &str = "drd_fenced";
pub const PAUSED: &str = "drd_paused";
pub const REFUSED_UNASSIGNED: &str = "drd_refused_unassigned_total";
pub const HOOK_RUNS: &str = "drd_hook_runs_total";
pub const HOOK_FAILURES: &str = "drd_hook_failures_total";
pub const RPO_BUDGET_BYTES: &str = "drd_rpo_budget_bytes";
pub const RPO_BUDGET_SECONDS: &str = "drd_rpo_budget_seconds";
pub const BUILD_INFO: &str = "drd_build_info";
pub const DRILL_LAST_SUCCESS: &str = "drd_drill_last_success_timestamp_seconds";
pub const DRILL_LAST_PASSED: &str = "drd_drill_last_passed";
pub const DRILL_LAST_RTO: &str = "drd_drill_last_rto_seconds";
pub const DRILL_LAST_RPO_BYTES: &str = "drd_drill_last_rpo_bytes";
pub const DRILL_LAST_RPO_SECONDS: &str = "drd_drill_last_rpo_seconds";
pub const DRILL_RUNS: &str = "drd_drill_runs_total";
/// Object-store targets (`[[stream.target]]`), labelled stream and url.
pub const TARGET_OBJECTS: &str = "drd_target_objects_total";
pub const TARGET_BYTES: &str = "drd_target_uploaded_bytes_total";
pub const TARGET_REQUESTS: &str = "drd_target_requests_total";
pub const TARGET_RETRIES: &str = "drd_target_retries_total";
pub const TARGET_FAILURES: &str = "drd_target_failed_requests_total";
pub const TARGET_LAG_SECONDS: &str = "drd_target_upload_lag_seconds";
pub const TARGET_OK: &str = "drd_target_ok";

/// The exporter's HTTP server; runs until shutdown.
pub type Exporter = metrics_exporter_prometheus::ExporterFuture;

/// Binds `listen`, installs the process-wide recorder and registers every
/// metric's help text. Returns the HTTP server to spawn. Fails if the
/// address cannot be bound or a recorder is already installed.
pub fn install(listen: SocketAddr) -> anyhow::Result<Exporter> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(Matcher::Full(FSYNC_SECONDS.to_string()), FSYNC_BUCKETS)
        .context("invalid histogram buckets")?
        .build()
        .with_context(|| format!("cannot listen on metrics.listen {listen}"))?;
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed in this process"))?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(exporter)
}

/// Help texts, as `# HELP` shows them.
fn describe() {
    describe_counter!(
        TARGET_OBJECTS,
        "Objects an object-store target holds from this node, by kind (segment: sealed, partial: a growing segment's new bytes)."
    );
    describe_counter!(
        TARGET_BYTES,
        Unit::Bytes,
        "Log bytes uploaded to an object-store target."
    );
    describe_counter!(
        TARGET_REQUESTS,
        "Requests made to an object-store target, by op (put, get, list)."
    );
    describe_counter!(
        TARGET_RETRIES,
        "Object-store requests retried after a failure (with backoff and jitter)."
    );
    describe_counter!(
        TARGET_FAILURES,
        "Object-store requests that failed for good (retries exhausted, denied)."
    );
    describe_gauge!(
        TARGET_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest byte durable here that the object-store target does not hold yet (0: caught up)."
    );
    describe_gauge!(TARGET_OK, "1 while the object-store target is caught up or uploading, 0 on an error or a refused overwrite.");
    describe_gauge!(
        DRILL_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time at which the stream's last passed DR drill finished (absent: none passed)."
    );
    describe_gauge!(
        DRILL_LAST_PASSED,
        "1 if the stream's last DR drill passed, 0 if it failed."
    );
    describe_gauge!(
        DRILL_LAST_RTO,
        Unit::Seconds,
        "Recovery time the stream's last DR drill measured (start to scratch database answering)."
    );
    describe_gauge!(
        DRILL_LAST_RPO_BYTES,
        Unit::Bytes,
        "Bytes the DR copy lacked at the stream's last DR drill's snapshot."
    );
    describe_gauge!(
        DRILL_LAST_RPO_SECONDS,
        Unit::Seconds,
        "Lag in seconds at the stream's last DR drill's snapshot."
    );
    describe_counter!(
        DRILL_RUNS,
        "DR drills run since drd started, by result (passed, failed)."
    );
    describe_gauge!(
        LAG_BYTES,
        Unit::Bytes,
        "Bytes written at the primary but not yet durable at the replica."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest byte not yet durable at the replica (0 when caught up)."
    );
    describe_gauge!(
        WRITTEN_POSITION,
        Unit::Bytes,
        "Stream position the primary's source has written."
    );
    describe_gauge!(
        DURABLE_POSITION,
        Unit::Bytes,
        "Stream position the replica holds durably (fsynced and in its catalog)."
    );
    describe_gauge!(
        CONNECTED,
        "1 while a replication session for the stream is up, else 0."
    );
    describe_counter!(
        RECONNECTS,
        "Replication sessions started after the first one since drd started."
    );
    describe_counter!(
        SHIPPED_BYTES,
        Unit::Bytes,
        "WAL payload bytes sent to the replica."
    );
    describe_counter!(SHIPPED_CHUNKS, "Chunks sent to the replica.");
    describe_counter!(
        SHIPPED_WIRE_BYTES,
        Unit::Bytes,
        "Chunk payload bytes as sent to the replica: after compression where the stream's \
         `compression` is on and it helped (compare with drd_shipped_bytes_total)."
    );
    describe_counter!(
        RECEIVED_BYTES,
        Unit::Bytes,
        "WAL payload bytes received from the primary."
    );
    describe_counter!(RECEIVED_CHUNKS, "Chunks received from the primary.");
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Time the replica's disk worker spent in fdatasync per group commit."
    );
    describe_gauge!(
        STORED_SEGMENTS,
        "Segments of the stream in this node's catalog (complete and partial)."
    );
    describe_gauge!(
        STORED_BYTES,
        Unit::Bytes,
        "Bytes of the stream's segments in this node's catalog."
    );
    describe_gauge!(
        BANDWIDTH_LIMIT,
        "Configured max_bandwidth in bytes per second (0: unlimited); label stream=\"*\" is the node-wide limit."
    );
    describe_gauge!(
        SPOOL_BYTES,
        Unit::Bytes,
        "Bytes of segments in a spool stream's wal_dir at the primary (filled by drctl wal-push, \
         emptied once the replica holds them sealed and spool_retention passed)."
    );
    describe_gauge!(
        SPOOL_SEGMENTS,
        "Segment files in a spool stream's wal_dir at the primary."
    );
    describe_gauge!(
        SPOOL_LIMIT_BYTES,
        Unit::Bytes,
        "The stream's spool_max_bytes: wal-push refuses a segment that would pass it."
    );
    describe_gauge!(
        SPOOL_FULL,
        "1 while the spool is at spool_max_bytes and wal-push refuses new segments \
         (PostgreSQL keeps them in pg_wal and retries archive_command)."
    );
    describe_counter!(
        SPOOL_PRUNED_SEGMENTS,
        "Segments removed from the spool once safe at the replica."
    );
    describe_counter!(
        SPOOL_PRUNED_BYTES,
        Unit::Bytes,
        "Bytes removed from the spool once safe at the replica."
    );
    describe_counter!(
        SPOOL_REFUSED,
        "wal-push requests refused because the spool was at spool_max_bytes."
    );
    describe_counter!(
        RETENTION_PRUNED_SEGMENTS,
        "Segments the DR site's retention policy removed ([replica.retention]), all time."
    );
    describe_counter!(
        RETENTION_PRUNED_BYTES,
        Unit::Bytes,
        "Bytes the DR site's retention policy removed, all time."
    );
    describe_gauge!(
        RETENTION_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest segment the DR site keeps (since it was sealed here): how far back a \
         restore from this site can go."
    );
    describe_gauge!(
        RETENTION_OLDEST_POSITION,
        Unit::Bytes,
        "Stream position where the DR site's copy starts (0 until retention removed anything)."
    );
    describe_gauge!(
        ROLE,
        "1 for the stream's current role at this node (label role: primary, replica, fenced), 0 \
         for the others."
    );
    describe_gauge!(EPOCH, "The stream's fencing epoch at this node.");
    describe_gauge!(
        FENCED,
        "1 while the stream is fenced here (a newer primary exists; this node ships nothing of it \
         until drctl rejoin --stream)."
    );
    describe_gauge!(
        PAUSED,
        "1 while shipping of the stream is paused by drctl pause."
    );
    describe_counter!(
        REFUSED_UNASSIGNED,
        "Requests refused because this node's config does not assign the stream to the peer \
         that sent them (a [[stream]]'s peer_name), by stream."
    );
    describe_counter!(HOOK_RUNS, "Role-change hooks started, by hook.");
    describe_counter!(
        HOOK_FAILURES,
        "Role-change hooks that failed or timed out, by hook."
    );
    describe_gauge!(
        RPO_BUDGET_BYTES,
        Unit::Bytes,
        "Configured rpo_budget in bytes (absent unless rpo_budget is an amount of data)."
    );
    describe_gauge!(
        RPO_BUDGET_SECONDS,
        Unit::Seconds,
        "Configured rpo_budget in seconds (absent unless rpo_budget is a time)."
    );
    describe_gauge!(
        PG_CONNECTED,
        "1 while drd streams WAL from the stream's PostgreSQL (source = \"postgres\")."
    );
    describe_gauge!(PG_TIMELINE, "The PostgreSQL timeline being streamed.");
    describe_gauge!(
        PG_SERVER_LSN,
        "PostgreSQL's end of WAL (flush LSN, as a number) in its latest message to drd."
    );
    describe_gauge!(
        PG_RECEIVED_LSN,
        "LSN up to which drd has written the stream's WAL into its wal_dir."
    );
    describe_gauge!(
        PG_REPORTED_FLUSH_LSN,
        "The flush LSN drd last reported to PostgreSQL (sync mode: what the DR replica holds)."
    );
    describe_gauge!(
        PG_UNCONFIRMED_BYTES,
        Unit::Bytes,
        "PostgreSQL's end of WAL minus the flush LSN drd reported: in sync mode, WAL whose \
         commits wait for the DR site."
    );
    describe_gauge!(
        PG_SLOT_RETAINED_BYTES,
        Unit::Bytes,
        "WAL the stream's replication slot holds back in the database's pg_wal (current LSN \
         minus the slot's restart_lsn): grows while drd or the DR link stalls."
    );
    describe_gauge!(
        PG_SLOT_WAL_STATUS,
        "1 for the slot's current wal_status (label status: reserved, extended, unreserved, \
         lost), 0 for the others. unreserved: PostgreSQL will remove WAL the slot needs at the \
         next checkpoint (max_slot_wal_keep_size)."
    );
    describe_gauge!(
        PG_SLOT_LOST,
        "1 when PostgreSQL invalidated the stream's slot or no longer has the WAL drd needs: the \
         DR copy has a gap until the DR standby is rebuilt from a new base backup."
    );
    describe_gauge!(
        MODE_OVERRIDDEN,
        "1 while drctl mode overrides the stream's configured sync/async mode."
    );
    describe_gauge!(BUILD_INFO, "Always 1; label version is drd's version.");
}

/// The shipper sent a chunk of `bytes` payload bytes.
pub fn chunk_shipped(stream: &str, bytes: u64) {
    counter!(SHIPPED_BYTES, "stream" => stream.to_owned()).increment(bytes);
    counter!(SHIPPED_CHUNKS, "stream" => stream.to_owned()).increment(1);
}

/// A chunk's payload went out as `bytes` bytes on the wire (compressed or
/// not; [`chunk_shipped`] counts the same chunk's uncompressed bytes).
pub fn chunk_on_wire(stream: &str, bytes: u64) {
    counter!(SHIPPED_WIRE_BYTES, "stream" => stream.to_owned()).increment(bytes);
}

/// The replica's disk worker received a chunk of `bytes` payload bytes.
pub fn chunk_received(stream: &str, bytes: u64) {
    counter!(RECEIVED_BYTES, "stream" => stream.to_owned()).increment(bytes);
    counter!(RECEIVED_CHUNKS, "stream" => stream.to_owned()).increment(1);
}

/// One group-commit fdatasync took `elapsed`.
pub fn fsync(stream: &str, elapsed: Duration) {
    histogram!(FSYNC_SECONDS, "stream" => stream.to_owned()).record(elapsed.as_secs_f64());
}

/// A role-change hook ran (it was configured and not already run).
pub fn hook_ran(hook: &str, failed: bool) {
    counter!(HOOK_RUNS, "hook" => hook.to_owned()).increment(1);
    if failed {
        counter!(HOOK_FAILURES, "hook" => hook.to_owned()).increment(1);
    }
}

/// The last drill of `stream` as the gauges show it: from the history at
/// start, and after each drill (`counted`: a drill that ran now, which the
/// runs counter counts).
pub fn drill_result(
    e: &crate::storage::drills::DrillEntry,
    last_success_ms: Option<u64>,
    counted: bool,
) {
    let s = e.stream.clone();
    gauge!(DRILL_LAST_PASSED, "stream" => s.clone()).set(if e.passed { 1.0 } else { 0.0 });
    if let Some(ms) = last_success_ms {
        gauge!(DRILL_LAST_SUCCESS, "stream" => s.clone()).set(ms as f64 / 1000.0);
    }
    if let Some(rto) = e.rto_seconds {
        gauge!(DRILL_LAST_RTO, "stream" => s.clone()).set(rto);
    }
    gauge!(DRILL_LAST_RPO_BYTES, "stream" => s.clone()).set(e.rpo_bytes as f64);
    gauge!(DRILL_LAST_RPO_SECONDS, "stream" => s.clone()).set(e.rpo_seconds);
    if counted {
        let result = if e.passed { "passed" } else { "failed" };
        counter!(DRILL_RUNS, "stream" => s, "result" => result).increment(1);
    }
}

/// A pruning pass removed `segments` spooled segments of `bytes` bytes.
pub fn spool_pruned(stream: &str, segments: u64, bytes: u64) {
    counter!(SPOOL_PRUNED_SEGMENTS, "stream" => stream.to_owned()).increment(segments);
    counter!(SPOOL_PRUNED_BYTES, "stream" => stream.to_owned()).increment(bytes);
}

/// The DR site's retention state of `stream` after a pass: all-time
/// removals and the oldest segment kept (its age and start position).
pub fn retention(stream: &str, segments: u64, bytes: u64, oldest: Option<(f64, u64)>) {
    counter!(RETENTION_PRUNED_SEGMENTS, "stream" => stream.to_owned()).absolute(segments);
    counter!(RETENTION_PRUNED_BYTES, "stream" => stream.to_owned()).absolute(bytes);
    if let Some((age, start)) = oldest {
        gauge!(RETENTION_OLDEST_AGE, "stream" => stream.to_owned()).set(age);
        gauge!(RETENTION_OLDEST_POSITION, "stream" => stream.to_owned()).set(start as f64);
    }
}

/// A `wal-push` was refused at `spool_max_bytes`; `full`: because the
/// spool is full (not because the one segment is larger than the limit).
pub fn spool_refused(stream: &str, full: bool) {
    counter!(SPOOL_REFUSED, "stream" => stream.to_owned()).increment(1);
    if full {
        gauge!(SPOOL_FULL, "stream" => stream.to_owned()).set(1.0);
    }
}

/// A peer's request for `stream` was refused: the stream is not assigned
/// to it here.
pub fn refused_unassigned(stream: &drd_proto::StreamName) {
    counter!(REFUSED_UNASSIGNED, "stream" => stream.to_string()).increment(1);
}

/// A bandwidth limit was set (`stream` is `*` for the node-wide one).
pub fn bandwidth_limit(stream: &str, rate: Option<u64>) {
    gauge!(BANDWIDTH_LIMIT, "stream" => stream.to_owned()).set(rate.unwrap_or(0) as f64);
}
