//! Signing and checking a drill's files with the DR node's mTLS identity
//! (issue 21): `report.sig` is a [`Seal`] — every sealed file's SHA-256,
//! who signed and when, the signer's certificate chain, and a signature by
//! the node's private key (the key drd replicates with, ring only) over
//! [`Seal::message`].
//!
//! [`seal`] makes one on the DR node; [`verify`] checks one for an auditor:
//! the signature against the certificate in the seal, the signer's node id
//! against the certificate's names, every file's hash, and — given the
//! hospital's CA — that the certificate chained to it **when the report was
//! signed** (a report checked a year later stays valid after the node's
//! certificate has expired or been renewed).
//!
//! What a valid seal proves: the holder of a key certified (by the CA, when
//! one is given) for the node `signer` vouched for exactly these bytes at
//! `signed_at_ms` (as that node's clock said). It does not prove the
//! certificate was not revoked since: there are no CRLs here.

use crate::tls::{cert_names, provider, TlsMaterial};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The seal format this build writes and reads.
pub const SEAL_FORMAT: u32 = 1;

/// The first line of [`Seal::message`].
const MESSAGE_HEADER: &str = "drd drill report seal v1\n";

/// Longest file name or signer accepted.
const MAX_NAME: usize = 255;

/// `report.sig` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seal {
    /// [`SEAL_FORMAT`].
    pub format: u32,
    /// The signing node's id (its config's node_id); one of its
    /// certificate's names.
    pub signer: String,
    /// The names in the signer's certificate (DNS SANs, then CN). Not
    /// signed: [`verify`] checks them against the certificate.
    pub signer_names: Vec<String>,
    /// When the seal was made, Unix ms (the signing node's clock).
    pub signed_at_ms: u64,
    /// rustls SignatureScheme name, e.g. "ECDSA_NISTP256_SHA256",
    /// "ED25519", "RSA_PSS_SHA256".
    pub scheme: String,
    /// The signer's certificate chain, PEM (end entity first).
    pub certificate_pem: String,
    /// Every sealed file, in order: name and SHA-256 hex.
    pub files: Vec<SealedFile>,
    /// Hex signature over [`Seal::message`].
    pub signature: String,
}

/// One sealed file: its name in the drill directory and its SHA-256
/// (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedFile {
    pub name: String,
    pub sha256: String,
}

/// What a successful [`verify`] establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The node that signed; one of `signer_names`.
    pub signer: String,
    /// The names in the signer's certificate (read from the certificate).
    pub signer_names: Vec<String>,
    pub signed_at_ms: u64,
    pub scheme: String,
    /// The files whose bytes matched, in the seal's order.
    pub files: Vec<String>,
    /// Whether the certificate was checked against a CA (and chained to it
    /// at `signed_at_ms`). False when no CA was given: then the signature
    /// only proves the files match the key in the seal's own certificate,
    /// which anyone can make — the caller must say so.
    pub chained_to_ca: bool,
}

