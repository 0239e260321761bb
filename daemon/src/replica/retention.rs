//! The DR site's retention policy: how long this node keeps the segments it
//! received, configured here and only here (`[replica.retention]`). No
//! message from a primary can shorten it: the replication protocol has no
//! message that deletes, truncates or overwrites a stored segment, and the
//! policy is read from this node's own config file.
//!
//! ```toml
//! [replica.retention]            # every stream this node receives
//! min_retention = "7d"           # never remove anything younger (required)
//! max_retention = "35d"          # remove what is older (default: min_retention)
//! max_bytes     = "2TiB"         # also remove the oldest while the stream holds more
//! # prune_unfetched = false      # true: do not wait for the DR database's wal-fetch
//!
//! [replica.retention.stream.ehr-prod]   # one stream's own policy (unset keys inherit)
//! min_retention = "30d"
//! ```
//!
//! A segment goes only when every rule below allows it, oldest first, and
//! pruning stops at the first segment that must stay (so the log here is
//! always one contiguous piece, and its start is one boundary):
//!
//! - sealed (complete and verified against the primary's checksum);
//! - older than the newest sealed segment: the positions, the next seal
//!   and a switchover continue from it (a rejoin compares logs at the fork
//!   of the *primary's* epoch, its newest segment when it was promoted, so
//!   a replica's own older fork segment is not needed again);
//! - a landing copy (a file this node received), not a file of this node's
//!   own source (a database's `pg_wal` is never touched);
//! - already fetched by the DR database: older than the newest segment
//!   `drctl wal-fetch` served (PostgreSQL fetches segment N+1 once it has
//!   replayed N), unless `prune_unfetched = true` (a DR site with no standby
//!   database, restored from base backups instead);
//! - sealed here at least `min_retention` ago (this node's clock);
//! - and then either sealed more than `max_retention` ago, or the stream
//!   holds more than `max_bytes`.
//!
//! [`plan`] decides, without files or clocks; `replica::prune` carries it out.

