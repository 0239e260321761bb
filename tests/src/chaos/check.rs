//! The invariant checker's file-level checks, against the oracle:
//! - every acked position is present at a site, byte-identical (Invariant 1);
//! - no segment is visible as complete unless it matches the source
//!   (Invariant 2);
//! - after a run, a site holds exactly the stream's log, nothing more.
//!
//! A site's log is its landing directory (complete `NAME` or `NAME.partial`)
//! plus its own WAL directory (segments it wrote as a primary).

use super::oracle::Oracle;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A 24-hex-digit WAL segment name (what the suite writes).
pub fn is_segment_name(n: &str) -> bool {
    n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One site's directories.
#[derive(Clone, Debug)]
pub struct Site {
    pub name: &'static str,
    pub wal: PathBuf,
    pub landing: PathBuf,
}

impl Site {
    /// Where the site keeps segment `name`: landing (complete, then
    /// partial), then its own WAL directory.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        [
            self.landing.join(name),
            self.landing.join(format!("{name}.partial")),
            self.wal.join(name),
        ]
        .into_iter()
        .find(|p| p.exists())
    }

    /// Segment names present (wal and landing, `.partial` stripped).
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in [&self.wal, &self.landing] {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let base = n.strip_suffix(".partial").unwrap_or(&n).to_string();
                    if is_segment_name(&base) && e.path().is_file() && !out.contains(&base) {
                        out.push(base);
                    }
                }
            }
        }
        out.sort();
        out
    }
}

/// Reads up to `len` bytes of `path` (fewer if the file is shorter).
fn read_prefix(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    std::fs::File::open(path)?
        .take(len as u64)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Invariant 1 at one site: the stream's bytes `[0, upto)` are there,
/// byte-identical to the oracle. Returns the problems found.
pub fn acked_present(site: &Site, oracle: &Oracle, upto: u64) -> Vec<String> {
    let mut problems = Vec::new();
    if upto > oracle.total() {
        problems.push(format!(
            "acked position {upto} is past the end of the stream's log ({})",
            oracle.total()
        ));
    }
    for s in oracle.segments.iter().filter(|s| s.start < upto) {
        let need = ((upto - s.start) as usize).min(s.data.len());
        // A partial file may be renamed complete under us: look twice.
        let mut got = None;
        for _ in 0..2 {
            if let Some(p) = site.file(&s.name) {
                if let Ok(b) = read_prefix(&p, need) {
                    got = Some((p, b));
                    break;
                }
            }
        }
        match got {
            None => problems.push(format!(
                "{}: acked segment {} (positions {}..{}) is missing",
                site.name,
                s.name,
                s.start,
                s.start + need as u64
            )),
            Some((p, b)) if b.len() < need => problems.push(format!(
                "{}: {} holds {} bytes, but {} of them were acked (up to position {upto})",
                site.name,
                p.display(),
                b.len(),
                need
            )),
            Some((p, b)) if b[..] != s.data[..need] => {
                let at = b.iter().zip(&s.data).position(|(x, y)| x != y).unwrap_or(0);
                problems.push(format!(
                    "{}: {} differs from the source at byte {at} (position {}), inside the acked range",
                    site.name,
                    p.display(),
                    s.start + at as u64
                ))
            }
            Some(_) => {}
        }
    }
    problems
}

/// Invariant 2: every complete (`NAME`, not `.partial`) file in a landing
/// directory is the whole source segment. Files already verified with the
/// same size and mtime are skipped (`cache`).
pub fn complete_files_match(
    site: &Site,
    oracle: &Oracle,
    cache: &mut HashMap<PathBuf, (u64, SystemTime)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(rd) = std::fs::read_dir(&site.landing) else {
        return problems;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_segment_name(&name) {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let key = (
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        if cache.get(&path) == Some(&key) {
            continue;
        }
        let Some(src) = oracle.get(&name) else {
            problems.push(format!(
                "{}: complete segment {name} is not part of the stream's log",
                site.name
            ));
            continue;
        };
        match std::fs::read(&path) {
            Ok(b) if b == src.data => {
                cache.insert(path, key);
            }
            Ok(b) => problems.push(format!(
                "{}: {name} is visible as complete but its checksum does not match the source \
                 ({} bytes, sha256 {}; source {} bytes, sha256 {})",
                site.name,
                b.len(),
                hex::encode(Sha256::digest(&b)),
                src.data.len(),
                hex::encode(Sha256::digest(&src.data))
            )),
            Err(_) => {} // gone between listing and reading: not visible
        }
    }
    problems
}

/// After a run: the site holds exactly the stream's log — every segment
/// with its full length and bytes (compared by SHA-256), and no segment
/// that is not part of it.
pub fn site_equals_log(site: &Site, oracle: &Oracle) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &oracle.segments {
        let Some(p) = site.file(&s.name) else {
            problems.push(format!("{}: segment {} is missing", site.name, s.name));
            continue;
        };
        match crate::sha256_file(&p) {
            Ok(h) if h == hex::encode(Sha256::digest(&s.data)) => {}
            Ok(h) => problems.push(format!(
                "{}: {} ({} bytes, sha256 {h}) is not the source's {} bytes (sha256 {})",
                site.name,
                p.display(),
                std::fs::metadata(&p).map_or(0, |m| m.len()),
                s.data.len(),
                hex::encode(Sha256::digest(&s.data))
            )),
            Err(e) => problems.push(format!("{}: {e:#}", site.name)),
        }
    }
    for n in site.names() {
        if oracle.get(&n).is_none() {
            problems.push(format!(
                "{}: segment {n} is not part of the stream's log (it should have been quarantined)",
                site.name
            ));
        }
    }
    problems
}
