//! Comparing two nodes' logs at one point, without listing either: equal
//! hash chain values after the same segment mean the two logs agree on
//! every sealed segment up to there (names, sizes, digests; see
//! [`crate::chain`]). Switchover compares at this node's last sealed
//! segment, rejoin at the segment before the fork. Also the checked view of
//! a peer's `LogInfo` answer.

use crate::storage::catalog::SegmentRecord;
use drd_proto::{pb, ProtocolError, SegmentName};

/// `LogInfoResponse.summary_version` of this build: the bounded summary.
pub const LOG_INFO_SUMMARY: u32 = 2;

/// One segment record as a node holds it (ours from the catalog, a peer's
/// from its `LogInfo`, checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub name: SegmentName,
    pub start: u64,
    pub size: u64,
    pub sealed: bool,
    /// SHA-256 (hex) of the segment (or, for a partial tail asked with
    /// `hash_tail`, of its durable prefix); "" if unknown.
    pub sha256: String,
    /// Hash chain value after the segment (hex); None for records from
    /// before chains existed, and while partial.
    pub chain: Option<String>,
}

impl Rec {
    /// The position after the segment's last byte (checked on receipt).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    pub fn from_record(r: &SegmentRecord) -> Result<Self, ProtocolError> {
        Self::try_from(&segment_info(r))
    }
}

/// A catalog record as `LogInfo` sends it.
pub fn segment_info(rec: &SegmentRecord) -> pb::SegmentInfo {
    pb::SegmentInfo {
        name: rec.name.clone(),
        start: rec.start,
        size: rec.size,
        sealed: rec.sealed,
        sha256: rec.sha256.clone().unwrap_or_default(),
        epoch: rec.epoch,
        fork: rec.fork,
        chain: rec.chain.clone().unwrap_or_default(),
    }
}

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl TryFrom<&pb::SegmentInfo> for Rec {
    type Error = ProtocolError;

    fn try_from(s: &pb::SegmentInfo) -> Result<Self, ProtocolError> {
        let name = SegmentName::new(s.name.clone())?;
        let impossible =
            |what: &'static str, value: String, expected: &str| ProtocolError::Impossible {
                what,
                value,
                expected: expected.to_string(),
            };
        if s.start.checked_add(s.size).is_none() {
            return Err(impossible(
                "segment record",
                format!("{name} at start {} with {} bytes", s.start, s.size),
                "a segment that ends before position 2^64",
            ));
        }
        for (what, v) in [("segment sha256", &s.sha256), ("segment chain", &s.chain)] {
            if !v.is_empty() && !is_hex_digest(v) {
                return Err(impossible(
                    what,
                    format!("{v:?} for {name}"),
                    "64 hex digits or nothing",
                ));
            }
        }
        Ok(Rec {
            name,
            start: s.start,
            size: s.size,
            sealed: s.sealed,
            sha256: s.sha256.to_ascii_lowercase(),
            chain: (!s.chain.is_empty()).then(|| s.chain.to_ascii_lowercase()),
        })
    }
}

/// A peer's `LogInfo` answer, checked. Answers from daemons before the
/// bounded summary (`summary_version` 0) listed the whole log in
/// `segments`; the same facts are taken from that list.
#[derive(Debug, Clone, Default)]
pub struct PeerLog {
    pub first: Option<Rec>,
    pub last_sealed: Option<Rec>,
    pub tail: Option<Rec>,
    pub lookup: Option<Rec>,
    pub lookup_previous: Option<Rec>,
}

fn opt(s: &Option<pb::SegmentInfo>) -> Result<Option<Rec>, ProtocolError> {
    s.as_ref().map(Rec::try_from).transpose()
}

