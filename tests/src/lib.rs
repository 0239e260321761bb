//! Test harness: real `drd` processes on 127.0.0.1 in temporary directories,
//! a deterministic WAL writer, and checks that poll with deadlines.
//!
//! The binaries are the workspace's own (`target/<profile>/drd`); `cargo test
//! --workspace` builds them before any test runs.

pub mod chaos;
pub mod faultproxy;
pub mod fleet;
pub mod objstore;
pub mod pg;
pub mod pgsites;
pub mod proxy;
pub mod require;

use anyhow::{bail, Context};
use drd_proto::pb;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the test executable's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    // `cargo test -p drd-tests` alone does not rebuild the daemon: warn when
    // the binary is older than a source file (a warning, not a failure: a
    // new file that is not compiled yet would otherwise block every test).
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for src in ["daemon/src", "ctl/src", "proto/src", "proto/drd.proto"] {
        for f in files_below(&root.join(src))
            .into_iter()
            .chain([root.join(src)])
        {
            if let Ok(t) = std::fs::metadata(&f).and_then(|m| m.modified()) {
                if t > built {
                    eprintln!(
                        "WARNING: {} is older than {}: run `cargo test --workspace` so the binaries are rebuilt",
                        path.display(),
                        f.display()
                    );
                    return path;
                }
            }
        }
    }
    path
}

/// A free loopback port for a daemon to listen on. Taken from below the
/// kernel's ephemeral range (32768–60999 by default), so that an outgoing
/// connection can never grab it between this check and the daemon's bind;
/// a per-process offset and a counter keep concurrent test binaries apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % 40) as u16 * 300;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (offset + n) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// One `drd` process with its own directory, config, socket and log.
pub struct Daemon {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// Extra environment for the process (e.g. the chaos suite's test-only
    /// switches); empty by default.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    /// Writes `config_body` (everything but `data_dir` and `[control]`) and
    /// prepares the daemon; call [`Daemon::start`] to run it.
    pub fn new(root: &Path, name: &str, node_id: &str, config_body: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("drd.sock");
        let config = dir.join("drd.toml");
        // The body may start with top-level keys, so [control] goes last.
        let text = format!(
            "node_id = \"{node_id}\"\ndata_dir = \"{}\"\n{config_body}\n[control]\nsocket = \"{}\"\n",
            dir.join("data").display(),
            socket.display()
        );
        std::fs::write(&config, text).unwrap();
        Self {
            name: name.to_string(),
            log: dir.join("drd.log"),
            dir,
            config,
            socket,
            env: Vec::new(),
            child: None,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin("drd"))
            .arg("--config")
            .arg(&self.config)
            .env("DRD_LOG", "info,drd=debug")
            // As deploy/systemd/drd.service runs it (see the comment there).
            .env("MALLOC_ARENA_MAX", "2")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn drd");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until the control socket answers.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.status().await.is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "{} exited with {st} during start:\n{}",
                        self.name,
                        self.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn start_ready(&mut self) {
        self.start();
        self.wait_ready().await;
    }

    pub async fn status(&self) -> anyhow::Result<pb::StatusResponse> {
        let mut c = drd::api::control::connect(&self.socket).await?;
        Ok(c.status(pb::StatusRequest {}).await?.into_inner())
    }

    /// Status of the one stream this daemon ships or receives.
    pub async fn stream(&self) -> anyhow::Result<pb::StreamStatus> {
        let s = self.status().await?;
        s.streams.into_iter().next().context("no stream in status")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.name);
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("{} did not stop after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A `kB` field of /proc/PID/status (0 if it cannot be read).
    fn proc_status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Resident file-backed pages in KiB (RssFile): mostly the program's
    /// own code and that of its shared libraries, not memory it allocated.
    pub fn file_rss_kib(&self) -> u64 {
        self.proc_status_kib("RssFile")
    }

    /// Resident set size in KiB (VmRSS), from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS")
    }

    /// Peak resident set size in KiB (VmHWM: the high-water mark since
    /// the process started), from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM")
    }