/// Why a seal could not be made or does not hold. Each message says what
/// is wrong and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("not a drd drill report seal (report.sig): {0}")]
    NotASeal(String),
    #[error(
        "report.sig has seal format {0}; this drctl reads format {SEAL_FORMAT}: \
         use a drctl of the release that wrote the report"
    )]
    Format(u32),
    #[error("the seal lists no file: it vouches for nothing")]
    NoFiles,
    #[error("file name {name:?} cannot be in a seal: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("file {0:?} is listed twice in the seal")]
    DuplicateFile(String),
    #[error("signer {signer:?} cannot be in a seal: {reason}")]
    BadSigner {
        signer: String,
        reason: &'static str,
    },
    #[error(
        "the seal says it was signed by {signer:?}, but its certificate is issued to {}: \
         a node can only sign as a name its certificate carries",
        names.join(", ")
    )]
    SignerNotInCertificate { signer: String, names: Vec<String> },
    #[error(
        "the seal's signer names ({}) are not the names in its certificate ({}): \
         report.sig was changed after it was signed",
        recorded.join(", "),
        actual.join(", ")
    )]
    SignerNamesChanged {
        recorded: Vec<String>,
        actual: Vec<String>,
    },
    #[error(
        "the SHA-256 recorded for {name} is not 64 lowercase hex digits: report.sig is damaged"
    )]
    BadHash { name: String },
    #[error("unknown signature scheme {0:?} (drd signs with ECDSA, Ed25519 or RSA-PSS)")]
    UnknownScheme(String),
    #[error("the seal's signature is not hex: {0}")]
    BadSignatureHex(String),
    #[error("the seal's certificate is not valid PEM: {0}")]
    BadPem(String),
    #[error("the seal holds no certificate (expected a PEM block '-----BEGIN CERTIFICATE-----')")]
    NoCertificate,
    #[error("the seal's certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error(
        "the signature does not verify with the certificate in the seal ({0}): report.sig was \
         changed after it was signed, or it was signed with another key"
    )]
    BadSignature(String),
    #[error("cannot read {name}, which the seal lists: {source}")]
    Read {
        name: String,
        source: std::io::Error,
    },
    #[error(
        "{name} was changed after the report was signed (its SHA-256 is {actual}, the seal \
         recorded {expected}): this report cannot be trusted; ask the DR site for the original \
         or run the drill again"
    )]
    Changed {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("the CA file is not valid PEM: {0}")]
    BadCaPem(String),
    #[error(
        "the CA file holds no certificate (expected a PEM block '-----BEGIN CERTIFICATE-----')"
    )]
    NoCaCertificate,
    #[error("the CA holds a certificate that cannot be a trust anchor: {0}")]
    BadCa(String),
    #[error(
        "the signer's certificate was not valid under the given CA when the report was signed \
         ({signed_at_ms} ms after the epoch): {reason}; the report was not signed by a node of \
         this CA (check that you gave the hospital's drd CA)"
    )]
    NotTrusted { signed_at_ms: u64, reason: String },
    #[error("cannot sign the drill report with this node's key: {0}")]
    Sign(#[from] crate::tls::TlsError),
    #[error(
        "the seal just made does not verify ({0}); is the node's certificate valid now? \
         renew it from the CA if it has expired"
    )]
    SelfCheck(Box<SealError>),
}

impl Seal {
    /// The exact bytes signed: the header line `drd drill report seal v1`,
    /// then `signer NAME`, `signed_at_ms N`, `scheme S`, then
    /// `file NAME SHA256` per file, each line ending in `\n`. (Names and the
    /// signer contain no spaces or newlines: [`seal`] and [`verify`] refuse
    /// them, so the text is unambiguous.)
    pub fn message(&self) -> Vec<u8> {
        let mut m = String::from(MESSAGE_HEADER);
        m.push_str(&format!("signer {}\n", self.signer));
        m.push_str(&format!("signed_at_ms {}\n", self.signed_at_ms));
        m.push_str(&format!("scheme {}\n", self.scheme));
        for f in &self.files {
            m.push_str(&format!("file {} {}\n", f.name, f.sha256));
        }
        m.into_bytes()
    }

    /// The seal as written to `report.sig` (pretty JSON, newline-terminated).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Reads `report.sig`, refusing another format.
    pub fn from_json(b: &[u8]) -> Result<Seal, SealError> {
        let s: Seal = serde_json::from_slice(b).map_err(|e| SealError::NotASeal(e.to_string()))?;
        if s.format != SEAL_FORMAT {
            return Err(SealError::Format(s.format));
        }
        Ok(s)
    }
}

/// Signs `files` (name, bytes) with the node's material: `signer` must be
/// the node's id and one of its certificate's names; `signed_at_ms` is now
/// (Unix ms). File names are plain names in the drill directory (letters,
/// digits, `.`, `_`, `-`; no `/` or `..`), each once.
///
/// The seal is checked before it is returned, against the node's own CA at
/// `signed_at_ms`: a node whose certificate has expired gets an error here,
/// not an auditor a year later.
pub fn seal(
    material: &TlsMaterial,
    signer: &str,
    signed_at_ms: u64,
    files: &[(&str, &[u8])],
) -> Result<Seal, SealError> {
    let scheme = material.signing_scheme()?;
    seal_with(
        material.chain(),
        material.ca_certs(),
        signer,
        signed_at_ms,
        files,
        scheme,
        |msg| Ok(material.sign(msg)?),
    )
}

