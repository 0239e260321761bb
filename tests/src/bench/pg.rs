//! The PostgreSQL part (issue 22): what drd's `source = "postgres"`
//! streaming costs a database's commits, and how fast it catches up a
//! slot's backlog, each next to PostgreSQL's own tool in the same run.
//!
//! One primary cluster (16 MiB segments, `pgbench -i -s 20`), then
//! `pgbench -c 8 -j 2 -M prepared` for `--pg-seconds` under four
//! configurations: no replication; PostgreSQL's synchronous standby (a
//! second cluster from `pg_basebackup -R` on this machine); drd in `async`
//! and in `sync` mode (a primary drd streaming from a physical slot and a DR
//! drd on loopback, mTLS). TPS from pgbench's summary, commit latency from
//! its per-transaction log (a TPC-B transaction commits once). Then WAL
//! catch-up: drd stopped while ≥ `--pg-catchup-mib` of WAL is written, the
//! slot's position pinned, and each tool timed [`CATCHUP_RUNS`] times from
//! that position to the same end LSN (alternating which goes first); each
//! tool's fastest run is its figure.
//!
//! A drd build that cannot stream from PostgreSQL fails its configurations
//! at `--check-config`; their rows say so, and the baselines are measured
//! and printed all the same.

use crate::procs::{Bins, Proc};
use crate::stats::{Row, Samples};
use anyhow::{bail, Context};
use drd_tests::pg::{find_postgres, format_lsn, Cluster, ClusterOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `pgbench -i -s`: 2 million accounts, ~300 MB.
const SCALE: u32 = 20;
/// `pgbench -c`: client sessions.
const CLIENTS: u32 = 8;
/// `pgbench -j`: client threads (one per core here).
const THREADS: u32 = 2;
/// The slot the drd stream is configured with, and the copy
/// `pg_receivewal` reads from.
const SLOT: &str = "drd_bench";
const COPY_SLOT: &str = "rw_bench";
/// Holds the catch-up's start for every run after the first: each run's
/// slot is a fresh copy of it.
const PIN_SLOT: &str = "catchup_start";
/// Catch-up runs of each tool, alternating which goes first; each tool's
/// fastest run is its figure (a run slowed by this VM's disk is not the
/// tool's speed, and a baseline must not be understated).
const CATCHUP_RUNS: usize = 3;
/// The PostgreSQL standby's `application_name` (its `cluster_name`).
const STANDBY: &str = "standby1";
/// drd's `application_name` in its conninfo (what
/// `synchronous_standby_names` names in sync mode).
const DRD_APP: &str = "drd";
/// Longest wait for a replication client to be streaming (and, in sync
/// mode, to be the synchronous standby).
const CONNECT_WITHIN: Duration = Duration::from_secs(60);
/// Past `--pg-seconds`, how long a pgbench run may take before it is
/// killed (commits that wait for a sync standby that is gone never end).
const PGBENCH_GRACE: Duration = Duration::from_secs(120);
/// Longest catch-up of either tool.
const CATCHUP_WITHIN: Duration = Duration::from_secs(600);

/// What the PostgreSQL part runs.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Length of each pgbench run (`--pg-seconds`).
    pub seconds: u32,
    /// WAL written while drd is paused, for the catch-up (`--pg-catchup-mib`).
    pub catchup_mib: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            seconds: 30,
            catchup_mib: 1024,
        }
    }
}

/// One pgbench run.
pub struct Pgbench {
    /// pgbench's "tps = … (without initial connection time)".
    pub tps: f64,
    /// Per-transaction latency from the `-l` log (ms).
    pub latency: Samples,
}

/// One configuration's outcome: a run, or why it was not measured.
pub struct Config {
    pub name: &'static str,
    pub setup: String,
    pub result: Result<Pgbench, String>,
}

/// A catch-up from the slot position to the end LSN.
pub struct CatchUp {
    pub bytes: u64,
    pub secs: f64,
}

impl CatchUp {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-6) / 1e6
    }
}

/// One tool's catch-up runs, in the order they ran.
pub struct CatchUps(Vec<CatchUp>);

