//! Issue 20's pgbackrest baseline: `pgbackrest archive-push` of the same
//! PostgreSQL WAL segments drd catches up, one call per segment as
//! PostgreSQL's `archive_command` makes them, into a local repository
//! (`compress-type=none`, as drd's default `compression = "none"`; the
//! repository's files synced, pgbackrest's default). The stanza is created
//! offline (`--no-online`) from the generating cluster's data directory, so
//! pgbackrest's checks of the WAL's system identifier pass as in service.

use crate::procs::children_cpu_seconds;
use anyhow::Context;
use drd_tests::pg::run_output;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The pushes' totals.
pub struct Push {
    pub version: String,
    pub segments: usize,
    pub bytes: u64,
    pub secs: f64,
    /// CPU seconds of all the pgbackrest processes.
    pub cpu: f64,
}

impl Push {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }
}

/// `pgbackrest version`, or None when it is not installed.
pub fn version() -> Option<String> {
    let out = Command::new("pgbackrest").arg("version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Pushes `segments` (full WAL segments of the cluster at `pgdata`) into a
/// fresh repository below `dir`.
pub fn archive_push(pgdata: &Path, segments: &[PathBuf], dir: &Path) -> anyhow::Result<Push> {
    let version = version().context("pgbackrest is not installed")?;
    let conf = dir.join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={d}/repo\ncompress-type=none\nlog-level-console=warn\n\
             log-level-file=off\nlock-path={d}/lock\nspool-path={d}/spool\narchive-async=n\n\
             \n[bench]\npg1-path={p}\n",
            d = dir.display(),
            p = pgdata.display()
        ),
    )?;
    let pgbr = || {
        let mut c = Command::new("pgbackrest");
        c.arg(format!("--config={}", conf.display()))
            .arg("--stanza=bench");
        c
    };
    let mut c = pgbr();
    c.args(["--no-online", "stanza-create"]);
    run_output(c, "pgbackrest stanza-create")?;
    let cpu0 = children_cpu_seconds();
    let started = Instant::now();
    let mut bytes = 0;
    for s in segments {
        let mut c = pgbr();
        c.arg("archive-push").arg(s);
        run_output(c, &format!("pgbackrest archive-push {}", s.display()))?;
        bytes += std::fs::metadata(s)?.len();
    }
    Ok(Push {
        version,
        segments: segments.len(),
        bytes,
        secs: started.elapsed().as_secs_f64(),
        cpu: children_cpu_seconds() - cpu0,
    })
}
