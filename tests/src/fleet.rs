//! One DR site for a fleet (issue 18): a DR node `dr1` that receives many
//! streams from many primaries `p01..pNN` over mTLS, each primary with its
//! own certificate and streams `pNN-sK`; steady writers on every stream;
//! checks that poll the primaries with deadlines; and what the DR process
//! costs (peak RSS, peak open fds, CPU seconds) from /proc.

use crate::{assert_replica_identical, free_port, wait_for, Daemon, WalWriter};
use drd_proto::pb;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Node id (and certificate name) of the DR node.
pub const DR_ID: &str = "dr1";

/// Node id of primary `i` (0-based): `p01`, `p02`, …
pub fn primary_id(i: usize) -> String {
    format!("p{:02}", i + 1)
}

/// Name of stream `k` (0-based) of primary `i`: `p07-s3` is primary 6's
/// stream 2.
pub fn stream_name(i: usize, k: usize) -> String {
    format!("{}-s{}", primary_id(i), k + 1)
}

/// One stream of the fleet as both ends see it.
#[derive(Clone, Debug)]
pub struct FleetStream {
    pub name: String,
    /// Index of the primary that ships it (into [`Fleet::primaries`]).
    pub primary: usize,
    /// The primary's source: the database's WAL directory.
    pub wal: PathBuf,
    /// The DR node's `wal_dir` for the stream: what it ships after a
    /// failover (the promoted database's WAL directory).
    pub dr_wal: PathBuf,
}

/// A primary node of the fleet.
pub struct FleetPrimary {
    pub daemon: Daemon,
    /// Its `[replica] listen` port: it receives a stream back there after
    /// that stream failed over and it rejoined.
    pub port: u16,
    /// Its streams, by index into [`Fleet::streams`].
    pub streams: Vec<usize>,
}

/// A stream a primary is configured to ship that the DR node does not
/// assign to it (issue 18's refusal case).
#[derive(Clone, Debug)]
pub struct Unassigned {
    /// Index of the primary that (wrongly) ships it.
    pub primary: usize,
    pub name: String,
    pub wal: PathBuf,
}

/// The fleet: `dr1` plus `primaries` nodes, all on loopback with mTLS
/// certificates from one CA.
pub struct Fleet {
    // Field order is drop order: the daemons are killed before their
    // directory is removed.
    pub dr: Daemon,
    pub primaries: Vec<FleetPrimary>,
    pub streams: Vec<FleetStream>,
    pub unassigned: Vec<Unassigned>,
    /// dr1's replication listen port.
    pub dr_port: u16,
    pub certs: PathBuf,
    pub root: tempfile::TempDir,
}

/// The `[tls]` section of `node`, allowing `peers` to connect.
fn tls_section(certs: &Path, node: &str, peers: &[String]) -> String {
    let allowed: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "[tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/{node}.pem\"\nkey = \"{d}/{node}.key\"\n\
         allowed_peers = [{}]\n",
        allowed.join(", "),
        d = certs.display()
    )
}

fn stream_table(name: &str, wal: &Path, peer_port: u16, peer_name: &str) -> String {
    format!(
        "[[stream]]\nname = \"{name}\"\nwal_dir = \"{}\"\npeer = \"https://127.0.0.1:{peer_port}\"\n\
         peer_name = \"{peer_name}\"\n",
        wal.display()
    )
}

fn mkdir(p: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&p).unwrap();
    p
}

impl Fleet {
    /// `primaries` × `streams_per_primary` streams into `dr1`; `tuning` is
    /// appended to every node's config (e.g. a `[tuning]` table).
    pub fn new(primaries: usize, streams_per_primary: usize, tuning: &str) -> Self {
        Self::with_unassigned(primaries, streams_per_primary, tuning, &[])
    }