impl CatchUps {
    /// The fastest run (there is at least one).
    fn best(&self) -> &CatchUp {
        self.0
            .iter()
            .max_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()))
            .expect("a tool's catch-up figures hold at least one run")
    }

    /// How many times faster this tool's best run is than `other`'s.
    fn speedup_over(&self, other: &CatchUps) -> f64 {
        self.best().mb_per_s() / other.best().mb_per_s().max(1e-6)
    }

    /// "best 346 MB/s (2.9 s); runs 301, 346, 322" for a table cell.
    fn cell(&self) -> String {
        let b = self.best();
        let runs: Vec<String> = self
            .0
            .iter()
            .map(|c| format!("{:.0}", c.mb_per_s()))
            .collect();
        format!(
            "best {:.0} MB/s ({:.1} s); runs {}",
            b.mb_per_s(),
            b.secs,
            runs.join(", ")
        )
    }
}

/// Everything the part measured.
pub struct Figures {
    /// `postgres --version`.
    pub version: String,
    pub configs: Vec<Config>,
    /// drd's catch-up runs and pg_receivewal's, or why not.
    pub drd_catchup: Result<CatchUps, String>,
    pub receivewal: Result<CatchUps, String>,
    /// (start, end) LSN of the catch-up.
    pub catchup_range: Option<(u64, u64)>,
    pub secs: f64,
}

