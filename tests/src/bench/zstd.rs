//! Issue 9's zstd figures: the level-1 ratio and speed on WAL cut into
//! drd's 1 MiB chunks (the same functions drd's primary and replica call),
//! and drd's catch-up with `compression = "zstd"` against `"none"` — on
//! real WAL from PostgreSQL under pgbench ([`crate::pgwal`]) and on the
//! random backlog. Without PostgreSQL the reason is printed and only the
//! random data is measured.

use crate::pgwal::{self, Phase};
use crate::procs::Bins;
use crate::runs::{self, CatchUp};
use crate::stats::Row;
use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

/// drd's default `tuning.chunk_bytes`: the unit zstd compresses.
const CHUNK: usize = 1 << 20;
/// The level measured: drd's default `compression_level`.
const LEVEL: i32 = 1;
/// pgbench scale and timed-run length (the whole generation stays under a
/// minute on a 2-core machine).
const PGBENCH_SCALE: u32 = 10;
const PGBENCH_SECS: u32 = 20;
const GIB: f64 = (1u64 << 30) as f64;
/// Catch-ups per setting and data set (a few seconds each at this size).
const ROUNDS: usize = 3;

/// zstd over one set of files, chunk by chunk.
pub struct Ratio {
    pub what: String,
    pub bytes: u64,
    /// Payload bytes as drd would send them (a chunk zstd cannot shrink
    /// goes as it is).
    pub wire: u64,
    /// Single-thread seconds spent compressing and decompressing.
    pub compress_s: f64,
    pub decompress_s: f64,
}

impl Ratio {
    pub fn ratio(&self) -> f64 {
        self.bytes as f64 / self.wire.max(1) as f64
    }
    pub fn compress_mb_s(&self) -> f64 {
        self.bytes as f64 / self.compress_s.max(1e-9) / 1e6
    }
    /// Over the chunks that were compressed (the others cost nothing).
    pub fn decompress_mb_s(&self, compressed_bytes: u64) -> f64 {
        compressed_bytes as f64 / self.decompress_s.max(1e-9) / 1e6
    }
}

/// Compresses every 1 MiB chunk of `files` at [`LEVEL`] and decompresses it
/// again, checking the bytes; returns the ratio and times and the bytes of
/// the chunks that compression shrank.
pub fn ratio(what: &str, files: &[PathBuf]) -> anyhow::Result<(Ratio, u64)> {
    let mut r = Ratio {
        what: what.into(),
        bytes: 0,
        wire: 0,
        compress_s: 0.0,
        decompress_s: 0.0,
    };
    let mut shrunk = 0;
    for f in files {
        let data = std::fs::read(f).with_context(|| format!("read {}", f.display()))?;
        for chunk in data.chunks(CHUNK) {
            let t = Instant::now();
            let z = drd_proto::zstd_compress(chunk, LEVEL);
            r.compress_s += t.elapsed().as_secs_f64();
            r.bytes += chunk.len() as u64;
            match z {
                Some(z) => {
                    r.wire += z.len() as u64;
                    shrunk += chunk.len() as u64;
                    let t = Instant::now();
                    let back = drd_proto::zstd_decompress(&z, chunk.len())
                        .map_err(|e| anyhow::anyhow!("decompress: {e}"))?;
                    r.decompress_s += t.elapsed().as_secs_f64();
                    if back != chunk {
                        bail!("zstd round trip changed a chunk of {}", f.display());
                    }
                }
                None => r.wire += chunk.len() as u64,
            }
        }
    }
    Ok((r, shrunk))
}

/// One drd catch-up of a backlog with one `compression` setting.
pub struct Run {
    pub what: String,
    pub cu: CatchUp,
    /// `drd_shipped_wire_bytes_total` at the end (None if not scraped).
    pub wire: Option<u64>,
}

