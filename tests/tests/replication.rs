//! The core replication path with real `drd` processes on loopback: bytes
//! arrive identical, survive kill -9 of either side without bulk re-sends,
//! bad input is refused without writing, and memory stays bounded.

use bytes::Bytes;
use drd_proto::pb;
use drd_tests::*;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const MIB: usize = 1024 * 1024;
const SEG: usize = 16 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_256_mib_byte_identical_while_the_active_segment_grows() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 1);
    w.segments(1, 15, SEG);
    w.append(16, MIB);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;

    // Grow the active segment while the backlog is still in flight.
    let mut grew_during_transfer = 0;
    for _ in 0..15 {
        let durable = pair.primary.stream().await.unwrap().durable_position;
        if durable < w.total {
            grew_during_transfer += 1;
        }
        w.append(16, MIB);
        tokio::time::sleep(Duration::from_millis(20)).await; // pacing the writer, not synchronisation
    }
    // A newer segment seals number 16; number 17 stays active (partial).
    w.append(17, 123_457);
    assert!(w.total >= 256 * MIB as u64);
    pair.wait_durable(w.total, Duration::from_secs(180)).await;

    let n = assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
    let r = pair.replica.stream().await.unwrap();
    println!(
        "shipped {} bytes in {n} segments; active segment grew {grew_during_transfer} times during the transfer; replica durable {}",
        w.total, r.durable_position
    );
    assert!(n >= 17);
    assert!(
        grew_during_transfer > 0,
        "the active segment never grew during the transfer"
    );
    assert_eq!(r.durable_position, w.total);
    assert_eq!(r.sealed_segments, 16);
    assert!(pair
        .landing()
        .join(format!("{}.partial", seg_name(17)))
        .exists());
}

/// The durable position the replica announced in its last Welcome (log).
fn last_welcome_position(log: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rfind(|l| l.contains("resuming at the durable position"))?;
    let v = line.split("durable_position=").nth(1)?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_kill9_mid_segment_resumes_without_bulk_resend() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 2);
    w.segments(1, 12, SEG);
    w.append(13, 5 * MIB + 77);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;

    // Wait until the replica is mid-way through a segment, then kill it.
    let acked = wait_for(
        "replica mid-segment past 70 MiB",
        Duration::from_secs(120),
        || async {
            let s = pair.primary.stream().await.ok()?;
            (s.durable_position > 70 * MIB as u64 && s.durable_position % SEG as u64 != 0)
                .then_some(s.durable_position)
        },
    )
    .await;
    pair.replica.kill9();
    let acked_at_kill = pair
        .primary
        .stream()
        .await
        .unwrap()
        .durable_position
        .max(acked);

    pair.replica.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(180)).await;

    let resumed_at = last_welcome_position(&pair.replica.log).expect("welcome after restart");
    assert!(
        resumed_at >= acked_at_kill,
        "replica restarted at {resumed_at}, below the {acked_at_kill} bytes it had acked"
    );
    assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
    let sent = pair.primary.stream().await.unwrap().network_bytes;
    println!(
        "data {} bytes; acked at kill {acked_at_kill}; replica resumed at {resumed_at}; primary sent {sent} bytes ({:.3}x)",
        w.total,
        sent as f64 / w.total as f64
    );
    assert!(
        (sent as f64) < 1.1 * w.total as f64,
        "bulk re-send: {sent} bytes sent for {} bytes of data",
        w.total
    );
}

