//! Operating a `source = "postgres"` stream against a real PostgreSQL 15
//! (issue 22): `drctl mode` drops a sync stream to async while the DR link
//! is down (audited, persisted across a restart, and undone the same way),
//! an invalidated replication slot is reported in `drctl status` and the
//! metrics, and the `drd_pg_*` gauges the alert rules use are exported.
//!
//! Run as root (CI), the PostgreSQL programs run as the `postgres` OS user;
//! drd connects to the database's Unix socket as the database superuser.
//! Without PostgreSQL the tests fail in CI (`CI=true`) and are skipped, with
//! the reason printed, elsewhere (as `tests/pgstream.rs`).

use drd_tests::pg::{require_postgres, run_output, Cluster};
use drd_tests::pgsites::{Sites, SitesOptions, SLOT};
use drd_tests::*;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a COMMIT that waits for the DR site is watched before the test
/// calls it blocked.
const BLOCKED: Duration = Duration::from_secs(3);

/// How long a COMMIT that must not wait (or no longer waits) may take.
const RETURNS_WITHIN: Duration = Duration::from_secs(15);

fn phase(t0: Instant, what: &str) {
    println!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// `sql` in a psql session of its own, in a thread: the receiver gets its
/// output once the statement returned (a COMMIT that waits for the DR site
/// keeps it empty).
fn psql_in_thread(c: &Cluster, sql: &str) -> mpsc::Receiver<anyhow::Result<String>> {
    let mut cmd = c.pg.cmd("psql", c.data.parent().unwrap());
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &c.host(), "-p", &c.port.to_string()])
        .args(["-U", drd_tests::pg::SUPERUSER, "-d", "postgres", "-c", sql]);
    let (tx, rx) = mpsc::channel();
    let what = format!("SQL {sql:?}");
    std::thread::spawn(move || {
        let _ = tx.send(run_output(cmd, &what));
    });
    rx
}

/// Asserts the COMMIT behind `rx` has not returned within [`BLOCKED`].
fn assert_blocked(rx: &mpsc::Receiver<anyhow::Result<String>>, what: &str, sites: &Sites) {
    match rx.recv_timeout(BLOCKED) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!(
            "{what}: the COMMIT returned ({other:?}) although it must wait for the DR site\n{}",
            sites.logs()
        ),
    }
}

/// Waits for the COMMIT behind `rx` (at most [`RETURNS_WITHIN`]); how long.
fn assert_returns(
    rx: &mpsc::Receiver<anyhow::Result<String>>,
    what: &str,
    sites: &Sites,
) -> Duration {
    let t = Instant::now();
    match rx.recv_timeout(RETURNS_WITHIN) {
        Ok(Ok(_)) => t.elapsed(),
        other => panic!(
            "{what}: the COMMIT did not return within {RETURNS_WITHIN:?} ({other:?})\n{}",
            sites.logs()
        ),
    }
}

