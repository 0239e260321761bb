//! The drd measurements: catch-up of a backlog, steady-state lag under a
//! paced writer, sync-mode `drctl wal-push`, and failover time.

use crate::baseline::{random_buffer, WriteSizes};
use crate::procs::{Bins, Proc};
use crate::stats::Samples;
use anyhow::{bail, Context};
use drd_proto::pb;
use drd_tests::{seg_name, tls_section, Pair, Sites, PRIMARY_ID, REPLICA_ID, STREAM};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
pub const SEG: usize = 16 * MIB;
/// Status polling interval while measuring lag and failover.
pub const POLL: Duration = Duration::from_millis(2);
/// How long the lag run waits, after the writer stops, for the last write
/// to become durable before counting the rest as not acked.
const DRAIN: Duration = Duration::from_secs(30);

/// A running primary → replica pair over mTLS (default tuning, fsync on).
pub struct Running {
    // Field order is drop order: the daemons stop before their directory goes.
    pub primary: Proc,
    pub replica: Proc,
    pub pair: Pair,
}

/// Catch-up figures.
pub struct CatchUp {
    pub bytes: u64,
    pub secs: f64,
    pub cpu_primary: f64,
    pub cpu_replica: f64,
    pub hwm_primary_kib: u64,
    pub hwm_replica_kib: u64,
}

/// Starts a pair whose WAL dir already holds a backlog of `total` bytes,
/// times from the primary's start until the replica is durable at
/// everything, and checks the bytes.
pub async fn catch_up(bins: &Bins, pair: Pair, total: u64) -> anyhow::Result<(Running, CatchUp)> {
    let replica = Proc::start_ready(bins, &pair.replica).await?;
    let cpu_r0 = replica.cpu_seconds();
    let started = Instant::now();
    let mut primary = Proc::spawn(bins, &pair.primary)?;
    primary.wait_ready().await?;
    let deadline = started + Duration::from_secs(400);
    loop {
        let s = primary.stream().await.ok();
        if s.as_ref().is_some_and(|s| s.durable_position >= total) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "backlog not shipped within 400 s: {s:?}\n--- primary ---\n{}\n--- replica ---\n{}",
                primary.log_tail(),
                replica.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let c = CatchUp {
        bytes: total,
        secs,
        cpu_primary: primary.cpu_seconds(),
        cpu_replica: replica.cpu_seconds() - cpu_r0,
        hwm_primary_kib: primary.hwm_kib(),
        hwm_replica_kib: replica.hwm_kib(),
    };
    let n = drd_tests::assert_replica_identical(&pair.wal, &pair.landing())
        .context("replica differs from the source after catch-up")?;
    eprintln!("  catch-up: {n} segments byte-identical at the replica");
    Ok((
        Running {
            pair,
            primary,
            replica,
        },
        c,
    ))
}

/// Steady-state lag figures for one rate.
pub struct Lag {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub lag: Samples,
    /// Writes not durable at the replica within the drain timeout.
    pub unacked: usize,
    /// Ack updates received from the primary while measuring.
    pub acks: usize,
}

/// Appends at `rate` bytes/s for `secs` into segments after `next_seg`
/// (stream position `base`), following the primary's durable position as it
/// is acked; each write's lag is the time from the write returning to the
/// first ack that covers it.
/// Returns the figures and the next free segment number and position.
pub async fn lag(
    run: &Running,
    rate: f64,
    secs: f64,
    next_seg: u64,
    base: u64,
) -> anyhow::Result<(Lag, u64, u64)> {
    let wal = run.pair.wal.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || write_paced(&wal, rate, secs, next_seg, base, &stop))
    };
    // Every ack as it arrives (the primary's WatchDurable stream over its
    // Unix socket), timestamped on receipt: the figures' resolution is the
    // local socket's delivery time, not a polling interval.
    let mut client = drd::api::control::connect(&run.primary.socket).await?;
    let mut updates = client
        .watch_durable(pb::WatchDurableRequest::default())
        .await?
        .into_inner();
    let mut polls: Vec<(Instant, u64)> = Vec::new();
    let mut drain_deadline = None;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(100), updates.message()).await;
        let t1 = Instant::now();
        match next {
            Ok(Ok(Some(u))) => polls.push((t1, u.durable_position)),
            Ok(Ok(None)) => bail!("the primary ended the WatchDurable stream"),
            Ok(Err(e)) => bail!("WatchDurable: {e}"),
            Err(_) => {} // no ack for 100 ms: check the writer
        }
        let durable = polls.last().map_or(0, |p| p.1);
        if writer.is_finished() {
            // Drain: wait for the last write to become durable (bounded).
            let deadline = *drain_deadline.get_or_insert(t1 + DRAIN);
            if durable >= END.load(Ordering::Relaxed) || t1 > deadline {
                break;
            }
        }
    }
    let acks = polls.len();
    stop.store(true, Ordering::Relaxed);
    let w = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let mut lag = Samples::default();
    let mut unacked = 0;
    let mut worst = Vec::new();
    for &(t, pos) in &w.writes {
        let i = polls.partition_point(|&(_, d)| d < pos);
        match polls.get(i) {
            Some(&(seen, _)) => {
                lag.push(seen.saturating_duration_since(t));
                worst.push((seen.saturating_duration_since(t), t, pos));
            }
            None => unacked += 1,
        }
    }
    if std::env::var_os("DRD_BENCH_LOG").is_some() {
        // With daemon traces on, name the slowest writes by wall-clock time
        // so they can be found in the daemons' logs.
        worst.sort_by_key(|w| std::cmp::Reverse(w.0));
        let (i0, s0) = (Instant::now(), std::time::SystemTime::now());
        for (lag, t, pos) in worst.iter().take(15) {
            let wall = s0 - i0.duration_since(*t);
            let ms = wall.duration_since(std::time::UNIX_EPOCH)?.as_millis();
            eprintln!(
                "  slow write: lag {:.1} ms, written at {}.{:03} (unix), position {pos}",
                lag.as_secs_f64() * 1e3,
                ms / 1000,
                ms % 1000
            );
        }
    }
    Ok((
        Lag {
            target_rate: rate,
            achieved_rate: (w.end - base) as f64 / w.secs,
            lag,
            unacked,
            acks,
        },
        w.next_seg,
        w.end,
    ))
}