async fn replica_durable_over(replica: &Daemon, min: u64) -> u64 {
    wait_for(
        &format!("replica durable past {min}"),
        Duration::from_secs(120),
        || async {
            let s = replica.stream().await.ok()?;
            (s.durable_position > min).then_some(s.durable_position)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_restart_and_kill9_resume_at_the_replica_position() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 3);
    w.segments(1, 12, SEG);
    w.append(13, 3 * MIB + 5);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;

    replica_durable_over(&pair.replica, 50 * MIB as u64).await;
    assert_eq!(
        pair.primary.terminate(),
        Some(0),
        "graceful stop must exit 0"
    );
    pair.primary.start_ready().await;

    replica_durable_over(&pair.replica, 120 * MIB as u64).await;
    pair.primary.kill9();
    pair.primary.start_ready().await;

    pair.wait_durable(w.total, Duration::from_secs(180)).await;
    assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
    let r = pair.replica.stream().await.unwrap();
    println!(
        "data {} bytes; replica received {} bytes ({:.3}x) over {} sessions",
        w.total,
        r.network_bytes,
        r.network_bytes as f64 / w.total as f64,
        r.reconnects + 1
    );
    assert!(
        r.reconnects >= 2,
        "expected two reconnects, saw {}",
        r.reconnects
    );
    assert!(
        (r.network_bytes as f64) < 1.1 * w.total as f64,
        "bulk re-send"
    );
}

/// A hand-driven replication stream to the replica, speaking the proto.
struct RawStream {
    tx: mpsc::Sender<pb::ShipMessage>,
    rx: tonic::Streaming<pb::ReplicaMessage>,
}

impl RawStream {
    /// Opens a stream with a Hello for `stream`; returns the Welcome or the
    /// refusal.
    async fn open(pair: &Pair, stream: &str) -> Result<(Self, pb::Welcome), tonic::Status> {
        let mut client = tls_client(
            pair.certs.as_ref().unwrap(),
            PRIMARY_ID,
            pair.port,
            REPLICA_ID,
        )
        .await
        .expect("connect with the primary's certificate");
        let (tx, rx) = mpsc::channel(8);
        tx.send(hello(stream)).await.unwrap();
        let mut inbound = client
            .replicate(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match inbound.message().await? {
            Some(pb::ReplicaMessage {
                msg: Some(pb::replica_message::Msg::Welcome(w)),
            }) => Ok((Self { tx, rx: inbound }, w)),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Sends `m` and returns the next answer: an ack, or the stream's error.
    async fn send(&mut self, m: pb::ShipMessage) -> Result<pb::ReplicaMessage, tonic::Status> {
        let _ = self.tx.send(m).await;
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Ok(None)) => Err(tonic::Status::aborted("stream closed without a status")),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no answer within 10 s"),
        }
    }
}

fn hello(stream: &str) -> pb::ShipMessage {
    pb::ShipMessage {
        msg: Some(pb::ship_message::Msg::Hello(pb::Hello {
            protocol_version: drd_proto::PROTOCOL_VERSION,
            stream: stream.into(),
            node_id: PRIMARY_ID.into(),
            epoch: 1,
            ..Default::default()
        })),
    }
}

fn chunk(segment: &str, offset: u64, data: Bytes, crc: u32) -> pb::ShipMessage {
    pb::ShipMessage {
        msg: Some(pb::ship_message::Msg::Chunk(pb::Chunk {
            epoch: 1,
            segment: segment.into(),
            segment_start: 0,
            offset,
            crc32c: crc,
            data,
            source_position: 0,
            written_at_ms: 0,
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_with_a_wrong_crc_is_refused_and_the_stream_recovers() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 4);
    w.segments(1, 2, SEG);
    w.append(3, 100_000);
    pair.replica.start_ready().await;

    let seg1 = std::fs::read(pair.wal.join(seg_name(1))).unwrap();
    let good = Bytes::copy_from_slice(&seg1[..4096]);
    let bad = Bytes::copy_from_slice(&seg1[4096..8192]);
    let (mut s, welcome) = RawStream::open(&pair, STREAM).await.unwrap();
    assert_eq!(welcome.durable_position, 0);
    let ack = s
        .send(chunk(&seg_name(1), 0, good.clone(), crc32c::crc32c(&good)))
        .await
        .unwrap();
    let Some(pb::replica_message::Msg::Ack(a)) = ack.msg else {
        panic!("expected ack")
    };
    assert_eq!(a.durable_position, 4096);
    let err = s
        .send(chunk(
            &seg_name(1),
            4096,
            bad.clone(),
            crc32c::crc32c(&bad) ^ 0xdead,
        ))
        .await
        .unwrap_err();
    println!("refusal: {:?} {}", err.code(), err.message());
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("CRC32C mismatch"),
        "{}",
        err.message()
    );

    // Nothing of the bad chunk was written: the partial file holds exactly
    // the acked 4096 bytes.
    let partial = pair.landing().join(format!("{}.partial", seg_name(1)));
    let st = wait_for("replica idle", Duration::from_secs(10), || async {
        let st = pair.replica.stream().await.ok()?;
        (!st.connected).then_some(st)
    })
    .await;
    assert_eq!(st.durable_position, 4096);
    assert_eq!(std::fs::read(&partial).unwrap(), &seg1[..4096]);

    // The stream recovers: a real primary resumes at 4096 and completes.
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(60)).await;
    assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
    let resumed = last_welcome_position(&pair.replica.log).unwrap();
    assert_eq!(resumed, 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_refused_and_nothing_is_written() {
    let mut pair = Pair::new("");
    pair.replica.start_ready().await;
    let abs = pair.root.path().join("absolute-evil");
    let long = "s".repeat(300);
    let data = Bytes::from_static(b"attacker bytes");
    let hostile_segments = [
        "../x".to_string(),
        "../../../../../../tmp/drd-evil".to_string(),
        abs.display().to_string(),
        "a\0b".to_string(),
        "..".to_string(),
        "sub/dir".to_string(),
        "x.partial".to_string(),
        long.clone(),
    ];
    for name in &hostile_segments {
        let (mut s, _) = RawStream::open(&pair, STREAM).await.unwrap();
        let err = s
            .send(chunk(name, 0, data.clone(), crc32c::crc32c(&data)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name:?}");
        assert!(
            err.message().contains("invalid segment name"),
            "{name:?}: {}",
            err.message()
        );
    }
    for name in ["../../etc", "/etc", "a/b", "", long.as_str()] {
        let err = RawStream::open(&pair, name).await.err().expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name:?}");
        assert!(
            err.message().contains("invalid stream name"),
            "{name:?}: {}",
            err.message()
        );
    }
    // Oversized frame: refused by the transport's message size limit.
    let big = Bytes::from(vec![0u8; drd_proto::MAX_MESSAGE_BYTES + 1]);
    let (mut s, _) = RawStream::open(&pair, STREAM).await.unwrap();
    let err = s
        .send(chunk(&seg_name(1), 0, big.clone(), crc32c::crc32c(&big)))
        .await
        .unwrap_err();
    println!("oversized frame: {:?} {}", err.code(), err.message());
    assert!(
        err.message().contains("message length too large"),
        "{}",
        err.message()
    );

    // Nothing but the catalog in the replica's data dir, nothing new beside it.
    let written: Vec<_> = files_below(&pair.replica.data_dir())
        .into_iter()
        .filter(|p| !p.starts_with(pair.replica.data_dir().join("catalog")))
        .collect();
    assert!(written.is_empty(), "files written: {written:?}");
    let mut top: Vec<_> = std::fs::read_dir(pair.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["primary", "replica", "replica-wal", "tls", "wal"]);
    assert!(!abs.exists());
    assert!(!std::path::Path::new("/tmp/drd-evil").exists());
    assert!(!pair.root.path().join("x").exists());

    // The daemon keeps serving: a real primary ships afterwards.
    let mut w = WalWriter::new(&pair.wal, 5);
    w.segments(1, 1, MIB);
    w.append(2, 10);
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(60)).await;
    assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_shipping_a_1_gib_backlog() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 6);
    w.segments(1, 64, SEG);
    w.append(65, 1);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    let started = Instant::now();
    let (mut max_p, mut max_r) = (0u64, 0u64);
    let deadline = started + Duration::from_secs(300);
    loop {
        max_p = max_p.max(pair.primary.rss_kib());
        max_r = max_r.max(pair.replica.rss_kib());
        let s = pair.primary.stream().await.unwrap();
        if s.durable_position == w.total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "1 GiB not shipped within 300 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "1 GiB backlog shipped in {secs:.1} s ({:.0} MiB/s); peak RSS primary {} MiB, replica {} MiB",
        w.total as f64 / secs / MIB as f64,
        max_p / 1024,
        max_r / 1024
    );
    assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
    assert!(max_p < 200 * 1024, "primary RSS {max_p} KiB");
    assert!(max_r < 200 * 1024, "replica RSS {max_r} KiB");
}

/// A frame that is not a valid `ShipMessage`: an `Ack` (field 1 a varint)
/// where a `ShipMessage` (field 1 a message) is expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_protobuf_is_refused_and_the_daemon_keeps_serving() {
    let mut pair = Pair::new("");
    pair.replica.start_ready().await;
    let m = drd::tls::load(&drd::tls::TlsFiles {
        ca: pair.certs.as_ref().unwrap().join("ca.pem"),
        cert: pair
            .certs
            .as_ref()
            .unwrap()
            .join(format!("{PRIMARY_ID}.pem")),
        key: pair
            .certs
            .as_ref()
            .unwrap()
            .join(format!("{PRIMARY_ID}.key")),
    })
    .unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", pair.port))
            .unwrap()
            .tls_config(drd::tls::client_tls(&m, REPLICA_ID))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let garbage = pb::Ack {
        durable_position: 42,
        ..Default::default()
    };
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/drd.v1.Replication/Replicate");
    let codec = tonic_prost::ProstCodec::<pb::Ack, pb::ReplicaMessage>::default();
    let reply = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(vec![garbage])),
            path,
            codec,
        )
        .await;
    let err = match reply {
        Err(s) => s,
        Ok(mut r) => r.get_mut().message().await.expect_err("garbage accepted"),
    };
    println!("malformed protobuf: {:?} {}", err.code(), err.message());
    assert_ne!(err.code(), tonic::Code::Ok);
    assert!(!pair.landing().exists(), "nothing may be written");

    // The daemon keeps serving.
    let mut w = WalWriter::new(&pair.wal, 8);
    w.segments(1, 1, MIB);
    w.append(2, 10);
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(60)).await;
    assert_replica_identical(&pair.wal, &pair.landing()).unwrap();
}

