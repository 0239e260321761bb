//! An HTTP/1.1 proxy in front of an object-store emulator that injects
//! faults per request, as a flaky load balancer or a throttling S3 would:
//! - latency: a request waits before it is forwarded;
//! - a reset before forwarding: the request is read, then both sockets
//!   are dropped (RST); the server never sees it;
//! - a reset mid-response: the request is forwarded and answered, the
//!   client gets half the response, then both sockets are dropped — the
//!   server did the work and the client cannot know (an ambiguous write);
//! - a close mid-response: the same, but the sockets are closed in order
//!   (FIN), which a client may take for a request never sent;
//! - `503 Slow Down` with S3's XML error body and `Retry-After`, without
//!   forwarding.
//!
//! Which request gets which fault comes from a seeded RNG, so a run with
//! one seed and the same sequence of requests repeats; a test can also
//! script the next requests' faults ([`FaultProxy::inject_next`]).
//! Counters tell the test what was injected and forwarded;
//! [`FaultProxy::heal_all`] turns the faults off.
//!
//! Why not `crate::proxy::Proxy` (the chaos suite's): that one moves bytes
//! and knows no request boundaries, and its faults are per link (cut,
//! stall, rate); these are per request, so this proxy parses each request
//! and response (head, then a `Content-Length`, chunked or close-delimited
//! body) and forwards both byte for byte. Plain threads, not tokio: it
//! works under any runtime a test uses, or none.

use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The largest request or response head accepted (S3's own limit is 8 KiB
/// of headers; emulators stay far below).
const MAX_HEAD: usize = 64 * 1024;

/// How long the proxy waits for the server's answer before giving up on
/// the connection (a stuck emulator fails the test instead of hanging it).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// The share of requests that get each fault (each 0.0..=1.0). The
/// failures exclude each other (their shares add up to at most 1); latency
/// is drawn on its own and comes on top.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultRates {
    /// Share of requests delayed before forwarding, each by a uniform
    /// `0..=max_latency`.
    pub latency: f64,
    pub max_latency: Duration,
    /// Share of requests dropped (both sockets reset) before forwarding.
    pub reset_before: f64,
    /// Share of requests forwarded whose response is cut halfway (both
    /// sockets reset).
    pub reset_mid_response: f64,
    /// Share of requests forwarded whose response is cut halfway (both
    /// sockets closed in order).
    pub close_mid_response: f64,
    /// Share of requests answered `503 Slow Down` without forwarding.
    pub slow_down: f64,
}

impl FaultRates {
    /// No faults: a transparent proxy.
    pub const NONE: Self = Self {
        latency: 0.0,
        max_latency: Duration::ZERO,
        reset_before: 0.0,
        reset_mid_response: 0.0,
        close_mid_response: 0.0,
        slow_down: 0.0,
    };
}

/// What the proxy has seen and done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests read from clients (complete heads and bodies).
    pub requests: u64,
    /// Requests forwarded to the server and answered by it.
    pub forwarded: u64,
    pub delayed: u64,
    pub reset_before: u64,
    pub reset_mid_response: u64,
    pub close_mid_response: u64,
    pub slow_down: u64,
}

impl Counts {
    /// Failures injected: resets, closes and 503s (latency is not
    /// counted: the request still succeeds).
    pub fn failures(&self) -> u64 {
        self.reset_before + self.reset_mid_response + self.close_mid_response + self.slow_down
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    delayed: AtomicU64,
    reset_before: AtomicU64,
    reset_mid_response: AtomicU64,
    close_mid_response: AtomicU64,
    slow_down: AtomicU64,
}

/// A failure the proxy can inject into one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Both sockets reset after the request was read; nothing forwarded.
    ResetBefore,
    /// Forwarded; half the response, then both sockets reset.
    ResetMidResponse,
    /// Forwarded; half the response, then both sockets closed in order.
    CloseMidResponse,
    /// `503 Slow Down` without forwarding.
    SlowDown,
}

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    Forward,
    Fail(Fault),
}

