//! Mutual TLS for replication: loading a node's CA, certificate and key
//! from PEM files ([`load`]), the rustls server configuration that requires
//! and verifies client certificates ([`server_config`]), tonic's client
//! configuration that verifies the replica's name ([`client_tls`]), and
//! [`TlsIncoming`], the accept loop that runs handshakes concurrently and
//! lets through only peers named in `tls.allowed_peers`.
//!
//! ring is the only crypto provider: every config here is built with it
//! explicitly, so no process-level default provider is needed.

use futures::Stream;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig, SignatureScheme};
use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Time a client has to complete the TLS handshake (from TCP accept to the
/// verified client certificate). A legitimate peer needs one or two round
/// trips, well under a second even across a continent; the bound stops a
/// slow or hostile client from holding a handshake slot for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once. A DR replica has a handful of legitimate
/// peers; this bounds the memory and CPU a connection flood can take. When
/// all slots are busy, new connections wait in the kernel's listen backlog
/// (they are not refused) until a slot frees up, at most
/// [`HANDSHAKE_TIMEOUT`] later.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 64;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The only application protocol spoken: gRPC over HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// Where a node's TLS material lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This node's certificate (chain), leaf first.
    pub cert: PathBuf,
    /// This node's private key; must be mode 0600 or stricter.
    pub key: PathBuf,
}

/// Why TLS material could not be loaded or used. Each variant names the file
/// and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} file {path} does not exist")]
    Missing { what: &'static str, path: PathBuf },
    #[error("cannot read {what} file {path}: {source}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{what} file {path} contains no certificate \
         (expected a PEM block '-----BEGIN CERTIFICATE-----')"
    )]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error(
        "key file {path} contains no private key (expected a PEM block \
         '-----BEGIN PRIVATE KEY-----', 'EC PRIVATE KEY' or 'RSA PRIVATE KEY')"
    )]
    NoKey { path: PathBuf },
    #[error("{what} file {path} is not valid PEM: {reason}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "key file {path} has mode {mode:04o}: it must not be readable by group or others; \
         run chmod 600 {path}"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("key file {path} holds a key drd cannot use: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "key file {key} does not belong to certificate {cert} ({reason}); \
         copy the NAME.key that was generated together with NAME.pem"
    )]
    KeyMismatch {
        key: PathBuf,
        cert: PathBuf,
        reason: String,
    },
    #[error("CA file {path} holds a certificate that cannot be a trust anchor: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error(
        "certificate {cert} is not valid under the CA in {ca}: {reason}; \
         issue a new one with `drctl certs init` (or from the CA that signed the others)"
    )]
    NotTrusted {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// A node's loaded and checked TLS material. Cheap to clone.
#[derive(Clone)]
pub struct TlsMaterial {
    files: TlsFiles,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Arc<Vec<u8>>,
    ca_certs: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    names: Vec<String>,
    not_after: Option<SystemTime>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TlsMaterial {
    /// The files this material was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
    /// The names in this node's own certificate (DNS SANs, then CN).
    pub fn names(&self) -> &[String] {
        &self.names
    }
    /// When this node's certificate expires, if it could be read.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.not_after
    }
    /// A tokio-rustls acceptor with [`server_config`].
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor::from(server_config(self)?))
    }
    /// This node's certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
    /// The CA certificate(s) this node trusts.
    pub fn ca_certs(&self) -> &[CertificateDer<'static>] {
        &self.ca_certs
    }
    /// The scheme [`TlsMaterial::sign`] signs with: the first of
    /// [`SIGNING_SCHEMES`] this node's key supports.
    pub fn signing_scheme(&self) -> Result<SignatureScheme, TlsError> {
        Ok(self.signer()?.scheme())
    }
    /// Signs `msg` with this node's private key (ring), in
    /// [`TlsMaterial::signing_scheme`]. Returns the scheme and the signature
    /// (ECDSA signatures are ASN.1 DER, as in TLS and X.509), which the
    /// certificate's public key verifies.
    pub fn sign(&self, msg: &[u8]) -> Result<(SignatureScheme, Vec<u8>), TlsError> {
        let signer = self.signer()?;
        let sig = signer.sign(msg).map_err(|e| TlsError::BadKey {
            path: self.files.key.clone(),
            reason: format!("signing failed: {e}"),
        })?;
        Ok((signer.scheme(), sig))
    }
    fn signer(&self) -> Result<Box<dyn rustls::sign::Signer>, TlsError> {
        let bad = |reason: String| TlsError::BadKey {
            path: self.files.key.clone(),
            reason,
        };
        let key = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| bad(e.to_string()))?;
        key.choose_scheme(SIGNING_SCHEMES).ok_or_else(|| {
            bad(format!(
                "its type ({:?}) has none of the signature schemes drd signs with",
                key.algorithm()
            ))
        })
    }
}

