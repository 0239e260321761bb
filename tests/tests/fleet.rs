//! One DR site for a fleet (issue 18) with real `drd` processes: a hundred
//! streams from twenty primaries into one DR node over mTLS, one stream
//! failed over (and back) alone while the others keep shipping, every
//! stream failed over at once after the primaries died, and a primary that
//! ships a stream the DR node does not assign to it is refused.

use drd_tests::fleet::*;
use drd_tests::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Each test starts up to 21 daemons on a machine of two cores: they run
/// one at a time, or they would measure and time each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the steady writers of the hundred-stream run write.
const RUN: Duration = Duration::from_secs(25);

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_streams_from_twenty_primaries() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::new(20, 5, "");
    assert_eq!(fleet.streams.len(), 100);
    fleet.dr.start_ready().await;
    let sampler = Sampler::start(fleet.dr.pid());
    fleet.start_primaries().await;
    let started = Instant::now();
    let writers = SteadyWriters::start(fleet.primary_targets(), Pace::default());

    // Every stream ships while all run: each is durable past its first
    // chunks well before the writers stop.
    wait_for(
        "every stream durable past its first chunks",
        RUN,
        || async {
            let d = fleet.durable_positions().await;
            (d.len() == 100 && d.values().all(|&p| p >= 64 * 1024)).then_some(())
        },
    )
    .await;
    // Sample the lag each primary reports while the writers run.
    let mut worst_lag = (0u64, 0f64);
    while started.elapsed() < RUN {
        for p in &fleet.primaries {
            for s in stream_statuses(&p.daemon).await.unwrap().values() {
                worst_lag.0 = worst_lag.0.max(s.lag_bytes);
                worst_lag.1 = worst_lag.1.max(s.lag_seconds);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await; // sampling pace, not synchronisation
    }
    let totals = writers.finish();
    let drain = fleet.wait_durable(&totals, Duration::from_secs(120)).await;
    let res = sampler.finish();

    let st = stream_statuses(&fleet.dr).await.unwrap();
    assert_eq!(
        st.keys().cloned().collect::<BTreeSet<_>>(),
        fleet.streams.iter().map(|s| s.name.clone()).collect(),
        "dr1 reports every stream it receives"
    );
    for (name, s) in &st {
        assert!(
            s.peer.starts_with(&fleet.primary_of(name).daemon.name),
            "{name} came from {}, not its own primary",
            s.peer
        );
    }
    let segments = fleet.assert_all_identical();
    let bytes: u64 = totals.values().sum();
    println!(
        "fleet: dr1 peak RSS {:.1} MiB, peak open fds {}, CPU {:.1} s, {bytes} bytes in {segments} \
         segments, {} streams from {} primaries byte-identical; {:.0} s of writes, drained in {:.1} s, \
         worst lag seen {} bytes / {:.2} s",
        mib(res.peak_rss_kib),
        res.peak_fds,
        res.cpu_seconds,
        fleet.streams.len(),
        fleet.primaries.len(),
        RUN.as_secs_f64(),
        drain.as_secs_f64(),
        worst_lag.0,
        worst_lag.1,
    );
}