    /// Bytes of the catalog's files (RocksDB) on disk.
    pub fn catalog_bytes(&self) -> u64 {
        files_below(&self.data_dir().join("catalog"))
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    pub fn log_text(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A primary and a replica for one stream `ehr-prod`, on loopback.
pub struct Pair {
    pub root: tempfile::TempDir,
    pub primary: Daemon,
    pub replica: Daemon,
    pub wal: PathBuf,
    pub port: u16,
    /// Certificates (None for a plaintext pair).
    pub certs: Option<PathBuf>,
}

pub const STREAM: &str = "ehr-prod";
pub const PRIMARY_ID: &str = "verona-db1";
pub const REPLICA_ID: &str = "rochester-dr1";

/// Certificates for both test nodes (drd's own `certs::init_dir`, what
/// `drctl certs init` runs), so every test runs with mTLS.
/// Flips one bit of the byte at `at` in `path`, synced (damage at rest);
/// flipping it again undoes it.
pub fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

/// Whether any process's command line contains `needle` (read from /proc:
/// no procps needed).
pub fn process_running(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .any(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(needle)
        })
}

pub fn make_certs(root: &Path) -> PathBuf {
    let dir = root.join("tls");
    drd::certs::init_dir(
        &dir,
        &[PRIMARY_ID.to_string(), REPLICA_ID.to_string()],
        30,
        false,
    )
    .expect("generate test certificates");
    dir
}

/// The `[tls]` section for `node` with certificates in `dir`.
pub fn tls_section(dir: &Path, node: &str) -> String {
    format!(
        "[tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/{node}.pem\"\nkey = \"{d}/{node}.key\"\n\
         allowed_peers = [\"{PRIMARY_ID}\", \"{REPLICA_ID}\"]\n",
        d = dir.display()
    )
}

/// A replication client presenting `node`'s certificate (for tests that
/// speak the protocol by hand).
pub async fn tls_client(
    certs: &Path,
    node: &str,
    port: u16,
    server_name: &str,
) -> anyhow::Result<drd_proto::pb::replication_client::ReplicationClient<tonic::transport::Channel>>
{
    let m = drd::tls::load(&drd::tls::TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{node}.pem")),
        key: certs.join(format!("{node}.key")),
    })?;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(drd::tls::client_tls(&m, server_name))?
        .connect()
        .await?;
    Ok(drd_proto::pb::replication_client::ReplicationClient::new(
        channel,
    ))
}

impl Pair {
    /// A pair speaking mTLS. `tuning` is appended to both configs (e.g. a
    /// `[tuning]` table).
    pub fn new(tuning: &str) -> Self {
        Self::build(tuning, true)
    }

    /// A pair with `insecure_plaintext = true` (loopback only).
    pub fn plaintext(tuning: &str) -> Self {
        Self::build(tuning, false)
    }

    /// An mTLS pair whose primary's `[[stream]]` also gets `stream_keys`
    /// (e.g. `compression = "zstd"`).
    pub fn with_stream_keys(tuning: &str, stream_keys: &str) -> Self {
        Self::build_with(tuning, true, stream_keys, "", None)
    }

    /// An mTLS pair whose DR node's `[[stream]]` has `replica_stream_keys`
    /// added (e.g. a `[[stream.target]]`: the DR site tiers its copy).
    pub fn with_replica_stream_keys(tuning: &str, replica_stream_keys: &str) -> Self {
        Self::build_with(tuning, true, "", replica_stream_keys, None)
    }

    /// An mTLS pair like [`Pair::with_stream_keys`] whose primary reaches
    /// the replica through a [`proxy::Proxy`] (which counts the bytes).
    pub async fn proxied(tuning: &str, stream_keys: &str) -> (Self, std::sync::Arc<proxy::Proxy>) {
        let port = free_port();
        let proxy = proxy::Proxy::start(port).await;
        let pair = Self::build_with(tuning, true, stream_keys, "", Some((port, proxy.port)));
        (pair, proxy)
    }

    fn build(tuning: &str, tls: bool) -> Self {
        Self::build_with(tuning, tls, "", "", None)
    }

