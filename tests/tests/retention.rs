//! Issue 16: retention at the DR site, owned by the DR site. Real `drd`
//! processes over mTLS: the replica's `[replica.retention]` removes exactly
//! what its policy says — never a segment younger than `min_retention`,
//! never one the DR database has not fetched — and `drctl verify` passes
//! afterwards from the pruning boundary; `drctl prune --dry-run` shows it
//! first and changes nothing; a client holding the primary's certificate
//! cannot make the DR site delete or alter anything.

use drd_proto::pb;
use drd_tests::*;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SEG: usize = 4096;

/// A pair whose replica has `policy` under `[replica.retention]` and a
/// metrics endpoint; `count` sealed segments shipped (plus an active one).
async fn shipped_pair(policy: &str, count: u64) -> (Pair, u16) {
    let mut pair = Pair::new("");
    let metrics = free_port();
    let mut text = std::fs::read_to_string(&pair.replica.config).unwrap();
    text.push_str(&format!(
        "\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[replica.retention]\n{policy}\n"
    ));
    std::fs::write(&pair.replica.config, text).unwrap();
    let mut w = WalWriter::new(&pair.wal, 16);
    w.segments(1, count + 1, SEG);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(120)).await;
    // The newest complete segment is sealed once the active one exists;
    // wait until the replica has sealed it.
    let last = seg_name(count);
    let landing = pair.landing();
    wait_for(
        "the last segment sealed",
        Duration::from_secs(60),
        || async { landing.join(&last).exists().then_some(()) },
    )
    .await;
    (pair, metrics)
}

fn fetch(pair: &Pair, n: u64) -> (i32, String) {
    let dest = pair.root.path().join(format!("fetched-{n}"));
    let (code, out, err) = drctl(
        &pair.replica.socket,
        &["wal-fetch", &seg_name(n), dest.to_str().unwrap()],
    );
    if code == 0 {
        assert_eq!(
            sha256_file(&dest).unwrap(),
            sha256_file(&pair.wal.join(seg_name(n))).unwrap(),
            "wal-fetch of {n} serves the source's bytes"
        );
    }
    (code, format!("{out}{err}"))
}

fn prune(pair: &Pair, dry: bool) -> serde_json::Value {
    let args: &[&str] = if dry {
        &["prune", "--dry-run"]
    } else {
        &["prune"]
    };
    drctl_json(&pair.replica.socket, args, 0)
}

fn listed(v: &serde_json::Value) -> Vec<String> {
    v["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["segment"].as_str().unwrap().to_string())
        .collect()
}

fn names(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(seg_name).collect()
}

/// Landing files without the active `.partial`.
fn landing_files(pair: &Pair) -> BTreeMap<String, String> {
    dir_digests(&pair.landing())
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".partial"))
        .collect()
}

fn verify_ok(pair: &Pair) -> serde_json::Value {
    let v = drctl_json(&pair.replica.socket, &["verify"], 0);
    assert_eq!(v["ok"], true, "{v}");
    v
}