use crate::storage::catalog::SegmentRecord;
use anyhow::{bail, Context};
use drd_proto::StreamName;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[replica.retention]` (and each `[replica.retention.stream.NAME]`) as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    min_retention: Option<String>,
    max_retention: Option<String>,
    max_bytes: Option<String>,
    prune_unfetched: Option<bool>,
}

/// `[replica.retention]` as written: defaults for every stream, and
/// per-stream tables.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    min_retention: Option<String>,
    max_retention: Option<String>,
    max_bytes: Option<String>,
    prune_unfetched: Option<bool>,
    #[serde(default)]
    stream: BTreeMap<String, RawPolicy>,
}

/// One stream's validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Nothing sealed here more recently than this is ever removed.
    pub min_retention: Duration,
    /// What was sealed longer ago than this goes (≥ `min_retention`).
    pub max_retention: Duration,
    /// While the stream holds more bytes than this, its oldest segments
    /// older than `min_retention` go too.
    pub max_bytes: Option<u64>,
    /// Remove segments the DR database has not fetched yet.
    pub prune_unfetched: bool,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        write!(
            f,
            "min_retention {}, max_retention {}",
            d(self.min_retention),
            d(self.max_retention)
        )?;
        if let Some(b) = self.max_bytes {
            write!(f, ", max_bytes {}", crate::display::bytes(b))?;
        }
        if self.prune_unfetched {
            write!(f, ", prune_unfetched")?;
        }
        Ok(())
    }
}

/// The node's retention configuration: a default policy and per-stream ones.
/// A stream with neither keeps everything (as drd did before retention).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub default: Option<Policy>,
    pub streams: BTreeMap<StreamName, Policy>,
}

impl Retention {
    /// The policy for `stream`, if it has one.
    pub fn for_stream(&self, stream: &StreamName) -> Option<&Policy> {
        self.streams.get(stream).or(self.default.as_ref())
    }

    /// Validates the raw table; errors name the key.
    pub fn from_raw(raw: RawRetention) -> anyhow::Result<Self> {
        let base = RawPolicy {
            min_retention: raw.min_retention,
            max_retention: raw.max_retention,
            max_bytes: raw.max_bytes,
            prune_unfetched: raw.prune_unfetched,
        };
        let any_default = base.min_retention.is_some()
            || base.max_retention.is_some()
            || base.max_bytes.is_some()
            || base.prune_unfetched.is_some();
        let default = any_default
            .then(|| policy(&base, "replica.retention"))
            .transpose()?;
        let mut streams = BTreeMap::new();
        for (name, s) in raw.stream {
            let key = format!("replica.retention.stream.{name}");
            let stream = StreamName::new(name.as_str()).with_context(|| format!("key `{key}`"))?;
            let merged = RawPolicy {
                min_retention: s.min_retention.or_else(|| base.min_retention.clone()),
                max_retention: s.max_retention.or_else(|| base.max_retention.clone()),
                max_bytes: s.max_bytes.or_else(|| base.max_bytes.clone()),
                prune_unfetched: s.prune_unfetched.or(base.prune_unfetched),
            };
            streams.insert(stream, policy(&merged, &key)?);
        }
        Ok(Self { default, streams })
    }
}

fn policy(raw: &RawPolicy, key: &str) -> anyhow::Result<Policy> {
    let Some(min) = raw.min_retention.as_deref() else {
        bail!(
            "key `{key}.min_retention` is missing: retention needs a floor, the shortest time \
             this DR site keeps every segment it received (e.g. \"7d\"); nothing younger is \
             ever removed"
        );
    };
    let min_retention = crate::units::parse_duration(min)
        .map_err(|e| anyhow::anyhow!("key `{key}.min_retention`: {e}"))?;
    if min_retention.is_zero() {
        bail!(
            "key `{key}.min_retention`: must be longer than 0 (it is what protects the DR copy \
             from being emptied; e.g. \"7d\")"
        );
    }
    let max_retention = match raw.max_retention.as_deref() {
        None => min_retention,
        Some(t) => crate::units::parse_duration(t)
            .map_err(|e| anyhow::anyhow!("key `{key}.max_retention`: {e}"))?,
    };
    if max_retention < min_retention {
        bail!(
            "key `{key}.max_retention`: {} is shorter than min_retention ({}); make it at least \
             as long, or leave it out to prune at min_retention",
            humantime::format_duration(max_retention),
            humantime::format_duration(min_retention)
        );
    }
    let max_bytes = match raw.max_bytes.as_deref() {
        None => None,
        Some(t) => {
            let b = crate::units::parse_size(t)
                .map_err(|e| anyhow::anyhow!("key `{key}.max_bytes`: {e}"))?;
            if b == 0 {
                bail!("key `{key}.max_bytes`: must be greater than 0 (a size like \"2TiB\")");
            }
            Some(b)
        }
    };
    Ok(Policy {
        min_retention,
        max_retention,
        max_bytes,
        prune_unfetched: raw.prune_unfetched.unwrap_or(false),
    })
}

/// The facts a decision depends on besides the records and the policy.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub now_ms: u64,
    /// The newest segment `drctl wal-fetch` served here, if any.
    pub fetched: Option<&'a str>,
    /// The stream's newest sealed segment (`Catalog::last_sealed`).
    pub last_sealed: Option<&'a str>,
    /// Bytes the stream holds here before this plan (needed with `max_bytes`).
    pub stored_bytes: u64,
    /// The stream's object-store targets at this node: None without any,
    /// else the newest sealed segment every one of them holds (None
    /// inside: not the first yet). What a target lacks stays.
    pub targets_hold: Option<Option<&'a str>>,
}

/// Why a segment stays (and, pruning being in log order, every later one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Not sealed yet: not complete, or not verified.
    Unsealed,
    /// The newest sealed segment, or after it.
    Newest,
    /// A file of this node's own source (its database's WAL directory).
    InSource,
    /// The DR database has not fetched it (and may still need it).
    NotFetched,
    /// An object-store target of this node does not hold it yet.
    NotInTarget,
    /// Sealed here less than `min_retention` ago: this long to go (ms).
    MinRetention { left_ms: u64 },
    /// Old enough to go, but within `max_retention` and `max_bytes`: it
    /// reaches `max_retention` in this long (ms).
    WithinPolicy { left_ms: u64 },
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |ms: u64| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string();
        match self {
            Keep::Unsealed => write!(f, "not sealed and verified yet"),
            Keep::Newest => write!(f, "the newest sealed segment (the log continues from it)"),
            Keep::InSource => write!(f, "a file of this node's own WAL directory, never removed"),
            Keep::NotFetched => write!(
                f,
                "the DR database has not fetched it yet (drctl wal-fetch); set \
                 prune_unfetched = true if this site has no standby database"
            ),
            Keep::NotInTarget => write!(
                f,
                "an object-store target does not hold it yet (drctl status shows the targets)"
            ),
            Keep::MinRetention { left_ms } => {
                write!(f, "younger than min_retention ({} to go)", d(*left_ms))
            }
            Keep::WithinPolicy { left_ms } => write!(
                f,
                "within max_retention ({} to go) and max_bytes",
                d(*left_ms)
            ),
        }
    }
}

/// Why a segment goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remove {
    /// Sealed here longer ago than `max_retention`.
    MaxRetention { age_ms: u64 },
    /// Older than `min_retention`, and the stream held this many bytes,
    /// more than `max_bytes`.
    MaxBytes { stored_bytes: u64 },
}

impl std::fmt::Display for Remove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remove::MaxRetention { age_ms } => write!(
                f,
                "older than max_retention (sealed {} ago)",
                humantime::format_duration(Duration::from_secs(age_ms / 1000))
            ),
            Remove::MaxBytes { stored_bytes } => write!(
                f,
                "the stream holds {}, more than max_bytes",
                crate::display::bytes(*stored_bytes)
            ),
        }
    }
}

/// The age of a record at `now_ms`: since it was sealed here.
pub fn age_ms(rec: &SegmentRecord, now_ms: u64) -> u64 {
    now_ms.saturating_sub(rec.sealed_at_ms.unwrap_or(rec.received_at_ms))
}

/// Bytes a record's file takes here (0 when the file already left, as a
/// spooled segment pruned at the primary).
pub fn stored_size(rec: &SegmentRecord) -> u64 {
    if rec.pruned_at_ms.is_some() {
        0
    } else {
        rec.size
    }
}

/// Decides for one record, given the bytes the stream holds before it goes.
pub fn decide(
    rec: &SegmentRecord,
    policy: &Policy,
    f: &Facts,
    stored_bytes: u64,
) -> Result<Remove, Keep> {
    let name = rec.name.as_str();
    if !rec.sealed {
        return Err(Keep::Unsealed);
    }
    if f.last_sealed.is_none_or(|l| name >= l) {
        return Err(Keep::Newest);
    }
    if rec.in_source && rec.pruned_at_ms.is_none() {
        return Err(Keep::InSource);
    }
    if !policy.prune_unfetched && f.fetched.is_none_or(|fetched| name >= fetched) {
        return Err(Keep::NotFetched);
    }
    if f.targets_hold.is_some_and(|h| h.is_none_or(|h| name > h)) {
        return Err(Keep::NotInTarget);
    }
    let age = age_ms(rec, f.now_ms);
    let min = policy.min_retention.as_millis() as u64;
    if age < min {
        return Err(Keep::MinRetention { left_ms: min - age });
    }
    let max = policy.max_retention.as_millis() as u64;
    if age >= max {
        return Ok(Remove::MaxRetention { age_ms: age });
    }
    if policy.max_bytes.is_some_and(|m| stored_bytes > m) {
        return Ok(Remove::MaxBytes { stored_bytes });
    }
    Err(Keep::WithinPolicy { left_ms: max - age })
}

/// Plans over records in log order (oldest first), calling `on_remove` for
/// each that goes, and stops at the first that stays, returning it with
/// why. Pure: no files, no clock.
pub struct Planner<'a> {
    pub policy: &'a Policy,
    pub facts: Facts<'a>,
    stored: u64,
}

impl<'a> Planner<'a> {
    pub fn new(policy: &'a Policy, facts: Facts<'a>) -> Self {
        Self {
            policy,
            stored: facts.stored_bytes,
            facts,
        }
    }

    /// The next record in log order: Ok if it goes (and the stream's
    /// stored bytes drop by its size), Err with why if it stays.
    pub fn next(&mut self, rec: &SegmentRecord) -> Result<Remove, Keep> {
        let d = decide(rec, self.policy, &self.facts, self.stored)?;
        self.stored = self.stored.saturating_sub(stored_size(rec));
        Ok(d)
    }

    /// Bytes the stream holds once every removal so far is done.
    pub fn stored_after(&self) -> u64 {
        self.stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    fn name(n: u64) -> String {
        format!("00000001{n:016X}")
    }

    fn rec(n: u64, sealed_at_ms: u64) -> SegmentRecord {
        SegmentRecord {
            name: name(n),
            start: (n - 1) * 100,
            size: 100,
            sealed: true,
            sha256: Some("00".repeat(32)),
            epoch: 1,
            received_at_ms: sealed_at_ms,
            sealed_at_ms: Some(sealed_at_ms),
            fork: false,
            in_source: false,
            chain: Some("11".repeat(32)),
            check: None,
            pruned_at_ms: None,
        }
    }

    fn policy(min_h: u64, max_h: u64, max_bytes: Option<u64>) -> Policy {
        Policy {
            min_retention: Duration::from_millis(min_h * H),
            max_retention: Duration::from_millis(max_h * H),
            max_bytes,
            prune_unfetched: false,
        }
    }

    /// Runs a plan over `recs`: the removed numbers, and the first kept.
    fn run(recs: &[SegmentRecord], p: &Policy, f: Facts) -> (Vec<usize>, Option<Keep>) {
        let mut planner = Planner::new(p, f);
        let mut out = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            match planner.next(r) {
                Ok(_) => out.push(i + 1),
                Err(k) => return (out, Some(k)),
            }
        }
        (out, None)
    }

    /// Ten segments, segment n sealed at n hours; now is 20 h.
    fn log() -> Vec<SegmentRecord> {
        (1..=10).map(|n| rec(n, n * H)).collect()
    }

    fn facts<'a>(fetched: Option<&'a str>, last: &'a str) -> Facts<'a> {
        Facts {
            now_ms: 20 * H,
            fetched,
            last_sealed: Some(last),
            stored_bytes: 1000,
            targets_hold: None,
        }
    }

    #[test]
    fn older_than_max_retention_and_fetched_goes_oldest_first() {
        let (f9, l10) = (name(9), name(10));
        // Ages: segment n is 20-n hours old. max 15 h: 1..=5 are that old.
        let (gone, kept) = run(&log(), &policy(10, 15, None), facts(Some(&f9), &l10));
        assert_eq!(gone, [1, 2, 3, 4, 5]);
        assert_eq!(kept, Some(Keep::WithinPolicy { left_ms: H }));
        // min = max = 10 h: 1..=9 are old enough, 9 is the newest fetched
        // (PostgreSQL may still be replaying it).
        let (gone, kept) = run(&log(), &policy(10, 10, None), facts(Some(&f9), &l10));
        assert_eq!(gone, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(kept, Some(Keep::NotFetched));
    }

    #[test]
    fn never_what_the_dr_database_has_not_fetched() {
        let (f3, l10) = (name(3), name(10));
        let (gone, kept) = run(&log(), &policy(1, 1, None), facts(Some(&f3), &l10));
        assert_eq!(gone, [1, 2]);
        assert_eq!(kept, Some(Keep::NotFetched));
        // Nothing fetched at all: nothing goes.
        let (gone, kept) = run(&log(), &policy(1, 1, None), facts(None, &l10));
        assert!(gone.is_empty());
        assert_eq!(kept, Some(Keep::NotFetched));
        // Unless the operator says so; the newest sealed still stays.
        let p = Policy {
            prune_unfetched: true,
            ..policy(1, 1, None)
        };
        let (gone, kept) = run(&log(), &p, facts(None, &l10));
        assert_eq!(gone, (1..=9).collect::<Vec<_>>());
        assert_eq!(kept, Some(Keep::Newest));
    }

    #[test]
    fn never_younger_than_min_retention_even_over_max_bytes() {
        let (f10, l10) = (name(10), name(10));
        // Holds 1000 bytes, max 250: the oldest go while over it, but only
        // those older than min_retention (12 h: 1..=8).
        let p = policy(12, 100, Some(250));
        let (gone, kept) = run(&log(), &p, facts(Some(&f10), &l10));
        assert_eq!(gone, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(kept, Some(Keep::MinRetention { left_ms: H }));
        // Max 700: three go (1000 → 700), then it is within max_bytes.
        let p = policy(1, 100, Some(700));
        let (gone, kept) = run(&log(), &p, facts(Some(&f10), &l10));
        assert_eq!(gone, [1, 2, 3]);
        assert!(matches!(kept, Some(Keep::WithinPolicy { .. })), "{kept:?}");
    }

    #[test]
    fn a_kept_segment_stops_the_plan_sources_and_partials_stay_forks_do_not() {
        let (f10, l10) = (name(10), name(10));
        let p = policy(1, 1, None);
        let mut l = log();
        l[3].in_source = true;
        assert_eq!(
            run(&l, &p, facts(Some(&f10), &l10)),
            (vec![1, 2, 3], Some(Keep::InSource))
        );
        // A source file already pruned at the primary has only its record.
        l[3].pruned_at_ms = Some(1);
        assert_eq!(run(&l, &p, facts(Some(&f10), &l10)).0.len(), 9);
        let mut l = log();
        l[2].sealed = false;
        assert_eq!(
            run(&l, &p, facts(Some(&f10), &l10)),
            (vec![1, 2], Some(Keep::Unsealed))
        );
        // A fork segment (a replica that went through a rejoin or a
        // switchover) is pruned like any other once past the policy:
        // pruning must not stop there for the rest of the node's life.
        let mut l = log();
        l[1].fork = true;
        assert_eq!(run(&l, &p, facts(Some(&f10), &l10)).0.len(), 9);
        // No sealed segment known: nothing goes.
        let f = Facts {
            last_sealed: None,
            ..facts(Some(&f10), &l10)
        };
        assert_eq!(run(&log(), &p, f), (vec![], Some(Keep::Newest)));
        // An object-store target holding up to segment 3: 4 stays.
        let s3 = name(3);
        let f = Facts {
            targets_hold: Some(Some(&s3)),
            ..facts(Some(&f10), &l10)
        };
        assert_eq!(run(&log(), &p, f), (vec![1, 2, 3], Some(Keep::NotInTarget)));
    }

    #[test]
    fn config_defaults_inheritance_and_errors() {
        let parse = |t: &str| -> anyhow::Result<Retention> {
            Retention::from_raw(toml::from_str::<RawRetention>(t).map_err(anyhow::Error::from)?)
        };
        let r = parse("min_retention = \"7d\"\nmax_bytes = \"1GiB\"\n[stream.ehr]\nmin_retention = \"30d\"\nmax_retention = \"60d\"\n").unwrap();
        let d = r.default.clone().unwrap();
        assert_eq!(d.min_retention, Duration::from_secs(7 * 86400));
        assert_eq!(d.max_retention, d.min_retention);
        assert_eq!(d.max_bytes, Some(1 << 30));
        let ehr = r.for_stream(&StreamName::new("ehr").unwrap()).unwrap();
        assert_eq!(ehr.min_retention, Duration::from_secs(30 * 86400));
        assert_eq!(ehr.max_bytes, Some(1 << 30), "inherited");
        assert_eq!(r.for_stream(&StreamName::new("lab").unwrap()), Some(&d));
        assert_eq!(parse("").unwrap(), Retention::default());
        let err = |t: &str| format!("{:#}", parse(t).unwrap_err());
        assert!(err("max_retention = \"1d\"").contains("min_retention` is missing"));
        assert!(err("min_retention = \"0s\"").contains("longer than 0"));
        assert!(err("min_retention = \"2d\"\nmax_retention = \"1d\"").contains("shorter than"));
        assert!(err("min_retention = \"1d\"\nmax_bytes = \"0\"").contains("greater than 0"));
        assert!(
            err("[stream.\"../x\"]\nmin_retention = \"1d\"").contains("replica.retention.stream")
        );
        assert!(err("[stream.lab]\nmax_bytes = \"1GiB\"").contains("stream.lab.min_retention"));
        assert!(err("min_retention = \"1d\"\nmin_retentoin = \"2d\"").contains("unknown field"));
    }
}
