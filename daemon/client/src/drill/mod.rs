//! DR drill reports (issue 21): what `drctl drill` hands an auditor.
//!
//! A drill at the DR site snapshots the verified log, restores it into a
//! scratch database through the operator's hooks, checks it, tears it down
//! and measures RTO and RPO. The daemon writes three files per drill:
//!
//! - `report.json` — a [`Report`], for machines;
//! - `report.html` — the same, self-contained, for people ([`html`]);
//! - `report.sig` — a [`seal::Seal`]: both files' SHA-256, signed with the
//!   DR node's mTLS key ([`seal`]), so `drctl drill verify` detects a
//!   one-byte change and names who signed.
//!
//! This module is the model both ends share (the daemon fills it in, drctl
//! reads it back); it does no I/O.

pub mod chart;
pub mod html;
pub mod seal;

use serde::{Deserialize, Serialize};

/// The report format this build writes and reads.
pub const REPORT_FORMAT: u32 = 1;
/// File names inside a drill's directory.
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_HTML: &str = "report.html";
pub const REPORT_SIG: &str = "report.sig";

/// One drill, as the DR node saw it. Times are Unix milliseconds (UTC);
/// durations are milliseconds; positions are drd's stream positions
/// (bytes) unless named `*_lsn` (PostgreSQL's `X/Y` form).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_FORMAT`].
    pub format: u32,
    /// Unique per node: `STREAM-YYYYMMDDTHHMMSSZ` of the start.
    pub id: String,
    pub stream: String,
    /// The DR node that ran the drill (its node id; it signed the report).
    pub node_id: String,
    /// The primary this node replicates from, as last seen (node id), and
    /// the peer URL when the config names one.
    pub primary: String,
    /// `drd --version`'s line of the DR node.
    pub drd_version: String,
    /// The database's version, when the check hook reported one (a line
    /// `drd-drill: version=...` in its output).
    pub database_version: Option<String>,
    /// Who asked (Unix user or certificate name) and from where, and why.
    pub user: String,
    pub origin: String,
    pub reason: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub snapshot: Snapshot,
    /// Every step in order, including the ones skipped (with why).
    pub steps: Vec<Step>,
    pub verify: Verify,
    pub rto: Rto,
    pub rpo: Rpo,
    /// The DR site's lag over the last 24 h, oldest first, from the node's
    /// own downsampled history (one point per bucket; gaps where the
    /// daemon was not running); the last point is the snapshot's lag.
    pub lag_history: Vec<LagPoint>,
    /// The length of one history bucket, seconds.
    pub lag_bucket_seconds: u64,
    /// The scratch directory given to the hooks, and whether it was gone
    /// after teardown.
    pub scratch_dir: String,
    pub scratch_removed: bool,
    pub verdict: Verdict,
}

/// The verified log at the drill's start: what the restore could contain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub taken_at_ms: u64,
    /// The DR copy's durable position, and when it was last advanced.
    pub durable_position: u64,
    pub durable_at_ms: u64,
    /// The primary's written position as the DR node last heard it, and
    /// when: the snapshot's time while the primary is connected (its
    /// keepalives arrive every few hundred ms), 0 when it is not.
    pub primary_written_position: u64,
    pub primary_heard_at_ms: u64,
    /// Whether the primary was connected at the snapshot.
    pub primary_connected: bool,
    /// drd's own lag accounting at the snapshot.
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    /// Hash-chain head over the sealed segments, and the newest sealed one.
    pub chain_head: String,
    pub last_segment: String,
    pub sealed_segments: u64,
    /// For a PostgreSQL stream: where the DR copy ends and where the
    /// primary had written, as `X/Y` LSNs with their timelines.
    pub durable_lsn: Option<String>,
    pub durable_timeline: Option<u32>,
    pub primary_lsn: Option<String>,
    pub primary_timeline: Option<u32>,
}

/// What happened to a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    #[default]
    Passed,
    Failed,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One step of the drill: `snapshot`, `verify`, `restore`, `check`,
/// `teardown`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// Milliseconds after the drill's start.
    pub started_after_ms: u64,
    pub duration_ms: u64,
    pub outcome: Outcome,
    /// One line: what was done, or why it failed or was skipped.
    pub summary: String,
    /// The command run (hooks), empty otherwise.
    pub command: String,
    /// Its output (stdout then stderr), at most [`MAX_STEP_OUTPUT`] bytes
    /// (the tail is kept: that is where errors are).
    pub output: String,
}