    /// Like [`Fleet::new`], and primary `i` of each `(i, name)` also ships
    /// stream `name`, which dr1 lists for another primary or not at all.
    /// Each such stream has a WAL directory of its own at the primary.
    pub fn with_unassigned(
        primaries: usize,
        streams_per_primary: usize,
        tuning: &str,
        unassigned: &[(usize, &str)],
    ) -> Self {
        assert!((1..100).contains(&primaries), "primaries are p01..p99");
        let root = tempfile::Builder::new()
            .prefix("drd-fleet-")
            .tempdir()
            .unwrap();
        let r = root.path();
        let ids: Vec<String> = (0..primaries).map(primary_id).collect();
        let certs = r.join("tls");
        let mut names = vec![DR_ID.to_string()];
        names.extend(ids.iter().cloned());
        drd::certs::init_dir(&certs, &names, 30, false).expect("generate fleet certificates");

        let dr_port = free_port();
        let ports: Vec<u16> = (0..primaries).map(|_| free_port()).collect();
        let mut streams = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            for k in 0..streams_per_primary {
                let name = stream_name(i, k);
                streams.push(FleetStream {
                    wal: mkdir(r.join(id).join("wal").join(&name)),
                    dr_wal: mkdir(r.join(DR_ID).join("wal").join(&name)),
                    name,
                    primary: i,
                });
            }
        }
        let unassigned: Vec<Unassigned> = unassigned
            .iter()
            .map(|&(i, name)| Unassigned {
                primary: i,
                name: name.to_string(),
                wal: mkdir(r.join(&ids[i]).join("unassigned-wal").join(name)),
            })
            .collect();

