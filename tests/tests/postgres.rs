//! drd wired to a real PostgreSQL (issue 7). The primary cluster archives
//! through `drctl wal-push` into the Verona drd's spool (`mode = "sync"`),
//! which ships to Rochester; a DR standby built with `pg_basebackup` restores
//! through `drctl wal-fetch`. Under load the primary PostgreSQL and its drd
//! are killed -9; `drctl failover` promotes Rochester, whose promote hook
//! (`deploy/postgresql/promote-hook.sh`) promotes the standby. Then: every
//! transaction whose WAL was sealed at Rochester before the kill is in the DR
//! database (so every one PostgreSQL counted as archived), the DR database
//! takes writes, and its new timeline — segments and `.history` file — ships
//! back once Verona rejoins.
//!
//! PostgreSQL refuses to run as root. When the test runs as root (CI), the
//! PostgreSQL programs run as the `postgres` OS user (`runuser`) in
//! directories it owns, and both drds give their control socket to the
//! `postgres` group with `control.socket_group` — the deployment mechanism,
//! not a test-only opening (the temp dir is made traversable, 0755, so that
//! user can reach the sockets and run the copied `drctl`). Without
//! PostgreSQL the test fails in CI (`CI=true`) and is skipped, with the
//! reason printed, elsewhere.

use drd_tests::pg::{
    require_postgres, segment_end_lsn, Cluster, ClusterOptions, Loader, LoaderOptions,
};
use drd_tests::pgsites::{drctl_for_postgres, open_to_postgres};
use drd_tests::*;
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `initdb --wal-segsize=1`: 1 MiB segments keep the test quick.
const PG_SEGMENT: u64 = 1 << 20;
/// The loader asks for a segment switch after this many transactions, so
/// segments get archived while it runs.
const ROWS_PER_SWITCH: u64 = 40;

