//! Tamper evidence: each stream's sealed segments form a hash chain,
//! `chain_n = SHA-256(chain_{n-1} ‖ digest_n ‖ name_n ‖ size_n)`, starting
//! from 32 zero bytes. The primary computes it and sends it with each seal;
//! the replica recomputes and stores it. `drctl verify` re-hashes the stored
//! files and walks the chain: a segment altered, removed or swapped at rest
//! is found, and the first one that breaks the chain is named.

use sha2::{Digest, Sha256};

/// Chain value before the first segment.
pub const GENESIS: [u8; 32] = [0; 32];

/// The next chain value.
pub fn link(prev: &[u8; 32], digest: &[u8; 32], name: &str, size: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(digest);
    h.update(name.as_bytes());
    h.update(size.to_be_bytes());
    h.finalize().into()
}

/// Parses a 64-digit hex digest.
pub fn from_hex(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// One stored segment as `verify` sees it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub name: String,
    pub size: u64,
    /// Digest recorded at seal time (hex).
    pub recorded_sha256: String,
    /// Chain value recorded at seal time (hex); None for records written
    /// before chains existed.
    pub recorded_chain: Option<String>,
    /// Digest of the file's first `size` bytes as found now; Err when the
    /// file is missing or short.
    pub actual_sha256: Result<String, String>,
    /// The file was removed by retention (a spooled segment pruned at the
    /// primary once the replica held it): only its record is walked, for
    /// the chain; its bytes are neither checked nor counted.
    pub pruned: bool,
}

/// What is wrong with a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing(String),
    Altered { recorded: String, actual: String },
    ChainBroken { recorded: String, computed: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing(why) => write!(f, "missing or unreadable: {why}"),
            Problem::Altered { recorded, actual } => write!(
                f,
                "contents changed since it was verified (sha256 now {actual}, recorded {recorded})"
            ),
            Problem::ChainBroken { recorded, computed } => write!(
                f,
                "hash chain broken (recorded {recorded}, recomputed {computed}): the log was reordered or its records edited"
            ),
        }
    }
}

/// Result of a verification walk.
#[derive(Debug, Default)]
pub struct Report {
    pub checked: usize,
    pub bytes: u64,
    /// The first [`Walker::MAX_PROBLEMS`] bad segments, in log order; the
    /// first one is where trust ends.
    pub problems: Vec<(String, Problem)>,
    /// How many bad segments there are in all.
    pub problems_total: u64,
    /// Chain value after the last segment.
    pub head: Option<String>,
}

/// Walks sealed segments in log order, one at a time (a year of records is
/// never held at once), checking contents and chain.
pub struct Walker {
    prev: [u8; 32],
    report: Report,
}

impl Walker {
    /// Problems kept in the report; [`Report::problems_total`] counts all.
    pub const MAX_PROBLEMS: usize = 1_000;

    /// A walk from the chain's start ([`GENESIS`]), or from the chain value
    /// at a pruning boundary (the value after the last removed segment).
    pub fn new(start: [u8; 32]) -> Self {
        Self {
            prev: start,
            report: Report::default(),
        }
    }

    fn problem(&mut self, name: &str, p: Problem) {
        self.report.problems_total += 1;
        if self.report.problems.len() < Self::MAX_PROBLEMS {
            self.report.problems.push((name.to_string(), p));
        }
    }

    /// The next segment.
    pub fn step(&mut self, s: &Stored) {
        if !s.pruned {
            self.report.checked += 1;
            self.report.bytes = self.report.bytes.saturating_add(s.size);
        }
        match &s.actual_sha256 {
            _ if s.pruned => {}
            Err(why) => self.problem(&s.name, Problem::Missing(why.clone())),
            Ok(actual) if actual != &s.recorded_sha256 => self.problem(
                &s.name,
                Problem::Altered {
                    recorded: s.recorded_sha256.clone(),
                    actual: actual.clone(),
                },
            ),
            Ok(_) => {}
        }
        // The chain is recomputed from the recorded digests, so it checks
        // the catalog's order and records; the file check above covers the
        // bytes.
        let digest = from_hex(&s.recorded_sha256).unwrap_or([0xff; 32]);
        let computed = link(&self.prev, &digest, &s.name, s.size);
        self.report.head = Some(hex::encode(computed));
        if let Some(recorded) = &s.recorded_chain {
            if recorded != &hex::encode(computed) {
                self.problem(
                    &s.name,
                    Problem::ChainBroken {
                        recorded: recorded.clone(),
                        computed: hex::encode(computed),
                    },
                );
                // Continue from the recorded value so one break is reported once.
                self.prev = from_hex(recorded).unwrap_or(computed);
                self.report.head = Some(hex::encode(self.prev));
                return;
            }
        }
        self.prev = computed;
    }

