//! Baselines measured in the same run as drd: the physical ceiling (a
//! minimal sender → loopback TCP → receiver with fdatasync every 1 MiB),
//! rsync --fsync, a plain copy + fsync, and paced write + fdatasync latency.

use crate::procs::{children_cpu_seconds, thread_cpu_seconds};
use crate::stats::Samples;
use anyhow::{bail, Context};
use rand::{Rng, RngCore, SeedableRng};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// The ceiling receiver's fdatasync interval (what the issue prescribes).
const CEILING_SYNC_BYTES: usize = MIB;

/// Bytes moved, wall time and CPU.
pub struct Transfer {
    pub bytes: u64,
    pub secs: f64,
    /// CPU seconds of the sending side (thread or process).
    pub cpu_send: f64,
    /// CPU seconds of the receiving side; for rsync, all of its processes.
    pub cpu_recv: f64,
}

impl Transfer {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

/// The files of `dir`, sorted by name.
pub fn sorted_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// The physical ceiling: every file of `src` read in 1 MiB blocks, sent
/// over loopback TCP (plaintext, length-prefixed), and written by the
/// receiver into `dst` with fdatasync after every 1 MiB and at the end.
pub fn ceiling(src: &Path, dst: &Path) -> anyhow::Result<Transfer> {
    std::fs::create_dir_all(dst)?;
    let files = sorted_files(src)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dst = dst.to_path_buf();
    let receiver = std::thread::spawn(move || -> anyhow::Result<(u64, f64, Instant)> {
        let (mut sock, _) = listener.accept()?;
        let cpu0 = thread_cpu_seconds();
        let mut buf = vec![0u8; MIB];
        let mut total = 0u64;
        loop {
            let mut hdr = [0u8; 12];
            sock.read_exact(&mut hdr)?;
            let (idx, len) = (
                u32::from_le_bytes(hdr[..4].try_into()?),
                u64::from_le_bytes(hdr[4..].try_into()?),
            );
            if idx == u32::MAX {
                break;
            }
            let f = std::fs::File::create(dst.join(format!("{idx:08}")))?;
            let (mut off, mut unsynced) = (0u64, 0usize);
            while off < len {
                let k = ((len - off) as usize).min(buf.len());
                sock.read_exact(&mut buf[..k])?;
                f.write_all_at(&buf[..k], off)?;
                off += k as u64;
                unsynced += k;
                if unsynced >= CEILING_SYNC_BYTES {
                    f.sync_data()?; // the durability step being measured
                    unsynced = 0;
                }
            }
            f.sync_data()?;
            total += len;
        }
        Ok((total, thread_cpu_seconds() - cpu0, Instant::now()))
    });
    let started = Instant::now();
    let cpu0 = thread_cpu_seconds();
    let mut sock = TcpStream::connect(addr)?;
    let mut buf = vec![0u8; MIB];
    for (i, path) in files.iter().enumerate() {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        let mut hdr = (i as u32).to_le_bytes().to_vec();
        hdr.extend_from_slice(&len.to_le_bytes());
        sock.write_all(&hdr)?;
        let mut left = len;
        while left > 0 {
            let k = (left as usize).min(buf.len());
            f.read_exact(&mut buf[..k])?;
            sock.write_all(&buf[..k])?;
            left -= k as u64;
        }
    }
    let mut end = u32::MAX.to_le_bytes().to_vec();
    end.extend_from_slice(&0u64.to_le_bytes());
    sock.write_all(&end)?;
    let cpu_send = thread_cpu_seconds() - cpu0;
    let (bytes, cpu_recv, done) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("ceiling receiver panicked"))??;
    Ok(Transfer {
        bytes,
        secs: (done - started).as_secs_f64(),
        cpu_send,
        cpu_recv,
    })
}

/// `rsync --version`'s first line, if rsync is installed.
pub fn rsync_version() -> Option<String> {
    let out = Command::new("rsync").arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

/// `rsync -a --fsync SRC/ DST/` between two local directories.
pub fn rsync(src: &Path, dst: &Path) -> anyhow::Result<Transfer> {
    let bytes: u64 = sorted_files(src)?
        .iter()
        .map(|p| p.metadata().map_or(0, |m| m.len()))
        .sum();
    let cpu0 = children_cpu_seconds();
    let started = Instant::now();
    let out = Command::new("rsync")
        .arg("-a")
        .arg("--fsync")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .context("run rsync")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("rsync failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Transfer {
        bytes,
        secs,
        cpu_send: 0.0,
        cpu_recv: children_cpu_seconds() - cpu0,
    })
}

