//! The bugs drd-sim (and its core) found in drd, shown with real `drd`
//! processes:
//!
//! 1. A partial tail that rotted at rest must not become the fork segment
//!    of a failover with a fresh checksum (drd-core's `tail::fork_point`,
//!    drd-sim's mutation `fork-unchecked-partial`).
//!
//! The other one (after a crash, recovery fdatasyncs the partial tail it
//! keeps before reporting it durable: `tail::Recovered::sync`, mutation
//! `skip-recovery-sync`) needs a power cut after a kill -9 to show, which
//! only drd-sim can make: tests/sim-check replays its seed.

use drd_tests::*;
use std::time::Duration;

const KIB: usize = 1024;

fn role(d: &Daemon) -> (String, u64) {
    let s = drctl_json(&d.socket, &["status"], 0);
    (
        s["role"].as_str().unwrap().to_string(),
        s["epoch"].as_u64().unwrap(),
    )
}

/// A pair with one sealed segment of 64 KiB and a partial one of 20 KiB
/// that reached the replica in two groups (10 KiB each, so its record's
/// previous durable point is 10 KiB); the primary then killed.
async fn pair_with_a_partial_tail() -> Sites {
    let mut sites = Sites::new(false, "", "", "").await;
    let mut w = WalWriter::new(&sites.a_wal, 17);
    w.segments(1, 1, 64 * KIB);
    w.append(2, 10 * KIB);
    sites.b.start_ready().await;
    sites.a.start_ready().await;
    for want in [74 * KIB as u64, 84 * KIB as u64] {
        if want == 84 * KIB as u64 {
            w.append(2, 10 * KIB);
        }
        wait_for("the replica durable", Duration::from_secs(60), || async {
            let s = sites.b.stream().await.ok()?;
            (s.durable_position >= want).then_some(())
        })
        .await;
    }
    sites.a.kill9();
    wait_for(
        "replica to see the primary gone",
        Duration::from_secs(30),
        || async {
            let s = drctl_json(&sites.b.socket, &["status"], 0)["streams"][0].clone();
            (s["connected"] == false).then_some(())
        },
    )
    .await;
    sites
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_refuses_to_promote_a_partial_tail_that_rotted_at_rest() {
    let sites = pair_with_a_partial_tail().await;
    let partial = sites.b_landing().join(format!("{}.partial", seg_name(2)));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 20 * KIB as u64);
    let src = std::fs::read(sites.a_wal.join(seg_name(2))).unwrap();

    // Rot one byte in the first group, below the record's previous
    // durable point: no prefix checks out, so no failover.
    flip_byte(&partial, 100);
    let before = dir_digests(&sites.b_landing());
    let (code, out, err) = drctl(
        &sites.b.socket,
        &["failover", "--yes", "--max-data-loss", "1GiB"],
    );
    assert_ne!(code, 0, "a failover promoted a corrupt tail: {out}");
    assert!(
        err.contains("does not match its catalog record") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        role(&sites.b),
        ("replica".into(), 1),
        "the refusal changed the role"
    );
    assert_eq!(
        dir_digests(&sites.b_landing()),
        before,
        "the refusal changed files"
    );

    // The byte back, and one rotted in the last group instead: the fork is
    // at the previous durable point, and its bytes are the primary's.
    flip_byte(&partial, 100);
    flip_byte(&partial, 15 * KIB as u64);
    let r = drctl_json(
        &sites.b.socket,
        &["failover", "--yes", "--max-data-loss", "1GiB"],
        0,
    );
    assert_eq!(r["new_epoch"], 2);
    assert_eq!(r["durable_position"], 74 * KIB as u64);
    assert_eq!(
        std::fs::read(&partial).unwrap(),
        src[..10 * KIB],
        "the fork segment is the primary's bytes"
    );
}

/// Found while writing drd-core's switchover step machine, and shown by
/// drd-sim's mutation `rollback-after-promote` (seed 339): a demotion that
/// fails after the replica was promoted used to roll back — this node
/// primary again at the old epoch, its abort hook letting the database
/// take writes that the new primary never sees. Now it fences itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_whose_demotion_fails_after_the_promotion_fences_the_old_primary() {
    let side = tempfile::tempdir().unwrap();
    let target = side.path().join("target");
    let aborted = side.path().join("aborted");
    // Rochester's promote hook writes to Verona's active segment behind
    // drd's back, so Verona's demotion finds that writes did not stop.
    let b_hooks = format!(
        "[hooks]\npromote = \"printf late-write >> $(cat {})\"\n",
        target.display()
    );
    let a_hooks = format!(
        "[hooks]\nabort_switchover = \"touch {}\"\n",
        aborted.display()
    );
    let mut sites = Sites::new(false, "", &a_hooks, &b_hooks).await;
    let mut w = WalWriter::new(&sites.a_wal, 5);
    w.segments(1, 1, 64 * KIB);
    w.append(2, 8 * KIB);
    std::fs::write(&target, sites.a_wal.join(seg_name(2)).display().to_string()).unwrap();
    sites.b.start_ready().await;
    sites.a.start_ready().await;
    wait_for("the replica durable", Duration::from_secs(60), || async {
        let s = sites.b.stream().await.ok()?;
        (s.durable_position >= 72 * KIB as u64).then_some(())
    })
    .await;

    let (code, out, err) = drctl(&sites.a.socket, &["switchover", "--reason", "test"]);
    println!("{out}{err}");
    assert_ne!(code, 0, "the switchover reported success: {out}");
    assert_eq!(
        role(&sites.b),
        ("primary".into(), 2),
        "the promotion happened"
    );
    let st = drctl_json(&sites.a.socket, &["status"], 0);
    assert_eq!(st["role"], "fenced", "{st}");
    assert!(
        st["fenced_reason"]
            .as_str()
            .unwrap()
            .contains("could not demote itself"),
        "{st}"
    );
    assert!(
        !aborted.exists(),
        "the abort hook ran: the old primary's database may take writes again"
    );
    // It ships nothing; a rejoin makes it a replica of the new primary,
    // quarantining the late write.
    let r = drctl_json(&sites.a.socket, &["rejoin", "--reason", "test"], 0);
    println!("rejoin: {r}");
    assert_eq!(role(&sites.a), ("replica".into(), 2));
}
