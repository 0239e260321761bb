//! Realistic WAL for the zstd measurement: a throwaway PostgreSQL cluster
//! (16 MiB segments, default WAL settings) under `pgbench -i` and then a
//! timed `pgbench` run; every segment it completes is copied out by
//! `archive_command`, exactly the files a drd stream would ship.
//!
//! The cluster is [`drd_tests::pg`]'s (which runs the server programs as
//! the `postgres` OS user when we are root); it is stopped when the
//! function returns, whatever happened.

use anyhow::{anyhow, bail};
use drd_tests::pg::{find_postgres, run_output, Cluster, ClusterOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Instant;

/// PostgreSQL's default segment size (what `initdb` gives without
/// `--wal-segsize`).
pub const PG_SEGMENT: u64 = 16 << 20;

/// Completed WAL segments from a pgbench run.
pub struct PgWal {
    /// Holds `archive/` with the segments; removed when dropped.
    pub _root: tempfile::TempDir,
    /// The stopped cluster's data directory (pgbackrest's `pg1-path`).
    pub data: PathBuf,
    /// The segments in name order, each with whether `pgbench -i` (table
    /// load and index build) or the timed run wrote it.
    pub segments: Vec<(PathBuf, Phase)>,
    /// `postgres --version`.
    pub version: String,
    /// pgbench's own summary line (`tps = …`).
    pub tps: String,
    pub secs: f64,
}

/// Which workload a segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `pgbench -i`: COPY into pgbench_accounts, primary keys, VACUUM.
    Init,
    /// The timed TPC-B-like run (after a CHECKPOINT, so with full-page
    /// images as in steady operation).
    Run,
}

/// initdb, `pgbench -i -s SCALE`, CHECKPOINT, `pgbench -T SECS`, stop; the
/// archived segments. Errors say what is missing or what failed.
pub fn generate(scale: u32, secs: u32) -> anyhow::Result<PgWal> {
    let started = Instant::now();
    let pg = find_postgres().map_err(|e| anyhow!("{e:#}; apt-get install -y postgresql"))?;
    pg.program("pgbench")?;
    let root = tempfile::Builder::new()
        .prefix("drd-bench-pgwal-")
        .tempdir()?;
    // The postgres user must reach the directories below.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
    let dir = root.path().join("pg");
    let archive = root.path().join("archive");
    for d in [&dir, &archive] {
        std::fs::create_dir_all(d)?;
        pg.give(d)?;
    }
    // fsync off: the WAL's contents do not depend on it, and the machine is
    // shared. Everything else about WAL stays at PostgreSQL's defaults
    // (wal_level replica, full_page_writes on, wal_compression off).
    let cluster = Cluster::init(
        &pg,
        &dir,
        "data",
        &ClusterOptions {
            wal_segment_mib: (PG_SEGMENT >> 20) as u32,
            conf: format!(
                "fsync = off\narchive_mode = on\n\
                 archive_command = 'test ! -f {a}/%f && cp %p {a}/%f'\n",
                a = archive.display()
            ),
            ..ClusterOptions::default()
        },
    )?;
    cluster.start()?;
    let version = pg.version()?;
    let mut c = cluster.client("pgbench");
    c.args(["-i", "-q", "-s", &scale.to_string(), "postgres"]);
    run_output(c, "pgbench -i")?;
    // The run's segments start where the load ended; a checkpoint first,
    // so the run writes full-page images as a database in service does.
    cluster.psql("CHECKPOINT")?;
    let run_first = cluster.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")?;
    let mut c = cluster.client("pgbench");
    c.args(["-c", "4", "-j", "2", "-T", &secs.to_string(), "postgres"]);
    let out = run_output(c, "pgbench")?;
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("")
        .to_string();
    // A fast stop: the archiver copies every completed segment first.
    cluster.stop()?;
    let log = cluster.log.clone();
    let data = cluster.data.clone();
    drop(cluster);
    let mut segments: Vec<(PathBuf, Phase)> = std::fs::read_dir(&archive)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let is_segment = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
            let full = e.metadata().ok()?.len() == PG_SEGMENT;
            (is_segment && full).then(|| {
                let phase = if name < run_first {
                    Phase::Init
                } else {
                    Phase::Run
                };
                (e.path(), phase)
            })
        })
        .collect();
    segments.sort_by(|a, b| a.0.cmp(&b.0));
    if segments.is_empty() {
        bail!(
            "PostgreSQL archived no segment; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Ok(PgWal {
        _root: root,
        data,
        segments,
        version,
        tps,
        secs: started.elapsed().as_secs_f64(),
    })
}
