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

use drd_tests::*;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `initdb --wal-segsize=1`: 1 MiB segments keep the test quick.
const PG_SEGMENT: u64 = 1 << 20;
/// The loader asks for a segment switch after this many transactions, so
/// segments get archived while it runs.
const ROWS_PER_SWITCH: u64 = 40;

/// The PostgreSQL installation and who runs it.
#[derive(Clone)]
struct Postgres {
    bin: PathBuf,
    /// The OS user PostgreSQL runs as when this process is root.
    run_as: Option<(String, u32, u32)>,
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// (uid, gid) of an OS user, from /etc/passwd.
fn os_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn find_postgres() -> Result<Postgres, String> {
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
        None => {
            let out = Command::new("pg_config").arg("--bindir").output();
            match out {
                Ok(o) if o.status.success() => {
                    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                }
                _ => {
                    return Err(
                        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, \
                         no pg_config)"
                            .into(),
                    )
                }
            }
        }
    };
    for prog in ["initdb", "pg_ctl", "pg_basebackup", "psql"] {
        if !bin.join(prog).exists() {
            return Err(format!("{} is missing", bin.join(prog).display()));
        }
    }
    let run_as = if euid() == 0 {
        let (uid, gid) = os_user("postgres").ok_or(
            "running as root, and PostgreSQL refuses root, but there is no `postgres` OS user",
        )?;
        Some(("postgres".to_string(), uid, gid))
    } else {
        None
    };
    Ok(Postgres { bin, run_as })
}

/// PostgreSQL, or None (skip) only when skipping was asked for (see
/// `drd_tests::require`).
fn require_postgres() -> Option<Postgres> {
    match find_postgres() {
        Ok(p) => Some(p),
        Err(why) => {
            drd_tests::require::missing(
                &why,
                "Install Debian's `postgresql` package and run the tests as root (or with sudo)",
            );
            None
        }
    }
}

impl Postgres {
    /// A PostgreSQL program, run as the cluster owner, in `cwd` (which that
    /// user must be able to enter: initdb and pg_ctl look at it).
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

    fn run(&self, prog: &str, cwd: &Path, args: &[&str]) -> String {
        let out = self
            .cmd(prog, cwd)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
        assert!(
            out.status.success(),
            "{prog} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Gives a path to the cluster owner.
    fn give(&self, path: &Path) {
        if let Some((_, uid, gid)) = &self.run_as {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).unwrap();
        }
    }

    /// psql as a client over loopback TCP (trust authentication).
    fn psql(&self, port: u16) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"]);
        c
    }

