//! Spool retention at the primary (issue 16): a `source = "spool"` stream's
//! `wal_dir` stays bounded while `wal-push` runs (sync and async), refuses
//! at `spool_max_bytes` with a clear error and loses nothing, drains when the
//! replica returns, resumes at the right position after a restart of the
//! primary, and a `tail` stream never loses a file.
//!
//! Pushes run through the daemon's control API like `drctl wal-push` does
//! (`push_file`, the client half drctl uses) to push hundreds of segments
//! quickly; the refusal is checked through the real `drctl` binary, as
//! PostgreSQL's archive_command would see it.

use drd_proto::pb;
use drd_tests::*;
use rand::{RngCore, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A primary whose stream is a spool (`mode`, `extra` stream keys) and a
/// replica (neither started). Returns them, the spool and the primary's
/// metrics port.
fn spool_pair(root: &Path, mode: &str, extra: &str) -> (Daemon, Daemon, PathBuf, u16) {
    let certs = make_certs(root);
    let port = free_port();
    let metrics = free_port();
    let spool = root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let primary = Daemon::new(
        root,
        "verona",
        PRIMARY_ID,
        &format!(
            "[[stream]]\nname = \"{STREAM}\"\nwal_dir = \"{}\"\npeer = \"https://127.0.0.1:{port}\"\n\
             peer_name = \"{REPLICA_ID}\"\nsource = \"spool\"\nmode = \"{mode}\"\n\
             sync_timeout_seconds = 10\n{extra}\n\
             [tuning]\nreconnect_max_ms = 500\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n{}",
            spool.display(),
            tls_section(&certs, PRIMARY_ID)
        ),
    );
    let replica = Daemon::new(
        root,
        "rochester",
        REPLICA_ID,
        &format!(
            "[replica]\nlisten = \"127.0.0.1:{port}\"\naccept_unlisted_streams = true\n{}",
            tls_section(&certs, REPLICA_ID)
        ),
    );
    (primary, replica, spool, metrics)
}

fn segments_dir(d: &Daemon) -> PathBuf {
    d.data_dir().join("streams").join(STREAM).join("segments")
}

/// Writes segment `n` of `len` pseudo-random bytes into `dir` (PostgreSQL's
/// pg_wal in these tests).
fn make_segment(dir: &Path, n: u64, len: usize) -> PathBuf {
    let mut buf = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(n).fill_bytes(&mut buf);
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(seg_name(n));
    std::fs::write(&p, buf).unwrap();
    p
}

/// One `wal-push` through the control API, as drctl sends it.
async fn push(socket: &Path, path: &Path) -> Result<pb::WalPushResponse, tonic::Status> {
    let mut c = drd::api::control::connect(socket)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    let f = tokio::fs::File::open(path).await.unwrap();
    let size = f.metadata().await.unwrap().len();
    drd::ops::walpush::push_file(&mut c, "", &name, f, size).await
}

/// Segment files in `dir` and their bytes.
fn usage(dir: &Path) -> (u64, u64) {
    let mut n = 0;
    let mut b = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue;
        }
        if let Ok(m) = e.metadata() {
            n += 1;
            b += m.len();
        }
    }
    (n, b)
}

