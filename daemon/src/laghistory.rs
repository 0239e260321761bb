//! The lag history a drill report charts (issue 21): per stream this node
//! receives, the worst lag of every minute over the last 24 hours, kept in
//! the catalog so it survives restarts. The sampler task that feeds it is
//! [`crate::ops::drill::record_lag`].
//!
//! Bounded: one bucket a minute per stream (1,440 a day, ~100 bytes each),
//! older ones removed hourly. A sampler task reads each received stream's
//! lag every [`SAMPLE_EVERY`] and keeps the worst per bucket, so a spike
//! between samples of under that length can be missed; the bucket's
//! maximum is what the chart shows.

use crate::locks::LockExt;
use crate::storage::catalog::{Catalog, CatalogError};
use drd_client::drill::LagPoint;
use drd_proto::StreamName;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// One bucket of the history.
pub const BUCKET_MS: u64 = 60_000;
/// How far back the history reaches.
pub const WINDOW_MS: u64 = 24 * 3600 * 1000;
/// How often the sampler reads the lag.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Old buckets are removed when a bucket starting on this boundary opens
/// (one range deletion an hour per stream, not one a minute).
const PRUNE_EVERY_MS: u64 = 3600 * 1000;

fn prefix(stream: &StreamName) -> String {
    format!("laghist/{stream}/")
}

fn key(stream: &StreamName, at_ms: u64) -> String {
    format!("laghist/{stream}/{at_ms:020}")
}

/// The open bucket of every sampled stream (the closed ones are in the
/// catalog).
#[derive(Debug, Default)]
pub struct LagHistory {
    open: Mutex<BTreeMap<StreamName, LagPoint>>,
}

impl LagHistory {
    /// Records one sample of `stream`'s lag at `now_ms`. When the sample
    /// opens a new bucket the previous one is written to the catalog, not
    /// synced: a bucket lost in a crash is a gap in a chart, and the
    /// history is evidence of lag, not data anything depends on.
    pub fn sample(
        &self,
        catalog: &Catalog,
        stream: &StreamName,
        lag_seconds: f64,
        lag_bytes: u64,
        connected: bool,
        now_ms: u64,
    ) -> Result<(), CatalogError> {
        let at_ms = now_ms - now_ms % BUCKET_MS;
        let lag_seconds = if lag_seconds.is_finite() {
            lag_seconds.max(0.0)
        } else {
            0.0
        };
        let closed = {
            let mut open = self.open.locked();
            let b = open.entry(stream.clone()).or_insert(LagPoint {
                at_ms,
                max_lag_seconds: 0.0,
                max_lag_bytes: 0,
                connected: true,
            });
            let closed = (b.at_ms != at_ms).then(|| {
                std::mem::replace(
                    b,
                    LagPoint {
                        at_ms,
                        max_lag_seconds: 0.0,
                        max_lag_bytes: 0,
                        connected: true,
                    },
                )
            });
            b.max_lag_seconds = b.max_lag_seconds.max(lag_seconds);
            b.max_lag_bytes = b.max_lag_bytes.max(lag_bytes);
            b.connected &= connected;
            closed
        };
        if let Some(c) = closed {
            catalog.put_record(&key(stream, c.at_ms), &c, false)?;
            if at_ms.is_multiple_of(PRUNE_EVERY_MS) {
                let cutoff = at_ms.saturating_sub(WINDOW_MS);
                catalog.delete_records(&prefix(stream), &key(stream, cutoff))?;
            }
        }
        Ok(())
    }

    /// `stream`'s buckets of the last 24 h before `now_ms`, oldest first,
    /// the open one last.
    pub fn points(
        &self,
        catalog: &Catalog,
        stream: &StreamName,
        now_ms: u64,
    ) -> Result<Vec<LagPoint>, CatalogError> {
        let from = key(stream, now_ms.saturating_sub(WINDOW_MS));
        let most = usize::try_from(WINDOW_MS / BUCKET_MS + 2).unwrap_or(usize::MAX);
        let mut out: Vec<LagPoint> = catalog
            .records(&prefix(stream), Some(&from), false, most)?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        if let Some(open) = self.open.locked().get(stream) {
            if out.last().is_none_or(|l| l.at_ms < open.at_ms) {
                out.push(*open);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_the_worst_sample_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let s = StreamName::new("ehr").unwrap();
        let h = LagHistory::default();
        let t0 = 10 * WINDOW_MS; // on an hour boundary
        h.sample(&cat, &s, 1.0, 10, true, t0).unwrap();
        h.sample(&cat, &s, 3.0, 5, false, t0 + 5_000).unwrap();
        h.sample(&cat, &s, f64::NAN, 1, true, t0 + 10_000).unwrap();
        h.sample(&cat, &s, 0.5, 0, true, t0 + BUCKET_MS).unwrap();
        let p = h.points(&cat, &s, t0 + BUCKET_MS + 1).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (
                p[0].at_ms,
                p[0].max_lag_seconds,
                p[0].max_lag_bytes,
                p[0].connected
            ),
            (t0, 3.0, 10, false)
        );
        assert_eq!((p[1].at_ms, p[1].max_lag_seconds), (t0 + BUCKET_MS, 0.5));

        // A day later the first buckets are outside the window and, at the
        // next hour boundary, removed from the catalog.
        let later = t0 + WINDOW_MS + PRUNE_EVERY_MS;
        h.sample(&cat, &s, 0.0, 0, true, later - BUCKET_MS).unwrap();
        h.sample(&cat, &s, 0.0, 0, true, later).unwrap();
        let p = h.points(&cat, &s, later).unwrap();
        assert!(p.iter().all(|x| x.at_ms + WINDOW_MS >= later), "{p:?}");
        let stored: Vec<(String, LagPoint)> = cat.records(&prefix(&s), None, false, 100).unwrap();
        assert!(
            stored.iter().all(|(_, x)| x.at_ms >= later - WINDOW_MS),
            "{stored:?}"
        );
    }
}