/// [`seal`] with the chain, CA and key given separately (tests use it for
/// certificates that [`crate::tls::load`] would refuse today).
fn seal_with(
    chain: &[CertificateDer<'static>],
    ca: &[CertificateDer<'static>],
    signer: &str,
    signed_at_ms: u64,
    files: &[(&str, &[u8])],
    scheme: SignatureScheme,
    sign: impl FnOnce(&[u8]) -> Result<(SignatureScheme, Vec<u8>), SealError>,
) -> Result<Seal, SealError> {
    check_signer(signer)?;
    check_names(files.iter().map(|(n, _)| *n))?;
    let leaf = chain.first().ok_or(SealError::NoCertificate)?;
    let names = cert_names(leaf);
    if !names.iter().any(|n| n == signer) {
        return Err(SealError::SignerNotInCertificate {
            signer: signer.to_string(),
            names,
        });
    }
    let scheme_name = scheme
        .as_str()
        .ok_or_else(|| SealError::UnknownScheme(format!("{scheme:?}")))?;
    let mut s = Seal {
        format: SEAL_FORMAT,
        signer: signer.to_string(),
        signer_names: names,
        signed_at_ms,
        scheme: scheme_name.to_string(),
        certificate_pem: chain_pem(chain),
        files: files
            .iter()
            .map(|(name, bytes)| SealedFile {
                name: name.to_string(),
                sha256: sha256_hex(bytes),
            })
            .collect(),
        signature: String::new(),
    };
    let (used, sig) = sign(&s.message())?;
    if used != scheme {
        return Err(SealError::SelfCheck(Box::new(SealError::BadSignature(
            format!("the key signed with {used:?}, not {scheme:?}"),
        ))));
    }
    s.signature = hex::encode(sig);
    let read = |name: &str| {
        files
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b.to_vec())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    };
    check(&s, read, Some(ca)).map_err(|e| SealError::SelfCheck(Box::new(e)))?;
    Ok(s)
}

/// Checks the seal: the signature over [`Seal::message`] with the public
/// key of the certificate in the seal, the signer against that
/// certificate's names, every listed file's bytes (from `read(name)`)
/// against its recorded SHA-256 (the error names the file), and, when
/// `ca_pem` is given, that the certificate chained to that CA **at
/// `signed_at_ms`** (not now). Without a CA, `chained_to_ca` is false and
/// the caller must say that the signer's identity is unchecked.
///
/// The caller checks that the files it expects (`report.json`,
/// `report.html`) are among [`Verified::files`]; names are plain file names
/// (no `/`, no `..`), safe to join to the drill directory.
pub fn verify(
    seal: &Seal,
    read: impl Fn(&str) -> Result<Vec<u8>, std::io::Error>,
    ca_pem: Option<&[u8]>,
) -> Result<Verified, SealError> {
    let ca = match ca_pem {
        None => None,
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SealError::BadCaPem(e.to_string()))?;
            if certs.is_empty() {
                return Err(SealError::NoCaCertificate);
            }
            Some(certs)
        }
    };
    check(seal, read, ca.as_deref())
}

