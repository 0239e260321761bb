//! The fleet part (issue 18): one replica receiving 1, 10 and 100 streams at
//! once from primaries of five streams each — aggregate catch-up of a backlog
//! written before the primaries start, then steady lag under a paced writer
//! on every stream — each stream count next to the one-stream run of the
//! same run (and the catch-up of one stream next to the ceiling).

use crate::baseline::{random_buffer, settle_disk};
use crate::procs::{status_kib, Bins, Proc};
use crate::stats::{Row, Samples};
use anyhow::{bail, Context};
use drd_tests::fleet::{Fleet, Pace, Sampler, SteadyWriters, Target};
use drd_tests::seg_name;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// Segment size of the fleet's backlog and writers: small enough that a
/// hundred streams each hold several of a few-hundred-MiB backlog, so every
/// stream count seals segments at the same size.
pub const SEG: usize = 4 * MIB;
/// Streams per primary (the tests' fleet shape); fewer than five streams
/// are one primary each.
const PER_PRIMARY: usize = 5;
/// How often the primaries' status is sampled for lag.
pub const LAG_POLL: Duration = Duration::from_millis(100);
/// Writer tick: each stream gets `rate × tick / streams` bytes per tick.
const TICK: Duration = Duration::from_millis(50);
/// Longest wait for a catch-up or a drain.
const DEADLINE: Duration = Duration::from_secs(400);

/// What the fleet part runs.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Stream counts, each a run of its own (1..4, or a multiple of 5).
    pub counts: Vec<usize>,
    /// Backlog of each run, all streams together (MiB, a multiple of 4).
    pub backlog_mib: u64,
    /// Writers' rate, all streams together (MB/s), during the lag run.
    pub rate_mb: f64,
    pub lag_seconds: f64,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            counts: vec![1, 10, 100],
            backlog_mib: 800,
            rate_mb: 8.0,
            lag_seconds: 15.0,
        }
    }
}

impl Opts {
    pub fn check(&self) -> anyhow::Result<()> {
        for &n in &self.counts {
            if n == 0
                || (n >= PER_PRIMARY && !n.is_multiple_of(PER_PRIMARY))
                || n > 99 * PER_PRIMARY
            {
                bail!("--fleet-streams: {n} must be 1 to 4, or a multiple of 5 up to 495");
            }
        }
        if self.backlog_mib < 4 || !self.backlog_mib.is_multiple_of(4) {
            bail!("--fleet-backlog-mib must be a positive multiple of 4");
        }
        Ok(())
    }
}

/// One stream count's figures.
pub struct Run {
    pub streams: usize,
    pub primaries: usize,
    pub backlog_bytes: u64,
    pub catch_up_secs: f64,
    /// Every stream's lag_seconds, each poll (ms).
    pub lag_ms: Samples,
    /// Every stream's lag_bytes, each poll (bytes, in a Samples).
    pub lag_bytes: Samples,
    /// Polls of all primaries during the lag run.
    pub polls: usize,
    /// The writers' rate asked for and got, all streams (bytes/s).
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// The replica's CPU seconds over the catch-up and over the lag run.
    pub cpu_catch_up: f64,
    pub cpu_lag: f64,
    pub lag_bytes_written: u64,
    pub hwm_kib: u64,
    pub peak_fds: usize,
}

impl Run {
    pub fn catch_up_mb_s(&self) -> f64 {
        self.backlog_bytes as f64 / self.catch_up_secs / 1e6
    }
}

fn shape(n: usize) -> (usize, usize) {
    if n < PER_PRIMARY {
        (n, 1)
    } else {
        (n / PER_PRIMARY, PER_PRIMARY)
    }
}

/// Runs every stream count in turn; after each, the fleet's files are
/// removed and the disk left to settle (deleting stalls fsyncs here).
pub async fn measure(bins: &Bins, o: &Opts) -> anyhow::Result<Vec<Run>> {
    let mut out = Vec::new();
    for &n in &o.counts {
        eprintln!(
            "fleet: {n} streams into one replica ({} MiB backlog, then {} MB/s for {} s)…",
            o.backlog_mib, o.rate_mb, o.lag_seconds
        );
        out.push(one(bins, n, o).await?);
        let probe = crate::runs::scratch("settle")?;
        settle_disk(probe.path())?;
    }
    Ok(out)
}

/// Writes `segments` synced segments of [`SEG`] bytes, each different (its
/// first 8 bytes carry stream and number), as the backlog of one stream.
fn write_backlog(
    dir: &std::path::Path,
    stream: usize,
    segments: u64,
    buf: &[u8],
) -> anyhow::Result<()> {
    for n in 1..=segments {
        let mut f = std::fs::File::create(dir.join(seg_name(n)))?;
        f.write_all(&((stream as u64) << 32 | n).to_le_bytes())?;
        f.write_all(&buf[8..])?;
        // Synced, like runs::write_backlog (and for the same reason).
        f.sync_all()?;
    }
    Ok(())
}

