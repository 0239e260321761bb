//! `drctl wal-fetch NAME DEST`: PostgreSQL's restore_command. Copies a
//! complete, verified segment to DEST atomically (temporary file, fsync,
//! rename, directory fsync) and re-checks its SHA-256 while copying. Exits 1
//! when the segment is not there, so recovery ends where the log ends.

use anyhow::{bail, Context};
use clap::Args;
use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tonic::transport::Channel;

#[derive(Args)]
pub struct FetchArgs {
    /// Segment name (PostgreSQL's %f).
    pub name: String,
    /// Destination path (PostgreSQL's %p).
    pub dest: PathBuf,
    /// Stream (default: the node's only stream).
    #[arg(long, default_value = "")]
    pub stream: String,
    /// For a DR drill's scratch database (drill-hook.sh's restore_command):
    /// the DR site's retention does not count this fetch as read by the
    /// live DR database.
    #[arg(long)]
    pub drill: bool,
    /// `--from URL [--identity FILE]`: from a bucket, without a drd.
    #[command(flatten)]
    pub bucket: crate::bucket::FromArgs,
}

pub async fn run(c: &mut ControlClient<Channel>, a: &FetchArgs) -> anyhow::Result<ExitCode> {
    let r = match c
        .fetch_segment(pb::FetchSegmentRequest {
            stream: a.stream.clone(),
            segment: a.name.clone(),
            drill: a.drill,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => {
            eprintln!("drctl: {}", s.message());
            return Ok(ExitCode::FAILURE);
        }
        Err(s) => bail!("wal-fetch {}: {}", a.name, s.message()),
    };
    if r.pad_to > 0 {
        eprintln!(
            "drctl: {} is the last segment before a failover: its {} verified bytes, zero-filled \
             to {} bytes (replay ends at the first zero)",
            a.name, r.size, r.pad_to
        );
    }
    copy_verified(Path::new(&r.path), &a.dest, r.size, &r.sha256, r.pad_to)?;
    Ok(ExitCode::SUCCESS)
}

/// Copies `size` bytes of `src` to `dest` atomically, checking the SHA-256;
/// with `pad_to` > `size`, zeros follow up to `pad_to` bytes.
fn copy_verified(
    src: &Path,
    dest: &Path,
    size: u64,
    sha256: &str,
    pad_to: u64,
) -> anyhow::Result<()> {
    write_restored(dest, |out| {
        let mut input =
            std::fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = input.read(&mut buf[..want])?;
            if n == 0 {
                bail!(
                    "{} is shorter than its recorded {size} bytes",
                    src.display()
                );
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let got = hex::encode(h.finalize());
        if !sha256.is_empty() && got != sha256 {
            bail!(
                "{} does not match its recorded SHA-256 ({got} vs {sha256}): the stored copy is damaged; run `drctl verify`",
                src.display()
            );
        }
        zero_fill(out, pad_to.saturating_sub(size))
    })
}

/// Writes `n` zero bytes: real zeros, not a hole, so that the file reads
/// like any segment (a partial last segment padded to the segment size).
pub fn zero_fill(out: &mut std::fs::File, n: u64) -> anyhow::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..k])?;
        left -= k as u64;
    }
    Ok(())
}

/// Creates `dest` for PostgreSQL's restore_command: `fill` writes a
/// temporary file beside it, which is fsynced, renamed into place and its
/// directory fsynced — the file is on disk before PostgreSQL is told it is
/// there, and a failure leaves no partial file under the name.
pub fn write_restored(
    dest: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.drd-tmp",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let result = (|| {
        let mut out = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        fill(&mut out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("cannot rename to {}", dest.display()))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