/// A fresh mTLS pair with `compression`, the files copied into its WAL dir
/// as the backlog, timed by [`runs::catch_up`] (which also checks the
/// replica's copy byte for byte).
pub async fn catch_up(
    bins: &Bins,
    what: &str,
    files: &[PathBuf],
    compression: &'static str,
) -> anyhow::Result<Run> {
    let pair = drd_tests::Pair::with_stream_keys("", &format!("compression = \"{compression}\""));
    let metrics = drd_tests::free_port();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&pair.primary.config)?
        .write_all(format!("\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n").as_bytes())?;
    let mut total = 0;
    for f in files {
        let name = f.file_name().context("file without a name")?;
        total += std::fs::copy(f, pair.wal.join(name))?;
    }
    let (running, cu) = runs::catch_up(bins, pair, total).await?;
    let wire = scrape(metrics, "drd_shipped_wire_bytes_total");
    drop(running);
    Ok(Run {
        what: what.into(),
        cu,
        wire,
    })
}

/// Two runs of one setting as one: bytes, seconds, CPU and wire bytes
/// summed (so MB/s and core-s/GiB are over both), peak RSS the larger.
fn add(a: Run, b: Run) -> Run {
    Run {
        what: a.what,
        cu: CatchUp {
            bytes: a.cu.bytes + b.cu.bytes,
            secs: a.cu.secs + b.cu.secs,
            cpu_primary: a.cu.cpu_primary + b.cu.cpu_primary,
            cpu_replica: a.cu.cpu_replica + b.cu.cpu_replica,
            hwm_primary_kib: a.cu.hwm_primary_kib.max(b.cu.hwm_primary_kib),
            hwm_replica_kib: a.cu.hwm_replica_kib.max(b.cu.hwm_replica_kib),
        },
        wire: a.wire.zip(b.wire).map(|(x, y)| x + y),
    }
}

/// A counter's value from a drd's `/metrics` (the sum over its labels).
fn scrape(port: u16, metric: &str) -> Option<u64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

/// Everything the zstd part measured.
pub struct Figures {
    /// The pgbench WAL's origin, or why there is none.
    pub pg: Result<String, String>,
    pub ratios: Vec<(Ratio, u64)>,
    pub runs: Vec<Run>,
    /// `pgbackrest archive-push` of the pgbench WAL (issue 20's peer), or
    /// why it was not measured.
    pub pgbackrest: Result<crate::pgbackrest::Push, String>,
}

