//! Security with real `drd` processes (Invariant 6 and DESIGN's Security):
//! mTLS refusals with a clear log line and nothing written, certificate
//! names checked both ways, bad TLS configuration refused, tamper evidence
//! at rest, the control API on TCP for allowed client certificates only, and
//! no key material in logs or status.

use drd::certs;
use drd_proto::pb;
use drd_tests::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const MIB: usize = 1024 * 1024;

fn write(dir: &Path, name: &str, pem: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Replaces a pair's certificates (same file names) with a CA kept in
/// memory, so a test can sign more certificates with it.
fn regenerate(dir: &Path) -> certs::CaBundle {
    let now = OffsetDateTime::now_utc();
    let (from, to) = (
        now - time::Duration::hours(1),
        now + time::Duration::days(2),
    );
    let ca = certs::generate_ca("drd test CA", from, to).unwrap();
    write(dir, "ca.pem", &ca.cert_pem, 0o644);
    for node in [PRIMARY_ID, REPLICA_ID] {
        let n = certs::generate_node(&ca, node, from, to).unwrap();
        write(dir, &format!("{node}.pem"), &n.cert_pem, 0o644);
        write(dir, &format!("{node}.key"), &n.key_pem, 0o600);
    }
    ca
}

/// Extra certificates beside a pair's own: a node our CA signed whose name
/// is not allowed, one that has expired, and one from a foreign CA.
fn rogue_certs(pair_certs: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let ca = regenerate(pair_certs);
    let intruder = certs::generate_node(&ca, "intruder-1", now - day, now + day).unwrap();
    write(out, "intruder.pem", &intruder.cert_pem, 0o644);
    write(out, "intruder.key", &intruder.key_pem, 0o600);
    let expired = certs::generate_node(&ca, PRIMARY_ID, now - day * 10, now - day).unwrap();
    write(out, "expired.pem", &expired.cert_pem, 0o644);
    write(out, "expired.key", &expired.key_pem, 0o600);
    let other_ca = certs::generate_ca("some other CA", now - day, now + day).unwrap();
    let foreign = certs::generate_node(&other_ca, PRIMARY_ID, now - day, now + day).unwrap();
    write(out, "foreign.pem", &foreign.cert_pem, 0o644);
    write(out, "foreign.key", &foreign.key_pem, 0o600);
}

/// Tries a Hello and a chunk with the given client identity; returns the
/// error the client saw.
async fn attempt(port: u16, ca: &Path, cert: &Path, key: &Path) -> String {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ))
        .domain_name(REPLICA_ID);
    let ep = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let channel = match ep.connect().await {
        Ok(c) => c,
        Err(e) => return format!("connect: {}", drd::ops::peer::describe(&e)),
    };
    let mut client = pb::replication_client::ReplicationClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let data = bytes::Bytes::from_static(b"should never be stored");
    for m in [
        pb::ship_message::Msg::Hello(pb::Hello {
            protocol_version: drd_proto::PROTOCOL_VERSION,
            stream: STREAM.into(),
            node_id: PRIMARY_ID.into(),
            epoch: 1,
            ..Default::default()
        }),
        pb::ship_message::Msg::Chunk(pb::Chunk {
            epoch: 1,
            segment: seg_name(1),
            crc32c: crc32c::crc32c(&data),
            data,
            ..Default::default()
        }),
    ] {
        tx.send(pb::ShipMessage { msg: Some(m) }).await.unwrap();
    }
    match client.replicate(ReceiverStream::new(rx)).await {
        Ok(mut s) => match s.get_mut().message().await {
            Ok(m) => panic!("the replica accepted the stream: {m:?}"),
            Err(e) => format!("stream: {e}"),
        },
        Err(e) => format!("call: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_refuses_bad_certificates_and_plaintext_and_writes_nothing() {
    let mut pair = Pair::new("");
    let certs_dir = pair.certs.clone().unwrap();
    let rogue = pair.root.path().join("rogue");
    rogue_certs(&certs_dir, &rogue);
    pair.replica.start_ready().await;
    let ca = certs_dir.join("ca.pem");
    let cases = [
        ("intruder", "not in tls.allowed_peers"),
        ("expired", "expired"),
        ("foreign", "unknown CA"),
    ];
    for (who, log_says) in cases {
        let seen = attempt(
            pair.port,
            &ca,
            &rogue.join(format!("{who}.pem")),
            &rogue.join(format!("{who}.key")),
        )
        .await;
        println!("{who}: client saw: {seen}");
        wait_for(
            &format!("a log line for the {who} certificate"),
            Duration::from_secs(10),
            || async {
                std::fs::read_to_string(&pair.replica.log)
                    .unwrap()
                    .contains(log_says)
                    .then_some(())
            },
        )
        .await;
    }
    // Plaintext against the TLS port.
    let plain = pb::replication_client::ReplicationClient::connect(format!(
        "http://127.0.0.1:{}",
        pair.port
    ))
    .await;
    if let Ok(mut c) = plain {
        let (tx, rx) = mpsc::channel(1);
        drop(tx);
        assert!(c.replicate(ReceiverStream::new(rx)).await.is_err());
    }
    wait_for(
        "a log line for plaintext",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&pair.replica.log)
                .unwrap()
                .contains("not TLS at all")
                .then_some(())
        },
    )
    .await;
    let stored: Vec<_> = files_below(&pair.replica.data_dir())
        .into_iter()
        .filter(|p| !p.starts_with(pair.replica.data_dir().join("catalog")))
        .collect();
    assert!(stored.is_empty(), "refused peers wrote {stored:?}");
    // The stream its config assigns is listed from the start (with its role);
    // nothing of it may have arrived.
    let st = pair.replica.status().await.unwrap();
    assert!(
        st.streams.iter().all(|t| t.durable_position == 0
            && t.segments == 0
            && t.peer.is_empty()
            && t.network_bytes == 0),
        "nothing may be received after refusals: {st:?}"
    );

    // An allowed peer still gets through.
    let mut w = WalWriter::new(&pair.wal, 21);
    w.segments(1, 1, MIB);
    w.append(2, 10);
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_refuses_a_replica_with_the_wrong_certificate_name() {
    let mut pair = Pair::new("");
    // The primary expects a different replica than the one that answers.
    let conf = std::fs::read_to_string(&pair.primary.config).unwrap();
    std::fs::write(
        &pair.primary.config,
        conf.replace(
            &format!("peer_name = \"{REPLICA_ID}\""),
            "peer_name = \"rochester-dr2\"",
        ),
    )
    .unwrap();
    let mut w = WalWriter::new(&pair.wal, 22);
    w.segments(1, 1, MIB);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    let err = wait_for(
        "the primary to refuse the replica",
        Duration::from_secs(20),
        || async {
            let s = pair.primary.stream().await.ok()?;
            (!s.last_error.is_empty()).then_some(s.last_error)
        },
    )
    .await;
    println!("primary: {err}");
    assert!(
        err.contains("rochester-dr2")
            || err.contains("not valid for name")
            || err.contains("NotValidForName"),
        "{err}"
    );
    assert_eq!(pair.primary.stream().await.unwrap().durable_position, 0);
    assert!(
        !pair.landing().exists(),
        "nothing reaches an unverified replica"
    );
}

