//! Progress bars for long work (`drctl verify`, `rejoin`, `switchover`):
//! while the request runs, drctl polls the daemon's `Status` for the
//! operation its request named (`progress_token`) and draws what it finds.
//! Bars go to stderr, and only when stderr is a terminal and `--json` and
//! `--no-progress` are absent: scripts and logs see only the result.

use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;
use tonic::transport::Channel;

/// How often drctl asks the daemon how far the work has got.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Whether to draw progress: on a terminal, for humans only.
pub fn wanted(json: bool, no_progress: bool) -> bool {
    decide(json, no_progress, std::io::stderr().is_terminal())
}

/// [`wanted`] without the terminal check, for tests.
pub fn decide(json: bool, no_progress: bool, stderr_is_terminal: bool) -> bool {
    !json && !no_progress && stderr_is_terminal
}

/// A token naming this run's operation among others in `Status`.
pub fn token(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("drctl-{kind}-{}-{nanos:08x}", std::process::id())
}

/// What the bar shows for one poll of an operation.
#[derive(Debug, PartialEq)]
pub struct BarView {
    /// Bytes to do; None while unknown (a spinner is drawn instead).
    pub length: Option<u64>,
    pub position: u64,
    pub message: String,
}

/// Maps the daemon's report to the bar: bytes when the total is known,
/// items (segments, files) and the phase in the message.
pub fn view(op: &pb::OperationProgress) -> BarView {
    let mut message = op.phase.clone();
    if op.items_total > 0 {
        let unit = match op.kind.as_str() {
            "verify" => "segments",
            "rejoin" => "files",
            _ => "items",
        };
        message = format!(
            "{message} ({}/{} {unit})",
            op.items_done.min(op.items_total),
            op.items_total
        );
    }
    BarView {
        length: (op.bytes_total > 0).then_some(op.bytes_total),
        position: op.bytes_done.min(op.bytes_total),
        message,
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.green} {prefix:.bold} {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner:.green} {prefix:.bold} [{bar:30.cyan/blue}] {binary_bytes}/{binary_total_bytes} \
         {binary_bytes_per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Applies one poll to the bar.
fn draw(bar: &ProgressBar, v: &BarView, with_length: &mut bool) {
    match v.length {
        Some(len) => {
            if !*with_length {
                bar.set_style(bar_style());
                *with_length = true;
            }
            bar.set_length(len);
            bar.set_position(v.position);
        }
        None if *with_length => {
            bar.set_style(spinner_style());
            *with_length = false;
        }
        None => {}
    }
    bar.set_message(v.message.clone());
}

/// Awaits `call` (the request itself); with `show`, draws the progress of
/// the operation named `token` meanwhile, polling `Status` over `client`
/// (a clone of the request's channel). A daemon that reports no progress
/// (an older build) gets a spinner. The bar is cleared before returning.
pub async fn follow<T>(
    mut client: ControlClient<Channel>,
    token: &str,
    title: &str,
    show: bool,
    call: impl Future<Output = T>,
) -> T {
    if !show {
        return call.await;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(spinner_style());
    bar.set_prefix(title.to_string());
    bar.set_message("waiting for drd");
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut with_length = false;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tokio::pin!(call);
    let out = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tick.tick() => {
                let poll = tokio::time::timeout(POLL_INTERVAL * 5, client.status(pb::StatusRequest {}));
                let Ok(Ok(s)) = poll.await else { continue };
                if let Some(op) = s.get_ref().operations.iter().find(|o| o.token == token) {
                    draw(&bar, &view(op), &mut with_length);
                }
            }
        }
    };
    bar.finish_and_clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_for_humans_on_a_terminal() {
        assert!(decide(false, false, true));
        assert!(!decide(true, false, true), "--json stays pure JSON");
        assert!(!decide(false, true, true), "--no-progress");
        assert!(!decide(false, false, false), "stderr is not a terminal");
    }

    #[test]
    fn tokens_name_the_kind_and_differ() {
        let a = token("verify");
        assert!(a.starts_with("drctl-verify-"), "{a}");
        assert!(a.len() <= drd_client::progress::MAX_TOKEN_LEN);
    }

    #[test]
    fn the_bar_counts_bytes_and_names_items_and_phase() {
        let op = pb::OperationProgress {
            kind: "verify".into(),
            phase: "hashing segments".into(),
            bytes_done: 3 << 20,
            bytes_total: 8 << 20,
            items_done: 3,
            items_total: 8,
            ..Default::default()
        };
        assert_eq!(
            view(&op),
            BarView {
                length: Some(8 << 20),
                position: 3 << 20,
                message: "hashing segments (3/8 segments)".into(),
            }
        );
        // Nothing known yet: a spinner with the phase.
        let early = pb::OperationProgress {
            kind: "rejoin".into(),
            phase: "asking the new primary for the fork".into(),
            ..Default::default()
        };
        assert_eq!(
            view(&early),
            BarView {
                length: None,
                position: 0,
                message: "asking the new primary for the fork".into(),
            }
        );
        // A drain counts bytes only; a position never passes the total.
        let drain = pb::OperationProgress {
            kind: "switchover".into(),
            phase: "drain: waiting for lag 0".into(),
            bytes_done: 12,
            bytes_total: 10,
            ..Default::default()
        };
        let v = view(&drain);
        assert_eq!((v.length, v.position), (Some(10), 10));
        assert_eq!(v.message, "drain: waiting for lag 0");
    }

    #[test]
    fn a_hidden_bar_draws_nothing_and_switches_styles() {
        let bar = ProgressBar::hidden();
        let mut with_length = false;
        let v = BarView {
            length: Some(100),
            position: 40,
            message: "m".into(),
        };
        draw(&bar, &v, &mut with_length);
        assert!(with_length);
        assert_eq!((bar.length(), bar.position()), (Some(100), 40));
        let spin = BarView {
            length: None,
            position: 0,
            message: "n".into(),
        };
        draw(&bar, &spin, &mut with_length);
        assert!(!with_length);
        assert_eq!(bar.message(), "n");
    }
}
