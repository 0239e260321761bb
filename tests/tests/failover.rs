//! Failover, fencing, rejoin and switchover with real `drd` processes
//! (Invariants 3–5): the DR node takes over at epoch + 1, a stale primary
//! fences itself and ships nothing, rejoin quarantines (never deletes) what
//! lay past the fork, and a switchover there and back loses no byte.

use drd_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn role(d: &Daemon) -> (String, u64) {
    let s = drctl_json(&d.socket, &["status"], 0);
    (
        s["role"].as_str().unwrap().to_string(),
        s["epoch"].as_u64().unwrap(),
    )
}

async fn wait_role(d: &Daemon, want: &str) {
    wait_for(
        &format!("{} to become {want}", d.name),
        Duration::from_secs(30),
        || async {
            let s = d.status().await.ok()?;
            (drd::display::role_name(s.role).eq_ignore_ascii_case(want)).then_some(())
        },
    )
    .await;
}

/// Waits until the shipping node reports its replica durable at everything
/// it has written.
async fn wait_caught_up(shipper: &Daemon, within: Duration) -> u64 {
    wait_for(&format!("{} caught up", shipper.name), within, || async {
        let s = shipper.stream().await.ok()?;
        (s.connected && s.lag_bytes == 0 && s.durable_position > 0).then_some(s.durable_position)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_kill9_then_the_old_primary_fences_itself() {
    let mut sites = Sites::new(true, "", "", "").await;
    let mut w = WalWriter::new(&sites.a_wal, 11);
    w.segments(1, 2, 4 * MIB);
    w.append(3, MIB);
    sites.b.start_ready().await;
    sites.a.start_ready().await;
    wait_caught_up(&sites.a, Duration::from_secs(60)).await;

    // The replica learns the primary's position only from what arrives, so
    // let the primary see a whole burst before it ships any of it (pause),
    // slow the link, and kill the primary while the replica knows it lags.
    assert_eq!(drctl(&sites.a.socket, &["pause"]).0, 0);
    w.append(3, 8 * MIB);
    sites.ab.as_ref().unwrap().set_rate(Some(2 * MIB as u64));
    assert_eq!(drctl(&sites.a.socket, &["resume"]).0, 0);
    wait_for(
        "replica to know it lags",
        Duration::from_secs(30),
        || async {
            let s = sites.b.stream().await.ok()?;
            (s.lag_bytes > MIB as u64).then_some(())
        },
    )
    .await;
    sites.a.kill9();
    // Bytes already in the pipe may still land; wait until the session ends.
    let lagging = wait_for(
        "replica to see the primary gone",
        Duration::from_secs(30),
        || async {
            let s = drctl_json(&sites.b.socket, &["status"], 0)["streams"][0].clone();
            (s["connected"] == false).then_some(s)
        },
    )
    .await;
    println!("replica after the kill: {lagging}");

    let before = dir_digests(&sites.b_landing());
    // A loss limit below the lag refuses and changes nothing.
    let (code, out, err) = drctl(
        &sites.b.socket,
        &["failover", "--yes", "--max-data-loss", "512KiB"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("exceeds the limit"), "{err}");
    // A dry run prints the plan and the expected loss, and changes nothing.
    let dry = drctl_json(
        &sites.b.socket,
        &["failover", "--dry-run", "--max-data-loss", "1GiB"],
        0,
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["refused"], "");
    assert!(dry["possible_loss_bytes"].as_u64().unwrap() > 0);
    assert!(dry["plan"].as_array().unwrap().len() >= 4);
    assert_eq!(role(&sites.b), ("replica".into(), 1));
    assert_eq!(
        dir_digests(&sites.b_landing()),
        before,
        "dry run changed files"
    );
    let (code, out, _) = drctl(&sites.b.socket, &["failover", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(out.contains("DRY RUN") && out.contains("plan:"), "{out}");

    let r = drctl_json(
        &sites.b.socket,
        &[
            "failover",
            "--yes",
            "--max-data-loss",
            "1GiB",
            "--reason",
            "verona datacenter down",
        ],
        0,
    );
    println!("failover report: {r}");
    assert_eq!(r["new_epoch"], 2);
    assert_eq!(r["old_primary_reached"], false);
    assert_eq!(role(&sites.b), ("primary".into(), 2));
    let fork = r["durable_position"].as_u64().unwrap();
    assert_eq!(fork, lagging["durable_position"].as_u64().unwrap());

    // Everything acked is served by wal-fetch, byte-identical to the source.
    let fetched = sites.root.path().join("fetched");
    std::fs::create_dir_all(&fetched).unwrap();
    for n in 1..=3 {
        let name = seg_name(n);
        let dest = fetched.join(&name);
        let (code, _, err) = drctl(
            &sites.b.socket,
            &["wal-fetch", &name, dest.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{err}");
        let got = std::fs::read(&dest).unwrap();
        let src = std::fs::read(sites.a_wal.join(&name)).unwrap();
        assert_eq!(
            got,
            src[..got.len()],
            "segment {name} differs from the source"
        );
    }
    let total_fetched: u64 = (1..=3)
        .map(|n| std::fs::metadata(fetched.join(seg_name(n))).unwrap().len())
        .sum();
    assert_eq!(
        total_fetched, fork,
        "wal-fetch serves exactly the acked prefix"
    );
    let (code, _, _) = drctl(
        &sites.b.socket,
        &[
            "wal-fetch",
            &seg_name(9),
            fetched.join("x").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "a missing segment exits non-zero");

    // The old primary comes back: it learns of epoch 2, fences itself, and
    // the new primary receives nothing from it.
    let landing = dir_digests(&sites.b_landing());
    sites.ab.as_ref().unwrap().set_rate(None);
    sites.a.start_ready().await;
    wait_role(&sites.a, "fenced").await;
    let st = drctl_json(&sites.a.socket, &["status"], 0);
    println!("old primary: {st}");
    assert!(st["fenced_reason"].as_str().unwrap().contains("epoch 2"));
    assert_eq!(st["epoch"], 1);
    let (code, out, _) = drctl(&sites.a.socket, &["lag"]);
    assert_eq!(code, 2, "a fenced node is CRITICAL: {out}");
    // Give it time to try: it must stay silent.
    tokio::time::sleep(Duration::from_secs(2)).await; // observation window, not synchronisation
    assert_eq!(
        dir_digests(&sites.b_landing()),
        landing,
        "the new primary accepted bytes from the fenced node"
    );
    let log = std::fs::read_to_string(&sites.b.log).unwrap();
    let after = log.split("FAILOVER").nth(1).unwrap_or_default();
    assert!(
        !after.contains("primary connected; resuming"),
        "a session from the old primary was accepted"
    );
    assert!(
        after.contains("stale epoch"),
        "the stale primary was not refused by epoch"
    );

    let hist = drctl_json(&sites.b.socket, &["history"], 0);
    let entries = hist.as_array().unwrap();
    assert!(entries.iter().any(|e| e["action"] == "failover"
        && e["reason"] == "verona datacenter down"
        && e["epoch_after"] == 2));
    let hist_a = drctl_json(&sites.a.socket, &["history"], 0);
    assert!(hist_a
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "fence"));
}

fn quarantined_total(r: &Value) -> u64 {
    r["quarantined_bytes"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_during_a_partition_then_rejoin_quarantines_the_old_primarys_extra_bytes() {
    let tuning =
        "[tuning]\nidle_timeout_ms = 4000\nkeepalive_interval_ms = 300\nreconnect_max_ms = 1000\n";
    let mut sites = Sites::new(true, tuning, "", "").await;
    let mut w = WalWriter::new(&sites.a_wal, 12);
    w.segments(1, 3, 2 * MIB);
    w.append(4, 700_000);
    sites.b.start_ready().await;
    sites.a.start_ready().await;
    let fork_expected = wait_caught_up(&sites.a, Duration::from_secs(60)).await;

    // Partition both links. The primary is alive and keeps writing.
    sites.ab.as_ref().unwrap().cut(true);
    sites.ba.as_ref().unwrap().cut(true);
    w.append(4, 300_000);
    w.append(5, 1_000_000);
    let extra = 300_000 + 1_000_000;

    // Still looks connected (the idle timeout has not passed): refused.
    let (code, _, err) = drctl(&sites.b.socket, &["failover"]);
    assert_eq!(code, 1);
    assert!(err.contains("still connected"), "{err}");
    let r = drctl_json(
        &sites.b.socket,
        &["failover", "--yes", "--reason", "partition drill"],
        0,
    );
    assert_eq!(r["new_epoch"], 2);
    assert_eq!(r["durable_position"], fork_expected);
    assert_eq!(
        r["old_primary_reached"], false,
        "the partition should hide the old primary"
    );

    // Heal: the old primary's session (epoch 1) resumes and is refused.
    let landing = dir_digests(&sites.b_landing());
    sites.ab.as_ref().unwrap().cut(false);
    sites.ba.as_ref().unwrap().cut(false);
    wait_role(&sites.a, "fenced").await;
    assert_eq!(
        dir_digests(&sites.b_landing()),
        landing,
        "no byte of epoch 1 may land after the promotion"
    );

    // The new epoch's WAL at the new primary.
    let mut wb = WalWriter::new(&sites.b_wal, 13);
    wb.segments(5, 1, 2 * MIB);
    wb.append(6, 123_456);

    // Rejoin: the bytes the old primary wrote after the fork go to quarantine.
    let r = drctl_json(
        &sites.a.socket,
        &["rejoin", "--reason", "after partition drill"],
        0,
    );
    println!("rejoin: {r}");
    assert_eq!(r["fork_position"], fork_expected);
    assert_eq!(r["new_epoch"], 2);
    assert_eq!(quarantined_total(&r), extra);
    let qdir = PathBuf::from(r["quarantine_dir"].as_str().unwrap());
    let q = dir_digests(&qdir);
    assert!(q.contains_key(&seg_name(5)), "{q:?}");
    assert!(
        q.keys()
            .any(|k| k.starts_with(&seg_name(4)) && k.contains("after-fork")),
        "{q:?}"
    );
    assert_eq!(role(&sites.a), ("replica".into(), 2));

    // It catches up from the new primary; both sites end byte-identical.
    let total = fork_expected + wb.total;
    wait_for(
        "the new primary's WAL at the old site",
        Duration::from_secs(60),
        || async {
            let s = sites.b.stream().await.ok()?;
            (s.connected && s.durable_position == total).then_some(())
        },
    )
    .await;
    let at_a = Sites::site_segments(&sites.a_wal, &sites.a_landing());
    let at_b = Sites::site_segments(&sites.b_wal, &sites.b_landing());
    assert_eq!(at_a, at_b, "sites differ after rejoin");
    assert_eq!(at_a.len(), 6);
    let hist = drctl_json(&sites.a.socket, &["history"], 0);
    assert!(hist
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "rejoin" && e["reason"] == "after partition drill"));
}

/// A WAL writer that follows the primary: it writes at a steady pace into
/// the current primary's WAL dir, stops when a `stop-*` marker appears (the
/// pre_switchover hook) and moves to the other site when a `promoted-*`
/// marker appears (the promote hook), starting a new segment there.
struct FollowingWriter {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<u64>,
}

impl FollowingWriter {
    fn start(root: &Path, dirs: [PathBuf; 2]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (s, wr, root) = (stop.clone(), written.clone(), root.to_path_buf());
        let handle = std::thread::spawn(move || {
            let names = ["a", "b"];
            let mut at = 0usize;
            let mut seg = 1u64;
            let mut in_seg = 0usize;
            let mut w = WalWriter::new(&dirs[0], 99);
            let mut switches = 0;
            // Bounded: at most ~10 minutes of 20 ms steps.
            for _ in 0..30_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let stop_marker = root.join(format!("stop-{}-{switches}", names[at]));
                if stop_marker.exists() {
                    let promoted = root.join(format!("promoted-{}-{switches}", names[1 - at]));
                    if promoted.exists() {
                        at = 1 - at;
                        switches += 1;
                        w.dir = dirs[at].clone();
                        seg += 1;
                        in_seg = 0;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                w.append(seg, 64 * 1024);
                in_seg += 64 * 1024;
                wr.store(w.total, Ordering::Relaxed);
                if in_seg >= 2 * MIB {
                    seg += 1;
                    in_seg = 0;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            w.total
        });
        Self {
            stop,
            written,
            handle,
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn hooks(root: &Path, me: &str, switch_in: u32, switch_out: u32) -> String {
    let r = root.display();
    format!(
        "[hooks]\npre_switchover = \"echo $DRD_EPOCH > {r}/stop-{me}-{switch_out}\"\n\
         promote = \"echo $DRD_EPOCH > {r}/promoted-{me}-{switch_in}\"\n\
         abort_switchover = \"touch {r}/aborted-{me}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_there_and_back_under_load_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    // Verona switches out in switchover 0 and back in in switchover 1.
    let mut sites = Sites::new(
        false,
        "",
        &hooks(root.path(), "a", 1, 0),
        &hooks(root.path(), "b", 0, 1),
    )
    .await;
    sites.b.start_ready().await;
    sites.a.start_ready().await;
    let writer = FollowingWriter::start(root.path(), [sites.a_wal.clone(), sites.b_wal.clone()]);
    wait_for("some WAL shipped", Duration::from_secs(30), || async {
        let s = sites.a.stream().await.ok()?;
        (s.durable_position > 2 * MIB as u64).then_some(())
    })
    .await;

    let (code, out, err) = drctl(
        &sites.a.socket,
        &["switchover", "--reason", "planned maintenance in Verona"],
    );
    println!("{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("zero bytes lost"));
    assert_eq!(role(&sites.a), ("replica".into(), 2));
    assert_eq!(role(&sites.b), ("primary".into(), 2));
    // The hooks see the epoch: the current one before the switch, the new
    // one at the promotion (issue 15: pre_switchover got a timestamp).
    let hook_epoch = |name: &str| std::fs::read_to_string(root.path().join(name)).unwrap();
    assert_eq!(hook_epoch("stop-a-0"), "1\n", "pre_switchover's DRD_EPOCH");
    assert_eq!(hook_epoch("promoted-b-0"), "2\n", "promote's DRD_EPOCH");

    wait_for(
        "writes at Rochester shipped back",
        Duration::from_secs(30),
        || async {
            let s = sites.b.stream().await.ok()?;
            (s.connected
                && s.durable_position > writer.written.load(Ordering::Relaxed) / 2 + 2 * MIB as u64)
                .then_some(())
        },
    )
    .await;
    let (code, out, err) = drctl(&sites.b.socket, &["switchover", "--reason", "back home"]);
    println!("{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(role(&sites.a), ("primary".into(), 3));
    assert_eq!(role(&sites.b), ("replica".into(), 3));
    assert_eq!(hook_epoch("stop-b-1"), "2\n", "pre_switchover's DRD_EPOCH");
    assert_eq!(hook_epoch("promoted-a-1"), "3\n", "promote's DRD_EPOCH");

    tokio::time::sleep(Duration::from_millis(500)).await; // let the writer add a little at Verona
    let total = writer.finish();
    let durable = wait_caught_up(&sites.a, Duration::from_secs(60)).await;
    assert_eq!(
        durable, total,
        "every written byte is durable at the replica"
    );
    let at_a = Sites::site_segments(&sites.a_wal, &sites.a_landing());
    let at_b = Sites::site_segments(&sites.b_wal, &sites.b_landing());
    assert_eq!(at_a, at_b, "sites differ after two switchovers");
    let bytes_at_a: u64 = at_a
        .keys()
        .map(|n| {
            [
                sites.a_wal.join(n),
                sites.a_landing().join(n),
                sites.a_landing().join(format!("{n}.partial")),
            ]
            .iter()
            .find(|p| p.exists())
            .map(|p| std::fs::metadata(p).unwrap().len())
            .unwrap()
        })
        .sum();
    assert_eq!(bytes_at_a, total, "zero bytes lost");
    println!(
        "{} bytes in {} segments identical at both sites after two switchovers",
        total,
        at_a.len()
    );
    for d in [&sites.a, &sites.b] {
        let h = drctl_json(&d.socket, &["history"], 0);
        let reasons: Vec<_> = h
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect();
        assert!(
            reasons.iter().any(|r| r == "planned maintenance in Verona"),
            "{reasons:?}"
        );
        assert!(reasons.iter().any(|r| r == "back home"), "{reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_whose_promote_hook_fails_rolls_back() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().display();
    let a_hooks = format!(
        "[hooks]\npre_switchover = \"echo $DRD_EPOCH > {r}/stopped\"\n\
         abort_switchover = \"echo $DRD_EPOCH > {r}/aborted\"\n"
    );
    let b_hooks = "[hooks]\npromote = \"echo cannot promote the database >&2; exit 7\"\n";
    let mut sites = Sites::new(false, "", &a_hooks, b_hooks).await;
    let mut w = WalWriter::new(&sites.a_wal, 14);
    w.segments(1, 2, MIB);
    w.append(3, 5000);
    sites.b.start_ready().await;
    sites.a.start_ready().await;
    wait_caught_up(&sites.a, Duration::from_secs(60)).await;
    let before_b = dir_digests(&sites.b_landing());

    let (code, out, err) = drctl(
        &sites.a.socket,
        &["switchover", "--reason", "drill with a broken hook"],
    );
    println!("{out}{err}");
    assert_eq!(code, 1);
    assert!(
        err.contains("promote replica") && err.contains("cannot promote the database"),
        "{err}"
    );
    assert!(root.path().join("stopped").exists());
    assert!(
        root.path().join("aborted").exists(),
        "the abort hook lets writes resume"
    );
    // Both hooks ran at epoch 1 and were told so (issue 15: they got a
    // timestamp in DRD_EPOCH).
    for hook in ["stopped", "aborted"] {
        let epoch = std::fs::read_to_string(root.path().join(hook)).unwrap();
        assert_eq!(epoch, "1\n", "DRD_EPOCH of the hook that wrote {hook}");
    }
    assert_eq!(role(&sites.a), ("primary".into(), 1));
    assert_eq!(role(&sites.b), ("replica".into(), 1));
    assert_eq!(dir_digests(&sites.b_landing()), before_b);

    // Replication goes on as before.
    w.append(3, 10_000);
    let d = wait_caught_up(&sites.a, Duration::from_secs(60)).await;
    assert_eq!(d, w.total);
    let h = drctl_json(&sites.a.socket, &["history"], 0);
    assert!(h
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "switchover-rolled-back"
            && e["detail"].as_str().unwrap().contains("promote replica")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_check_exit_codes_and_pause_resume() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 15);
    w.segments(1, 1, MIB);
    w.append(2, 1000);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(30)).await;
    let (code, out, _) = drctl(&pair.primary.socket, &["lag"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("DRD LAG OK"), "{out}");

    // Pause: nothing ships, the check warns.
    let (code, _, _) = drctl(
        &pair.primary.socket,
        &["pause", "--reason", "link maintenance"],
    );
    assert_eq!(code, 0);
    w.append(2, 50_000);
    let lagging = wait_for("lag while paused", Duration::from_secs(10), || async {
        let s = pair.primary.stream().await.ok()?;
        (s.lag_bytes == 50_000 && s.lag_seconds >= 0.3).then_some(s)
    })
    .await;
    assert!(lagging.paused);
    let (code, out, _) = drctl(
        &pair.primary.socket,
        &["lag", "--warn-seconds", "0.2", "--crit-seconds", "600"],
    );
    assert_eq!(code, 1, "WARNING expected: {out}");
    let j = drctl_json(
        &pair.primary.socket,
        &["lag", "--warn-seconds", "0.1", "--crit-seconds", "0.2"],
        2,
    );
    assert_eq!(j["status"], "CRITICAL");
    let durable = pair.replica.stream().await.unwrap().durable_position;
    assert_eq!(durable, w.total - 50_000, "nothing shipped while paused");

    let (code, _, _) = drctl(
        &pair.primary.socket,
        &["resume", "--reason", "maintenance over"],
    );
    assert_eq!(code, 0);
    pair.wait_durable(w.total, Duration::from_secs(30)).await;
    let (code, out, _) = drctl(
        &pair.primary.socket,
        &["lag", "--warn-seconds", "5", "--crit-seconds", "10"],
    );
    assert_eq!(code, 0, "{out}");
    let h = drctl_json(&pair.primary.socket, &["history"], 0);
    let acts: Vec<_> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].clone(), e["reason"].clone()))
        .collect();
    assert!(
        acts.contains(&("pause".into(), "link maintenance".into())),
        "{acts:?}"
    );
    assert!(
        acts.contains(&("resume".into(), "maintenance over".into())),
        "{acts:?}"
    );
    assert!(
        h[0]["user"].as_str().unwrap().contains("uid"),
        "the OS user is recorded: {}",
        h[0]
    );

    // Unreachable daemon: UNKNOWN.
    pair.primary.kill9();
    let (code, _, _) = drctl(&pair.primary.socket, &["lag"]);
    assert_eq!(code, 3);
}

/// Two operators (or a script retrying) run `drctl failover` at the same
/// moment: exactly one promotes, at epoch + 1; the others are refused, and
/// the audit log has one failover. The role is read again once the
/// transition gate is held, so a failover that waited for another one does
/// not promote from what it read before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failovers_promote_once() {
    let mut sites = Sites::new(false, "", "", "").await;
    let mut w = WalWriter::new(&sites.a_wal, 12);
    w.segments(1, 2, 4 * MIB);
    sites.b.start_ready().await;
    sites.a.start_ready().await;
    wait_caught_up(&sites.a, Duration::from_secs(60)).await;
    sites.a.kill9();
    wait_for(
        "replica to see the primary gone",
        Duration::from_secs(30),
        || async {
            let s = sites.b.stream().await.ok()?;
            (!s.connected).then_some(())
        },
    )
    .await;

    const RUNS: usize = 6;
    let socket = sites.b.socket.clone();
    let start = Arc::new(std::sync::Barrier::new(RUNS));
    let runs: Vec<_> = (0..RUNS)
        .map(|i| {
            let (socket, start) = (socket.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let reason = format!("operator {i}");
                drctl(
                    &socket,
                    &["failover", "--yes", "--reason", &reason, "--json"],
                )
            })
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    let promoted: Vec<_> = results.iter().filter(|r| r.0 == 0).collect();
    for (code, out, err) in &results {
        println!("exit {code}: {}{err}", out.trim());
        assert!(*code == 0 || *code == 1, "exit {code}: {out}{err}");
    }
    assert_eq!(promoted.len(), 1, "exactly one failover promotes");
    let report: Value = serde_json::from_str(&promoted[0].1).unwrap();
    assert_eq!(report["new_epoch"], 2);
    assert_eq!(role(&sites.b), ("primary".into(), 2));
    let hist = drctl_json(&sites.b.socket, &["history"], 0);
    let failovers: Vec<_> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "failover")
        .collect();
    assert_eq!(failovers.len(), 1, "one failover in the audit log: {hist}");
    assert_eq!(failovers[0]["epoch_after"], 2);
}
