//! `drctl wal-push` and side files without PostgreSQL (the end-to-end run
//! with a real server is `postgres.rs`): sync mode waits for the replica and
//! fails clearly without it, order and overwrite refusals, side files
//! delivered and fetched, and a replica's `PutFile` refusing hostile or
//! conflicting input without writing anything.

use drd_proto::pb;
use drd_tests::*;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A Verona primary whose stream is a spool in `mode`, and a Rochester
/// replica (neither started).
fn spool_pair(root: &Path, mode: &str) -> (Daemon, Daemon, PathBuf) {
    let certs = make_certs(root);
    let port = free_port();
    let spool = root.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let primary = Daemon::new(
        root,
        "verona",
        PRIMARY_ID,
        &format!(
            "[[stream]]\nname = \"{STREAM}\"\nwal_dir = \"{}\"\npeer = \"https://127.0.0.1:{port}\"\n\
             peer_name = \"{REPLICA_ID}\"\nsource = \"spool\"\nmode = \"{mode}\"\nsync_timeout_seconds = 2\n\
             [tuning]\nreconnect_max_ms = 500\n{}",
            spool.display(),
            tls_section(&certs, PRIMARY_ID)
        ),
    );
    let replica = Daemon::new(
        root,
        "rochester",
        REPLICA_ID,
        &format!(
            "[replica]\nlisten = \"127.0.0.1:{port}\"\naccept_unlisted_streams = true\n{}",
            tls_section(&certs, REPLICA_ID)
        ),
    );
    (primary, replica, spool)
}

fn random_file(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let mut buf = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut buf);
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, buf).unwrap();
    p
}

fn files_dir(d: &Daemon) -> PathBuf {
    d.data_dir().join("streams").join(STREAM).join("files")
}