/// The signature schemes [`TlsMaterial::sign`] uses, most preferred first:
/// one per key type ring can sign with (RSA keys sign with PSS).
pub const SIGNING_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
];

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(what: &'static str, path: &Path) -> Result<(std::fs::File, Vec<u8>), TlsError> {
    let mut f = std::fs::File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::Missing {
            what,
            path: path.to_path_buf(),
        },
        _ => TlsError::Unreadable {
            what,
            path: path.to_path_buf(),
            source,
        },
    })?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|source| TlsError::Unreadable {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    Ok((f, bytes))
}

fn parse_certs(
    what: &'static str,
    path: &Path,
    pem_bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Loads and checks a node's TLS material: the CA certificate(s), the
/// node's certificate chain and its private key.
///
/// Besides parsing, it checks what would otherwise only show up as a
/// puzzling handshake failure at the other site: the key belongs to the
/// certificate, and the certificate chains to the CA and is valid now.
///
/// **A private key file that group or others can access is an error, not a
/// warning.** The key is this site's identity: whoever reads it can
/// impersonate the site to its peers — receive a hospital's patient data as
/// a "replica", or feed a replica forged WAL as a "primary". A warning in a
/// log nobody reads would leave that open indefinitely, while refusing to
/// start costs one `chmod 600`.
pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
    let (_, ca_pem) = read_file("CA certificate", &files.ca)?;
    let ca_certs = parse_certs("CA certificate", &files.ca, &ca_pem)?;
    let (_, cert_pem) = read_file("certificate", &files.cert)?;
    let chain = parse_certs("certificate", &files.cert, &cert_pem)?;

    let (key_file, key_pem) = read_file("private key", &files.key)?;
    // The mode of the file we actually read (fstat), not of whatever the
    // path points to a moment later.
    let mode = key_file
        .metadata()
        .map_err(|source| TlsError::Unreadable {
            what: "private key",
            path: files.key.clone(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyMode {
            path: files.key.clone(),
            mode: mode & 0o7777,
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: files.key.clone(),
            })
        }
        Err(e) => {
            return Err(TlsError::BadPem {
                what: "private key",
                path: files.key.clone(),
                reason: e.to_string(),
            })
        }
    };

    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing_key)
        .keys_match()
        .map_err(|e| TlsError::KeyMismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
            reason: e.to_string(),
        })?;

    let roots = root_store(&ca_certs, &files.ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| TlsError::NotTrusted {
            cert: files.cert.clone(),
            ca: files.ca.clone(),
            reason: e.to_string(),
        })?;

    let names = cert_names(&chain[0]);
    let not_after = cert_not_after(&chain[0]);
    Ok(TlsMaterial {
        files: files.clone(),
        ca_pem,
        cert_pem,
        key_pem: Arc::new(key_pem),
        ca_certs,
        chain,
        key: Arc::new(key),
        names,
        not_after,
    })
}