    fn try_sql(&self, port: u16, query: &str) -> Result<String, String> {
        let out = self
            .psql(port)
            .args(["-c", query])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn sql(&self, port: u16, query: &str) -> String {
        self.try_sql(port, query)
            .unwrap_or_else(|e| panic!("SQL {query:?} on port {port} failed: {e}"))
    }
}

/// One PostgreSQL cluster; stopped (immediately) when dropped, so a failed
/// test leaves no server behind.
struct Cluster {
    pg: Postgres,
    name: &'static str,
    data: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Cluster {
    fn new(pg: &Postgres, pgdir: &Path, name: &'static str) -> Self {
        Self {
            pg: pg.clone(),
            name,
            data: pgdir.join(name),
            port: free_port(),
            log: pgdir.join(format!("{name}.log")),
        }
    }

    /// Appends settings to postgresql.conf (later lines win).
    fn configure(&self, lines: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        writeln!(f, "\n# drd test\n{lines}").unwrap();
    }

    fn start(&self) {
        let dir = self.data.parent().unwrap();
        let (data, log) = (self.data.to_str().unwrap(), self.log.to_str().unwrap());
        let out = self
            .pg
            .cmd("pg_ctl", dir)
            .args(["-D", data, "-l", log, "-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} did not start:\n{}\n--- log ---\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    fn sql(&self, query: &str) -> String {
        self.pg.sql(self.port, query)
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// kill -9 of the postmaster and every process below it, at once.
    fn kill9(&self) -> usize {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut all = vec![postmaster];
        let parents = process_parents();
        let mut i = 0;
        while i < all.len() {
            let p = all[i];
            all.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
            i += 1;
        }
        let pids: Vec<String> = all.iter().map(u32::to_string).collect();
        let _ = Command::new("kill").arg("-9").args(&pids).status();
        all.len()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self
                .pg
                .cmd("pg_ctl", self.data.parent().unwrap())
                .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// pid → parent pid of every process.
fn process_parents() -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
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
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The LSN just past the end of a segment (timeline ignored).
fn segment_end_lsn(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    (log * (0x1_0000_0000 / PG_SEGMENT) + seg + 1) * PG_SEGMENT
}

/// One transaction per row, each followed by a receipt: the row's id and
/// `pg_current_wal_insert_lsn()` read after its commit returned — an upper
/// bound of the commit record's end. A segment switch every
/// `ROWS_PER_SWITCH` rows gets segments archived while it runs.
struct Loader {
    child: Child,
    writer: std::thread::JoinHandle<()>,
    reader: std::thread::JoinHandle<Vec<(u64, u64)>>,
    seen: Arc<AtomicU64>,
}

impl Loader {
    fn start(pg: &Postgres, port: u16, errors: &Path) -> Self {
        let mut child = pg
            .psql(port)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(errors).unwrap()))
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let writer = std::thread::spawn(move || {
            // Bounded; the kill ends it long before.
            for i in 1..=1_000_000u64 {
                let mut sql = format!(
                    "INSERT INTO t(id) VALUES ({i});\nSELECT {i}, pg_current_wal_insert_lsn();\n"
                );
                if i % ROWS_PER_SWITCH == 0 {
                    sql.push_str("SELECT 0, pg_switch_wal();\n");
                }
                if stdin.write_all(sql.as_bytes()).is_err() {
                    return; // psql is gone: the server was killed
                }
            }
        });
        let seen = Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        let reader = std::thread::spawn(move || {
            let mut receipts = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some((id, lsn)) = line.split_once('|') else {
                    continue;
                };
                if let (Ok(id), Some(lsn)) = (id.parse::<u64>(), parse_lsn(lsn)) {
                    if id > 0 {
                        receipts.push((id, lsn));
                        counter.store(id, Ordering::Relaxed);
                    }
                }
            }
            receipts
        });
        Self {
            child,
            writer,
            reader,
            seen,
        }
    }

    /// Rows acknowledged so far (psql's output arrives in blocks).
    fn acknowledged(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Waits for psql to exit after losing its server; the receipts.
    fn finish(mut self, within: Duration) -> Vec<(u64, u64)> {
        let deadline = Instant::now() + within;
        while !self.reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.writer.join();
        self.reader.join().unwrap()
    }
}

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
    chmod(r, 0o755);
    let drctl_bin = r.join("bin").join("drctl");
    std::fs::create_dir_all(drctl_bin.parent().unwrap()).unwrap();
    std::fs::copy(bin("drctl"), &drctl_bin).unwrap();
    chmod(&drctl_bin, 0o755);
    let pgdir = r.join("pg");
    std::fs::create_dir_all(&pgdir).unwrap();
    pg.give(&pgdir);

    // Two sites, mTLS between them, spool sources; Verona archives in sync
    // mode, Rochester (whose database archives only after a promotion, while
    // Verona is down) in async mode.
    let certs = make_certs(r);
    let (a_port, b_port) = (free_port(), free_port());
    let (a_spool, b_spool) = (r.join("verona-spool"), r.join("rochester-spool"));
    std::fs::create_dir_all(&a_spool).unwrap();
    std::fs::create_dir_all(&b_spool).unwrap();
    let primary = Cluster::new(&pg, &pgdir, "primary");
    let standby = Cluster::new(&pg, &pgdir, "standby");
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
        standby.data.display(),
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
        chmod(&d.dir, 0o755);
        if let Some((user, _, _)) = &pg.run_as {
            // Daemon::new writes [control] last: this key lands in it.
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&d.config)
                .unwrap();
            writeln!(f, "socket_group = \"{user}\"").unwrap();
        }
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
    let data = primary.data.to_str().unwrap();
    pg.run(
        "initdb",
        &pgdir,
        &[
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "--wal-segsize=1",
            "-N",
            "-E",
            "UTF8",
            "--locale=C",
        ],
    );
    primary.configure(&format!(
        "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         archive_mode = on\narchive_command = '{drctl_path} --socket {a_sock} wal-push %p'\n\
         max_wal_senders = 4\nshared_buffers = 16MB\nlog_line_prefix = '%m [%p] '\n",
        primary.port,
        pgdir.display()
    ));
    primary.start();
    primary.sql("CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())");
    primary.sql("SELECT pg_switch_wal()");
    let first = wait_for(
        "a first segment archived",
        Duration::from_secs(60),
        || async {
            let w = primary.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
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
    pg.run(
        "pg_basebackup",
        &pgdir,
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-D",
            standby.data.to_str().unwrap(),
            "-X",
            "stream",
            "-c",
            "fast",
        ],
    );
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
    standby.configure(&format!(
        "port = {}\nrestore_command = '{drctl_path} --socket {b_sock} wal-fetch %f %p'\n\
         archive_command = '{drctl_path} --socket {b_sock} wal-push %p'\n\
         wal_retrieve_retry_interval = '200ms'\nrecovery_target_timeline = 'latest'\n",
        standby.port
    ));
    let signal = standby.data.join("standby.signal");
    std::fs::write(&signal, b"").unwrap();
    pg.give(&signal);
    standby.start();
    assert_eq!(standby.sql("SELECT pg_is_in_recovery()"), "t");
    phase(t0, &format!("standby up ({backup_label} at Rochester)"));

    // Load, until a good number of segments went through drd.
    let loader = Loader::start(&pg, primary.port, &r.join("loader.err"));
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
    let archived = primary.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
    let killed = primary.kill9();
    a.kill9();
    let receipts = loader.finish(Duration::from_secs(30));
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
        || async {
            (pg.try_sql(standby.port, "SELECT pg_is_in_recovery()")
                .ok()?
                == "f")
                .then_some(())
        },
    )
    .await;
    phase(t0, &format!("failed over; last sealed segment {last}"));

    // Every transaction whose commit lies in a segment sealed at Rochester.
    let boundary = segment_end_lsn(&last);
    let at_dr: HashSet<u64> = standby
        .sql("SELECT id FROM t")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let required: Vec<u64> = receipts
        .iter()
        .filter(|(_, lsn)| *lsn <= boundary)
        .map(|(id, _)| *id)
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
    standby.sql("INSERT INTO t(id) SELECT g FROM generate_series(10000001, 10000100) g");
    standby.sql("SELECT pg_switch_wal()");
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
            assert_eq!(c.streams[0].source, drd::config::SourceMode::Spool);
            assert_eq!(c.control_socket_group.as_deref(), Some("postgres"));
            n += 1;
        }
    }
    assert_eq!(n, 2);
}
