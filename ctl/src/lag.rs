//! `drctl lag`: a monitoring check. The first line is the plugin output
//! (`DRD LAG OK: … | perfdata`), the exit code follows Nagios/Icinga:
//! 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (daemon unreachable).

use crate::{print_json, EXIT_UNREACHABLE};
use anyhow::Context;
use clap::Args;
use drd_client::display::{self, bytes};
use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Args)]
pub struct LagArgs {
    /// WARNING when any stream's lag reaches this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub warn_seconds: f64,
    /// CRITICAL when any stream's lag reaches this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub crit_seconds: f64,
    /// Redraw a live table every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Ok = 0,
    Warning = 1,
    Critical = 2,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }
}

/// The check's verdict for one node: level and one reason per problem.
pub fn evaluate(s: &pb::StatusResponse, warn: f64, crit: f64) -> (Level, Vec<String>) {
    let mut level = Level::Ok;
    let mut why = Vec::new();
    let mut raise = |l: Level, w: String, level: &mut Level| {
        *level = (*level).max(l);
        why.push(w);
    };
    if s.streams.is_empty() && s.role == pb::Role::Fenced as i32 {
        raise(Level::Critical, "node is FENCED".into(), &mut level);
    }
    // Every stream is checked; the worst one decides the exit code.
    for t in &s.streams {
        let fenced = display::stream_role(s, t) == pb::Role::Fenced as i32;
        if fenced {
            raise(Level::Critical, format!("{} is FENCED", t.name), &mut level);
        }
        if t.paused || (s.paused && t.role == pb::Role::Unspecified as i32) {
            raise(
                Level::Warning,
                format!("{} shipping is paused", t.name),
                &mut level,
            );
        }
        if t.lag_seconds >= crit {
            raise(
                Level::Critical,
                format!("{} lag {:.1} s >= {crit} s", t.name, t.lag_seconds),
                &mut level,
            );
        } else if t.lag_seconds >= warn {
            raise(
                Level::Warning,
                format!("{} lag {:.1} s >= {warn} s", t.name, t.lag_seconds),
                &mut level,
            );
        }
        if !t.connected && !fenced {
            raise(
                Level::Warning,
                format!("{} not connected", t.name),
                &mut level,
            );
        }
    }
    (level, why)
}

/// Streams named one by one in the plugin output; past this, a summary
/// (the perfdata still has every stream).
const PLUGIN_LINE_STREAMS: usize = 5;

fn plugin_line(s: &pb::StatusResponse, level: Level, why: &[String]) -> String {
    let summary = if s.streams.is_empty() {
        "no streams".to_string()
    } else if s.streams.len() > PLUGIN_LINE_STREAMS {
        display::streams_summary(s)
    } else {
        s.streams
            .iter()
            .map(|t| format!("{} {} {:.2} s", t.name, bytes(t.lag_bytes), t.lag_seconds))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let perf: Vec<String> = s
        .streams
        .iter()
        .map(|t| {
            format!(
                "'{0}_lag_bytes'={1}B '{0}_lag_seconds'={2:.3}s",
                t.name, t.lag_bytes, t.lag_seconds
            )
        })
        .collect();
    let reasons = if why.is_empty() {
        String::new()
    } else {
        format!(" — {}", why.join("; "))
    };
    format!(
        "DRD LAG {}: {summary}{reasons} | {}",
        level.name(),
        perf.join(" ")
    )
}

pub async fn run(c: &mut ControlClient<Channel>, a: &LagArgs) -> anyhow::Result<ExitCode> {
    if a.crit_seconds < a.warn_seconds {
        eprintln!("drctl: --crit-seconds must be at least --warn-seconds");
        return Ok(ExitCode::from(EXIT_UNREACHABLE));
    }
    loop {
        let s = match c.status(pb::StatusRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                println!("DRD LAG UNKNOWN: status request failed: {}", e.message());
                return Ok(ExitCode::from(EXIT_UNREACHABLE));
            }
        };
        let (level, why) = evaluate(&s, a.warn_seconds, a.crit_seconds);
        if a.json {
            print_json(&json!({
                "status": level.name(), "exit_code": level as u8, "reasons": why,
                "node_id": s.node_id, "role": display::role_name(s.role).to_lowercase(),
                "streams": s.streams.iter().map(|t| json!({
                    "name": t.name, "lag_bytes": t.lag_bytes, "lag_seconds": t.lag_seconds,
                    "role": display::role_name(display::stream_role(&s, t)).to_lowercase(),
                    "epoch": display::stream_epoch(&s, t),
                    "connected": t.connected, "durable_position": t.durable_position,
                    "written_position": t.written_position,
                })).collect::<Vec<_>>(),
            }))
            .context("printing JSON")?;
        } else {
            if a.watch {
                print!("\x1b[2J\x1b[H");
            }
            println!("{}", plugin_line(&s, level, &why));
            print!("{}", display::status_table(std::slice::from_ref(&s)));
        }
        if !a.watch {
            return Ok(ExitCode::from(level as u8));
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(lag: f64, connected: bool, role: pb::Role) -> pb::StatusResponse {
        pb::StatusResponse {
            role: role as i32,
            streams: vec![pb::StreamStatus {
                name: "s".into(),
                lag_seconds: lag,
                connected,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_map_to_nagios_levels() {
        assert_eq!(
            evaluate(&node(1.0, true, pb::Role::Primary), 5.0, 10.0).0,
            Level::Ok
        );
        assert_eq!(
            evaluate(&node(5.0, true, pb::Role::Primary), 5.0, 10.0).0,
            Level::Warning
        );
        assert_eq!(
            evaluate(&node(10.0, true, pb::Role::Primary), 5.0, 10.0).0,
            Level::Critical
        );
        assert_eq!(
            evaluate(&node(0.0, false, pb::Role::Primary), 5.0, 10.0).0,
            Level::Warning
        );
        assert_eq!(
            evaluate(&node(0.0, false, pb::Role::Fenced), 5.0, 10.0).0,
            Level::Critical
        );
    }

    /// Roles are per stream: one fenced stream of a fleet makes the check
    /// CRITICAL and names it, whatever the node-wide summary says.
    #[test]
    fn the_worst_stream_of_a_fleet_decides() {
        let row = |name: &str, role: pb::Role, lag: f64| pb::StreamStatus {
            name: name.into(),
            role: role as i32,
            epoch: 3,
            lag_seconds: lag,
            connected: role != pb::Role::Fenced,
            ..Default::default()
        };
        let mut s = pb::StatusResponse {
            role: pb::Role::Mixed as i32,
            streams: (0..99)
                .map(|i| row(&format!("db{i}"), pb::Role::Replica, 0.5))
                .collect(),
            ..Default::default()
        };
        assert_eq!(evaluate(&s, 5.0, 10.0).0, Level::Ok);
        s.streams.push(row("lab", pb::Role::Replica, 6.0));
        assert_eq!(evaluate(&s, 5.0, 10.0).0, Level::Warning);
        s.streams.push(row("ehr", pb::Role::Fenced, 0.0));
        let (level, why) = evaluate(&s, 5.0, 10.0);
        assert_eq!(level, Level::Critical);
        assert!(why.iter().any(|w| w == "ehr is FENCED"), "{why:?}");
        let line = plugin_line(&s, level, &why);
        assert!(line.starts_with("DRD LAG CRITICAL: 101 streams"), "{line}");
    }
}