struct Shared {
    target: SocketAddr,
    rates: Mutex<FaultRates>,
    /// Faults for the next requests, in order, before any drawn ones.
    scripted: Mutex<std::collections::VecDeque<Fault>>,
    rng: Mutex<rand::rngs::StdRng>,
    counters: Counters,
    stop: AtomicBool,
    /// Every open client connection (a clone of its socket), so that stop
    /// can end them; removed by its thread when it ends.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

impl Shared {
    /// Draws one request's fate and delay.
    fn draw(&self) -> (Fate, Duration) {
        let r = *self.rates.lock().unwrap();
        let mut rng = self.rng.lock().unwrap();
        let delay = if r.latency > 0.0 && rng.random_bool(r.latency.min(1.0)) {
            r.max_latency.mul_f64(rng.random_range(0.0..=1.0))
        } else {
            Duration::ZERO
        };
        let u: f64 = rng.random_range(0.0..1.0);
        if let Some(f) = self.scripted.lock().unwrap().pop_front() {
            return (Fate::Fail(f), delay);
        }
        let mut edge = 0.0;
        for (share, fault) in [
            (r.reset_before, Fault::ResetBefore),
            (r.slow_down, Fault::SlowDown),
            (r.reset_mid_response, Fault::ResetMidResponse),
            (r.close_mid_response, Fault::CloseMidResponse),
        ] {
            edge += share;
            if u < edge {
                return (Fate::Fail(fault), delay);
            }
        }
        (Fate::Forward, delay)
    }
}

/// A fault-injecting HTTP proxy on 127.0.0.1; stops on drop.
pub struct FaultProxy {
    /// The port clients connect to.
    pub port: u16,
    shared: Arc<Shared>,
    /// The accept loop, joined by `stop`.
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of 127.0.0.1:`target`,
    /// with faults drawn from `rates` by an RNG seeded with `seed`.
    pub fn start(target: u16, seed: u64, rates: FaultRates) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            target: ([127, 0, 0, 1], target).into(),
            rates: Mutex::new(rates),
            scripted: Mutex::new(Default::default()),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let me = shared.clone();
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if me.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let id = me.next_conn.fetch_add(1, Ordering::SeqCst);
                if let Ok(c) = client.try_clone() {
                    me.conns.lock().unwrap().insert(id, c);
                }
                let me2 = me.clone();
                std::thread::spawn(move || {
                    serve(&me2, client);
                    me2.conns.lock().unwrap().remove(&id);
                });
            }
        });
        Self {
            port,
            shared,
            accept: Mutex::new(Some(accept)),
        }
    }

    /// `http://127.0.0.1:PORT`, the endpoint to give a client.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the fault rates (for requests read from now on).
    pub fn set_rates(&self, rates: FaultRates) {
        *self.shared.rates.lock().unwrap() = rates;
    }

    /// Gives the next request (after any already scripted) `fault`,
    /// whatever the rates say.
    pub fn inject_next(&self, fault: Fault) {
        self.shared.scripted.lock().unwrap().push_back(fault);
    }

    /// Turns every fault off, scripted ones too: requests are forwarded
    /// untouched.
    pub fn heal_all(&self) {
        self.shared.scripted.lock().unwrap().clear();
        self.set_rates(FaultRates::NONE);
    }

    pub fn counts(&self) -> Counts {
        let c = &self.shared.counters;
        let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Counts {
            requests: n(&c.requests),
            forwarded: n(&c.forwarded),
            delayed: n(&c.delayed),
            reset_before: n(&c.reset_before),
            reset_mid_response: n(&c.reset_mid_response),
            close_mid_response: n(&c.close_mid_response),
            slow_down: n(&c.slow_down),
        }
    }

    /// Stops accepting and ends every open connection.
    pub fn stop(&self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for c in self.shared.conns.lock().unwrap().values() {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP message head: its bytes as received, and what framing needs.
struct Head {
    raw: Vec<u8>,
    /// Request: the method; response: the status code.
    method: String,
    status: u16,
    /// HTTP/1.0 (close unless `Connection: keep-alive`).
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection ends after this message.
    fn closes(&self) -> bool {
        self.has_token("connection", "close")
            || (self.http10 && !self.has_token("connection", "keep-alive"))
    }

    fn chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }

    fn content_length(&self) -> std::io::Result<Option<u64>> {
        self.header("content-length")
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| bad(format!("Content-Length {v:?}")))
            })
            .transpose()
    }
}

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads one message head; None on a clean end of stream before it.
fn read_head(r: &mut impl BufRead, request: bool) -> std::io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = r
            .by_ref()
            .take((MAX_HEAD - before) as u64 + 1)
            .read_until(b'\n', &mut raw)?;
        if n == 0 {
            if before == 0 {
                return Ok(None);
            }
            return Err(bad("end of stream inside a message head".into()));
        }
        if raw.len() > MAX_HEAD {
            return Err(bad("message head too large".into()));
        }
        // Blank lines before a request are allowed (RFC 9112 2.2).
        if request && (raw == b"\r\n" || raw == b"\n") {
            raw.clear();
            continue;
        }
        if raw.ends_with(b"\r\n\r\n") || raw.ends_with(b"\n\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let start = lines.next().unwrap_or_default();
    let mut parts = start.split(' ');
    let (method, status, http10) = if request {
        let method = parts.next().unwrap_or_default().to_string();
        let version = parts.nth(1).unwrap_or_default();
        (method, 0, version == "HTTP/1.0")
    } else {
        let version = parts.next().unwrap_or_default();
        let status = parts
            .next()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad(format!("status line {start:?}")))?;
        (String::new(), status, version == "HTTP/1.0")
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Head {
        raw,
        method,
        status,
        http10,
        headers,
    }))
}