/// Generates the pgbench WAL (if PostgreSQL is there) and a random backlog
/// of `backlog_mib`, measures the ratios and runs each catch-up with zstd
/// off and on.
pub async fn measure(bins: &Bins, backlog_mib: u64) -> anyhow::Result<Figures> {
    let mut sets: Vec<(String, Vec<PathBuf>)> = Vec::new();
    let mut ratios = Vec::new();
    eprintln!(
        "zstd: PostgreSQL WAL (pgbench -i -s {PGBENCH_SCALE}, then pgbench -T {PGBENCH_SECS})…"
    );
    let pgwal =
        tokio::task::spawn_blocking(|| pgwal::generate(PGBENCH_SCALE, PGBENCH_SECS)).await?;
    let pg = match &pgwal {
        Ok(w) => {
            let all: Vec<PathBuf> = w.segments.iter().map(|(f, _)| f.clone()).collect();
            let of = |p: Phase| -> Vec<PathBuf> {
                w.segments
                    .iter()
                    .filter(|(_, q)| *q == p)
                    .map(|(f, _)| f.clone())
                    .collect()
            };
            let what = format!("pgbench WAL ({} segments)", all.len());
            ratios.push(ratio(&what, &all)?);
            ratios.push(ratio(
                "  of which pgbench -i (load, index)",
                &of(Phase::Init),
            )?);
            ratios.push(ratio(
                "  of which pgbench -T (TPC-B-like)",
                &of(Phase::Run),
            )?);
            sets.push((what, all));
            Ok(format!(
                "{}; {} segments of 16 MiB ({} from pgbench -i -s {PGBENCH_SCALE}, {} from pgbench -c 4 -j 2 -T {PGBENCH_SECS}: {}), generated in {:.0} s",
                w.version,
                w.segments.len(),
                of(Phase::Init).len(),
                of(Phase::Run).len(),
                w.tps,
                w.secs
            ))
        }
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("zstd: no PostgreSQL WAL ({why}); measuring random data only");
            Err(why)
        }
    };
    let random = runs::scratch("zstd-random")?;
    runs::write_backlog(random.path(), backlog_mib / 16)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(random.path())?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let what = format!("random backlog ({backlog_mib} MiB)");
    ratios.push(ratio(&what, &files)?);
    sets.push((what, files));
    let mut out = Vec::new();
    for (what, files) in &sets {
        // Off and on alternate, so a burst of load elsewhere on the shared
        // machine hits both; each side's runs are summed.
        let mut sums: [Option<Run>; 2] = [None, None];
        for round in 1..=ROUNDS {
            for (i, compression) in ["none", "zstd"].into_iter().enumerate() {
                eprintln!(
                    "zstd: catch-up of the {what} with compression = {compression:?} ({round}/{ROUNDS})…"
                );
                let r = catch_up(bins, what, files, compression).await?;
                sums[i] = Some(match sums[i].take() {
                    None => r,
                    Some(sum) => add(sum, r),
                });
            }
        }
        out.extend(sums.into_iter().flatten());
    }
    let pgbackrest = match &pgwal {
        Err(_) => Err("no PostgreSQL WAL".to_string()),
        Ok(_) if crate::pgbackrest::version().is_none() => {
            Err("pgbackrest not installed (`. deploy/dev/setup.sh && drd_setup bench`)".to_string())
        }
        Ok(w) => {
            eprintln!(
                "zstd: pgbackrest archive-push of the {} pgbench segments…",
                w.segments.len()
            );
            let segs: Vec<PathBuf> = w.segments.iter().map(|(f, _)| f.clone()).collect();
            let data = w.data.clone();
            let dir = runs::scratch("pgbackrest")?;
            let p = dir.path().to_path_buf();
            let r = tokio::task::spawn_blocking(move || {
                crate::pgbackrest::archive_push(&data, &segs, &p)
            })
            .await?;
            drop(dir);
            Ok(r?)
        }
    };
    drop(pgwal);
    Ok(Figures {
        pg,
        ratios,
        runs: out,
        pgbackrest,
    })
}