/// Complete (sealed, verified) segments in a landing directory, with SHA-256.
fn sealed_segments(landing: &Path) -> BTreeMap<String, String> {
    dir_digests(landing)
        .into_iter()
        .filter(|(n, _)| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

fn side_dir(d: &Daemon) -> PathBuf {
    d.data_dir().join("streams").join(STREAM).join("files")
}

fn landing(d: &Daemon) -> PathBuf {
    d.data_dir().join("streams").join(STREAM).join("segments")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

async fn wait_role(d: &Daemon, want: &str) {
    wait_for(
        &format!("{} to become {want}", d.name),
        Duration::from_secs(30),
        || async {
            let s = d.status().await.ok()?;
            drd::display::role_name(s.role)
                .eq_ignore_ascii_case(want)
                .then_some(())
        },
    )
    .await;
}

fn phase(t0: Instant, what: &str) {
    println!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archives_through_drd_and_fails_over_to_the_dr_standby() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t0 = Instant::now();
    let root = tempfile::Builder::new()
        .prefix("drd-pg-")
        .tempdir()
        .unwrap();
    let r = root.path();
    // The postgres user must reach the sockets and run drctl.
    let drctl_bin = drctl_for_postgres(r);
    let pgdir = r.join("pg");
    std::fs::create_dir_all(&pgdir).unwrap();
    pg.give(&pgdir).unwrap();

    // Two sites, mTLS between them, spool sources; Verona archives in sync
    // mode, Rochester (whose database archives only after a promotion, while
    // Verona is down) in async mode.
    let certs = make_certs(r);
    let (a_port, b_port) = (free_port(), free_port());
    let (a_spool, b_spool) = (r.join("verona-spool"), r.join("rochester-spool"));
    std::fs::create_dir_all(&a_spool).unwrap();
    std::fs::create_dir_all(&b_spool).unwrap();
    let standby_data = pgdir.join("standby");
    let hook = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy/postgresql/promote-hook.sh");
    let tuning =
        "[tuning]\nidle_timeout_ms = 4000\nkeepalive_interval_ms = 300\nreconnect_max_ms = 1000\n";
    let stream = |spool: &Path, peer_port: u16, peer_name: &str, mode: &str| {
        format!(
            "[[stream]]\nname = \"{STREAM}\"\nwal_dir = \"{}\"\npeer = \"https://127.0.0.1:{peer_port}\"\n\
             peer_name = \"{peer_name}\"\nsource = \"spool\"\nmode = \"{mode}\"\nsync_timeout_seconds = 30\n",
            spool.display()
        )
    };
    let mut a = Daemon::new(
        r,
        "verona",
        PRIMARY_ID,
        &format!(
            "initial_role = \"primary\"\n[replica]\nlisten = \"127.0.0.1:{a_port}\"\n{}{tuning}{}",
            stream(&a_spool, b_port, REPLICA_ID, "sync"),
            tls_section(&certs, PRIMARY_ID)
        ),
    );
    let promote = format!(
        "PGDATA='{}' PGBIN='{}' sh '{}'",
        standby_data.display(),
        pg.bin.display(),
        hook.display()
    );
    let mut b = Daemon::new(
        r,
        "rochester",
        REPLICA_ID,
        &format!(
            "initial_role = \"replica\"\n[replica]\nlisten = \"127.0.0.1:{b_port}\"\n{}{tuning}\
             [hooks]\npromote = \"{promote}\"\ntimeout_seconds = 90\n{}",
            stream(&b_spool, a_port, PRIMARY_ID, "async"),
            tls_section(&certs, REPLICA_ID)
        ),
    );
    for d in [&a, &b] {
        open_to_postgres(&pg, d);
    }
    b.start_ready().await;
    a.start_ready().await;
    if let Some((_, _, gid)) = &pg.run_as {
        let m = std::fs::metadata(&a.socket).unwrap();
        assert_eq!(m.gid(), *gid, "control.socket_group applied");
        assert_eq!(m.mode() & 0o777, 0o660);
    }
    phase(t0, "drds up");

    // The primary cluster archives through Verona's drd.
    let (a_sock, b_sock, drctl_path) = (
        a.socket.display().to_string(),
        b.socket.display().to_string(),
        drctl_bin.display().to_string(),
    );
    let primary = Cluster::init(
        &pg,
        &pgdir,
        "primary",
        &ClusterOptions {
            wal_segment_mib: 1,
            conf: format!(
                "archive_mode = on\narchive_command = '{drctl_path} --socket {a_sock} wal-push %p'\n\
                 max_wal_senders = 4\nshared_buffers = 16MB\nlog_line_prefix = '%m [%p] '\n"
            ),
            tcp: true,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    primary.start().unwrap();
    primary
        .psql("CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
        .unwrap();
    primary.psql("SELECT pg_switch_wal()").unwrap();
    let first = wait_for(
        "a first segment archived",
        Duration::from_secs(60),
        || async {
            let w = primary
                .psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
                .unwrap();
            (!w.is_empty()).then_some(w)
        },
    )
    .await;
    phase(t0, &format!("primary up; {first} archived"));

    // Sync mode: archived means sealed at Rochester, byte-identical.
    let spooled = sha256_file(&a_spool.join(&first)).unwrap();
    assert_eq!(
        sha256_file(&landing(&b).join(&first)).unwrap(),
        spooled,
        "an archived segment is complete and verified at the replica"
    );
    // Pushed twice: success. Different bytes under the same name: refused.
    let again = r.join("again");
    std::fs::create_dir_all(&again).unwrap();
    std::fs::copy(a_spool.join(&first), again.join(&first)).unwrap();
    let j = drctl_json(
        &a.socket,
        &["wal-push", again.join(&first).to_str().unwrap()],
        0,
    );
    assert_eq!(j["already_present"], true, "{j}");
    assert_eq!(j["replica_confirmed"], true, "{j}");
    assert_eq!(j["mode"], "sync");
    let forged = r.join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    let mut bytes = std::fs::read(a_spool.join(&first)).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(forged.join(&first), &bytes).unwrap();
    let (code, _, err) = drctl(
        &a.socket,
        &["wal-push", forged.join(&first).to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(sha256_file(&a_spool.join(&first)).unwrap(), spooled);
    assert_eq!(sha256_file(&landing(&b).join(&first)).unwrap(), spooled);
    std::fs::write(forged.join("postgresql.conf"), b"x").unwrap();
    let (code, _, err) = drctl(
        &a.socket,
        &["wal-push", forged.join("postgresql.conf").to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a file PostgreSQL archives"), "{err}");

    // The DR standby: a base backup that restores through drctl wal-fetch.
    let standby = Cluster::basebackup_from(&primary, &pgdir, "standby", &[]).unwrap();
    assert_eq!(standby.data, standby_data);
    let backup_label = wait_for(
        "the .backup file at Rochester",
        Duration::from_secs(30),
        || async {
            dir_digests(&side_dir(&b))
                .into_keys()
                .find(|n| n.ends_with(".backup"))
        },
    )
    .await;
    assert_eq!(
        sha256_file(&side_dir(&b).join(&backup_label)).unwrap(),
        sha256_file(&side_dir(&a).join(&backup_label)).unwrap()
    );
    standby
        .configure(&format!(
            "restore_command = '{drctl_path} --socket {b_sock} wal-fetch %f %p'\n\
             archive_command = '{drctl_path} --socket {b_sock} wal-push %p'\n\
             wal_retrieve_retry_interval = '200ms'\nrecovery_target_timeline = 'latest'\n"
        ))
        .unwrap();
    let signal = standby.data.join("standby.signal");
    std::fs::write(&signal, b"").unwrap();
    pg.give(&signal).unwrap();
    standby.start().unwrap();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
    phase(t0, &format!("standby up ({backup_label} at Rochester)"));

    // Load, until a good number of segments went through drd.
    let loader = Loader::start(
        &primary,
        &LoaderOptions {
            switch_every: Some(ROWS_PER_SWITCH),
            ..LoaderOptions::default()
        },
        &r.join("loader.err"),
    )
    .unwrap();
    let sealed_at_start = sealed_segments(&landing(&b)).len();
    wait_for(
        "segments archived under load",
        Duration::from_secs(90),
        || async {
            let n = sealed_segments(&landing(&b)).len();
            (n >= sealed_at_start + 10 && loader.acknowledged() >= 400).then_some(())
        },
    )
    .await;
    let archived = primary
        .psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        .unwrap();
    let killed = primary.kill9().unwrap();
    a.kill9();
    let receipts = loader.finish(Duration::from_secs(30)).receipts;
    phase(
        t0,
        &format!(
            "killed -9: the primary ({killed} processes) and its drd; {} transactions \
             acknowledged, {archived} archived",
            receipts.len()
        ),
    );

    // What Rochester holds: everything PostgreSQL counted as archived, and
    // byte-identical to what Verona's spool still holds (the default
    // spool_retention of 0 removed the rest once Rochester had it sealed,
    // i.e. its SHA-256 matched Verona's; issue 16). At least Verona's last
    // segment, or the last one Rochester acked sealed, is kept.
    let sealed = sealed_segments(&landing(&b));
    let last = sealed.keys().next_back().unwrap().clone();
    assert!(
        sealed.contains_key(&archived) && archived <= last,
        "sync mode: {archived} was archived but is not sealed at Rochester (last {last})"
    );
    let still_spooled: Vec<_> = sealed.keys().filter(|n| a_spool.join(n).exists()).collect();
    assert!(
        !still_spooled.is_empty(),
        "Verona keeps its last segment and the one Rochester acked last"
    );
    println!(
        "{} of {} segments sealed at Rochester are still in Verona's spool",
        still_spooled.len(),
        sealed.len()
    );
    for (name, sha) in sealed.iter().filter(|(n, _)| a_spool.join(n).exists()) {
        assert_eq!(
            &sha256_file(&a_spool.join(name)).unwrap(),
            sha,
            "{name} differs between the sites"
        );
    }

    let rep = drctl_json(
        &b.socket,
        &[
            "failover",
            "--yes",
            "--reason",
            "Verona down: PostgreSQL and drd killed",
        ],
        0,
    );
    println!("failover: {rep}");
    assert_eq!(rep["new_epoch"], 2);
    assert!(
        rep["hook_report"]
            .as_str()
            .unwrap()
            .contains("promote hook: succeeded"),
        "{rep}\n--- drd ---\n{}\n--- standby ---\n{}",
        b.log_text(),
        standby.log_tail()
    );
    wait_for(
        "the DR database promoted",
        Duration::from_secs(60),
        || async { (standby.psql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(()) },
    )
    .await;
    phase(t0, &format!("failed over; last sealed segment {last}"));

    // Every transaction whose commit lies in a segment sealed at Rochester.
    let boundary = segment_end_lsn(&last, PG_SEGMENT).unwrap();
    let at_dr: HashSet<u64> = standby
        .psql("SELECT id FROM t")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let required: Vec<u64> = receipts
        .iter()
        .filter(|r| r.after_lsn <= boundary)
        .map(|r| r.id)
        .collect();
    let missing: Vec<u64> = required
        .iter()
        .copied()
        .filter(|id| !at_dr.contains(id))
        .collect();
    println!(
        "{} acknowledged, {} with their commit in a sealed segment (LSN <= {boundary:#x}), \
         {} rows at the DR database, {} missing",
        receipts.len(),
        required.len(),
        at_dr.len(),
        missing.len()
    );
    assert!(
        required.len() >= 200,
        "too few transactions to prove anything: {}",
        required.len()
    );
    assert!(missing.is_empty(), "lost at the DR site: {missing:?}");

    // The DR database takes writes; its new timeline is archived at Rochester.
    standby
        .psql("INSERT INTO t(id) SELECT g FROM generate_series(10000001, 10000100) g")
        .unwrap();
    standby.psql("SELECT pg_switch_wal()").unwrap();
    let tl2 = wait_for(
        "timeline 2 archived at Rochester",
        Duration::from_secs(60),
        || async {
            let seg = dir_digests(&b_spool)
                .into_keys()
                .find(|n| n.starts_with("00000002"))?;
            side_dir(&b)
                .join("00000002.history")
                .exists()
                .then_some(seg)
        },
    )
    .await;
    phase(
        t0,
        &format!("DR database writes; {tl2} and 00000002.history archived"),
    );

    // Verona comes back (drd only; its database is rebuilt separately),
    // learns it is fenced, rejoins, and receives the new timeline.
    a.start_ready().await;
    wait_role(&a, "fenced").await;
    let rj = drctl_json(&a.socket, &["rejoin", "--reason", "Verona is back"], 0);
    println!("rejoin: {rj}");
    wait_for(
        "the new timeline at Verona",
        Duration::from_secs(60),
        || async {
            let s = b.stream().await.ok()?;
            if !(s.connected && s.lag_bytes == 0) {
                return None;
            }
            let theirs = dir_digests(&landing(&a));
            let all_there = dir_digests(&b_spool)
                .iter()
                .all(|(n, sha)| theirs.get(n) == Some(sha));
            (all_there && side_dir(&a).join("00000002.history").exists()).then_some(())
        },
    )
    .await;
    let history = sha256_file(&side_dir(&b).join("00000002.history")).unwrap();
    assert_eq!(
        sha256_file(&side_dir(&a).join("00000002.history")).unwrap(),
        history
    );
    let fetched = r.join("fetched");
    std::fs::create_dir_all(&fetched).unwrap();
    let dest = fetched.join("00000002.history");
    let (code, _, err) = drctl(
        &a.socket,
        &["wal-fetch", "00000002.history", dest.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(sha256_file(&dest).unwrap(), history);
    let (code, _, _) = drctl(
        &a.socket,
        &[
            "wal-fetch",
            "00000009.history",
            fetched.join("x").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "a missing history file exits non-zero");
    phase(
        t0,
        "new timeline and history file at Verona, byte-identical",
    );

    // Side files are write-once too (at Rochester, now primary, async).
    std::fs::copy(
        side_dir(&b).join("00000002.history"),
        again.join("00000002.history"),
    )
    .unwrap();
    let j = drctl_json(
        &b.socket,
        &["wal-push", again.join("00000002.history").to_str().unwrap()],
        0,
    );
    assert_eq!(j["already_present"], true, "{j}");
    std::fs::write(forged.join("00000002.history"), b"1\t0/DEADBEEF\tforged\n").unwrap();
    let (code, _, err) = drctl(
        &b.socket,
        &[
            "wal-push",
            forged.join("00000002.history").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        sha256_file(&side_dir(&b).join("00000002.history")).unwrap(),
        history
    );
    phase(t0, "done");
}

/// The example configurations in deploy/postgresql/ are valid.
#[test]
fn deploy_examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy/postgresql");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(e.path()).unwrap();
            let c = drd::config::Config::parse(&text)
                .unwrap_or_else(|err| panic!("{}: {err:#}", e.path().display()));
            let streaming = e.path().to_string_lossy().contains("streaming");
            let want = if streaming {
                drd::config::SourceMode::Postgres
            } else {
                drd::config::SourceMode::Spool
            };
            assert_eq!(c.streams[0].source, want, "{}", e.path().display());
            assert_eq!(c.streams[0].postgres.is_some(), streaming);
            assert_eq!(c.control_socket_group.as_deref(), Some("postgres"));
            n += 1;
        }
    }
    assert_eq!(n, 3);
}

/// The shared harness (`drd_tests::pg`) against a real server: a
/// four-connection Loader's ids and receipts, a standby from
/// `Cluster::basebackup_from` that replays past the last receipt, and its
/// promotion.
#[test]
fn harness_loader_receipts_and_a_promoted_standby() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let root = tempfile::Builder::new()
        .prefix("drd-pgh-")
        .tempdir()
        .unwrap();
    chmod(root.path(), 0o755);
    let pgdir = root.path().join("pg");
    let primary = Cluster::init(
        &pg,
        &pgdir,
        "primary",
        &ClusterOptions {
            wal_segment_mib: 1,
            conf: "max_wal_senders = 4\n".into(),
            hba: "local all all trust".into(),
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    primary.start().unwrap();
    primary
        .psql("CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();
    let opts = LoaderOptions {
        conns: 4,
        ..LoaderOptions::default()
    };
    let loader = Loader::start(&primary, &opts, &root.path().join("loader.err")).unwrap();
    let t = Instant::now();
    while loader.acknowledged() < 200 {
        assert!(t.elapsed() < Duration::from_secs(60), "loader too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    let load = loader.finish(Duration::from_secs(10));
    let present: Vec<u64> = primary
        .psql("SELECT id FROM t ORDER BY id")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let acked: Vec<u64> = load.receipts.iter().map(|r| r.id).collect();
    // A clean stop: every row sent was answered, and is there.
    assert_eq!(load.attempted, acked);
    assert_eq!(present, acked);
    for k in 1..=4 {
        let mine: Vec<u64> = acked.iter().copied().filter(|id| id % 4 == k % 4).collect();
        let want: Vec<u64> = (0..mine.len() as u64).map(|i| k + 4 * i).collect();
        assert_eq!(mine, want, "session {k}'s ids");
    }
    assert!(load.receipts.iter().all(|r| r.before_lsn < r.after_lsn));
    let last = load.receipts.iter().map(|r| r.after_lsn).max().unwrap();

    let standby = Cluster::basebackup_from(&primary, &pgdir, "standby", &["-R"]).unwrap();
    standby.start().unwrap();
    let t = Instant::now();
    while standby.replay_lsn().unwrap().is_none_or(|l| l < last) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "standby not replaying"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        standby.psql("SELECT count(*) FROM t").unwrap(),
        acked.len().to_string()
    );
    standby.promote().unwrap();
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    assert!(primary.kill9().unwrap() >= 5);
    println!(
        "{} rows over 4 sessions; standby replayed to {}, promoted",
        acked.len(),
        drd_tests::pg::format_lsn(last)
    );
}
