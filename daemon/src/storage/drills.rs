//! The drill history (issue 21): one entry per drill, per stream,
//! append-only and hash-chained, so an auditor can tell that no drill was
//! removed or rewritten afterwards (`drctl drill history` checks the chain).
//!
//! Keys: `drill/{stream}/{seq:020}` (see [`super::catalog`]). An entry is
//! small and a stream has one a week: the whole chain is walked on a check.

use super::catalog::{Catalog, CatalogError};
use drd_proto::StreamName;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of a stream's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One drill as the history keeps it: the figures an auditor looks for and
/// the hashes of the files that hold the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillEntry {
    /// 1, 2, … per stream.
    pub seq: u64,
    pub id: String,
    pub stream: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub passed: bool,
    pub rto_seconds: Option<f64>,
    pub rpo_bytes: u64,
    pub rpo_seconds: f64,
    pub user: String,
    pub reason: String,
    /// The first reason it failed; empty when it passed.
    pub why: String,
    /// SHA-256 (hex) of report.json and of report.sig as stored.
    pub report_sha256: String,
    pub seal_sha256: String,
    /// The directory that holds the report's files.
    pub stored_in: String,
    /// The previous entry's `entry_hash` ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and every other field ([`entry_hash`]).
    pub entry_hash: String,
}

fn prefix(stream: &StreamName) -> String {
    format!("drill/{stream}/")
}

fn key(stream: &StreamName, seq: u64) -> String {
    format!("drill/{stream}/{seq:020}")
}

/// The hash an entry must carry: over its JSON with `entry_hash` empty
/// (serde writes the fields in declaration order, so this is stable).
pub fn entry_hash(e: &DrillEntry) -> String {
    let mut bare = e.clone();
    bare.entry_hash.clear();
    let json = serde_json::to_vec(&bare).unwrap_or_default();
    hex::encode(Sha256::digest(json))
}

/// Appends `entry` as `stream`'s next drill, chained to the last one.
/// Synced: once a drill's report was handed out, its entry must survive a
/// crash (a history that forgets failed drills would mislead an auditor).
pub fn append(
    catalog: &Catalog,
    stream: &StreamName,
    mut entry: DrillEntry,
) -> Result<DrillEntry, CatalogError> {
    let last: Option<DrillEntry> = catalog
        .records(&prefix(stream), None, true, 1)?
        .into_iter()
        .next()
        .map(|(_, e)| e);
    entry.seq = last.as_ref().map_or(1, |l| l.seq.saturating_add(1));
    entry.prev_hash = last.map_or_else(|| GENESIS.to_string(), |l| l.entry_hash);
    entry.stream = stream.to_string();
    entry.entry_hash = entry_hash(&entry);
    catalog.put_record(&key(stream, entry.seq), &entry, true)?;
    Ok(entry)
}

/// `stream`'s newest `limit` entries, newest first.
pub fn newest(
    catalog: &Catalog,
    stream: &StreamName,
    limit: usize,
) -> Result<Vec<DrillEntry>, CatalogError> {
    Ok(catalog
        .records(&prefix(stream), None, true, limit)?
        .into_iter()
        .map(|(_, e)| e)
        .collect())
}

/// What a walk of a stream's whole history found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChainCheck {
    pub entries: u64,
    /// The first break, e.g. "entry 3: its hash does not match its fields".
    pub problem: Option<String>,
}

/// Calls `f` with each of `stream`'s entries, oldest first, a page at a
/// time, until it returns false.
fn for_each(
    catalog: &Catalog,
    stream: &StreamName,
    mut f: impl FnMut(DrillEntry) -> bool,
) -> Result<(), CatalogError> {
    const PAGE: usize = 256;
    let mut from: Option<String> = None;
    loop {
        let page: Vec<(String, DrillEntry)> =
            catalog.records(&prefix(stream), from.as_deref(), false, PAGE)?;
        let n = page.len();
        // A page starts at the last key of the one before (inclusive).
        for (k, e) in page.into_iter().skip(usize::from(from.is_some())) {
            if !f(e) {
                return Ok(());
            }
            from = Some(k);
        }
        if n < PAGE {
            return Ok(());
        }
    }
}

/// Walks `stream`'s history from its first entry, checking every entry's
/// hash, its link to the one before and that the numbering has no gap.
pub fn check_chain(catalog: &Catalog, stream: &StreamName) -> Result<ChainCheck, CatalogError> {
    let mut check = ChainCheck::default();
    let mut prev = GENESIS.to_string();
    for_each(catalog, stream, |e| {
        check.entries += 1;
        check.problem = if e.seq != check.entries {
            Some(format!(
                "entry {} is numbered {}: an entry is missing before it",
                check.entries, e.seq
            ))
        } else if e.prev_hash != prev {
            Some(format!(
                "entry {} does not link to the entry before it",
                e.seq
            ))
        } else if entry_hash(&e) != e.entry_hash {
            Some(format!(
                "entry {}: its hash does not match its fields (changed after it was written)",
                e.seq
            ))
        } else {
            None
        };
        prev = e.entry_hash;
        check.problem.is_none()
    })?;
    Ok(check)
}

/// The entry whose report.json has SHA-256 `report_sha256`, if any.
pub fn find_report(
    catalog: &Catalog,
    stream: &StreamName,
    report_sha256: &str,
) -> Result<Option<DrillEntry>, CatalogError> {
    let mut found = None;
    for_each(catalog, stream, |e| {
        if e.report_sha256 == report_sha256 {
            found = Some(e);
        }
        found.is_none()
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, passed: bool) -> DrillEntry {
        DrillEntry {
            id: id.into(),
            passed,
            report_sha256: format!("sha-{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn entries_chain_and_a_changed_or_removed_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let s = StreamName::new("ehr").unwrap();
        let other = StreamName::new("lab").unwrap();
        for i in 1..=3 {
            let e = append(&cat, &s, entry(&format!("d{i}"), i != 2)).unwrap();
            assert_eq!(e.seq, i);
        }
        append(&cat, &other, entry("x", true)).unwrap();
        let newest3 = newest(&cat, &s, 10).unwrap();
        assert_eq!(
            newest3.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["d3", "d2", "d1"]
        );
        assert_eq!(newest3[1].prev_hash, newest3[2].entry_hash);
        assert_eq!(newest3[2].prev_hash, GENESIS);
        assert_eq!(
            check_chain(&cat, &s).unwrap(),
            ChainCheck {
                entries: 3,
                problem: None
            }
        );
        assert_eq!(find_report(&cat, &s, "sha-d2").unwrap().unwrap().id, "d2");
        assert!(find_report(&cat, &s, "sha-x").unwrap().is_none());

        // A failed drill rewritten as passed, outside drd.
        let mut forged = newest3[1].clone();
        forged.passed = true;
        cat.put_record(&key(&s, 2), &forged, false).unwrap();
        let c = check_chain(&cat, &s).unwrap();
        assert!(c.problem.unwrap().contains("entry 2: its hash"));

        // The failed drill removed instead.
        cat.delete_records(&key(&s, 2), &key(&s, 3)).unwrap();
        let c = check_chain(&cat, &s).unwrap();
        assert!(
            c.problem.as_deref().unwrap_or("").contains("numbered 3"),
            "{c:?}"
        );
        assert_eq!(check_chain(&cat, &other).unwrap().problem, None);
    }
}
