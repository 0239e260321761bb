//! The fleet part (issue 18): one replica receiving 1, 10 and 100 streams at
//! once from primaries of five streams each — aggregate catch-up of a backlog
//! written before the primaries start, then steady lag under a paced writer
//! on every stream — each stream count next to the one-stream run of the
//! same run (and the catch-up of one stream next to the ceiling) — and a
//! noisy-neighbour run: one stream catching up a large backlog after an
//! outage while every other stream keeps writing, their lag against a
//! quiet window of the same run and the alert rules' thresholds.

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
/// The lag thresholds of deploy/prometheus/drd-alerts.yml:
/// DrdLagOverRpoTarget fires when a stream's lag_seconds stays over 30 s
/// for 2 minutes (critical).
pub const ALERT_LAG_SECS: f64 = 30.0;
/// DrdLagBytesGrowing warns when a stream's lag_bytes is over 1 GiB and
/// growing for 15 minutes.
pub const ALERT_LAG_BYTES: f64 = (1u64 << 30) as f64;
/// The noisy-neighbour run's noisy stream (index into the fleet's
/// streams): p01-s1, so p01's other streams share its primary.
const NOISY: usize = 0;
/// After every steady stream is durable past its first write, how long the
/// writers run before the quiet window: the sessions' first seconds
/// (segment opens, first group flushes) are not the steady state.
const WARMUP: Duration = Duration::from_secs(2);

/// What the fleet part runs.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Stream counts, each a run of its own (1..4, or a multiple of 5).
    pub counts: Vec<usize>,
    /// Backlog of each run, all streams together (MiB, a multiple of 4).
    pub backlog_mib: u64,
    /// Writers' rate, all streams together (MB/s), during the lag run.
    pub rate_mb: f64,
    /// Length of each lag run, and the longest quiet window of the
    /// noisy-neighbour run (s).
    pub lag_seconds: f64,
    /// Streams of the noisy-neighbour run (0: no such run): one catches up
    /// a backlog, the others write at `rate_mb` in all.
    pub noisy_streams: usize,
    /// The noisy stream's backlog (MiB, a multiple of 4).
    pub noisy_backlog_mib: u64,
    /// dr1's `tuning.receive_budget_bytes` in MiB (None: the default).
    pub receive_budget_mib: Option<u64>,
}

