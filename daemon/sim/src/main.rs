//! drd-sim: the real drd-core rules under a deterministic simulation.
//!
//! Each seed is one schedule (see `world.rs`): 2 to 4 nodes and 1 to 4
//! streams, each stream between its own two nodes (a quarter of the seeds,
//! and every seed with `--legacy`, keep the first shape: 2 nodes, 1
//! stream, the same schedule as before for the same seed), a
//! seeded scheduler, a network that loses, duplicates, reorders, delays and
//! partitions, a disk that loses unsynced writes at a power cut and tears
//! them, rots bytes at rest and fills up, and an operator who fails over,
//! switches over, rejoins, pauses and verifies at random moments. After
//! every step the invariants are checked; after the faults heal, the lag
//! must reach 0. Seeds run single-threaded each, in parallel across seeds.
//!
//! ```text
//! drd-sim --seeds 10000                 # seeds 0..10000
//! drd-sim --seeds 500000 --start 500000 # a disjoint range
//! drd-sim --seed 42 --trace             # replay one schedule step by step
//! drd-sim --seed 5488 --legacy          # a seed found with 2 nodes, 1 stream
//! drd-sim --io-faults --seeds 10000     # flush steps fail too (EIO)
//! drd-sim --mutate ack-before-data-sync --seeds 2000   # must find violations
//! drd-sim --list-mutations
//! ```
//!
//! Exit status: 0 no violation, 1 violations found, 2 usage error.

mod world;

use clap::Parser;
use drd_core::mutation::{self, Mutation};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use world::{Outcome, World, FAULTS, IO_ERRORS};

#[derive(Parser, Debug)]
#[command(
    name = "drd-sim",
    version,
    about = "Deterministic simulation of drd's protocol core"
)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run one seed (with --trace: step by step).
    #[arg(long)]
    seed: Option<u64>,
    /// Print every step of the schedule (with --seed).
    #[arg(long)]
    trace: bool,
    /// Plant a known bug in the core (see --list-mutations).
    #[arg(long)]
    mutate: Option<String>,
    /// List the planted bugs and exit.
    #[arg(long)]
    list_mutations: bool,
    /// Worker threads (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Stop at the first violating seed (for mutation checks).
    #[arg(long)]
    stop_at_first: bool,
    /// Every seed in the first simulator's shape (2 nodes, 1 stream): the
    /// same schedule as before many nodes and streams (a quarter of the
    /// seeds have it anyway), for replaying seeds found then.
    #[arg(long)]
    legacy: bool,
    /// Also fail flush steps (EIO): the tail's fdatasync (its unsynced
    /// pages may be dropped), a sealed file's fdatasync before its rename,
    /// the catalog commit. Off by default: the soaked schedules stay as
    /// they were.
    #[arg(long)]
    io_faults: bool,
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    sim_us: u64,
    events: u64,
    faults: [u64; FAULTS.len()],
    io_errors: [u64; IO_ERRORS.len()],
    failovers: u64,
    switchovers: u64,
    switchovers_rolled_back: u64,
    rejoins: u64,
    failovers_refused: u64,
    fence_not_reached: u64,
    fence_unknown: u64,
    rejoins_refused: u64,
    rejoins_partly_quarantined: u64,
    verifies: u64,
    bytes: u64,
    nodes: u64,
    streams: u64,
    node_streams: u64,
    many: u64,
    stalls: u64,
    violating: Vec<(u64, String)>,
    violations: u64,
}

impl Totals {
    fn add(&mut self, seed: u64, o: &Outcome) {
        let violations = u64::from(!o.violations.is_empty());
        self.absorb(Totals {
            seeds: 1,
            sim_us: o.sim_us,
            events: o.events,
            faults: o.faults,
            io_errors: o.io_errors,
            failovers: o.failovers,
            switchovers: o.switchovers,
            switchovers_rolled_back: o.switchovers_rolled_back,
            rejoins: o.rejoins,
            failovers_refused: o.failovers_refused,
            fence_not_reached: o.fence_not_reached,
            fence_unknown: o.fence_unknown,
            rejoins_refused: o.rejoins_refused,
            rejoins_partly_quarantined: o.rejoins_partly_quarantined,
            verifies: o.verifies,
            bytes: o.bytes_written,
            nodes: o.nodes,
            streams: o.streams,
            node_streams: o.node_streams,
            many: u64::from(o.nodes > 2 || o.streams > 1),
            stalls: u64::from(o.stalled_on_detected_corruption),
            violating: o
                .violations
                .first()
                .map(|v| (seed, v.clone()))
                .into_iter()
                .collect(),
            violations,
        });
    }

