//! drd's PostgreSQL client connection (`drd::primary::pgstream::conn`)
//! against a real PostgreSQL: trust over the Unix socket in replication
//! mode, simple queries and their errors, a physical replication slot
//! streamed with CopyBoth and moved by a status update built by hand,
//! SCRAM-SHA-256 / MD5 / clear-text passwords over TCP, and TLS with an
//! rcgen certificate (verify-full, require, SCRAM-SHA-256-PLUS).
//!
//! The clusters come from `drd_tests::pg` (as root, the server runs as the
//! `postgres` OS user); the client side is drd's code only, no psql.
//! Without PostgreSQL the tests fail, or skip when `DRD_TESTS_ALLOW_SKIP=1`
//! (see `drd_tests::require`).

use drd::primary::pgstream::conn::{AuthMethod, Connection, CopyEvent, Kind, PgError, Started};
use drd::primary::pgstream::conninfo::{Conninfo, Env};
use drd_tests::pg::{format_lsn as fmt_lsn, require_postgres, Cluster, ClusterOptions, Postgres};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

/// `initdb --wal-segsize=1`: 1 MiB segments.
const SEGMENT: u64 = 1 << 20;
/// The password of the test roles.
const SECRET: &str = "s3cret-pw";

/// A cluster from `drd_tests::pg` with 1 MiB segments, a Unix socket and
/// loopback TCP, in a temp dir it owns; `conf` and `hba` are added to the
/// harness's (hba lines go first, before initdb's trust lines); `setup`
/// may put files into the data directory before the server starts.
struct Test {
    cluster: Cluster,
    /// Holds the cluster's directory; removed after the cluster stopped.
    _root: tempfile::TempDir,
}

impl Test {
    fn start(pg: &Postgres, conf: &str, hba: &str, setup: impl FnOnce(&Cluster)) -> Test {
        let root = tempfile::Builder::new()
            .prefix("drd-pgconn-")
            .tempdir()
            .unwrap();
        // The server's user must reach its directory.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let opts = ClusterOptions {
            wal_segment_mib: 1,
            conf: format!("max_wal_senders = 4\nshared_buffers = 16MB\nfsync = off\n{conf}"),
            hba: hba.to_string(),
            socket_dir: None,
            tcp: true,
        };
        let cluster = Cluster::init(pg, &root.path().join("pg"), "db", &opts).unwrap();
        setup(&cluster);
        cluster.start().unwrap();
        Test {
            cluster,
            _root: root,
        }
    }

    /// A conninfo to the Unix socket, plus `extra`.
    fn socket(&self, extra: &str) -> Conninfo {
        conninfo(&format!(
            "host={} port={} {extra}",
            self.cluster.socket_dir.display(),
            self.cluster.port
        ))
    }

    /// A conninfo to 127.0.0.1, plus `extra`.
    fn tcp(&self, extra: &str) -> Conninfo {
        conninfo(&format!(
            "host=127.0.0.1 port={} {extra}",
            self.cluster.port
        ))
    }

    /// An ordinary superuser connection over the socket.
    async fn admin(&self) -> Connection {
        Connection::connect(&self.socket("user=postgres"), Kind::Database)
            .await
            .unwrap()
    }
}

/// Parses with a fixed environment: no `~/.pgpass` of the machine's.
fn conninfo(s: &str) -> Conninfo {
    let env = Env {
        user: Some("postgres".into()),
        home: None,
        pgpassfile: None,
    };
    Conninfo::parse_with_env(s, &env).unwrap()
}

fn parse_lsn(s: &str) -> u64 {
    drd_tests::pg::parse_lsn(s).unwrap()
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A standby status update, by hand: `r`, write, flush, apply, clock
/// (µs since 2000-01-01), reply-requested.
fn status_update(write: u64, flush: u64) -> Vec<u8> {
    const PG_EPOCH_UNIX_S: u64 = 946_684_800;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let clock = (now.as_micros() as i64) - (PG_EPOCH_UNIX_S as i64) * 1_000_000;
    let mut m = vec![b'r'];
    m.extend_from_slice(&write.to_be_bytes());
    m.extend_from_slice(&flush.to_be_bytes());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&clock.to_be_bytes());
    m.push(0);
    assert_eq!(m.len(), 34);
    m
}

