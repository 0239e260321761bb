//! Issue 19's object-store figures: how fast a drd primary with no DR peer
//! uploads a backlog of sealed segments to a real S3-compatible server
//! (moto, on 127.0.0.1), how many requests that costs per GiB, and how many
//! partial objects a growing segment costs per `upload_interval`.
//!
//! Baselines from the same run, against the same moto process:
//! - create-only puts of the same segments' plaintext, one at a time (the
//!   pattern drd uses: one target uploads one object at a time) and four
//!   at a time (whether the server itself is the limit), through drd's own
//!   bucket client (`drd_bucket::Bucket`, object_store underneath) without
//!   encryption, chain or catalog;
//! - age encryption of one segment alone, on one core (what the client-side
//!   encryption costs before any request is made).
//!
//! The backlog is random bytes in 16 MiB segments, the size PostgreSQL
//! archives; drd's stream has `source = "tail"` and no `peer`, so the
//! primary seals locally and the bucket is the DR copy (issue 19's "ship
//! straight from the hospital, no DR host needed").

use crate::baseline::Transfer;
use crate::procs::{self, Bins, Proc};
use crate::stats::Row;
use anyhow::{bail, Context};
use bytes::Bytes;
use drd_tests::objstore::Moto;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;
const SEG: usize = 16 << 20;
const BUCKET: &str = "bench";

/// The part's options.
pub struct Opts {
    /// Sealed backlog uploaded by drd and by the baselines, in MiB (a
    /// multiple of 16).
    pub backlog_mib: u64,
    /// How long the growing segment grows, and how fast.
    pub grow_seconds: f64,
    pub grow_rate_mb: f64,
    /// The target's `upload_interval` in the growth run.
    pub interval_ms: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            backlog_mib: 512,
            grow_seconds: 20.0,
            grow_rate_mb: 0.5,
            interval_ms: 1000,
        }
    }
}

impl Opts {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.backlog_mib < 16 || !self.backlog_mib.is_multiple_of(16) {
            bail!("--targets-backlog-mib must be a positive multiple of 16");
        }
        if !(self.grow_seconds >= 1.0 && self.grow_seconds <= 600.0) {
            bail!("--targets-grow-seconds must be between 1 and 600");
        }
        // The growing segment must stay one segment (under 16 MiB).
        if !(self.grow_rate_mb > 0.0 && self.grow_rate_mb * 1e6 * self.grow_seconds < SEG as f64) {
            bail!(
                "--targets-grow-rate-mb × --targets-grow-seconds must stay under one 16 MiB segment"
            );
        }
        if self.interval_ms < 100 {
            bail!("--targets-interval-ms must be at least 100");
        }
        Ok(())
    }
}

/// Requests by kind, as drd's metrics count them (every attempt, retries
/// included).
#[derive(Clone, Copy, Default, Debug)]
pub struct Requests {
    pub put: u64,
    pub get: u64,
    pub list: u64,
    pub retries: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.put + self.get + self.list
    }

    fn minus(&self, o: &Requests) -> Requests {
        Requests {
            put: self.put.saturating_sub(o.put),
            get: self.get.saturating_sub(o.get),
            list: self.list.saturating_sub(o.list),
            retries: self.retries.saturating_sub(o.retries),
        }
    }
}

/// The growth run: a segment growing at a steady rate.
pub struct Grow {
    pub secs: f64,
    pub bytes: u64,
    /// Partial objects drd wrote while it grew, and the requests of the
    /// whole run (the growth, then the segment's seal and upload).
    pub partials: u64,
    pub requests: Requests,
    /// The partials `upload_interval` implies: one per interval while the
    /// segment grows.
    pub expected_partials: u64,
    /// The highest upload lag `drctl status` showed (sampled every 100 ms).
    pub max_lag_s: f64,
}

