//! `compression = "zstd"` between real `drd` processes over mTLS: the
//! replica's copy is byte-identical to the source, and a proxy on the link
//! counts fewer bytes than the data for compressible WAL — and no fewer for
//! incompressible WAL, or with compression off (so the count discriminates).

use drd_tests::*;
use rand::{RngCore, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

const MIB: usize = 1 << 20;
const SEG: usize = 8 * MIB;

/// WAL-like bytes: fixed-layout records, a growing counter and a few
/// random bytes each (zstd level 1 shrinks this several times).
fn write_compressible(dir: &Path, first: u64, count: u64, size: usize, seed: u64) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut i = 0u64;
    let mut total = 0;
    for n in first..first + count {
        let mut buf = Vec::with_capacity(size);
        while buf.len() < size {
            buf.extend_from_slice(&i.to_le_bytes());
            buf.extend_from_slice(b"UPDATE pgbench_accounts SET abalance = abalance + ");
            let mut r = [0u8; 6];
            rng.fill_bytes(&mut r);
            buf.extend_from_slice(&r);
            buf.extend_from_slice(&[0u8; 30]);
            i += 1;
        }
        buf.truncate(size);
        let mut f = std::fs::File::create(dir.join(seg_name(n))).unwrap();
        f.write_all(&buf).unwrap();
        total += size as u64;
    }
    total
}

/// Starts the pair, waits until the replica is durable at `total`, checks
/// the copy byte for byte; returns the bytes the proxy forwarded (both
/// directions: chunks, acks, TLS and HTTP/2 framing).
async fn ship(pair: &mut Pair, proxy: &proxy::Proxy, total: u64) -> u64 {
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    pair.wait_durable(total, Duration::from_secs(120)).await;
    let n = assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
    assert!(n >= 4, "only {n} segments compared");
    let r = pair.replica.stream().await.unwrap();
    assert_eq!(r.durable_position, total);
    proxy.forwarded.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_ships_compressible_wal_byte_identical_in_fewer_bytes() {
    let (mut pair, proxy) = Pair::proxied("", "compression = \"zstd\"").await;
    // Four sealed segments and an active one.
    let mut total = write_compressible(&pair.wal, 1, 4, SEG, 1);
    total += write_compressible(&pair.wal, 5, 1, 3 * MIB + 12_345, 2);
    let wire = ship(&mut pair, &proxy, total).await;
    println!(
        "zstd: {total} bytes of WAL crossed the link as {wire} bytes ({:.1}x smaller)",
        total as f64 / wire as f64
    );
    assert!(
        wire < total / 2,
        "zstd on: {wire} bytes on the link for {total} bytes of compressible WAL"
    );
    // The status counter stays the WAL payload shipped (uncompressed).
    assert_eq!(pair.primary.stream().await.unwrap().network_bytes, total);
    // The same segments again at a later point of the stream: the active
    // segment grows and seals while compression is on.
    let more = write_compressible(&pair.wal, 6, 1, 2 * MIB, 3);
    pair.wait_durable(total + more, Duration::from_secs(60))
        .await;
    assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
    let s = pair.replica.stream().await.unwrap();
    assert_eq!(s.sealed_segments, 5, "the old active segment was sealed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_off_sends_every_byte() {
    let (mut pair, proxy) = Pair::proxied("", "compression = \"none\"").await;
    let mut total = write_compressible(&pair.wal, 1, 4, SEG, 1);
    total += write_compressible(&pair.wal, 5, 1, 3 * MIB + 12_345, 2);
    let wire = ship(&mut pair, &proxy, total).await;
    println!("compression off: {total} bytes of WAL, {wire} bytes on the link");
    assert!(
        wire >= total,
        "compression off, yet only {wire} bytes on the link for {total} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_on_incompressible_wal_arrives_identical() {
    let (mut pair, proxy) =
        Pair::proxied("", "compression = \"zstd\"\ncompression_level = 3").await;
    let mut w = WalWriter::new(&pair.wal, 7);
    w.segments(1, 4, 4 * MIB);
    w.append(5, MIB + 1);
    let wire = ship(&mut pair, &proxy, w.total).await;
    println!(
        "zstd on random bytes: {} bytes, {wire} on the link",
        w.total
    );
    // Nothing to gain: the chunks went as they are (no expansion either
    // beyond framing).
    assert!(
        wire >= w.total,
        "{wire} bytes on the link for {} random bytes",
        w.total
    );
    assert!(
        (wire as f64) < 1.1 * w.total as f64,
        "{wire} bytes on the link for {} random bytes",
        w.total
    );
}