/// Runs the part. Fails only when PostgreSQL itself cannot be set up; a
/// configuration that fails is reported in its row.
pub async fn measure(bins: &Bins, o: &Opts) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let pg =
        find_postgres().map_err(|e| anyhow::anyhow!("{e:#}; apt-get install -y postgresql"))?;
    for prog in ["pgbench", "pg_receivewal"] {
        pg.program(prog)?;
    }
    let root = tempfile::Builder::new().prefix("drd-bench-pg-").tempdir()?;
    // The postgres user must reach the directories below.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
    let pgdir = root.path().join("pg");
    let logs = root.path().join("pgbench");
    std::fs::create_dir_all(&logs)?;
    let primary = Cluster::init(
        &pg,
        &pgdir,
        "primary",
        &ClusterOptions {
            wal_segment_mib: 16,
            conf: "max_wal_senders = 10\nmax_replication_slots = 10\n\
                   log_line_prefix = '%m [%p] '\n"
                .into(),
            ..ClusterOptions::default()
        },
    )?;
    primary.start()?;
    let version = pg.version()?;
    eprintln!("pg: {version}; pgbench -i -s {SCALE}…");
    block(|| {
        let mut c = primary.client("pgbench");
        c.args(["-i", "-q", "-s", &SCALE.to_string(), "postgres"]);
        drd_tests::pg::run_output(c, "pgbench -i").map(drop)
    })?;

    let mut configs = Vec::new();
    eprintln!("pg: pgbench, no replication ({} s)…", o.seconds);
    configs.push(Config {
        name: "none",
        setup: "synchronous_standby_names = ''".into(),
        result: block(|| pgbench(&primary, &logs, "none", o.seconds)).map_err(err_line),
    });

    eprintln!(
        "pg: pgbench, PostgreSQL synchronous standby ({} s)…",
        o.seconds
    );
    configs.push(Config {
        name: "PG sync standby",
        setup: format!(
            "pg_basebackup -R on this machine, synchronous_standby_names = '{STANDBY}', \
             synchronous_commit = on"
        ),
        result: block(|| pg_standby_run(&primary, &pgdir, &logs, o.seconds)).map_err(err_line),
    });

    for mode in ["async", "sync"] {
        eprintln!("pg: pgbench, drd {mode} ({} s)…", o.seconds);
        let result = match DrdPair::start(bins, &primary, mode).await {
            Ok(pair) => {
                let r = drd_run(&primary, &pair, &logs, mode, o.seconds).await;
                drop(pair);
                let _ = block(|| drop_slot(&primary, SLOT));
                r.map_err(err_line)
            }
            Err(e) => Err(e),
        };
        configs.push(Config {
            name: if mode == "sync" { "drd sync" } else { "drd async" },
            setup: format!(
                "primary drd + DR drd on loopback (mTLS), source = \"postgres\", mode = \"{mode}\"{}",
                if mode == "sync" {
                    format!(", synchronous_standby_names = '{DRD_APP}'")
                } else {
                    String::new()
                }
            ),
            result,
        });
    }

    eprintln!(
        "pg: catch-up of {} MiB of WAL, drd vs pg_receivewal…",
        o.catchup_mib
    );
    let (drd_catchup, receivewal, catchup_range) =
        catch_up(bins, &primary, root.path(), o.catchup_mib).await;
    Ok(Figures {
        version,
        configs,
        drd_catchup,
        receivewal,
        catchup_range,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Runs blocking work (PostgreSQL's programs) on this worker thread
/// without stalling the runtime's other tasks.
fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// An error as one table cell: its chain on one line, shortened.
fn err_line(e: anyhow::Error) -> String {
    let s = format!("{e:#}").replace('\n', " ");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

/// `ALTER SYSTEM SET synchronous_standby_names` and a reload, waiting
/// until the server uses the new value.
fn set_sync_names(c: &Cluster, names: &str) -> anyhow::Result<()> {
    c.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{names}'"
    ))?;
    c.psql("SELECT pg_reload_conf()")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.psql("SHOW synchronous_standby_names")? != names {
        if Instant::now() > deadline {
            bail!("synchronous_standby_names = '{names}' not in effect after a reload");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until `app` is streaming from `c` (and, with `sync`, is its
/// synchronous standby).
fn wait_streaming(c: &Cluster, app: &str, sync: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONNECT_WITHIN;
    loop {
        let row = c.psql(&format!(
            "SELECT state || '|' || sync_state FROM pg_stat_replication \
             WHERE application_name = '{app}'"
        ))?;
        let ok = row.lines().any(|l| {
            l.split_once('|')
                .is_some_and(|(state, ss)| state == "streaming" && (!sync || ss == "sync"))
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{app} not streaming{} within {CONNECT_WITHIN:?} (pg_stat_replication: {row:?})",
                if sync {
                    " as the synchronous standby"
                } else {
                    ""
                }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `c` with a deadline; its stdout, or an error with its stderr.
fn run_within(mut c: Command, what: &str, within: Duration) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = c
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} still running after {within:?}: killed\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "{what} failed ({status}):\n{out}{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
    }
    Ok(out)
}

/// A CHECKPOINT (so every run starts writing full-page images alike),
/// then `pgbench -c 8 -j 2 -T secs -M prepared -l`; TPS and the latency
/// of every transaction from the logs `<dir>/<name>.<pid>[.<thread>]`.
fn pgbench(c: &Cluster, dir: &Path, name: &str, secs: u32) -> anyhow::Result<Pgbench> {
    c.psql("CHECKPOINT")?;
    let prefix = dir.join(name.replace(' ', "-"));
    let mut cmd = c.client("pgbench");
    cmd.args(["-c", &CLIENTS.to_string(), "-j", &THREADS.to_string()])
        .args(["-T", &secs.to_string(), "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg("postgres");
    let out = run_within(
        cmd,
        &format!("pgbench ({name})"),
        Duration::from_secs(secs.into()) + PGBENCH_GRACE,
    )?;
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no `tps = ` line in pgbench's output:\n{out}"))?;
    let stem = prefix
        .file_name()
        .and_then(|n| n.to_str())
        .context("log prefix")?
        .to_string();
    let mut latency = Samples::default();
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with(&format!("{stem}.")) {
            continue;
        }
        // "client_id transaction_no time script_no time_epoch time_us"; time in µs.
        for line in std::fs::read_to_string(e.path())?.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                latency.push(Duration::from_micros(us));
            }
        }
    }
    if latency.len() == 0 {
        bail!(
            "pgbench wrote no per-transaction log under {}",
            dir.display()
        );
    }
    Ok(Pgbench { tps, latency })
}

/// PostgreSQL's own synchronous standby: a base backup streaming from the
/// primary, named in synchronous_standby_names for one pgbench run; the
/// primary goes back to no standby, and the standby is stopped, after.
fn pg_standby_run(
    primary: &Cluster,
    pgdir: &Path,
    logs: &Path,
    secs: u32,
) -> anyhow::Result<Pgbench> {
    let standby = Cluster::basebackup_from(primary, pgdir, STANDBY, &["-R"])?;
    // The walreceiver's application_name is cluster_name (pg_basebackup -R
    // writes none into primary_conninfo).
    standby.configure(&format!("cluster_name = '{STANDBY}'\nhot_standby = on\n"))?;
    standby.start()?;
    wait_streaming(primary, STANDBY, false)?;
    set_sync_names(primary, STANDBY)?;
    let r = wait_streaming(primary, STANDBY, true)
        .and_then(|()| pgbench(primary, logs, "pg-sync-standby", secs));
    set_sync_names(primary, "")?;
    standby.stop()?;
    r
}

/// A primary drd streaming from the cluster through slot [`SLOT`], and a DR
/// drd on loopback with mTLS; stopped when dropped.
struct DrdPair {
    // Field order is drop order: the daemons stop before their directory goes.
    primary: Proc,
    /// Runs for as long as the pair does (nothing asks it anything).
    _replica: Proc,
    /// Their directories, certificates and configs.
    _pair: drd_tests::Pair,
}

impl DrdPair {
    /// Both daemons killed; the directories stay until the pair is dropped.
    fn stopped(mut self) -> Self {
        self.primary.kill9();
        self._replica.kill9();
        self
    }

    /// The pair for `mode`, or the row's message: "not supported by this
    /// build" when the primary's configuration does not pass
    /// `drd --check-config`.
    async fn start(bins: &Bins, c: &Cluster, mode: &str) -> Result<Self, String> {
        let pair = drd_tests::Pair::with_stream_keys("", &stream_keys(c, mode));
        let check = Command::new(&bins.drd)
            .arg("--config")
            .arg(&pair.primary.config)
            .arg("--check-config")
            .output()
            .map_err(|e| format!("drd: cannot run --check-config: {e}"))?;
        if !check.status.success() {
            let why = String::from_utf8_lossy(&check.stderr);
            return Err(format!(
                "drd: source = postgres not supported by this build: {} (drd --check-config)",
                config_reason(&why)
            ));
        }
        let start = async {
            let replica = Proc::start_ready(bins, &pair.replica).await?;
            let primary = Proc::start_ready(bins, &pair.primary).await?;
            anyhow::Ok((primary, replica))
        };
        match start.await {
            Ok((primary, replica)) => Ok(Self {
                primary,
                _replica: replica,
                _pair: pair,
            }),
            Err(e) => Err(format!("drd: failed to start: {}", err_line(e))),
        }
    }
}

/// The primary drd's stream keys for `mode`: streaming from the cluster
/// through slot [`SLOT`].
fn stream_keys(c: &Cluster, mode: &str) -> String {
    format!(
        "source = \"postgres\"\npostgres = \"{} application_name={DRD_APP}\"\n\
         slot = \"{SLOT}\"\nmode = \"{mode}\"\n",
        c.conninfo()
    )
}

/// The telling line of `drd --check-config`'s complaint, short enough for
/// a table cell: its last line that is not a quoted source line (TOML's
/// "unknown field `postgres`", without the list of known fields that
/// follows), or drd's own one-line error.
fn config_reason(stderr: &str) -> String {
    let line = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with(|c: char| c == '|' || c.is_ascii_digit()))
        .unwrap_or("(no message)");
    let line = line.split(", expected").next().unwrap_or(line);
    let line = line.strip_prefix("drd: ").unwrap_or(line);
    if line.chars().count() > 160 {
        format!("{}…", line.chars().take(160).collect::<String>())
    } else {
        line.to_string()
    }
}

/// One pgbench run with drd streaming in `mode`; the primary goes back to
/// no synchronous standby after.
async fn drd_run(
    c: &Cluster,
    d: &DrdPair,
    logs: &Path,
    mode: &str,
    secs: u32,
) -> anyhow::Result<Pgbench> {
    let sync = mode == "sync";
    block(|| wait_streaming(c, DRD_APP, false))
        .with_context(|| format!("--- primary drd ---\n{}", d.primary.log_tail()))?;
    if sync {
        block(|| set_sync_names(c, DRD_APP))?;
    }
    let r = block(|| {
        wait_streaming(c, DRD_APP, sync)?;
        pgbench(c, logs, &format!("drd-{mode}"), secs)
    });
    if sync {
        block(|| set_sync_names(c, ""))?;
    }
    r
}

/// Drops `slot` once no walsender holds it (a killed client's walsender
/// takes a moment to notice); nothing if there is no such slot.
fn drop_slot(c: &Cluster, slot: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active = c.psql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))?;
        match active.as_str() {
            "" => return Ok(()),
            "f" => {
                return c
                    .psql(&format!("SELECT pg_drop_replication_slot('{slot}')"))
                    .map(drop)
            }
            _ if Instant::now() > deadline => bail!("slot {slot} still active after 30 s"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Drops the page cache when we may (root), so each tool reads the WAL
/// from disk as a real catch-up would; true if it did.
fn drop_caches() -> bool {
    std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", b"1\n").is_ok()
}

/// The catch-up: (drd's runs, pg_receivewal's runs, (start, end) LSN).
async fn catch_up(
    bins: &Bins,
    c: &Cluster,
    root: &Path,
    mib: u64,
) -> (
    Result<CatchUps, String>,
    Result<CatchUps, String>,
    Option<(u64, u64)>,
) {
    // drd streaming, then stopped (kill -9, as in an outage): its slot
    // holds the WAL written next. (`drctl pause` stops shipping only: drd
    // keeps receiving from PostgreSQL, so it would not fall behind.)
    let drd = match DrdPair::start(bins, c, "async").await {
        Ok(mut d) => {
            let stopped = block(|| wait_streaming(c, DRD_APP, false)).map(|()| {
                d.primary.kill9();
            });
            stopped.map(|()| d).map_err(err_line)
        }
        Err(e) => Err(e),
    };
    // pg_receivewal's slot starts where drd's is (or, without drd, here).
    let drd = match drd {
        Ok(d) => block(|| {
            c.psql(&format!(
                "SELECT pg_copy_physical_replication_slot('{SLOT}', '{COPY_SLOT}')"
            ))
        })
        .map(|_| d)
        .map_err(|e| format!("cannot copy drd's slot {SLOT}: {}", err_line(e))),
        Err(e) => Err(e),
    };
    let setup = block(|| -> anyhow::Result<(u64, u64)> {
        if drd.is_err() {
            c.psql(&format!(
                "SELECT pg_create_physical_replication_slot('{COPY_SLOT}', true)"
            ))?;
        }
        let restart = c
            .lsn(&format!(
                "restart_lsn FROM pg_replication_slots WHERE slot_name = '{COPY_SLOT}'"
            ))?
            .context("the copied slot has no restart_lsn")?;
        // Both tools start streaming at the segment that holds it.
        let start = restart - restart % (16 << 20);
        generate_wal(c, start, mib << 20)?;
        let end = c
            .lsn("pg_current_wal_flush_lsn()")?
            .context("no flush LSN")?;
        // The checkpoint that `pgbench -i`'s writes bring on would
        // otherwise run during the first runs: pg_receivewal's first run
        // took 40 MB/s beside it, its next 260–287.
        c.psql("CHECKPOINT")?;
        Ok((start, end))
    });
    let (start, end) = match setup {
        Ok(r) => r,
        Err(e) => {
            let e = err_line(e);
            let drd_e = match drd {
                Ok(_) => e.clone(),
                Err(de) => de,
            };
            return (Err(drd_e), Err(e), None);
        }
    };
    // Every run after the first starts from a copy of this slot.
    if let Err(e) = block(|| copy_slot(c, COPY_SLOT, PIN_SLOT)) {
        let e = format!("cannot pin the catch-up's start: {}", err_line(e));
        return (Err(e.clone()), Err(e), Some((start, end)));
    }
    let bytes = end - start;
    // The first drd run is the pair that fell behind; later ones are fresh
    // pairs on a copy of the pinned slot. No run's output is deleted until
    // all ran (a delete on this disk stalls the fsyncs that follow it).
    let (mut behind, mut drd_runs) = match drd {
        Ok(d) => (Some(d), Ok(Vec::new())),
        Err(e) => (None, Err(e)),
    };
    let mut rw_runs: Result<Vec<CatchUp>, String> = Ok(Vec::new());
    let mut kept = Vec::new();
    let mut rw_dirs = Vec::new();
    for round in 0..CATCHUP_RUNS {
        let drd_first = round % 2 == 0;
        for drd_now in [drd_first, !drd_first] {
            if drd_now {
                let Ok(runs) = &mut drd_runs else { continue };
                let r = match behind.take() {
                    Some(mut d) => {
                        drop_caches();
                        let r = drd_catch_up(bins, &mut d, end).await;
                        kept.push(d.stopped());
                        r
                    }
                    None => fresh_drd_catch_up(bins, c, end, &mut kept).await,
                };
                match r {
                    Ok(secs) => runs.push(CatchUp { bytes, secs }),
                    Err(e) => drd_runs = Err(err_line(e)),
                }
            } else {
                let Ok(runs) = &mut rw_runs else { continue };
                let dir = root.join(format!("pg_receivewal-{round}"));
                let r = block(|| {
                    drop_slot(c, COPY_SLOT)?;
                    copy_slot(c, PIN_SLOT, COPY_SLOT)?;
                    drop_caches();
                    receivewal(c, &dir, end)
                });
                rw_dirs.push(dir);
                match r {
                    Ok(secs) => runs.push(CatchUp { bytes, secs }),
                    Err(e) => rw_runs = Err(err_line(e)),
                }
            }
        }
    }
    drop(kept);
    for slot in [COPY_SLOT, SLOT, PIN_SLOT] {
        let _ = block(|| drop_slot(c, slot));
    }
    for dir in rw_dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    (
        drd_runs.map(CatchUps),
        rw_runs.map(CatchUps),
        Some((start, end)),
    )
}

/// `pg_copy_physical_replication_slot(from, to)`: `to` starts where `from` is.
fn copy_slot(c: &Cluster, from: &str, to: &str) -> anyhow::Result<()> {
    c.psql(&format!(
        "SELECT pg_copy_physical_replication_slot('{from}', '{to}')"
    ))
    .map(drop)
}

/// Writes WAL until `bytes` past `start`: `pgbench -i` again and again
/// (COPY, VACUUM, index builds: full-page images as a real load writes).
fn generate_wal(c: &Cluster, start: u64, bytes: u64) -> anyhow::Result<()> {
    loop {
        let now = c
            .lsn("pg_current_wal_flush_lsn()")?
            .context("no flush LSN")?;
        if now.saturating_sub(start) >= bytes {
            return Ok(());
        }
        let mut cmd = c.client("pgbench");
        cmd.args(["-i", "-q", "-s", &SCALE.to_string(), "postgres"]);
        drd_tests::pg::run_output(cmd, "pgbench -i (WAL for the catch-up)")?;
    }
}

/// Restarts the primary drd; seconds until the DR drd holds WAL up to
/// `end` durably.
async fn drd_catch_up(bins: &Bins, d: &mut DrdPair, end: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    d.primary = Proc::start_ready(bins, &d._pair.primary).await?;
    wait_dr_durable(d, end, t).await
}

/// A fresh pair (empty data directories, both daemons new) whose slot is a
/// copy of the pinned start: the DR drd is started first, then the clock
/// runs from starting the primary drd until the DR drd holds WAL up to
/// `end` durably, as for the pair that fell behind. The stopped pair goes
/// into `kept`.
async fn fresh_drd_catch_up(
    bins: &Bins,
    c: &Cluster,
    end: u64,
    kept: &mut Vec<DrdPair>,
) -> anyhow::Result<f64> {
    block(|| {
        drop_slot(c, SLOT)?;
        copy_slot(c, PIN_SLOT, SLOT)
    })?;
    let pair = drd_tests::Pair::with_stream_keys("", &stream_keys(c, "async"));
    let replica = Proc::start_ready(bins, &pair.replica).await?;
    drop_caches();
    let t = Instant::now();
    let primary = Proc::start_ready(bins, &pair.primary).await?;
    let d = DrdPair {
        primary,
        _replica: replica,
        _pair: pair,
    };
    let r = wait_dr_durable(&d, end, t).await;
    kept.push(d.stopped());
    r
}

/// Seconds since `t` until the DR drd holds WAL up to `end` durably (the
/// primary's `postgres.dr_durable_lsn`, from the DR drd's acks).
async fn wait_dr_durable(d: &DrdPair, end: u64, t: Instant) -> anyhow::Result<f64> {
    loop {
        let durable = d
            .primary
            .stream()
            .await
            .ok()
            .and_then(|s| s.postgres)
            .map(|p| p.dr_durable_lsn);
        if durable.is_some_and(|l| l >= end) {
            return Ok(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > CATCHUP_WITHIN {
            bail!(
                "DR drd not durable at {} within {CATCHUP_WITHIN:?} (durable_lsn {:?})",
                format_lsn(end),
                durable.map(format_lsn)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `pg_receivewal -S rw_bench -E end -n` into a fresh `dir` (default
/// fsync behaviour: each segment synced as it completes); seconds.
fn receivewal(c: &Cluster, dir: &Path, end: u64) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = c.client("pg_receivewal");
    cmd.arg("-D")
        .arg(dir)
        .args(["-S", COPY_SLOT, "-E", &format_lsn(end), "-n"]);
    let t = Instant::now();
    run_within(cmd, "pg_receivewal", CATCHUP_WITHIN)?;
    Ok(t.elapsed().as_secs_f64())
}

fn lat(p: &Pgbench) -> String {
    format!(
        "p50 {:.2} / p99 {:.2} ms",
        p.latency.pct(50.0),
        p.latency.pct(99.0)
    )
}

fn find<'a>(f: &'a Figures, name: &str) -> Option<&'a Config> {
    f.configs.iter().find(|c| c.name == name)
}

/// The part's own table: one line per configuration.
pub fn table(f: &Figures) -> String {
    let none = find(f, "none").and_then(|c| c.result.as_ref().ok());
    let mut rows: Vec<[String; 6]> = vec![[
        "configuration".into(),
        "TPS".into(),
        "commit p50".into(),
        "commit p99".into(),
        "p50 / p99 vs none".into(),
        "transactions / note".into(),
    ]];
    for c in &f.configs {
        rows.push(match &c.result {
            Ok(p) => [
                c.name.into(),
                format!("{:.0}", p.tps),
                format!("{:.2} ms", p.latency.pct(50.0)),
                format!("{:.2} ms", p.latency.pct(99.0)),
                none.map_or("-".into(), |n| {
                    format!(
                        "{:.2}x / {:.2}x",
                        p.latency.pct(50.0) / n.latency.pct(50.0).max(1e-6),
                        p.latency.pct(99.0) / n.latency.pct(99.0).max(1e-6)
                    )
                }),
                p.latency.len().to_string(),
            ],
            Err(e) => [
                c.name.into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                e.clone(),
            ],
        });
    }
    let w: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        out += "|";
        for (i, cell) in r.iter().enumerate() {
            out += &format!(" {cell}{} |", " ".repeat(w[i] - cell.chars().count()));
        }
        out += "\n";
        if n == 0 {
            out += "|";
            for wi in &w {
                out += &format!(" {} |", "-".repeat(*wi));
            }
            out += "\n";
        }
    }
    out
}

/// Rows for the summary table: drd sync against PostgreSQL's standby, and
/// the catch-up against pg_receivewal.
pub fn rows(f: &Figures) -> Vec<Row> {
    let mut out = Vec::new();
    let base = find(f, "PG sync standby").map(|c| &c.result);
    let drd = find(f, "drd sync").map(|c| &c.result);
    let (drd_cell, base_cell, ratio, met) = match (drd, base) {
        (Some(Ok(d)), Some(Ok(b))) => {
            let r50 = d.latency.pct(50.0) / b.latency.pct(50.0).max(1e-6);
            let r99 = d.latency.pct(99.0) / b.latency.pct(99.0).max(1e-6);
            (
                lat(d),
                lat(b),
                format!("p50 {r50:.2}x / p99 {r99:.2}x"),
                Some(r50 <= 1.5 && r99 <= 1.5),
            )
        }
        (d, b) => (
            match d {
                Some(Ok(d)) => lat(d),
                Some(Err(e)) => format!("pending ({e})"),
                None => "pending".into(),
            },
            match b {
                Some(Ok(b)) => lat(b),
                Some(Err(e)) => format!("not measured: {e}"),
                None => "not measured".into(),
            },
            "-".into(),
            None,
        ),
    };
    out.push(Row::new(
        "pgbench commit latency: drd sync vs PG sync standby",
        drd_cell,
        base_cell,
        ratio,
        "<= 1.5x (p50 and p99)",
        met,
    ));
    let (d, b) = (&f.drd_catchup, &f.receivewal);
    out.push(Row::new(
        "WAL catch-up from one slot position: drd vs pg_receivewal (best of each)",
        match d {
            Ok(c) => c.cell(),
            Err(e) => format!("pending ({e})"),
        },
        match b {
            Ok(c) => c.cell(),
            Err(e) => format!("not measured: {e}"),
        },
        match (d, b) {
            (Ok(d), Ok(b)) => format!("{:.2}x", d.speedup_over(b)),
            _ => "-".into(),
        },
        ">= 2x",
        match (d, b) {
            (Ok(d), Ok(b)) => Some(d.speedup_over(b) >= 2.0),
            _ => None,
        },
    ));
    out
}

/// The target lines under the part's table.
pub fn verdicts(f: &Figures) -> Vec<String> {
    let mut out = Vec::new();
    match (
        find(f, "drd sync").map(|c| &c.result),
        find(f, "PG sync standby").map(|c| &c.result),
    ) {
        (Some(Ok(d)), Some(Ok(b))) => {
            let r50 = d.latency.pct(50.0) / b.latency.pct(50.0).max(1e-6);
            let r99 = d.latency.pct(99.0) / b.latency.pct(99.0).max(1e-6);
            out.push(format!(
                "drd sync / PG sync standby commit latency: p50 {r50:.2}x, p99 {r99:.2}x — target ≤ 1.5×: {}",
                if r50 <= 1.5 && r99 <= 1.5 { "met" } else { "not met" }
            ));
        }
        _ => out.push(
            "drd sync / PG sync standby commit latency: pending (drd sync not measured) — target ≤ 1.5×"
                .into(),
        ),
    }
    let range = f.catchup_range.map_or(String::new(), |(s, e)| {
        format!(
            " ({} → {}, {:.0} MiB)",
            format_lsn(s),
            format_lsn(e),
            (e - s) as f64 / (1u64 << 20) as f64
        )
    });
    match (&f.drd_catchup, &f.receivewal) {
        (Ok(d), Ok(b)) => {
            let x = d.speedup_over(b);
            out.push(format!(
                "WAL catch-up{range}, best of {CATCHUP_RUNS} runs each: drd {:.0} MB/s, \
                 pg_receivewal {:.0} MB/s: {x:.2}x — target ≥ 2×: {}",
                d.best().mb_per_s(),
                b.best().mb_per_s(),
                if x >= 2.0 { "met" } else { "not met" }
            ))
        }
        (d, b) => out.push(format!(
            "WAL catch-up{range}: drd {}; pg_receivewal {} — target ≥ 2×: pending",
            match d {
                Ok(d) => d.cell(),
                Err(e) => format!("pending ({e})"),
            },
            match b {
                Ok(b) => b.cell(),
                Err(e) => format!("not measured: {e}"),
            }
        )),
    }
    out
}

/// Notes on how the part measured.
pub fn notes(f: &Figures, o: &Opts) -> Vec<String> {
    let mut out = vec![format!(
        "- pg: {}, one primary cluster (16 MiB segments, fsync on, default WAL settings, Unix socket), \
         `pgbench -i -s {SCALE}`; each configuration `pgbench -c {CLIENTS} -j {THREADS} -T {} -M prepared -l` \
         after a CHECKPOINT; TPS from pgbench's summary (without connection time); commit p50/p99 = \
         per-transaction latency from the -l log (a TPC-B transaction commits once). Part took {:.0} s.",
        f.version, o.seconds, f.secs
    )];
    for c in &f.configs {
        out.push(format!("- pg {}: {}", c.name, c.setup));
    }
    out.push(format!(
        "- pg catch-up: drd streaming from slot {SLOT}, then its primary drd killed -9; \
         pg_copy_physical_replication_slot('{SLOT}', '{COPY_SLOT}') (without drd: a new slot) gives \
         pg_receivewal the same start; ≥ {} MiB of WAL from repeated `pgbench -i`; end = \
         pg_current_wal_flush_lsn(), then a CHECKPOINT. drd: restarted, until the DR drd has the WAL to end durably; \
         pg_receivewal -S {COPY_SLOT} -E end -n. Both from the segment holding the slot's restart_lsn; \
         page cache dropped before each when root. {CATCHUP_RUNS} runs of each, alternating which \
         goes first; each run after drd's first is a fresh pair, and each pg_receivewal run a fresh \
         directory, on a new copy of a slot pinned at the start ({PIN_SLOT}); each tool's figure is \
         its fastest run.",
        o.catchup_mib
    ));
    out
}
