//! A real PostgreSQL for the tests and the bench: the installation and who
//! runs it, clusters (initdb, configuration, base backups, promotion, one
//! `kill -9` of the whole server), a many-connection insert workload that
//! keeps a receipt per acknowledged commit, and LSN helpers.
//!
//! PostgreSQL refuses to run as root. When this process is root (CI), the
//! server programs run as the `postgres` OS user (`runuser`) in directories
//! it owns ([`Postgres::give`]); clients (psql for the [`Loader`], pgbench)
//! run as this process, which trust authentication lets in as the
//! `postgres` database superuser.

use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The database superuser every cluster is made with (`initdb -U`), and
/// the role clients connect as.
pub const SUPERUSER: &str = "postgres";

/// The PostgreSQL installation and who runs it.
#[derive(Clone, Debug)]
pub struct Postgres {
    /// Directory of `initdb`, `pg_ctl`, `psql`, … (`/usr/lib/postgresql/N/bin`).
    pub bin: PathBuf,
    /// The OS user (name, uid, gid) the server programs run as when this
    /// process is root; None when they run as this process.
    pub run_as: Option<(String, u32, u32)>,
}

/// This process's effective uid (from /proc; `u32::MAX` if unreadable).
pub fn euid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// (uid, gid) of an OS user, from /etc/passwd.
pub fn os_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The newest `/usr/lib/postgresql/*/bin` (else `pg_config --bindir`) with
/// the server programs, and who runs them; or why not.
pub fn find_postgres() -> anyhow::Result<Postgres> {
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
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no pg_config)"
            ),
        },
    };
    let pg = Postgres { bin, run_as: None };
    for prog in ["initdb", "pg_ctl", "pg_basebackup", "psql", "postgres"] {
        pg.program(prog)?;
    }
    let run_as = if euid() == 0 {
        let (uid, gid) = os_user("postgres").context(
            "running as root, and PostgreSQL refuses root, but there is no `postgres` OS user",
        )?;
        Some(("postgres".to_string(), uid, gid))
    } else {
        None
    };
    Ok(Postgres { run_as, ..pg })
}

/// PostgreSQL, or None (skip) only when skipping was asked for (see
/// [`crate::require`]).
pub fn require_postgres() -> Option<Postgres> {
    match find_postgres() {
        Ok(p) => Some(p),
        Err(why) => {
            crate::require::missing(
                &format!("{why:#}"),
                "Install Debian's `postgresql` package and run the tests as root (or with sudo)",
            );
            None
        }
    }
}

/// Runs `c` to completion with no stdin; its stdout, or an error with
/// both outputs.
pub fn run_output(mut c: Command, what: &str) -> anyhow::Result<String> {
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

impl Postgres {
    /// The path of a PostgreSQL program, or an error naming it.
    pub fn program(&self, prog: &str) -> anyhow::Result<PathBuf> {
        let p = self.bin.join(prog);
        if !p.exists() {
            bail!("{} is missing", p.display());
        }
        Ok(p)
    }

    /// A PostgreSQL program, run as the cluster owner, in `cwd` (which that
    /// user must be able to enter: initdb and pg_ctl look at it).
    pub fn cmd(&self, prog: &str, cwd: &Path) -> Command {
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

    /// Runs a program as the cluster owner ([`Postgres::cmd`]); its stdout.
    pub fn run(&self, prog: &str, cwd: &Path, args: &[&str]) -> anyhow::Result<String> {
        let mut c = self.cmd(prog, cwd);
        c.args(args);
        run_output(c, &format!("{prog} {args:?}"))
    }

    /// Gives a path to the cluster owner (nothing to do when not root).
    pub fn give(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((user, uid, gid)) = &self.run_as {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .with_context(|| format!("chown {} to {user}", path.display()))?;
        }
        Ok(())
    }

    /// `postgres --version`, e.g. "postgres (PostgreSQL) 15.18 (Debian …)".
    pub fn version(&self) -> anyhow::Result<String> {
        let mut c = Command::new(self.bin.join("postgres"));
        c.arg("--version");
        Ok(run_output(c, "postgres --version")?.trim().to_string())
    }
}

/// How [`Cluster::init`] makes a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `initdb --wal-segsize`, in MiB: a power of two from 1 to 1024.
    /// Tests use 1 (segment ends and partial segments come often), the
    /// bench PostgreSQL's default of 16.
    pub wal_segment_mib: u32,
    /// Lines appended to postgresql.conf after the ones the harness writes
    /// (port, listen_addresses, unix_socket_directories); later lines win.
    pub conf: String,
    /// Lines put at the top of pg_hba.conf, so they match before initdb's
    /// (`--auth=trust` for local, loopback and replication connections).
    pub hba: String,
    /// Where the server puts its Unix socket (`.s.PGSQL.<port>`); default:
    /// the directory that holds the data directory.
    pub socket_dir: Option<PathBuf>,
    /// Also listen on 127.0.0.1:port, and have clients connect there; by
    /// default the server has no TCP socket (`listen_addresses = ''`).
    pub tcp: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            wal_segment_mib: 16,
            conf: String::new(),
            hba: String::new(),
            socket_dir: None,
            tcp: false,
        }
    }
}

