//! Issue 20's physical limit: how fast this disk takes the backlog when
//! nothing but the disk is paid for — each segment read from the page
//! cache in 1 MiB blocks and written sequentially with O_DIRECT and O_DSYNC
//! (no page cache on the write side, every 1 MiB write durable before the
//! next), as `dd oflag=direct,dsync bs=1M` does; and the buffered variant
//! (page-cache writes, fdatasync after every 1 MiB) without the ceiling's
//! TCP hop. One thread, no network, no hashing.

use crate::baseline::{sorted_files, Transfer};
use crate::procs::thread_cpu_seconds;
use anyhow::Context;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

const MIB: usize = 1 << 20;
/// O_DIRECT wants buffers, offsets and lengths aligned to the logical
/// block size; 4096 covers every disk here.
const ALIGN: usize = 4096;

/// How the limit's writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// O_DIRECT | O_DSYNC: each 1 MiB write goes to the device and is
    /// durable when it returns.
    Direct,
    /// Page-cache writes and an fdatasync after every 1 MiB.
    Buffered,
}

/// Writes every file of `src` into `dst` as `mode` says; the transfer with
/// this thread's CPU time as both sides'.
pub fn write_backlog(src: &Path, dst: &Path, mode: Mode) -> anyhow::Result<Transfer> {
    std::fs::create_dir_all(dst)?;
    let files = sorted_files(src)?;
    // An aligned 1 MiB window inside a larger plain buffer: no unsafe
    // allocation needed.
    let mut raw = vec![0u8; MIB + ALIGN];
    let off = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[off..off + MIB];
    let started = Instant::now();
    let cpu0 = thread_cpu_seconds();
    let mut total = 0u64;
    for (i, path) in files.iter().enumerate() {
        let mut src_file = std::fs::File::open(path)?;
        let len = src_file.metadata()?.len();
        let out = dst.join(format!("{i:08}"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        if mode == Mode::Direct {
            opts.custom_flags((nix::fcntl::OFlag::O_DIRECT | nix::fcntl::OFlag::O_DSYNC).bits());
        }
        let f = opts.open(&out).with_context(|| {
            format!(
                "open {} with {mode:?} writes (O_DIRECT needs a disk filesystem, not tmpfs)",
                out.display()
            )
        })?;
        let mut pos = 0u64;
        while pos < len {
            let k = usize::try_from(len - pos).unwrap_or(MIB).min(MIB);
            src_file.read_exact(&mut buf[..k])?;
            // O_DIRECT writes whole blocks: a ragged end is padded, and the
            // file cut back to its true size below.
            let w = match mode {
                Mode::Direct => k.div_ceil(ALIGN) * ALIGN,
                Mode::Buffered => k,
            };
            buf[k..w].fill(0);
            f.write_all_at(&buf[..w], pos)?;
            if mode == Mode::Buffered {
                f.sync_data()?; // the durability step being measured
            }
            pos += k as u64;
        }
        if mode == Mode::Direct && len % ALIGN as u64 != 0 {
            f.set_len(len)?;
        }
        // The size (a metadata change) made durable, as drd's seal does.
        f.sync_data()?;
        total += len;
    }
    Ok(Transfer {
        bytes: total,
        secs: started.elapsed().as_secs_f64(),
        cpu_send: thread_cpu_seconds() - cpu0,
        cpu_recv: 0.0,
    })
}