async fn restart_lsn(db: &mut Connection, slot: &str) -> u64 {
    let rows = db
        .query(&format!(
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await
        .unwrap();
    parse_lsn(rows[0].get("restart_lsn").unwrap())
}

#[tokio::test]
async fn trust_over_the_socket_queries_and_a_streamed_slot() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let t = Test::start(&pg, "", "", |_| {});

    // Replication mode over the Unix socket, trust.
    let mut repl = Connection::connect(&t.socket("user=postgres"), Kind::Replication)
        .await
        .unwrap();
    assert!(!repl.is_tls());
    assert_eq!(repl.auth_method(), AuthMethod::None);
    assert!(repl.parameter("server_version").unwrap().starts_with("15"));
    assert!(repl.backend_pid() > 0);
    let id = repl.query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(id.len(), 1);
    let sysid = id[0].get("systemid").unwrap();
    assert!(sysid.parse::<u64>().is_ok(), "{sysid}");
    assert_eq!(id[0].get("timeline"), Some("1"));
    let xlogpos = parse_lsn(id[0].get("xlogpos").unwrap());
    assert_eq!(id[0].get("dbname"), None, "NULL for a physical walsender");
    assert_eq!(id[0].columns()[0], "systemid");
    let seg = repl.query("SHOW wal_segment_size").await.unwrap();
    assert_eq!(seg[0].get_idx(0), Some("1MB"));
    assert_eq!(seg[0].get("wal_segment_size"), Some("1MB"));
    assert_eq!(seg[0].get_idx(1), None);

    // An ordinary connection: rows, NULL, the last result set, errors that
    // leave the connection usable.
    let mut db = t.admin().await;
    let rows = db
        .query("SELECT 1 AS one; SELECT 'a b' AS s, NULL::text AS n UNION ALL SELECT 'c', 'd'")
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get("s"), Some("a b"));
    assert_eq!(rows[0].get("n"), None);
    assert_eq!(rows[0].values()[1], None);
    assert_eq!(rows[1].get("n"), Some("d"));
    // A command without rows after a result set leaves it the last one; an
    // empty result set is one.
    let rows = db
        .query("SELECT 7 AS x; CREATE TEMP TABLE z (i int)")
        .await
        .unwrap();
    assert_eq!(rows[0].get("x"), Some("7"));
    let rows = db.query("SELECT 1; SELECT 1 WHERE false").await.unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    assert!(db
        .query("CREATE TABLE t (id int)")
        .await
        .unwrap()
        .is_empty());
    let e = db.query("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42P01"), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with("ERROR:  relation \"nope\" does not exist (SQLSTATE 42P01)"),
        "{shown}"
    );
    assert_eq!(db.query("SELECT 2").await.unwrap()[0].get_idx(0), Some("2"));
    assert!(db.query("").await.unwrap().is_empty());

    // A slot; a second create of it is 42710.
    let created = repl
        .query("CREATE_REPLICATION_SLOT \"t\" PHYSICAL RESERVE_WAL")
        .await
        .unwrap();
    assert_eq!(created[0].get("slot_name"), Some("t"));
    let dup = repl
        .query("CREATE_REPLICATION_SLOT \"t\" PHYSICAL RESERVE_WAL")
        .await
        .unwrap_err();
    assert_eq!(dup.sqlstate(), Some("42710"), "{dup}");
    assert!(matches!(dup, PgError::Server { .. }));
    let before = restart_lsn(&mut db, "t").await;

    // A slot that does not exist: the server's error, no COPY.
    let other = Connection::connect(&t.socket("user=postgres"), Kind::Replication)
        .await
        .unwrap();
    match other
        .copy_both("START_REPLICATION SLOT \"nope\" PHYSICAL 0/1000000 TIMELINE 1")
        .await
    {
        Err(e) => assert_eq!(e.sqlstate(), Some("42704"), "{e}"),
        Ok(_) => panic!("START_REPLICATION on a missing slot started"),
    }

    // Stream from the segment start of xlogpos.
    let start = xlogpos & !(SEGMENT - 1);
    let sql = format!(
        "START_REPLICATION SLOT \"t\" PHYSICAL {} TIMELINE 1",
        fmt_lsn(start)
    );
    let (mut reader, mut writer) = match repl.copy_both(&sql).await.unwrap() {
        Started::Copy(r, w) => (r, w),
        Started::Rows(rows) => panic!("a result set instead of COPY: {rows:?}"),
    };
    // Three segments' worth (each switch pads the rest of its segment):
    // many CopyData messages of up to 128 KiB.
    for _ in 0..3 {
        db.query("INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal()")
            .await
            .unwrap();
    }
    let target = start + 3 * SEGMENT;
    // Every read that has to wait is cancelled (a yield races it), often
    // with half a message buffered; next() is cancel-safe, so nothing is
    // lost and the WAL arrives contiguous.
    let mut expected = start;
    let mut wal_messages = 0;
    let mut cancelled = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while expected < target {
        assert!(
            Instant::now() < deadline,
            "WAL up to {} only, in 30 s",
            fmt_lsn(expected)
        );
        let ev = tokio::select! {
            ev = reader.next() => ev.unwrap(),
            _ = tokio::task::yield_now() => { cancelled += 1; continue }
        };
        let CopyEvent::Data(p) = ev else {
            panic!("the server ended the COPY");
        };
        match p[0] {
            b'w' => {
                let at = be_u64(&p, 1);
                assert_eq!(at, expected, "WAL contiguous");
                expected = at + (p.len() - 25) as u64;
                wal_messages += 1;
            }
            b'k' => assert_eq!(p.len(), 18),
            other => panic!("unknown payload {other}"),
        }
    }
    eprintln!(
        "{wal_messages} WAL messages up to {}, {cancelled} reads cancelled",
        fmt_lsn(expected)
    );
    assert!(wal_messages > 3, "{wal_messages}");
    assert!(expected > before);
    writer
        .send(&status_update(expected, expected))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let moved = loop {
        let now = restart_lsn(&mut db, "t").await;
        if now > before {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "restart_lsn stayed at {}",
            fmt_lsn(now)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        moved <= expected,
        "{} > {}",
        fmt_lsn(moved),
        fmt_lsn(expected)
    );

    // drd ends the COPY: CopyDone both ways, the command's end, and the
    // same session takes the next command.
    writer.done().await.unwrap();
    writer.done().await.unwrap();
    while let CopyEvent::Data(_) = reader.next().await.unwrap() {}
    assert!(reader.next().await.is_err(), "next after ServerDone");
    let rows = reader.finish().await.unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    let mut repl = reader.into_connection(writer).unwrap();
    let id2 = repl.query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(id2[0].get("systemid"), Some(sysid));
    repl.close().await;

    // read-write wanted: a read-only session is skipped, and with a second
    // host the next one is used.
    db.query("CREATE ROLE ro LOGIN; ALTER ROLE ro SET default_transaction_read_only = on")
        .await
        .unwrap();
    let ro = t.socket("user=ro target_session_attrs=read-write");
    match Connection::connect(&ro, Kind::Database).await {
        Err(e @ PgError::ReadOnly { .. }) => assert!(e.to_string().contains("read-only")),
        r => panic!("expected ReadOnly, got {r:?}"),
    }
    let closed = drd_tests::free_port();
    let multi = conninfo(&format!(
        "host=127.0.0.1,{dir} port={closed},{port} user=postgres target_session_attrs=read-write",
        dir = t.cluster.socket_dir.display(),
        port = t.cluster.port
    ));
    let c = Connection::connect(&multi, Kind::Database).await.unwrap();
    assert_eq!(c.target().port, t.cluster.port);
    match Connection::connect(&t.tcp("user=postgres port=1"), Kind::Database).await {
        Err(e @ PgError::Connect { .. }) => assert!(e.to_string().contains("127.0.0.1:1")),
        r => panic!("expected Connect, got {r:?}"),
    }
    // channel_binding=require cannot be met over a Unix socket.
    let cb = t.socket("user=postgres channel_binding=require");
    assert!(matches!(
        Connection::connect(&cb, Kind::Database).await,
        Err(PgError::Auth(_))
    ));
}