/// One PostgreSQL cluster; stopped (immediately) when dropped, so a failed
/// test leaves no server behind.
#[derive(Debug)]
pub struct Cluster {
    /// The installation and who runs it.
    pub pg: Postgres,
    /// For messages.
    pub name: String,
    /// The data directory (`<pgdir>/<name>`).
    pub data: PathBuf,
    /// The server's port: its TCP port when `tcp`, and its socket's name.
    pub port: u16,
    /// Directory of the server's Unix socket.
    pub socket_dir: PathBuf,
    /// Whether clients connect over loopback TCP instead of the socket.
    pub tcp: bool,
    /// The server log (`pg_ctl -l`), `<pgdir>/<name>.log`.
    pub log: PathBuf,
}

impl Cluster {
    /// A cluster at `<pgdir>/<name>` on a free port, not created yet: for
    /// data directories made by hand ([`Cluster::init`] and
    /// [`Cluster::basebackup_from`] use it).
    pub fn new(pg: &Postgres, pgdir: &Path, name: &str) -> Self {
        Self {
            pg: pg.clone(),
            name: name.to_string(),
            data: pgdir.join(name),
            port: crate::free_port(),
            socket_dir: pgdir.to_path_buf(),
            tcp: false,
            log: pgdir.join(format!("{name}.log")),
        }
    }