    /// `ports`: the replica's listen port and the port the primary connects
    /// to (a proxy's), when they differ.
    fn build_with(
        tuning: &str,
        tls: bool,
        stream_keys: &str,
        replica_stream_keys: &str,
        ports: Option<(u16, u16)>,
    ) -> Self {
        let root = tempfile::Builder::new()
            .prefix("drd-test-")
            .tempdir()
            .unwrap();
        let (port, peer_port) = ports.unwrap_or_else(|| {
            let p = free_port();
            (p, p)
        });
        let wal = root.path().join("wal");
        std::fs::create_dir_all(&wal).unwrap();
        let certs = tls.then(|| make_certs(root.path()));
        let (top, scheme, sec_r, sec_p) = match &certs {
            Some(d) => (
                "",
                "https",
                tls_section(d, REPLICA_ID),
                tls_section(d, PRIMARY_ID),
            ),
            None => (
                "insecure_plaintext = true\n",
                "http",
                String::new(),
                String::new(),
            ),
        };
        // The DR node's config assigns the stream to the primary (a replica
        // receives only what its config assigns); its wal_dir and peer are
        // what it would ship after a failover (nobody listens there).
        let replica_wal = root.path().join("replica-wal");
        std::fs::create_dir_all(&replica_wal).unwrap();
        let replica = Daemon::new(
            root.path(),
            "replica",
            REPLICA_ID,
            &format!(
                "{top}initial_role = \"replica\"\n[replica]\nlisten = \"127.0.0.1:{port}\"\n\
                 [[stream]]\nname = \"{STREAM}\"\nwal_dir = \"{}\"\npeer = \"{scheme}://127.0.0.1:{}\"\n\
                 peer_name = \"{PRIMARY_ID}\"\n{replica_stream_keys}\n{tuning}\n{sec_r}",
                replica_wal.display(),
                free_port()
            ),
        );
        let primary = Daemon::new(
            root.path(),
            "primary",
            PRIMARY_ID,
            &format!(
                "{top}[[stream]]\nname = \"{STREAM}\"\nwal_dir = \"{}\"\npeer = \"{scheme}://127.0.0.1:{peer_port}\"\n\
                 peer_name = \"{REPLICA_ID}\"\n{stream_keys}\n{tuning}\n{sec_p}",
                wal.display()
            ),
        );
        Self {
            root,
            primary,
            replica,
            wal,
            port,
            certs,
        }
    }

    pub fn landing(&self) -> PathBuf {
        self.replica
            .data_dir()
            .join("streams")
            .join(STREAM)
            .join("segments")
    }