/// Reads a chunked body as it came (sizes, extensions, trailers and all).
fn read_chunked(r: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        let mut line = Vec::new();
        r.by_ref()
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(bad("end of stream inside a chunk size".into()));
        }
        out.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line);
        let size = text.split(';').next().unwrap_or_default().trim();
        let size =
            u64::from_str_radix(size, 16).map_err(|_| bad(format!("chunk size {size:?}")))?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                let mut t = Vec::new();
                r.by_ref().take(MAX_HEAD as u64).read_until(b'\n', &mut t)?;
                if !t.ends_with(b"\n") {
                    return Err(bad("end of stream inside chunk trailers".into()));
                }
                out.extend_from_slice(&t);
                if t == b"\r\n" || t == b"\n" {
                    return Ok(());
                }
            }
        }
        // The data and its CRLF.
        let start = out.len();
        r.by_ref().take(size + 2).read_to_end(out)?;
        if (out.len() - start) as u64 != size + 2 {
            return Err(bad("end of stream inside a chunk".into()));
        }
    }
}

fn read_exact_body(r: &mut impl BufRead, len: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    let start = out.len();
    r.by_ref().take(len).read_to_end(out)?;
    if ((out.len() - start) as u64) < len {
        return Err(bad("end of stream inside a body".into()));
    }
    Ok(())
}

/// A request's body (none unless Content-Length or chunked says so).
fn read_request_body(r: &mut impl BufRead, head: &Head) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked() {
        read_chunked(r, &mut body)?;
    } else if let Some(len) = head.content_length()? {
        read_exact_body(r, len, &mut body)?;
    }
    Ok(body)
}

/// A response's body, and whether it ran to the end of the stream (then
/// the connection is done).
fn read_response_body(
    r: &mut impl BufRead,
    head: &Head,
    request_method: &str,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    let bodiless = request_method.eq_ignore_ascii_case("HEAD")
        || head.status == 204
        || head.status == 304
        || (100..200).contains(&head.status);
    if bodiless {
        return Ok((body, false));
    }
    if head.chunked() {
        read_chunked(r, &mut body)?;
        Ok((body, false))
    } else if let Some(len) = head.content_length()? {
        read_exact_body(r, len, &mut body)?;
        Ok((body, false))
    } else {
        r.read_to_end(&mut body)?;
        Ok((body, true))
    }
}

/// Drops a socket so that the peer sees a reset (RST), not an orderly
/// close: SO_LINGER with a zero timeout, then close.
fn reset(s: TcpStream) {
    let _ = nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(s);
}

/// The answer S3 gives when it throttles.
fn slow_down_response(n: u64) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
         <Message>Please reduce your request rate.</Message>\
         <RequestId>drd-faultproxy-{n}</RequestId></Error>"
    );
    format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nRetry-After: 1\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The server's connection, kept while it stays open.
struct Upstream {
    reader: BufReader<TcpStream>,
    /// Whether a request was already answered on it (then a failure to
    /// send on it may be an idle close by the server, worth one retry).
    reused: bool,
}

fn connect(target: SocketAddr) -> std::io::Result<Upstream> {
    let s = TcpStream::connect(target)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
    Ok(Upstream {
        reader: BufReader::new(s),
        reused: false,
    })
}

/// Sends a request on `up` and reads the answer: interim (1xx) heads, then
/// the final head and body.
fn exchange(
    up: &mut Upstream,
    head: &Head,
    body: &[u8],
) -> std::io::Result<(Vec<u8>, Head, Vec<u8>, bool)> {
    let s = up.reader.get_mut();
    s.write_all(&head.raw)?;
    s.write_all(body)?;
    let mut interim = Vec::new();
    loop {
        let resp = read_head(&mut up.reader, false)?
            .ok_or_else(|| bad("server closed without answering".into()))?;
        if (100..200).contains(&resp.status) && resp.status != 101 {
            interim.extend_from_slice(&resp.raw);
            continue;
        }
        let (rbody, to_eof) = read_response_body(&mut up.reader, &resp, &head.method)?;
        return Ok((interim, resp, rbody, to_eof));
    }
}