pub struct Figures {
    pub moto_version: String,
    pub segments: u64,
    pub drd: Transfer,
    pub drd_cpu: f64,
    pub drd_hwm_kib: u64,
    pub drd_requests: Requests,
    /// Sequential create-only puts: the best of a run before and one after
    /// drd's.
    pub put_seq: Transfer,
    pub put_seq_runs: (f64, f64),
    pub put_par4: Transfer,
    /// age encryption of the backlog's segments on one core: CPU seconds.
    pub seal_cpu: f64,
    pub seal_bytes: u64,
    pub grow: Grow,
    pub interval_ms: u64,
    /// Sealed and partial objects drd had written when its backlog
    /// requests were read.
    pub objects_at_done: (u64, u64),
}

/// The moto program and its version, or an error saying how to install it.
fn moto_version() -> anyhow::Result<String> {
    let dir = std::env::var(drd_tests::objstore::BIN_DIR_ENV)
        .unwrap_or_else(|_| drd_tests::objstore::BIN_DIR.into());
    let prog = Path::new(&dir).join("moto_server");
    if !prog.exists() {
        bail!(
            "{} not found: the object-store part needs moto. Install it with \
             `. deploy/dev/setup.sh && drd_setup test` (into /opt/drd-test), or leave the part out \
             with --only",
            prog.display()
        );
    }
    // moto_server has no --version; the installed package's metadata says it.
    let py = Path::new(&dir).join("../moto/bin/python");
    let v = std::process::Command::new(&py)
        .args(["-c", "import moto; print(moto.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "version unknown".into());
    Ok(format!("moto {v}"))
}

fn bucket(moto: &Moto, prefix: &str) -> anyhow::Result<drd_bucket::Bucket> {
    drd_bucket::Bucket::open_with(
        &format!("s3://{BUCKET}/{prefix}"),
        Some(&moto.endpoint()),
        drd_bucket::RetryPolicy::default(),
        &moto.env(),
    )
    .with_context(|| format!("open s3://{BUCKET}/{prefix}"))
}

/// Create-only puts of `segs` under a fresh prefix, `parallel` at a time.
async fn puts(
    moto: &Moto,
    prefix: &str,
    segs: &[Bytes],
    parallel: usize,
) -> anyhow::Result<Transfer> {
    use futures::StreamExt;
    let b = bucket(moto, prefix)?;
    let t = Instant::now();
    let results: Vec<_> = futures::stream::iter(segs.iter().enumerate())
        .map(|(i, s)| {
            let b = &b;
            async move { b.put_new(&format!("seg/{i:08}"), s.clone()).await }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let secs = t.elapsed().as_secs_f64();
    for r in results {
        match r? {
            drd_bucket::store::Put::Created => {}
            other => bail!("baseline put under a fresh prefix: {other:?}"),
        }
    }
    Ok(Transfer {
        bytes: segs.iter().map(|s| s.len() as u64).sum(),
        secs,
        // This process's CPU is not what is compared here.
        cpu_send: 0.0,
        cpu_recv: 0.0,
    })
}

/// drd's target requests from its Prometheus text.
fn requests(metrics: &str) -> Requests {
    let mut r = Requests::default();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: u64 = v.parse::<f64>().unwrap_or(0.0) as u64;
        if name_labels.starts_with("drd_target_requests_total") {
            if name_labels.contains("op=\"put\"") {
                r.put += v;
            } else if name_labels.contains("op=\"get\"") {
                r.get += v;
            } else if name_labels.contains("op=\"list\"") {
                r.list += v;
            }
        } else if name_labels.starts_with("drd_target_retries_total") {
            r.retries += v;
        }
    }
    r
}

/// The first target of the node's status.
async fn target(p: &Proc) -> anyhow::Result<drd_proto::pb::TargetStatus> {
    p.status()
        .await?
        .targets
        .into_iter()
        .next()
        .context("no target in drd's status")
}

/// Polls drd's metrics until they are sampled (the sampler runs every
/// second) and `done` holds of the target's status, or the deadline.
async fn wait_target(
    p: &Proc,
    what: &str,
    deadline: Duration,
    mut done: impl FnMut(&drd_proto::pb::TargetStatus) -> bool,
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    loop {
        let t = target(p).await?;
        if done(&t) {
            return Ok(Instant::now());
        }
        if t.state == "error" || t.state == "conflict" {
            bail!(
                "target {}: {} ({})\n{}",
                t.url,
                t.state,
                t.last_error,
                p.log_tail()
            );
        }
        if start.elapsed() > deadline {
            bail!(
                "{what}: not within {deadline:?} (target state {}, last segment {:?}, {} segments)\n{}",
                t.state,
                t.last_segment,
                t.segments,
                p.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests as the metrics say, once the daemon has sampled its counters
/// after this call (it does so every second), with the target's status
/// read at the same point.
async fn settled(p: &Proc, port: u16) -> anyhow::Result<(Requests, drd_proto::pb::TargetStatus)> {
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = requests(&drd_tests::metrics_text(port).await);
    Ok((r, target(p).await?))
}

pub async fn measure(bins: &Bins, o: &Opts) -> anyhow::Result<Figures> {
    let moto_version = moto_version()?;
    eprintln!("object-store targets: starting {moto_version}…");
    let moto =
        tokio::task::spawn_blocking(|| Moto::start().context("moto not installed")).await??;
    moto.create_bucket(BUCKET);

    let n = o.backlog_mib / 16;
    let root = tempfile::Builder::new()
        .prefix("drd-bench-targets-")
        .tempdir()?;
    let wal = root.path().join("wal");
    std::fs::create_dir_all(&wal)?;
    let buf = crate::baseline::random_buffer(SEG, 1919);
    let mut segs = Vec::new();
    for i in 1..=n {
        let mut s = buf.clone();
        s[..8].copy_from_slice(&i.to_le_bytes());
        let mut f = std::fs::File::create(wal.join(drd_tests::seg_name(i)))?;
        f.write_all(&s)?;
        // Synced so its write-back does not land inside the timed runs.
        f.sync_all()?;
        segs.push(Bytes::from(s));
    }
    let total = n * SEG as u64;

    eprintln!("object-store targets: age encryption alone (one core)…");
    let (secret, recipient) = drd_bucket::crypto::generate();
    drop(secret);
    let sealer = drd_bucket::Sealer::from_config(std::slice::from_ref(&recipient), None)?;
    let seal_segs = segs.len().min(8);
    let c0 = procs::thread_cpu_seconds();
    for s in &segs[..seal_segs] {
        std::hint::black_box(sealer.seal(s)?);
    }
    let seal_cpu = procs::thread_cpu_seconds() - c0;
    let seal_bytes = (seal_segs * SEG) as u64;

    eprintln!("object-store targets: create-only puts, one at a time…");
    let seq_a = puts(&moto, "baseline-seq-a", &segs, 1).await?;

    eprintln!("object-store targets: drd primary (no peer) uploading {n} sealed segments…");
    let certs = drd_tests::make_certs(root.path());
    let mport = drd_tests::free_port();
    let interval = o.interval_ms;
    let d = {
        let mut d = drd_tests::Daemon::new(
            root.path(),
            "primary",
            drd_tests::PRIMARY_ID,
            &format!(
                "initial_role = \"primary\"\n\
                 [[stream]]\nname = \"ehr-prod\"\nwal_dir = \"{}\"\n\
                 [[stream.target]]\nurl = \"s3://{BUCKET}/drd\"\nendpoint = \"{}\"\n\
                 recipients = [\"{recipient}\"]\nupload_interval = \"{interval}ms\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{mport}\"\n{}",
                wal.display(),
                moto.endpoint(),
                drd_tests::tls_section(&certs, drd_tests::PRIMARY_ID),
            ),
        );
        d.env = moto.env();
        d
    };
    // The growing segment: a few bytes, so every backlog segment is sealed.
    let growing_path = wal.join(drd_tests::seg_name(n + 1));
    std::fs::write(&growing_path, b"growing")?;
    let t0 = Instant::now();
    let p = Proc::start_ready(bins, &d).await?;
    let last = drd_tests::seg_name(n);
    let done = wait_target(
        &p,
        "the backlog in the bucket",
        Duration::from_secs(600),
        |t| t.last_segment == last,
    )
    .await?;
    let drd_cpu = p.cpu_seconds();
    let drd = Transfer {
        bytes: total,
        secs: (done - t0).as_secs_f64(),
        cpu_send: drd_cpu,
        cpu_recv: 0.0,
    };
    let drd_hwm_kib = p.hwm_kib();
    let (drd_requests, at_done) = settled(&p, mport).await?;

    eprintln!("object-store targets: create-only puts again, one at a time, then four at a time…");
    let seq_b = puts(&moto, "baseline-seq-b", &segs, 1).await?;
    let put_par4 = puts(&moto, "baseline-par4", &segs, 4).await?;
    let put_seq_runs = (seq_a.mb_per_s(), seq_b.mb_per_s());
    let put_seq = if seq_a.mb_per_s() >= seq_b.mb_per_s() {
        seq_a
    } else {
        seq_b
    };

    eprintln!(
        "object-store targets: a segment growing at {} MB/s for {} s (upload_interval {} ms)…",
        o.grow_rate_mb, o.grow_seconds, o.interval_ms
    );
    // Let the first partial (of the 7 bytes above) go, then start counting.
    tokio::time::sleep(Duration::from_millis(2 * interval)).await;
    let (before_r, before_t) = settled(&p, mport).await?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&growing_path)?;
    let chunk = vec![0x5au8; 64 << 10];
    let step = Duration::from_secs_f64(chunk.len() as f64 / (o.grow_rate_mb * 1e6));
    let g0 = Instant::now();
    let mut written = 0u64;
    let mut max_lag_s: f64 = 0.0;
    let mut next = g0;
    let mut next_sample = g0;
    while g0.elapsed().as_secs_f64() < o.grow_seconds {
        let now = Instant::now();
        if now >= next {
            f.write_all(&chunk)?;
            written += chunk.len() as u64;
            next += step;
        }
        if now >= next_sample {
            max_lag_s = max_lag_s.max(target(&p).await?.lag_seconds);
            next_sample += Duration::from_millis(100);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let grow_secs = g0.elapsed().as_secs_f64();
    // The last bytes' partial, then the seal: a next segment appears.
    tokio::time::sleep(Duration::from_millis(2 * interval)).await;
    let mid_t = target(&p).await?;
    std::fs::write(wal.join(drd_tests::seg_name(n + 2)), b"next")?;
    let grown = drd_tests::seg_name(n + 1);
    wait_target(
        &p,
        "the grown segment sealed in the bucket",
        Duration::from_secs(60),
        |t| t.last_segment == grown,
    )
    .await?;
    let (after_r, _) = settled(&p, mport).await?;
    let grow = Grow {
        secs: grow_secs,
        bytes: written,
        partials: mid_t.partials.saturating_sub(before_t.partials),
        requests: after_r.minus(&before_r),
        expected_partials: (grow_secs * 1000.0 / interval as f64).ceil() as u64,
        max_lag_s,
    };
    drop(p);
    Ok(Figures {
        moto_version,
        segments: n,
        drd,
        drd_cpu,
        drd_hwm_kib,
        drd_requests,
        put_seq,
        put_seq_runs,
        put_par4,
        seal_cpu,
        seal_bytes,
        grow,
        interval_ms: interval,
        objects_at_done: (at_done.segments, at_done.partials),
    })
}

pub fn rows(f: &Figures) -> Vec<Row> {
    let gib = f.drd.bytes as f64 / GIB;
    let per_gib = f.drd_requests.total() as f64 / gib;
    // One put per sealed segment (64 per GiB of 16 MiB segments), plus the
    // partials the growing segment had by then.
    let (sealed, partials) = f.objects_at_done;
    let ideal = (sealed + partials) as f64 / gib;
    let seal_mb = f.seal_bytes as f64 / f.seal_cpu.max(1e-9) / 1e6;
    let g = &f.grow;
    // The growth run's ideal: its partials plus the one sealed segment.
    let g_ideal = g.expected_partials + 1;
    vec![
        Row::new(
            &format!("upload to S3 (moto), {} MiB, no peer", f.drd.bytes >> 20),
            format!("{:.0} MB/s ({:.1} s)", f.drd.mb_per_s(), f.drd.secs),
            format!(
                "create-only puts, 1 at a time: {:.0} MB/s (runs {:.0}, {:.0})",
                f.put_seq.mb_per_s(),
                f.put_seq_runs.0,
                f.put_seq_runs.1
            ),
            format!("{:.2}x", f.drd.mb_per_s() / f.put_seq.mb_per_s()),
            "-",
            None,
        ),
        Row::new(
            "upload to S3 vs 4 puts at a time",
            format!("{:.0} MB/s", f.drd.mb_per_s()),
            format!("{:.0} MB/s", f.put_par4.mb_per_s()),
            format!("{:.2}x", f.drd.mb_per_s() / f.put_par4.mb_per_s()),
            "-",
            None,
        ),
        Row::new(
            "requests per GiB, sealed backlog",
            format!(
                "{per_gib:.1} (put {}, get {}, list {}, retries {})",
                f.drd_requests.put, f.drd_requests.get, f.drd_requests.list, f.drd_requests.retries
            ),
            format!(
                "one put per object: {ideal:.1} ({sealed} sealed segments, {partials} partials)"
            ),
            format!("{:.3}x", per_gib / ideal),
            "1 put per sealed segment (+ partials)",
            Some(sealed == f.segments && f.drd_requests.total() == sealed + partials),
        ),
        Row::new(
            &format!(
                "partials, {:.1} MB/s for {:.0} s, upload_interval {} ms",
                g.bytes as f64 / g.secs / 1e6,
                g.secs,
                f.interval_ms
            ),
            format!(
                "{} partials; {} requests with the seal (put {}, get {}, list {}); max upload lag {:.1} s",
                g.partials,
                g.requests.total(),
                g.requests.put,
                g.requests.get,
                g.requests.list,
                g.max_lag_s
            ),
            format!("one per interval: {} (+1 sealed put)", g.expected_partials),
            format!("{:.2}x", g.requests.total() as f64 / g_ideal as f64),
            "partials per interval + 1",
            Some(g.partials <= g.expected_partials + 1 && g.requests.total() <= g_ideal + 2),
        ),
        Row::new(
            "CPU per GiB uploaded, drd (no peer)",
            format!("{:.2} core-s/GiB", f.drd_cpu / gib),
            format!(
                "age encryption alone {:.2} core-s/GiB ({seal_mb:.0} MB/s, one core)",
                f.seal_cpu / (f.seal_bytes as f64 / GIB)
            ),
            "-".into(),
            "-",
            None,
        ),
        Row::new(
            "peak RSS (VmHWM), drd uploading",
            format!("{:.0} MiB", f.drd_hwm_kib as f64 / 1024.0),
            "64 MiB (issue 20's bound)".into(),
            format!("{:.2}x", f.drd_hwm_kib as f64 / 1024.0 / 64.0),
            "-",
            None,
        ),
    ]
}

pub fn notes(f: &Figures, o: &Opts) -> Vec<String> {
    vec![
        format!(
            "- object-store targets: {} on 127.0.0.1 (in-memory storage, plain HTTP), one drd primary with \
             a `source = \"tail\"` stream, no peer, one `[[stream.target]]` with one age recipient. The \
             upload is timed from drd's start to `drctl status` naming the last of the {} sealed 16 MiB \
             segments (random bytes) as written; it includes the local seal of each segment (read, SHA-256, \
             catalog) and its encryption. Requests are drd's own counters (`drd_target_requests_total`, every \
             attempt).",
            f.moto_version, f.segments
        ),
        format!(
            "- baselines: the same segments' plaintext as create-only puts through drd's bucket client \
             (object_store, `PutMode::Create`) under fresh prefixes of the same moto, one at a time before \
             and after drd's run, and four at a time; age encryption of {} segments on one thread.",
            f.seal_bytes >> 24
        ),
        format!(
            "- growth run: 64 KiB appended to the growing segment every {:.0} ms for {} s; partials counted \
             from `drctl status` until {} ms after the last append; requests until the grown segment was \
             sealed (a next one appeared) and written to the bucket. The upload lag is `drctl status`'s \
             (seconds the bucket is behind the local log).",
            65536.0 / (o.grow_rate_mb * 1e6) * 1000.0,
            o.grow_seconds,
            2 * o.interval_ms
        ),
    ]
}