    /// Waits until the primary reports the replica durable at `position`.
    pub async fn wait_durable(&self, position: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(s) = self.primary.stream().await {
                if s.durable_position >= position && s.written_position >= position {
                    return;
                }
            }
            if Instant::now() > deadline {
                let p = self.primary.status().await.ok();
                let r = self.replica.status().await.ok();
                panic!(
                    "replica not durable at {position} within {within:?}\nprimary: {p:?}\nreplica: {r:?}\n\
                     --- primary log ---\n{}\n--- replica log ---\n{}",
                    self.primary.log_text(),
                    self.replica.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `f` until it returns Some, or panics with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PostgreSQL-style name of segment `n` (timeline 1).
pub fn seg_name(n: u64) -> String {
    format!("{:08X}{:08X}{:08X}", 1, n / 256, n % 256)
}

/// Writes deterministic pseudo-random WAL-like data.
pub struct WalWriter {
    pub dir: PathBuf,
    rng: rand::rngs::StdRng,
    pub total: u64,
}

impl WalWriter {
    pub fn new(dir: &Path, seed: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            total: 0,
        }
    }

    /// Appends `len` bytes to segment `n` (creating it).
    pub fn append(&mut self, n: u64, len: usize) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(seg_name(n)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let k = left.min(buf.len());
            self.rng.fill_bytes(&mut buf[..k]);
            f.write_all(&buf[..k]).unwrap();
            left -= k;
        }
        self.total += len as u64;
    }

    /// Writes segments `first..first+count`, each `size` bytes.
    pub fn segments(&mut self, first: u64, count: u64, size: usize) {
        for n in first..first + count {
            self.append(n, size);
        }
    }
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Checks that every source segment is at the replica byte-identical: all
/// but the newest as complete `NAME`, the newest as `NAME` or `NAME.partial`.
/// Returns the number of segments compared.
pub fn assert_replica_identical(wal: &Path, landing: &Path) -> anyhow::Result<usize> {
    let mut names: Vec<String> = std::fs::read_dir(wal)?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for (i, name) in names.iter().enumerate() {
        let newest = i + 1 == names.len();
        let complete = landing.join(name);
        let theirs = if complete.exists() {
            complete
        } else if newest {
            landing.join(format!("{name}.partial"))
        } else {
            bail!("sealed segment {name} is not complete at the replica");
        };
        let (a, b) = (sha256_file(&wal.join(name))?, sha256_file(&theirs)?);
        if a != b {
            bail!("segment {name} differs: source {a}, replica {b}");
        }
    }
    Ok(names.len())
}

/// Every file below `root` (for "nothing written" checks).
pub fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Runs `drctl --socket SOCKET ARGS…`; returns (exit code, stdout, stderr).
pub fn drctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("drctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run drctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `drctl … --json`, parsed; panics unless the exit code is `want`.
pub fn drctl_json(socket: &Path, args: &[&str], want: i32) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let (code, out, err) = drctl(socket, &all);
    assert_eq!(code, want, "drctl {args:?}: exit {code}\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("drctl {args:?}: not JSON ({e}): {out}"))
}

/// The Prometheus text a daemon's `[metrics] listen` serves ("" if it
/// cannot be reached).
pub async fn metrics_text(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// SHA-256 of every file in `dir` by name (for "nothing changed" checks).
pub fn dir_digests(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_file() {
                out.insert(
                    e.file_name().into_string().unwrap(),
                    sha256_file(&e.path()).unwrap(),
                );
            }
        }
    }
    out
}

/// Two sites that can each ship and receive: Verona (`a`, first primary)
/// and Rochester (`b`, first replica). Each ships its own `wal` dir to the
/// other; optional proxies sit on both links so tests can cut them.
pub struct Sites {
    pub root: tempfile::TempDir,
    pub a: Daemon,
    pub b: Daemon,
    pub a_wal: PathBuf,
    pub b_wal: PathBuf,
    /// Verona → Rochester and Rochester → Verona links, when proxied.
    pub ab: Option<std::sync::Arc<proxy::Proxy>>,
    pub ba: Option<std::sync::Arc<proxy::Proxy>>,
}

impl Sites {
    /// `a_extra`/`b_extra` are appended to each config (e.g. `[hooks]`).
    pub async fn new(proxied: bool, tuning: &str, a_extra: &str, b_extra: &str) -> Self {
        let root = tempfile::Builder::new()
            .prefix("drd-sites-")
            .tempdir()
            .unwrap();
        let (a_port, b_port) = (free_port(), free_port());
        let (ab, ba) = if proxied {
            (
                Some(proxy::Proxy::start(b_port).await),
                Some(proxy::Proxy::start(a_port).await),
            )
        } else {
            (None, None)
        };
        let to_b = ab.as_ref().map_or(b_port, |p| p.port);
        let to_a = ba.as_ref().map_or(a_port, |p| p.port);
        let a_wal = root.path().join("verona-wal");
        let b_wal = root.path().join("rochester-wal");
        std::fs::create_dir_all(&a_wal).unwrap();
        std::fs::create_dir_all(&b_wal).unwrap();
        let certs = make_certs(root.path());
        let conf = |me: &str,
                    role: &str,
                    listen: u16,
                    wal: &Path,
                    peer: u16,
                    peer_name: &str,
                    extra: &str| {
            format!(
                "initial_role = \"{role}\"\n[replica]\nlisten = \"127.0.0.1:{listen}\"\n\
                 [[stream]]\nname = \"{STREAM}\"\nwal_dir = \"{}\"\npeer = \"https://127.0.0.1:{peer}\"\n\
                 peer_name = \"{peer_name}\"\n{tuning}\n{extra}\n{}",
                wal.display(),
                tls_section(&certs, me)
            )
        };
        let a = Daemon::new(
            root.path(),
            "verona",
            PRIMARY_ID,
            &conf(
                PRIMARY_ID, "primary", a_port, &a_wal, to_b, REPLICA_ID, a_extra,
            ),
        );
        let b = Daemon::new(
            root.path(),
            "rochester",
            REPLICA_ID,
            &conf(
                REPLICA_ID, "replica", b_port, &b_wal, to_a, PRIMARY_ID, b_extra,
            ),
        );
        Self {
            root,
            a,
            b,
            a_wal,
            b_wal,
            ab,
            ba,
        }
    }

    pub fn a_landing(&self) -> PathBuf {
        self.a
            .data_dir()
            .join("streams")
            .join(STREAM)
            .join("segments")
    }

    pub fn b_landing(&self) -> PathBuf {
        self.b
            .data_dir()
            .join("streams")
            .join(STREAM)
            .join("segments")
    }

    /// Every segment name held at a site (source or landing, `.partial`
    /// stripped) with its SHA-256.
    pub fn site_segments(wal: &Path, landing: &Path) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        for dir in [wal, landing] {
            for (name, sha) in dir_digests(dir) {
                let base = name.strip_suffix(".partial").unwrap_or(&name).to_string();
                if let Some(old) = out.insert(base.clone(), sha.clone()) {
                    assert_eq!(
                        old, sha,
                        "segment {base} held twice with different bytes at one site"
                    );
                }
            }
        }
        out
    }
}
