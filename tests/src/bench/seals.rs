//! Issue 16's figures: sealed segments per second, primary → replica over
//! mTLS, for many small segments and for 16 MiB ones, each against a local
//! baseline measured in the same run on the same filesystem: per file,
//! create + write + fdatasync + rename + fsync of the directory (what a
//! careful archiver does to land one file durably under its final name).

use crate::baseline::{random_buffer, settle_disk};
use crate::procs::{Bins, Proc};
use crate::runs::scratch;
use crate::stats::Row;
use anyhow::{bail, Context};
use drd_tests::{seg_name, Pair};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The sizes and counts measured by default: 5,000 × 4 KiB (issue 16's
/// shape, where the cost per segment is everything) and 64 × 16 MiB
/// (PostgreSQL's segment size, 1 GiB in all).
pub const SMALL: (usize, u64) = (4 * 1024, 5_000);
pub const LARGE: (usize, u64) = (16 << 20, 64);
/// The longest one drd run may take.
const LIMIT: Duration = Duration::from_secs(900);

/// One size: drd's and the baseline's time for `count` segments.
pub struct Seals {
    pub size: usize,
    pub count: u64,
    pub drd_secs: f64,
    pub base_secs: f64,
    pub cpu_primary: f64,
    pub cpu_replica: f64,
}

impl Seals {
    pub fn drd_rate(&self) -> f64 {
        self.count as f64 / self.drd_secs
    }
    pub fn base_rate(&self) -> f64 {
        self.count as f64 / self.base_secs
    }
    pub fn ratio(&self) -> f64 {
        self.drd_rate() / self.base_rate()
    }
}

/// Segment content: each file differs (its number in the first 8 bytes), so
/// a mix-up shows in the SHA-256 check.
fn content(buf: &mut [u8], n: u64) {
    buf[..8].copy_from_slice(&n.to_le_bytes());
}

/// The baseline: `count` files of `size` bytes into `dir`, each created
/// under a temporary name, written, fdatasynced, renamed and its directory
/// fsynced. Returns the seconds it took.
pub fn local(dir: &Path, size: usize, count: u64) -> anyhow::Result<f64> {
    let mut buf = random_buffer(size, 1616);
    let d = std::fs::File::open(dir)?;
    let t = Instant::now();
    for n in 1..=count {
        content(&mut buf, n);
        let tmp = dir.join(format!("{}.partial", seg_name(n)));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        std::fs::rename(&tmp, dir.join(seg_name(n)))?;
        d.sync_all()?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// drd: `count` segments of `size` bytes (plus a 1-byte active one, so all
/// `count` are sealed) already in the primary's WAL directory, synced;
/// timed from the primary's start, the replica already running, until the
/// replica is durable at every byte (so every segment is sealed and
/// verified there); then the replica's copy is checked byte for byte.
async fn drd(bins: &Bins, size: usize, count: u64) -> anyhow::Result<Seals> {
    let pair = Pair::new("");
    let mut buf = random_buffer(size, 1616);
    for n in 1..=count {
        content(&mut buf, n);
        let mut f = std::fs::File::create(pair.wal.join(seg_name(n)))?;
        f.write_all(&buf)?;
        f.sync_data()?;
    }
    std::fs::write(pair.wal.join(seg_name(count + 1)), b"x")?;
    let total = size as u64 * count + 1;
    let replica = Proc::start_ready(bins, &pair.replica).await?;
    let cpu_r0 = replica.cpu_seconds();
    let started = Instant::now();
    let mut primary = Proc::spawn(bins, &pair.primary)?;
    primary.wait_ready().await?;
    loop {
        let s = primary.stream().await.ok();
        if s.as_ref().is_some_and(|s| s.durable_position >= total) {
            break;
        }
        if started.elapsed() > LIMIT {
            bail!(
                "{count} segments of {size} bytes not shipped within {LIMIT:?}: {s:?}\n\
                 --- primary ---\n{}\n--- replica ---\n{}",
                primary.log_tail(),
                replica.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drd_secs = started.elapsed().as_secs_f64();
    let (cpu_primary, cpu_replica) = (primary.cpu_seconds(), replica.cpu_seconds() - cpu_r0);
    drop(primary);
    drop(replica);
    let n = drd_tests::assert_replica_identical(&pair.wal, &pair.landing())
        .context("replica differs from the source")?;
    eprintln!("  seals: {n} segments byte-identical at the replica");
    Ok(Seals {
        size,
        count,
        drd_secs,
        base_secs: 0.0,
        cpu_primary,
        cpu_replica,
    })
}

/// Each size: the baseline in a scratch directory, then drd, each after
/// the disk has settled (see `baseline::settle_disk`).
pub async fn measure(bins: &Bins, sizes: &[(usize, u64)]) -> anyhow::Result<Vec<Seals>> {
    let mut out = Vec::new();
    for &(size, count) in sizes {
        // After the parts before (their files deleted): let the disk
        // settle first, or deletes stall the baseline's syncs.
        settle_disk(scratch("settle")?.path())?;
        eprintln!("seals: {count} × {} KiB, local baseline…", size / 1024);
        let dir = scratch("seals")?;
        let base_secs = local(dir.path(), size, count)?;
        drop(dir);
        settle_disk(scratch("settle")?.path())?;
        eprintln!("seals: {count} × {} KiB, drd…", size / 1024);
        let mut s = drd(bins, size, count).await?;
        s.base_secs = base_secs;
        settle_disk(scratch("settle")?.path())?;
        out.push(s);
    }
    Ok(out)
}

fn size_name(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

pub fn rows(seals: &[Seals]) -> Vec<Row> {
    seals
        .iter()
        .map(|s| {
            Row::new(
                &format!("sealed segments/s, {} × {}", s.count, size_name(s.size)),
                format!(
                    "{:.0}/s ({:.1} s; CPU {:.1} + {:.1} core-s)",
                    s.drd_rate(),
                    s.drd_secs,
                    s.cpu_primary,
                    s.cpu_replica
                ),
                format!(
                    "{:.0}/s ({:.1} s) create+write+fdatasync+rename+fsync dir",
                    s.base_rate(),
                    s.base_secs
                ),
                format!("{:.2}x", s.ratio()),
                ">= 0.5x",
                Some(s.ratio() >= 0.5),
            )
        })
        .collect()
}

pub fn notes(seals: &[Seals]) -> Vec<String> {
    if seals.is_empty() {
        return Vec::new();
    }
    vec![
        "- seals: the segments (and a 1-byte active one after them) are written and synced into the \
         primary's WAL directory before the primary starts; timed from its start (replica running) \
         until the replica is durable at every byte, so every segment has been verified, fsynced and \
         renamed there; the copy was then checked byte for byte. The baseline lands the same count \
         and size of files on the same filesystem, one at a time: create, write, fdatasync, rename, \
         fsync of the directory."
            .into(),
    ]
}
