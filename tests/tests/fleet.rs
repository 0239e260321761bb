//! One DR site for a fleet (issue 18) with real `drd` processes: a hundred
//! streams from twenty primaries into one DR node over mTLS, one stream
//! failed over (and back) alone while the others keep shipping, every
//! stream failed over at once after the primaries died, and a primary that
//! ships a stream the DR node does not assign to it is refused.

use drd_tests::fleet::*;
use drd_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Each test starts up to 21 daemons on a machine of two cores: they run
/// one at a time, or they would measure and time each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the steady writers of the hundred-stream run write.
const RUN: Duration = Duration::from_secs(25);

/// Past the first segment of [`Pace::default`] (512 KiB): a stream that is
/// durable this far has sealed a segment at the DR node, so role changes
/// meet sealed segments and an active one.
const PAST_FIRST_SEGMENT: u64 = 600 * 1024;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_streams_from_twenty_primaries() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new(20, 5, "");
    assert_eq!(fleet.streams.len(), 100);
    fleet.dr.start_ready().await;
    let sampler = Sampler::start(fleet.dr.pid());
    fleet.start_primaries().await;
    let started = Instant::now();
    let writers = SteadyWriters::start(fleet.primary_targets(), Pace::default());

    // Every stream ships while all run: each is durable past its first
    // chunks well before the writers stop.
    wait_for(
        "every stream durable past its first chunks",
        RUN,
        || async {
            let d = fleet.durable_positions().await;
            (d.len() == 100 && d.values().all(|&p| p >= 64 * 1024)).then_some(())
        },
    )
    .await;
    // Sample the lag each primary reports while the writers run.
    let mut worst_lag = (0u64, 0f64);
    while started.elapsed() < RUN {
        for p in &fleet.primaries {
            for s in stream_statuses(&p.daemon).await.unwrap().values() {
                worst_lag.0 = worst_lag.0.max(s.lag_bytes);
                worst_lag.1 = worst_lag.1.max(s.lag_seconds);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await; // sampling pace, not synchronisation
    }
    let totals = writers.finish();
    let drain = fleet.wait_durable(&totals, Duration::from_secs(120)).await;
    let res = sampler.finish();

    let st = stream_statuses(&fleet.dr).await.unwrap();
    assert_eq!(
        st.keys().cloned().collect::<BTreeSet<_>>(),
        fleet.streams.iter().map(|s| s.name.clone()).collect(),
        "dr1 reports every stream it receives"
    );
    for (name, s) in &st {
        assert!(
            s.peer.starts_with(&fleet.primary_of(name).daemon.name),
            "{name} came from {}, not its own primary",
            s.peer
        );
    }
    let segments = fleet.assert_all_identical();
    let bytes: u64 = totals.values().sum();
    println!(
        "fleet: dr1 peak RSS {:.1} MiB, peak open fds {}, CPU {:.1} s, {bytes} bytes in {segments} \
         segments, {} streams from {} primaries byte-identical; {:.0} s of writes, drained in {:.1} s, \
         worst lag seen {} bytes / {:.2} s",
        mib(res.peak_rss_kib),
        res.peak_fds,
        res.cpu_seconds,
        fleet.streams.len(),
        fleet.primaries.len(),
        RUN.as_secs_f64(),
        drain.as_secs_f64(),
        worst_lag.0,
        worst_lag.1,
    );
}

/// Bytes held at a site for one stream (source and landing, `.partial`
/// counted as its segment).
fn site_bytes(wal: &Path, landing: &Path) -> u64 {
    Sites::site_segments(wal, landing)
        .keys()
        .map(|n| {
            [
                wal.join(n),
                landing.join(n),
                landing.join(format!("{n}.partial")),
            ]
            .iter()
            .find(|p| p.exists())
            .map(|p| std::fs::metadata(p).unwrap().len())
            .unwrap()
        })
        .sum()
}

/// Durable positions of `names` only.
fn only(d: &BTreeMap<String, u64>, names: &BTreeSet<String>) -> BTreeMap<String, u64> {
    d.iter()
        .filter(|(k, _)| names.contains(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

// Twenty primaries × five streams, as issue 18 asks: one stream walks
// through failover, rejoin and switchover (three role changes, each with a
// drain) while the other 99 run, and none of them changes role or epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_fails_over_alone() {
    const MOVED: &str = "p03-s2";
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new(20, 5, "");
    fleet.start_all().await;
    let writers = SteadyWriters::start(fleet.primary_targets(), Pace::default());
    let others: BTreeSet<String> = fleet
        .streams
        .iter()
        .map(|s| s.name.clone())
        .filter(|n| n != MOVED)
        .collect();
    let n = fleet.streams.len();
    wait_for("every stream shipping", Duration::from_secs(90), || async {
        let d = fleet.durable_positions().await;
        (d.len() == n && d.values().all(|&p| p >= PAST_FIRST_SEGMENT)).then_some(())
    })
    .await;

    let p03 = &fleet.primary_of(MOVED).daemon;
    assert_eq!(p03.name, "p03");
    let (dr_roles0, p03_roles0) = (stream_roles(&fleet.dr), stream_roles(p03));
    assert_eq!(dr_roles0.len(), n, "{dr_roles0:?}");
    assert_eq!(p03_roles0.len(), 5, "{p03_roles0:?}");
    assert!(
        dr_roles0.values().all(|(r, _)| r == "replica"),
        "{dr_roles0:?}"
    );
    assert!(
        p03_roles0.values().all(|(r, _)| r == "primary"),
        "{p03_roles0:?}"
    );
    let epoch0 = p03_roles0[MOVED].1;
    assert_eq!(dr_roles0[MOVED].1, epoch0);

    // Fail over the one stream at dr1 while everything runs.
    let before = only(&fleet.durable_positions().await, &others);
    let r = drctl_json(
        &fleet.dr.socket,
        &[
            "failover",
            "--stream",
            MOVED,
            "--yes",
            "--reason",
            "p03's second database is lost",
        ],
        0,
    );
    // The fenced database stops writing (its fence hook would stop it).
    let at_p03 = writers.stop_one(MOVED);
    let just_after = only(&fleet.durable_positions().await, &others);
    println!("failover report: {r}");
    assert_eq!(r["stream"], MOVED);
    assert_eq!(r["refused"], "");
    assert_eq!(r["new_epoch"], epoch0 + 1);
    assert_eq!(
        r["old_primary_reached"], true,
        "p03 is alive and reachable: it should have been told to fence"
    );
    let fork = r["durable_position"].as_u64().unwrap();
    assert!(fork > 0 && fork <= at_p03, "fork {fork}, written {at_p03}");

    // The promoted database writes at dr1, continuing the log after the
    // fork segment.
    let first = last_segment(&[&fleet.dr_landing(MOVED)]) + 1;
    writers.add(Target::new(
        &format!("{MOVED}@dr1"),
        &fleet.stream(MOVED).dr_wal,
        77,
        first,
    ));

    wait_stream_role(p03, MOVED, "fenced", Duration::from_secs(30)).await;
    let p03_roles = stream_roles(p03);
    for (name, (role, epoch)) in &p03_roles {
        if name == MOVED {
            assert_eq!(role, "fenced");
        } else {
            assert_eq!(
                (role.as_str(), *epoch),
                ("primary", p03_roles0[name].1),
                "{name} at p03 must not change: {p03_roles:?}"
            );
        }
    }
    let dr_roles = stream_roles(&fleet.dr);
    for (name, (role, epoch)) in &dr_roles {
        let want = if name == MOVED {
            ("primary", epoch0 + 1)
        } else {
            ("replica", dr_roles0[name].1)
        };
        assert_eq!((role.as_str(), *epoch), want, "{name} at dr1: {dr_roles:?}");
    }

    // The other nineteen never stopped: positions never went back, and
    // each grows past where it stood just after the failover.
    for (name, &p) in &just_after {
        assert!(
            p >= before[name],
            "{name} went back: {} → {p}",
            before[name]
        );
    }
    wait_for(
        "the other streams shipping after the failover",
        Duration::from_secs(30),
        || async {
            let now = only(&fleet.durable_positions().await, &others);
            (now.len() == others.len() && now.iter().all(|(n, &p)| p > just_after[n] + 16 * 1024))
                .then_some(())
        },
    )
    .await;

    // p03 rejoins for that stream as dr1's replica: what it wrote after the
    // fork goes to quarantine, and it receives the promoted database's WAL.
    let rj = drctl_json(
        &p03.socket,
        &[
            "rejoin",
            "--stream",
            MOVED,
            "--reason",
            "second database rebuilt",
        ],
        0,
    );
    println!("rejoin report: {rj}");
    assert_eq!(rj["stream"], MOVED);
    assert_eq!(rj["fork_position"], fork);
    assert_eq!(rj["new_epoch"], epoch0 + 1);
    assert_eq!(rj["new_primary"], DR_ID);
    assert_eq!(
        rj["quarantined_bytes"].as_u64().unwrap(),
        at_p03 - fork,
        "everything p03 wrote past the fork is quarantined"
    );
    assert_eq!(stream_roles(p03)[MOVED], ("replica".into(), epoch0 + 1));
    wait_for(
        "dr1 shipping the promoted database's WAL to p03",
        Duration::from_secs(30),
        || async {
            let s = stream_statuses(&fleet.dr).await.ok()?.remove(MOVED)?;
            (s.connected && s.durable_position > fork + PAST_FIRST_SEGMENT).then_some(())
        },
    )
    .await;

    // Switch it back: the promoted database stops (pre_switchover would
    // stop it), dr1 drains to p03, and p03 is primary again.
    let at_dr = writers.stop_one(&format!("{MOVED}@dr1"));
    // dr1 has seen every byte of it (the drain's target is what dr1 knows
    // was written).
    wait_for(
        "dr1 to see all of the promoted database's WAL",
        Duration::from_secs(30),
        || async {
            let s = stream_statuses(&fleet.dr).await.ok()?.remove(MOVED)?;
            (s.written_position == fork + at_dr).then_some(())
        },
    )
    .await;
    let sw = drctl_json(
        &fleet.dr.socket,
        &["switchover", "--stream", MOVED, "--reason", "back to p03"],
        0,
    );
    println!("switchover report: {sw}");
    assert_eq!(sw["ok"], true);
    assert_eq!(sw["new_epoch"], epoch0 + 2);
    assert_eq!(sw["new_primary"], "p03");
    assert_eq!(sw["fork_position"], fork + at_dr, "zero bytes lost");
    for (d, roles0, moved_role) in [
        (&fleet.dr, &dr_roles0, "replica"),
        (p03, &p03_roles0, "primary"),
    ] {
        let roles = stream_roles(d);
        assert_eq!(roles.len(), roles0.len(), "{}: {roles:?}", d.name);
        for (name, (role, epoch)) in &roles {
            let want = if name == MOVED {
                (moved_role, epoch0 + 2)
            } else {
                (roles0[name].0.as_str(), roles0[name].1)
            };
            assert_eq!(
                (role.as_str(), *epoch),
                want,
                "{name} at {}: {roles:?}",
                d.name
            );
        }
    }

    // The database back at p03 writes on after the promoted one's segments.
    let p03_wal = fleet.stream(MOVED).wal.clone();
    let p03_landing = landing(p03, MOVED);
    let next = last_segment(&[&p03_wal, &p03_landing]) + 1;
    writers.add(Target::new(&format!("{MOVED}@p03"), &p03_wal, 78, next));
    wait_for("p03 shipping again", Duration::from_secs(30), || async {
        let s = stream_statuses(p03).await.ok()?.remove(MOVED)?;
        (s.connected && s.durable_position > fork + at_dr + 128 * 1024).then_some(())
    })
    .await;
    let totals = writers.finish();
    let mut want = only(&totals, &others);
    let back = totals[&format!("{MOVED}@p03")];
    want.insert(MOVED.to_string(), fork + at_dr + back);
    fleet.wait_durable(&want, Duration::from_secs(60)).await;

    for s in fleet.streams.iter().filter(|s| s.name != MOVED) {
        assert_replica_identical(&s.wal, &fleet.dr_landing(&s.name))
            .unwrap_or_else(|e| panic!("{}: {e:#}", s.name));
    }
    let dr_wal = &fleet.stream(MOVED).dr_wal;
    let at_p03_site = Sites::site_segments(&p03_wal, &p03_landing);
    let at_dr_site = Sites::site_segments(dr_wal, &fleet.dr_landing(MOVED));
    assert_eq!(
        at_p03_site, at_dr_site,
        "{MOVED} differs between p03 and dr1"
    );
    assert_eq!(site_bytes(&p03_wal, &p03_landing), fork + at_dr + back);
    println!(
        "{MOVED}: fork at {fork}, {at_dr} bytes from dr1, {back} back at p03, {} segments identical",
        at_p03_site.len()
    );
}

// Twenty primaries × five streams: a hundred databases, all failed over by
// one command after every primary died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_all_after_primaries_die() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new(20, 5, "");
    fleet.start_all().await;
    let writers = SteadyWriters::start(fleet.primary_targets(), Pace::default());
    let n = fleet.streams.len();
    wait_for("every stream shipping", Duration::from_secs(90), || async {
        let d = fleet.durable_positions().await;
        (d.len() == n && d.values().all(|&p| p >= PAST_FIRST_SEGMENT)).then_some(())
    })
    .await;
    let totals = writers.finish();
    fleet.wait_durable(&totals, Duration::from_secs(60)).await;
    let roles0 = stream_roles(&fleet.dr);
    assert_eq!(roles0.len(), n, "{roles0:?}");

    for p in &mut fleet.primaries {
        p.daemon.kill9();
    }
    let r = drctl_json(
        &fleet.dr.socket,
        &[
            "failover",
            "--all",
            "--yes",
            "--reason",
            "primary site lost",
        ],
        0,
    );
    let entries = r["streams"]
        .as_array()
        .unwrap_or_else(|| panic!("no `streams` array in the failover --all report: {r}"));
    let names: BTreeSet<String> = entries
        .iter()
        .map(|e| e["stream"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(entries.len(), n, "{r}");
    assert_eq!(names, roles0.keys().cloned().collect(), "{r}");
    for e in entries {
        let name = e["stream"].as_str().unwrap();
        assert_eq!(e["ok"], true, "{name}: {e}");
        assert_eq!(e["new_epoch"], roles0[name].1 + 1, "{name}: {e}");
    }
    let roles = stream_roles(&fleet.dr);
    for (name, (role, epoch)) in &roles {
        assert_eq!(
            (role.as_str(), *epoch),
            ("primary", roles0[name].1 + 1),
            "{name} at dr1 after failover --all"
        );
    }
    assert_eq!(roles.len(), n);
    // Everything was durable before the primaries died, and is still there.
    let segments = fleet.assert_all_identical();
    println!(
        "failover --all: {} streams primary at dr1, {segments} segments identical",
        roles.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unassigned_stream_is_refused() {
    const STOLEN: &str = "p01-s1";
    const ROGUE: &str = "rogue-s1";
    let _one = ONE_AT_A_TIME.lock().await;
    // p02 also ships p01's stream (with its own, different bytes) and a
    // stream dr1 does not list at all.
    let mut fleet = Fleet::with_unassigned(2, 1, "", &[(1, STOLEN), (1, ROGUE)]);
    let mut p01_s1 = WalWriter::new(&fleet.stream(STOLEN).wal, 1);
    p01_s1.segments(1, 2, 256 * 1024);
    p01_s1.append(3, 10_000);
    let mut p02_s1 = WalWriter::new(&fleet.stream("p02-s1").wal, 2);
    p02_s1.segments(1, 1, 256 * 1024);
    p02_s1.append(2, 5_000);
    for (n, u) in fleet.unassigned.iter().enumerate() {
        let mut w = WalWriter::new(&u.wal, 100 + n as u64);
        w.segments(1, 2, 256 * 1024);
        w.append(3, 20_000);
    }

    fleet.dr.start_ready().await;
    fleet.primaries[0].daemon.start_ready().await;
    let mut want = BTreeMap::from([(STOLEN.to_string(), p01_s1.total)]);
    fleet.wait_durable(&want, Duration::from_secs(30)).await;
    let landed = dir_digests(&fleet.dr_landing(STOLEN));

    fleet.primaries[1].daemon.start_ready().await;
    want.insert("p02-s1".into(), p02_s1.total);
    fleet.wait_durable(&want, Duration::from_secs(30)).await;
    let p02 = &fleet.primaries[1].daemon;
    for name in [STOLEN, ROGUE] {
        wait_for(
            &format!("dr1 to refuse {name} from p02"),
            Duration::from_secs(30),
            || async {
                let log = std::fs::read_to_string(&fleet.dr.log).unwrap_or_default();
                log.lines()
                    .any(|l| l.contains("not assigned") && l.contains(name))
                    .then_some(())
            },
        )
        .await;
        let err = wait_for(
            &format!("p02 to report the refusal of {name}"),
            Duration::from_secs(30),
            || async {
                let s = stream_statuses(p02).await.ok()?.remove(name)?;
                (!s.last_error.is_empty()).then_some(s.last_error)
            },
        )
        .await;
        assert!(
            err.contains("not assigned"),
            "p02's error for {name}: {err}"
        );
        println!("p02's error for {name}: {err}");
    }

    // Nothing of p02's landed: no directory for the rogue stream, and
    // p01-s1 holds p01's bytes, as before.
    assert!(
        !fleet.dr.data_dir().join("streams").join(ROGUE).exists(),
        "dr1 made a directory for a stream it does not list"
    );
    assert_eq!(
        dir_digests(&fleet.dr_landing(STOLEN)),
        landed,
        "p02's bytes changed p01-s1"
    );
    let st = stream_statuses(&fleet.dr).await.unwrap();
    assert!(!st.contains_key(ROGUE), "dr1 reports {ROGUE}: {st:?}");
    // p01 still ships its stream: the refused sessions did not take it over.
    p01_s1.append(3, 30_000);
    want.insert(STOLEN.into(), p01_s1.total);
    fleet.wait_durable(&want, Duration::from_secs(30)).await;
    assert!(
        st[STOLEN].peer.starts_with("p01"),
        "p01-s1's peer at dr1: {}",
        st[STOLEN].peer
    );
    fleet.assert_all_identical();
}