async fn metric(port: u16, name: &str) -> Option<f64> {
    metrics_text(port)
        .await
        .lines()
        .find(|l| l.starts_with(name) && l.contains(STREAM))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Why the oldest kept segment stays, from `drctl prune --json`.
fn kept_because(v: &serde_json::Value) -> &str {
    v["kept_because"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_retention_removes_only_old_fetched_segments_and_verify_passes_after() {
    let (mut pair, metrics) =
        shipped_pair("min_retention = \"2s\"\nmax_retention = \"2s\"\n", 20).await;
    let all = landing_files(&pair);
    assert_eq!(all.len(), 20);

    // Young and unfetched: nothing would go.
    let v = prune(&pair, true);
    assert_eq!(v["segments"], 0, "{v}");
    assert!(
        v["policy"].as_str().unwrap().contains("min_retention 2s"),
        "{v}"
    );

    // The DR database fetches 1..=10: it has replayed 1..=9.
    for n in 1..=10 {
        assert_eq!(fetch(&pair, n).0, 0);
    }
    let v = prune(&pair, true);
    assert_eq!(v["segments"], 0, "still younger than min_retention: {v}");
    assert!(kept_because(&v).contains("min_retention"), "{v}");
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // A dry run names exactly 1..=9 and changes nothing.
    let v = prune(&pair, true);
    assert_eq!(listed(&v), names(1..=9), "{v}");
    assert_eq!(v["segments"], 9);
    assert_eq!(v["bytes"], 9 * SEG as u64);
    assert_eq!(v["oldest_kept"], seg_name(10));
    assert!(kept_because(&v).contains("not fetched"), "{v}");
    assert_eq!(landing_files(&pair), all, "a dry run changes nothing");
    let (_, text, _) = drctl(&pair.replica.socket, &["prune", "--dry-run"]);
    assert!(text.contains("Would remove 9 segments"), "{text}");
    assert!(text.contains("older than max_retention"), "{text}");

    // The pass removes them (the daemon's own timer may get there first:
    // either way exactly 1..=9 are gone).
    let v = prune(&pair, false);
    assert!(v["segments"].as_u64().unwrap() <= 9, "{v}");
    assert_eq!(v["pruned_through"], seg_name(9), "{v}");
    let left = landing_files(&pair);
    let want: BTreeMap<_, _> = all
        .iter()
        .filter(|(n, _)| n.as_str() > seg_name(9).as_str())
        .map(|(n, d)| (n.clone(), d.clone()))
        .collect();
    assert_eq!(left, want, "exactly 1..=9 removed, the rest untouched");
    let v = verify_ok(&pair);
    assert_eq!(v["pruned_through"], seg_name(9));
    assert_eq!(v["segments_checked"], 11, "10..=20: {v}");

    // What is gone says why; what is kept is still served.
    let (code, text) = fetch(&pair, 5);
    assert_ne!(code, 0);
    assert!(text.contains("retention policy"), "{text}");
    assert_eq!(fetch(&pair, 10).0, 0);

    // Audit log and metrics.
    let h = drctl_json(&pair.replica.socket, &["history"], 0);
    let prunes: Vec<_> = h
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "prune")
        .collect();
    assert!(!prunes.is_empty(), "{h}");
    assert!(
        prunes[0]["detail"].as_str().unwrap().contains(&seg_name(1)),
        "{h}"
    );
    let pruned = wait_for("retention metrics", Duration::from_secs(10), || async {
        metric(metrics, "drd_retention_pruned_segments_total").await
    })
    .await;
    assert_eq!(pruned, 9.0);
    assert!(metric(metrics, "drd_retention_oldest_segment_age_seconds")
        .await
        .is_some());

    // The boundary survives a crash; shipping goes on; verify still passes.
    pair.replica.kill9();
    // A crash between a batch's commit and its unlinks leaves files that
    // the retention state lists: the first pass after the start removes them.
    let ghost = pair.landing().join(seg_name(5));
    std::fs::write(&ghost, b"an unlink the crash interrupted").unwrap();
    {
        let cat =
            drd::storage::catalog::Catalog::open(&pair.replica.data_dir().join("catalog")).unwrap();
        let stream = drd_proto::StreamName::new(STREAM).unwrap();
        let mut state = cat.retention(&stream).unwrap();
        state.unlink = vec![seg_name(5)];
        let mut t = drd::storage::catalog::Txn::default();
        t.retention(&stream, &state);
        cat.commit_txn(t).unwrap();
    }
    pair.replica.start_ready().await;
    wait_for(
        "the interrupted unlink finished",
        Duration::from_secs(20),
        || async { (!ghost.exists()).then_some(()) },
    )
    .await;
    let mut w = WalWriter::new(&pair.wal, 17);
    w.append(21, SEG); // the active segment grows and is then sealed
    w.append(22, SEG);
    let total: u64 = (1..=22)
        .map(|n| std::fs::metadata(pair.wal.join(seg_name(n))).unwrap().len())
        .sum();
    pair.wait_durable(total, Duration::from_secs(60)).await;
    let v = verify_ok(&pair);
    assert_eq!(v["pruned_through"], seg_name(9));
    // Fetching on to 21 lets 10..=20 go.
    for n in 11..=21 {
        assert_eq!(fetch(&pair, n).0, 0, "{n}");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let v = prune(&pair, false);
    assert_eq!(v["pruned_through"], seg_name(20), "{v}");
    assert_eq!(v["oldest_kept"], seg_name(21), "{v}");
    assert!(!pair.landing().join(seg_name(20)).exists());
    assert!(pair.landing().join(seg_name(21)).exists());
    let v = verify_ok(&pair);
    assert_eq!(v["pruned_through"], seg_name(20));
}

/// `max_bytes` removes the oldest while the stream holds more, but never
/// below `min_retention`; `prune_unfetched` drops the wal-fetch rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_prunes_oldest_first_but_never_inside_min_retention() {
    let (pair, _) = shipped_pair(
        "min_retention = \"3s\"\nmax_retention = \"30d\"\nmax_bytes = \"40KiB\"\nprune_unfetched = true\n",
        20,
    )
    .await;
    // Over max_bytes (20 × 4 KiB + the active one), but young.
    let v = prune(&pair, false);
    assert_eq!(v["segments"], 0, "{v}");
    assert!(kept_because(&v).contains("min_retention"), "{v}");
    assert_eq!(landing_files(&pair).len(), 20);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Holds 20 sealed + a 4 KiB active = 84 KiB: the 11 oldest go (to 40 KiB).
    let v = prune(&pair, true);
    assert_eq!(listed(&v), names(1..=11), "{v}");
    assert!(
        v["listed"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_bytes"),
        "{v}"
    );
    prune(&pair, false);
    let left = landing_files(&pair);
    assert_eq!(
        left.keys().cloned().collect::<Vec<_>>(),
        names(12..=20),
        "the oldest went first"
    );
    verify_ok(&pair);
}

/// Sends `msgs` on one replication stream with `node`'s certificate and
/// returns what the replica answered (its first reply or the error).
async fn send_as(pair: &Pair, node: &str, msgs: Vec<pb::ship_message::Msg>) -> String {
    let certs = pair.certs.as_ref().unwrap();
    let mut client = tls_client(certs, node, pair.port, REPLICA_ID)
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    for m in msgs {
        tx.send(pb::ShipMessage { msg: Some(m) }).await.unwrap();
    }
    drop(tx);
    match client.replicate(ReceiverStream::new(rx)).await {
        Ok(mut s) => {
            let mut seen = Vec::new();
            // Bounded: the replica answers each message or ends the stream.
            for _ in 0..8 {
                match tokio::time::timeout(Duration::from_secs(5), s.get_mut().message()).await {
                    Ok(Ok(Some(m))) => seen.push(format!("{m:?}")),
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        seen.push(format!("error: {e}"));
                        break;
                    }
                    Err(_) => break,
                }
            }
            seen.join("\n")
        }
        Err(e) => format!("error: {e}"),
    }
}

fn chunk(epoch: u64, n: u64, start: u64, offset: u64, data: &[u8]) -> pb::ship_message::Msg {
    let data = bytes::Bytes::copy_from_slice(data);
    pb::ship_message::Msg::Chunk(pb::Chunk {
        epoch,
        segment: seg_name(n),
        segment_start: start,
        offset,
        crc32c: crc32c::crc32c(&data),
        data,
        ..Default::default()
    })
}

fn hello(epoch: u64) -> pb::ship_message::Msg {
    pb::ship_message::Msg::Hello(pb::Hello {
        protocol_version: drd_proto::PROTOCOL_VERSION,
        stream: STREAM.into(),
        node_id: PRIMARY_ID.into(),
        epoch,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_the_primarys_certificate_cannot_delete_or_alter_the_dr_copy() {
    // Everything is old enough to go by max_bytes except for min_retention.
    let (mut pair, _) = shipped_pair(
        "min_retention = \"1h\"\nmax_bytes = \"1KiB\"\nprune_unfetched = true\n",
        10,
    )
    .await;
    for n in 1..=10 {
        assert_eq!(fetch(&pair, n).0, 0);
    }
    pair.primary.terminate();
    let before = dir_digests(&pair.landing());
    let head = verify_ok(&pair)["chain_head"].clone();
    let epoch = pair.replica.status().await.unwrap().epoch;
    let evil = vec![0xEEu8; SEG];

    // Rewrite a sealed segment from its start.
    let r = send_as(
        &pair,
        PRIMARY_ID,
        vec![hello(epoch), chunk(epoch, 1, 0, 0, &evil)],
    )
    .await;
    assert!(
        r.contains("error") && r.contains("never overwritten"),
        "{r}"
    );
    // Overwrite acked bytes of the active segment (a truncation attempt).
    let start = 10 * SEG as u64;
    let r = send_as(
        &pair,
        PRIMARY_ID,
        vec![hello(epoch), chunk(epoch, 11, start, 0, &evil)],
    )
    .await;
    assert!(r.contains("error") && r.contains("discontinuity"), "{r}");
    // Restart the log from scratch under a new segment name at position 0.
    let r = send_as(
        &pair,
        PRIMARY_ID,
        vec![hello(epoch), chunk(epoch, 1000, 0, 0, &evil)],
    )
    .await;
    assert!(r.contains("error") && r.contains("discontinuity"), "{r}");
    // A lower epoch.
    let r = send_as(
        &pair,
        PRIMARY_ID,
        vec![
            hello(epoch - 1),
            chunk(epoch - 1, 11, start, SEG as u64, &evil),
        ],
    )
    .await;
    assert!(r.contains("error") && r.contains("epoch 0"), "{r}");
    // A side file under a segment's name.
    let certs = pair.certs.as_ref().unwrap();
    let mut client = tls_client(certs, PRIMARY_ID, pair.port, REPLICA_ID)
        .await
        .unwrap();
    use sha2::Digest;
    let put = client
        .put_file(pb::PutFileRequest {
            stream: STREAM.into(),
            name: seg_name(2),
            sha256: sha2::Sha256::digest(&evil).to_vec(),
            data: evil.clone(),
            epoch,
            from_node: PRIMARY_ID.into(),
        })
        .await;
    assert!(put.is_err(), "{put:?}");
    // The log's summary and pages are read-only.
    let info = client
        .log_info(pb::LogInfoRequest {
            stream: STREAM.into(),
            ..Default::default()
        })
        .await;
    assert!(info.is_ok(), "{info:?}");

    // Nothing changed, and the DR site's own policy still keeps it all:
    // every segment is inside min_retention.
    assert_eq!(
        dir_digests(&pair.landing()),
        before,
        "the DR copy is untouched"
    );
    let v = prune(&pair, false);
    assert_eq!(v["segments"], 0, "{v}");
    assert_eq!(verify_ok(&pair)["chain_head"], head);
    assert_eq!(dir_digests(&pair.landing()), before);
}
