//! The live state of a stream's object-store targets (`[[stream.target]]`),
//! written by their upload tasks (`targets`) and read by `drctl status`
//! and the metrics.

use crate::locks::LockExt;
use std::sync::Arc;

/// A target's live state, for `drctl status` and the metrics.
#[derive(Debug, Default)]
pub struct TargetState {
    pub stream: String,
    pub url: String,
    pub inner: std::sync::Mutex<TargetView>,
    pub stats: Arc<drd_bucket::store::Stats>,
}

#[derive(Debug, Default, Clone)]
pub struct TargetView {
    /// "uploading", "caught up", "error", "conflict", "waiting"
    pub state: String,
    pub last_segment: String,
    pub segments: u64,
    pub partials: u64,
    pub bytes: u64,
    pub last_error: String,
    /// Unix ms when the bucket last held everything this node had durable.
    pub caught_up_at_ms: u64,
    /// Unix ms of the oldest byte durable here but not yet in the bucket
    /// (0 when none).
    pub behind_since_ms: u64,
}

impl TargetState {
    /// What `drctl status` shows of the target.
    pub fn status(&self) -> drd_proto::pb::TargetStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let v = self.inner.locked().clone();
        let st = &self.stats;
        drd_proto::pb::TargetStatus {
            stream: self.stream.clone(),
            url: self.url.clone(),
            state: v.state,
            last_segment: v.last_segment,
            segments: v.segments,
            partials: v.partials,
            bytes: v.bytes,
            requests: st.puts.load(Relaxed) + st.gets.load(Relaxed) + st.lists.load(Relaxed),
            retries: st.retries.load(Relaxed),
            lag_seconds: self.lag_seconds(crate::clock::unix_ms()),
            last_error: v.last_error,
            caught_up_at_ms: v.caught_up_at_ms,
        }
    }

    /// Seconds the bucket is behind the local log (0 when caught up).
    pub fn lag_seconds(&self, now_ms: u64) -> f64 {
        let since = self.inner.locked().behind_since_ms;
        if since == 0 {
            0.0
        } else {
            now_ms.saturating_sub(since) as f64 / 1000.0
        }
    }
}
