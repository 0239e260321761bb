//! `drctl verify --from URL`: every sealed segment in the bucket re-read,
//! checked intact (the payload's digest, which needs no key), decrypted and
//! re-hashed (with the identity), and walked as a hash chain with its
//! stream positions, so that an object altered, removed or swapped is
//! found and the first bad one is named.

use crate::archive::{segment_key, Archive, ArchiveError, LIST_PAGE};
use crate::crypto::Opener;
use crate::object::{self, Kind, Record};
use drd_core::chain;
use drd_core::pg::lsn::SegSize;

/// One problem, on one object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The object's key, or the key a missing object would have.
    pub key: String,
    pub problem: String,
}

/// What the walk found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub segments: u64,
    pub bytes: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    /// Chain value after the last good segment (hex).
    pub chain_head: Option<String>,
    /// The first segment's chain starts here (hex): zero at the start of
    /// the stream, else the chain of what came before the bucket's copy.
    pub chain_start: Option<String>,
    /// Plaintexts were decrypted and re-hashed (an identity was given, or
    /// the target stores plaintext).
    pub plaintext_checked: bool,
    pub findings: Vec<Finding>,
}

/// Findings kept; past this the walk still counts but stops listing.
pub const MAX_FINDINGS: usize = 100;

/// `name`'s successor when it is a PostgreSQL WAL file name and `len` (a
/// whole segment's size) is a segment size PostgreSQL can have, else None
/// (names of other streams carry no order beyond sorting).
fn pg_next(name: &str, len: u64) -> Option<String> {
    let seg = SegSize::new(len).ok()?;
    let (tli, no) = seg.parse_segment_name(name)?;
    Some(seg.segment_name(tli, no.checked_add(1)?))
}

impl Report {
    fn find(&mut self, key: String, problem: String) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding { key, problem });
        }
    }

    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Walks `seg/` in name order. `progress` is called after each object with
/// the segments and bytes done so far.
pub async fn verify(
    archive: &Archive,
    opener: &Opener,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, ArchiveError> {
    let mut report = Report {
        plaintext_checked: opener.has_identity(),
        ..Default::default()
    };
    let mut prev: Option<Record> = None;
    let mut after: Option<String> = None;
    loop {
        let page = archive
            .bucket
            .list("seg/", after.as_deref(), LIST_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        for listed in &page {
            let key = listed.key.clone();
            let Some(bytes) = archive.bucket.get(&key).await? else {
                report.find(key, "listed, but gone when read".into());
                continue;
            };
            let (rec, payload) = match object::decode(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    report.find(key, format!("damaged: {e}"));
                    prev = None;
                    continue;
                }
            };
            let name = rec.name.clone();
            if rec.kind != Kind::Segment || segment_key(&name) != key {
                report.find(
                    key,
                    format!("the record describes {:?} {name}, not this key", rec.kind),
                );
                continue;
            }
            let plaintext_ok =
                if rec.encryption == object::Encryption::None || opener.has_identity() {
                    match opener.open(&rec, payload) {
                        Ok(plain)
                            if plain.len() as u64 != rec.len
                                || object::sha256_hex(&plain) != rec.sha256 =>
                        {
                            report.find(
                            key.clone(),
                            "the plaintext does not match its record (altered before encryption)"
                                .into(),
                        );
                            false
                        }
                        Ok(_) => true,
                        Err(e) => {
                            report.find(key.clone(), e.to_string());
                            false
                        }
                    }
                } else {
                    true
                };
            // The chain, recomputed from the record's digest.
            let recorded_prev = rec.prev_chain.as_deref().and_then(chain::from_hex);
            let recorded = rec.chain.as_deref().and_then(chain::from_hex);
            let (Some(p), Some(c), Some(d)) =
                (recorded_prev, recorded, chain::from_hex(&rec.sha256))
            else {
                report.find(key, "the record has no hash chain values".into());
                continue;
            };
            let computed = chain::link(&p, &d, &name, rec.len);
            if computed != c {
                report.find(
                    key.clone(),
                    format!(
                        "hash chain broken: the record says {}, its digest gives {}",
                        hex::encode(c),
                        hex::encode(computed)
                    ),
                );
            }
            match &prev {
                None if report.segments == 0 => report.chain_start = Some(hex::encode(p)),
                None => {}
                Some(before) => {
                    let end = before.start.saturating_add(before.len);
                    let missing = pg_next(&before.name, before.len)
                        .filter(|n| *n != name)
                        .map(|n| segment_key(&n))
                        .unwrap_or_else(|| key.clone());
                    if before.chain.as_deref() != rec.prev_chain.as_deref() {
                        report.find(
                            missing,
                            format!(
                                "missing or replaced: the chain after {} does not lead to {name} \
                             (stream bytes {end}..{} are not in the bucket as written)",
                                before.name, rec.start
                            ),
                        );
                    } else if rec.start != end {
                        report.find(
                            key.clone(),
                            format!(
                                "starts at stream position {}, the segment before ends at {end}",
                                rec.start
                            ),
                        );
                    }
                }
            }
            if plaintext_ok {
                report.segments += 1;
                report.bytes += rec.len;
                report.first.get_or_insert_with(|| name.clone());
                report.last = Some(name.clone());
                report.chain_head = rec.chain.clone();
            }
            prev = Some(rec);
            progress(report.segments, report.bytes);
        }
        if page.len() < LIST_PAGE {
            break;
        }
    }
    Ok(report)
}
