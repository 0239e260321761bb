//! Certificate generation for mutual TLS between drd nodes: a private CA and
//! one certificate per node, made with rcgen (ring, ECDSA P-256). `drctl certs
//! init` and the tests use it; the daemon itself only reads the files it
//! writes (see [`crate::tls`]).
//!
//! A node certificate names the node (its [`NodeId`]) as DNS subjectAltName
//! and as CN, and allows both serverAuth and clientAuth: a replica serves,
//! a primary connects, and a node may be either after a failover.

use drd_proto::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::collections::HashSet;
use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key. It belongs offline, not on any node.
pub const CA_KEY_FILE: &str = "ca.key";
/// Mode of private key files: owner read/write only.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificate files: certificates are public.
pub const CERT_MODE: u32 = 0o644;
/// Mode of a certificate directory that [`init_dir`] creates.
pub const DIR_MODE: u32 = 0o700;
/// Certificates start being valid this long before they are made, so a
/// site whose clock is a little behind accepts them at once.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::hours(1);

/// Why generating or writing certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    BadNodeName(#[from] drd_proto::ProtocolError),
    #[error(
        "node name {0:?} cannot be a certificate DNS name (labels separated by single dots, \
         no label ending in '-', not all digits like an IP address); choose another node_id"
    )]
    NotDnsName(String),
    #[error("node name {0:?} is reserved: its files would collide with the CA's ca.pem/ca.key")]
    ReservedNodeName(String),
    #[error("node {0:?} is given twice")]
    DuplicateNode(String),
    #[error("no node names given: name at least one node (e.g. --node verona-db1)")]
    NoNodes,
    #[error("validity must be at least one day")]
    ZeroValidity,
    #[error("the validity period is empty: not_after ({not_after}) is not after not_before ({not_before})")]
    EmptyValidity {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("cannot generate {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error(
        "refusing to overwrite {0}: it already exists. Use --force to replace it (a new CA \
         means every node needs a new certificate), or choose another directory"
    )]
    Exists(PathBuf),
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CertError {
    let path = path.to_path_buf();
    move |source| CertError::Io {
        action,
        path,
        source,
    }
}

