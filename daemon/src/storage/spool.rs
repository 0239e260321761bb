//! Write-once files: a file is written under a hidden temporary name,
//! fsynced, and only then published under its final name — atomically, and
//! never over an existing file. The same name with the same bytes again is
//! accepted (a retried `archive_command`); different bytes are refused and
//! nothing changes. Used for a `source = "spool"` stream's `wal_dir` (filled
//! by `drctl wal-push`) and for side files (`.history`, `.backup`).
//!
//! Hidden names (`.NAME.drd-tmp`) are skipped by the source scanner, so a
//! half-written file is never shipped.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Suffix of a file being received; with the leading dot it is hidden.
pub const TEMP_SUFFIX: &str = ".drd-tmp";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "{path} already exists with different content ({existing_size} bytes, sha256 \
         {existing_sha256}) than the {new_size} bytes pushed now (sha256 {new_sha256}); \
         refusing to overwrite it"
    )]
    Conflict {
        path: String,
        existing_size: u64,
        existing_sha256: String,
        new_size: u64,
        new_sha256: String,
    },
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What publishing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256 (hex) of the bytes.
    pub sha256: String,
    /// The same name with the same bytes was already there.
    pub already_present: bool,
}

/// A file being received. Dropping it without [`Incoming::publish`] removes
/// the temporary file.
pub struct Incoming {
    dir: PathBuf,
    name: String,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    size: u64,
}

/// The hidden temporary name of `name` while it is received.
pub fn temp_name(name: &str) -> String {
    format!(".{name}{TEMP_SUFFIX}")
}

impl Incoming {
    /// Starts receiving `name` into `dir` (created if missing). A temporary
    /// file left by a crash is replaced: it never had a final name, so no
    /// one relies on it. Callers serialise writers of one directory.
    pub fn create(dir: &Path, name: &str) -> Result<Self, SpoolError> {
        crate::storage::fsutil::create_dir_durable(dir).map_err(io_err(dir))?;
        let tmp = dir.join(temp_name(name));
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp)(e)),
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            tmp,
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        // `file` is taken only by `publish` (which consumes `self`) and `drop`.
        #[allow(clippy::expect_used)]
        let f = self.file.as_mut().expect("file open until publish");
        f.write_all(data).map_err(io_err(&self.tmp))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// SHA-256 (hex) of the bytes received so far.
    pub fn sha256(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// Makes the file durable and gives it its final name, unless a file of
    /// that name exists: then the bytes are compared and the temporary file
    /// is removed either way.
    pub fn publish(mut self) -> Result<Published, SpoolError> {
        // Set by `create`; only this call and `drop` take it.
        #[allow(clippy::expect_used)]
        let file = self.file.take().expect("file open until publish");
        // The bytes (and size) must be on disk before any name points at
        // them: after a crash the final name never shows a short file.
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        let final_path = self.dir.join(&self.name);
        let sha256 = self.sha256();
        if final_path.exists() {
            return self.compare(&final_path, sha256);
        }
        // A hard link, not a rename: it fails if the final name exists, so
        // even a writer we do not know about cannot be overwritten.
        match std::fs::hard_link(&self.tmp, &final_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return self.compare(&final_path, sha256)
            }
            Err(e) => return Err(io_err(&final_path)(e)),
        }
        std::fs::remove_file(&self.tmp).map_err(io_err(&self.tmp))?;
        // The new name (and the temporary name's removal) must survive a
        // power loss before the caller reports the file safe.
        crate::storage::fsutil::fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(Published {
            path: final_path,
            size: self.size,
            sha256,
            already_present: false,
        })
    }

    fn compare(self, existing: &Path, sha256: String) -> Result<Published, SpoolError> {
        let _ = std::fs::remove_file(&self.tmp);
        let (existing_sha256, existing_size) = hash_path(existing).map_err(io_err(existing))?;
        if existing_sha256 != sha256 || existing_size != self.size {
            return Err(SpoolError::Conflict {
                path: existing.display().to_string(),
                existing_size,
                existing_sha256,
                new_size: self.size,
                new_sha256: sha256,
            });
        }
        Ok(Published {
            path: existing.to_path_buf(),
            size: self.size,
            sha256,
            already_present: true,
        })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Not published (an error or an incomplete push): nothing stays.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `data` as `dir/name` once (see [`Incoming::publish`]).
pub fn write_once(dir: &Path, name: &str, data: &[u8]) -> Result<Published, SpoolError> {
    let mut f = Incoming::create(dir, name)?;
    f.write(data)?;
    f.publish()
}

/// Removes the temporary files of pushes that never finished (drd or the
/// machine crashed mid-push); returns how many. Call it only while no push
/// into `dir` is in progress.
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            std::fs::remove_file(e.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// SHA-256 (hex) and size of a file.
pub fn hash_path(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_once_same_bytes_accepted_different_bytes_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("spool");
        let first = write_once(&dir, "000000010000000000000001", b"abc").unwrap();
        assert!(!first.already_present);
        assert_eq!(first.size, 3);
        let again = write_once(&dir, "000000010000000000000001", b"abc").unwrap();
        assert!(again.already_present);
        assert_eq!(again.sha256, first.sha256);
        let err = write_once(&dir, "000000010000000000000001", b"abd").unwrap_err();
        assert!(matches!(err, SpoolError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"));
        assert_eq!(
            std::fs::read(dir.join("000000010000000000000001")).unwrap(),
            b"abc"
        );
        // No temporary file is left behind in any case.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["000000010000000000000001"]);
    }

    #[test]
    fn stale_temps_are_removed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(temp_name("a")), b"x").unwrap();
        std::fs::write(d.path().join("000000010000000000000001"), b"x").unwrap();
        std::fs::write(d.path().join(".keep"), b"x").unwrap();
        assert_eq!(remove_stale_temps(d.path()).unwrap(), 1);
        assert_eq!(remove_stale_temps(d.path()).unwrap(), 0);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn an_abandoned_push_leaves_nothing_and_a_stale_temp_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(temp_name("x")), b"stale").unwrap();
        let mut f = Incoming::create(d.path(), "x").unwrap();
        f.write(b"partial").unwrap();
        drop(f);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