impl PeerLog {
    /// `looked_up` is the segment name the request looked up, if any (only
    /// needed for answers from older daemons).
    pub fn from_response(
        r: &pb::LogInfoResponse,
        looked_up: Option<&str>,
    ) -> Result<Self, ProtocolError> {
        if r.summary_version >= LOG_INFO_SUMMARY {
            return Ok(PeerLog {
                first: opt(&r.first)?,
                last_sealed: opt(&r.last_sealed)?,
                tail: opt(&r.tail)?,
                lookup: opt(&r.lookup)?,
                lookup_previous: opt(&r.lookup_previous)?,
            });
        }
        let all = r
            .segments
            .iter()
            .map(Rec::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let at = looked_up.and_then(|n| all.iter().position(|s| s.name.as_str() == n));
        Ok(PeerLog {
            first: all.first().cloned(),
            last_sealed: all.iter().rev().find(|s| s.sealed).cloned(),
            tail: all.last().cloned(),
            lookup: at.map(|i| all[i].clone()),
            lookup_previous: at.and_then(|i| i.checked_sub(1)).map(|i| all[i].clone()),
        })
    }
}

/// How two logs were found to agree at a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agreement {
    /// Both hold the segment with equal start, size and digest; with
    /// `chain`, equal chain values too — so every sealed segment before it
    /// agrees as well.
    Same { segment: SegmentName, chain: bool },
    /// The other side's log begins after this point (it joined later):
    /// there is nothing shared to compare here.
    NotShared { segment: SegmentName },
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Agreement::Same {
                segment,
                chain: true,
            } => write!(f, "hash chain agrees at {segment}"),
            Agreement::Same {
                segment,
                chain: false,
            } => write!(
                f,
                "{segment} agrees by SHA-256 (no hash chain recorded on both sides)"
            ),
            Agreement::NotShared { segment } => {
                write!(
                    f,
                    "the other log begins after {segment}: nothing to compare"
                )
            }
        }
    }
}

/// Compares the record `mine` (held by `me`) with `theirs`, the record of
/// the same segment held by `them` (None if they have none), whose log
/// begins with `their_first`. A segment they lack is fine only when their
/// log begins after it (they joined later); otherwise it is a gap. The
/// error names the segment.
pub fn compare_at(
    mine: &Rec,
    theirs: Option<&Rec>,
    their_first: Option<&Rec>,
    me: &str,
    them: &str,
) -> Result<Agreement, String> {
    let name = &mine.name;
    let Some(t) = theirs else {
        return match their_first {
            Some(f) if f.start >= mine.end() => Ok(Agreement::NotShared {
                segment: name.clone(),
            }),
            Some(f) => Err(format!(
                "segment {name} (positions {}..{}): {me} holds it, {them} does not, though \
                 {them}'s log begins earlier (at {} with {}): the logs disagree",
                mine.start,
                mine.end(),
                f.start,
                f.name
            )),
            None => Err(format!(
                "segment {name} (positions {}..{}): {me} holds it, {them} holds no segment at all",
                mine.start,
                mine.end()
            )),
        };
    };
    if t.name != *name {
        return Err(format!(
            "segment {name}: {them} answered with segment {} instead",
            t.name
        ));
    }
    if (t.start, t.size, &t.sha256) != (mine.start, mine.size, &mine.sha256) {
        return Err(format!(
            "segment {name}: start {} with {} bytes and sha256 {} {me}, start {} with {} bytes \
             and sha256 {} {them}",
            mine.start, mine.size, mine.sha256, t.start, t.size, t.sha256
        ));
    }
    match (&mine.chain, &t.chain) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "segment {name}: hash chain {a} {me}, {b} {them}: the logs disagree on a sealed \
             segment at or before {name}"
        )),
        (Some(_), Some(_)) => Ok(Agreement::Same {
            segment: name.clone(),
            chain: true,
        }),
        _ => Ok(Agreement::Same {
            segment: name.clone(),
            chain: false,
        }),
    }
}

/// Switchover, step 4: this node's last sealed segment against the
/// replica's record of it.
pub fn check_last_sealed(
    ours: Option<&Rec>,
    replica: &PeerLog,
) -> Result<Option<Agreement>, String> {
    let Some(mine) = ours else {
        // Nothing sealed here yet: only the active segment is compared.
        return Ok(None);
    };
    compare_at(
        mine,
        replica.lookup.as_ref(),
        replica.first.as_ref(),
        "here",
        "at the replica",
    )
    .map(Some)
}