/// A CA and a server certificate it signs for localhost and 127.0.0.1
/// (PEM): (ca, cert, key).
fn make_certs() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "drd test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = p.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn passwords_and_tls() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let (ca, cert, key) = make_certs();
    let (other_ca, _, _) = make_certs();
    // Before initdb's trust lines: these users must give passwords.
    let hba = "host replication drd 127.0.0.0/8 scram-sha-256\n\
               host all drd 127.0.0.0/8 scram-sha-256\n\
               host all drdmd5 127.0.0.0/8 md5\n\
               host all drdclear 127.0.0.0/8 password\n";
    let t = Test::start(
        &pg,
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
         listen_addresses = '127.0.0.1,127.0.0.2'\n",
        hba,
        |c| {
            for (name, text) in [("server.crt", &cert), ("server.key", &key)] {
                let p = c.data.join(name);
                std::fs::write(&p, text).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
                c.pg.give(&p).unwrap();
            }
        },
    );
    let ca_file = t.cluster.socket_dir.join("ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let other_ca_file = t.cluster.socket_dir.join("other-ca.crt");
    std::fs::write(&other_ca_file, &other_ca).unwrap();
    let mut admin = t.admin().await;
    admin
        .query(&format!(
            "CREATE ROLE drd LOGIN REPLICATION PASSWORD '{SECRET}'; \
             SET password_encryption = 'md5'; \
             CREATE ROLE drdmd5 LOGIN PASSWORD '{SECRET}'; \
             CREATE ROLE drdclear LOGIN PASSWORD '{SECRET}'"
        ))
        .await
        .unwrap();

    // SCRAM-SHA-256 over plain TCP, replication mode.
    let plain = t.tcp(&format!("user=drd password={SECRET} sslmode=disable"));
    let mut c = Connection::connect(&plain, Kind::Replication)
        .await
        .unwrap();
    assert_eq!(c.auth_method(), AuthMethod::ScramSha256);
    assert!(!c.is_tls());
    assert_eq!(c.query("IDENTIFY_SYSTEM").await.unwrap().len(), 1);

    // A wrong password: the server's refusal, without the password.
    let wrong = t.tcp("user=drd password=wrong-pw sslmode=disable");
    let e = Connection::connect(&wrong, Kind::Replication)
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong-pw"));
    // No password at all: drd says what to configure.
    let none = t.tcp("user=drd sslmode=disable");
    match Connection::connect(&none, Kind::Replication).await {
        Err(PgError::Auth(m)) => assert!(m.contains("passfile"), "{m}"),
        r => panic!("expected Auth, got {r:?}"),
    }
    // The password from a passfile (`replication` matches a replication
    // connection's database field).
    let passfile = t.cluster.socket_dir.join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{}:replication:drd:{SECRET}\n", t.cluster.port),
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pf = t.tcp(&format!(
        "user=drd sslmode=disable passfile={}",
        passfile.display()
    ));
    Connection::connect(&pf, Kind::Replication).await.unwrap();

    // MD5.
    let md5 = t.tcp(&format!("user=drdmd5 password={SECRET} sslmode=disable"));
    let c = Connection::connect(&md5, Kind::Database).await.unwrap();
    assert_eq!(c.auth_method(), AuthMethod::Md5);

    // A clear-text password: refused without TLS, sent over TLS.
    let clear = t.tcp(&format!("user=drdclear password={SECRET} sslmode=disable"));
    match Connection::connect(&clear, Kind::Database).await {
        Err(PgError::Auth(m)) => assert!(m.contains("clear text"), "{m}"),
        r => panic!("expected Auth, got {r:?}"),
    }
    let clear_tls = t.tcp(&format!("user=drdclear password={SECRET} sslmode=require"));
    let c = Connection::connect(&clear_tls, Kind::Database)
        .await
        .unwrap();
    assert_eq!(c.auth_method(), AuthMethod::Password);
    assert!(c.is_tls());

    // verify-full against the CA, by name and by address, with channel
    // binding required: SCRAM-SHA-256-PLUS.
    for host in ["localhost", "127.0.0.1"] {
        let ci = conninfo(&format!(
            "host={host} port={} user=drd password={SECRET} sslmode=verify-full \
             sslrootcert={} channel_binding=require",
            t.cluster.port,
            ca_file.display()
        ));
        let mut c = Connection::connect(&ci, Kind::Replication).await.unwrap();
        assert!(c.is_tls());
        assert_eq!(c.auth_method(), AuthMethod::ScramSha256Plus);
        assert_eq!(c.query("SHOW ssl").await.unwrap()[0].get_idx(0), Some("on"));
    }
    // Another CA: the certificate is refused.
    let bad = t.tcp(&format!(
        "user=drd password={SECRET} sslmode=verify-full sslrootcert={}",
        other_ca_file.display()
    ));
    match Connection::connect(&bad, Kind::Replication).await {
        Err(PgError::Tls(m)) => assert!(m.contains("certificate"), "{m}"),
        r => panic!("expected Tls, got {r:?}"),
    }
    // The certificate does not name 127.0.0.2: verify-full refuses it,
    // verify-ca checks the chain only.
    let other_name = |mode: &str| {
        conninfo(&format!(
            "host=127.0.0.2 port={} user=drd password={SECRET} sslmode={mode} sslrootcert={}",
            t.cluster.port,
            ca_file.display()
        ))
    };
    match Connection::connect(&other_name("verify-full"), Kind::Replication).await {
        Err(PgError::Tls(m)) => assert!(m.contains("not valid for"), "{m}"),
        r => panic!("expected Tls, got {r:?}"),
    }
    Connection::connect(&other_name("verify-ca"), Kind::Replication)
        .await
        .unwrap();
    // require without a root certificate accepts the certificate, and still
    // binds the channel; prefer (the default) uses TLS when offered.
    let req = t.tcp(&format!(
        "user=drd password={SECRET} sslmode=require channel_binding=require"
    ));
    let c = Connection::connect(&req, Kind::Replication).await.unwrap();
    assert_eq!(c.auth_method(), AuthMethod::ScramSha256Plus);
    let pref = t.tcp(&format!("user=drd password={SECRET}"));
    let c = Connection::connect(&pref, Kind::Replication).await.unwrap();
    assert!(c.is_tls());
    assert_eq!(c.auth_method(), AuthMethod::ScramSha256Plus);
    // channel_binding=disable over TLS: plain SCRAM.
    let nocb = t.tcp(&format!(
        "user=drd password={SECRET} channel_binding=disable"
    ));
    let c = Connection::connect(&nocb, Kind::Replication).await.unwrap();
    assert!(c.is_tls());
    assert_eq!(c.auth_method(), AuthMethod::ScramSha256);
    // channel_binding=require and a method that cannot bind: drd refuses
    // before it sends anything derived from the password.
    let cb_md5 = t.tcp(&format!(
        "user=drdmd5 password={SECRET} sslmode=require channel_binding=require"
    ));
    match Connection::connect(&cb_md5, Kind::Database).await {
        Err(PgError::Auth(m)) => assert!(m.contains("channel_binding=require"), "{m}"),
        r => panic!("expected Auth, got {r:?}"),
    }
}