    /// `initdb` of a new cluster at `<pgdir>/<name>` (created and given to
    /// the owner if needed), configured as `opts` says; not started.
    pub fn init(
        pg: &Postgres,
        pgdir: &Path,
        name: &str,
        opts: &ClusterOptions,
    ) -> anyhow::Result<Self> {
        let mut c = Self::new(pg, pgdir, name);
        c.tcp = opts.tcp;
        if let Some(d) = &opts.socket_dir {
            c.socket_dir = d.clone();
        }
        for d in [pgdir, &c.socket_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            pg.give(d)?;
        }
        let segsize = opts.wal_segment_mib.to_string();
        pg.run(
            "initdb",
            pgdir,
            &[
                "-D",
                c.data_str()?,
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--wal-segsize",
                &segsize,
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        c.configure(&format!("{}\n{}", c.address_conf(), opts.conf))?;
        if !opts.hba.is_empty() {
            let hba = c.data.join("pg_hba.conf");
            let old =
                std::fs::read_to_string(&hba).with_context(|| format!("read {}", hba.display()))?;
            std::fs::write(&hba, format!("# drd test\n{}\n\n{old}", opts.hba))
                .with_context(|| format!("write {}", hba.display()))?;
        }
        Ok(c)
    }

    /// A standby of `primary` at `<pgdir>/<name>`: `pg_basebackup -X stream
    /// -c fast` as the owner, plus `extra` (e.g. `-R`, `-C -S slot`), with
    /// its own port and the primary's socket directory and TCP choice;
    /// not started. Without `-R` it has no standby.signal.
    pub fn basebackup_from(
        primary: &Cluster,
        pgdir: &Path,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut c = Self::new(&primary.pg, pgdir, name);
        c.tcp = primary.tcp;
        c.socket_dir = primary.socket_dir.clone();
        std::fs::create_dir_all(pgdir).with_context(|| format!("create {}", pgdir.display()))?;
        primary.pg.give(pgdir)?;
        let (host, port) = (primary.host(), primary.port.to_string());
        let mut args = vec![
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            SUPERUSER,
            "-D",
            c.data_str()?,
            "-X",
            "stream",
            "-c",
            "fast",
        ];
        args.extend_from_slice(extra);
        c.pg.run("pg_basebackup", pgdir, &args)?;
        c.configure(&c.address_conf())?;
        Ok(c)
    }

    fn data_str(&self) -> anyhow::Result<&str> {
        self.data
            .to_str()
            .with_context(|| format!("non-UTF-8 path {}", self.data.display()))
    }

    /// The directory pg_ctl runs in (the data directory's parent).
    fn dir(&self) -> &Path {
        self.data.parent().unwrap_or(Path::new("/"))
    }

    fn address_conf(&self) -> String {
        format!(
            "port = {}\nlisten_addresses = '{}'\nunix_socket_directories = '{}'\n",
            self.port,
            if self.tcp { "127.0.0.1" } else { "" },
            self.socket_dir.display()
        )
    }

    /// Where clients connect: `127.0.0.1` with `tcp`, else the socket
    /// directory (libpq's `host=` takes both).
    pub fn host(&self) -> String {
        if self.tcp {
            "127.0.0.1".to_string()
        } else {
            self.socket_dir.display().to_string()
        }
    }

    /// A libpq connection string for the superuser over the Unix socket,
    /// e.g. `host=/tmp/x port=20001 user=postgres` (what a drd stream's
    /// `postgres` key takes).
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={SUPERUSER}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Appends settings to postgresql.conf (later lines win).
    pub fn configure(&self, lines: &str) -> anyhow::Result<()> {
        let path = self.data.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        writeln!(f, "\n# drd test\n{lines}").with_context(|| format!("write {}", path.display()))
    }

    /// `pg_ctl start -w`: returns once the server takes connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let log = self.log.to_str().context("non-UTF-8 log path")?;
        let out = self
            .pg
            .cmd("pg_ctl", self.dir())
            .args(["-D", self.data_str()?, "-l", log, "-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .context("run pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "{} did not start:\n{}\n--- log ---\n{}",
                self.name,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// `pg_ctl stop -m fast` (a shutdown checkpoint; the archiver copies
    /// every completed segment before it exits).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg
            .run(
                "pg_ctl",
                self.dir(),
                &[
                    "-D",
                    self.data_str()?,
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "60",
                    "stop",
                ],
            )
            .map(drop)
    }

    /// `pg_ctl promote -w`: returns once the standby takes writes.
    pub fn promote(&self) -> anyhow::Result<()> {
        self.pg
            .run(
                "pg_ctl",
                self.dir(),
                &["-D", self.data_str()?, "-w", "-t", "60", "promote"],
            )
            .map(drop)
    }

    /// A client program (psql, pgbench) run as this process, connecting to
    /// this cluster as the superuser; the caller adds the database.
    pub fn client(&self, prog: &str) -> Command {
        let mut c = Command::new(self.pg.bin.join(prog));
        c.args(["-h", &self.host(), "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER]);
        c
    }

    /// `psql -XAtq -c SQL` in database `postgres`, as the owner, stopping at
    /// the first error; the output, trimmed.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let mut c = self.pg.cmd("psql", self.dir());
        c.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.host(), "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", "postgres", "-c", sql]);
        let out = run_output(c, &format!("SQL {sql:?} on {}", self.name))?;
        Ok(out.trim().to_string())
    }

    /// `SELECT expr` for an LSN-valued expression; None for NULL.
    pub fn lsn(&self, expr: &str) -> anyhow::Result<Option<u64>> {
        let v = self.psql(&format!("SELECT {expr}"))?;
        if v.is_empty() {
            return Ok(None);
        }
        parse_lsn(&v)
            .map(Some)
            .with_context(|| format!("{expr} on {}: not an LSN: {v:?}", self.name))
    }

    /// `pg_last_wal_replay_lsn()`: how far a standby has replayed (None on
    /// a primary that never was in recovery).
    pub fn replay_lsn(&self) -> anyhow::Result<Option<u64>> {
        self.lsn("pg_last_wal_replay_lsn()")
    }

    /// The last 30 lines of the server log.
    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The postmaster's pid, from postmaster.pid.
    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let path = self.data.join("postmaster.pid");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("{}: no pid on its first line", path.display()))
    }

