//! A TCP proxy between two daemons on loopback that a test controls:
//! - `cut(true)`: a partition — the proxy stops reading in both directions,
//!   so connections hang (no close, no reset) and TCP backs up; `cut(false)`
//!   heals it and the held bytes flow on, as after a real partition.
//! - `set_rate(Some(bytes_per_second))`: a bandwidth limit per direction.
//! - `reset_all()`: closes every proxied connection abruptly.
//!
//! Added for the chaos suite (tests/src/chaos.rs):
//! - `set_latency(ms, jitter_ms)`: every buffer is delayed by `ms` plus a
//!   random `0..=jitter_ms`, in order (a delay line, so throughput is not
//!   capped at one buffer per round trip);
//! - `stall(Dir, on)`: a half-open connection — one direction stops
//!   flowing, the other goes on;
//! - `corrupt_once()`: flips one bit of the next buffer sent client →
//!   server (primary → replica); TLS then fails the connection;
//! - `stop()`: ends the proxy and its connections (dropping the last `Arc`
//!   does not, while its own tasks hold one).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Default)]
struct Mode {
    cut: bool,
    /// Bytes per second per direction; 0 = unlimited.
    rate: u64,
    /// Added delay per buffer, and the most random jitter on top (ms).
    latency_ms: u64,
    jitter_ms: u64,
    /// One direction held (a half-open connection), by `Dir as usize`.
    stall: [bool; 2],
}

/// Direction within a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → server: the shipping primary's data towards the replica.
    Up = 0,
    /// Server → client: the replica's acks.
    Down = 1,
}

/// One-shot faults shared by a proxy's connections.
#[derive(Debug, Default)]
pub struct Faults {
    /// Set: flip one bit in the next buffer forwarded client → server.
    corrupt_up: AtomicBool,
    /// Bits flipped so far.
    pub corrupted: AtomicU64,
}

/// Buffers in flight inside one direction's delay line (≤ 64 KiB each).
const DELAY_LINE_BUFFERS: usize = 64;

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    /// Cancelled to reset all current connections; replaced afterwards.
    conns: std::sync::Mutex<CancellationToken>,
    stop: CancellationToken,
    /// Bytes forwarded, both directions.
    pub forwarded: Arc<AtomicU64>,
    /// One-shot faults (corruption in flight).
    pub faults: Arc<Faults>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port that forwards to `target`.
    pub async fn start(target: u16) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Arc::new(Self {
            port,
            mode: watch::Sender::new(Mode {
                cut: false,
                rate: 0,
                ..Mode::default()
            }),
            conns: std::sync::Mutex::new(CancellationToken::new()),
            stop: CancellationToken::new(),
            forwarded: Arc::new(AtomicU64::new(0)),
            faults: Arc::new(Faults::default()),
        });
        let me = p.clone();
        let target: SocketAddr = ([127, 0, 0, 1], target).into();
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = me.stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let me2 = me.clone();
                tokio::spawn(async move {
                    // A cut also refuses new connections their progress: the
                    // connect happens, but nothing flows until healed.
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let token = me2.conns.lock().unwrap().clone();
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let (m, f, n) = (&me2.mode, &me2.forwarded, &me2.faults);
                    let a = pipe(cr, sw, m.subscribe(), f.clone(), n.clone(), Dir::Up);
                    let b = pipe(sr, cw, m.subscribe(), f.clone(), n.clone(), Dir::Down);
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = me2.stop.cancelled() => {}
                        _ = async { tokio::join!(a, b) } => {}
                    }
                });
            }
        });
        p
    }

    pub fn cut(&self, on: bool) {
        self.mode.send_modify(|m| m.cut = on);
    }

    pub fn set_rate(&self, bytes_per_second: Option<u64>) {
        self.mode
            .send_modify(|m| m.rate = bytes_per_second.unwrap_or(0));
    }

    pub fn reset_all(&self) {
        let mut t = self.conns.lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }

    /// Delays every buffer by `ms` + a random `0..=jitter_ms` (0, 0: off).
    pub fn set_latency(&self, ms: u64, jitter_ms: u64) {
        self.mode.send_modify(|m| {
            m.latency_ms = ms;
            m.jitter_ms = jitter_ms;
        });
    }

    /// Holds one direction of every connection (a half-open link) or
    /// lets it flow again.
    pub fn stall(&self, dir: Dir, on: bool) {
        self.mode.send_modify(|m| m.stall[dir as usize] = on);
    }

    /// Flips one bit in the next buffer forwarded client → server.
    pub fn corrupt_once(&self) {
        self.faults.corrupt_up.store(true, Ordering::SeqCst);
    }

    /// Whether a requested corruption is still waiting for traffic.
    pub fn corruption_pending(&self) -> bool {
        self.faults.corrupt_up.load(Ordering::SeqCst)
    }

    /// Lifts every fault: no cut, stall, rate limit, latency or pending
    /// corruption.
    pub fn heal_all(&self) {
        self.faults.corrupt_up.store(false, Ordering::SeqCst);
        self.mode.send_replace(Mode::default());
    }

    /// Stops accepting and ends every connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits while the link is cut or `dir` is stalled (bounded: the test heals
/// or stops the proxy). False when the proxy is gone.
async fn hold(mode: &mut watch::Receiver<Mode>, dir: Dir) -> bool {
    loop {
        let m = *mode.borrow_and_update();
        if !(m.cut || m.stall[dir as usize]) {
            return true;
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies one direction, obeying the mode: no reads (and no writes) while
/// cut or stalled, paced reads under a rate limit, a delay line under
/// latency, one flipped bit when a corruption is pending (client → server).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    counter: Arc<AtomicU64>,
    faults: Arc<Faults>,
    dir: Dir,
) {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(DELAY_LINE_BUFFERS);
    let mut wmode = mode.clone();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_due = tokio::time::Instant::now();
        loop {
            if !hold(&mut mode, dir).await {
                return;
            }
            let m = *mode.borrow();
            let max = if m.rate == 0 {
                buf.len()
            } else {
                (m.rate as usize / 20).clamp(1, buf.len())
            };
            let n = tokio::select! {
                r = from.read(&mut buf[..max]) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                _ = mode.changed() => continue,
                // The writer gave up (the far side closed): stop reading.
                _ = tx.closed() => return,
            };
            let mut data = buf[..n].to_vec();
            if dir == Dir::Up && faults.corrupt_up.swap(false, Ordering::SeqCst) {
                let i = rand::random_range(0..n);
                data[i] ^= 1 << rand::random_range(0..8u32);
                faults.corrupted.fetch_add(1, Ordering::SeqCst);
            }
            // In order: a buffer is never due before the one ahead of it.
            let delay = m.latency_ms + rand::random_range(0..=m.jitter_ms);
            let due = last_due.max(tokio::time::Instant::now() + Duration::from_millis(delay));
            last_due = due;
            if tx.send((due, data)).await.is_err() {
                return;
            }
            if m.rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / m.rate as f64)).await;
            }
        }
    };
    let writer = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if !hold(&mut wmode, dir).await {
                return;
            }
            if to.write_all(&data).await.is_err() {
                return;
            }
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    };
    tokio::join!(reader, writer);
}
