//! `source = "postgres"` against a real PostgreSQL 15 (issue 22): drd
//! streams the primary database's WAL through a physical replication slot,
//! ships it to the DR site's drd, and a DR standby built with
//! `pg_basebackup` restores through `drctl wal-fetch`.
//!
//! The zero-loss check is the one a Jepsen-style test would make: many
//! client sessions insert rows with unique ids and record an id only once
//! its COMMIT returned; at a seeded moment the primary's PostgreSQL and its
//! drd are killed -9 together; `drctl failover` at the DR node runs the
//! promote hook (`deploy/postgresql/promote-hook.sh`), which waits until the
//! DR standby has replayed the last, partial segment (served zero-filled)
//! and promotes it. In `sync` mode (`synchronous_standby_names = 'drd'`)
//! every acknowledged id must be in the DR database; in `async` mode the
//! lost ones must all lie past the DR copy's end, inside the range the
//! failover reported.
//!
//! Run as root (CI), the PostgreSQL programs run as the `postgres` OS user;
//! drd connects to the database's Unix socket as the database superuser
//! (the clusters trust local connections). Without PostgreSQL the tests
//! fail in CI (`CI=true`) and are skipped, with the reason printed,
//! elsewhere.

use drd_tests::pg::{
    format_lsn, parse_lsn, require_postgres, Cluster, Load, Loader, LoaderOptions, Postgres,
};
use drd_tests::pgsites::{Sites, SitesOptions};
use drd_tests::{dir_digests, wait_for, Daemon, STREAM};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn phase(t0: Instant, what: &str) {
    println!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// A small deterministic generator for the kill points (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi) milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// The seeds to run: `DRD_PG_SEEDS` (a count, or a comma-separated list).
fn seeds(default: u64) -> Vec<u64> {
    match std::env::var("DRD_PG_SEEDS") {
        Ok(v) if v.contains(',') => v.split(',').map(|s| s.trim().parse().unwrap()).collect(),
        Ok(v) => (1..=v.trim().parse().unwrap()).collect(),
        Err(_) => (1..=default).collect(),
    }
}

fn ids_at(c: &Cluster) -> BTreeSet<u64> {
    c.psql("SELECT id FROM t")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn lsn_field(v: &serde_json::Value) -> Option<u64> {
    v.as_str().and_then(parse_lsn)
}

/// One seeded run: load, kill -9 at a seeded moment, fail over. Returns
/// what the load did, what the DR database holds, and the failover report.
async fn run_once(
    pg: &Postgres,
    opts: &SitesOptions,
    seed: u64,
    t0: Instant,
) -> (Load, BTreeSet<u64>, serde_json::Value) {
    let mut rng = Rng::new(seed);
    let mode = opts.mode.as_str();
    let mut sites = Sites::new(pg, opts).await;
    sites
        .primary
        .psql("CREATE TABLE t (id bigint PRIMARY KEY, pad text DEFAULT repeat('x', 200))")
        .unwrap();
    let standby = sites.standby();
    phase(t0, &format!("seed {seed}: sites up ({mode})"));
    let loader = Loader::start(
        &sites.primary,
        &LoaderOptions {
            conns: 8,
            ..LoaderOptions::default()
        },
        &sites.root.join("loader.err"),
    )
    .unwrap();
    wait_for(
        "200 acknowledged commits",
        Duration::from_secs(60),
        || async { (loader.acknowledged() >= 200).then_some(()) },
    )
    .await;
    tokio::time::sleep(rng.millis(1500, 6000)).await;
    let killed = sites.kill_primary_site();
    let load = loader.finish(Duration::from_secs(20));
    phase(
        t0,
        &format!(
            "seed {seed}: killed -9 ({killed} PostgreSQL processes and Verona's drd); {} acknowledged",
            load.receipts.len()
        ),
    );
    let rep = sites.fail_over(&standby).await;
    let present = ids_at(&standby);
    phase(
        t0,
        &format!(
            "seed {seed}: failed over; DR copy ends at {} (timeline {}), primary last reported {}",
            rep["durable_lsn"], rep["durable_timeline"], rep["primary_last_lsn"]
        ),
    );
    (load, present, rep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_loses_no_acknowledged_commit() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t0 = Instant::now();
    // The seeded runs with `synchronous_commit = on`, then one with
    // `remote_write`: PostgreSQL releases such a commit on the *write*
    // position, which drd in sync mode also reports only once the DR site
    // has the WAL durably.
    let runs = seeds(3)
        .into_iter()
        .map(|s| (s, ""))
        .chain([(1000, "synchronous_commit = remote_write")]);
    for (seed, pg_conf) in runs {
        let opts = SitesOptions {
            pg_conf: pg_conf.into(),
            ..SitesOptions::mode("sync")
        };
        let (load, present, rep) = run_once(&pg, &opts, seed, t0).await;
        let acked: BTreeSet<u64> = load.receipts.iter().map(|r| r.id).collect();
        let attempted: BTreeSet<u64> = load.attempted.iter().copied().collect();
        let missing: Vec<u64> = acked.difference(&present).copied().collect();
        let extra = present.difference(&acked).count();
        let invented: Vec<u64> = present.difference(&attempted).copied().collect();
        println!(
            "seed {seed}{}: acknowledged {}, present {}, extra {extra} (in flight at the kill), \
             missing {}",
            if pg_conf.is_empty() {
                ""
            } else {
                " (remote_write)"
            },
            acked.len(),
            present.len(),
            missing.len()
        );
        assert!(acked.len() >= 200, "too few commits to prove anything");
        assert!(
            missing.is_empty(),
            "seed {seed}: acknowledged but lost: {missing:?}"
        );
        assert!(
            invented.is_empty(),
            "seed {seed}: never inserted: {invented:?}"
        );
        // The DR copy ends past every acknowledged commit's start.
        let durable = lsn_field(&rep["durable_lsn"]).expect("failover names the DR copy's LSN");
        let last_before = load.receipts.iter().map(|r| r.before_lsn).max().unwrap();
        assert!(
            durable > last_before,
            "seed {seed}: the DR copy ends at {} but a commit acknowledged after {} is there",
            format_lsn(durable),
            format_lsn(last_before)
        );
    }
}

/// How far past the primary's last reported LSN a lost async commit may
/// begin. The report is a lower bound: in async mode PostgreSQL acknowledges
/// a commit once it is flushed locally, and its walsender sends the WAL to
/// drd a moment later; commits acknowledged in that moment before the kill
/// never reached drd, so drd cannot have reported them. With the CPU free
/// that is a commit or so per session (a few hundred bytes each); on a
/// loaded 2-core CI machine the walsender fell 43 commits (16,600 bytes)
/// behind the sessions in one run, so the allowance is 64 KiB: several
/// times what was seen, and still far below a report that is wrong by
/// whole segments or by the DR link's lag.
const IN_FLIGHT: u64 = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_loss_is_within_the_reported_lag() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t0 = Instant::now();
    for seed in seeds(2) {
        let (load, present, rep) = run_once(&pg, &SitesOptions::mode("async"), seed, t0).await;
        let durable = lsn_field(&rep["durable_lsn"]).expect("failover names the DR copy's LSN");
        let primary_last = lsn_field(&rep["primary_last_lsn"]).unwrap_or(0);
        let lost: Vec<_> = load
            .receipts
            .iter()
            .filter(|r| !present.contains(&r.id))
            .collect();
        println!(
            "seed {seed}: acknowledged {}, present {}, lost {}; DR copy ends at {}, the primary's \
             database had reported {} ({} bytes beyond)",
            load.receipts.len(),
            present.len(),
            lost.len(),
            format_lsn(durable),
            format_lsn(primary_last),
            primary_last.saturating_sub(durable)
        );
        for r in &lost {
            // Nothing inside the DR copy is missing ...
            assert!(
                r.after_lsn > durable,
                "seed {seed}: row {} committed by {} is inside the DR copy (to {}) yet lost",
                r.id,
                format_lsn(r.after_lsn),
                format_lsn(durable)
            );
            // ... and every lost commit began inside the range the failover
            // reported as possibly lost, but for the last moment's commits
            // (see IN_FLIGHT).
            assert!(
                r.before_lsn < primary_last + IN_FLIGHT,
                "seed {seed}: row {} began at {}, past the primary's last reported {} and the \
                 {IN_FLIGHT}-byte allowance: the loss is not covered by the reported lag",
                r.id,
                format_lsn(r.before_lsn),
                format_lsn(primary_last)
            );
        }
        let beyond = lost.iter().filter(|r| r.before_lsn >= primary_last).count();
        let lost_wal = lost
            .iter()
            .map(|r| r.after_lsn)
            .max()
            .map_or(0, |a| a.saturating_sub(durable));
        println!(
            "seed {seed}: the failover reported {} bytes as possibly lost; the lost rows' WAL \
             spans at most {lost_wal} bytes past the DR copy; {beyond} of {} lost rows began \
             after the last LSN the primary reported",
            primary_last.saturating_sub(durable),
            lost.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_reaches_the_dr_site_within_a_second() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t0 = Instant::now();
    for mode in ["async", "sync"] {
        let sites = Sites::new(&pg, &SitesOptions::mode(mode)).await;
        sites
            .primary
            .psql("CREATE TABLE t (id bigint PRIMARY KEY)")
            .unwrap();
        // One INSERT every 200 ms, no archive_timeout: the WAL stays inside
        // one or two segments, which drd ships as they grow.
        let mut samples: Vec<(Instant, u64)> = Vec::new();
        let mut dr: Vec<(Instant, u64)> = Vec::new();
        let start = Instant::now();
        let mut id = 0u64;
        let mut next_insert = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if Instant::now() >= next_insert {
                id += 1;
                sites
                    .primary
                    .psql(&format!("INSERT INTO t VALUES ({id})"))
                    .unwrap();
                next_insert += Duration::from_millis(200);
            }
            let flush = sites
                .primary
                .lsn("pg_current_wal_flush_lsn()")
                .unwrap()
                .unwrap();
            samples.push((Instant::now(), flush));
            let s = sites.pg_status();
            if let Some(l) = lsn_field(&s["dr_durable_lsn"]) {
                dr.push((Instant::now(), l));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // For each primary sample, how long until the DR copy held it.
        let mut delays: Vec<Duration> = samples
            .iter()
            .filter_map(|(t, l)| {
                dr.iter()
                    .find(|(t2, l2)| t2 >= t && l2 >= l)
                    .map(|(t2, _)| t2.duration_since(*t))
            })
            .collect();
        let covered = delays.len();
        delays.sort();
        let pct = |p: usize| delays[(delays.len() - 1) * p / 100];
        println!(
            "{mode}: {} samples, {covered} reached the DR site; delay p50 {:?}, p99 {:?}, max {:?}",
            samples.len(),
            pct(50),
            pct(99),
            delays.last().unwrap()
        );
        // The last few samples may not have been followed by a DR sample yet.
        assert!(
            covered + 3 >= samples.len(),
            "{mode}: DR copy stopped following"
        );
        assert!(
            *delays.last().unwrap() < Duration::from_secs(1),
            "{mode}: the DR copy lagged by more than a second"
        );
        phase(t0, &format!("{mode} trickle measured"));
    }
}

/// Segment files of timeline `tli` sealed at Rochester.
fn sealed_on(d: &Daemon, tli: u32) -> Vec<String> {
    let prefix = format!("{tli:08X}");
    dir_digests(&d.data_dir().join("streams").join(STREAM).join("segments"))
        .into_keys()
        .filter(|n| n.len() == 24 && n.starts_with(&prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_local_standby_is_followed() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t0 = Instant::now();
    let sites = Sites::new(
        &pg,
        &SitesOptions {
            local_standby: true,
            ..SitesOptions::mode("async")
        },
    )
    .await;
    let local = sites.local.as_ref().unwrap();
    let a = &sites.primary;
    a.psql("CREATE TABLE t (id bigint PRIMARY KEY)").unwrap();
    let dr = sites.standby();
    a.psql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
        .unwrap();
    a.psql("SELECT pg_switch_wal()").unwrap();
    phase(t0, "primary, local standby, DR standby up");

    // A planned local switch: the primary stops cleanly (the local standby
    // has everything), the local standby is promoted to timeline 2.
    a.stop().unwrap();
    local.promote().unwrap();
    assert_eq!(local.psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    local
        .psql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g")
        .unwrap();
    // Complete the segment holding the new rows, and start the next one, so
    // that Rochester seals it and the DR standby can restore it.
    local.psql("SELECT pg_switch_wal()").unwrap();
    local.psql("INSERT INTO t VALUES (2001)").unwrap();
    local.psql("SELECT pg_switch_wal()").unwrap();
    phase(t0, "local standby promoted to timeline 2 and written to");

    // drd followed by itself: the history file and timeline 2's segments
    // are at Rochester, and the DR standby replays the rows written there.
    let side = sites
        .b
        .data_dir()
        .join("streams")
        .join(STREAM)
        .join("files");
    wait_for(
        "00000002.history and timeline 2 segments at Rochester",
        Duration::from_secs(60),
        || async {
            (side.join("00000002.history").exists() && sealed_on(&sites.b, 2).len() >= 2)
                .then_some(())
        },
    )
    .await;
    let history = std::fs::read_to_string(side.join("00000002.history")).unwrap();
    assert!(history.starts_with("1\t"), "{history:?}");
    wait_for(
        "the DR standby at the rows written on timeline 2",
        Duration::from_secs(60),
        || async {
            let max = dr.psql("SELECT coalesce(max(id), 0) FROM t").ok()?;
            (max.parse::<u64>().ok()? >= 2000).then_some(())
        },
    )
    .await;
    let replayed = dr.psql("SELECT pg_last_wal_replay_lsn()").unwrap();
    let log = sites.a.log_text();
    assert!(
        log.contains("following timeline 2"),
        "drd's log names the switch:\n{log}"
    );
    let j = sites.pg_status();
    assert_eq!(j["timeline"], 2, "{j}");
    phase(
        t0,
        &format!(
            "followed: {} timeline 2 segments at Rochester, the DR standby at row 2000 \
             (replayed to {replayed})",
            sealed_on(&sites.b, 2).len()
        ),
    );
}