    /// The postmaster and every process below it (children first found
    /// breadth-first).
    pub fn pids(&self) -> anyhow::Result<Vec<u32>> {
        let mut all = vec![self.postmaster_pid()?];
        let parents = process_parents();
        let mut i = 0;
        while i < all.len() {
            let p = all[i];
            all.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
            i += 1;
        }
        Ok(all)
    }

    /// kill -9 of the postmaster and every process below it, at once (one
    /// `kill` call); the number of processes.
    pub fn kill9(&self) -> anyhow::Result<usize> {
        let all = self.pids()?;
        let pids: Vec<String> = all.iter().map(u32::to_string).collect();
        let _ = Command::new("kill").arg("-9").args(&pids).status();
        Ok(all.len())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self
                .pg
                .cmd("pg_ctl", self.dir())
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// pid → parent pid of every process.
pub fn process_parents() -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …"; comm may contain spaces.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// `X/Y` → a 64-bit LSN.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A 64-bit LSN → `X/Y`, as PostgreSQL prints it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The LSN just past the end of segment `name` (24 hex digits; timeline
/// ignored) for `seg_size`-byte segments; None if it is no segment name.
pub fn segment_end_lsn(name: &str, seg_size: u64) -> Option<u64> {
    if name.len() != 24 || seg_size == 0 {
        return None;
    }
    let log = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    Some((log * (0x1_0000_0000 / seg_size) + seg + 1) * seg_size)
}

/// What a [`Loader`] runs.
#[derive(Clone, Debug)]
pub struct LoaderOptions {
    /// Parallel psql sessions; session k (1..=conns) inserts ids k,
    /// k + conns, k + 2·conns, …
    pub conns: u64,
    /// The table, with a unique `id bigint` column (other columns need
    /// defaults).
    pub table: String,
    /// Each session asks for a segment switch (`pg_switch_wal()`) after
    /// every this many of its rows, so segments complete while it runs.
    pub switch_every: Option<u64>,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        Self {
            conns: 1,
            table: "t".to_string(),
            switch_every: None,
        }
    }
}

/// One acknowledged row: its id and `pg_current_wal_insert_lsn()` read in
/// the same session right before its INSERT and right after the INSERT's
/// commit returned. The commit record ends in `(before_lsn, after_lsn]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Receipt {
    pub id: u64,
    pub before_lsn: u64,
    pub after_lsn: u64,
}

/// What a [`Loader`] did, once finished.
#[derive(Clone, Debug, Default)]
pub struct Load {
    /// Every id whose INSERT was sent (acknowledged or not), sorted.
    pub attempted: Vec<u64>,
    /// A receipt per acknowledged row, sorted by id.
    pub receipts: Vec<Receipt>,
}

/// One psql session of a [`Loader`].
struct Session {
    child: Child,
    thread: std::thread::JoinHandle<(Vec<u64>, Vec<Receipt>)>,
}

