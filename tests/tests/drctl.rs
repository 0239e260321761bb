//! `drctl status` against real daemons: the table and the `--json` contract.

use drd_tests::*;
use std::process::Command;
use std::time::Duration;

fn drctl_status_json(d: &Daemon) -> serde_json::Value {
    let out = Command::new(bin("drctl"))
        .args(["--socket"])
        .arg(&d.socket)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_reports_positions_and_lag_on_both_sides() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 7);
    w.segments(1, 2, 1 << 20);
    w.append(3, 4321);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(60)).await;

    let p = drctl_status_json(&pair.primary);
    assert_eq!(p["node_id"], "verona-db1");
    assert_eq!(p["role"], "primary");
    assert_eq!(p["epoch"], 1);
    let s = &p["streams"][0];
    assert_eq!(s["name"], STREAM);
    assert_eq!(s["written_position"], w.total);
    assert_eq!(s["durable_position"], w.total);
    assert_eq!(s["lag_bytes"], 0);
    assert_eq!(s["lag_seconds"], 0.0);
    assert_eq!(s["connected"], true);

    let r = drctl_status_json(&pair.replica);
    assert_eq!(r["role"], "replica");
    assert_eq!(r["streams"][0]["durable_position"], w.total);
    assert_eq!(r["streams"][0]["sealed_segments"], 2);

    // The human table names the stream and the node.
    let out = Command::new(bin("drctl"))
        .arg("--socket")
        .arg(&pair.primary.socket)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verona-db1") && text.contains(STREAM) && text.contains("LAG"),
        "{text}"
    );

    // Lag shows while the replica is down and more WAL is written.
    pair.replica.kill9();
    w.append(3, 100_000);
    let lagging = wait_for("lag to show", Duration::from_secs(10), || async {
        let s = drctl_status_json(&pair.primary)["streams"][0].clone();
        (s["lag_bytes"].as_u64()? >= 100_000).then_some(s)
    })
    .await;
    println!("primary while the replica is down: {lagging}");
    assert!(lagging["lag_seconds"].as_f64().unwrap() > 0.0);
}

/// Runs drctl with stdout and stderr piped (no terminal anywhere).
fn drctl_piped(socket: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("drctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `drctl verify --json` is one JSON document and nothing else, and with no
/// terminal neither it nor the human report draws progress (no escape
/// codes, nothing on stderr); the status reply lists no operation once the
/// verify is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_output_stays_pure_without_a_terminal() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 11);
    w.segments(1, 6, 1 << 20);
    w.append(7, 1000);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(60)).await;
    wait_for(
        "6 sealed segments at the replica",
        Duration::from_secs(30),
        || async {
            let s = pair.replica.stream().await.ok()?;
            (s.sealed_segments == 6).then_some(())
        },
    )
    .await;

    for d in [&pair.replica, &pair.primary] {
        let (code, out, err) = drctl_piped(&d.socket, &["verify", "--json"]);
        assert_eq!(code, 0, "{out}\n{err}");
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("verify --json is not pure JSON ({e}): {out:?}"));
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["stream"], STREAM);
        assert_eq!(v["problems_total"], 0);
        assert!(v["segments_checked"].as_u64().unwrap() >= 6, "{v}");
        assert!(
            !out.contains('\x1b') && !err.contains('\x1b'),
            "{out:?} {err:?}"
        );
        assert!(err.is_empty(), "nothing on stderr with --json: {err:?}");
    }

    let (code, out, err) = drctl_piped(&pair.replica.socket, &["verify"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with("VERIFIED: 6 segments"), "{out}");
    assert!(
        !out.contains('\x1b') && !err.contains('\x1b'),
        "{out:?} {err:?}"
    );
    assert!(err.is_empty(), "no progress without a terminal: {err:?}");

    let status = drctl_status_json(&pair.replica);
    assert_eq!(status["operations"], serde_json::json!([]), "{status}");
}

/// Both sides record the other's protocol version and drd release from the
/// handshake; equal versions give no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_carries_the_peers_versions() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 5);
    w.append(1, 1000);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(60)).await;
    let release = format!("{} (git ", env!("CARGO_PKG_VERSION"));
    for d in [&pair.primary, &pair.replica] {
        let s = drctl_status_json(d);
        assert_eq!(s["protocol_version"], drd_proto::PROTOCOL_VERSION, "{s}");
        assert!(s["version"].as_str().unwrap().starts_with(&release), "{s}");
        let t = &s["streams"][0];
        assert_eq!(
            t["peer_protocol_version"],
            drd_proto::PROTOCOL_VERSION,
            "{s}"
        );
        assert!(
            t["peer_software_version"]
                .as_str()
                .unwrap()
                .starts_with(&release),
            "{s}"
        );
        assert_eq!(t["protocol_mismatch"], false, "{s}");
        assert_eq!(s["warnings"], serde_json::json!([]), "{s}");
        let (code, out, _) = drctl_piped(&d.socket, &["status"]);
        assert_eq!(code, 0);
        assert!(!out.contains("WARNING"), "{out}");
    }
}

/// `status --watch --json` without a terminal: one JSON object per line and
/// interval, no escape codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_json_prints_json_lines() {
    let mut pair = Pair::new("");
    pair.replica.start_ready().await;
    let mut child = Command::new(bin("drctl"))
        .arg("--socket")
        .arg(&pair.replica.socket)
        .args(["status", "--watch", "--json", "--interval", "0.2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for l in &lines[..lines.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert_eq!(v["node_id"], REPLICA_ID);
    }
    assert!(!text.contains('\x1b'));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