/// The writer's final position (for the poller's stop condition).
static END: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

struct Written {
    /// (time the write returned, stream position after it).
    writes: Vec<(Instant, u64)>,
    end: u64,
    secs: f64,
    next_seg: u64,
}

fn write_paced(
    wal: &Path,
    rate: f64,
    secs: f64,
    mut seg: u64,
    base: u64,
    stop: &AtomicBool,
) -> anyhow::Result<Written> {
    END.store(u64::MAX, Ordering::Relaxed);
    let buf = random_buffer(2 * MIB, seg);
    let mut sizes = WriteSizes::new(seg ^ 0x5eed);
    let mut writes = Vec::new();
    let (mut pos, mut in_seg) = (base, 0usize);
    let open = |n: u64| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(wal.join(seg_name(n)))
    };
    let mut f = open(seg)?;
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed) {
        let due = Duration::from_secs_f64((pos - base) as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let n = sizes.next();
        let mut left = n;
        let mut off = (pos as usize) % MIB;
        while left > 0 {
            let k = left.min(SEG - in_seg);
            f.write_all(&buf[off..off + k])?;
            off += k;
            left -= k;
            in_seg += k;
            if in_seg == SEG {
                // The next segment seals this one at the replica.
                seg += 1;
                in_seg = 0;
                f = open(seg)?;
            }
        }
        pos += n as u64;
        writes.push((Instant::now(), pos));
    }
    let secs = started.elapsed().as_secs_f64();
    END.store(pos, Ordering::Relaxed);
    Ok(Written {
        writes,
        end: pos,
        secs,
        next_seg: if in_seg == 0 { seg } else { seg + 1 },
    })
}

/// Sync-mode push figures: drd and the copy + fsync baseline, interleaved.
pub struct SyncPush {
    pub push: Samples,
    pub copy: Samples,
}