fn root_store(
    ca_certs: &[CertificateDer<'static>],
    path: &Path,
) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in ca_certs {
        roots.add(c.clone()).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// The rustls server configuration of a replica: TLS 1.3 only (both ends
/// are drd), client certificates required and verified against the CA,
/// ALPN `h2`.
///
/// It checks only that the client's certificate comes from the CA; which
/// nodes may connect is [`TlsIncoming`]'s `allowed_peers`.
pub fn server_config(m: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let roots = root_store(&m.ca_certs, &m.files.ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// tonic's client TLS configuration for a primary connecting to the replica
/// `server_name` (its node id): the replica's certificate must chain to our
/// CA and name `server_name`; we present our own certificate. The peer URL
/// must use `https://` — with `http://` tonic ignores this and connects in
/// plaintext.
pub fn client_tls(m: &TlsMaterial, server_name: &str) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&m.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &m.cert_pem,
            m.key_pem.as_slice(),
        ))
        .domain_name(server_name)
        .timeout(HANDSHAKE_TIMEOUT)
}

/// The names a certificate is issued to: its DNS subjectAltNames, then its
/// CN if different. Empty if the certificate cannot be parsed.
pub fn cert_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, x509)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                if !names.iter().any(|x| x == d) {
                    names.push(d.to_string());
                }
            }
        }
    }
    for cn in x509.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            if !names.iter().any(|x| x == cn) {
                names.push(cn.to_string());
            }
        }
    }
    names
}

fn cert_not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    use x509_parser::prelude::*;
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let secs = x509.validity().not_after.timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The names in the client certificate of the connection a tonic request
/// came in on (empty without TLS). A replica can check that a Hello's
/// node id is one of them.
pub fn peer_names<T>(req: &tonic::Request<T>) -> Vec<String> {
    req.peer_certs()
        .and_then(|certs| certs.first().map(cert_names))
        .unwrap_or_default()
}