    pub fn finish(self) -> Report {
        self.report
    }
}

/// Walks `segments` (sealed, in log order) from the chain's start.
pub fn verify(segments: &[Stored]) -> Report {
    let mut w = Walker::new(GENESIS);
    for s in segments {
        w.step(s);
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    fn log(files: &[(&str, &[u8])]) -> Vec<Stored> {
        let mut prev = GENESIS;
        files
            .iter()
            .map(|(name, bytes)| {
                let d = digest(bytes);
                prev = link(&prev, &from_hex(&d).unwrap(), name, bytes.len() as u64);
                Stored {
                    name: name.to_string(),
                    size: bytes.len() as u64,
                    recorded_sha256: d.clone(),
                    recorded_chain: Some(hex::encode(prev)),
                    actual_sha256: Ok(d),
                    pruned: false,
                }
            })
            .collect()
    }

    #[test]
    fn an_intact_log_verifies() {
        let r = verify(&log(&[("a", b"one"), ("b", b"two"), ("c", b"three")]));
        assert_eq!((r.checked, r.bytes, r.problems.len()), (3, 11, 0));
    }

    /// Spool retention removed the first two files at the primary: their
    /// records still carry the chain, and the third still verifies.
    #[test]
    fn the_chain_is_walked_across_pruned_segments() {
        let mut l = log(&[("a", b"one"), ("b", b"two"), ("c", b"three")]);
        for s in &mut l[..2] {
            s.pruned = true;
            s.actual_sha256 = Err("pruned".into());
        }
        let r = verify(&l);
        assert_eq!((r.checked, r.bytes, r.problems.len()), (1, 5, 0));
        // An edited record before the boundary is still found.
        l[0].recorded_sha256 = digest(b"0ne");
        assert_eq!(verify(&l).problems[0].0, "a");
    }

    /// Retention at the DR site removed the first two records: the walk
    /// starts from the chain value after them, and still finds an edit.
    #[test]
    fn a_walk_from_a_pruning_boundary() {
        let l = log(&[
            ("a", b"one"),
            ("b", b"two"),
            ("c", b"three"),
            ("d", b"four"),
        ]);
        let boundary = from_hex(l[1].recorded_chain.as_ref().unwrap()).unwrap();
        let mut w = Walker::new(boundary);
        for s in &l[2..] {
            w.step(s);
        }
        let r = w.finish();
        assert_eq!((r.checked, r.bytes, r.problems.len()), (2, 9, 0));
        assert_eq!(r.head, l[3].recorded_chain);
        // From the wrong boundary value (a record before it was edited, or
        // the boundary itself), the first kept segment breaks the chain.
        let mut w = Walker::new(GENESIS);
        for s in &l[2..] {
            w.step(s);
        }
        let r = w.finish();
        assert!(matches!(r.problems[0], (ref n, Problem::ChainBroken { .. }) if n == "c"));
        assert_eq!(r.problems_total, 1);
    }

    #[test]
    fn altered_missing_and_swapped_segments_are_named() {
        let mut l = log(&[("a", b"one"), ("b", b"two"), ("c", b"three")]);
        l[1].actual_sha256 = Ok(digest(b"tw0"));
        assert_eq!(verify(&l).problems[0].0, "b");

        let mut l = log(&[("a", b"one"), ("b", b"two"), ("c", b"three")]);
        l[2].actual_sha256 = Err("no such file".into());
        assert!(matches!(verify(&l).problems[0], (ref n, Problem::Missing(_)) if n == "c"));

        // Files swapped at rest: the first of the two is named first.
        let mut l = log(&[("a", b"one"), ("b", b"two"), ("c", b"three")]);
        let (x, y) = (l[0].actual_sha256.clone(), l[1].actual_sha256.clone());
        l[0].actual_sha256 = y;
        l[1].actual_sha256 = x;
        let r = verify(&l);
        assert_eq!(r.problems[0].0, "a");
        assert_eq!(r.problems.len(), 2);

        // Records reordered (or a record's digest edited to match a changed
        // file): the chain breaks there.
        let mut l = log(&[("a", b"one"), ("b", b"two"), ("c", b"three")]);
        l.swap(0, 1);
        assert!(matches!(verify(&l).problems[0], (ref n, Problem::ChainBroken { .. }) if n == "b"));
    }
}