/// `drctl wal-push` of `count` 16 MiB segments to a spool stream in sync
/// mode, each followed by a plain copy + fsync of the same file.
pub async fn sync_push(bins: &Bins, count: u64) -> anyhow::Result<SyncPush> {
    let root = tempfile::Builder::new()
        .prefix("drd-bench-sync-")
        .tempdir()?;
    let certs = drd_tests::make_certs(root.path());
    let port = drd_tests::free_port();
    let spool = root.path().join("spool");
    std::fs::create_dir_all(&spool)?;
    let pd = drd_tests::Daemon::new(
        root.path(),
        "verona",
        PRIMARY_ID,
        &format!(
            "[[stream]]\nname = \"{STREAM}\"\nwal_dir = \"{}\"\npeer = \"https://127.0.0.1:{port}\"\n\
             peer_name = \"{REPLICA_ID}\"\nsource = \"spool\"\nmode = \"sync\"\nsync_timeout_seconds = 60\n{}",
            spool.display(),
            tls_section(&certs, PRIMARY_ID)
        ),
    );
    let rd = drd_tests::Daemon::new(
        root.path(),
        "rochester",
        REPLICA_ID,
        &format!(
            "[replica]\nlisten = \"127.0.0.1:{port}\"\naccept_unlisted_streams = true\n{}",
            tls_section(&certs, REPLICA_ID)
        ),
    );
    let _replica = Proc::start_ready(bins, &rd).await?;
    let primary = Proc::start_ready(bins, &pd).await?;
    let src = root.path().join("pg_wal");
    let copies = root.path().join("copies");
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&copies)?;
    let mut out = SyncPush {
        push: Samples::default(),
        copy: Samples::default(),
    };
    for n in 1..=count {
        let file = src.join(seg_name(n));
        std::fs::write(&file, random_buffer(SEG, 1000 + n))?;
        let t = Instant::now();
        let (code, so, se) = bins.drctl(&primary.socket, &["wal-push", path_str(&file)?]);
        let took = t.elapsed();
        if code != 0 {
            bail!("drctl wal-push {} exited {code}: {so}{se}", file.display());
        }
        out.push.push(took);
        out.copy.push(crate::baseline::copy_fsync(&file, &copies)?);
        std::fs::remove_file(copies.join(seg_name(n)))?;
    }
    Ok(out)
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

/// Failover figures over several fresh pairs.
pub struct Failover {
    /// From starting `drctl failover --yes` to status showing role primary.
    pub to_primary: Samples,
    /// A no-op `drctl status` on the same node (process start + one RPC).
    pub drctl_status: Samples,
}

/// `runs` times: a fresh mTLS pair ships 1 MiB, the primary is killed, and
/// the replica is failed over.
pub async fn failover(bins: &Bins, runs: usize) -> anyhow::Result<Failover> {
    let mut out = Failover {
        to_primary: Samples::default(),
        drctl_status: Samples::default(),
    };
    for run in 0..runs {
        let sites = Sites::new(false, "", "", "").await;
        let b = Proc::start_ready(bins, &sites.b).await?;
        let mut a = Proc::start_ready(bins, &sites.a).await?;
        std::fs::write(
            sites.a_wal.join(seg_name(1)),
            random_buffer(MIB, run as u64),
        )?;
        wait_until(
            "replica durable at 1 MiB",
            Duration::from_secs(30),
            || async {
                a.stream()
                    .await
                    .ok()
                    .is_some_and(|s| s.durable_position >= MIB as u64)
            },
        )
        .await?;
        a.kill9();
        wait_until(
            "replica to see the primary gone",
            Duration::from_secs(30),
            || async { b.stream().await.ok().is_some_and(|s| !s.connected) },
        )
        .await?;
        let t = Instant::now();
        let (code, so, se) = bins.drctl(&b.socket, &["status"]);
        if code != 0 {
            bail!("drctl status exited {code}: {so}{se}");
        }
        out.drctl_status.push(t.elapsed());
        let t = Instant::now();
        let (code, so, se) = bins.drctl(&b.socket, &["failover", "--yes", "--reason", "drd-bench"]);
        if code != 0 {
            bail!("drctl failover exited {code}: {so}{se}");
        }
        wait_until("the new primary", Duration::from_secs(30), || async {
            b.status()
                .await
                .ok()
                .is_some_and(|s| drd::display::role_name(s.role).eq_ignore_ascii_case("primary"))
        })
        .await?;
        out.to_primary.push(t.elapsed());
    }
    Ok(out)
}

/// Polls `f` every [`POLL`] until true, or fails naming `what`.
async fn wait_until<F, Fut>(what: &str, within: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Writes the backlog: `count` segments of 16 MiB of random bytes in `dir`.
pub fn write_backlog(dir: &Path, count: u64) -> anyhow::Result<u64> {
    let buf = random_buffer(SEG, 4242);
    for n in 1..=count {
        // Each segment differs (the first 8 bytes carry its number), so a
        // mix-up would show in the SHA-256 check.
        let mut f = std::fs::File::create(dir.join(seg_name(n)))?;
        f.write_all(&n.to_le_bytes())?;
        f.write_all(&buf[8..])?;
        // Synced, as PostgreSQL syncs its WAL: left dirty, the whole backlog
        // would be written back ~30 s later (dirty_expire_centisecs), in
        // the middle of the lag runs, and the disk's queue would show up
        // as seconds of lag that have nothing to do with drd.
        f.sync_all()?;
    }
    Ok(count * SEG as u64)
}

/// Temp directory for a baseline, next to the pair's (same filesystem);
/// removed when dropped.
pub fn scratch(name: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("drd-bench-{name}-"))
        .tempdir()?)
}