/// The result table's rows.
pub fn rows(f: &Figures) -> Vec<Row> {
    let mut rows = Vec::new();
    let random = f
        .ratios
        .iter()
        .find(|(r, _)| r.what.starts_with("random"))
        .map(|(r, _)| r);
    for (r, shrunk) in &f.ratios {
        rows.push(Row::new(
            &format!("zstd-{LEVEL} ratio, {}", r.what),
            format!(
                "{:.2}x ({:.0} → {:.0} MiB)",
                r.ratio(),
                r.bytes as f64 / (1 << 20) as f64,
                r.wire as f64 / (1 << 20) as f64
            ),
            format!(
                "compress {:.0} MB/s, decompress {}",
                r.compress_mb_s(),
                if *shrunk > 0 {
                    format!("{:.0} MB/s", r.decompress_mb_s(*shrunk))
                } else {
                    "- (nothing shrank: sent as is)".into()
                }
            ),
            match random {
                Some(rand) if !std::ptr::eq(rand, r) => {
                    format!("{:.1}x random's", r.ratio() / rand.ratio())
                }
                _ => "-".into(),
            },
            "-",
            None,
        ));
    }
    for pair in f.runs.chunks(2) {
        let [off, on] = pair else { continue };
        let mb = |r: &Run| r.cu.bytes as f64 / r.cu.secs / 1e6;
        let gib = |r: &Run| r.cu.bytes as f64 / GIB;
        let wire = |r: &Run| {
            r.wire.map_or("wire ?".to_string(), |w| {
                format!(
                    "wire {:.0} MiB",
                    w as f64 / ROUNDS as f64 / (1 << 20) as f64
                )
            })
        };
        rows.push(Row::new(
            &format!("catch-up {}, zstd vs none", on.what),
            format!(
                "{:.0} MB/s ({:.1} s, {} per run)",
                mb(on),
                on.cu.secs,
                wire(on)
            ),
            format!(
                "{:.0} MB/s ({:.1} s, {} per run)",
                mb(off),
                off.cu.secs,
                wire(off)
            ),
            format!("{:.2}x", mb(on) / mb(off)),
            "-",
            None,
        ));
        if on.what.starts_with("pgbench") {
            match &f.pgbackrest {
                Ok(p) => rows.push(Row::new(
                    "catch-up pgbench WAL vs pgbackrest archive-push",
                    format!("{:.0} MB/s (zstd off)", mb(off)),
                    format!(
                        "{:.0} MB/s ({} pushes, {:.1} s, {:.2} core-s/GiB)",
                        p.mb_per_s(),
                        p.segments,
                        p.secs,
                        p.cpu / (p.bytes as f64 / GIB)
                    ),
                    format!("{:.2}x", mb(off) / p.mb_per_s()),
                    ">= 2x",
                    Some(mb(off) >= 2.0 * p.mb_per_s()),
                )),
                Err(why) => rows.push(Row::new(
                    "catch-up pgbench WAL vs pgbackrest archive-push",
                    format!("{:.0} MB/s (zstd off)", mb(off)),
                    format!("not measured: {why}"),
                    "-".into(),
                    ">= 2x",
                    None,
                )),
            }
        }
        for (side, a, b) in [
            ("primary", on.cu.cpu_primary, off.cu.cpu_primary),
            ("replica", on.cu.cpu_replica, off.cu.cpu_replica),
        ] {
            rows.push(Row::new(
                &format!("  CPU per GiB, {side}, zstd vs none"),
                format!("{:.2} core-s/GiB", a / gib(on)),
                format!("{:.2} core-s/GiB", b / gib(off)),
                format!("{:.2}x", a / b.max(1e-6)),
                "-",
                None,
            ));
        }
    }
    rows
}

/// Notes under the table.
pub fn notes(f: &Figures) -> Vec<String> {
    let mut n = vec![match &f.pg {
        Ok(what) => format!("- zstd: PostgreSQL WAL from {what}; archived by archive_command (defaults: wal_level replica, full_page_writes on, wal_compression off; fsync off, which does not change the WAL)."),
        Err(why) => format!("- zstd: no PostgreSQL WAL measured: {why}. The random data's ratio is ~1.0 by construction (zstd cannot shrink it; drd sends such chunks as they are)."),
    }];
    n.push(format!(
        "- zstd ratio and speed: every {} KiB chunk compressed at level {LEVEL} and decompressed again on one core with drd's own functions (drd_proto::zstd_compress / zstd_decompress); decompress MB/s is over the chunks that shrank.",
        CHUNK >> 10
    ));
    if let Ok(p) = &f.pgbackrest {
        n.push(format!(
            "- pgbackrest: {}; `archive-push` of each pgbench segment in turn (as archive_command calls it) into a local repository, compress-type=none, archive-async=n, its files synced (pgbackrest's default); the stanza created offline from the generating cluster. CPU is all its processes'.",
            p.version
        ));
    }
    n.push(format!("- zstd catch-up: {ROUNDS} runs per setting, off and on alternating, each a fresh mTLS pair (default tuning, fsync on, the backlog in the page cache); seconds and CPU summed over the runs (CPU includes the primary's start-up); wire = the primary's drd_shipped_wire_bytes_total (chunk payload after compression). Loopback has no bandwidth limit, so compression cannot pay off in MB/s here; on a WAN link the wire bytes are what count."));
    n
}