        let dr_streams: String = streams
            .iter()
            .map(|s| stream_table(&s.name, &s.dr_wal, ports[s.primary], &ids[s.primary]))
            .collect();
        let dr = Daemon::new(
            r,
            DR_ID,
            DR_ID,
            &format!(
                "initial_role = \"replica\"\n[replica]\nlisten = \"127.0.0.1:{dr_port}\"\n\
                 {dr_streams}\n{tuning}\n{}",
                tls_section(&certs, DR_ID, &ids)
            ),
        );
        let primaries = (0..primaries)
            .map(|i| {
                let mine: Vec<usize> = (0..streams.len())
                    .filter(|&n| streams[n].primary == i)
                    .collect();
                let mut tables: String = mine
                    .iter()
                    .map(|&n| stream_table(&streams[n].name, &streams[n].wal, dr_port, DR_ID))
                    .collect();
                for u in unassigned.iter().filter(|u| u.primary == i) {
                    tables += &stream_table(&u.name, &u.wal, dr_port, DR_ID);
                }
                let daemon = Daemon::new(
                    r,
                    &ids[i],
                    &ids[i],
                    &format!(
                        "initial_role = \"primary\"\n[replica]\nlisten = \"127.0.0.1:{}\"\n\
                         {tables}\n{tuning}\n{}",
                        ports[i],
                        tls_section(&certs, &ids[i], &[DR_ID.to_string()])
                    ),
                );
                FleetPrimary {
                    daemon,
                    port: ports[i],
                    streams: mine,
                }
            })
            .collect();
        Self {
            dr,
            primaries,
            streams,
            unassigned,
            dr_port,
            certs,
            root,
        }
    }

    /// Starts dr1, then every primary, all at once, and waits until each
    /// control socket answers.
    pub async fn start_all(&mut self) {
        self.dr.start_ready().await;
        self.start_primaries().await;
    }

    /// Starts every primary at once and waits until each answers.
    pub async fn start_primaries(&mut self) {
        for p in &mut self.primaries {
            p.daemon.start();
        }
        for p in &mut self.primaries {
            p.daemon.wait_ready().await;
        }
    }

    /// The stream called `name`.
    pub fn stream(&self, name: &str) -> &FleetStream {
        self.streams
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no stream {name} in the fleet"))
    }

    /// The primary that ships `name`.
    pub fn primary_of(&self, name: &str) -> &FleetPrimary {
        &self.primaries[self.stream(name).primary]
    }

    /// Where dr1 lands stream `name`.
    pub fn dr_landing(&self, name: &str) -> PathBuf {
        landing(&self.dr, name)
    }

    /// One writer target per stream at its primary (seed = stream index).
    pub fn primary_targets(&self) -> Vec<Target> {
        self.streams
            .iter()
            .enumerate()
            .map(|(n, s)| Target::new(&s.name, &s.wal, 1000 + n as u64, 1))
            .collect()
    }

    /// Durable position at dr1 of every stream, as its primary reports it
    /// (streams whose primary does not answer are left out).
    pub async fn durable_positions(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for p in &self.primaries {
            for (name, s) in stream_statuses(&p.daemon).await.unwrap_or_default() {
                out.insert(name, s.durable_position);
            }
        }
        out
    }

    /// Waits until the primaries report every stream in `totals` written
    /// and durable at dr1 at (at least) its total; returns how long it took.
    pub async fn wait_durable(&self, totals: &BTreeMap<String, u64>, within: Duration) -> Duration {
        let start = Instant::now();
        let deadline = start + within;
        loop {
            let mut behind = Vec::new();
            for p in &self.primaries {
                let st = stream_statuses(&p.daemon).await.unwrap_or_default();
                for &n in &p.streams {
                    let name = &self.streams[n].name;
                    let Some(&want) = totals.get(name) else {
                        continue;
                    };
                    match st.get(name) {
                        Some(s) if s.durable_position >= want && s.written_position >= want => {}
                        Some(s) => behind.push(format!(
                            "{name}: written {} durable {} of {want} (connected {}, last error {:?})",
                            s.written_position, s.durable_position, s.connected, s.last_error
                        )),
                        None => behind.push(format!("{name}: no status from its primary")),
                    }
                }
            }
            if behind.is_empty() {
                return start.elapsed();
            }
            if Instant::now() > deadline {
                let worst =
                    &self.primaries[self.stream(behind[0].split(':').next().unwrap()).primary];
                panic!(
                    "{} of {} streams not durable at dr1 within {within:?}:\n{}\n\
                     --- {} log ---\n{}\n--- dr1 log ---\n{}",
                    behind.len(),
                    totals.len(),
                    behind.join("\n"),
                    worst.daemon.name,
                    worst.daemon.log_text(),
                    self.dr.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every stream's source at its primary is byte-identical at dr1;
    /// returns the number of segments compared.
    pub fn assert_all_identical(&self) -> usize {
        self.streams
            .iter()
            .map(|s| {
                assert_replica_identical(&s.wal, &self.dr_landing(&s.name))
                    .unwrap_or_else(|e| panic!("stream {}: {e:#}", s.name))
            })
            .sum()
    }
}

/// A received stream's landing directory at `d`.
pub fn landing(d: &Daemon, stream: &str) -> PathBuf {
    d.data_dir().join("streams").join(stream).join("segments")
}

/// Every stream in `d`'s status, by name.
pub async fn stream_statuses(d: &Daemon) -> anyhow::Result<BTreeMap<String, pb::StreamStatus>> {
    Ok(d.status()
        .await?
        .streams
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect())
}

/// Each stream's role and epoch as `drctl status --json` prints them
/// (roles as the node's own: "primary", "replica", "fenced").
pub fn stream_roles(d: &Daemon) -> BTreeMap<String, (String, u64)> {
    let s = crate::drctl_json(&d.socket, &["status"], 0);
    s["streams"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no streams in drctl status --json: {s}", d.name))
        .iter()
        .map(|t| {
            let role = t["role"].as_str().unwrap_or_else(|| {
                panic!(
                    "{}: drctl status --json has no role per stream: {t}",
                    d.name
                )
            });
            let epoch = t["epoch"].as_u64().unwrap_or_else(|| {
                panic!(
                    "{}: drctl status --json has no epoch per stream: {t}",
                    d.name
                )
            });
            (
                t["name"].as_str().unwrap().to_string(),
                (role.to_string(), epoch),
            )
        })
        .collect()
}

/// The highest segment number among `dirs`' files (`.partial` and other
/// suffixes ignored), 0 when there is none: a writer that continues a log
/// after a failover starts at the next one.
pub fn last_segment(dirs: &[&Path]) -> u64 {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let hex = name.get(..24)?;
            let (log, seg) = (
                u64::from_str_radix(&hex[8..16], 16).ok()?,
                u64::from_str_radix(&hex[16..], 16).ok()?,
            );
            Some(log * 256 + seg)
        })
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Steady writers

/// How a steady writer paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Bytes appended to each stream per tick.
    pub chunk: usize,
    pub tick: Duration,
    /// A new segment starts once the current one holds this many bytes.
    pub segment: usize,
}

impl Default for Pace {
    /// 4 KiB every 50 ms (80 KiB/s a stream) in 512 KiB segments: a few
    /// segments a stream over a 30 s run, 8 MB/s for 100 streams.
    fn default() -> Self {
        Self {
            chunk: 4096,
            tick: Duration::from_millis(50),
            segment: 512 * 1024,
        }
    }
}

/// One WAL directory a steady writer appends to.
pub struct Target {
    /// The writer's name for it (a stream name, or e.g. `p03-s2@dr1`).
    pub key: String,
    writer: WalWriter,
    segment: u64,
    in_segment: usize,
    stopped: bool,
}

impl Target {
    /// Appends to `dir` from segment `first_segment` on, with data from
    /// `seed`.
    pub fn new(key: &str, dir: &Path, seed: u64, first_segment: u64) -> Self {
        Self {
            key: key.to_string(),
            writer: WalWriter::new(dir, seed),
            segment: first_segment,
            in_segment: 0,
            stopped: false,
        }
    }
}

/// Longest a steady writer runs if nobody stops it: no test may hang on it.
const WRITER_MAX_RUN: Duration = Duration::from_secs(600);

/// A thread that appends `pace.chunk` bytes to each of its targets every
/// tick, rolling to a new segment at `pace.segment` bytes; each target can
/// be stopped alone, and targets can be added while it runs.
pub struct SteadyWriters {
    targets: Arc<Mutex<Vec<Target>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SteadyWriters {
    pub fn start(targets: Vec<Target>, pace: Pace) -> Self {
        let targets = Arc::new(Mutex::new(targets));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (targets.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut next = started;
            while !s.load(Ordering::Relaxed) && started.elapsed() < WRITER_MAX_RUN {
                {
                    let mut all = t.lock().unwrap();
                    for w in all.iter_mut().filter(|w| !w.stopped) {
                        if w.in_segment >= pace.segment {
                            w.segment += 1;
                            w.in_segment = 0;
                        }
                        w.writer.append(w.segment, pace.chunk);
                        w.in_segment += pace.chunk;
                    }
                }
                // Keep the rate even when a round is slow: the next tick is
                // due a tick after the last one, not after the round.
                next += pace.tick;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Self {
            targets,
            stop,
            handle: Some(handle),
        }
    }

    /// Adds a target while the writer runs.
    pub fn add(&self, target: Target) {
        self.targets.lock().unwrap().push(target);
    }

    /// Stops writing to `key` (no byte is appended to it after this
    /// returns); returns its total.
    pub fn stop_one(&self, key: &str) -> u64 {
        let mut all = self.targets.lock().unwrap();
        let t = all
            .iter_mut()
            .find(|t| t.key == key)
            .unwrap_or_else(|| panic!("no writer target {key}"));
        t.stopped = true;
        t.writer.total
    }

    /// Bytes written so far, by key.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.targets
            .lock()
            .unwrap()
            .iter()
            .map(|t| (t.key.clone(), t.writer.total))
            .collect()
    }

    /// Stops every target and the thread; returns the totals by key.
    pub fn finish(mut self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("steady writer panicked");
        }
        self.totals()
    }
}

impl Drop for SteadyWriters {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// What the DR process costs

/// Resource figures of one process over a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resources {
    /// VmHWM: the resident set's high-water mark since the process started.
    pub peak_rss_kib: u64,
    /// Most entries seen in /proc/PID/fd (sampled).
    pub peak_fds: usize,
    /// utime + stime since the sampler started.
    pub cpu_seconds: f64,
}

/// How often the sampler counts open fds.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Samples a process's open fds in a thread; peak RSS and CPU seconds come
/// from /proc at the end.
pub struct Sampler {
    pid: u32,
    cpu_start: f64,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, u64)>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut fds, mut hwm) = (0, 0);
            // Bounded like the writers: a forgotten sampler ends by itself.
            let started = Instant::now();
            while !s.load(Ordering::Relaxed) && started.elapsed() < WRITER_MAX_RUN {
                fds = fds.max(open_fds(pid));
                hwm = hwm.max(status_kib(pid, "VmHWM"));
                std::thread::sleep(SAMPLE_EVERY);
            }
            (fds, hwm)
        });
        Self {
            pid,
            cpu_start: cpu_seconds(pid),
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; the process must still be running for exact CPU and
    /// RSS figures (the samples taken so far count otherwise).
    pub fn finish(mut self) -> Resources {
        self.stop.store(true, Ordering::Relaxed);
        let (fds, hwm) = self
            .handle
            .take()
            .map(|h| h.join().expect("sampler panicked"))
            .unwrap_or_default();
        Resources {
            peak_rss_kib: hwm.max(status_kib(self.pid, "VmHWM")),
            peak_fds: fds.max(open_fds(self.pid)),
            cpu_seconds: cpu_seconds(self.pid) - self.cpu_start,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Entries in /proc/PID/fd (0 if it cannot be read).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |rd| rd.count())
}

/// A `KEY: N kB` field of /proc/PID/status, in KiB (0 if absent).
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of `pid` in seconds (/proc/PID/stat, in clock ticks).
pub fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces and parentheses): the
    // state is field 0, utime 11 and stime 12 (fields 14 and 15 of proc(5)).
    let rest: Vec<&str> = s
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Waits until `drctl status --json` at `d` shows stream `name` with
/// `role` ("primary", "replica", "fenced").
pub async fn wait_stream_role(d: &Daemon, name: &str, role: &str, within: Duration) {
    wait_for(
        &format!("{name} to be {role} at {}", d.name),
        within,
        || async { (stream_roles(d).get(name)?.0 == role).then_some(()) },
    )
    .await;
}
