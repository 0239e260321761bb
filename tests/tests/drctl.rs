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