/// Most output kept per step.
pub const MAX_STEP_OUTPUT: usize = 64 * 1024;

/// The at-rest check of every sealed segment (`drctl verify`'s walk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verify {
    pub segments_checked: u64,
    pub bytes_checked: u64,
    pub problems_total: u64,
    /// At most the first 100: the first is where trust ends.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub segment: String,
    pub problem: String,
}

/// Recovery time: drill start to the scratch database consistent and
/// answering (the check hook succeeded).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rto {
    /// None when the drill did not get that far.
    pub seconds: Option<f64>,
    /// How it was measured, in words.
    pub method: String,
}

/// Recovery point: what a failover at the snapshot would have lost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rpo {
    /// Primary's written position minus the DR copy's durable position at
    /// the snapshot.
    pub bytes: u64,
    /// Age of the oldest byte the DR copy did not have (drd's lag).
    pub seconds: f64,
    /// Where the restored database's replay ended, when the restore hook
    /// reported it (`drd-drill: restored_lsn=X/Y`).
    pub restored_lsn: Option<String>,
    /// Primary's LSN minus the restored LSN (same timeline), bytes.
    pub restored_lsn_gap_bytes: Option<u64>,
    pub method: String,
}

/// One bucket of the lag history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LagPoint {
    /// Bucket start, Unix ms.
    pub at_ms: u64,
    /// Worst lag seen in the bucket.
    pub max_lag_seconds: f64,
    pub max_lag_bytes: u64,
    /// Whether the primary was connected for the whole bucket.
    pub connected: bool,
}

/// Pass or fail, and every reason it failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub passed: bool,
    pub reasons: Vec<String>,
}

impl Report {
    /// The report as written to `report.json` (pretty, stable field order,
    /// newline-terminated).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Reads `report.json`, refusing another format.
    pub fn from_json(bytes: &[u8]) -> Result<Report, String> {
        let r: Report =
            serde_json::from_slice(bytes).map_err(|e| format!("not a drd drill report: {e}"))?;
        if r.format != REPORT_FORMAT {
            return Err(format!(
                "report format {} (this drctl reads format {REPORT_FORMAT})",
                r.format
            ));
        }
        Ok(r)
    }

    /// The step named `name`, if it ran.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// A drill's id: the stream and its start in UTC, `ehr-20261202T071500Z`.
pub fn drill_id(stream: &str, started_at_ms: u64) -> String {
    let secs = i64::try_from(started_at_ms / 1000).unwrap_or(0);
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{stream}-{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The value of `drd-drill: KEY=VALUE`, the last such line of a hook's
/// output (how the hooks tell drd what they measured).
pub fn hook_value(output: &str, key: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .filter_map(|l| l.trim().strip_prefix("drd-drill:"))
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

/// Keeps the last [`MAX_STEP_OUTPUT`] bytes of `s`, on a char boundary.
pub fn clip_output(s: &str) -> String {
    if s.len() <= MAX_STEP_OUTPUT {
        return s.to_string();
    }
    let mut start = s.len() - MAX_STEP_OUTPUT;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes cut …]\n{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_other_formats_are_refused() {
        let r = Report {
            format: REPORT_FORMAT,
            id: "ehr-20261202T071500Z".into(),
            ..Default::default()
        };
        let back = Report::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
        let other = Report { format: 2, ..r };
        assert!(Report::from_json(&other.to_json())
            .unwrap_err()
            .contains("format 2"));
        assert!(Report::from_json(b"{").is_err());
    }

    #[test]
    fn ids_and_hook_values() {
        assert_eq!(drill_id("ehr", 1_796_195_700_999), "ehr-20261202T071500Z");
        let out = "starting\ndrd-drill: restored_lsn=0/3000060\nx\n drd-drill: version=PostgreSQL 15.8 \n";
        assert_eq!(
            hook_value(out, "restored_lsn").as_deref(),
            Some("0/3000060")
        );
        assert_eq!(
            hook_value(out, "version").as_deref(),
            Some("PostgreSQL 15.8")
        );
        assert_eq!(hook_value(out, "restored"), None);
        assert_eq!(hook_value("drd-drill: version=", "version"), None);
    }

    #[test]
    fn output_is_clipped_to_its_tail() {
        let long = "é".repeat(MAX_STEP_OUTPUT);
        let c = clip_output(&long);
        assert!(c.len() < MAX_STEP_OUTPUT + 64);
        assert!(c.ends_with('é'));
        assert_eq!(clip_output("short"), "short");
    }
}
