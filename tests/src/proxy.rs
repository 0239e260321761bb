//! A TCP proxy between two daemons on loopback that a test controls:
//! - `cut(true)`: a partition — the proxy stops reading in both directions,
//!   so connections hang (no close, no reset) and TCP backs up; `cut(false)`
//!   heals it and the held bytes flow on, as after a real partition.
//! - `set_rate(Some(bytes_per_second))`: a bandwidth limit per direction.
//! - `reset_all()`: closes every proxied connection abruptly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Mode {
    cut: bool,
    /// Bytes per second per direction; 0 = unlimited.
    rate: u64,
}

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    /// Cancelled to reset all current connections; replaced afterwards.
    conns: std::sync::Mutex<CancellationToken>,
    stop: CancellationToken,
    /// Bytes forwarded, both directions.
    pub forwarded: Arc<AtomicU64>,
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
            }),
            conns: std::sync::Mutex::new(CancellationToken::new()),
            stop: CancellationToken::new(),
            forwarded: Arc::new(AtomicU64::new(0)),
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
                    let a = pipe(cr, sw, me2.mode.subscribe(), me2.forwarded.clone());
                    let b = pipe(sr, cw, me2.mode.subscribe(), me2.forwarded.clone());
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies one direction, obeying the mode: no reads while cut, paced reads
/// under a rate limit.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    counter: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Hold while cut (bounded: the test heals or drops the proxy).
        while mode.borrow_and_update().cut {
            if mode.changed().await.is_err() {
                return;
            }
        }
        let rate = mode.borrow().rate;
        let max = if rate == 0 {
            buf.len()
        } else {
            (rate as usize / 20).clamp(1, buf.len())
        };
        let n = tokio::select! {
            r = from.read(&mut buf[..max]) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = mode.changed() => continue,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
}
