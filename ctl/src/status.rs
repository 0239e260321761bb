//! `drctl status`: the node's role, epoch and streams as a table (or
//! `--json`), a warning line when a stream's peer speaks another protocol
//! version, the long operations running on the node, and with `--watch` a
//! live view: on a terminal a progress bar per stream that fills as a
//! replica catches up, otherwise a table (or a JSON line) per interval.

use crate::{print_json, progress, EXIT_UNREACHABLE};
use anyhow::Context;
use clap::Args;
use drd_client::display::{self, bytes, rate};
use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON for scripts instead of a table (with --watch: one JSON
    /// object per line and interval).
    #[arg(long)]
    pub json: bool,
    /// Keep watching until Ctrl-C: on a terminal, a bar per stream that
    /// fills as the replica catches up (with rate and ETA).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between updates with --watch.
    #[arg(long, default_value_t = 1.0, value_parser = positive_seconds)]
    pub interval: f64,
    /// Only this stream (the summary line still counts them all).
    #[arg(long)]
    pub stream: Option<String>,
}

/// The status as shown: streams worst first, only `--stream`'s if named.
/// The summary line is made before the filter.
fn shown(mut s: pb::StatusResponse, only: Option<&str>) -> (pb::StatusResponse, String) {
    let summary = display::streams_summary(&s);
    let mut streams = std::mem::take(&mut s.streams);
    if let Some(name) = only {
        streams.retain(|t| t.name == name);
    }
    display::worst_first(&s, &mut streams);
    s.streams = streams;
    (s, summary)
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// One warning per stream whose peer speaks another protocol version.
pub fn protocol_warnings(s: &pb::StatusResponse) -> Vec<String> {
    s.streams
        .iter()
        .filter_map(|t| {
            drd_client::version::protocol_warning(
                &t.name,
                s.protocol_version,
                &s.version,
                &t.peer,
                t.peer_protocol_version,
                &t.peer_software_version,
            )
        })
        .collect()
}

/// `verify of ehr-prod: hashing segments (3/8 segments), 3.0 MiB of 8.0 MiB, 12 s`.
pub fn operation_line(o: &pb::OperationProgress) -> String {
    let v = progress::view(o);
    let amount = match v.length {
        Some(total) => format!(", {} of {}", bytes(v.position), bytes(total)),
        None => String::new(),
    };
    format!(
        "{} of {}: {}{amount}, {:.0} s",
        o.kind, o.stream, v.message, o.elapsed_seconds
    )
}

fn header(s: &pb::StatusResponse) -> String {
    format!(
        "node {}  role {}  epoch {}{}  drd {}  up {}s",
        s.node_id,
        display::role_name(s.role),
        s.epoch,
        if s.paused { "  PAUSED" } else { "" },
        s.version,
        s.uptime_seconds
    )
}

fn print_human(s: &pb::StatusResponse, summary: &str) {
    println!("{}", header(s));
    println!("{summary}");
    for t in &s.streams {
        if !t.fenced_reason.is_empty() {
            println!(
                "FENCED {}: {}. Run `drctl rejoin --stream {}` to make this node its replica.",
                t.name, t.fenced_reason, t.name
            );
        }
    }
    if s.streams.iter().all(|t| t.fenced_reason.is_empty()) && !s.fenced_reason.is_empty() {
        println!(
            "FENCED: {}. Run `drctl rejoin` to make this node a replica.",
            s.fenced_reason
        );
    }
    for w in protocol_warnings(s) {
        println!("WARNING: {w}");
    }
    for o in &s.operations {
        println!("running: {}", operation_line(o));
    }
    println!();
    print!("{}", display::status_table(std::slice::from_ref(s)));
    for t in &s.targets {
        println!("{}", target_line(t));
    }
    for t in &s.streams {
        if let Some(sp) = &t.spool {
            println!("{}", spool_line(&t.name, sp));
        }
        if let Some(pg) = &t.postgres {
            println!("{}", pg_line(t, pg));
        }
        if let Some(o) = &t.mode_override {
            println!(
                "MODE {}: {} (override of the configured mode) since {} by {}: {:?}. \
                 `drctl mode {} <configured mode> --reason …` removes it.",
                t.name,
                o.mode,
                display::unix_ms_utc(o.at_ms),
                o.user,
                o.reason,
                t.name
            );
        }
    }
}

/// `postgres ehr-prod: connected, timeline 3, server 0/5A000128, flush→pg
/// 0/59FFF000 (sync), DR 0/59FFF000, slot drd_rochester reserved, retains 12.0 MiB`.
pub fn pg_line(t: &pb::StreamStatus, pg: &pb::PgStreamStatus) -> String {
    let lsn = display::lsn;
    let mut line = format!(
        "postgres {}: {}, timeline {}, server {}, written {}, flush→pg {} ({}), DR {}, slot {}",
        t.name,
        if pg.connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
        pg.timeline,
        lsn(pg.server_end_lsn),
        lsn(pg.written_lsn),
        lsn(pg.reported_flush_lsn),
        if t.mode.is_empty() { "?" } else { &t.mode },
        lsn(pg.dr_durable_lsn),
        pg.slot,
    );
    if !pg.slot_wal_status.is_empty() {
        line.push_str(&format!(
            " {}, retains {}",
            pg.slot_wal_status,
            bytes(pg.slot_retained_bytes)
        ));
    }
    if pg.slot_wal_status == "lost" || pg.slot_lost {
        line.push_str(
            "\nSLOT LOST: PostgreSQL invalidated the slot; WAL it held never reached drd. \
             Rebuild the DR standby from a new base backup.",
        );
    }
    if !pg.last_error.is_empty() {
        line.push_str(&format!("\n  last database error: {}", pg.last_error));
    }
    line
}

/// `spool ehr-prod: 12 segments, 192.0 MiB of 16.0 GiB (1.2 %), retention 1h, 40 pruned`.
pub fn spool_line(stream: &str, sp: &pb::SpoolStatus) -> String {
    let pct = if sp.limit_bytes == 0 {
        0.0
    } else {
        sp.bytes as f64 * 100.0 / sp.limit_bytes as f64
    };
    let retention = if sp.retention_seconds > 0.0 {
        humantime::format_duration(std::time::Duration::from_secs_f64(sp.retention_seconds))
            .to_string()
    } else {
        "none (removed once sealed at the replica)".to_string()
    };
    let mut line = format!(
        "spool {stream}: {} segments, {} of {} limit ({pct:.1} %), retention {retention}, \
         {} segments ({}) pruned",
        sp.segments,
        bytes(sp.bytes),
        bytes(sp.limit_bytes),
        sp.pruned_segments,
        bytes(sp.pruned_bytes),
    );
    if sp.full {
        line.push_str(&format!(
            "\nSPOOL FULL: wal-push refuses new segments ({} refused); PostgreSQL keeps them in \
             pg_wal and retries. Check the DR link and the replica.",
            sp.refused_pushes
        ));
    }
    line
}

pub fn status_json(s: &pb::StatusResponse, summary: &str) -> serde_json::Value {
    json!({
        "summary": summary,
        "node_id": s.node_id,
        "role": display::role_name(s.role).to_lowercase(),
        "epoch": s.epoch,
        "paused": s.paused,
        "fenced_reason": s.fenced_reason,
        "version": s.version,
        "protocol_version": drd_proto::announced_protocol_version(s.protocol_version),
        "uptime_seconds": s.uptime_seconds,
        "warnings": protocol_warnings(s),
        "targets": s.targets.iter().map(|t| json!({
            "stream": t.stream,
            "url": t.url,
            "state": t.state,
            "last_segment": t.last_segment,
            "segments": t.segments,
            "partials": t.partials,
            "bytes": t.bytes,
            "requests": t.requests,
            "retries": t.retries,
            "lag_seconds": t.lag_seconds,
            "last_error": t.last_error,
            "caught_up_at_ms": t.caught_up_at_ms,
        })).collect::<Vec<_>>(),
        "operations": s.operations.iter().map(|o| json!({
            "kind": o.kind,
            "stream": o.stream,
            "phase": o.phase,
            "bytes_done": o.bytes_done,
            "bytes_total": o.bytes_total,
            "items_done": o.items_done,
            "items_total": o.items_total,
            "elapsed_seconds": o.elapsed_seconds,
        })).collect::<Vec<_>>(),
        "streams": s.streams.iter().map(|t| json!({
            "name": t.name,
            // This stream's role and epoch at the node (roles are per stream).
            "role": display::role_name(display::stream_role(s, t)).to_lowercase(),
            "epoch": display::stream_epoch(s, t),
            "fenced_reason": t.fenced_reason,
            "direction": t.direction,
            "peer": t.peer,
            "connected": t.connected,
            "written_position": t.written_position,
            "durable_position": t.durable_position,
            "lag_bytes": t.lag_bytes,
            "lag_seconds": t.lag_seconds,
            "network_bytes": t.network_bytes,
            "segments": t.segments,
            "sealed_segments": t.sealed_segments,
            "current_segment": t.current_segment,
            "reconnects": t.reconnects,
            "throughput_bytes_per_second": t.throughput_bytes_per_second,
            "paused": t.paused,
            "last_error": t.last_error,
            // 0 / "": not known (no handshake yet, or a peer too old to say).
            "peer_protocol_version": t.peer_protocol_version,
            "peer_software_version": t.peer_software_version,
            // Spool streams at the primary only; null otherwise.
            "spool": t.spool.as_ref().map(|sp| json!({
                "bytes": sp.bytes,
                "segments": sp.segments,
                "limit_bytes": sp.limit_bytes,
                "full": sp.full,
                "retention_seconds": sp.retention_seconds,
                "pruned_segments": sp.pruned_segments,
                "pruned_bytes": sp.pruned_bytes,
                "refused_pushes": sp.refused_pushes,
            })),
            "mode": t.mode,
            "mode_override": t.mode_override.as_ref().map(|o| json!({
                "mode": o.mode, "at_ms": o.at_ms, "user": o.user, "reason": o.reason,
            })),
            // source = "postgres" streams at the primary only; null otherwise.
            "postgres": t.postgres.as_ref().map(|pg| json!({
                "connected": pg.connected,
                "system_id": pg.system_id,
                "timeline": pg.timeline,
                "server_end_lsn": display::lsn(pg.server_end_lsn),
                "server_end_at_ms": pg.server_end_at_ms,
                "written_lsn": display::lsn(pg.written_lsn),
                "local_durable_lsn": display::lsn(pg.local_durable_lsn),
                "reported_write_lsn": display::lsn(pg.reported_write_lsn),
                "reported_flush_lsn": display::lsn(pg.reported_flush_lsn),
                "dr_durable_lsn": display::lsn(pg.dr_durable_lsn),
                "dr_durable_timeline": pg.dr_durable_timeline,
                "slot": pg.slot,
                "slot_retained_bytes": pg.slot_retained_bytes,
                "slot_wal_status": pg.slot_wal_status,
                "slot_lost": pg.slot_lost,
                "last_error": pg.last_error,
            })),
            "protocol_mismatch": t.peer_protocol_version != 0
                && t.peer_protocol_version
                    != drd_proto::announced_protocol_version(s.protocol_version),
        })).collect::<Vec<_>>(),
    })
}

pub async fn run(
    c: &mut ControlClient<Channel>,
    a: &StatusArgs,
    no_progress: bool,
) -> anyhow::Result<ExitCode> {
    if a.watch {
        return watch(c, a, progress::wanted(a.json, no_progress)).await;
    }
    let s = c
        .status(pb::StatusRequest {})
        .await
        .context("status request failed")?
        .into_inner();
    if let Some(name) = &a.stream {
        if !s.streams.iter().any(|t| &t.name == name) {
            let names: Vec<&str> = s.streams.iter().map(|t| t.name.as_str()).collect();
            eprintln!(
                "drctl: node {} has no stream named {name:?} (it has: {})",
                s.node_id,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let (s, summary) = shown(s, a.stream.as_deref());
    if a.json {
        print_json(&status_json(&s, &summary))?;
    } else {
        print_human(&s, &summary);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--watch`: until Ctrl-C, or exit 3 when the daemon goes away.
async fn watch(
    c: &mut ControlClient<Channel>,
    a: &StatusArgs,
    bars: bool,
) -> anyhow::Result<ExitCode> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(a.interval));
    let mut view = bars.then(WatchBars::new);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        let s = match c.status(pb::StatusRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                if let Some(v) = view.take() {
                    v.abandon();
                }
                eprintln!(
                    "drctl: status request failed: {}; is drd still running (systemctl status drd)?",
                    e.message()
                );
                return Ok(ExitCode::from(EXIT_UNREACHABLE));
            }
        };
        let (s, summary) = shown(s, a.stream.as_deref());
        if a.json {
            println!("{}", serde_json::to_string(&status_json(&s, &summary))?);
        } else if let Some(v) = view.as_mut() {
            v.update(&s);
        } else {
            print_human(&s, &summary);
            println!();
        }
    }
    if let Some(v) = view {
        v.abandon();
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a stream's catch-up bar starts and how far it has got: the bar
/// runs from the durable position when the lag was first seen (`base`) to
/// the written position, so it fills as the replica catches up. Returns
/// the new base (None once caught up) and (done, total) in bytes.
pub fn catch_up(base: Option<u64>, t: &pb::StreamStatus) -> (Option<u64>, Option<(u64, u64)>) {
    if t.lag_bytes == 0 {
        return (None, None);
    }
    // A log cut back (rejoin) or a new session can move durable backwards.
    let base = base
        .filter(|b| *b <= t.durable_position)
        .unwrap_or(t.durable_position);
    let total = t.written_position.saturating_sub(base);
    let done = t.durable_position.saturating_sub(base).min(total);
    (Some(base), Some((done, total)))
}

/// The terminal view of `--watch`: a header line and a bar per stream, on
/// stderr.
struct WatchBars {
    multi: MultiProgress,
    head: ProgressBar,
    streams: BTreeMap<String, (ProgressBar, Option<u64>)>,
    warnings: Vec<String>,
}

impl WatchBars {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let head = multi.add(ProgressBar::new_spinner());
        head.set_style(
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self {
            multi,
            head,
            streams: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    fn update(&mut self, s: &pb::StatusResponse) {
        let mut head = header(s);
        for o in &s.operations {
            head.push_str(&format!("  | running: {}", operation_line(o)));
        }
        self.head.set_message(head);
        let warnings = protocol_warnings(s);
        if warnings != self.warnings {
            for w in &warnings {
                let _ = self.multi.println(format!("WARNING: {w}"));
            }
            self.warnings = warnings;
        }
        let catching = ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let steady = ProgressStyle::with_template("{prefix:.bold} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        for t in &s.streams {
            let (bar, base) = self.streams.entry(t.name.clone()).or_insert_with(|| {
                let b = self
                    .multi
                    .add(ProgressBar::new(0).with_style(steady.clone()));
                b.set_prefix(t.name.clone());
                (b, None)
            });
            let conn = if t.connected { "" } else { ", NOT CONNECTED" };
            let (next, amount) = catch_up(*base, t);
            match amount {
                Some((done, total)) => {
                    if base.is_none() {
                        bar.set_style(catching.clone());
                        bar.reset();
                    }
                    bar.set_length(total);
                    bar.set_position(done);
                    bar.set_message(format!(
                        "lag {} ({:.1} s), {}{conn}",
                        bytes(t.lag_bytes),
                        t.lag_seconds,
                        rate(t.throughput_bytes_per_second)
                    ));
                }
                None => {
                    bar.set_style(steady.clone());
                    bar.set_message(format!(
                        "{} {}, caught up at {} (lag 0){conn}",
                        t.direction,
                        t.peer,
                        bytes(t.durable_position)
                    ));
                }
            }
            *base = next;
        }
    }

    /// Leaves the last state on the screen.
    fn abandon(self) {
        self.head.abandon();
        for (bar, _) in self.streams.values() {
            bar.abandon();
        }
    }
}

/// One object-store target: `TARGET ehr-prod s3://…: caught up, 812
/// segments (13.0 GiB), 4 partials, last 0000…2C, 2 retries`.
fn target_line(t: &pb::TargetStatus) -> String {
    let state = if t.state.is_empty() {
        "starting"
    } else {
        t.state.as_str()
    };
    let mut line = format!(
        "TARGET {} {}: {state}, {} segments + {} partials ({}) uploaded since start, last {}, \
         {} requests, {} retries",
        t.stream,
        t.url,
        t.segments,
        t.partials,
        display::bytes(t.bytes),
        if t.last_segment.is_empty() {
            "-"
        } else {
            t.last_segment.as_str()
        },
        t.requests,
        t.retries
    );
    if t.lag_seconds > 0.0 {
        line.push_str(&format!(", {:.0} s behind", t.lag_seconds));
    }
    if !t.last_error.is_empty() {
        line.push_str(&format!("; error: {}", t.last_error));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(written: u64, durable: u64) -> pb::StreamStatus {
        pb::StreamStatus {
            name: "ehr-prod".into(),
            peer: "rochester-dr1".into(),
            written_position: written,
            durable_position: durable,
            lag_bytes: written - durable,
            ..Default::default()
        }
    }

    #[test]
    fn the_catch_up_bar_fills_from_where_the_lag_was_first_seen() {
        assert_eq!(catch_up(None, &stream(100, 100)), (None, None));
        let (base, amount) = catch_up(None, &stream(1000, 200));
        assert_eq!((base, amount), (Some(200), Some((0, 800))));
        // More written meanwhile: the total grows, the start stays.
        assert_eq!(
            catch_up(base, &stream(1200, 700)),
            (Some(200), Some((500, 1000)))
        );
        // Durable went backwards (a cut back): start again from there.
        assert_eq!(
            catch_up(Some(700), &stream(900, 100)),
            (Some(100), Some((0, 800)))
        );
        assert_eq!(catch_up(Some(200), &stream(1200, 1200)), (None, None));
    }

    /// A fleet's status: worst first (fenced, disconnected, then by lag),
    /// role and epoch on every row, and a summary of all streams even when
    /// `--stream` shows one.
    #[test]
    fn a_fleet_is_shown_worst_first_with_a_summary() {
        let row =
            |name: &str, role: pb::Role, epoch: u64, lag: f64, connected: bool| pb::StreamStatus {
                name: name.into(),
                role: role as i32,
                epoch,
                lag_seconds: lag,
                connected,
                ..Default::default()
            };
        let s = pb::StatusResponse {
            node_id: "dr1".into(),
            role: pb::Role::Mixed as i32,
            epoch: 4,
            streams: vec![
                row("a-ok", pb::Role::Replica, 2, 0.1, true),
                row("b-lagging", pb::Role::Replica, 2, 9.0, true),
                row("c-down", pb::Role::Replica, 2, 1.0, false),
                row("d-fenced", pb::Role::Fenced, 3, 0.0, false),
                row("e-promoted", pb::Role::Primary, 4, 0.0, true),
            ],
            ..Default::default()
        };
        let (shown_all, summary) = shown(s.clone(), None);
        let order: Vec<&str> = shown_all.streams.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            order,
            ["d-fenced", "c-down", "b-lagging", "a-ok", "e-promoted"]
        );
        assert!(
            summary.starts_with(
                "5 streams: 1 FENCED, 1 primary, 3 replica; 2 disconnected; worst lag 9.0 s"
            ),
            "{summary}"
        );
        let j = status_json(&shown_all, &summary);
        assert_eq!(j["role"], "mixed");
        assert_eq!(j["streams"][0]["role"], "fenced");
        assert_eq!(j["streams"][0]["epoch"], 3);
        assert_eq!(j["streams"][4]["role"], "primary");
        let (one, summary_one) = shown(s, Some("e-promoted"));
        assert_eq!(one.streams.len(), 1);
        assert_eq!(summary_one, summary, "the summary counts every stream");
        let table = display::status_table(std::slice::from_ref(&one));
        assert!(
            table.contains("primary") && table.contains(" 4 "),
            "{table}"
        );
    }

    #[test]
    fn status_json_carries_versions_and_a_mismatch_warning() {
        let mut s = pb::StatusResponse {
            node_id: "verona-db1".into(),
            version: "0.2.0 (git abc)".into(),
            protocol_version: 2,
            streams: vec![pb::StreamStatus {
                peer_protocol_version: 2,
                peer_software_version: "0.2.0 (git def)".into(),
                ..stream(10, 10)
            }],
            ..Default::default()
        };
        let j = status_json(&s, "");
        assert_eq!(j["protocol_version"], 2);
        assert_eq!(j["warnings"], json!([]));
        assert_eq!(j["streams"][0]["peer_protocol_version"], 2);
        assert_eq!(j["streams"][0]["peer_software_version"], "0.2.0 (git def)");
        assert_eq!(j["streams"][0]["protocol_mismatch"], false);

        s.streams[0].peer_protocol_version = 1;
        s.streams[0].peer_software_version = "0.1.0 (git 123)".into();
        let j = status_json(&s, "");
        assert_eq!(j["streams"][0]["protocol_mismatch"], true);
        let w = j["warnings"][0].as_str().unwrap();
        assert!(w.contains("protocol 2") && w.contains("protocol 1"), "{w}");
        assert!(w.contains("upgrade the peer rochester-dr1"), "{w}");
        assert_eq!(protocol_warnings(&s).len(), 1);

        // A peer whose version is not known yet: no warning.
        s.streams[0].peer_protocol_version = 0;
        assert!(protocol_warnings(&s).is_empty());
        assert_eq!(
            status_json(&s, "")["streams"][0]["protocol_mismatch"],
            false
        );
    }

    #[test]
    fn a_running_operation_reads_as_one_line() {
        let o = pb::OperationProgress {
            kind: "verify".into(),
            stream: "ehr-prod".into(),
            phase: "hashing segments".into(),
            bytes_done: 3 << 20,
            bytes_total: 8 << 20,
            items_done: 3,
            items_total: 8,
            elapsed_seconds: 12.2,
            ..Default::default()
        };
        assert_eq!(
            operation_line(&o),
            "verify of ehr-prod: hashing segments (3/8 segments), 3.0 MiB of 8.0 MiB, 12 s"
        );
    }

    #[test]
    fn intervals_must_be_positive() {
        assert_eq!(positive_seconds("0.5"), Ok(0.5));
        assert!(positive_seconds("0").is_err());
        assert!(positive_seconds("-1").is_err());
        assert!(positive_seconds("soon").is_err());
    }
}