/// Accepted, handshaken and authorised connections, for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// A background task accepts TCP connections and runs each TLS handshake
/// in its own task (at most [`MAX_CONCURRENT_HANDSHAKES`], each bounded by
/// [`HANDSHAKE_TIMEOUT`]), so a slow or hostile client never holds up
/// others. Every refused connection is logged as one WARN line with the
/// remote address and the reason. The stream yields only connections whose
/// client certificate names one of `allowed_peers`, and never an error.
///
/// Dropping it stops the accept loop, closes the listening socket and
/// abandons handshakes in progress.
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsStream<TcpStream>>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener`. Must be called inside a tokio runtime.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, allowed_peers: Vec<String>) -> Self {
        let (tx, rx) = mpsc::channel(8);
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            acceptor,
            Arc::from(allowed_peers),
            tx,
        ));
        Self { rx, accept_loop }
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    allowed: Arc<[String]>,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
) {
    // Dropping the JoinSet (when this task is aborted) aborts the handshakes.
    let mut handshakes = JoinSet::new();
    let mut full_warned = false;
    loop {
        while handshakes.try_join_next().is_some() {}
        if handshakes.len() >= MAX_CONCURRENT_HANDSHAKES {
            if !full_warned {
                tracing::warn!(
                    "{MAX_CONCURRENT_HANDSHAKES} TLS handshakes in progress; \
                     new replication connections wait until one finishes"
                );
                full_warned = true;
            }
            tokio::select! {
                _ = handshakes.join_next() => continue,
                _ = tx.closed() => return,
            }
        }
        full_warned = false;
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = tx.closed() => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                handshakes.spawn(handshake(
                    tcp,
                    remote,
                    acceptor.clone(),
                    allowed.clone(),
                    tx.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a replication connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Why a connection was not handed on.
enum Refusal {
    /// The client connected and closed without sending a byte (a port check).
    Silent,
    Reason(String),
}

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    allowed: Arc<[String]>,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
) {
    // tonic's own listener sets this; with our own incoming we must.
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_one(tcp, &acceptor)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(Refusal::Silent)) => {
            tracing::info!(
                "connection from {remote} closed before sending anything (a port check?)"
            );
            return;
        }
        Ok(Err(Refusal::Reason(reason))) => {
            tracing::warn!("refused a replication connection from {remote}: {reason}");
            return;
        }
        Err(_) => {
            tracing::warn!(
                "refused a replication connection from {remote}: the TLS handshake did not \
                 finish within {HANDSHAKE_TIMEOUT:?}"
            );
            return;
        }
    };
    let names = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().map(cert_names))
        .unwrap_or_default();
    if !names.iter().any(|n| allowed.contains(n)) {
        tracing::warn!(
            "refused a replication connection from {remote}: peer presented a certificate \
             for [{}], which is not in tls.allowed_peers",
            names.join(", ")
        );
        return;
    }
    tracing::debug!(peer = %names.join(","), "accepted a TLS connection from {remote}");
    let _ = tx.send(tls).await;
}

async fn accept_one(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
) -> Result<TlsStream<TcpStream>, Refusal> {
    // Look at the first bytes so a plaintext client gets a clear reason
    // instead of "received corrupt message".
    let mut first = [0u8; 16];
    let n = tcp
        .peek(&mut first)
        .await
        .map_err(|e| Refusal::Reason(format!("reading from the connection failed: {e}")))?;
    if n == 0 {
        return Err(Refusal::Silent);
    }
    // A TLS connection opens with a handshake record: content type 22.
    if first[0] != 0x16 {
        return Err(Refusal::Reason(not_tls_reason(&first[..n])));
    }
    acceptor
        .accept(tcp)
        .await
        .map_err(|e| Refusal::Reason(handshake_failure(&e)))
}

fn not_tls_reason(first: &[u8]) -> String {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
    if H2_PREFACE.starts_with(first) || first.starts_with(H2_PREFACE) {
        "not TLS at all: the client sent plaintext HTTP/2 \
         (is its peer URL http:// instead of https://?)"
            .to_string()
    } else {
        format!(
            "not TLS at all: the client's first bytes are {:?}",
            String::from_utf8_lossy(first)
        )
    }
}

/// A handshake error as an operator should read it.
fn handshake_failure(e: &io::Error) -> String {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return format!("TLS handshake failed: {e}");
    };
    let hint = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "unknown CA: the client certificate is not signed by our CA"
            }
            CertificateError::BadSignature => {
                "unknown CA: the client certificate is not signed by our CA \
                 (its issuer has our CA's name but not its key)"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the client certificate has expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the client certificate is not valid yet (check both clocks)"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the client certificate is not for client authentication"
            }
            _ => "the client certificate is not acceptable",
        },
        rustls::Error::NoCertificatesPresented => {
            "the client presented no certificate (is TLS configured on the primary?)"
        }
        rustls::Error::NoApplicationProtocol => "the client does not offer HTTP/2 (ALPN h2)",
        rustls::Error::PeerIncompatible(_) => {
            "the client's TLS is incompatible (drd needs TLS 1.3)"
        }
        _ => "",
    };
    if hint.is_empty() {
        format!("TLS handshake failed: {tls}")
    } else {
        format!("TLS handshake failed: {hint} ({tls})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;
    use futures::StreamExt;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const REPLICA: &str = "rochester-dr1";
    const PRIMARY: &str = "verona-db1";
    const INTRUDER: &str = "intruder-1";

    /// Log lines written while a test runs (tasks of a current-thread
    /// runtime run on the test thread, so a thread-local subscriber sees them).
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
            let logs = Logs::default();
            let w = logs.clone();
            let sub = tracing_subscriber::fmt()
                .with_writer(move || w.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            (logs, tracing::subscriber::set_default(sub))
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
        fn warn_lines(&self) -> Vec<String> {
            self.text()
                .lines()
                .filter(|l| l.contains("WARN"))
                .map(str::to_string)
                .collect()
        }
    }

    fn files(dir: &Path, node: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        }
    }

    fn pki() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let nodes = [REPLICA, PRIMARY, INTRUDER].map(String::from);
        certs::init_dir(dir.path(), &nodes, 2, false).unwrap();
        dir
    }

    /// A tokio-rustls client presenting `cert_pem`/`key_pem` and trusting the
    /// CA in `ca_pem`.
    fn client(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> tokio_rustls::TlsConnector {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }

    fn client_for(dir: &Path, node: &str) -> tokio_rustls::TlsConnector {
        let f = files(dir, node);
        client(
            &std::fs::read(&f.ca).unwrap(),
            &std::fs::read(&f.cert).unwrap(),
            &std::fs::read(&f.key).unwrap(),
        )
    }

    async fn start(dir: &Path, allowed: &[&str]) -> (SocketAddr, TlsIncoming) {
        let m = load(&files(dir, REPLICA)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let allowed = allowed.iter().map(|s| s.to_string()).collect();
        (
            addr,
            TlsIncoming::new(listener, m.acceptor().unwrap(), allowed),
        )
    }

    /// Connects and waits until the server either closes the connection
    /// (true: refused) or leaves it open for two seconds (false).
    async fn is_refused(addr: SocketAddr, connector: &tokio_rustls::TlsConnector) -> bool {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(REPLICA).unwrap();
        let mut tls = match connector.connect(name, tcp).await {
            Ok(t) => t,
            Err(_) => return true,
        };
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => panic!("the server sent application data"),
            Err(_) => false,
        }
    }

    /// An allowed client gets through, and it is the next connection the
    /// stream yields: nothing refused before it was yielded.
    async fn assert_next_is_allowed(addr: SocketAddr, incoming: &mut TlsIncoming, dir: &Path) {
        let connector = client_for(dir, PRIMARY);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(REPLICA).unwrap();
        let _client = connector.connect(name, tcp).await.unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("the allowed client was not yielded")
            .unwrap()
            .unwrap();
        let names = cert_names(&conn.get_ref().1.peer_certificates().unwrap()[0]);
        assert_eq!(names, [PRIMARY]);
        assert_eq!(conn.get_ref().1.alpn_protocol(), Some(ALPN_H2));
    }

    #[tokio::test]
    async fn allowed_client_is_yielded() {
        let dir = pki();
        let (logs, _g) = Logs::capture();
        let (addr, mut incoming) = start(dir.path(), &[PRIMARY]).await;
        assert_next_is_allowed(addr, &mut incoming, dir.path()).await;
        assert!(logs.warn_lines().is_empty(), "{}", logs.text());
    }

    #[tokio::test]
    async fn client_not_in_allowed_peers_is_refused() {
        let dir = pki();
        let (logs, _g) = Logs::capture();
        let (addr, mut incoming) = start(dir.path(), &[PRIMARY]).await;
        assert!(is_refused(addr, &client_for(dir.path(), INTRUDER)).await);
        assert_next_is_allowed(addr, &mut incoming, dir.path()).await;
        let warns = logs.warn_lines();
        assert_eq!(warns.len(), 1, "{}", logs.text());
        assert!(
            warns[0].contains(
                "peer presented a certificate for [intruder-1], which is not in tls.allowed_peers"
            ),
            "{}",
            warns[0]
        );
        assert!(warns[0].contains("127.0.0.1:"), "{}", warns[0]);
    }

    #[tokio::test]
    async fn certificate_from_another_ca_is_refused() {
        let dir = pki();
        let other = tempfile::tempdir().unwrap();
        certs::init_dir(other.path(), &[PRIMARY.to_string()], 2, false).unwrap();
        let (logs, _g) = Logs::capture();
        let (addr, mut incoming) = start(dir.path(), &[PRIMARY]).await;
        // Same name, trusts our CA for the server, but its own certificate is
        // from another CA.
        let f = files(other.path(), PRIMARY);
        let connector = client(
            &std::fs::read(dir.path().join("ca.pem")).unwrap(),
            &std::fs::read(&f.cert).unwrap(),
            &std::fs::read(&f.key).unwrap(),
        );
        assert!(is_refused(addr, &connector).await);
        assert_next_is_allowed(addr, &mut incoming, dir.path()).await;
        let warns = logs.warn_lines();
        assert_eq!(warns.len(), 1, "{}", logs.text());
        assert!(warns[0].contains("unknown CA"), "{}", warns[0]);
    }

    #[tokio::test]
    async fn expired_client_certificate_is_refused() {
        let dir = pki();
        let (logs, _g) = Logs::capture();
        let (addr, mut incoming) = start(dir.path(), &[PRIMARY]).await;
        // Our CA's key signs an expired certificate for an allowed name.
        let ca_key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
        let ca_cert = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let expired = expired_node_cert(&ca_cert, &ca_key, PRIMARY);
        let connector = client(
            ca_cert.as_bytes(),
            expired.0.as_bytes(),
            expired.1.as_bytes(),
        );
        assert!(is_refused(addr, &connector).await);
        assert_next_is_allowed(addr, &mut incoming, dir.path()).await;
        let warns = logs.warn_lines();
        assert_eq!(warns.len(), 1, "{}", logs.text());
        assert!(warns[0].contains("has expired"), "{}", warns[0]);
    }

    /// A certificate for `node` signed by the CA in the given PEM strings,
    /// valid from two days ago until yesterday.
    fn expired_node_cert(ca_cert_pem: &str, ca_key_pem: &str, node: &str) -> (String, String) {
        // certs::generate_node needs a CaBundle; rebuild an equivalent issuer
        // from the CA's subject and key (rcgen signs with the key and copies
        // the subject DN, which is all the chain check needs).
        use rcgen::{
            CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
            SanType,
        };
        let ca_key = KeyPair::from_pem(ca_key_pem).unwrap();
        let ca_der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes()).unwrap();
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let mut ca_params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for cn in ca_x509.subject().iter_common_name() {
            dn.push(DnType::CommonName, cn.as_str().unwrap());
        }
        for o in ca_x509.subject().iter_organization() {
            dn.push(DnType::OrganizationName, o.as_str().unwrap());
        }
        ca_params.distinguished_name = dn;
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::DnsName(node.try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(2);
        p.not_after = now - time::Duration::days(1);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn plaintext_client_is_refused() {
        let dir = pki();
        let (logs, _g) = Logs::capture();
        let (addr, mut incoming) = start(dir.path(), &[PRIMARY]).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("the server kept a plaintext connection open")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_next_is_allowed(addr, &mut incoming, dir.path()).await;
        let warns = logs.warn_lines();
        assert_eq!(warns.len(), 1, "{}", logs.text());
        assert!(warns[0].contains("not TLS at all"), "{}", warns[0]);
        assert!(warns[0].contains("https://"), "{}", warns[0]);
    }

    #[tokio::test]
    async fn slow_client_does_not_block_others() {
        let dir = pki();
        let (addr, mut incoming) = start(dir.path(), &[PRIMARY]).await;
        // Connects and sends half a TLS record header, then nothing.
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(&[0x16, 0x03]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_next_is_allowed(addr, &mut incoming, dir.path()).await;
        drop(stalled);
    }

    #[test]
    fn group_readable_key_is_refused() {
        let dir = pki();
        let f = files(dir.path(), PRIMARY);
        std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&f).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(err.contains("0640"), "{err}");
        assert!(err.contains(&f.key.display().to_string()), "{err}");
        std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let m = load(&f).unwrap();
        assert_eq!(m.names(), [PRIMARY]);
        assert!(m.not_after().unwrap() > SystemTime::now());
    }

    #[test]
    fn load_names_the_file_and_the_problem() {
        let dir = pki();
        let good = files(dir.path(), PRIMARY);
        let err = |f: &TlsFiles| load(f).unwrap_err().to_string();

        let mut f = good.clone();
        f.ca = dir.path().join("nope.pem");
        let e = err(&f);
        assert!(
            e.contains("nope.pem") && e.contains("does not exist"),
            "{e}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let mut f = good.clone();
        f.cert = empty.clone();
        let e = err(&f);
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );

        let mut f = good.clone();
        f.key = good.cert.clone(); // a certificate, not a key (mode 0644 though)
        assert!(err(&f).contains("chmod 600"));
        let nokey = dir.path().join("nokey.key");
        std::fs::copy(&good.cert, &nokey).unwrap();
        std::fs::set_permissions(&nokey, std::fs::Permissions::from_mode(0o600)).unwrap();
        f.key = nokey;
        let e = err(&f);
        assert!(
            e.contains("nokey.key") && e.contains("no private key"),
            "{e}"
        );

        let mut f = good.clone();
        f.key = files(dir.path(), REPLICA).key;
        let e = err(&f);
        assert!(e.contains("does not belong to certificate"), "{e}");

        let other = tempfile::tempdir().unwrap();
        certs::init_dir(other.path(), &[PRIMARY.to_string()], 2, false).unwrap();
        let mut f = files(other.path(), PRIMARY);
        f.ca = good.ca.clone();
        let e = err(&f);
        assert!(e.contains("is not valid under the CA"), "{e}");
    }

    #[test]
    fn cert_names_lists_san_and_cn_once() {
        let dir = pki();
        let pem_bytes = std::fs::read(dir.path().join("verona-db1.pem")).unwrap();
        let der = CertificateDer::from_pem_slice(&pem_bytes).unwrap();
        assert_eq!(cert_names(&der), ["verona-db1"]);
        assert!(cert_names(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }

    /// A gRPC-shaped service that answers every call with the caller's
    /// certificate names in a header, as a replica service would see them.
    #[derive(Clone)]
    struct WhoAmI;

    impl tonic::server::NamedService for WhoAmI {
        const NAME: &'static str = "drd.test.WhoAmI";
    }

    impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for WhoAmI {
        type Response = tonic::codegen::http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
            let names = peer_names(&tonic::Request::from_http(req)).join(",");
            let resp = tonic::codegen::http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "0")
                .header("x-peer-names", names)
                .body(tonic::body::Body::empty())
                .expect("static response");
            std::future::ready(Ok(resp))
        }
    }

    /// The whole path a replica and a primary will use: tonic's server on
    /// [`TlsIncoming`], tonic's client with [`client_tls`].
    #[tokio::test]
    async fn tonic_server_and_client_over_mtls() {
        use tower::ServiceExt;
        let dir = pki();
        let (addr, incoming) = start(dir.path(), &[PRIMARY]).await;
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::new(WhoAmI))
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );
        let primary = load(&files(dir.path(), PRIMARY)).unwrap();
        let url = format!("https://{addr}");

        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(client_tls(&primary, REPLICA))
            .unwrap()
            .connect()
            .await
            .expect("mTLS connect");
        let req = tonic::codegen::http::Request::builder()
            .method("POST")
            .uri(format!("{url}/drd.test.WhoAmI/Call"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::empty())
            .unwrap();
        let resp = channel.oneshot(req).await.unwrap();
        assert_eq!(resp.headers()["x-peer-names"], PRIMARY);

        // The primary insists on the replica's name: a certificate for
        // another node is refused on the client side.
        let wrong = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .tls_config(client_tls(&primary, "rochester-dr2"))
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        let mut chain = wrong.to_string();
        let mut src = std::error::Error::source(&wrong);
        while let Some(s) = src {
            chain.push_str(&format!(": {s}"));
            src = s.source();
        }
        assert!(chain.contains("not valid for name"), "{chain}");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
