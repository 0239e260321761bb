//! Living under systemd: `sd_notify` messages (READY=1 once everything
//! serves, STATUS= lines with role, epoch and lag, WATCHDOG=1 pings at half
//! `WATCHDOG_USEC`, STOPPING=1 on shutdown) and configuration reload on
//! SIGHUP (`systemctl reload drd`).
//!
//! A reload re-reads the configuration file and applies what can change
//! while the daemon runs — `log_level`, `max_bandwidth` (node-wide and per
//! stream) — and names every other changed key, which takes effect only
//! after a restart. An invalid file changes nothing.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) the notify calls do nothing.

use crate::config::Config;
use crate::node::Node;
use crate::throttle;
use sd_notify::NotifyState;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a STATUS= line is sent (`systemctl status drd` shows the last).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Changes the log filter of the running process (`log_level`); given by
/// the binary, which owns the tracing subscriber.
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the binary hands [`crate::run_with`] beyond the configuration.
#[derive(Default)]
pub struct Service {
    /// The configuration file, re-read on SIGHUP (None: SIGHUP is not
    /// handled, e.g. in tests that call `run` directly).
    pub config_path: Option<PathBuf>,
    /// Applies a new `log_level`.
    pub log_reload: Option<LogReload>,
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

/// Everything is bound and serving: READY=1 and a first STATUS= line.
pub fn ready(node: &Node) {
    let status = status_line(node);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`),
/// if it is set for this process. Like `sd_watchdog_enabled(3)`, a
/// `WATCHDOG_PID` naming another process disables it; an absent one does not.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Streams listed one by one in the status line; past this, a summary.
const STATUS_LINE_STREAMS: usize = 3;

/// One line for `systemctl status`: each stream's role, epoch and lag — or,
/// for a fleet, how many streams have each role, how many are
/// disconnected, and the worst lag.
pub fn status_line(node: &Node) -> String {
    let views = node.stream_views();
    let role = |v: &crate::node::StreamView| v.role.map_or("unknown", |r| r.as_str());
    if views.len() <= STATUS_LINE_STREAMS {
        let parts: Vec<String> = views
            .iter()
            .map(|v| {
                format!(
                    "{}: {} epoch {}{}, {}, lag {} / {:.1} s",
                    v.name,
                    role(v),
                    v.epoch,
                    if v.paused { " (paused)" } else { "" },
                    if v.connected {
                        "connected"
                    } else {
                        "DISCONNECTED"
                    },
                    crate::display::bytes(v.lag_bytes),
                    v.lag_seconds
                )
            })
            .collect();
        return if parts.is_empty() {
            format!("{}, no streams yet", node.config.initial_role.as_str())
        } else {
            parts.join("; ")
        };
    }
    let mut by_role = std::collections::BTreeMap::<&str, usize>::new();
    for v in &views {
        *by_role.entry(role(v)).or_default() += 1;
    }
    let roles: Vec<String> = by_role.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let down = views.iter().filter(|v| !v.connected).count();
    let worst = views
        .iter()
        .max_by(|a, b| a.lag_seconds.total_cmp(&b.lag_seconds))
        .map(|v| format!("{:.1} s ({})", v.lag_seconds, v.name))
        .unwrap_or_default();
    format!(
        "{} streams: {}; {down} disconnected; worst lag {worst}",
        views.len(),
        roles.join(", ")
    )
}

/// Takes over SIGHUP when the service has a file to reload — first thing at
/// start, since the signal's default action ends the process. A SIGHUP that
/// arrives before [`spawn`] is kept and handled then.
pub fn hangup(service: &Service) -> Option<Signal> {
    service.config_path.as_ref()?;
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGHUP; a reload needs a restart");
            None
        }
    }
}

/// Starts the watchdog pings, the STATUS= updates and the SIGHUP handler
/// (with the signal from [`hangup`]) as tasks of `tracker`.
pub fn spawn(
    node: Arc<Node>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    service: Service,
    hup: Option<Signal>,
) {
    if let Some(interval) = watchdog_interval() {
        let every = interval / 2;
        tracing::info!(
            ?interval,
            "systemd watchdog enabled; pinging every {every:?}"
        );
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    // A ping proves the runtime still schedules tasks; a
                    // wedged runtime stops pinging and systemd restarts us.
                    _ = tick.tick() => send(&[NotifyState::Watchdog]),
                }
            }
        });
    }
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let stop = shutdown.clone();
        let n = node.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(STATUS_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let line = status_line(&n);
                        send(&[NotifyState::Status(&line)]);
                    }
                }
            }
        });
    }
    if let (Some(path), Some(mut hup)) = (service.config_path, hup) {
        let mut reloader = Reloader::new(node, path, service.log_reload);
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    s = hup.recv() => if s.is_none() { return },
                }
                tracing::info!("SIGHUP received; reloading the configuration");
                let mono = NotifyState::monotonic_usec_now().ok();
                let mut states = vec![NotifyState::Reloading];
                states.extend(mono);
                send(&states);
                reloader.reload();
                send(&[NotifyState::Ready]);
            }
        });
    }
}

/// Keys that a reload applies (path forms as in [`flatten`]).
fn is_live(key: &str) -> bool {
    key == "log_level"
        || key == "max_bandwidth"
        || (key.starts_with("stream.") && key.ends_with(".max_bandwidth"))
}

/// Re-reads the configuration file and applies what can change live.
pub struct Reloader {
    node: Arc<Node>,
    path: PathBuf,
    log_reload: Option<LogReload>,
    /// The file as the daemon started with it: keys that differ from it
    /// (other than live ones) wait for a restart.
    started: BTreeMap<String, String>,
    /// The live keys as last applied.
    applied: BTreeMap<String, String>,
}

impl Reloader {
    pub fn new(node: Arc<Node>, path: PathBuf, log_reload: Option<LogReload>) -> Self {
        // The text the running configuration was parsed from moments ago.
        let started = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| flatten(&t).ok())
            .unwrap_or_default();
        let applied = started
            .iter()
            .filter(|(k, _)| is_live(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self {
            node,
            path,
            log_reload,
            started,
            applied,
        }
    }

    /// One reload; returns the keys that need a restart (for tests and logs).
    pub fn reload(&mut self) -> Vec<String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e,
                    "reload failed: cannot read the configuration file; nothing changed");
                return Vec::new();
            }
        };
        let new = match Config::parse(&text) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = format!("{e:#}"),
                    "reload failed: the configuration is invalid; nothing changed");
                return Vec::new();
            }
        };
        let keys = match flatten(&text) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; nothing changed");
                return Vec::new();
            }
        };
        self.apply(&new, &keys);
        let restart = changed_keys(&self.started, &keys)
            .into_iter()
            .filter(|k| !is_live(k))
            .collect::<Vec<_>>();
        if restart.is_empty() {
            tracing::info!("configuration reloaded");
        } else {
            tracing::warn!(
                keys = restart.join(", "),
                "configuration reloaded; these changed keys take effect only after a restart \
                 (systemctl restart drd)"
            );
        }
        restart
    }

    fn apply(&mut self, new: &Config, keys: &BTreeMap<String, String>) {
        let live_now: BTreeMap<String, String> = keys
            .iter()
            .filter(|(k, _)| is_live(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for key in changed_keys(&self.applied, &live_now) {
            tracing::info!(
                key,
                from = self.applied.get(&key).map_or("(unset)", String::as_str),
                to = live_now.get(&key).map_or("(unset)", String::as_str),
                "reload: applying"
            );
        }
        if self.node.bandwidth.rate() != new.max_bandwidth {
            tracing::info!(
                limit = throttle::describe(new.max_bandwidth),
                "node-wide bandwidth limit changed"
            );
            self.node.bandwidth.set_rate(new.max_bandwidth);
            crate::metrics::bandwidth_limit("*", new.max_bandwidth);
        }
        for shipper in &self.node.shippers {
            // A stream added or removed in the file needs a restart (its
            // keys are reported); streams still configured get their limit.
            let Some(cfg) = new.streams.iter().find(|s| s.name == shipper.stream) else {
                continue;
            };
            if shipper.bandwidth.rate() != cfg.max_bandwidth {
                tracing::info!(stream = %shipper.stream,
                    limit = throttle::describe(cfg.max_bandwidth), "stream bandwidth limit changed");
                shipper.bandwidth.set_rate(cfg.max_bandwidth);
                crate::metrics::bandwidth_limit(shipper.stream.as_str(), cfg.max_bandwidth);
            }
        }
        if self.applied.get("log_level") != live_now.get("log_level") {
            let level = new
                .log_level
                .as_deref()
                .unwrap_or(crate::config::DEFAULT_LOG_LEVEL);
            match &self.log_reload {
                Some(f) => match f(level) {
                    Ok(()) => tracing::info!(log_level = level, "log level changed"),
                    Err(e) => tracing::error!(error = %e, "cannot change the log level"),
                },
                None => tracing::warn!("log_level changed, but this process cannot reload it"),
            }
        }
        self.applied = live_now;
    }
}

/// Keys whose values differ between `a` and `b` (present in either).
fn changed_keys(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out.sort();
    out
}

/// A TOML document as `key.path → value`. Streams are keyed by name
/// (`stream.ehr-prod.max_bandwidth`), so reordering them changes nothing.
fn flatten(text: &str) -> Result<BTreeMap<String, String>, String> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (k, v) in doc {
        match (k.as_str(), v) {
            ("stream", toml::Value::Array(streams)) => {
                for (i, s) in streams.into_iter().enumerate() {
                    let name = s
                        .get("name")
                        .and_then(|n| n.as_str())
                        .map_or_else(|| format!("[{i}]"), str::to_string);
                    flatten_into(&format!("stream.{name}"), s, &mut out);
                }
            }
            (_, v) => flatten_into(&k, v, &mut out),
        }
    }
    Ok(out)
}

fn flatten_into(prefix: &str, v: toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten_into(&format!("{prefix}.{k}"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_name_what_moved() {
        let a = flatten(
            "node_id = \"a\"\nmax_bandwidth = \"1MiB/s\"\n[tuning]\nwindow_bytes = 1\n\
             [[stream]]\nname = \"x\"\npeer = \"p\"\n[[stream]]\nname = \"y\"\npeer = \"q\"\n",
        )
        .unwrap();
        let b = flatten(
            "node_id = \"a\"\nmax_bandwidth = \"2MiB/s\"\n[tuning]\nwindow_bytes = 2\n\
             [[stream]]\nname = \"y\"\npeer = \"q\"\nmax_bandwidth = \"5MiB/s\"\n\
             [[stream]]\nname = \"x\"\npeer = \"p\"\n",
        )
        .unwrap();
        let changed = changed_keys(&a, &b);
        assert_eq!(
            changed,
            vec![
                "max_bandwidth",
                "stream.y.max_bandwidth",
                "tuning.window_bytes"
            ]
        );
        let restart: Vec<_> = changed.into_iter().filter(|k| !is_live(k)).collect();
        assert_eq!(restart, vec!["tuning.window_bytes"]);
    }
}