/// A freshly generated CA: its certificate and private key as PEM, and what
/// it takes to sign node certificates with it.
pub struct CaBundle {
    /// The CA certificate (PEM). Every node trusts it.
    pub cert_pem: String,
    /// The CA private key (PKCS#8 PEM). Keep it offline.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A node's certificate and private key as PEM.
pub struct NodeBundle {
    pub name: NodeId,
    /// The node certificate (PEM), signed by the CA.
    pub cert_pem: String,
    /// The node private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl fmt::Debug for NodeBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeBundle")
            .field("name", &self.name)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn check_validity(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<(), CertError> {
    if not_after <= not_before {
        return Err(CertError::EmptyValidity {
            not_before,
            not_after,
        });
    }
    Ok(())
}

fn new_key(what: &str) -> Result<KeyPair, CertError> {
    KeyPair::generate().map_err(|source| CertError::Generate {
        what: format!("the key of {what}"),
        source,
    })
}

/// Generates a self-signed CA (ECDSA P-256) that may sign node certificates
/// only (path length 0), valid from `not_before` to `not_after`.
pub fn generate_ca(
    common_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CaBundle, CertError> {
    check_validity(not_before, not_after)?;
    let what = format!("the CA {common_name:?}");
    let key = new_key(&what)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "drd");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params
        .self_signed(&key)
        .map_err(|source| CertError::Generate { what, source })?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        issuer: Issuer::new(params, key),
    })
}

/// Checks that `node_name` is a valid [`NodeId`] that also works as a
/// certificate DNS name (the primary verifies the replica's certificate
/// against the replica's node name, so it must be one).
pub fn check_node_name(node_name: &str) -> Result<NodeId, CertError> {
    let id = NodeId::new(node_name)?;
    match rustls_pki_types::ServerName::try_from(node_name) {
        Ok(rustls_pki_types::ServerName::DnsName(_)) => {}
        _ => return Err(CertError::NotDnsName(node_name.to_string())),
    }
    if node_name == "ca" {
        return Err(CertError::ReservedNodeName(node_name.to_string()));
    }
    Ok(id)
}

/// Generates a node certificate signed by `ca`: CN and DNS subjectAltName are
/// the node name, extended key usages serverAuth and clientAuth.
pub fn generate_node(
    ca: &CaBundle,
    node_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<NodeBundle, CertError> {
    let name = check_node_name(node_name)?;
    check_validity(not_before, not_after)?;
    let what = format!("the certificate of node {node_name:?}");
    let key = new_key(&what)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    dn.push(DnType::OrganizationName, "drd");
    params.distinguished_name = dn;
    let dns =
        rcgen::string::Ia5String::try_from(node_name).map_err(|source| CertError::Generate {
            what: what.clone(),
            source,
        })?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(|source| CertError::Generate { what, source })?;
    Ok(NodeBundle {
        name,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Generates a CA and a certificate for each of `nodes`, valid for
/// `validity_days` from now (minus [`CLOCK_SKEW_ALLOWANCE`]), and writes
/// them into `out`: `ca.pem`, `ca.key`, `NAME.pem`, `NAME.key`.
///
/// `out` is created with mode 0700 if missing. Key files are created 0600
/// (never briefly readable by others), certificate files 0644. Existing
/// files are refused, naming the first one, unless `force`; nothing is
/// written when any name or file is refused. Returns the paths written, in
/// order.
pub fn init_dir(
    out: &Path,
    nodes: &[String],
    validity_days: u32,
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    if nodes.is_empty() {
        return Err(CertError::NoNodes);
    }
    if validity_days == 0 {
        return Err(CertError::ZeroValidity);
    }
    let mut seen = HashSet::new();
    for n in nodes {
        check_node_name(n)?;
        if !seen.insert(n.as_str()) {
            return Err(CertError::DuplicateNode(n.clone()));
        }
    }

    let mut files: Vec<(PathBuf, bool)> = vec![
        (out.join(CA_CERT_FILE), false),
        (out.join(CA_KEY_FILE), true),
    ];
    for n in nodes {
        files.push((out.join(format!("{n}.pem")), false));
        files.push((out.join(format!("{n}.key")), true));
    }

    // Check everything before writing anything.
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(CertError::NotADirectory {
                path: out.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", out)(e)),
    }
    if !force {
        for (path, _) in &files {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(CertError::Exists(path.clone()));
            }
        }
    }

    let now = OffsetDateTime::now_utc();
    let not_before = now - CLOCK_SKEW_ALLOWANCE;
    let not_after = now + Duration::days(i64::from(validity_days));
    // A CA name unique to this run: a certificate from another `certs init`
    // is then refused as "unknown issuer", not as a puzzling bad signature
    // from a CA that has the same name as ours.
    let ca_name = format!(
        "drd CA {}-{:02}-{:02} {:08x}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        rand::random::<u32>()
    );
    let ca = generate_ca(&ca_name, not_before, not_after)?;
    let mut contents = vec![ca.cert_pem.clone(), ca.key_pem.clone()];
    for n in nodes {
        let node = generate_node(&ca, n, not_before, not_after)?;
        contents.push(node.cert_pem);
        contents.push(node.key_pem);
    }

    create_dir(out)?;
    let mut written = Vec::with_capacity(files.len());
    for ((path, is_key), text) in files.into_iter().zip(contents) {
        let mode = if is_key { KEY_MODE } else { CERT_MODE };
        write_new(&path, text.as_bytes(), mode, force)?;
        written.push(path);
    }
    // The CA key exists nowhere else: without this fsync a power loss
    // shortly after `certs init` can leave the directory without the new
    // names (or with empty files), and the operator may already have copied
    // node certificates that only this CA key can ever re-issue or extend.
    File::open(out)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", out))?;
    Ok(written)
}

/// Creates `out` (and missing parents) with [`DIR_MODE`], and fsyncs the
/// parent so the new directory entry is durable.
fn create_dir(out: &Path) -> Result<(), CertError> {
    if out.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(out)
        .map_err(io_err("create directory", out))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", parent))
}

/// Writes `bytes` to a new file at `path` created with `mode`, and fsyncs it.
///
/// The file is created with `O_CREAT|O_EXCL` and its final mode, so a key
/// is never readable by others, not even for a moment, and a symlink
/// planted at `path` is not followed. With `force` an existing file is
/// removed first (its old mode must not carry over to the new key).
fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), CertError> {
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", path)(e)),
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => CertError::Exists(path.to_path_buf()),
            _ => io_err("create", path)(e),
        })?;
    if mode & 0o077 != 0 {
        // The umask may have narrowed a certificate's mode; certificates are
        // public and must be readable by the service user, so set it exactly.
        // (Keys are never widened: the umask can only narrow 0600.)
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_err("set the mode of", path))?;
    }
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use x509_parser::prelude::*;

    fn window() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (now - Duration::hours(1), now + Duration::days(1))
    }

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("PEM certificate")
            .to_vec()
    }

    #[test]
    fn node_certificate_has_name_and_both_usages() {
        let (nb, na) = window();
        let ca = generate_ca("test CA", nb, na).unwrap();
        let node = generate_node(&ca, "verona-db1", nb, na).unwrap();
        assert!(node.key_pem.contains("PRIVATE KEY"));
        let der = der(&node.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, ["verona-db1"]);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [GeneralName::DNSName("verona-db1")]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.is_ca());
        let ca_der = self::der(&ca.cert_pem);
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca_cert.is_ca());
        assert_eq!(cert.issuer(), ca_cert.subject());
    }

    #[test]
    fn bad_names_and_validity_are_refused() {
        let (nb, na) = window();
        let ca = generate_ca("test CA", nb, na).unwrap();
        for bad in ["", "a/b", "../x", ".hidden", "10.0.0.1", "a..b", "x-", "ca"] {
            assert!(generate_node(&ca, bad, nb, na).is_err(), "{bad:?} accepted");
        }
        assert!(generate_node(&ca, "dr_site.example-1", nb, na).is_ok());
        assert!(matches!(
            generate_ca("x", na, nb),
            Err(CertError::EmptyValidity { .. })
        ));
    }

    #[test]
    fn init_dir_writes_files_with_modes_and_refuses_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("certs");
        let nodes = vec!["verona-db1".to_string(), "rochester-dr1".to_string()];
        let written = init_dir(&out, &nodes, 30, false).unwrap();
        let names: Vec<_> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca.key",
                "verona-db1.pem",
                "verona-db1.key",
                "rochester-dr1.pem",
                "rochester-dr1.key"
            ]
        );
        assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, DIR_MODE);
        for p in &written {
            let mode = std::fs::metadata(p).unwrap().mode() & 0o777;
            if p.extension().unwrap() == "key" {
                assert_eq!(mode, KEY_MODE, "{}", p.display());
            } else {
                assert_eq!(mode, CERT_MODE, "{}", p.display());
            }
        }

        let before = std::fs::read(out.join("ca.key")).unwrap();
        let err = init_dir(&out, &nodes, 30, false).unwrap_err();
        assert!(matches!(&err, CertError::Exists(p) if p.ends_with("ca.pem")));
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), before);

        // A leftover key with a loose mode is replaced by a 0600 one.
        std::fs::set_permissions(out.join("ca.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        init_dir(&out, &nodes, 30, true).unwrap();
        assert_ne!(std::fs::read(out.join("ca.key")).unwrap(), before);
        let mode = std::fs::metadata(out.join("ca.key")).unwrap().mode() & 0o777;
        assert_eq!(mode, KEY_MODE);
    }

    #[test]
    fn init_dir_checks_everything_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("certs");
        let dup = vec!["a".to_string(), "a".to_string()];
        assert!(matches!(
            init_dir(&out, &dup, 30, false),
            Err(CertError::DuplicateNode(_))
        ));
        let bad = vec!["good".to_string(), "bad/name".to_string()];
        assert!(init_dir(&out, &bad, 30, false).is_err());
        assert!(matches!(
            init_dir(&out, &[], 30, false),
            Err(CertError::NoNodes)
        ));
        assert!(!out.exists(), "nothing may be written on a refusal");

        // An existing node file is named and nothing else is written.
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("b.key"), "old").unwrap();
        let nodes = vec!["a".to_string(), "b".to_string()];
        let err = init_dir(&out, &nodes, 30, false).unwrap_err();
        assert!(matches!(&err, CertError::Exists(p) if p.ends_with("b.key")));
        assert!(!out.join("ca.pem").exists());
    }
}