fn segments_dir(d: &Daemon) -> PathBuf {
    d.data_dir().join("streams").join(STREAM).join("segments")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_wal_push_returns_only_once_the_replica_has_the_file() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, spool) = spool_pair(root.path(), "sync");
    let src = root.path().join("pg_wal");
    let seg1 = random_file(&src, "000000010000000000000001", 1 << 20, 1);
    a.start_ready().await;

    // No replica: the file is safe locally, but the push fails after the
    // timeout and says why; PostgreSQL would retry.
    let t = Instant::now();
    let (code, _, err) = drctl(&a.socket, &["wal-push", seg1.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("did not confirm it within 2s") && err.contains("not connected"),
        "{err}"
    );
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        sha256_file(&spool.join("000000010000000000000001")).unwrap(),
        sha256_file(&seg1).unwrap()
    );

    // With the replica: the retry succeeds once the segment is sealed there.
    b.start_ready().await;
    let j = drctl_json(&a.socket, &["wal-push", seg1.to_str().unwrap()], 0);
    assert_eq!(j["already_present"], true, "{j}");
    assert_eq!(j["replica_confirmed"], true, "{j}");
    assert_eq!(
        sha256_file(&segments_dir(&b).join("000000010000000000000001")).unwrap(),
        sha256_file(&seg1).unwrap()
    );
    let seg3 = random_file(&src, "000000010000000000000003", 300_000, 3);
    let j = drctl_json(&a.socket, &["wal-push", seg3.to_str().unwrap()], 0);
    assert_eq!(j["replica_confirmed"], true, "{j}");
    assert_eq!(
        sha256_file(&segments_dir(&b).join("000000010000000000000003")).unwrap(),
        sha256_file(&seg3).unwrap(),
        "a spool segment is sealed as soon as it is shipped"
    );

    // Out of order: refused, nothing stored.
    let seg2 = random_file(&src, "000000010000000000000002", 1000, 2);
    let (code, _, err) = drctl(&a.socket, &["wal-push", seg2.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("sorts before 000000010000000000000003"),
        "{err}"
    );
    assert!(!spool.join("000000010000000000000002").exists());
    let empty = random_file(&src, "000000010000000000000004", 0, 4);
    let (code, _, err) = drctl(&a.socket, &["wal-push", empty.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is empty"), "{err}");

    // A side file: stored here, delivered, and confirmed before success.
    let hist = src.join("00000002.history");
    std::fs::write(&hist, b"1\t0/3000000\tno recovery target specified\n").unwrap();
    let j = drctl_json(&a.socket, &["wal-push", hist.to_str().unwrap()], 0);
    assert_eq!(j["kind"], "history");
    assert_eq!(j["replica_confirmed"], true, "{j}");
    let at_b = files_dir(&b).join("00000002.history");
    assert_eq!(std::fs::read(&at_b).unwrap(), std::fs::read(&hist).unwrap());
    let dest = root.path().join("restored");
    std::fs::create_dir_all(&dest).unwrap();
    let (code, _, err) = drctl(
        &b.socket,
        &[
            "wal-fetch",
            "00000002.history",
            dest.join("h").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(dest.join("h")).unwrap(),
        std::fs::read(&hist).unwrap()
    );
    let (code, _, _) = drctl(
        &b.socket,
        &[
            "wal-fetch",
            "00000003.history",
            dest.join("x").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "a missing history file exits 1");

    // A `.partial` file stays local; a forged history file is refused.
    let partial = random_file(&src, "000000010000000000000003.partial", 5000, 4);
    let j = drctl_json(&a.socket, &["wal-push", partial.to_str().unwrap()], 0);
    assert_eq!(j["kind"], "partial");
    assert_eq!(j["replica_confirmed"], false);
    std::fs::write(&hist, b"1\t0/DEADBEEF\tforged\n").unwrap();
    let (code, _, err) = drctl(&a.socket, &["wal-push", hist.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert!(std::fs::read_to_string(&at_b)
        .unwrap()
        .contains("0/3000000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_stream_refuses_wal_push() {
    let mut pair = Pair::new("");
    pair.primary.start_ready().await;
    let f = random_file(
        &pair.root.path().join("x"),
        "000000010000000000000001",
        10,
        5,
    );
    let (code, _, err) = drctl(&pair.primary.socket, &["wal-push", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("source = \"tail\""), "{err}");
    assert!(!pair.wal.join("000000010000000000000001").exists());
}

fn put(name: &str, data: &[u8], epoch: u64, from: &str) -> pb::PutFileRequest {
    pb::PutFileRequest {
        stream: STREAM.into(),
        name: name.into(),
        sha256: Sha256::digest(data).to_vec(),
        data: data.to_vec(),
        epoch,
        from_node: from.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_file_stores_once_and_refuses_hostile_input() {
    let root = tempfile::tempdir().unwrap();
    let (_, mut b, _) = spool_pair(root.path(), "async");
    b.start_ready().await;
    let port: u16 = std::fs::read_to_string(&b.config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap();
    let certs = root.path().join("tls");
    let mut c = tls_client(&certs, PRIMARY_ID, port, REPLICA_ID)
        .await
        .unwrap();
    let good = b"1\t0/3000000\tno recovery target specified\n";
    let r = c
        .put_file(put("00000002.history", good, 1, PRIMARY_ID))
        .await
        .unwrap();
    assert!(r.into_inner().stored);
    let r = c
        .put_file(put("00000002.history", good, 1, PRIMARY_ID))
        .await
        .unwrap();
    assert!(!r.into_inner().stored, "the same file again is accepted");
    let before = dir_digests(&files_dir(&b));

    let refused = |s: tonic::Status, code: tonic::Code, what: &str| {
        assert_eq!(s.code(), code, "{what}: {s:?}");
    };
    let s = c
        .put_file(put("00000002.history", b"forged", 1, PRIMARY_ID))
        .await
        .unwrap_err();
    refused(s, tonic::Code::AlreadyExists, "different content");
    for name in [
        "../00000003.history",
        "/etc/passwd",
        "000000010000000000000001",
        "000000010000000000000001.partial",
        ".00000003.history",
        "",
    ] {
        let s = c
            .put_file(put(name, good, 1, PRIMARY_ID))
            .await
            .unwrap_err();
        refused(s, tonic::Code::InvalidArgument, name);
    }
    let mut bad_sum = put("00000003.history", good, 1, PRIMARY_ID);
    bad_sum.sha256[0] ^= 1;
    let s = c.put_file(bad_sum).await.unwrap_err();
    refused(s, tonic::Code::InvalidArgument, "checksum");
    let big = vec![7u8; drd::sidefiles::MAX_SIDE_FILE_BYTES + 1];
    let s = c
        .put_file(put("00000003.history", &big, 1, PRIMARY_ID))
        .await
        .unwrap_err();
    refused(s, tonic::Code::InvalidArgument, "oversized");
    let s = c
        .put_file(put("00000003.history", good, 0, PRIMARY_ID))
        .await
        .unwrap_err();
    refused(s, tonic::Code::InvalidArgument, "epoch 0");
    let s = c
        .put_file(put("00000003.history", good, 1, REPLICA_ID))
        .await
        .unwrap_err();
    refused(
        s,
        tonic::Code::PermissionDenied,
        "a node id not in the certificate",
    );
    assert_eq!(
        dir_digests(&files_dir(&b)),
        before,
        "refusals wrote nothing"
    );
    assert_eq!(before.len(), 1);
}
