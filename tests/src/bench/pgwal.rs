//! Realistic WAL for the zstd measurement: a throwaway PostgreSQL cluster
//! (16 MiB segments, default WAL settings) under `pgbench -i` and then a
//! timed `pgbench` run; every segment it completes is copied out by
//! `archive_command`, exactly the files a drd stream would ship.
//!
//! PostgreSQL refuses to run as root; as root the server programs run as
//! the `postgres` OS user (`runuser`) in directories it owns, as
//! tests/tests/postgres.rs does. The cluster is stopped when the function
//! returns, whatever happened.

use anyhow::{bail, Context};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// PostgreSQL's default segment size (what `initdb` gives without
/// `--wal-segsize`).
pub const PG_SEGMENT: u64 = 16 << 20;

/// Completed WAL segments from a pgbench run.
pub struct PgWal {
    /// Holds `archive/` with the segments; removed when dropped.
    pub _root: tempfile::TempDir,
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

struct Pg {
    bin: PathBuf,
    /// (user, uid, gid) the server programs run as when we are root.
    run_as: Option<(String, u32, u32)>,
}

fn os_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The newest `/usr/lib/postgresql/*/bin` (or `pg_config --bindir`) with
/// everything this needs, or why not.
fn find() -> anyhow::Result<Pg> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let bin = match found.pop() {
        Some((_, b)) => b,
        None => match Command::new("pg_config").arg("--bindir").output() {
            Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            _ => bail!(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no pg_config); \
                 apt-get install -y postgresql"
            ),
        },
    };
    for prog in ["initdb", "pg_ctl", "psql", "pgbench", "postgres"] {
        if !bin.join(prog).exists() {
            bail!("{} is missing", bin.join(prog).display());
        }
    }
    let root = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid()) == 0;
    let run_as = if root {
        let (uid, gid) = os_user("postgres").context(
            "running as root, and PostgreSQL refuses root, but there is no `postgres` OS user",
        )?;
        Some(("postgres".to_string(), uid, gid))
    } else {
        None
    };
    Ok(Pg { bin, run_as })
}

impl Pg {
    /// A server program run as the cluster owner in `cwd`.
    fn cmd(&self, prog: &str, cwd: &Path) -> Command {
        let exe = self.bin.join(prog);
        let mut c = match &self.run_as {
            Some((user, _, _)) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        c.current_dir(cwd).env_remove("PGDATA");
        c
    }

    fn give(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((_, uid, gid)) = &self.run_as {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .with_context(|| format!("chown {} to postgres", path.display()))?;
        }
        Ok(())
    }

    /// A client program (psql, pgbench) over loopback TCP as `postgres`.
    fn client(&self, prog: &str, port: u16) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .stdin(Stdio::null());
        c
    }
}

fn run(mut c: Command, what: &str) -> anyhow::Result<String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Stops the cluster (fast: a shutdown checkpoint, and the archiver copies
/// every completed segment before it exits) when dropped.
struct Running<'a> {
    pg: &'a Pg,
    data: PathBuf,
    dir: PathBuf,
}

impl Running<'_> {
    fn stop(&self) -> anyhow::Result<()> {
        let mut c = self.pg.cmd("pg_ctl", &self.dir);
        c.args([
            "-D",
            self.data.to_str().unwrap_or_default(),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "stop",
        ]);
        run(c, "pg_ctl stop").map(|_| ())
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let mut c = self.pg.cmd("pg_ctl", &self.dir);
            c.args([
                "-D",
                self.data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            let _ = c.status();
        }
    }
}

/// initdb, `pgbench -i -s SCALE`, CHECKPOINT, `pgbench -T SECS`, stop; the
/// archived segments. Errors say what is missing or what failed.
pub fn generate(scale: u32, secs: u32) -> anyhow::Result<PgWal> {
    let started = Instant::now();
    let pg = find()?;
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
    let data = dir.join("data");
    let data_s = data.to_str().context("non-UTF-8 temp path")?;
    let mut c = pg.cmd("initdb", &dir);
    c.args([
        "-D",
        data_s,
        "-U",
        "postgres",
        "--auth=trust",
        "-N",
        "-E",
        "UTF8",
    ]);
    run(c, "initdb")?;
    let port = drd_tests::free_port();
    // fsync off: the WAL's contents do not depend on it, and the machine is
    // shared. Everything else about WAL stays at PostgreSQL's defaults
    // (wal_level replica, full_page_writes on, wal_compression off).
    let conf = format!(
        "\n# drd-bench\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n\
         fsync = off\narchive_mode = on\n\
         archive_command = 'test ! -f {a}/%f && cp %p {a}/%f'\n",
        d = dir.display(),
        a = archive.display()
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
        .context("configure postgresql.conf")?;
    let log = dir.join("postgres.log");
    let mut c = pg.cmd("pg_ctl", &dir);
    c.args([
        "-D",
        data_s,
        "-l",
        log.to_str().unwrap_or_default(),
        "-w",
        "-t",
        "60",
        "start",
    ]);
    run(c, "pg_ctl start").with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
    let cluster = Running {
        pg: &pg,
        data: data.clone(),
        dir: dir.clone(),
    };
    let version = run(
        {
            let mut c = Command::new(pg.bin.join("postgres"));
            c.arg("--version");
            c
        },
        "postgres --version",
    )?
    .trim()
    .to_string();
    let mut c = pg.client("pgbench", port);
    c.args(["-i", "-q", "-s", &scale.to_string(), "postgres"]);
    run(c, "pgbench -i")?;
    // The run's segments start where the load ended; a checkpoint first,
    // so the run writes full-page images as a database in service does.
    let mut c = pg.client("psql", port);
    c.args(["-X", "-A", "-t", "-q", "-d", "postgres", "-c", "CHECKPOINT"]);
    run(c, "psql CHECKPOINT")?;
    let mut c = pg.client("psql", port);
    c.args([
        "-X",
        "-A",
        "-t",
        "-q",
        "-d",
        "postgres",
        "-c",
        "SELECT pg_walfile_name(pg_current_wal_insert_lsn())",
    ]);
    let run_first = run(c, "psql pg_walfile_name")?.trim().to_string();
    let mut c = pg.client("pgbench", port);
    c.args(["-c", "4", "-j", "2", "-T", &secs.to_string(), "postgres"]);
    let out = run(c, "pgbench")?;
    let tps = out
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("")
        .to_string();
    cluster.stop()?;
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
        segments,
        version,
        tps,
        secs: started.elapsed().as_secs_f64(),
    })
}