/// Serves one client connection until either side closes or a fault ends it.
fn serve(shared: &Shared, client: TcpStream) {
    let _ = client.set_nodelay(true);
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut from_client = BufReader::new(read_half);
    let mut to_client = client;
    let mut upstream: Option<Upstream> = None;
    let c = &shared.counters;
    loop {
        let Ok(Some(head)) = read_head(&mut from_client, true) else {
            return;
        };
        let Ok(body) = read_request_body(&mut from_client, &head) else {
            return;
        };
        let n = c.requests.fetch_add(1, Ordering::SeqCst);
        let (fate, delay) = shared.draw();
        if !delay.is_zero() {
            c.delayed.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(delay);
        }
        match fate {
            Fate::Fail(Fault::ResetBefore) => {
                c.reset_before.fetch_add(1, Ordering::SeqCst);
                if let Some(up) = upstream.take() {
                    reset(up.reader.into_inner());
                }
                reset(to_client);
                return;
            }
            Fate::Fail(Fault::SlowDown) => {
                c.slow_down.fetch_add(1, Ordering::SeqCst);
                if to_client.write_all(&slow_down_response(n)).is_err() || head.closes() {
                    return;
                }
                continue;
            }
            Fate::Forward
            | Fate::Fail(Fault::ResetMidResponse)
            | Fate::Fail(Fault::CloseMidResponse) => {}
        }
        // Forward, on the kept connection or a new one; a kept one the
        // server closed while idle gets one retry on a fresh connection.
        let mut answer = None;
        for _ in 0..2 {
            let mut up = match upstream.take() {
                Some(u) => u,
                None => match connect(shared.target) {
                    Ok(u) => u,
                    Err(_) => break,
                },
            };
            match exchange(&mut up, &head, &body) {
                Ok(a) => {
                    answer = Some((a, up));
                    break;
                }
                Err(_) if up.reused => continue,
                Err(_) => break,
            }
        }
        let Some(((interim, resp, rbody, to_eof), mut up)) = answer else {
            // The server is gone or broke the exchange: so is this client.
            return;
        };
        c.forwarded.fetch_add(1, Ordering::SeqCst);
        let mut out = interim;
        out.extend_from_slice(&resp.raw);
        out.extend_from_slice(&rbody);
        if let Fate::Fail(f @ (Fault::ResetMidResponse | Fault::CloseMidResponse)) = fate {
            let _ = to_client.write_all(&out[..out.len() / 2]);
            if f == Fault::ResetMidResponse {
                c.reset_mid_response.fetch_add(1, Ordering::SeqCst);
                reset(up.reader.into_inner());
                reset(to_client);
            } else {
                c.close_mid_response.fetch_add(1, Ordering::SeqCst);
                let _ = to_client.shutdown(Shutdown::Both);
            }
            return;
        }
        if to_client.write_all(&out).is_err() {
            return;
        }
        if !(to_eof || resp.closes()) {
            up.reused = true;
            upstream = Some(up);
        }
        // The client was told (or asked) that the connection ends here.
        if to_eof || resp.closes() || head.closes() {
            let _ = to_client.shutdown(Shutdown::Write);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_read_whole_and_intact() {
        let raw = b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        let mut r = BufReader::new(&raw[..]);
        let mut out = Vec::new();
        read_chunked(&mut r, &mut out).unwrap();
        assert_eq!(out, &raw[..raw.len() - 4]);
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "NEXT");
    }

    #[test]
    fn heads_give_framing() {
        let raw =
            b"\r\nPUT /b/k HTTP/1.1\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc";
        let mut r = BufReader::new(&raw[..]);
        let h = read_head(&mut r, true).unwrap().unwrap();
        assert_eq!(h.method, "PUT");
        assert!(!h.closes());
        assert_eq!(read_request_body(&mut r, &h).unwrap(), b"abc");
        let raw = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nto the end";
        let mut r = BufReader::new(&raw[..]);
        let h = read_head(&mut r, false).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert!(h.closes());
        let (b, to_eof) = read_response_body(&mut r, &h, "GET").unwrap();
        assert_eq!((b.as_slice(), to_eof), (&b"to the end"[..], true));
    }

    #[test]
    fn faults_follow_the_seed() {
        let rates = FaultRates {
            reset_before: 0.2,
            slow_down: 0.2,
            reset_mid_response: 0.2,
            ..FaultRates::NONE
        };
        let fates = |seed| {
            let p = FaultProxy::start(1, seed, rates);
            (0..50).map(|_| p.shared.draw().0).collect::<Vec<_>>()
        };
        assert_eq!(fates(7), fates(7));
        assert_ne!(fates(7), fates(8));
        assert!(fates(7).contains(&Fate::Forward));
    }

    #[test]
    fn scripted_faults_come_first_and_heal_clears_them() {
        let p = FaultProxy::start(1, 1, FaultRates::NONE);
        p.inject_next(Fault::SlowDown);
        p.inject_next(Fault::CloseMidResponse);
        assert_eq!(p.shared.draw().0, Fate::Fail(Fault::SlowDown));
        assert_eq!(p.shared.draw().0, Fate::Fail(Fault::CloseMidResponse));
        assert_eq!(p.shared.draw().0, Fate::Forward);
        p.inject_next(Fault::ResetBefore);
        p.heal_all();
        assert_eq!(p.shared.draw().0, Fate::Forward);
    }
}