/// A plain local copy of `src` into `dir` plus fsync of the file and the
/// directory: what any archive command must at least do.
pub fn copy_fsync(src: &Path, dir: &Path) -> anyhow::Result<Duration> {
    let dst = dir.join(src.file_name().context("file name")?);
    let t = Instant::now();
    std::fs::copy(src, &dst)?;
    std::fs::File::open(&dst)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(t.elapsed())
}

/// A generator of WAL-like write sizes: log-uniform between 8 KiB and 1 MiB
/// (many small commits, some bulk loads).
pub struct WriteSizes(rand::rngs::StdRng);

impl WriteSizes {
    pub const MIN: usize = 8 * 1024;
    pub const MAX: usize = MIB;

    pub fn new(seed: u64) -> Self {
        Self(rand::rngs::StdRng::seed_from_u64(seed))
    }

    pub fn next(&mut self) -> usize {
        let lo = (Self::MIN as f64).ln();
        let hi = (Self::MAX as f64).ln();
        (self.0.random_range(lo..=hi).exp() as usize).clamp(Self::MIN, Self::MAX)
    }
}

/// Random bytes to write from (content does not matter: nothing compresses).
pub fn random_buffer(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Latency of fdatasync after each paced write (same sizes and rate as the
/// lag writer) into 16 MiB files in `dir`, for `secs` seconds.
pub fn fdatasync_latency(dir: &Path, rate: f64, secs: f64) -> anyhow::Result<Samples> {
    let mut writer = PacedWriter::new(dir, rate)?;
    let mut out = Samples::default();
    while writer.started.elapsed().as_secs_f64() < secs {
        let f = writer.write_next()?;
        let t = Instant::now();
        f.sync_data()?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// The lag writer's sizes and pace, into 16 MiB files in `dir` (none is
/// removed here: a delete on this disk stalls fsyncs, so the caller removes
/// `dir` and lets the disk settle; see `Settle` in drd-bench).
struct PacedWriter {
    dir: PathBuf,
    rate: f64,
    started: Instant,
    buf: Vec<u8>,
    sizes: WriteSizes,
    file: std::sync::Arc<std::fs::File>,
    file_no: u32,
    in_file: usize,
    /// Bytes written so far.
    written: u64,
}

impl PacedWriter {
    fn new(dir: &Path, rate: f64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let buf = random_buffer(2 * MIB, 77);
        let file = std::sync::Arc::new(std::fs::File::create(dir.join("00000000"))?);
        Ok(Self {
            dir: dir.to_path_buf(),
            rate,
            // The pace counts from here, once the buffer and file are ready.
            started: Instant::now(),
            buf,
            sizes: WriteSizes::new(78),
            file,
            file_no: 0,
            in_file: 0,
            written: 0,
        })
    }

    /// Waits until the next write is due, makes it, and returns the file it
    /// went to.
    fn write_next(&mut self) -> anyhow::Result<std::sync::Arc<std::fs::File>> {
        let due = Duration::from_secs_f64(self.written as f64 / self.rate);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
        let n = self.sizes.next();
        if self.in_file + n > 16 * MIB {
            self.file_no += 1;
            self.in_file = 0;
            let path = self.dir.join(format!("{:08}", self.file_no));
            self.file = std::sync::Arc::new(std::fs::File::create(path)?);
        }
        (&*self.file).write_all(&self.buf[..n])?;
        self.written += n as u64;
        self.in_file += n;
        Ok(self.file.clone())
    }
}

/// CPU seconds one core spends on SHA-256 over every file of `dir` (with
/// drd's own file hashing, 1 MiB reads from the page cache), and the bytes
/// hashed. Each daemon hashes every byte it ships or lands, so this is a
/// floor under its CPU per GiB.
pub fn sha256_cost(dir: &Path) -> anyhow::Result<(f64, u64)> {
    let cpu0 = thread_cpu_seconds();
    let mut total = 0u64;
    for path in sorted_files(dir)? {
        let (_, size) =
            drd::storage::spool::hash_path(&path).with_context(|| path.display().to_string())?;
        total += size;
    }
    Ok((thread_cpu_seconds() - cpu0, total))
}

/// What a local group commit gives the same writes: a writer paced like the
/// lag writer (never blocked by a sync) and a syncer that fdatasyncs in a
/// loop, each sync covering every write that returned before it began.
/// `per_write` is each write's time from returning to the end of the first
/// sync that covers it: the same measure as drd's lag, with no network and
/// no second node. (A per-call fdatasync figure counts a 100 ms stall once;
/// a writer that keeps writing meets it in every write made meanwhile, and
/// so does drd's lag.)
pub struct LocalSync {
    pub per_write: Samples,
    /// Each sync's duration.
    pub per_sync: Samples,
}

pub fn local_group_commit(dir: &Path, rate: f64, secs: f64) -> anyhow::Result<LocalSync> {
    use std::sync::{Arc, Condvar, Mutex};
    #[derive(Default)]
    struct Shared {
        /// Files written to since the last sync began (the current one last).
        unsynced: Vec<Arc<std::fs::File>>,
        written: u64,
        done: bool,
    }
    let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
    let syncer = {
        let shared = shared.clone();
        std::thread::spawn(move || -> anyhow::Result<(Vec<(Instant, u64)>, Samples)> {
            let (lock, cv) = &*shared;
            let (mut covered, mut per_sync) = (Vec::new(), Samples::default());
            let mut synced = 0u64;
            loop {
                let (files, target) = {
                    let mut s = lock.lock().unwrap();
                    while s.written == synced && !s.done {
                        s = cv.wait(s).unwrap();
                    }
                    if s.written == synced && s.done {
                        break;
                    }
                    let cur = s.unsynced.last().cloned();
                    let files = std::mem::take(&mut s.unsynced);
                    s.unsynced.extend(cur);
                    (files, s.written)
                };
                let t = Instant::now();
                for f in &files {
                    f.sync_data()?;
                }
                per_sync.push(t.elapsed());
                synced = target;
                covered.push((Instant::now(), target));
            }
            Ok((covered, per_sync))
        })
    };
    let mut writer = PacedWriter::new(dir, rate)?;
    let mut writes = Vec::new();
    while writer.started.elapsed().as_secs_f64() < secs {
        let f = writer.write_next()?;
        writes.push((Instant::now(), writer.written));
        let (lock, cv) = &*shared;
        let mut s = lock.lock().unwrap();
        if !s.unsynced.last().is_some_and(|l| Arc::ptr_eq(l, &f)) {
            s.unsynced.push(f);
        }
        s.written = writer.written;
        cv.notify_one();
    }
    {
        let (lock, cv) = &*shared;
        lock.lock().unwrap().done = true;
        cv.notify_one();
    }
    let (covered, per_sync) = syncer
        .join()
        .map_err(|_| anyhow::anyhow!("syncer panicked"))??;
    let mut per_write = Samples::default();
    for &(t, pos) in &writes {
        let i = covered.partition_point(|&(_, c)| c < pos);
        if let Some(&(at, _)) = covered.get(i) {
            per_write.push(at.saturating_duration_since(t));
        }
    }
    Ok(LocalSync {
        per_write,
        per_sync,
    })
}

/// Waits for fsyncs on this disk to be quick again (after a large delete,
/// say): an 8 KiB write + fdatasync every 5 ms until three seconds pass
/// with none over 20 ms, for at most 30 s. Returns the time waited. (One
/// quiet second was not enough: after a 2 GiB delete the stalls come in
/// bursts up to a second apart, and the next measure met them.)
pub fn settle_disk(dir: &Path) -> anyhow::Result<Duration> {
    const QUIET: Duration = Duration::from_secs(3);
    const SLOW: Duration = Duration::from_millis(20);
    const LIMIT: Duration = Duration::from_secs(30);
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(dir.join("probe"))?;
    let block = [0u8; 8192];
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    while started.elapsed() < LIMIT {
        f.write_all(&block)?;
        let t = Instant::now();
        f.sync_data()?;
        if t.elapsed() > SLOW {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(started.elapsed())
}