/// A chunk whose write fails on a full disk must not count as received: the
/// group commit that follows the refusal may only record bytes that are in
/// the file. (Before the fix, the failed chunk was recorded and acked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_on_a_full_disk_is_never_acked() {
    // A group that reaches the full disk is never durable: the replica
    // writes its bytes a 1 MiB buffer at a time, and a sync of a file whose
    // buffer could not be written fails (it must not succeed over bytes not
    // in the file). With the default 4 MiB groups a busy machine could put
    // the whole first 3 MiB into one group, and nothing would become
    // durable before the disk filled. Groups of at most 1 MiB (plus the
    // chunk that fills one) make that certain: the first is durable.
    let mut pair = Pair::new("[tuning]\ngroup_commit_bytes = 1048576\n");
    let landing = pair.landing();
    let tmpfs = match drd_tests::chaos::TmpfsGuard::mount(&landing, 8) {
        Ok(g) => g,
        Err(why) => {
            drd_tests::require::missing(&why, "Run the tests as root (the test mounts a tmpfs)");
            return;
        }
    };
    // Leave about 3 MiB free, then ship 6 MiB.
    let filler = landing.join("filler");
    std::fs::write(&filler, vec![0u8; 5 * MIB]).unwrap();
    let mut w = WalWriter::new(&pair.wal, 7);
    w.append(1, 6 * MIB);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;

    let partial = landing.join(format!("{}.partial", seg_name(1)));
    wait_for(
        "the replica to refuse a write with ENOSPC",
        Duration::from_secs(60),
        || async {
            pair.replica
                .log_text()
                .contains("No space left on device")
                .then_some(())
        },
    )
    .await;
    let source = std::fs::read(pair.wal.join(seg_name(1))).unwrap();
    // Several refusals and reconnects: at each look, what is durable is in
    // the file, byte for byte.
    for _ in 0..5 {
        let durable = pair.replica.stream().await.unwrap().durable_position as usize;
        let on_disk = std::fs::read(&partial).unwrap_or_default();
        assert!(
            durable <= on_disk.len(),
            "durable position {durable} is past the {} bytes in the file",
            on_disk.len()
        );
        assert!(
            durable > 0 && durable < 6 * MIB,
            "durable {durable}; the replica's log:\n{}",
            pair.replica.log_text()
        );
        assert!(
            on_disk[..durable] == source[..durable],
            "durable bytes differ from the source"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // spacing the looks, not synchronisation
    }
    // Space comes back: the stream completes, identical.
    std::fs::remove_file(&filler).unwrap();
    pair.wait_durable(w.total, Duration::from_secs(60)).await;
    let on_disk = std::fs::read(&partial).unwrap();
    assert!(
        on_disk == source,
        "the replica's copy differs after recovery"
    );
    pair.replica.terminate();
    pair.primary.terminate();
    drop(tmpfs);
}
