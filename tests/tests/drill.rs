//! DR drills against a real PostgreSQL 15 (issue 21): `drctl drill` at the
//! DR site restores drd's copy into a scratch database through the shipped
//! deploy/postgresql/drill-hook.sh while the primary keeps writing, and the
//! signed report is checked as an auditor would:
//!
//! - the report passes; its RTO matches this test's own stopwatch (drill
//!   start to the scratch database first answering the check query as a
//!   promoted server, watched from outside) within 10 %; its RPO is within
//!   the lag this test saw; replication went on during the drill (the DR
//!   site's durable position kept growing); the scratch database is gone;
//! - `drctl drill verify` passes on the report and fails after a one-byte
//!   edit of any of its files; `drctl drill history` lists the drills with
//!   an intact hash chain; the drill gauges are exported;
//! - the HTML report renders in headless Chromium with its verdict and lag
//!   chart (the screenshot stays in the test's output directory);
//! - a drill of a copy with one segment altered at rest fails, and the
//!   report names that segment.
//!
//! Run as root (CI): PostgreSQL, the hook's pg_basebackup and the scratch
//! server run as the `postgres` OS user.

use drd_tests::pg::{require_postgres, Cluster, Postgres};
use drd_tests::pgsites::{Sites, SitesOptions};
use drd_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where Rochester's config gets the drill hooks once the DR standby (whose
/// socket and port they name) exists.
const HOOKS_MARK: &str = "# drill hooks go here";

/// Rows inserted before the drill: ~150 MiB of WAL to replay.
const BULK_ROWS: u64 = 600_000;

/// The check query the hook runs (and this test's stopwatch too).
const CHECK_SQL: &str = "SELECT count(*) FROM drill_rows";

/// Where the screenshots stay: `target/tmp/drill/`.
fn output_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("drill");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn phase(t0: Instant, what: &str) {
    println!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// Rochester's `[hooks]` drill lines: the shipped script, backing up from
/// the DR standby over its socket and restoring through drctl wal-fetch.
fn drill_hooks(sites: &Sites, standby: &Cluster, port: u16) -> String {
    let hook = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy/postgresql/drill-hook.sh");
    let env = format!(
        "PGBIN='{}' DRILL_PORT={port} DRILL_TIMEOUT=150 \
         DRILL_SOURCE_CONNINFO='host={} port={} user={}' \
         DRILL_RESTORE_COMMAND='{} --socket {} wal-fetch --drill %f %p' \
         DRILL_CHECK_SQL='{CHECK_SQL}'",
        sites.pg.bin.display(),
        standby.socket_dir.display(),
        standby.port,
        drd_tests::pg::SUPERUSER,
        sites.drctl,
        sites.b.socket.display(),
    );
    let line = |key: &str, sub: &str| {
        format!(
            "{key} = \"{} sh '{}' {sub}\"\n",
            env.replace('"', "\\\""),
            hook.display()
        )
    };
    line("drill_restore", "restore")
        + &line("drill_check", "check")
        + &line("drill_teardown", "teardown")
        + "drill_timeout_seconds = 180\n"
}

/// Inserts rows at the primary every 50 ms until `stop`: the primary keeps
/// writing through the drill. Returns how many inserts succeeded.
fn writer(primary: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let pg = primary.pg.clone();
    let cwd = primary.data.parent().unwrap().to_path_buf();
    let (host, port) = (primary.host(), primary.port.to_string());
    std::thread::spawn(move || {
        let mut n = 0u64;
        // Bounded: stopped by the test, at most ten minutes.
        let deadline = Instant::now() + Duration::from_secs(600);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let mut c = pg.cmd("psql", &cwd);
            c.args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &host,
                "-p",
                &port,
            ])
            .args(["-U", drd_tests::pg::SUPERUSER, "-d", "postgres", "-c"])
            .arg(
                "INSERT INTO drill_rows SELECT g, repeat('x', 200) FROM generate_series(1, 200) g",
            );
            if c.output().map(|o| o.status.success()).unwrap_or(false) {
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    })
}

/// The scratch directories under Rochester's `drill-scratch`.
fn scratch_dirs(sites: &Sites) -> Vec<PathBuf> {
    match std::fs::read_dir(sites.b.data_dir().join("drill-scratch")) {
        Err(_) => vec![],
        Ok(rd) => rd.filter_map(|e| Some(e.ok()?.path())).collect(),
    }
}