    /// Adds another thread's (or seed's) totals; keeps the first ten
    /// violating seeds in seed order.
    fn absorb(&mut self, l: Totals) {
        self.seeds += l.seeds;
        self.sim_us += l.sim_us;
        self.events += l.events;
        for (a, b) in self.faults.iter_mut().zip(l.faults) {
            *a += b;
        }
        for (a, b) in self.io_errors.iter_mut().zip(l.io_errors) {
            *a += b;
        }
        self.failovers += l.failovers;
        self.switchovers += l.switchovers;
        self.switchovers_rolled_back += l.switchovers_rolled_back;
        self.rejoins += l.rejoins;
        self.failovers_refused += l.failovers_refused;
        self.fence_not_reached += l.fence_not_reached;
        self.fence_unknown += l.fence_unknown;
        self.rejoins_refused += l.rejoins_refused;
        self.rejoins_partly_quarantined += l.rejoins_partly_quarantined;
        self.verifies += l.verifies;
        self.bytes += l.bytes;
        self.nodes += l.nodes;
        self.streams += l.streams;
        self.node_streams += l.node_streams;
        self.many += l.many;
        self.stalls += l.stalls;
        self.violations += l.violations;
        self.violating.extend(l.violating);
        self.violating.sort();
        self.violating.truncate(10);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list_mutations {
        for (_, name, what) in Mutation::ALL {
            println!("{name:<28} {what}");
        }
        return ExitCode::SUCCESS;
    }
    let planted = match args.mutate.as_deref().map(|n| (n, Mutation::from_name(n))) {
        None => None,
        Some((_, Some(m))) => Some(m),
        Some((n, None)) => {
            eprintln!("drd-sim: unknown mutation {n:?}; see `drd-sim --list-mutations`");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = args.seed {
        mutation::plant(planted);
        let o = World::new(seed, args.trace, args.legacy, args.io_faults).run();
        let mut t = Totals::default();
        t.add(seed, &o);
        print_table(&t, planted, args.io_faults, 0.0);
        for v in &o.violations {
            println!("violation: {v}");
        }
        println!("seeds 1, violations {}", t.violations);
        return if t.violations > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(args.start);
    let end = args.start.saturating_add(args.seeds);
    let totals = Mutex::new(Totals::default());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                mutation::plant(planted);
                let mut local = Totals::default();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let o = World::new(seed, false, args.legacy, args.io_faults).run();
                    local.add(seed, &o);
                    if !o.violations.is_empty() && args.stop_at_first {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if progress && seed.is_multiple_of(10_000) {
                        eprint!(
                            "\rdrd-sim: seed {seed} ({:.0} s)   ",
                            t0.elapsed().as_secs_f64()
                        );
                    }
                }
                #[allow(clippy::unwrap_used)] // a poisoned lock is a bug: a panic of a seed
                let mut t = totals.lock().unwrap();
                t.absorb(local);
            });
        }
    });
    if progress {
        eprintln!();
    }
    #[allow(clippy::unwrap_used)]
    let t = totals.into_inner().unwrap();
    print_table(&t, planted, args.io_faults, t0.elapsed().as_secs_f64());
    for (seed, v) in &t.violating {
        println!("violation at seed {seed}: {v}");
        println!(
            "  replay: drd-sim --seed {seed} --trace{}{}{}",
            if args.legacy { " --legacy" } else { "" },
            if args.io_faults { " --io-faults" } else { "" },
            planted
                .map(|m| format!(" --mutate {}", m.name()))
                .unwrap_or_default()
        );
    }
    println!("seeds {}, violations {}", t.seeds, t.violations);
    if t.violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_table(t: &Totals, planted: Option<Mutation>, io_faults: bool, secs: f64) {
    let row = |k: &str, v: String| println!("  {k:<36} {v:>14}");
    println!(
        "drd-sim summary{}",
        planted
            .map(|m| format!(" (planted bug: {})", m.name()))
            .unwrap_or_default()
    );
    row("seeds", t.seeds.to_string());
    row("simulated hours", format!("{:.2}", t.sim_us as f64 / 3.6e9));
    row("events", t.events.to_string());
    row("nodes simulated", t.nodes.to_string());
    row("streams simulated", t.streams.to_string());
    row("node-streams", t.node_streams.to_string());
    row("seeds with >2 nodes or >1 stream", t.many.to_string());
    row("WAL bytes written", t.bytes.to_string());
    let total: u64 = t.faults.iter().sum();
    row("faults", total.to_string());
    for (name, n) in FAULTS.iter().zip(t.faults) {
        row(&format!("  {name}"), n.to_string());
    }
    if io_faults {
        let total: u64 = t.io_errors.iter().sum();
        row("I/O errors (--io-faults)", total.to_string());
        for (name, n) in IO_ERRORS.iter().zip(t.io_errors) {
            row(&format!("  {name}"), n.to_string());
        }
    }
    // Each line counts operations that ended that way; the indented
    // lines split the line above them.
    row("failovers (promoted)", t.failovers.to_string());
    row("  old primary not reached", t.fence_not_reached.to_string());
    row("  old primary's fence unknown", t.fence_unknown.to_string());
    row("failovers refused", t.failovers_refused.to_string());
    row("switchovers (promoted)", t.switchovers.to_string());
    row(
        "switchovers rolled back",
        t.switchovers_rolled_back.to_string(),
    );
    row("rejoins (rejoined)", t.rejoins.to_string());
    row("rejoins refused", t.rejoins_refused.to_string());
    row(
        "rejoins stopped in quarantine",
        t.rejoins_partly_quarantined.to_string(),
    );
    row("verifies", t.verifies.to_string());
    row("stalled on detected corruption", t.stalls.to_string());
    row("seeds with violations", t.violations.to_string());
    if secs > 0.0 {
        row("wall seconds", format!("{secs:.1}"));
    }
}
