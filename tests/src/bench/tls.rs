//! Issue 20's TLS baseline: rustls alone, encrypting and decrypting the
//! backlog over loopback TCP — drd's own server configuration (TLS 1.3,
//! client certificates required, `drd::tls::server_config`) and a client
//! presenting a node certificate from the same CA, ring as the crypto
//! provider as in drd. The sender reads each segment from the page cache
//! in 1 MiB blocks and writes it into the TLS stream; the receiver reads
//! and discards. No HTTP/2, no gRPC, no hashing, no disk writes: what the
//! encryption and the TCP hop cost, and so how fast a TLS link can go here.

use crate::baseline::{sorted_files, Transfer};
use crate::procs::thread_cpu_seconds;
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const MIB: usize = 1 << 20;

fn client_config(certs: &Path, node: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pem = |f: &str| std::fs::read(certs.join(f)).with_context(|| format!("read {f}"));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem("ca.pem")?) {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_slice_iter(&pem(&format!("{node}.pem"))?)
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&pem(&format!("{node}.key"))?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(cfg))
}

/// Sends every file of `src` through one mTLS connection on loopback.
pub fn rustls_alone(src: &Path) -> anyhow::Result<Transfer> {
    let tmp = tempfile::Builder::new()
        .prefix("drd-bench-tls-")
        .tempdir()?;
    let certs = drd_tests::make_certs(tmp.path());
    let m = drd::tls::load(&drd::tls::TlsFiles {
        ca: certs.join("ca.pem"),
        cert: certs.join(format!("{}.pem", drd_tests::REPLICA_ID)),
        key: certs.join(format!("{}.key", drd_tests::REPLICA_ID)),
    })?;
    let server = drd::tls::server_config(&m)?;
    let client = client_config(&certs, drd_tests::PRIMARY_ID)?;
    let files = sorted_files(src)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> anyhow::Result<(u64, f64, Instant)> {
        let (sock, _) = listener.accept()?;
        let conn = rustls::ServerConnection::new(server)?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let cpu0 = thread_cpu_seconds();
        let mut buf = vec![0u8; MIB];
        let mut total = 0u64;
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                // The sender closes without close_notify after its last
                // byte is counted below; only bytes read count.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
        }
        let done = Instant::now();
        // Our close_notify, so the sender's drain below ends cleanly.
        tls.conn.send_close_notify();
        let _ = tls.flush();
        Ok((total, thread_cpu_seconds() - cpu0, done))
    });
    let name = ServerName::try_from(drd_tests::REPLICA_ID.to_string())?;
    let sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(client, name)?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    // The handshake first, so only the transfer is timed.
    tls.flush()?;
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let started = Instant::now();
    let cpu0 = thread_cpu_seconds();
    let mut buf = vec![0u8; MIB];
    let mut sent = 0u64;
    for path in &files {
        let mut f = std::fs::File::open(path)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            tls.write_all(&buf[..n])?;
            sent += n as u64;
        }
    }
    tls.conn.send_close_notify();
    tls.flush()?;
    let cpu_send = thread_cpu_seconds() - cpu0;
    // Read what the server sent (its session tickets, its close_notify)
    // before closing: a socket closed with unread bytes sends a reset,
    // which can reach the receiver before the last data does.
    let mut sink = [0u8; 4096];
    loop {
        match tls.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(tls);
    let (bytes, cpu_recv, done) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("TLS receiver panicked"))??;
    anyhow::ensure!(bytes == sent, "TLS receiver got {bytes} of {sent} bytes");
    Ok(Transfer {
        bytes,
        secs: (done - started).as_secs_f64(),
        cpu_send,
        cpu_recv,
    })
}
