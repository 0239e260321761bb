//! Bandwidth limits (`max_bandwidth`): a token bucket per stream and one per
//! node, which the shipper passes every chunk through before it sends it.
//! A DR link is usually shared with clinical traffic; catching up after an
//! outage must not saturate it. The rate can be changed while the daemon runs
//! (SIGHUP): a shipper waiting on the old rate re-plans at once.

use crate::locks::LockExt;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
// tokio's clock, so the rules hold under paused time too.
use tokio::time::Instant;

/// The bucket holds at most this much time's worth of tokens: short enough
/// that a burst after an idle period stays close to the limit.
const BURST: Duration = Duration::from_millis(100);
/// ... but never less than one full chunk, so a chunk can always pass.
const MIN_BURST_BYTES: f64 = 1024.0 * 1024.0;

/// A token bucket in bytes per second; `None` is unlimited.
#[derive(Debug)]
pub struct Throttle {
    state: Mutex<Bucket>,
    /// Woken when the rate changes, so waiters re-plan with the new rate.
    changed: Notify,
}

#[derive(Debug)]
struct Bucket {
    rate: Option<u64>,
    /// Bytes that may be sent now; negative while senders owe time.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn burst(rate: u64) -> f64 {
        (rate as f64 * BURST.as_secs_f64()).max(MIN_BURST_BYTES)
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let dt = now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + rate as f64 * dt).min(Self::burst(rate));
        }
        self.last = now;
    }
}

impl Throttle {
    pub fn new(rate: Option<u64>) -> Self {
        Self {
            state: Mutex::new(Bucket {
                rate,
                tokens: 0.0,
                last: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    /// The current limit in bytes per second (None: unlimited).
    pub fn rate(&self) -> Option<u64> {
        self.state.locked().rate
    }

    /// Changes the limit; takes effect for bytes not yet paid for,
    /// including those a sender is waiting on right now.
    pub fn set_rate(&self, rate: Option<u64>) {
        {
            let mut b = self.state.locked();
            b.refill(Instant::now());
            b.rate = rate;
            if rate.is_none() {
                b.tokens = 0.0;
            }
        }
        self.changed.notify_waiters();
    }

    /// Takes `n` bytes' worth of tokens, waiting as long as the limit
    /// requires. Returns at once when unlimited. Cancel-safe: a dropped
    /// wait has already paid (the bytes count against the limit either way).
    pub async fn acquire(&self, n: u64) {
        {
            let mut b = self.state.locked();
            if b.rate.is_none() {
                return;
            }
            b.refill(Instant::now());
            b.tokens -= n as f64;
        }
        loop {
            // Register for rate changes before reading the state, so a
            // change between the two is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut b = self.state.locked();
                b.refill(Instant::now());
                match b.rate {
                    None => return,
                    Some(_) if b.tokens >= 0.0 => return,
                    Some(0) => Duration::from_secs(3600),
                    Some(rate) => Duration::from_secs_f64(-b.tokens / rate as f64),
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed => {}
            }
        }
    }
}

/// The smallest limit accepted: below it a chunk would take so long that
/// the replication stream's idle timeout could fire between two messages.
pub const MIN_BANDWIDTH: u64 = 64 * 1024;

/// Largest chunk to send under these limits: a quarter second's worth of
/// the tightest one (at least 16 KiB), so that messages keep flowing
/// several times a second however low the limit.
pub fn chunk_cap(limits: &[&Throttle]) -> u64 {
    limits
        .iter()
        .filter_map(|t| t.rate())
        .map(|r| (r / 4).max(16 * 1024))
        .min()
        .unwrap_or(u64::MAX)
}

/// Parses a bandwidth such as `200MiB/s`, `500KiB/s`, `50MB/s`, `100Mbit/s`
/// or `1Gbit/s` into bytes per second, with the units of [`crate::units`].
/// `unlimited` (or `0`) is no limit.
pub fn parse_bandwidth(text: &str) -> Result<Option<u64>, String> {
    let rate = crate::units::parse_rate(text).map_err(|e| e.to_string())?;
    if let Some(bytes) = rate {
        if bytes < MIN_BANDWIDTH {
            return Err(format!(
                "{text:?} is below the smallest limit, 64KiB/s; write \"unlimited\" for no limit"
            ));
        }
    }
    Ok(rate)
}

/// Human form of a rate, for logs (`20.0 MiB/s`, `unlimited`).
pub fn describe(rate: Option<u64>) -> String {
    match rate {
        None => "unlimited".into(),
        Some(r) => format!("{:.1} MiB/s", r as f64 / (1024.0 * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidths_parse() {
        assert_eq!(parse_bandwidth("200MiB/s"), Ok(Some(200 << 20)));
        assert_eq!(parse_bandwidth("20 MiB/s"), Ok(Some(20 << 20)));
        assert_eq!(parse_bandwidth("512KiB/s"), Ok(Some(512 << 10)));
        assert_eq!(parse_bandwidth("1GiB/s"), Ok(Some(1 << 30)));
        assert_eq!(parse_bandwidth("100Mbit/s"), Ok(Some(12_500_000)));
        assert_eq!(parse_bandwidth("1.5MB/s"), Ok(Some(1_500_000)));
        assert_eq!(parse_bandwidth("unlimited"), Ok(None));
        assert_eq!(parse_bandwidth("0"), Ok(None));
        assert!(parse_bandwidth("200MiB").unwrap_err().contains("/s"));
        assert!(parse_bandwidth("fast/s").is_err());
        assert!(parse_bandwidth("3furlongs/s").unwrap_err().contains("unit"));
        assert!(parse_bandwidth("1KiB/s").unwrap_err().contains("smallest"));
        // One meaning for KB everywhere (issue 15): 1000 here as in sizes.
        assert_eq!(parse_bandwidth("100KB/s"), Ok(Some(100_000)));
        assert!(parse_bandwidth("200M/s").unwrap_err().contains("ambiguous"));
        let (a, b) = (Throttle::new(Some(1 << 20)), Throttle::new(None));
        assert_eq!(chunk_cap(&[&a, &b]), 256 << 10);
        assert_eq!(chunk_cap(&[&b]), u64::MAX);
    }

    #[tokio::test]
    async fn the_bucket_holds_the_rate() {
        let t = Throttle::new(Some(20 << 20));
        let start = Instant::now();
        // 10 MiB in 1 MiB chunks at 20 MiB/s: about 0.5 s.
        for _ in 0..10 {
            t.acquire(1 << 20).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.45..=0.8).contains(&took), "took {took} s");
    }

    #[tokio::test]
    async fn unlimited_does_not_wait() {
        let t = Throttle::new(None);
        let start = Instant::now();
        for _ in 0..1000 {
            t.acquire(1 << 20).await;
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_rate_change_reaches_a_waiting_sender() {
        let t = std::sync::Arc::new(Throttle::new(Some(1024)));
        let start = Instant::now();
        // 1 MiB at 1 KiB/s would take 1024 s; raise the limit meanwhile.
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { t.acquire(1 << 20).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.set_rate(Some(100 << 20));
        waiter.await.unwrap();
        let took = start.elapsed().as_secs_f64();
        assert!(took < 1.0, "took {took} s");
        t.set_rate(None);
        let again = Instant::now();
        t.acquire(100 << 20).await;
        assert!(again.elapsed() < Duration::from_millis(100));
    }
}
