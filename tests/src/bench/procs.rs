//! The release binaries the benchmark drives (`drd`, `drctl`), started as
//! real processes, and what /proc says about their CPU time and memory.

use anyhow::{bail, Context};
use drd_proto::pb;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The command that builds everything the benchmark needs.
pub const BUILD_CMD: &str = "cargo build --release --workspace --bins";

/// `drd` and `drctl` next to this executable (target/release/).
pub struct Bins {
    pub drd: PathBuf,
    pub drctl: PathBuf,
}

impl Bins {
    /// Finds both binaries, or says how to build them.
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("find the benchmark's own path")?;
        let dir = exe.parent().context("executable without a directory")?;
        let (drd, drctl) = (dir.join("drd"), dir.join("drctl"));
        for b in [&drd, &drctl] {
            if !b.exists() {
                bail!(
                    "{} not found next to the benchmark: build it first with `{BUILD_CMD}`",
                    b.display()
                );
            }
        }
        if cfg!(debug_assertions) {
            eprintln!(
                "WARNING: drd-bench is a debug build; figures are only meaningful from `--release`"
            );
        }
        Ok(Self { drd, drctl })
    }

    /// Runs `drctl --socket SOCKET ARGS…`; returns (exit code, stdout, stderr).
    pub fn drctl(&self, socket: &Path, args: &[&str]) -> (i32, String, String) {
        match Command::new(&self.drctl)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .output()
        {
            Ok(out) => (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ),
            Err(e) => (-1, String::new(), format!("run drctl: {e}")),
        }
    }
}

/// One running `drd`, killed (and reaped) when dropped.
pub struct Proc {
    pub name: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `drd --config CONFIG`, logging to `LOG` at info level (or at
    /// `DRD_BENCH_LOG`, e.g. `drd=trace` when profiling).
    pub fn spawn(bins: &Bins, d: &drd_tests::Daemon) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&d.log)
            .with_context(|| format!("open {}", d.log.display()))?;
        let child = Command::new(&bins.drd)
            .arg("--config")
            .arg(&d.config)
            .env(
                "DRD_LOG",
                std::env::var("DRD_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            // As deploy/systemd/drd.service runs it (see the comment there),
            // so that the RSS and CPU figures are the deployed daemon's.
            .env("MALLOC_ARENA_MAX", "2")
            .envs(d.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn drd")?;
        Ok(Self {
            name: d.name.clone(),
            socket: d.socket.clone(),
            log: d.log.clone(),
            child: Some(child),
        })
    }

    /// Starts the daemon and waits until its control socket answers.
    pub async fn start_ready(bins: &Bins, d: &drd_tests::Daemon) -> anyhow::Result<Self> {
        let mut p = Self::spawn(bins, d)?;
        p.wait_ready().await?;
        Ok(p)
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.status().await.is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!(
                    "{} exited with {st} during start:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("{} not ready within 30 s:\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub async fn status(&self) -> anyhow::Result<pb::StatusResponse> {
        let mut c = drd::api::control::connect(&self.socket).await?;
        Ok(c.status(pb::StatusRequest {}).await?.into_inner())
    }

    pub async fn stream(&self) -> anyhow::Result<pb::StreamStatus> {
        let s = self.status().await?;
        s.streams.into_iter().next().context("no stream in status")
    }

    /// User + system CPU seconds so far (/proc/PID/stat).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// Peak resident set size in KiB (VmHWM).
    pub fn hwm_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// utime + stime of `pid` in seconds (the fleet harness reads it the same way).
pub use drd_tests::fleet::cpu_seconds;

/// A `KEY: N kB` line of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds used by this thread so far (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu_seconds() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |ts| ts.tv_sec() as f64 + ts.tv_nsec() as f64 / 1e9)
}

/// User + system CPU seconds of all reaped children (getrusage).
pub fn children_cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(ru) = getrusage(UsageWho::RUSAGE_CHILDREN) else {
        return 0.0;
    };
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    tv(ru.user_time()) + tv(ru.system_time())
}