impl Opts {
    /// The config fragment every node of a fleet run gets.
    fn tuning(&self) -> String {
        match self.receive_budget_mib {
            Some(m) => format!("[tuning]\nreceive_budget_bytes = {}\n", m << 20),
            None => String::new(),
        }
    }
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            counts: vec![1, 10, 100],
            backlog_mib: 800,
            rate_mb: 8.0,
            lag_seconds: 15.0,
            noisy_streams: 100,
            noisy_backlog_mib: 1024,
            receive_budget_mib: None,
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
        let n = self.noisy_streams;
        if n != 0
            && (n < 2
                || (n >= PER_PRIMARY && !n.is_multiple_of(PER_PRIMARY))
                || n > 99 * PER_PRIMARY)
        {
            bail!(
                "--fleet-noisy-streams: {n} must be 0 (no noisy-neighbour run), 2 to 4, \
                 or a multiple of 5 up to 495"
            );
        }
        if self.noisy_backlog_mib < 4 || !self.noisy_backlog_mib.is_multiple_of(4) {
            bail!("--fleet-noisy-backlog-mib must be a positive multiple of 4");
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

/// Polls every primary each [`LAG_POLL`] (the next poll is due a poll
/// interval after the last one was due, not after it returned) and hands
/// each poll to `each`, until it returns false.
async fn poll_lag(
    primaries: &[Proc],
    mut each: impl FnMut(&BTreeMap<String, drd_proto::pb::StreamStatus>) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut next = Instant::now();
    loop {
        if !each(&statuses(primaries).await)? {
            return Ok(());
        }
        next += LAG_POLL;
        tokio::time::sleep_until(next.into()).await;
    }
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
    let fleet = Fleet::new(np, per, &o.tuning());
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
    poll_lag(&primaries, |st| {
        if lag_started.elapsed().as_secs_f64() >= o.lag_seconds {
            return Ok(false);
        }
        for s in st.values() {
            lag_ms.0.push(s.lag_seconds * 1e3);
            lag_bytes.0.push(s.lag_bytes as f64);
        }
        polls += 1;
        Ok(true)
    })
    .await?;
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

/// The steady streams' lag over one window of the noisy-neighbour run.
#[derive(Default)]
pub struct Window {
    /// Every steady stream's lag_seconds, each poll (ms).
    pub ms: Samples,
    /// Every steady stream's lag_bytes, each poll (bytes, in a Samples).
    pub bytes: Samples,
    pub polls: usize,
    pub secs: f64,
}

/// One steady stream's lag in one poll: its name, lag_seconds (ms) and
/// lag_bytes.
type StreamLag = (String, f64, f64);

/// The noisy-neighbour run's figures.
pub struct Noisy {
    pub streams: usize,
    pub primaries: usize,
    /// The stream that catches up, and its backlog.
    pub noisy: String,
    pub backlog_bytes: u64,
    /// From its resume until dr1 is durable at its backlog's last byte.
    pub catch_up_secs: f64,
    /// The steady streams during the catch-up.
    pub during: Window,
    /// Of `during`: the steady streams that share the noisy stream's
    /// primary (ms; empty when it has no other stream).
    pub during_same_primary: Samples,
    /// The steady streams during the quiet window's last `catch_up_secs`
    /// (all of it when it is shorter): the baseline.
    pub quiet: Window,
    /// The whole quiet window (s).
    pub quiet_window_secs: f64,
    /// The writers' rate asked for and got, all steady streams (bytes/s).
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// The replica's CPU seconds over the catch-up.
    pub cpu_catch_up: f64,
    pub hwm_kib: u64,
    pub peak_fds: usize,
}

impl Noisy {
    pub fn catch_up_mb_s(&self) -> f64 {
        self.backlog_bytes as f64 / self.catch_up_secs / 1e6
    }

    /// No steady stream's lag_seconds reached DrdLagOverRpoTarget's
    /// threshold in any sample of the catch-up.
    pub fn under_rpo_alert(&self) -> bool {
        self.during.ms.max() < ALERT_LAG_SECS * 1e3
    }

    /// No steady stream's lag_bytes reached DrdLagBytesGrowing's threshold.
    pub fn under_bytes_alert(&self) -> bool {
        self.during.bytes.max() < ALERT_LAG_BYTES
    }
}

/// Pauses (or resumes) shipping `stream` at its primary, as `drctl pause
/// --stream` does: a pause returns once the stream's session is closed.
async fn set_paused(p: &Proc, stream: &str, pause: bool) -> anyhow::Result<()> {
    let what = if pause { "pause" } else { "resume" };
    let mut c = drd::api::control::connect(&p.socket)
        .await
        .with_context(|| format!("connect to {}'s control socket", p.name))?;
    c.pause(drd_proto::pb::PauseRequest {
        pause,
        reason: "drd-bench noisy neighbour".into(),
        stream: stream.into(),
    })
    .await
    .with_context(|| format!("{what} {stream} at {}", p.name))?;
    Ok(())
}

/// The noisy-neighbour run (issue 18: one noisy stream catching up after an
/// outage does not raise the others' lag past their alert thresholds).
///
/// The outage is the noisy stream's shipper paused at its primary: its
/// session with dr1 is closed, as when the link or dr1 is down for it,
/// while its WAL piles up; the other streams of its primary keep shipping,
/// so they are the nearest neighbours. The backlog is written (synced, the
/// disk left to settle) before the steady writers start, so the quiet
/// window does not pay for writing it; then the steady streams are sampled
/// for a quiet window, the noisy stream resumed, and they are sampled on
/// until dr1 is durable at its last byte.
pub async fn measure_noisy(bins: &Bins, o: &Opts) -> anyhow::Result<Option<Noisy>> {
    let n = o.noisy_streams;
    if n == 0 {
        return Ok(None);
    }
    eprintln!(
        "fleet noisy neighbour: {n} streams, one catching up {} MiB while the others write {} MB/s…",
        o.noisy_backlog_mib, o.rate_mb
    );
    let (np, per) = shape(n);
    let fleet = Fleet::new(np, per, &o.tuning());
    let noisy = fleet.streams[NOISY].clone();
    let neighbours: Vec<&str> = fleet
        .streams
        .iter()
        .filter(|s| s.primary == noisy.primary && s.name != noisy.name)
        .map(|s| s.name.as_str())
        .collect();
    let replica = Proc::start_ready(bins, &fleet.dr).await?;
    let sampler = Sampler::start(replica.pid());
    let mut primaries = Vec::new();
    for p in &fleet.primaries {
        primaries.push(Proc::spawn(bins, &p.daemon)?);
    }
    for p in &mut primaries {
        p.wait_ready().await?;
    }

    // The outage, and the WAL written during it.
    set_paused(&primaries[noisy.primary], &noisy.name, true).await?;
    let segments = o.noisy_backlog_mib * MIB as u64 / SEG as u64;
    write_backlog(&noisy.wal, NOISY, segments, &random_buffer(SEG, 1819))?;
    let backlog_bytes = segments * SEG as u64;
    let probe = crate::runs::scratch("settle")?;
    settle_disk(probe.path())?;
    drop(probe);

    // Every other stream writes, the same rate in all as the lag runs.
    let steady: Vec<usize> = (0..n).filter(|&i| i != NOISY).collect();
    let pace = Pace {
        chunk: ((o.rate_mb * 1e6 * TICK.as_secs_f64()) / steady.len() as f64).max(1.0) as usize,
        tick: TICK,
        segment: SEG,
    };
    let targets: Vec<Target> = steady
        .iter()
        .map(|&i| {
            let s = &fleet.streams[i];
            Target::new(&s.name, &s.wal, 7000 + i as u64, 1)
        })
        .collect();
    let writers = SteadyWriters::start(targets, pace);
    let writing = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    poll_lag(&primaries, |st| {
        let waiting = steady
            .iter()
            .filter(|&&i| {
                st.get(&fleet.streams[i].name)
                    .is_none_or(|s| s.durable_position == 0)
            })
            .count();
        if waiting > 0 && Instant::now() > deadline {
            bail!(
                "{waiting} steady streams not durable past their first write within 60 s\n\
                 --- replica ---\n{}",
                replica.log_tail()
            );
        }
        Ok(waiting > 0)
    })
    .await?;
    tokio::time::sleep(WARMUP).await;

    // Quiet window: each poll kept with its time, so that the baseline can
    // be cut to the catch-up's length once that is known.
    let steady_lag = |st: &BTreeMap<String, drd_proto::pb::StreamStatus>| -> Vec<StreamLag> {
        st.values()
            .filter(|s| s.name != noisy.name)
            .map(|s| (s.name.clone(), s.lag_seconds * 1e3, s.lag_bytes as f64))
            .collect()
    };
    let quiet_started = Instant::now();
    let mut quiet_polls: Vec<(f64, Vec<StreamLag>)> = Vec::new();
    poll_lag(&primaries, |st| {
        let t = quiet_started.elapsed().as_secs_f64();
        if t >= o.lag_seconds {
            return Ok(false);
        }
        quiet_polls.push((t, steady_lag(st)));
        Ok(true)
    })
    .await?;
    let quiet_window_secs = quiet_started.elapsed().as_secs_f64();

    // The catch-up, timed from the resume until a poll shows dr1 durable
    // at the backlog's last byte.
    let cpu0 = replica.cpu_seconds();
    let resumed = Instant::now();
    set_paused(&primaries[noisy.primary], &noisy.name, false).await?;
    let (mut during, mut same) = (Window::default(), Samples::default());
    poll_lag(&primaries, |st| {
        for (name, ms, bytes) in steady_lag(st) {
            during.ms.0.push(ms);
            during.bytes.0.push(bytes);
            if neighbours.contains(&name.as_str()) {
                same.0.push(ms);
            }
        }
        during.polls += 1;
        let done = st
            .get(&noisy.name)
            .is_some_and(|s| s.durable_position >= backlog_bytes);
        if !done && resumed.elapsed() > DEADLINE {
            bail!(
                "{}: {backlog_bytes} bytes not durable at dr1 within {DEADLINE:?}\n--- replica ---\n{}",
                noisy.name,
                replica.log_tail()
            );
        }
        Ok(!done)
    })
    .await?;
    let catch_up_secs = resumed.elapsed().as_secs_f64();
    let cpu1 = replica.cpu_seconds();
    during.secs = catch_up_secs;

    let from = (quiet_window_secs - catch_up_secs).max(0.0);
    let mut quiet = Window {
        secs: quiet_window_secs - from,
        ..Window::default()
    };
    for (_, lags) in quiet_polls.iter().filter(|(t, _)| *t >= from) {
        quiet.polls += 1;
        for (_, ms, bytes) in lags {
            quiet.ms.0.push(*ms);
            quiet.bytes.0.push(*bytes);
        }
    }

    let totals = writers.finish();
    let written: u64 = totals.values().sum();
    let achieved_rate = written as f64 / writing.elapsed().as_secs_f64();
    let mut want = totals;
    want.insert(noisy.name.clone(), backlog_bytes);
    wait_durable(
        &primaries,
        &replica,
        &want,
        "drain after the noisy-neighbour run",
    )
    .await?;
    let res = sampler.finish();
    for s in &fleet.streams {
        drd_tests::assert_replica_identical(&s.wal, &fleet.dr_landing(&s.name))
            .with_context(|| format!("{} differs after the noisy-neighbour run", s.name))?;
    }
    let run = Noisy {
        streams: n,
        primaries: np,
        noisy: noisy.name.clone(),
        backlog_bytes,
        catch_up_secs,
        during,
        during_same_primary: same,
        quiet,
        quiet_window_secs,
        target_rate: o.rate_mb * 1e6,
        achieved_rate,
        cpu_catch_up: cpu1 - cpu0,
        hwm_kib: res.peak_rss_kib.max(status_kib(replica.pid(), "VmHWM:")),
        peak_fds: res.peak_fds,
    };
    drop(primaries);
    drop(replica);
    eprintln!(
        "  noisy neighbour: catch-up {:.0} MB/s in {:.1} s; steady lag p99 {:.1} ms quiet, {:.1} ms \
         during ({:.1}x), max {:.1} ms; under the {ALERT_LAG_SECS:.0} s alert threshold: {}",
        run.catch_up_mb_s(),
        run.catch_up_secs,
        run.quiet.ms.pct(99.0),
        run.during.ms.pct(99.0),
        run.during.ms.pct(99.0) / run.quiet.ms.pct(99.0).max(1e-3),
        run.during.ms.max(),
        yes_no(run.under_rpo_alert())
    );
    let probe = crate::runs::scratch("settle")?;
    settle_disk(probe.path())?;
    Ok(Some(run))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
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

/// The noisy-neighbour run's rows: the steady streams' lag during the
/// catch-up against the quiet window of the same run (and the alert rule's
/// threshold), the noisy stream's catch-up against one stream catching up
/// alone (the fleet's one-stream run) or the ceiling.
pub fn noisy_rows(noisy: Option<&Noisy>, runs: &[Run], ceiling_mb_s: f64) -> Vec<Row> {
    let Some(r) = noisy else {
        return Vec::new();
    };
    let label = format!(
        "fleet noisy neighbour, {} streams ({} primar{})",
        r.streams,
        r.primaries,
        if r.primaries == 1 { "y" } else { "ies" }
    );
    let kib = |b: f64| b / 1024.0;
    let mut rows = vec![Row::new(
        &format!(
            "{label}: others' lag at {:.0} MB/s (got {:.1}) during the catch-up",
            r.target_rate / 1e6,
            r.achieved_rate / 1e6
        ),
        format!(
            "{}; bytes p99 {:.0} KiB, max {:.0} KiB",
            lag3(&r.during.ms),
            kib(r.during.bytes.pct(99.0)),
            kib(r.during.bytes.max())
        ),
        format!(
            "quiet {}; bytes p99 {:.0} KiB",
            lag3(&r.quiet.ms),
            kib(r.quiet.bytes.pct(99.0))
        ),
        format!(
            "p99 {:.1}x",
            r.during.ms.pct(99.0) / r.quiet.ms.pct(99.0).max(1e-3)
        ),
        "max < 30 s (DrdLagOverRpoTarget)",
        Some(r.under_rpo_alert()),
    )];
    if !r.during_same_primary.0.is_empty() {
        rows.push(Row::new(
            &format!("{label}: its own primary's other streams"),
            lag3(&r.during_same_primary),
            format!("all others p99 {:.1} ms", r.during.ms.pct(99.0)),
            format!(
                "p99 {:.1}x",
                r.during_same_primary.pct(99.0) / r.during.ms.pct(99.0).max(1e-3)
            ),
            "-",
            None,
        ));
    }
    let alone = runs.iter().find(|b| b.streams == 1);
    rows.push(Row::new(
        &format!("{label}: catch-up of {} MiB", r.backlog_bytes / MIB as u64),
        format!("{:.0} MB/s ({:.1} s)", r.catch_up_mb_s(), r.catch_up_secs),
        match alone {
            Some(b) => format!("1 stream alone {:.0} MB/s", b.catch_up_mb_s()),
            None => format!("ceiling {ceiling_mb_s:.0} MB/s"),
        },
        match alone {
            Some(b) => format!("{:.2}x", r.catch_up_mb_s() / b.catch_up_mb_s().max(1e-6)),
            None => format!(
                "{:.0} %",
                100.0 * r.catch_up_mb_s() / ceiling_mb_s.max(1e-6)
            ),
        },
        "-",
        None,
    ));
    rows.push(Row::new(
        &format!("{label}: replica"),
        format!(
            "peak RSS {:.0} MiB, peak fds {}, catch-up CPU {:.2} core-s/GiB",
            r.hwm_kib as f64 / 1024.0,
            r.peak_fds,
            r.cpu_catch_up / (r.backlog_bytes as f64 / (1u64 << 30) as f64)
        ),
        "-".into(),
        "-".into(),
        "-",
        None,
    ));
    rows
}

pub fn noisy_notes(noisy: Option<&Noisy>) -> Vec<String> {
    let Some(r) = noisy else {
        return Vec::new();
    };
    vec![
        format!(
            "- fleet noisy neighbour: {} streams from {} primaries into dr1, as in the fleet runs. The \
             outage: {}'s shipping paused at its primary (`drctl pause --stream`: its session with dr1 \
             closed, as when the link or dr1 is down for it) and a {} MiB backlog of {} MiB segments \
             written to its WAL directory (synced; disk settled). Then a writer appends to each of the \
             other {} streams every {} ms, {:.0} MB/s in all (got {:.1} over the run), and once every one \
             is durable past its first write and {} s more, every primary's status is polled every {} ms \
             for a quiet window of {:.1} s; then {} is resumed and the polls go on until one shows it \
             durable at dr1 (the catch-up: {} polls; its end is seen up to a poll late). The baseline is \
             the quiet window's last {:.1} s ({} polls): the catch-up's length, or the whole window \
             (--fleet-seconds) when the catch-up took longer. Default tuning: dr1 grants every \
             session, the noisy one's too, an equal share of its receive budget as the window. Lag is \
             sampled from status as in the fleet runs; byte-identical at dr1 checked for every stream after the drain.",
            r.streams,
            r.primaries,
            r.noisy,
            r.backlog_bytes / MIB as u64,
            SEG / MIB,
            r.streams - 1,
            TICK.as_millis(),
            r.target_rate / 1e6,
            r.achieved_rate / 1e6,
            WARMUP.as_secs(),
            LAG_POLL.as_millis(),
            r.quiet_window_secs,
            r.noisy,
            r.during.polls,
            r.quiet.secs,
            r.quiet.polls,
        ),
        format!(
            "- fleet noisy neighbour against deploy/prometheus/drd-alerts.yml: DrdLagOverRpoTarget fires \
             when a stream's lag_seconds stays over {ALERT_LAG_SECS:.0} s for 2 min, DrdLagBytesGrowing \
             (warning) when its lag_bytes is over 1 GiB and growing for 15 min. The other streams' worst \
             sample during the catch-up: {:.3} s and {:.0} KiB — under the {ALERT_LAG_SECS:.0} s alert \
             threshold: {}; under 1 GiB: {} (a single sample over a threshold counts here; the rules \
             need it held for minutes).",
            r.during.ms.max() / 1e3,
            r.during.bytes.max() / 1024.0,
            yes_no(r.under_rpo_alert()),
            yes_no(r.under_bytes_alert()),
        ),
    ]
}