/// Polls every primary once: each stream's status, by name.
async fn statuses(primaries: &[Proc]) -> BTreeMap<String, drd_proto::pb::StreamStatus> {
    let mut out = BTreeMap::new();
    for p in primaries {
        if let Ok(s) = p.status().await {
            out.extend(s.streams.into_iter().map(|t| (t.name.clone(), t)));
        }
    }
    out
}

/// Waits until every stream in `want` is durable at (at least) its value.
async fn wait_durable(
    primaries: &[Proc],
    replica: &Proc,
    want: &BTreeMap<String, u64>,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let st = statuses(primaries).await;
        let behind: Vec<&String> = want
            .iter()
            .filter(|(n, &w)| st.get(*n).is_none_or(|s| s.durable_position < w))
            .map(|(n, _)| n)
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: {} streams not durable within {DEADLINE:?} (first: {})\n--- replica ---\n{}",
                behind.len(),
                behind[0],
                replica.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn one(bins: &Bins, n: usize, o: &Opts) -> anyhow::Result<Run> {
    let (np, per) = shape(n);
    let fleet = Fleet::new(np, per, "");
    let segs_total = o.backlog_mib * MIB as u64 / SEG as u64;
    let per_stream = (segs_total / n as u64).max(1);
    let buf = random_buffer(SEG, 1818);
    for (i, s) in fleet.streams.iter().enumerate() {
        write_backlog(&s.wal, i, per_stream, &buf)?;
    }
    let backlog_bytes = per_stream * SEG as u64 * n as u64;
    let mut want: BTreeMap<String, u64> = fleet
        .streams
        .iter()
        .map(|s| (s.name.clone(), per_stream * SEG as u64))
        .collect();

    // Catch-up: from the first primary's start (replica running) until the
    // replica is durable at every byte of every stream.
    let replica = Proc::start_ready(bins, &fleet.dr).await?;
    let cpu0 = replica.cpu_seconds();
    let started = Instant::now();
    let mut primaries = Vec::new();
    for p in &fleet.primaries {
        primaries.push(Proc::spawn(bins, &p.daemon)?);
    }
    for p in &mut primaries {
        p.wait_ready().await?;
    }
    wait_durable(&primaries, &replica, &want, "catch-up").await?;
    let catch_up_secs = started.elapsed().as_secs_f64();
    let cpu1 = replica.cpu_seconds();
    for s in &fleet.streams {
        drd_tests::assert_replica_identical(&s.wal, &fleet.dr_landing(&s.name))
            .with_context(|| format!("{} differs after catch-up", s.name))?;
    }

    // Steady lag: a paced writer on every stream, the same rate in all.
    let pace = Pace {
        chunk: ((o.rate_mb * 1e6 * TICK.as_secs_f64()) / n as f64).max(1.0) as usize,
        tick: TICK,
        segment: SEG,
    };
    let targets: Vec<Target> = fleet
        .streams
        .iter()
        .enumerate()
        .map(|(i, s)| Target::new(&s.name, &s.wal, 5000 + i as u64, per_stream + 1))
        .collect();
    let sampler = Sampler::start(replica.pid());
    let writers = SteadyWriters::start(targets, pace);
    let lag_started = Instant::now();
    let (mut lag_ms, mut lag_bytes, mut polls) = (Samples::default(), Samples::default(), 0);
    let mut next = Instant::now();
    while lag_started.elapsed().as_secs_f64() < o.lag_seconds {
        let st = statuses(&primaries).await;
        for s in st.values() {
            lag_ms.0.push(s.lag_seconds * 1e3);
            lag_bytes.0.push(s.lag_bytes as f64);
        }
        polls += 1;
        next += LAG_POLL;
        tokio::time::sleep_until(next.into()).await;
    }
    let totals = writers.finish();
    let lag_secs = lag_started.elapsed().as_secs_f64();
    let written: u64 = totals.values().sum();
    for (name, t) in &totals {
        *want.get_mut(name).unwrap() += t;
    }
    wait_durable(&primaries, &replica, &want, "drain after the lag run").await?;
    let res = sampler.finish();
    let cpu2 = replica.cpu_seconds();
    for s in &fleet.streams {
        drd_tests::assert_replica_identical(&s.wal, &fleet.dr_landing(&s.name))
            .with_context(|| format!("{} differs after the lag run", s.name))?;
    }
    let run = Run {
        streams: n,
        primaries: np,
        backlog_bytes,
        catch_up_secs,
        lag_ms,
        lag_bytes,
        polls,
        target_rate: o.rate_mb * 1e6,
        achieved_rate: written as f64 / lag_secs,
        cpu_catch_up: cpu1 - cpu0,
        cpu_lag: cpu2 - cpu1,
        lag_bytes_written: written,
        hwm_kib: res.peak_rss_kib.max(status_kib(replica.pid(), "VmHWM:")),
        peak_fds: res.peak_fds,
    };
    drop(primaries);
    drop(replica);
    eprintln!(
        "  {n} streams: catch-up {:.0} MB/s, lag p99 {:.1} ms, replica {:.0} MiB / {} fds",
        run.catch_up_mb_s(),
        run.lag_ms.pct(99.0),
        run.hwm_kib as f64 / 1024.0,
        run.peak_fds
    );
    Ok(run)
}

fn lag3(s: &Samples) -> String {
    format!(
        "p50 {:.1} / p99 {:.1} / max {:.1} ms",
        s.pct(50.0),
        s.pct(99.0),
        s.max()
    )
}

/// The fleet's rows: each stream count against the one-stream run (the
/// first count) and, for catch-up, the one-stream run against the ceiling.
pub fn rows(runs: &[Run], ceiling_mb_s: f64) -> Vec<Row> {
    let Some(base) = runs.first() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for r in runs {
        let label = format!(
            "fleet {} stream{} ({} primar{})",
            r.streams,
            if r.streams == 1 { "" } else { "s" },
            r.primaries,
            if r.primaries == 1 { "y" } else { "ies" }
        );
        let first = std::ptr::eq(r, base);
        rows.push(Row::new(
            &format!("{label}: catch-up"),
            format!("{:.0} MB/s ({:.1} s)", r.catch_up_mb_s(), r.catch_up_secs),
            if first {
                format!("ceiling {ceiling_mb_s:.0} MB/s")
            } else {
                format!("{} stream {:.0} MB/s", base.streams, base.catch_up_mb_s())
            },
            if first {
                format!(
                    "{:.0} %",
                    100.0 * r.catch_up_mb_s() / ceiling_mb_s.max(1e-6)
                )
            } else {
                format!("{:.2}x", r.catch_up_mb_s() / base.catch_up_mb_s().max(1e-6))
            },
            "-",
            None,
        ));
        rows.push(Row::new(
            &format!(
                "{label}: lag at {:.0} MB/s (got {:.1})",
                r.target_rate / 1e6,
                r.achieved_rate / 1e6
            ),
            format!(
                "{}; bytes p99 {:.0} KiB",
                lag3(&r.lag_ms),
                r.lag_bytes.pct(99.0) / 1024.0
            ),
            if first {
                "-".into()
            } else {
                format!(
                    "{} stream p99 {:.1} ms",
                    base.streams,
                    base.lag_ms.pct(99.0)
                )
            },
            if first {
                "-".into()
            } else {
                format!(
                    "p99 {:.1}x",
                    r.lag_ms.pct(99.0) / base.lag_ms.pct(99.0).max(1e-3)
                )
            },
            "-",
            None,
        ));
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        rows.push(Row::new(
            &format!("{label}: replica"),
            format!(
                "peak RSS {:.0} MiB, peak fds {}, catch-up CPU {:.2} core-s/GiB",
                r.hwm_kib as f64 / 1024.0,
                r.peak_fds,
                r.cpu_catch_up / gib(r.backlog_bytes)
            ),
            if first {
                "-".into()
            } else {
                format!(
                    "{} stream {:.0} MiB, {} fds, {:.2} core-s/GiB",
                    base.streams,
                    base.hwm_kib as f64 / 1024.0,
                    base.peak_fds,
                    base.cpu_catch_up / gib(base.backlog_bytes)
                )
            },
            if first {
                "-".into()
            } else {
                format!(
                    "RSS {:.2}x, CPU/GiB {:.2}x",
                    r.hwm_kib as f64 / base.hwm_kib.max(1) as f64,
                    (r.cpu_catch_up / gib(r.backlog_bytes))
                        / (base.cpu_catch_up / gib(base.backlog_bytes)).max(1e-6)
                )
            },
            "-",
            None,
        ));
    }
    rows
}

pub fn notes(runs: &[Run], o: &Opts) -> Vec<String> {
    if runs.is_empty() {
        return Vec::new();
    }
    vec![
        format!(
            "- fleet: one replica (dr1) and primaries of {PER_PRIMARY} streams each (1 to 4 streams: one \
             primary each), every node its own process with its own certificate from one CA, mTLS and \
             fsync on, default tuning. Each count is a fresh fleet: a {} MiB backlog in {} MiB segments \
             split evenly over the streams (synced before the start), timed from the first primary's \
             start until every stream is durable at dr1; then a writer appends to every stream every {} \
             ms, {} MB/s in all, for {} s, while each primary's status is polled every {} ms and every \
             stream's lag_seconds and lag_bytes recorded ({}). Byte-identical at dr1 checked after both. \
             The replica's fds are sampled every 100 ms during the lag run.",
            o.backlog_mib,
            SEG / MIB,
            TICK.as_millis(),
            o.rate_mb,
            o.lag_seconds,
            LAG_POLL.as_millis(),
            runs.iter()
                .map(|r| format!(
                    "{} stream{}: {} polls, {} samples, {:.1} core-s of replica CPU for {} MiB",
                    r.streams,
                    if r.streams == 1 { "" } else { "s" },
                    r.polls,
                    r.lag_ms.len(),
                    r.cpu_lag,
                    r.lag_bytes_written / MIB as u64
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        "- fleet lag is sampled from status (the primary's view: age of the oldest byte not yet durable \
         at dr1), so its resolution is the poll interval and the polls themselves load the machine — \
         compare the counts with each other, not with the lag rows above (which follow every ack)."
            .to_string(),
    ]
}
