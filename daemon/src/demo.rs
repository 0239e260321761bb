//! `drd demo`: a primary (Verona) and a replica (Rochester) as two real `drd`
//! processes on loopback, in a temporary directory, with a writer that
//! appends WAL-like data, and a live status table until Ctrl-C. At the end it
//! waits for the replica to catch up and compares every segment's SHA-256.

use crate::display;
use anyhow::{bail, Context};
use drd_proto::pb;
use rand::RngCore;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Directory for the demo's data (default: a fresh temporary directory,
    /// removed at exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// WAL write rate, MiB per second.
    #[arg(long, default_value_t = 8)]
    pub rate_mib: u64,
    /// Segment size, MiB (PostgreSQL's default is 16).
    #[arg(long, default_value_t = 16)]
    pub segment_mib: u64,
    /// Stop by itself after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    pub seconds: Option<u64>,
}

/// A child `drd` that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Daemon {
    name: &'static str,
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// PostgreSQL-style segment name for timeline 1.
fn segment_name(n: u64, segment_bytes: u64) -> String {
    let per_log = (0x1_0000_0000u64 / segment_bytes).max(1);
    format!("{:08X}{:08X}{:08X}", 1, n / per_log, n % per_log)
}

fn spawn(name: &'static str, dir: &Path, config: &str) -> anyhow::Result<Daemon> {
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(&conf, config)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let socket = dir.join(format!("{name}.sock"));
    let child = Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start drd")?;
    Ok(Daemon {
        name,
        child,
        socket,
    })
}

