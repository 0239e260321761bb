//! What a chaos run records, and the summary table over many runs. The
//! table goes to stderr directly (not through the test harness's capture,
//! so it shows in the log of a passing `cargo test`) and to a file under
//! the target directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Prefix of the skip reasons recorded by [`RunReport::unavailable`].
pub const UNAVAILABLE: &str = "unavailable here: ";

/// One run's record.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub seed: u64,
    /// Faults injected, by kind name.
    pub faults: BTreeMap<&'static str, u64>,
    /// Faults the scheduler picked but could not inject, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// WAL bytes written at the primaries (the stream's final length).
    pub wal_bytes: u64,
    /// Bytes the old primaries wrote past a fork (quarantined at rejoin).
    pub cut_bytes: u64,
    /// Bytes through the proxies, both directions, TLS included.
    pub link_bytes: u64,
    /// Time from lifting each fault until the replica was durable at
    /// everything written when it was lifted.
    pub recoveries: Vec<(&'static str, Duration)>,
    pub violations: Vec<String>,
    /// Largest VmRSS seen per site (KiB): Verona, Rochester.
    pub max_rss_kib: [u64; 2],
    pub failovers: u64,
    pub switchovers: u64,
    pub duration: Duration,
    /// The replica logged the broken early-ack mode's WARN (only looked
    /// for when the run asked for that mode).
    pub unsafe_mode_seen: bool,
    /// A run of the deliberately broken build: violations are the point.
    pub expect_violations: bool,
}

impl RunReport {
    pub fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    pub fn skip(&mut self, reason: impl Into<String>) {
        *self.skipped.entry(reason.into()).or_default() += 1;
    }

    /// A fault this machine cannot inject (a missing tool, no root, no
    /// tmpfs), as opposed to one the schedule made pointless: the CI mode
    /// fails on these, since a fault kind that silently never runs proves
    /// nothing.
    pub fn unavailable(&mut self, reason: impl Into<String>) {
        self.skip(format!("{UNAVAILABLE}{}", reason.into()));
    }

    pub fn violation(&mut self, v: impl Into<String>) {
        let v = v.into();
        if self.expect_violations {
            err_line(&format!(
                "  expected violation (deliberately broken build, seed {}): {v}",
                self.seed
            ));
        } else {
            err_line(&format!("  VIOLATION (seed {}): {v}", self.seed));
        }
        self.violations.push(v);
    }

    pub fn max_recovery(&self) -> Option<(&'static str, Duration)> {
        self.recoveries.iter().copied().max_by_key(|r| r.1)
    }