/// The end of an old timeline, both ways the server tells it: started
/// exactly at the switch point, a result set instead of a COPY; started
/// before it, WAL up to the switch point, the server's CopyDone, and after
/// drd's CopyDone the result set naming the next timeline — on a session
/// that then takes the next command.
#[tokio::test]
async fn end_of_an_old_timeline() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let root = tempfile::Builder::new()
        .prefix("drd-pgconn-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pgdir = root.path().join("pg");
    let opts = ClusterOptions {
        wal_segment_mib: 1,
        // The standby keeps timeline 1's last segment after promotion.
        conf: "shared_buffers = 16MB\nfsync = off\nwal_keep_size = 64MB\n".into(),
        ..ClusterOptions::default()
    };
    let primary = Cluster::init(&pg, &pgdir, "primary", &opts).unwrap();
    primary.start().unwrap();
    let standby = Cluster::basebackup_from(&primary, &pgdir, "standby", &["-R"]).unwrap();
    standby.start().unwrap();
    // WAL the standby streams, so the switch point falls inside a segment.
    primary
        .psql("CREATE TABLE x AS SELECT generate_series(1, 5000) AS i")
        .unwrap();
    let end = primary.lsn("pg_current_wal_lsn()").unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while standby.replay_lsn().unwrap().unwrap_or(0) < end {
        assert!(
            Instant::now() < deadline,
            "the standby did not replay to {}",
            fmt_lsn(end)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(primary);
    standby.promote().unwrap();
    let ci = conninfo(&standby.conninfo());
    let mut repl = Connection::connect(&ci, Kind::Replication).await.unwrap();
    let id = repl.query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(id[0].get("timeline"), Some("2"));
    let hist = repl.query("TIMELINE_HISTORY 2").await.unwrap();
    assert_eq!(hist[0].get("filename"), Some("00000002.history"));
    let content = hist[0].get("content").unwrap();
    let switch = parse_lsn(content.split('\t').nth(1).unwrap());
    repl.close().await;

    // Exactly at the switch point: a result set.
    let repl = Connection::connect(&ci, Kind::Replication).await.unwrap();
    let at_switch = format!("START_REPLICATION PHYSICAL {} TIMELINE 1", fmt_lsn(switch));
    match repl.copy_both(&at_switch).await.unwrap() {
        Started::Rows(rows) => {
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0].get_idx(0), Some("2"), "{rows:?}");
            assert_eq!(rows[0].get_idx(1).map(parse_lsn), Some(switch), "{rows:?}");
        }
        Started::Copy(..) => panic!("a COPY from the end of timeline 1"),
    }

    // From the start of the segment of timeline 1's last byte: WAL up to
    // the switch point, then the server's CopyDone.
    let repl = Connection::connect(&ci, Kind::Replication).await.unwrap();
    let seg_start = (switch - 1) & !(SEGMENT - 1);
    let before = format!(
        "START_REPLICATION PHYSICAL {} TIMELINE 1",
        fmt_lsn(seg_start)
    );
    let (mut reader, mut writer) = match repl.copy_both(&before).await.unwrap() {
        Started::Copy(r, w) => (r, w),
        Started::Rows(rows) => panic!("a result set instead of COPY: {rows:?}"),
    };
    let mut expected = seg_start;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), reader.next())
            .await
            .expect("the end of timeline 1 within 30 s")
            .unwrap();
        match ev {
            CopyEvent::Data(p) if p[0] == b'w' => {
                assert_eq!(be_u64(&p, 1), expected, "WAL contiguous");
                expected += (p.len() - 25) as u64;
            }
            CopyEvent::Data(_) => {}
            CopyEvent::ServerDone => break,
        }
    }
    eprintln!(
        "timeline 1 streamed from {} to its switch point {}",
        fmt_lsn(seg_start),
        fmt_lsn(switch)
    );
    assert_eq!(
        fmt_lsn(expected),
        fmt_lsn(switch),
        "timeline 1's WAL, all of it"
    );
    writer.done().await.unwrap();
    let rows = reader.finish().await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].get("next_tli"), Some("2"), "{rows:?}");
    assert_eq!(
        rows[0].get("next_tli_startpos").map(parse_lsn),
        Some(switch)
    );
    let mut repl = reader.into_connection(writer).unwrap();
    let id = repl.query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(id[0].get("timeline"), Some("2"));
}