fn check_config(config: &Path) -> (i32, String) {
    let out = std::process::Command::new(bin("drd"))
        .args(["--check-config", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_configuration_errors_are_refused_with_what_to_do() {
    let pair = Pair::new("");
    let certs_dir = pair.certs.clone().unwrap();
    assert_eq!(check_config(&pair.primary.config).0, 0);

    // A key readable by others is an error, not a warning: patient data, and
    // whoever reads the key can impersonate the site.
    let key = certs_dir.join(format!("{PRIMARY_ID}.key"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = check_config(&pair.primary.config);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A missing key file is named.
    let conf = std::fs::read_to_string(&pair.primary.config).unwrap();
    let broken = pair.root.path().join("broken.toml");
    std::fs::write(
        &broken,
        conf.replace(&format!("{PRIMARY_ID}.key"), "nope.key"),
    )
    .unwrap();
    let (code, err) = check_config(&broken);
    assert_eq!(code, 2);
    assert!(err.contains("nope.key"), "{err}");

    // Plaintext to a non-loopback address.
    let plain = Pair::plaintext("");
    let conf = std::fs::read_to_string(&plain.primary.config).unwrap();
    std::fs::write(
        &broken,
        conf.replace("http://127.0.0.1", "http://192.0.2.10"),
    )
    .unwrap();
    let (code, err) = check_config(&broken);
    assert_eq!(code, 2);
    assert!(err.contains("loopback"), "{err}");
}

fn verify(d: &Daemon) -> (i32, String) {
    let (code, out, err) = drctl(&d.socket, &["verify"]);
    (code, out + &err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_detects_a_segment_altered_deleted_or_swapped_at_rest() {
    let mut pair = Pair::new("");
    let mut w = WalWriter::new(&pair.wal, 23);
    w.segments(1, 4, MIB);
    w.append(5, 1000);
    pair.replica.start_ready().await;
    pair.primary.start_ready().await;
    pair.wait_durable(w.total, Duration::from_secs(60)).await;
    let (code, out) = verify(&pair.replica);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("VERIFIED: 4 segments"), "{out}");
    // The primary's own log verifies too (and has the same chain head).
    let head = |d: &Daemon| drctl_json(&d.socket, &["verify"], 0)["chain_head"].clone();
    assert_eq!(head(&pair.primary), head(&pair.replica));

    let landing = pair.landing();
    let seg = |n: u64| landing.join(seg_name(n));
    // One byte altered.
    let mut b = std::fs::read(seg(2)).unwrap();
    b[12345] ^= 1;
    std::fs::write(seg(2), &b).unwrap();
    let (code, out) = verify(&pair.replica);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("first bad segment: {}", seg_name(2))),
        "{out}"
    );
    b[12345] ^= 1;
    std::fs::write(seg(2), &b).unwrap();
    assert_eq!(verify(&pair.replica).0, 0);

    // Two segments swapped.
    std::fs::rename(seg(3), landing.join("tmp")).unwrap();
    std::fs::rename(seg(1), seg(3)).unwrap();
    std::fs::rename(landing.join("tmp"), seg(1)).unwrap();
    let (code, out) = verify(&pair.replica);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("first bad segment: {}", seg_name(1))),
        "{out}"
    );
    std::fs::rename(seg(3), landing.join("tmp")).unwrap();
    std::fs::rename(seg(1), seg(3)).unwrap();
    std::fs::rename(landing.join("tmp"), seg(1)).unwrap();

    // One deleted.
    std::fs::remove_file(seg(4)).unwrap();
    let j = drctl_json(&pair.replica.socket, &["verify"], 1);
    assert_eq!(j["problems"][0]["segment"], seg_name(4));
    assert!(j["problems"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_control_over_mtls_only_for_allowed_clients() {
    let mut pair = Pair::new("");
    let certs_dir: PathBuf = pair.certs.clone().unwrap();
    let ca = regenerate(&certs_dir);
    let now = OffsetDateTime::now_utc();
    let admin = certs::generate_node(
        &ca,
        "ops-admin",
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )
    .unwrap();
    write(&certs_dir, "ops-admin.pem", &admin.cert_pem, 0o644);
    write(&certs_dir, "ops-admin.key", &admin.key_pem, 0o600);
    let port = free_port();
    let conf = std::fs::read_to_string(&pair.replica.config).unwrap();
    std::fs::write(
        &pair.replica.config,
        conf.replace(
            "[control]\n",
            &format!(
                "[control]\nlisten = \"127.0.0.1:{port}\"\nallowed_clients = [\"ops-admin\"]\n"
            ),
        ),
    )
    .unwrap();
    pair.replica.start_ready().await;
    let remote = |who: &str| {
        let d = certs_dir.display().to_string();
        let out = std::process::Command::new(bin("drctl"))
            .args([
                "--addr",
                &format!("https://127.0.0.1:{port}"),
                "--server-name",
                REPLICA_ID,
            ])
            .args([
                "--ca",
                &format!("{d}/ca.pem"),
                "--cert",
                &format!("{d}/{who}.pem"),
                "--key",
                &format!("{d}/{who}.key"),
            ])
            .args(["status", "--json"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = remote("ops-admin");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(REPLICA_ID));
    let (code, _) = remote(PRIMARY_ID);
    assert_ne!(code, 0, "a node certificate is not an operator certificate");

    // No key material in logs or status.
    let key = std::fs::read_to_string(certs_dir.join(format!("{REPLICA_ID}.key"))).unwrap();
    let secret_line = key.lines().nth(1).unwrap();
    let log = std::fs::read_to_string(&pair.replica.log).unwrap();
    assert!(!log.contains("PRIVATE KEY") && !log.contains(secret_line));
    assert!(!out.contains("PRIVATE KEY"));
}