/// Samples the spool's size every few ms until stopped; keeps the maxima.
struct Sampler {
    stop: Arc<AtomicBool>,
    max_files: Arc<AtomicU64>,
    max_bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(dir: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max_files = Arc::new(AtomicU64::new(0));
        let max_bytes = Arc::new(AtomicU64::new(0));
        let (s, f, b) = (stop.clone(), max_files.clone(), max_bytes.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let (n, bytes) = usage(&dir);
                f.fetch_max(n, Ordering::Relaxed);
                b.fetch_max(bytes, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self {
            stop,
            max_files,
            max_bytes,
            task,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.max_files.load(Ordering::Relaxed),
            self.max_bytes.load(Ordering::Relaxed),
        )
    }
}

/// Every segment `1..=count` of `src` is at the replica, byte-identical.
fn assert_all_at_replica(src: &Path, landing: &Path, count: u64) {
    for n in 1..=count {
        let name = seg_name(n);
        let theirs = landing.join(&name);
        assert!(theirs.exists(), "{name} is not complete at the replica");
        assert_eq!(
            sha256_file(&src.join(&name)).unwrap(),
            sha256_file(&theirs).unwrap(),
            "{name} differs at the replica"
        );
    }
}

/// Waits until the spool holds at most `files` segment files.
async fn wait_drained(spool: &Path, files: u64, within: Duration) {
    wait_for("the spool to drain", within, || async {
        (usage(spool).0 <= files).then_some(())
    })
    .await;
}

const SEG: usize = 64 * 1024;
/// spool_max_bytes of the bounded runs: 48 segments.
const LIMIT: u64 = 3 << 20;

/// Pushes segments 1..=count, retrying a refused one (as PostgreSQL's
/// archiver retries archive_command). Returns the number of retries.
async fn push_all(socket: &Path, src: &Path, count: u64) -> u64 {
    let mut retries = 0;
    for n in 1..=count {
        let p = make_segment(src, n, SEG);
        loop {
            match push(socket, &p).await {
                Ok(_) => break,
                Err(e) => {
                    retries += 1;
                    assert!(retries < 2000, "push of {n} keeps failing: {e:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    retries
}

async fn bounded_run(mode: &str) {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, spool, _) = spool_pair(
        root.path(),
        mode,
        &format!("spool_retention = \"300ms\"\nspool_max_bytes = \"{LIMIT}\""),
    );
    let src = root.path().join("pg_wal");
    b.start_ready().await;
    a.start_ready().await;
    const COUNT: u64 = 520;
    let sampler = Sampler::start(spool.clone());
    let t0 = Instant::now();
    let retries = push_all(&a.socket, &src, COUNT).await;
    let pushed_in = t0.elapsed();
    let total = COUNT * SEG as u64;
    wait_for(
        "the replica to hold everything",
        Duration::from_secs(60),
        || async {
            let s = a.stream().await.ok()?;
            (s.durable_position == total && s.written_position == total).then_some(())
        },
    )
    .await;
    // Retention is 300 ms and a pass runs at least every 5 s: the spool ends
    // with the log's last segment only.
    wait_drained(&spool, 1, Duration::from_secs(20)).await;
    let (max_files, max_bytes) = sampler.finish().await;
    eprintln!(
        "{mode}: {COUNT} segments of {SEG} bytes pushed in {pushed_in:?} ({retries} retries); \
         spool at most {max_files} files, {max_bytes} bytes (limit {LIMIT}); drained in {:?}",
        t0.elapsed()
    );
    assert!(max_bytes <= LIMIT, "{max_bytes} bytes in the spool");
    assert!(max_files <= LIMIT / SEG as u64, "{max_files} files");
    assert_all_at_replica(&src, &segments_dir(&b), COUNT);
    let j = drctl_json(&a.socket, &["status"], 0);
    let sp = &j["streams"][0]["spool"];
    assert_eq!(sp["segments"], 1, "{j}");
    assert_eq!(sp["limit_bytes"], LIMIT, "{j}");
    assert_eq!(sp["full"], false, "{j}");
    assert!(sp["pruned_segments"].as_u64().unwrap() >= COUNT - 1, "{j}");
    assert_eq!(j["streams"][0]["written_position"], total);
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        log.contains("spool: removed a segment the replica holds sealed and verified"),
        "pruning is logged"
    );
    // The primary's own copy still verifies: pruned records keep the chain.
    let v = drctl_json(&a.socket, &["verify"], 0);
    assert_eq!(v["problems_total"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_spool_stays_bounded_over_500_segments() {
    bounded_run("sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_spool_stays_bounded_over_500_segments() {
    bounded_run("async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_wal_push_loses_nothing_and_drains() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, spool, metrics) = spool_pair(
        root.path(),
        "async",
        "spool_max_bytes = \"1MiB\"", // 16 segments
    );
    let src = root.path().join("pg_wal");
    a.start_ready().await;

    // The replica is down: the spool fills to its limit, then refuses.
    let mut accepted = 0u64;
    let refused = loop {
        let n = accepted + 1;
        let p = make_segment(&src, n, SEG);
        let (code, _, err) = drctl(&a.socket, &["wal-push", p.to_str().unwrap()]);
        if code != 0 {
            break err;
        }
        accepted = n;
        assert!(accepted <= 16, "the spool took more than spool_max_bytes");
    };
    assert_eq!(accepted, 16, "exactly the limit fits");
    for part in [
        "spool of stream ehr-prod is full",
        "spool_max_bytes = 1048576",
        "nothing stored",
        "PostgreSQL keeps the segment in pg_wal and retries archive_command",
        "not connected",
        "DR link",
        "drctl status",
    ] {
        assert!(refused.contains(part), "{part:?} missing from: {refused}");
    }
    assert!(
        !spool.join(seg_name(17)).exists(),
        "a refused push stores nothing"
    );
    // A segment larger than the whole limit: a different, direct hint.
    let huge = make_segment(&root.path().join("huge"), 17, (1 << 20) + 1);
    let (code, _, err) = drctl(&a.socket, &["wal-push", huge.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("more than stream ehr-prod's whole spool_max_bytes"),
        "{err}"
    );
    assert_eq!(usage(&spool), (16, 16 * SEG as u64));
    let j = drctl_json(&a.socket, &["status"], 0);
    let sp = &j["streams"][0]["spool"];
    assert_eq!(
        (sp["full"].as_bool(), sp["segments"].as_u64()),
        (Some(true), Some(16)),
        "{j}"
    );
    let (_, human, _) = drctl(&a.socket, &["status"]);
    assert!(
        human.contains("spool ehr-prod: 16 segments, 1.0 MiB of 1.0 MiB")
            && human.contains("SPOOL FULL"),
        "{human}"
    );
    let m = wait_for("drd_spool_full = 1", Duration::from_secs(10), || async {
        let t = metrics_text(metrics).await;
        t.contains("drd_spool_full{stream=\"ehr-prod\"} 1")
            .then_some(t)
    })
    .await;
    assert!(
        m.contains("drd_spool_limit_bytes{stream=\"ehr-prod\"} 1048576"),
        "{m}"
    );
    assert!(
        m.contains("drd_spool_refused_pushes_total{stream=\"ehr-prod\"} 2"),
        "{m}"
    );

    // The replica returns: what was accepted ships, the spool drains and
    // PostgreSQL's retries (and the rest of its WAL) go through.
    let t0 = Instant::now();
    b.start_ready().await;
    const COUNT: u64 = 80;
    let sampler = Sampler::start(spool.clone());
    let mut retries = 0;
    for n in accepted + 1..=COUNT {
        let p = make_segment(&src, n, SEG);
        loop {
            let (code, _, err) = drctl(&a.socket, &["wal-push", p.to_str().unwrap()]);
            if code == 0 {
                break;
            }
            retries += 1;
            assert!(retries < 500, "push of {n} keeps failing: {err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let total = COUNT * SEG as u64;
    wait_for(
        "the replica to hold everything",
        Duration::from_secs(60),
        || async {
            let s = a.stream().await.ok()?;
            (s.durable_position == total).then_some(())
        },
    )
    .await;
    wait_drained(&spool, 1, Duration::from_secs(20)).await;
    let (max_files, max_bytes) = sampler.finish().await;
    eprintln!(
        "full spool: {accepted} accepted with the replica down; {COUNT} pushed in all, \
         {retries} retries after it returned; at most {max_files} files / {max_bytes} bytes; \
         drained {:?} after the replica returned",
        t0.elapsed()
    );
    assert!(max_bytes <= 1 << 20);
    assert_all_at_replica(&src, &segments_dir(&b), COUNT);
    let j = drctl_json(&a.socket, &["status"], 0);
    assert_eq!(j["streams"][0]["spool"]["full"], false, "{j}");
    wait_for("drd_spool_full = 0", Duration::from_secs(10), || async {
        metrics_text(metrics)
            .await
            .contains("drd_spool_full{stream=\"ehr-prod\"} 0")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_resumes_at_the_right_position_after_pruning() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, spool, _) = spool_pair(root.path(), "sync", "");
    let src = root.path().join("pg_wal");
    b.start_ready().await;
    a.start_ready().await;
    push_all(&a.socket, &src, 40).await;
    wait_drained(&spool, 1, Duration::from_secs(20)).await;
    assert!(
        spool.join(seg_name(40)).exists(),
        "the log's last segment stays"
    );

    // A clean restart, then a crash: both resume where the replica is.
    a.terminate();
    a.start_ready().await;
    for n in 41..=60 {
        push(&a.socket, &make_segment(&src, n, SEG)).await.unwrap();
    }
    a.kill9();
    a.start_ready().await;
    for n in 61..=80 {
        push(&a.socket, &make_segment(&src, n, SEG)).await.unwrap();
    }
    let total = 80 * SEG as u64;
    wait_for(
        "positions after the restarts",
        Duration::from_secs(30),
        || async {
            let s = a.stream().await.ok()?;
            (s.durable_position == total && s.written_position == total).then_some(())
        },
    )
    .await;
    let r = b.stream().await.unwrap();
    assert_eq!(r.durable_position, total, "the replica's own position");
    wait_drained(&spool, 1, Duration::from_secs(20)).await;
    assert_all_at_replica(&src, &segments_dir(&b), 80);

    // PostgreSQL archives a pruned segment again (it crashed before it
    // noted the success): the same bytes are accepted, other bytes refused.
    let again = push(&a.socket, &src.join(seg_name(3))).await.unwrap();
    assert!(
        again.already_present && again.replica_confirmed,
        "{again:?}"
    );
    assert!(!spool.join(seg_name(3)).exists(), "not brought back");
    let other = root.path().join("other");
    let forged = make_segment(&other, 99, SEG);
    let forged_as_3 = other.join(seg_name(3));
    std::fs::rename(&forged, &forged_as_3).unwrap();
    let e = push(&a.socket, &forged_as_3).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    let v = drctl_json(&a.socket, &["verify"], 0);
    assert_eq!(v["problems_total"], 0, "{v}");
    // wal-fetch at the primary: a pruned segment is "not found" (exit 1,
    // PostgreSQL's "not available"), with where to look instead.
    let dest = root.path().join("fetched");
    let (code, _, err) = drctl(
        &a.socket,
        &["wal-fetch", &seg_name(3), dest.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("removed from this node's spool"), "{err}");
}

/// Never a gap: a replica that lost what it had acked (rebuilt empty here)
/// cannot be fed from the spool once its successor was pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_pruned_spool_gets_no_gap() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, spool, _) = spool_pair(root.path(), "async", "");
    let src = root.path().join("pg_wal");
    b.start_ready().await;
    a.start_ready().await;
    push_all(&a.socket, &src, 10).await;
    wait_drained(&spool, 1, Duration::from_secs(20)).await;
    b.kill9();
    std::fs::remove_dir_all(b.data_dir()).unwrap();
    b.start_ready().await;
    let s = wait_for("the primary to refuse", Duration::from_secs(20), || async {
        let s = a.stream().await.ok()?;
        s.last_error.contains("would leave a gap").then_some(s)
    })
    .await;
    assert!(
        s.last_error.contains("holds nothing of this stream")
            && s.last_error.contains(&seg_name(1)),
        "{}",
        s.last_error
    );
    assert!(
        !segments_dir(&b).join(seg_name(10)).exists()
            && !segments_dir(&b)
                .join(format!("{}.partial", seg_name(10)))
                .exists(),
        "nothing shipped past the hole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_acked_segments_until_the_limit_needs_room() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, spool, _) = spool_pair(
        root.path(),
        "sync",
        "spool_retention = \"1h\"\nspool_max_bytes = \"1MiB\"",
    );
    let src = root.path().join("pg_wal");
    b.start_ready().await;
    a.start_ready().await;
    // Under the limit: everything stays for its hour, though the replica
    // has it all sealed.
    push_all(&a.socket, &src, 10).await;
    tokio::time::sleep(drd::primary::prune::PRUNE_INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(usage(&spool).0, 10, "spool_retention keeps them");
    // Past the limit: the oldest safe segments make room, no push fails.
    let sampler = Sampler::start(spool.clone());
    let retries = push_all(&a.socket, &src, 40).await;
    let (max_files, max_bytes) = sampler.finish().await;
    assert_eq!(
        retries, 0,
        "no push was refused while the replica had the rest"
    );
    assert!(max_bytes <= 1 << 20, "{max_bytes}");
    let (files, _) = usage(&spool);
    assert!((15..=16).contains(&files), "{files} files: the newest stay");
    assert!(spool.join(seg_name(40)).exists() && !spool.join(seg_name(1)).exists());
    eprintln!("retention 1h, limit 1 MiB: at most {max_files} files, {max_bytes} bytes");
    assert_all_at_replica(&src, &segments_dir(&b), 40);
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(log.contains("before its spool_retention ran out"), "logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_stream_never_loses_a_file() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 16);
    w.segments(1, 30, 64 * 1024);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(30)).await;
    // Longer than a pruning pass's interval: nothing is removed.
    tokio::time::sleep(drd::primary::prune::PRUNE_INTERVAL + Duration::from_secs(1)).await;
    let (files, _) = usage(&pair.wal);
    assert_eq!(
        files, 30,
        "every file of the database's WAL directory stays"
    );
    assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
    let s = pair.primary.status().await.unwrap();
    assert!(
        s.streams[0].spool.is_none(),
        "no spool figures for a tail stream"
    );

    // Spool keys on a tail stream are refused, with the reason.
    let bad = pair.primary.dir.join("bad.toml");
    let text = std::fs::read_to_string(&pair.primary.config)
        .unwrap()
        .replacen("[[stream]]\n", "[[stream]]\nspool_retention = \"1h\"\n", 1);
    std::fs::write(&bad, text).unwrap();
    let out = std::process::Command::new(bin("drd"))
        .args(["--config", bad.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("stream[0].spool_retention") && err.contains("never removes"),
        "{err}"
    );
}

/// Waits until `d` ships with nothing left to send, at `position`.
async fn wait_shipped(d: &Daemon, position: u64) {
    wait_for(
        &format!("{} durable at {position}", d.name),
        Duration::from_secs(30),
        || async {
            let s = d.stream().await.ok()?;
            (s.connected && s.durable_position == position && s.lag_bytes == 0).then_some(())
        },
    )
    .await;
}

/// A switchover there and back with spool streams at both sites: each
/// site's spool is pruned while it is primary, positions continue across
/// both switchovers, and every segment is at the site that was the replica
/// when it was archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchovers_with_pruned_spools_lose_nothing() {
    let spool = "source = \"spool\"\nmode = \"sync\"\nsync_timeout_seconds = 10\n";
    let mut sites = Sites::new(false, "", spool, spool).await;
    let src = sites.root.path().join("pg_wal");
    sites.b.start_ready().await;
    sites.a.start_ready().await;
    let seg = SEG as u64;
    for n in 1..=30 {
        push(&sites.a.socket, &make_segment(&src, n, SEG))
            .await
            .unwrap();
    }
    wait_shipped(&sites.a, 30 * seg).await;
    wait_drained(&sites.a_wal, 1, Duration::from_secs(20)).await;

    let (code, out, err) = drctl(&sites.a.socket, &["switchover", "--reason", "drill"]);
    assert_eq!(code, 0, "{out}{err}");
    for n in 31..=50 {
        push(&sites.b.socket, &make_segment(&src, n, SEG))
            .await
            .unwrap();
    }
    wait_shipped(&sites.b, 50 * seg).await;
    wait_drained(&sites.b_wal, 1, Duration::from_secs(20)).await;

    let (code, out, err) = drctl(&sites.b.socket, &["switchover", "--reason", "back"]);
    assert_eq!(code, 0, "{out}{err}");
    for n in 51..=60 {
        push(&sites.a.socket, &make_segment(&src, n, SEG))
            .await
            .unwrap();
    }
    wait_shipped(&sites.a, 60 * seg).await;
    let s = sites.a.stream().await.unwrap();
    assert_eq!(s.written_position, 60 * seg, "positions continue");

    // Segments 1..=30 and 51..=60 were archived at Verona: at Rochester.
    // 31..=50 were archived at Rochester: at Verona.
    let (a_land, b_land) = (sites.a_landing(), sites.b_landing());
    for n in 1..=60 {
        let name = seg_name(n);
        let at = if (31..=50).contains(&n) {
            &a_land
        } else {
            &b_land
        };
        assert_eq!(
            sha256_file(&at.join(&name)).unwrap(),
            sha256_file(&src.join(&name)).unwrap(),
            "{name}"
        );
    }
    // Pruned segments are not reported missing, and the hash chain holds
    // across both forks (a switchover once linked a spool stream's last,
    // already sealed segment into the chain a second time).
    for d in [&sites.a, &sites.b] {
        let v = drctl_json(&d.socket, &["verify"], 0);
        assert_eq!(v["ok"], true, "{}: {v}", d.name);
    }
    eprintln!(
        "after two switchovers: Verona's spool {:?}, Rochester's spool {:?} (files, bytes)",
        usage(&sites.a_wal),
        usage(&sites.b_wal)
    );
}