/// Autocommit INSERTs, one row at a time per session, over `conns` psql
/// sessions, in the way a client that must not lose a commit would record
/// them: a row is acknowledged only once the statement after its INSERT has
/// answered, i.e. after its COMMIT returned. Each session sends its next
/// row only then (psql flushes each result), so at most one row per
/// session is in flight.
pub struct Loader {
    sessions: Vec<Session>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
}

impl Loader {
    /// Starts the sessions against `cluster` (database `postgres`); psql's
    /// errors go to the file `errors`.
    pub fn start(cluster: &Cluster, opts: &LoaderOptions, errors: &Path) -> anyhow::Result<Self> {
        if opts.conns == 0 {
            bail!("a loader needs at least one connection");
        }
        let errors = std::fs::File::create(errors)
            .with_context(|| format!("create {}", errors.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut sessions = Vec::new();
        for k in 1..=opts.conns {
            let mut child = cluster
                .client("psql")
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
                .args(["-d", "postgres"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(errors.try_clone()?))
                .spawn()
                .context("spawn psql")?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                bail!("psql without pipes");
            };
            let (stop, acked, opts) = (stop.clone(), acked.clone(), opts.clone());
            let thread =
                std::thread::spawn(move || session(stdin, stdout, k, &opts, &stop, &acked));
            sessions.push(Session { child, thread });
        }
        Ok(Self {
            sessions,
            stop,
            acked,
        })
    }

    /// Rows acknowledged so far, over all sessions.
    pub fn acknowledged(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops sending rows and waits up to `within` for every session to
    /// end (its row in flight answered, or psql gone with its server), then
    /// kills what is left; what was attempted and acknowledged.
    pub fn finish(mut self, within: Duration) -> Load {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + within;
        while !self.sessions.iter().all(|s| s.thread.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut load = Load::default();
        for mut s in std::mem::take(&mut self.sessions) {
            let _ = s.child.kill();
            let _ = s.child.wait();
            if let Ok((attempted, receipts)) = s.thread.join() {
                load.attempted.extend(attempted);
                load.receipts.extend(receipts);
            }
        }
        load.attempted.sort_unstable();
        load.receipts.sort_unstable();
        load
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in &mut self.sessions {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

/// One session's loop: send a row, read until its receipt, repeat until
/// told to stop or psql is gone. (attempted ids, receipts).
fn session(
    mut stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
    k: u64,
    opts: &LoaderOptions,
    stop: &AtomicBool,
    acked: &AtomicU64,
) -> (Vec<u64>, Vec<Receipt>) {
    let (mut attempted, mut receipts) = (Vec::new(), Vec::new());
    let mut lines = std::io::BufReader::new(stdout).lines();
    for n in 1u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = k + (n - 1) * opts.conns;
        let mut sql = format!(
            "SELECT 'b', pg_current_wal_insert_lsn();\n\
             INSERT INTO {}(id) VALUES ({id});\n\
             SELECT 'a', pg_current_wal_insert_lsn();\n",
            opts.table
        );
        if opts.switch_every.is_some_and(|s| s > 0 && n % s == 0) {
            sql.push_str("SELECT 's', pg_switch_wal();\n");
        }
        attempted.push(id);
        if stdin.write_all(sql.as_bytes()).is_err() {
            break; // psql is gone: the server was killed
        }
        let mut before = None;
        let receipt = loop {
            let Some(Ok(line)) = lines.next() else {
                break None; // psql exited
            };
            match line.split_once('|') {
                Some(("b", lsn)) => before = parse_lsn(lsn),
                Some(("a", lsn)) => {
                    break before.zip(parse_lsn(lsn)).map(|(b, a)| Receipt {
                        id,
                        before_lsn: b,
                        after_lsn: a,
                    })
                }
                _ => {} // the switch's answer, arriving before the next 'b'
            }
        };
        let Some(r) = receipt else {
            break;
        };
        receipts.push(r);
        acked.fetch_add(1, Ordering::Relaxed);
    }
    (attempted, receipts)
}