fn check(
    seal: &Seal,
    read: impl Fn(&str) -> Result<Vec<u8>, std::io::Error>,
    ca: Option<&[CertificateDer<'static>]>,
) -> Result<Verified, SealError> {
    // The seal's shape, before any cryptography.
    if seal.format != SEAL_FORMAT {
        return Err(SealError::Format(seal.format));
    }
    check_signer(&seal.signer)?;
    check_names(seal.files.iter().map(|f| f.name.as_str()))?;
    for f in &seal.files {
        let ok = f.sha256.len() == 64
            && f.sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(SealError::BadHash {
                name: f.name.clone(),
            });
        }
    }
    let (scheme, algs) = verification_algorithms(&seal.scheme)
        .ok_or_else(|| SealError::UnknownScheme(seal.scheme.clone()))?;
    let signature =
        hex::decode(&seal.signature).map_err(|e| SealError::BadSignatureHex(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(seal.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SealError::BadPem(e.to_string()))?;
    let leaf = chain.first().ok_or(SealError::NoCertificate)?;

    // Who: the signer must be a name of the certificate.
    let names = cert_names(leaf);
    if names.is_empty() {
        return Err(SealError::BadCertificate(
            "it names no one (no DNS name, no CN), or is not X.509".into(),
        ));
    }
    if !names.contains(&seal.signer) {
        return Err(SealError::SignerNotInCertificate {
            signer: seal.signer.clone(),
            names,
        });
    }
    if seal.signer_names != names {
        return Err(SealError::SignerNamesChanged {
            recorded: seal.signer_names.clone(),
            actual: names,
        });
    }

    // The signature, with the certificate's key.
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| SealError::BadCertificate(e.to_string()))?;
    let message = seal.message();
    let mut verified = false;
    for alg in algs {
        match ee.verify_signature(*alg, &message, &signature) {
            Ok(()) => {
                verified = true;
                break;
            }
            // This algorithm is for another key type: try the next one.
            Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)) => continue,
            Err(e) => return Err(SealError::BadSignature(e.to_string())),
        }
    }
    if !verified {
        return Err(SealError::BadSignature(format!(
            "the certificate's key cannot make {scheme:?} signatures"
        )));
    }

    // Whose: the certificate chained to the CA when it signed.
    let chained_to_ca = match ca {
        None => false,
        Some(ca) => {
            check_chain(&chain, ca, seal.signed_at_ms)?;
            true
        }
    };

    // What: every file as it was signed.
    for f in &seal.files {
        let bytes = read(&f.name).map_err(|source| SealError::Read {
            name: f.name.clone(),
            source,
        })?;
        let actual = sha256_hex(&bytes);
        if actual != f.sha256 {
            return Err(SealError::Changed {
                name: f.name.clone(),
                expected: f.sha256.clone(),
                actual,
            });
        }
    }

    Ok(Verified {
        signer: seal.signer.clone(),
        signer_names: names,
        signed_at_ms: seal.signed_at_ms,
        scheme: seal.scheme.clone(),
        files: seal.files.iter().map(|f| f.name.clone()).collect(),
        chained_to_ca,
    })
}

/// The chain must lead to one of `ca` at `at_ms`, as a client certificate
/// (the same check [`crate::tls::load`] makes, at another time).
fn check_chain(
    chain: &[CertificateDer<'static>],
    ca: &[CertificateDer<'static>],
    at_ms: u64,
) -> Result<(), SealError> {
    let (leaf, intermediates) = chain.split_first().ok_or(SealError::NoCertificate)?;
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c.clone())
            .map_err(|e| SealError::BadCa(e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| SealError::BadCa(e.to_string()))?;
    let at = UnixTime::since_unix_epoch(Duration::from_millis(at_ms));
    verifier
        .verify_client_cert(leaf, intermediates, at)
        .map_err(|e| SealError::NotTrusted {
            signed_at_ms: at_ms,
            reason: e.to_string(),
        })?;
    Ok(())
}

/// The scheme named `name` and the algorithms rustls's ring provider checks
/// it with (several for ECDSA: one per curve).
fn verification_algorithms(
    name: &str,
) -> Option<(
    SignatureScheme,
    &'static [&'static dyn SignatureVerificationAlgorithm],
)> {
    rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(s, _)| s.as_str() == Some(name))
        .map(|(s, algs)| (*s, *algs))
}

fn check_signer(signer: &str) -> Result<(), SealError> {
    let bad = |reason| SealError::BadSigner {
        signer: signer.to_string(),
        reason,
    };
    if signer.is_empty() {
        return Err(bad("it is empty"));
    }
    if signer.len() > MAX_NAME {
        return Err(bad("it is longer than 255 bytes"));
    }
    if !signer.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "it holds a space, a control character or a non-ASCII one",
        ));
    }
    Ok(())
}