async fn status(socket: &Path) -> Option<pb::StatusResponse> {
    let mut c = crate::api::control::connect(socket).await.ok()?;
    c.status(pb::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Entry point of `drd demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.rate_mib == 0 || args.segment_mib == 0 {
        bail!("--rate-mib and --segment-mib must be at least 1");
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => {
            temp = tempfile::Builder::new().prefix("drd-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let wal = dir.join("verona/wal");
    std::fs::create_dir_all(&wal)?;
    // Rochester's database's WAL, shipped once it is primary.
    std::fs::create_dir_all(dir.join("rochester/wal"))?;
    let port = free_port()?;
    // Verona listens too: after a failover it rejoins as Rochester's replica.
    let verona_port = free_port()?;
    let d = dir.display();
    // mTLS, as in production: a CA and a certificate per node, what
    // `drctl certs init` writes.
    let certs = dir.join("tls");
    if !certs.join("ca.pem").exists() {
        crate::certs::init_dir(
            &certs,
            &["verona-db1".into(), "rochester-dr1".into()],
            30,
            false,
        )
        .context("cannot create the demo's certificates")?;
    }
    let tls = |node: &str| {
        format!(
            "[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{node}.pem\"\nkey = \"{c}/{node}.key\"\n\
             allowed_peers = [\"verona-db1\", \"rochester-dr1\"]\n",
            c = certs.display()
        )
    };
    let replica = spawn(
        "rochester",
        &dir,
        &format!(
            "node_id = \"rochester-dr1\"\ndata_dir = \"{d}/rochester/data\"\ninitial_role = \"replica\"\n\
             [control]\nsocket = \"{d}/rochester.sock\"\n\
             [replica]\nlisten = \"127.0.0.1:{port}\"\n\
             [[stream]]\nname = \"ehr-prod\"\nwal_dir = \"{d}/rochester/wal\"\npeer = \"https://127.0.0.1:{verona_port}\"\n\
             peer_name = \"verona-db1\"\n{}",
            tls("rochester-dr1")
        ),
    )?;
    let primary = spawn(
        "verona",
        &dir,
        &format!(
            "node_id = \"verona-db1\"\ndata_dir = \"{d}/verona/data\"\ninitial_role = \"primary\"\n\
             [control]\nsocket = \"{d}/verona.sock\"\n\
             [replica]\nlisten = \"127.0.0.1:{verona_port}\"\n\
             [[stream]]\nname = \"ehr-prod\"\nwal_dir = \"{d}/verona/wal\"\npeer = \"https://127.0.0.1:{port}\"\n\
             peer_name = \"rochester-dr1\"\n{}",
            tls("verona-db1")
        ),
    )?;
    let daemons = [primary, replica];
    for dm in &daemons {
        let deadline = Instant::now() + Duration::from_secs(20);
        while status(&dm.socket).await.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not come up; see {}",
                    dm.name,
                    dir.join(format!("{}.log", dm.name)).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, wal) = (stop.clone(), written.clone(), wal.clone());
        let (rate, seg) = (args.rate_mib << 20, args.segment_mib << 20);
        std::thread::spawn(move || write_wal(&wal, rate, seg, &stop, &written))
    };

    let started = Instant::now();
    let until = args.seconds.map(|s| started + Duration::from_secs(s));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let mut nodes = Vec::new();
        for dm in &daemons {
            if let Some(s) = status(&dm.socket).await {
                nodes.push(s);
            }
        }
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "drd demo — Verona (primary) → Rochester (replica) over mTLS, stream ehr-prod, {} elapsed\n\
             data: {d}   writer: {} MiB/s, {} written\n\
             try: drctl --socket {d}/verona.sock status   |   Ctrl-C stops\n\n",
            humantime(started.elapsed()),
            args.rate_mib,
            display::bytes(written.load(Ordering::Relaxed)),
        ));
        out.push_str(&display::status_table(&nodes));
        print!("{out}");
        if !tty {
            println!();
        }
        std::io::stdout().flush().ok();
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            break;
        }
        if writer.is_finished() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the WAL writer panicked"))??;

    println!("\nwriter stopped; waiting for the replica to catch up…");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = status(&daemons[0].socket).await;
        let caught_up = p
            .as_ref()
            .and_then(|p| p.streams.first())
            .is_some_and(|s| s.connected && s.lag_bytes == 0);
        if caught_up {
            break;
        }
        if Instant::now() > deadline {
            bail!("the replica did not catch up within 60 s; see the logs in {d}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let landing = crate::config::landing_dir(
        &dir.join("rochester/data"),
        &drd_proto::StreamName::new("ehr-prod")?,
    );
    let (same, total) = compare(&wal, &landing)?;
    println!("caught up: lag 0 bytes. {same}/{total} segments byte-identical at the replica (compared byte for byte).");
    drop(daemons);
    if same != total {
        bail!("{} segments differ", total - same);
    }
    Ok(())
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// Appends random bytes to segment files at `rate` bytes/s in writes of
/// 8 KiB–256 KiB, starting a new segment every `seg` bytes.
fn write_wal(
    wal: &Path,
    rate: u64,
    seg: u64,
    stop: &AtomicBool,
    written: &AtomicU64,
) -> anyhow::Result<()> {
    let mut rng = rand::rng();
    let mut buf = vec![0u8; 256 * 1024];
    let started = Instant::now();
    let mut total = 0u64;
    let mut n = 1u64;
    let mut file = std::fs::File::create(wal.join(segment_name(n, seg)))?;
    let mut in_seg = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let len = (8 * 1024 + (rng.next_u32() as u64 % (248 * 1024))).min(seg - in_seg);
        rng.fill_bytes(&mut buf[..len as usize]);
        file.write_all(&buf[..len as usize])?;
        total += len;
        in_seg += len;
        written.store(total, Ordering::Relaxed);
        if in_seg == seg {
            n += 1;
            file = std::fs::File::create(wal.join(segment_name(n, seg)))?;
            in_seg = 0;
        }
        let due = Duration::from_secs_f64(total as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// Counts segments of `src` whose bytes match the replica's copy (complete
/// `NAME`, or `NAME.partial` for the active one).
fn compare(src: &Path, landing: &Path) -> anyhow::Result<(usize, usize)> {
    let mut same = 0;
    let mut total = 0;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        let theirs = landing.join(&name);
        let theirs = if theirs.exists() {
            theirs
        } else {
            landing.join(format!("{}.partial", name.to_string_lossy()))
        };
        total += 1;
        if theirs.exists() && std::fs::read(e.path())? == std::fs::read(&theirs)? {
            same += 1;
        }
    }
    Ok((same, total))
}
