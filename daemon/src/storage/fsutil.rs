//! Crash-safe file system steps. Each function says which fsync it does and
//! why; callers document why they call it where they do.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Bytes `offset..offset + len` of `f`, fewer where it ends (pread, retried
/// when interrupted).
pub fn read_range(f: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = len.min(f.metadata()?.len().saturating_sub(offset));
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// fsyncs a directory so that entries created, renamed or removed in it
/// survive a power loss (a file's own fsync does not cover its name).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its parents, then fsyncs each newly created level's
/// parent, so the directory itself is durable before files go into it.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Opens (creating if needed) a file for positional writes.
pub fn open_for_write(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Cuts `path` back to `len` bytes and fsyncs it, so that bytes beyond the
/// durable position cannot reappear after a crash.
pub fn truncate_durable(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

/// Moves `from` to `to`, also across file systems (a WAL volume and the data
/// dir are often separate): rename where possible; otherwise copy, fsync the
/// copy and its directory, and only then remove the original and fsync its
/// directory — at no point is there no durable copy.
pub fn move_durable(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => {
            if let Some(dir) = to.parent() {
                fsync_dir(dir)?;
            }
            if let Some(dir) = from.parent() {
                fsync_dir(dir)?;
            }
            Ok(())
        }
        // EXDEV: source and destination are on different file systems.
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(from, to)?;
            File::open(to)?.sync_all()?;
            if let Some(dir) = to.parent() {
                fsync_dir(dir)?;
            }
            std::fs::remove_file(from)?;
            if let Some(dir) = from.parent() {
                fsync_dir(dir)?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Renames `from` to `to` and fsyncs their directory so the new name is durable.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    match to.parent() {
        Some(dir) => fsync_dir(dir),
        None => Ok(()),
    }
}