/// Whether the scratch server in `dir` answers the check query as a
/// promoted server (what the drill's RTO ends with).
fn scratch_answers(pg: &Postgres, dir: &Path, port: u16) -> bool {
    let mut c = pg.cmd("psql", dir);
    c.args(["-X", "-A", "-t", "-q", "-h"])
        .arg(dir.join("run"))
        .args([
            "-p",
            &port.to_string(),
            "-U",
            drd_tests::pg::SUPERUSER,
            "-d",
            "postgres",
        ])
        .args([
            "-c",
            &format!("SELECT pg_is_in_recovery(), ({CHECK_SQL}) > 0"),
        ]);
    c.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "f|t")
        .unwrap_or(false)
}

/// What the test saw while a drill ran.
#[derive(Debug, Default)]
struct Watched {
    /// Drill start to the scratch database first answering, by this test.
    answered_after: Option<Duration>,
    /// Rochester's durable position at each poll.
    durable: Vec<u64>,
    /// The most lag Rochester reported in any poll.
    max_lag_bytes: u64,
    max_lag_seconds: f64,
    scratch_seen: bool,
}

/// Runs `drctl drill --json` at Rochester, watching it from outside; its
/// exit code, its JSON and what was seen.
async fn drill(sites: &Sites, out: &Path, port: u16) -> (i32, serde_json::Value, Watched) {
    let started = Instant::now();
    let mut cmd = Command::new(bin("drctl"));
    cmd.arg("--socket")
        .arg(&sites.b.socket)
        .args([
            "drill",
            "--stream",
            STREAM,
            "--reason",
            "test drill",
            "--json",
            "--out",
        ])
        .arg(out);
    let run = std::thread::spawn(move || cmd.output().unwrap());
    let mut seen = Watched::default();
    // Bounded by the hooks' own limits (180 s each) and this deadline.
    let deadline = started + Duration::from_secs(600);
    while !run.is_finished() && Instant::now() < deadline {
        if let Ok(s) = sites.b.stream().await {
            seen.durable.push(s.durable_position);
            seen.max_lag_bytes = seen.max_lag_bytes.max(s.lag_bytes);
            seen.max_lag_seconds = seen.max_lag_seconds.max(s.lag_seconds);
        }
        if seen.answered_after.is_none() {
            for d in scratch_dirs(sites) {
                seen.scratch_seen = true;
                if scratch_answers(&sites.pg, &d, port) {
                    seen.answered_after = Some(started.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(run.is_finished(), "the drill did not end within 10 minutes");
    let o = run.join().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "drctl drill printed no JSON ({e}): {stdout}\n{}\n{}",
            String::from_utf8_lossy(&o.stderr),
            sites.b.log_text()
        )
    });
    (o.status.code().unwrap_or(-1), json, seen)
}

fn read_report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

/// One byte of `path` flipped at `at`, put back when dropped.
struct Flipped {
    path: PathBuf,
    at: u64,
}

fn flip(path: &Path, at: u64) -> Flipped {
    flip_byte(path, at);
    Flipped {
        path: path.to_path_buf(),
        at,
    }
}

impl Drop for Flipped {
    fn drop(&mut self) {
        flip_byte(&self.path, self.at);
    }
}

/// `drctl drill verify DIR --ca CA`: exit code and output.
fn verify(sites: &Sites, dir: &Path) -> (i32, String) {
    let (code, out, err) = drctl(
        &sites.b.socket,
        &[
            "drill",
            "verify",
            dir.to_str().unwrap(),
            "--ca",
            sites.certs.join("ca.pem").to_str().unwrap(),
        ],
    );
    (code, format!("{out}{err}"))
}

/// Opens `html` in headless Chromium: its rendered DOM and a screenshot.
fn chromium(html: &Path, shot: &Path) -> String {
    let base = |c: &mut Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            shot.with_extension("profile").display()
        ));
    };
    let url = format!("file://{}", html.display());
    let mut c = Command::new("chromium");
    base(&mut c);
    c.arg("--window-size=1200,2000")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url);
    let o = c
        .output()
        .expect("chromium (Debian's package) must be installed: `bash tests/run` does");
    assert!(
        o.status.success() && shot.exists(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut c = Command::new("chromium");
    base(&mut c);
    c.arg("--dump-dom").arg(&url);
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// How many pixels of the screenshot have colour `rgb` (within 8 per
/// channel: antialiasing).
fn pixels_of(png_path: &Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    buf[..info.buffer_size()]
        .chunks_exact(step)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 8))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_restores_the_dr_copy_measures_rto_and_rpo_and_signs_its_report() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t0 = Instant::now();
    let port = free_port();
    let mut sites = Sites::new(
        &pg,
        &SitesOptions {
            b_hooks: HOOKS_MARK.into(),
            ..SitesOptions::mode("async")
        },
    )
    .await;
    sites
        .primary
        .psql(
            "CREATE TABLE drill_rows (id int, pad text); \
             INSERT INTO drill_rows SELECT g, 'seed' FROM generate_series(1, 1000) g; \
             SELECT pg_switch_wal()",
        )
        .unwrap();
    let standby = sites.standby();
    // The drill hooks name the standby; Rochester restarts to read them.
    let config = std::fs::read_to_string(&sites.b.config).unwrap();
    assert!(config.contains(HOOKS_MARK));
    std::fs::write(
        &sites.b.config,
        config.replace(HOOKS_MARK, &drill_hooks(&sites, &standby, port)),
    )
    .unwrap();
    assert_eq!(sites.b.terminate(), Some(0), "{}", sites.b.log_text());
    sites.b.start_ready().await;
    sites.wait_streaming(true).await;
    // Some 100 MiB of WAL for the restore to replay (the standby's base
    // backup starts at its last restartpoint, before it): a restore of
    // seconds, not of a fraction of one, so that the RTO's comparison with
    // this test's stopwatch means something.
    sites
        .primary
        .psql(&format!(
            "INSERT INTO drill_rows SELECT g, repeat('y', 200) FROM generate_series(1, {BULK_ROWS}) g"
        ))
        .unwrap();
    // Its commit in a complete segment (the standby restores whole ones).
    sites.primary.psql("SELECT pg_switch_wal()").unwrap();
    wait_for(
        "the DR standby has replayed the rows",
        Duration::from_secs(120),
        || async {
            (standby
                .psql(&format!("SELECT count(*) >= {BULK_ROWS} FROM drill_rows"))
                .ok()?
                == "t")
                .then_some(())
        },
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&sites.primary, stop.clone());
    phase(t0, "sites up, the primary writing; drilling");

    // 1. A drill while the primary writes.
    let out = sites.root.join("reports");
    let (code, res, seen) = drill(&sites, &out, port).await;
    phase(t0, &format!("drill ended: {res}"));
    let dir = out.join(res["id"].as_str().unwrap());
    let report = read_report(&dir);
    assert_eq!(
        code,
        0,
        "the drill failed: {res}\n{report:#}\n{}",
        sites.b.log_text()
    );
    assert_eq!(report["verdict"]["passed"], true, "{report:#}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["snapshot", "verify", "restore", "check", "teardown"]
    );
    assert!(
        report["database_version"]
            .as_str()
            .unwrap()
            .starts_with("PostgreSQL 15"),
        "{report:#}"
    );
    assert!(report["verify"]["segments_checked"].as_u64().unwrap() > 0);

    for s in report["steps"].as_array().unwrap() {
        println!(
            "  step {:<9} at {:>6} ms, {:>6} ms: {}",
            s["name"].as_str().unwrap(),
            s["started_after_ms"],
            s["duration_ms"],
            s["summary"].as_str().unwrap()
        );
    }
    // RTO: the report's against this test's stopwatch.
    let rto = report["rto"]["seconds"].as_f64().unwrap();
    let watched = seen
        .answered_after
        .expect("this test never saw the scratch database answer")
        .as_secs_f64();
    println!("RTO: report {rto:.2} s, this test's stopwatch {watched:.2} s");
    assert!(
        (rto - watched).abs() <= 0.10 * watched,
        "the report's RTO {rto:.2} s is not within 10 % of the {watched:.2} s this test measured"
    );
    // RPO: within the lag this test saw (polled every ~20 ms, and the
    // snapshot is one moment of it) plus what one poll interval can add.
    let (rpo_bytes, rpo_seconds) = (
        report["rpo"]["bytes"].as_u64().unwrap(),
        report["rpo"]["seconds"].as_f64().unwrap(),
    );
    println!(
        "RPO: report {rpo_bytes} bytes / {rpo_seconds:.2} s; test saw at most {} bytes / {:.2} s; restored to {}",
        seen.max_lag_bytes, seen.max_lag_seconds, report["rpo"]["restored_lsn"]
    );
    assert!(
        rpo_bytes <= seen.max_lag_bytes + 256 * 1024,
        "RPO {rpo_bytes} bytes, the test saw lag of at most {} bytes",
        seen.max_lag_bytes
    );
    assert!(
        rpo_seconds <= seen.max_lag_seconds + 1.0,
        "RPO {rpo_seconds} s, the test saw lag of at most {} s",
        seen.max_lag_seconds
    );
    assert!(
        report["rpo"]["restored_lsn"].as_str().is_some(),
        "{report:#}"
    );
    // Replication went on: the durable position grew during the drill.
    let (first, last) = (seen.durable[0], *seen.durable.last().unwrap());
    let growths = seen.durable.windows(2).filter(|w| w[1] > w[0]).count();
    println!(
        "durable position during the drill: {first} -> {last} ({growths} increases over {} polls)",
        seen.durable.len()
    );
    assert!(
        last > first && growths >= 3,
        "replication stalled during the drill: {:?}",
        seen.durable
    );
    // The scratch database is gone.
    assert!(seen.scratch_seen);
    assert!(
        scratch_dirs(&sites).is_empty(),
        "scratch left: {:?}",
        scratch_dirs(&sites)
    );
    assert_eq!(report["scratch_removed"], true);
    let id = res["id"].as_str().unwrap();
    assert!(
        !process_running(&format!("drill-scratch/{id}")),
        "a scratch process is still running"
    );
    phase(t0, "report checked");

    // 2. The signature: passes, fails after a one-byte edit of each file.
    let (code, text) = verify(&sites, &dir);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("VERIFIED") && text.contains("chain head"),
        "{text}"
    );
    for (name, at) in [
        ("report.json", 40),
        ("report.html", 200),
        ("report.sig", 30),
    ] {
        let f = flip(&dir.join(name), at);
        let (code, text) = verify(&sites, &dir);
        assert_eq!(code, 1, "a one-byte edit of {name} verified: {text}");
        println!(
            "after editing {name}: {}",
            text.lines().last().unwrap_or("")
        );
        drop(f);
    }
    assert_eq!(verify(&sites, &dir).0, 0);

    // 3. The HTML in a real browser: verdict and chart render.
    let shot = output_dir().join("report-passed.png");
    let dom = chromium(&dir.join("report.html"), &shot);
    assert!(
        dom.contains("id=\"verdict\"") && dom.contains("PASSED"),
        "{dom}"
    );
    assert!(
        dom.contains("id=\"lag-chart\"") && dom.contains("polyline"),
        "no chart in the page"
    );
    let (blue, green) = (
        pixels_of(&shot, [0x1f, 0x6f, 0xeb]),
        pixels_of(&shot, [0x1a, 0x7f, 0x37]),
    );
    println!(
        "screenshot {}: {blue} chart-line pixels, {green} verdict pixels",
        shot.display()
    );
    assert!(
        blue > 20,
        "the lag chart's line did not render ({blue} pixels)"
    );
    assert!(
        green > 500,
        "the green PASSED banner did not render ({green} pixels)"
    );

    // 4. A copy with one segment altered at rest: the drill fails and the
    // report names the segment.
    let victim = report["snapshot"]["last_segment"]
        .as_str()
        .unwrap()
        .to_string();
    let landing = sites
        .b
        .data_dir()
        .join("streams")
        .join(STREAM)
        .join("segments");
    let altered = flip(&landing.join(&victim), 4096 + 100);
    let (code, res, _) = drill(&sites, &out, port).await;
    drop(altered);
    stop.store(true, Ordering::Relaxed);
    let inserts = w.join().unwrap();
    phase(
        t0,
        &format!("second drill ended ({inserts} inserts by the writer in all): {res}"),
    );
    let bad = read_report(&out.join(res["id"].as_str().unwrap()));
    assert_eq!(code, 1, "a drill of a damaged copy passed: {bad:#}");
    assert_eq!(bad["verdict"]["passed"], false);
    assert_eq!(
        bad["verify"]["problems"][0]["segment"],
        victim.as_str(),
        "{bad:#}"
    );
    assert!(
        bad["verdict"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains(&victim),
        "{bad:#}"
    );
    let shot = output_dir().join("report-failed.png");
    let dom = chromium(
        &out.join(res["id"].as_str().unwrap()).join("report.html"),
        &shot,
    );
    assert!(dom.contains("FAILED") && dom.contains(&victim));
    assert!(
        pixels_of(&shot, [0xcf, 0x22, 0x2e]) > 500,
        "no red FAILED banner"
    );

    // 5. The history and the gauges.
    let h = drctl_json(&sites.b.socket, &["drill", "history"], 0);
    assert_eq!(h["chain_ok"], true, "{h}");
    let passed: Vec<bool> = h["drills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["passed"].as_bool().unwrap())
        .collect();
    assert_eq!(passed, [false, true], "newest first: {h}");
    let text = metrics_text(sites.b_metrics_port).await;
    let label = format!("{{stream=\"{STREAM}\"}}");
    for (name, want) in [
        ("drd_drill_last_passed", Some(0.0)),
        ("drd_drill_last_success_timestamp_seconds", None),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{label} ")))
            .unwrap_or_else(|| panic!("no {name} in the metrics"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        if let Some(w) = want {
            assert_eq!(v, w, "{line}");
        } else {
            assert!(v > 1.7e9, "{line}");
        }
    }
    drop(standby);
}