/// At least one name, each a plain file name, none twice.
fn check_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), SealError> {
    let mut seen = HashSet::new();
    for name in names {
        check_name(name)?;
        if !seen.insert(name) {
            return Err(SealError::DuplicateFile(name.to_string()));
        }
    }
    if seen.is_empty() {
        return Err(SealError::NoFiles);
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), SealError> {
    let bad = |reason| SealError::BadName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(bad("it is longer than 255 bytes"));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(bad(
            "it holds a path separator: seals name files in the drill directory only",
        ));
    }
    if name.contains("..") {
        return Err(bad("it holds '..'"));
    }
    if name.starts_with('.') {
        return Err(bad("it starts with '.'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(bad(
            "only letters, digits, '.', '_' and '-' are allowed (no spaces or newlines)",
        ));
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The chain as PEM, from its DER: only certificates, whatever else the
/// node's certificate file holds.
fn chain_pem(chain: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for c in chain {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4), as PEM wants.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |v: u32| char::from(ALPHABET[(v & 63) as usize]);
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(sym(v >> 18));
        out.push(sym(v >> 12));
        out.push(if chunk.len() > 1 { sym(v >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(v) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs;
    use crate::drill::{REPORT_HTML, REPORT_JSON};
    use crate::tls::{self, TlsFiles};
    use std::path::Path;
    use time::OffsetDateTime;

    const JSON: &[u8] = b"{\"format\": 1, \"id\": \"ehr-20261202T071500Z\"}\n";
    const HTML: &[u8] = b"<!doctype html><title>drill</title><p>passed</p>\n";

    /// A CA with nodes dr1 and dr2, written by `drctl certs init`'s code.
    fn certs_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        certs::init_dir(
            tmp.path(),
            &["dr1".to_string(), "dr2".to_string()],
            30,
            false,
        )
        .unwrap();
        tmp
    }

    fn material(dir: &Path, node: &str) -> TlsMaterial {
        tls::load(&TlsFiles {
            ca: dir.join(certs::CA_CERT_FILE),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        })
        .unwrap()
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    fn files() -> Vec<(&'static str, &'static [u8])> {
        vec![(REPORT_JSON, JSON), (REPORT_HTML, HTML)]
    }

    fn reader(
        files: Vec<(&'static str, Vec<u8>)>,
    ) -> impl Fn(&str) -> Result<Vec<u8>, std::io::Error> {
        move |name| {
            files
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| b.clone())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
    }

    fn original() -> impl Fn(&str) -> Result<Vec<u8>, std::io::Error> {
        reader(files().into_iter().map(|(n, b)| (n, b.to_vec())).collect())
    }

    fn ca_pem(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(certs::CA_CERT_FILE)).unwrap()
    }

    /// A seal by dr1 of the two report files, with its CA's directory.
    fn sealed() -> (tempfile::TempDir, Seal) {
        let dir = certs_dir();
        let m = material(dir.path(), "dr1");
        let s = seal(&m, "dr1", now_ms(), &files()).unwrap();
        (dir, s)
    }

    #[test]
    fn round_trip_verifies_and_chains_to_the_ca() {
        let (dir, s) = sealed();
        assert_eq!(s.scheme, "ECDSA_NISTP256_SHA256");
        assert_eq!(s.signer_names, ["dr1"]);
        let back = Seal::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        let v = verify(&back, original(), Some(&ca_pem(dir.path()))).unwrap();
        assert_eq!(
            v,
            Verified {
                signer: "dr1".into(),
                signer_names: vec!["dr1".into()],
                signed_at_ms: s.signed_at_ms,
                scheme: "ECDSA_NISTP256_SHA256".into(),
                files: vec![REPORT_JSON.into(), REPORT_HTML.into()],
                chained_to_ca: true,
            }
        );
        // Without a CA only the signature and files are checked.
        let v = verify(&back, original(), None).unwrap();
        assert!(!v.chained_to_ca);
        // The PEM in the seal is the node's chain, and only that.
        let chain: Vec<_> = CertificateDer::pem_slice_iter(s.certificate_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(chain, material(dir.path(), "dr1").chain());
        assert!(!s.certificate_pem.contains("PRIVATE"));
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn a_one_byte_change_in_any_file_fails_naming_it() {
        let (dir, s) = sealed();
        let ca = ca_pem(dir.path());
        for (target, len) in [(REPORT_JSON, JSON.len()), (REPORT_HTML, HTML.len())] {
            for pos in [0, len / 2, len - 1] {
                let changed: Vec<_> = files()
                    .into_iter()
                    .map(|(n, b)| {
                        let mut b = b.to_vec();
                        if n == target {
                            b[pos] ^= 0x01;
                        }
                        (n, b)
                    })
                    .collect();
                let err = verify(&s, reader(changed), Some(&ca)).unwrap_err();
                assert!(
                    matches!(&err, SealError::Changed { name, .. } if name == target),
                    "{err}"
                );
                assert!(err.to_string().contains(target), "{err}");
                assert!(err.to_string().contains("changed after"), "{err}");
            }
        }
        // A byte appended, and a file gone.
        let longer = vec![
            (REPORT_JSON, [JSON, b" "].concat()),
            (REPORT_HTML, HTML.to_vec()),
        ];
        assert!(matches!(
            verify(&s, reader(longer), Some(&ca)),
            Err(SealError::Changed { name, .. }) if name == REPORT_JSON
        ));
        let gone = vec![(REPORT_JSON, JSON.to_vec())];
        let err = verify(&s, reader(gone), Some(&ca)).unwrap_err();
        assert!(matches!(&err, SealError::Read { name, .. } if name == REPORT_HTML));
        assert!(err.to_string().contains(REPORT_HTML), "{err}");
    }

    #[test]
    fn an_edited_seal_fails_the_signature() {
        let (dir, s) = sealed();
        let ca = ca_pem(dir.path());
        let bad_sig = |e: &Seal| {
            let err = verify(e, original(), Some(&ca)).unwrap_err();
            assert!(matches!(err, SealError::BadSignature(_)), "{err}");
            assert!(
                err.to_string().contains("changed after it was signed"),
                "{err}"
            );
        };

        let mut e = s.clone();
        e.signed_at_ms += 1;
        bad_sig(&e);

        // A file's recorded hash changed to match edited bytes.
        let mut e = s.clone();
        e.files[0].sha256 = sha256_hex(b"forged");
        bad_sig(&e);

        // A file dropped, renamed, reordered or added.
        let mut e = s.clone();
        e.files.pop();
        bad_sig(&e);
        let mut e = s.clone();
        e.files[1].name = "other.html".into();
        bad_sig(&e);
        let mut e = s.clone();
        e.files.reverse();
        bad_sig(&e);
        let mut e = s.clone();
        e.files.push(SealedFile {
            name: "extra.txt".into(),
            sha256: sha256_hex(b""),
        });
        bad_sig(&e);

        // Another scheme for the same key.
        let mut e = s.clone();
        e.scheme = "ECDSA_NISTP384_SHA384".into();
        bad_sig(&e);
        let mut e = s.clone();
        e.scheme = "ED25519".into();
        bad_sig(&e);

        // A flipped signature byte.
        let mut e = s.clone();
        let mut sig = hex::decode(&e.signature).unwrap();
        let last = sig.len() - 1;
        sig[last] ^= 1;
        e.signature = hex::encode(sig);
        bad_sig(&e);

        // Another signer: not a name of the certificate.
        let mut e = s.clone();
        e.signer = "dr2".into();
        let err = verify(&e, original(), Some(&ca)).unwrap_err();
        assert!(
            matches!(err, SealError::SignerNotInCertificate { .. }),
            "{err}"
        );
        // Signer names edited to claim more.
        let mut e = s.clone();
        e.signer_names.push("dr2".into());
        let err = verify(&e, original(), Some(&ca)).unwrap_err();
        assert!(matches!(err, SealError::SignerNamesChanged { .. }), "{err}");
    }

    #[test]
    fn another_nodes_certificate_substituted_fails() {
        let (dir, s) = sealed();
        let ca = ca_pem(dir.path());
        let dr2 = std::fs::read_to_string(dir.path().join("dr2.pem")).unwrap();
        // The certificate alone: the signer is not its name.
        let mut e = s.clone();
        e.certificate_pem = dr2.clone();
        assert!(matches!(
            verify(&e, original(), Some(&ca)),
            Err(SealError::SignerNotInCertificate { .. })
        ));
        // The whole identity swapped to dr2 (same CA): dr2's key did not sign.
        e.signer = "dr2".into();
        e.signer_names = vec!["dr2".into()];
        let err = verify(&e, original(), Some(&ca)).unwrap_err();
        assert!(matches!(err, SealError::BadSignature(_)), "{err}");
        // dr2 re-signing dr1's claim with its own key is refused too.
        let m2 = material(dir.path(), "dr2");
        let mut e = s.clone();
        e.signature = hex::encode(m2.sign(&e.message()).unwrap().1);
        let err = verify(&e, original(), Some(&ca)).unwrap_err();
        assert!(matches!(err, SealError::BadSignature(_)), "{err}");
        // And dr2 cannot seal as dr1.
        assert!(matches!(
            seal(&m2, "dr1", now_ms(), &files()),
            Err(SealError::SignerNotInCertificate { .. })
        ));
    }

    #[test]
    fn a_foreign_ca_fails_the_chain_check() {
        let (_dir, s) = sealed();
        let other = certs_dir();
        let err = verify(&s, original(), Some(&ca_pem(other.path()))).unwrap_err();
        assert!(matches!(err, SealError::NotTrusted { .. }), "{err}");
        assert!(
            err.to_string().contains("not signed by a node of this CA"),
            "{err}"
        );
        // A whole foreign identity (its own CA, its own dr1) fails against ours.
        let (ours, _) = sealed();
        let m = material(other.path(), "dr1");
        let foreign = seal(&m, "dr1", now_ms(), &files()).unwrap();
        assert!(verify(&foreign, original(), None).is_ok());
        assert!(matches!(
            verify(&foreign, original(), Some(&ca_pem(ours.path()))),
            Err(SealError::NotTrusted { .. })
        ));
    }

    /// A CA and dr1 whose certificates expired yesterday, valid for the
    /// nine days before: what an auditor holds a year after the drill.
    struct Expired {
        ca_pem: String,
        chain: Vec<CertificateDer<'static>>,
        ca: Vec<CertificateDer<'static>>,
        key: Arc<dyn rustls::sign::SigningKey>,
        valid_at_ms: u64,
    }

    fn expired() -> Expired {
        use rustls::pki_types::PrivateKeyDer;
        let now = OffsetDateTime::now_utc();
        let nb = now - time::Duration::days(10);
        let na = now - time::Duration::days(1);
        let ca = certs::generate_ca("expired test CA", nb, na).unwrap();
        let node = certs::generate_node(&ca, "dr1", nb, na).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap()];
        let ca_der = vec![CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).unwrap();
        let key = provider().key_provider.load_private_key(key).unwrap();
        Expired {
            ca_pem: ca.cert_pem,
            chain,
            ca: ca_der,
            key,
            valid_at_ms: now_ms() - 5 * 86_400_000,
        }
    }

    fn sign_with(
        key: &Arc<dyn rustls::sign::SigningKey>,
        msg: &[u8],
    ) -> Result<(SignatureScheme, Vec<u8>), SealError> {
        let s = key.choose_scheme(tls::SIGNING_SCHEMES).unwrap();
        Ok((s.scheme(), s.sign(msg).unwrap()))
    }

    #[test]
    fn expired_now_but_valid_when_signed_passes() {
        let x = expired();
        let s = seal_with(
            &x.chain,
            &x.ca,
            "dr1",
            x.valid_at_ms,
            &files(),
            SignatureScheme::ECDSA_NISTP256_SHA256,
            |m| sign_with(&x.key, m),
        )
        .unwrap();
        let v = verify(&s, original(), Some(x.ca_pem.as_bytes())).unwrap();
        assert!(v.chained_to_ca);
        assert_eq!(v.signed_at_ms, x.valid_at_ms);

        // The same key signing "now", after expiry: the chain check fails.
        let mut late = s.clone();
        late.signed_at_ms = now_ms();
        late.signature = hex::encode(sign_with(&x.key, &late.message()).unwrap().1);
        assert!(
            verify(&late, original(), None).is_ok(),
            "the signature holds"
        );
        let err = verify(&late, original(), Some(x.ca_pem.as_bytes())).unwrap_err();
        assert!(matches!(err, SealError::NotTrusted { .. }), "{err}");
        // And seal_with refuses to make it.
        let err = seal_with(
            &x.chain,
            &x.ca,
            "dr1",
            now_ms(),
            &files(),
            SignatureScheme::ECDSA_NISTP256_SHA256,
            |m| sign_with(&x.key, m),
        )
        .unwrap_err();
        assert!(matches!(err, SealError::SelfCheck(_)), "{err}");
    }

    #[test]
    fn seal_refuses_a_time_outside_the_certificate() {
        let dir = certs_dir();
        let m = material(dir.path(), "dr1");
        for at in [now_ms() - 30 * 86_400_000, now_ms() + 365 * 86_400_000, 0] {
            let err = seal(&m, "dr1", at, &files()).unwrap_err();
            assert!(
                matches!(&err, SealError::SelfCheck(e) if matches!(**e, SealError::NotTrusted { .. })),
                "{err}"
            );
        }
    }

    #[test]
    fn seal_refuses_bad_names_and_signers() {
        let dir = certs_dir();
        let m = material(dir.path(), "dr1");
        let t = now_ms();
        for bad in [
            "",
            "../x",
            "..",
            ".",
            "a/b",
            "/etc/passwd",
            "a\\b",
            "a b",
            "a\nb",
            ".hidden",
            "é",
        ] {
            let err = seal(&m, "dr1", t, &[(bad, b"x")]).unwrap_err();
            assert!(matches!(err, SealError::BadName { .. }), "{bad:?}: {err}");
        }
        assert!(matches!(seal(&m, "dr1", t, &[]), Err(SealError::NoFiles)));
        assert!(matches!(
            seal(&m, "dr1", t, &[("a", b"1"), ("a", b"2")]),
            Err(SealError::DuplicateFile(n)) if n == "a"
        ));
        for bad in ["", "dr 1", "dr1\nfile x y", "drü"] {
            assert!(
                matches!(seal(&m, bad, t, &files()), Err(SealError::BadSigner { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_seals_are_errors_not_panics() {
        let (dir, s) = sealed();
        let ca = ca_pem(dir.path());
        let v = |e: &Seal| verify(e, original(), Some(&ca)).unwrap_err();

        for junk in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{\"format\":1}",
            b"\xff\xfe",
        ] {
            assert!(matches!(Seal::from_json(junk), Err(SealError::NotASeal(_))));
        }
        let mut e = s.clone();
        e.format = 2;
        assert!(matches!(
            Seal::from_json(&e.to_json()),
            Err(SealError::Format(2))
        ));
        assert!(matches!(v(&e), SealError::Format(2)));

        let mut e = s.clone();
        e.files.clear();
        assert!(matches!(v(&e), SealError::NoFiles));
        let mut e = s.clone();
        e.files[1].name = REPORT_JSON.into();
        assert!(matches!(v(&e), SealError::DuplicateFile(_)));
        for bad in ["../report.json", "sub/report.json", "/etc/shadow", ".."] {
            let mut e = s.clone();
            e.files[0].name = bad.into();
            assert!(matches!(v(&e), SealError::BadName { .. }), "{bad}");
        }
        for bad in ["", "abc", &"G".repeat(64), &"A".repeat(64)] {
            let mut e = s.clone();
            e.files[0].sha256 = bad.to_string();
            assert!(matches!(v(&e), SealError::BadHash { .. }), "{bad}");
        }
        for bad in ["", "ecdsa", "Unknown(0x0403)", "ECDSA_NISTP256_SHA256 "] {
            let mut e = s.clone();
            e.scheme = bad.into();
            assert!(matches!(v(&e), SealError::UnknownScheme(_)), "{bad:?}");
        }
        for bad in ["zz", "abc", "0x00"] {
            let mut e = s.clone();
            e.signature = bad.into();
            assert!(matches!(v(&e), SealError::BadSignatureHex(_)), "{bad}");
        }
        let mut e = s.clone();
        e.signature = String::new();
        assert!(matches!(v(&e), SealError::BadSignature(_)));

        let mut e = s.clone();
        e.certificate_pem = "no certificate here".into();
        assert!(matches!(v(&e), SealError::NoCertificate));
        let mut e = s.clone();
        e.certificate_pem = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into();
        assert!(matches!(v(&e), SealError::BadPem(_)));
        let mut e = s.clone();
        e.certificate_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
        assert!(matches!(v(&e), SealError::BadCertificate(_)));

        let mut e = s.clone();
        e.signer = "dr1 x".into();
        assert!(matches!(v(&e), SealError::BadSigner { .. }));

        // The CA argument.
        assert!(matches!(
            verify(&s, original(), Some(b"not pem")),
            Err(SealError::NoCaCertificate)
        ));
        assert!(matches!(
            verify(
                &s,
                original(),
                Some(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
            ),
            Err(SealError::BadCaPem(_))
        ));
        assert!(verify(
            &s,
            original(),
            Some(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        )
        .is_err());
    }
}