/// Rejoin: the segment before the fork, as the new primary holds it
/// (`primary.lookup_previous`, the fork segment being its `lookup`),
/// against this node's record of the same segment (`ours`; None if this
/// node has none), this node's log beginning with `our_first`.
pub fn check_before_fork(
    primary: &PeerLog,
    ours: Option<&Rec>,
    our_first: Option<&Rec>,
) -> Result<Option<Agreement>, String> {
    let Some(theirs) = primary.lookup_previous.as_ref() else {
        // The new primary holds nothing before its fork segment (it
        // joined later): only the fork segment's prefix is compared.
        return Ok(None);
    };
    compare_at(
        theirs,
        ours,
        our_first,
        "at the new primary",
        "on this node",
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain;

    /// A log of `n` sealed segments of `size` bytes with correct chains.
    fn log(n: usize, size: u64, first: usize) -> Vec<Rec> {
        let mut prev = chain::GENESIS;
        (first..first + n)
            .map(|i| {
                let sha = hex::encode(sha2::Sha256::digest(format!("seg {i}").as_bytes()));
                let name = format!("{:024X}", i);
                prev = chain::link(&prev, &chain::from_hex(&sha).unwrap(), &name, size);
                Rec {
                    name: SegmentName::new(name).unwrap(),
                    start: i as u64 * size,
                    size,
                    sealed: true,
                    sha256: sha,
                    chain: Some(hex::encode(prev)),
                }
            })
            .collect()
    }
    use sha2::Digest;

    fn peer(l: &[Rec], lookup: Option<usize>) -> PeerLog {
        PeerLog {
            first: l.first().cloned(),
            last_sealed: l.last().cloned(),
            tail: l.last().cloned(),
            lookup: lookup.map(|i| l[i].clone()),
            lookup_previous: lookup.and_then(|i| i.checked_sub(1)).map(|i| l[i].clone()),
        }
    }

    #[test]
    fn equal_chains_at_the_last_sealed_segment_agree() {
        let a = log(10, 100, 0);
        let r = check_last_sealed(a.last(), &peer(&a, Some(9))).unwrap();
        assert_eq!(
            r,
            Some(Agreement::Same {
                segment: a[9].name.clone(),
                chain: true
            })
        );
        assert_eq!(check_last_sealed(None, &peer(&a, None)).unwrap(), None);
    }

    #[test]
    fn a_chain_mismatch_is_refused_naming_the_segment() {
        let a = log(10, 100, 0);
        let mut b = a.clone();
        // An older segment differs at the replica: its chain (and every
        // later one) differs, though the last segment's own bytes agree.
        b[9].chain = Some(hex::encode([7u8; 32]));
        let e = check_last_sealed(a.last(), &peer(&b, Some(9))).unwrap_err();
        assert!(
            e.contains(a[9].name.as_str()) && e.contains("hash chain"),
            "{e}"
        );
        // A different digest or size of the segment itself.
        let mut b = a.clone();
        b[9].sha256 = hex::encode([1u8; 32]);
        let e = check_last_sealed(a.last(), &peer(&b, Some(9))).unwrap_err();
        assert!(
            e.contains(a[9].name.as_str()) && e.contains("sha256"),
            "{e}"
        );
        let mut b = a.clone();
        b[9].size = 99;
        assert!(check_last_sealed(a.last(), &peer(&b, Some(9))).is_err());
        // The replica answered with another record.
        let e = check_last_sealed(a.last(), &peer(&a, Some(8))).unwrap_err();
        assert!(
            e.contains(a[8].name.as_str()) && e.contains("instead"),
            "{e}"
        );
    }

    #[test]
    fn a_replica_that_joined_later_is_not_a_mismatch_but_a_gap_is() {
        let a = log(10, 100, 0);
        // The replica's log begins after our last sealed segment.
        let later = log(1, 100, 10);
        let r = check_last_sealed(a.last(), &peer(&later, None)).unwrap();
        assert!(matches!(r, Some(Agreement::NotShared { .. })), "{r:?}");
        // It lacks our last sealed segment though its log begins earlier.
        let gap = log(12, 100, 3);
        let e = check_last_sealed(a.last(), &peer(&gap, None)).unwrap_err();
        assert!(
            e.contains(a[9].name.as_str()) && e.contains("does not"),
            "{e}"
        );
        // It holds nothing at all.
        let e = check_last_sealed(a.last(), &PeerLog::default()).unwrap_err();
        assert!(e.contains(a[9].name.as_str()), "{e}");
    }

    #[test]
    fn rejoin_checks_the_chain_before_the_fork() {
        let a = log(10, 100, 0);
        // The new primary's fork segment is a[6]: before it, a[5].
        let primary = peer(&a, Some(6));
        let r = check_before_fork(&primary, Some(&a[5]), a.first()).unwrap();
        assert!(matches!(r, Some(Agreement::Same { chain: true, .. })));
        let mut ours = a[5].clone();
        ours.chain = Some(hex::encode([9u8; 32]));
        let e = check_before_fork(&primary, Some(&ours), a.first()).unwrap_err();
        assert!(
            e.contains(a[5].name.as_str()) && e.contains("hash chain"),
            "{e}"
        );
        // This node lacks the segment though its log covers it.
        let e = check_before_fork(&primary, None, a.first()).unwrap_err();
        assert!(e.contains(a[5].name.as_str()), "{e}");
        // This node joined after it; or the new primary holds nothing
        // before its fork segment: as before, only the fork prefix counts.
        let r = check_before_fork(&primary, None, Some(&a[7])).unwrap();
        assert!(matches!(r, Some(Agreement::NotShared { .. })));
        assert_eq!(
            check_before_fork(&peer(&a, Some(0)), None, a.first()).unwrap(),
            None
        );
        // Records from before chains existed: compared by digest.
        let mut old = a[5].clone();
        old.chain = None;
        let r = check_before_fork(&primary, Some(&old), a.first()).unwrap();
        assert!(matches!(r, Some(Agreement::Same { chain: false, .. })));
    }

    #[test]
    fn hostile_records_from_a_peer_are_refused() {
        let ok = pb::SegmentInfo {
            name: "000000010000000000000001".into(),
            start: 10,
            size: 5,
            sha256: "ab".repeat(32),
            chain: "CD".repeat(32),
            ..Default::default()
        };
        let r = Rec::try_from(&ok).unwrap();
        assert_eq!(r.chain.as_deref(), Some("cd".repeat(32).as_str()));
        for bad in [
            pb::SegmentInfo {
                name: "../etc".into(),
                ..ok.clone()
            },
            pb::SegmentInfo {
                start: u64::MAX,
                ..ok.clone()
            },
            pb::SegmentInfo {
                sha256: "zz".repeat(32),
                ..ok.clone()
            },
            pb::SegmentInfo {
                chain: "ab".into(),
                ..ok.clone()
            },
        ] {
            assert!(Rec::try_from(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_from_older_daemons_are_read_from_their_listing() {
        let a = log(4, 100, 0);
        let info = |r: &Rec| pb::SegmentInfo {
            name: r.name.to_string(),
            start: r.start,
            size: r.size,
            sealed: r.sealed,
            sha256: r.sha256.clone(),
            chain: r.chain.clone().unwrap_or_default(),
            ..Default::default()
        };
        let resp = pb::LogInfoResponse {
            segments: a.iter().map(info).collect(),
            ..Default::default()
        };
        let p = PeerLog::from_response(&resp, Some(a[2].name.as_str())).unwrap();
        assert_eq!(p.lookup.as_ref(), Some(&a[2]));
        assert_eq!(p.lookup_previous.as_ref(), Some(&a[1]));
        assert_eq!(p.first.as_ref(), Some(&a[0]));
        assert_eq!(p.last_sealed.as_ref(), Some(&a[3]));
    }
}