/// The value of a sample `name{stream="ehr-prod"…}` in Prometheus text.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Until Verona's metrics have `name_and_labels` at `want`.
async fn wait_metric(sites: &Sites, name_and_labels: &str, want: f64, within: Duration) {
    let port = sites.metrics_port;
    let deadline = Instant::now() + within;
    loop {
        let text = metrics_text(port).await;
        if sample(&text, name_and_labels) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name_and_labels} is not {want} within {within:?}:\n{}\n{}",
            text.lines()
                .filter(|l| l.starts_with("drd_pg_") || l.starts_with("drd_mode"))
                .collect::<Vec<_>>()
                .join("\n"),
            sites.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `drctl mode` at `socket`: (exit code, stdout, stderr).
fn mode(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["mode"];
    all.extend_from_slice(args);
    drctl(socket, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drctl_mode_drops_sync_to_async_audited_and_back() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t0 = Instant::now();
    let mut sites = Sites::new(&pg, &SitesOptions::mode("sync")).await;
    let p = &sites.primary;
    p.psql("CREATE TABLE t (id bigint PRIMARY KEY)").unwrap();
    let rx = psql_in_thread(p, "INSERT INTO t VALUES (1)");
    assert_returns(&rx, "with the DR site up", &sites);
    assert_eq!(sites.stream_json()["mode"], "sync");
    phase(t0, "sync stream up; a COMMIT returns");

    // The DR link goes down (kill -9 of Rochester's drd: nothing acks).
    sites.b.kill9();
    let blocked = psql_in_thread(&sites.primary, "INSERT INTO t VALUES (2)");
    assert_blocked(&blocked, "the DR drd is down", &sites);
    phase(t0, "DR drd killed; a COMMIT waits");

    // Refusals, while the COMMIT waits.
    let (code, _, err) = mode(&sites.a.socket, &[STREAM, "async"]);
    assert_eq!(
        code, 2,
        "no --reason is a usage error (drctl's exit 2): {err}"
    );
    assert!(err.contains("--reason"), "{err}");
    for empty in ["", "   "] {
        let (code, out, err) = mode(&sites.a.socket, &[STREAM, "async", "--reason", empty]);
        assert_eq!(code, 1, "--reason {empty:?}: {out}{err}");
        assert!(
            err.contains("mode change refused") && err.contains("needs --reason"),
            "{err}"
        );
    }
    let (code, _, err) = mode(&sites.a.socket, &["lab", "async", "--reason", "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no stream named lab"), "{err}");
    assert_blocked(&blocked, "after the refused mode changes", &sites);
    assert_eq!(
        sites.stream_json()["mode_override"],
        serde_json::Value::Null
    );

    // The audited way out: async, with a reason.
    let t = Instant::now();
    let (code, out, err) = mode(
        &sites.a.socket,
        &[STREAM, "async", "--reason", "DR link down"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("mode async (overrides the configured sync)")
            && out.contains("NOT covered by zero loss"),
        "{out}"
    );
    assert_returns(&blocked, "after drctl mode async", &sites);
    let released = t.elapsed();
    phase(
        t0,
        &format!("drctl mode async: the waiting COMMIT returned after {released:?}"),
    );
    assert!(
        released < Duration::from_secs(5),
        "the COMMIT took {released:?} to return"
    );
    let s = sites.stream_json();
    assert_eq!(s["mode"], "async", "{s}");
    assert_eq!(s["postgres"]["slot"], SLOT, "{s}");
    let o = &s["mode_override"];
    assert_eq!(o["mode"], "async", "{s}");
    assert_eq!(o["reason"], "DR link down", "{s}");
    assert!(!o["user"].as_str().unwrap_or("").is_empty(), "{s}");
    assert!(o["at_ms"].as_u64().unwrap_or(0) > 0, "{s}");
    let (_, human, _) = drctl(&sites.a.socket, &["status"]);
    assert!(
        human.contains(&format!(
            "MODE {STREAM}: async (override of the configured mode)"
        )) && human.contains("\"DR link down\""),
        "{human}"
    );
    assert!(
        human.contains("flush→pg") && human.contains("(async)"),
        "{human}"
    );
    wait_metric(
        &sites,
        &format!("drd_mode_overridden{{stream=\"{STREAM}\"}}"),
        1.0,
        Duration::from_secs(5),
    )
    .await;
    let hist = drctl_json(&sites.a.socket, &["history"], 0);
    let entry = hist
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "mode")
        .unwrap_or_else(|| panic!("no mode entry in the history: {hist}"));
    assert_eq!(entry["reason"], "DR link down", "{entry}");
    assert_eq!(entry["stream"], STREAM, "{entry}");
    assert!(
        entry["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("mode sync -> async"),
        "{entry}"
    );
    assert_eq!(entry["user"], o["user"], "{entry}");

    // The override survives a restart: commits still do not wait.
    sites.restart_a().await;
    sites.wait_streaming(false).await;
    let rx = psql_in_thread(&sites.primary, "INSERT INTO t VALUES (3)");
    let took = assert_returns(&rx, "after the primary drd's restart", &sites);
    let s = sites.stream_json();
    assert_eq!(s["mode"], "async", "{s}");
    assert_eq!(s["mode_override"]["reason"], "DR link down", "{s}");
    phase(
        t0,
        &format!("primary drd restarted: still async, a COMMIT took {took:?}"),
    );

    // Back to sync (the configured mode): the override goes, and COMMITs
    // wait for the DR site again until it is back.
    let (code, out, err) = mode(
        &sites.a.socket,
        &[STREAM, "sync", "--reason", "DR link restored"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("override removed"), "{out}");
    let s = sites.stream_json();
    assert_eq!(s["mode"], "sync", "{s}");
    assert_eq!(s["mode_override"], serde_json::Value::Null, "{s}");
    let (_, human, _) = drctl(&sites.a.socket, &["status"]);
    assert!(!human.contains("MODE "), "{human}");
    let waiting = psql_in_thread(&sites.primary, "INSERT INTO t VALUES (4)");
    assert_blocked(&waiting, "sync again, the DR drd still down", &sites);
    sites.b.start_ready().await;
    let took = assert_returns(&waiting, "once the DR drd is back", &sites);
    phase(
        t0,
        &format!("drctl mode sync: a COMMIT waited until the DR drd was back ({took:?})"),
    );
    let rx = psql_in_thread(&sites.primary, "INSERT INTO t VALUES (5)");
    assert_returns(&rx, "sync with the DR site up", &sites);
    let hist = drctl_json(&sites.a.socket, &["history"], 0);
    let modes: Vec<&serde_json::Value> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "mode")
        .collect();
    assert_eq!(modes.len(), 2, "{hist}");
    assert!(
        modes.iter().any(|e| e["reason"] == "DR link restored"
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with("mode async -> sync")),
        "{hist}"
    );
    wait_metric(
        &sites,
        &format!("drd_mode_overridden{{stream=\"{STREAM}\"}}"),
        0.0,
        Duration::from_secs(5),
    )
    .await;

    // At the DR node the stream is a replica: its mode is set at the primary.
    let (code, out, err) = mode(&sites.b.socket, &[STREAM, "async", "--reason", "x"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("is replica here") && err.contains("run drctl mode there"),
        "{err}"
    );

    // A `tail` stream is always asynchronous: nothing to override.
    let tail_wal = sites.root.join("tail-wal");
    std::fs::create_dir_all(&tail_wal).unwrap();
    let mut tail = Daemon::new(
        &sites.root,
        "tail-node",
        PRIMARY_ID,
        &format!(
            "initial_role = \"primary\"\n[[stream]]\nname = \"{STREAM}\"\nwal_dir = \"{}\"\n\
             peer = \"https://127.0.0.1:{}\"\npeer_name = \"{REPLICA_ID}\"\n{}",
            tail_wal.display(),
            free_port(),
            tls_section(&sites.certs, PRIMARY_ID)
        ),
    );
    tail.start_ready().await;
    let (code, out, err) = mode(&tail.socket, &[STREAM, "async", "--reason", "x"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("source = \"tail\"") && err.contains("always asynchronous"),
        "{err}"
    );
    let (code, out, err) = mode(&tail.socket, &[STREAM, "sync", "--reason", "x"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("always asynchronous"), "{err}");
    phase(t0, "refusals checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_reported() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t0 = Instant::now();
    let mut sites = Sites::new(
        &pg,
        &SitesOptions {
            pg_conf: "max_slot_wal_keep_size = '1MB'".into(),
            ..SitesOptions::mode("async")
        },
    )
    .await;
    let p = &sites.primary;
    p.psql("CREATE TABLE pad (id bigint, x text)").unwrap();
    p.psql("INSERT INTO pad SELECT g, repeat('y', 1000) FROM generate_series(1, 100) g")
        .unwrap();
    let slot_row = |p: &Cluster| {
        p.psql(&format!(
            "SELECT wal_status, active FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        ))
        .unwrap()
    };
    assert_eq!(slot_row(p), "reserved|t");
    wait_metric(
        &sites,
        &format!("drd_pg_slot_lost{{stream=\"{STREAM}\"}}"),
        0.0,
        Duration::from_secs(15),
    )
    .await;
    phase(t0, "streaming; slot reserved");

    // drd stops; the database writes on, past max_slot_wal_keep_size, and
    // its checkpoints invalidate the slot.
    assert_eq!(sites.a.terminate(), Some(0));
    let p = &sites.primary;
    wait_for("the slot inactive", Duration::from_secs(10), || async {
        (slot_row(p) == "reserved|f").then_some(())
    })
    .await;
    let before = p.lsn("pg_current_wal_lsn()").unwrap().unwrap();
    for round in 1..=5 {
        p.psql("INSERT INTO pad SELECT g, repeat('z', 1000) FROM generate_series(1, 25000) g")
            .unwrap();
        p.psql("SELECT pg_switch_wal()").unwrap();
        p.psql("CHECKPOINT").unwrap();
        p.psql("CHECKPOINT").unwrap();
        if slot_row(p).starts_with("lost|") {
            break;
        }
        assert!(round < 5, "the slot is not lost: {}", slot_row(p));
    }
    let written = p.lsn("pg_current_wal_lsn()").unwrap().unwrap() - before;
    assert!(written >= 20 << 20, "only {written} bytes of WAL written");
    assert_eq!(slot_row(p), "lost|f");
    phase(
        t0,
        &format!("drd stopped; {} MiB of WAL; slot lost", written >> 20),
    );

    // drd starts again and must say so: status, human status, metrics.
    sites.a.start_ready().await;
    let started = Instant::now();
    let pg_json = wait_for(
        "postgres.last_error about the invalidated slot",
        Duration::from_secs(15),
        || async {
            let s = sites.stream_json();
            let e = s["postgres"]["last_error"].as_str().unwrap_or("");
            (!e.is_empty()).then_some(s["postgres"].clone())
        },
    )
    .await;
    let err = pg_json["last_error"].as_str().unwrap();
    assert!(
        err.contains(SLOT) && err.contains("invalidated") && err.contains("gap"),
        "{pg_json}\n{}",
        sites.logs()
    );
    assert_eq!(pg_json["connected"], false, "{pg_json}");
    phase(
        t0,
        &format!("last_error after {:?}: {err}", started.elapsed()),
    );
    wait_metric(
        &sites,
        &format!("drd_pg_slot_lost{{stream=\"{STREAM}\"}}"),
        1.0,
        Duration::from_secs(15),
    )
    .await;
    let (_, human, _) = drctl(&sites.a.socket, &["status"]);
    assert!(
        human.contains(&format!("postgres {STREAM}: DISCONNECTED"))
            && human.contains("last database error:")
            && human.contains(&format!("replication slot \"{SLOT}\"")),
        "{human}"
    );
    // The monitor's poll: wal_status "lost" and the SLOT LOST line.
    wait_for(
        "slot_wal_status lost in drctl status",
        Duration::from_secs(15),
        || async { (sites.stream_json()["postgres"]["slot_wal_status"] == "lost").then_some(()) },
    )
    .await;
    let (_, human, _) = drctl(&sites.a.socket, &["status"]);
    assert!(
        human.contains("SLOT LOST") && human.contains("new base backup"),
        "{human}"
    );
    wait_metric(
        &sites,
        &format!("drd_pg_slot_wal_status{{stream=\"{STREAM}\",status=\"lost\"}}"),
        1.0,
        Duration::from_secs(5),
    )
    .await;
    phase(t0, "reported in status, human status and metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_gauges_and_alerts_agree() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t0 = Instant::now();
    let sites = Sites::new(&pg, &SitesOptions::mode("async")).await;
    let s = |m: &str| format!("{m}{{stream=\"{STREAM}\"}}");
    wait_metric(&sites, &s("drd_pg_connected"), 1.0, Duration::from_secs(10)).await;
    wait_metric(&sites, &s("drd_pg_timeline"), 1.0, Duration::from_secs(10)).await;
    wait_metric(&sites, &s("drd_pg_slot_lost"), 0.0, Duration::from_secs(10)).await;
    wait_metric(
        &sites,
        &s("drd_mode_overridden"),
        0.0,
        Duration::from_secs(10),
    )
    .await;
    // The slot monitor polls right away, then every 10 s.
    wait_metric(
        &sites,
        &format!("drd_pg_slot_wal_status{{stream=\"{STREAM}\",status=\"reserved\"}}"),
        1.0,
        Duration::from_secs(15),
    )
    .await;
    let text = metrics_text(sites.metrics_port).await;
    for status in ["extended", "unreserved", "lost"] {
        let m = format!("drd_pg_slot_wal_status{{stream=\"{STREAM}\",status=\"{status}\"}}");
        assert_eq!(sample(&text, &m), Some(0.0), "{m}:\n{text}");
    }
    assert!(
        sample(&text, &s("drd_pg_slot_retained_bytes")).is_some(),
        "{text}"
    );
    // Every drd_* metric an alert rule names is exported by a streaming
    // primary.
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("deploy/prometheus/drd-alerts.yml"),
    )
    .unwrap();
    let mut named: Vec<&str> = rules
        .match_indices("drd_pg_")
        .chain(rules.match_indices("drd_mode_"))
        .map(|(i, _)| {
            let rest = &rules[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    named.sort_unstable();
    named.dedup();
    assert!(named.len() >= 5, "{named:?}");
    for m in &named {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{m}{{stream=\"{STREAM}\""))),
            "the alert rules use {m}, which the metrics do not export:\n{text}"
        );
    }
    // The status and the gauges agree.
    let st = sites.stream_json();
    assert_eq!(st["postgres"]["timeline"], 1, "{st}");
    assert_eq!(st["postgres"]["slot_wal_status"], "reserved", "{st}");
    phase(t0, &format!("gauges exported; alert rules use {named:?}"));
}