    /// One line for the run.
    pub fn line(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect();
        format!(
            "seed {:>20}: {:>5.1} s, {} faults [{}], {:.1} MiB written, {} recoveries (max {}), RSS max {}/{} MiB, violations {}",
            self.seed,
            self.duration.as_secs_f64(),
            self.faults.values().sum::<u64>(),
            faults.join(" "),
            mib(self.wal_bytes),
            self.recoveries.len(),
            self.max_recovery()
                .map_or("-".into(), |(k, d)| format!("{:.2} s {k}", d.as_secs_f64())),
            self.max_rss_kib[0] / 1024,
            self.max_rss_kib[1] / 1024,
            self.violations.len()
        )
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Writes a line to the process's stderr directly: `eprintln!` inside a
/// test is captured (shown only when the test fails); this is not.
pub fn err_line(s: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{s}");
    let _ = e.flush();
}

/// Runs together.
#[derive(Debug, Default)]
pub struct Summary {
    pub runs: Vec<RunReport>,
    pub duration: Duration,
}

impl Summary {
    /// The faults this machine could not inject, with how often (see
    /// [`RunReport::unavailable`]).
    pub fn unavailable(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for (why, n) in self.runs.iter().flat_map(|r| &r.skipped) {
            if why.starts_with(UNAVAILABLE) {
                *all.entry(why.clone()).or_default() += n;
            }
        }
        all
    }

    pub fn violations(&self) -> usize {
        self.runs.iter().map(|r| r.violations.len()).sum()
    }

    pub fn table(&self, title: &str) -> String {
        let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
        let mut skipped: BTreeMap<&str, u64> = BTreeMap::new();
        for r in &self.runs {
            for (k, n) in &r.faults {
                *faults.entry(k).or_default() += n;
            }
            for (k, n) in &r.skipped {
                *skipped.entry(k.as_str()).or_default() += n;
            }
        }
        let sum = |f: fn(&RunReport) -> u64| self.runs.iter().map(f).sum::<u64>();
        let recoveries: Vec<(u64, &str, Duration)> = self
            .runs
            .iter()
            .flat_map(|r| r.recoveries.iter().map(move |(k, d)| (r.seed, *k, *d)))
            .collect();
        let max_rec = recoveries.iter().max_by_key(|r| r.2);
        let mean_rec = if recoveries.is_empty() {
            0.0
        } else {
            recoveries.iter().map(|r| r.2.as_secs_f64()).sum::<f64>() / recoveries.len() as f64
        };
        let max_rss = self
            .runs
            .iter()
            .map(|r| r.max_rss_kib[0].max(r.max_rss_kib[1]))
            .max()
            .unwrap_or(0);
        let seeds: Vec<u64> = self.runs.iter().map(|r| r.seed).collect();
        let seed_range = seed_ranges(&seeds);
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("| {k:<38} | {v:<44} |\n"));
        let line = format!("+{}+{}+\n", "-".repeat(40), "-".repeat(46));
        let mut out = format!("\n=== drd chaos summary: {title} ===\n{line}");
        row("runs", self.runs.len().to_string());
        row("seeds", seed_range);
        row("duration", format!("{:.1} s", self.duration.as_secs_f64()));
        row(
            "faults injected (total)",
            faults.values().sum::<u64>().to_string(),
        );
        for (k, n) in &faults {
            row(&format!("  {k}"), n.to_string());
        }
        for (k, n) in &skipped {
            row(&format!("  skipped: {k}"), n.to_string());
        }
        row(
            "failovers / switchovers",
            format!("{} / {}", sum(|r| r.failovers), sum(|r| r.switchovers)),
        );
        row(
            "WAL bytes in the final log",
            format!("{:.1} MiB", mib(sum(|r| r.wal_bytes))),
        );
        row(
            "WAL bytes cut at forks (quarantined)",
            format!("{:.1} MiB", mib(sum(|r| r.cut_bytes))),
        );
        row(
            "bytes shipped (links, both ways, TLS)",
            format!("{:.1} MiB", mib(sum(|r| r.link_bytes))),
        );
        row("recoveries", recoveries.len().to_string());
        row(
            "max recovery time",
            max_rec.map_or("-".into(), |(s, k, d)| {
                format!("{:.2} s ({k}, seed {s})", d.as_secs_f64())
            }),
        );
        row("mean recovery time", format!("{mean_rec:.2} s"));
        row(
            "max RSS of a daemon",
            format!("{:.1} MiB", max_rss as f64 / 1024.0),
        );
        row("violations", self.violations().to_string());
        out.push_str(&t);
        out.push_str(&line);
        for r in self.runs.iter().filter(|r| !r.violations.is_empty()) {
            out.push_str(&format!(
                "seed {} ({} violations; replay with DRD_CHAOS_SEED={}):\n",
                r.seed,
                r.violations.len(),
                r.seed
            ));
            for v in &r.violations {
                out.push_str(&format!("  - {v}\n"));
            }
        }
        out
    }

    /// Prints the table to stderr (uncaptured) and stdout, and writes it to
    /// `<target>/chaos/<name>.txt`; returns that path.
    pub fn emit(&self, name: &str, title: &str) -> Option<PathBuf> {
        let t = self.table(title);
        err_line(&t);
        println!("{t}");
        let dir = target_dir()?.join("chaos");
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join(format!("{name}.txt"));
        let mut body = t.clone();
        body.push_str("\nruns:\n");
        for r in &self.runs {
            body.push_str(&r.line());
            body.push('\n');
        }
        std::fs::write(&path, body).ok()?;
        err_line(&format!("chaos summary written to {}", path.display()));
        Some(path)
    }
}

/// Seeds with consecutive runs folded: `0..=15, 4711, 99`.
fn seed_ranges(seeds: &[u64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seeds.len() {
        let mut j = i;
        while j + 1 < seeds.len() && seeds[j + 1] == seeds[j] + 1 {
            j += 1;
        }
        parts.push(if j > i {
            format!("{}..={}", seeds[i], seeds[j])
        } else {
            seeds[i].to_string()
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// The cargo target directory (`target/<profile>/deps/<test>` → `target`).
pub fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.to_path_buf())
}
