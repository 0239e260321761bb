//! Object-store emulators for the object-store target tests (issue 19):
//! moto's S3 server and Azurite's blob service, each a real process on a
//! free 127.0.0.1 port with its own temporary directory, ready once it
//! answers HTTP (polled with a deadline), killed on drop.
//!
//! `deploy/dev/setup.sh` (`drd_setup test`, run by `tests/run`) installs
//! them under /opt/drd-test with their programs in [`BIN_DIR`]; a missing
//! program fails the test (see [`crate::require`]) — a skip would hide a
//! broken install step.
//!
//! No GCS emulator: object_store's GCS client speaks the XML API (PUT/GET
//! `/{bucket}/{object}`, `list-type=2` listings, an `x-goog-generation`
//! header), which neither `gcp-storage-emulator` nor fake-gcs-server (the
//! ones PyPI and npm carry) implement.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `drd_setup test` links the emulators' programs.
pub const BIN_DIR: &str = "/opt/drd-test/bin";

/// Overrides [`BIN_DIR`] (a developer's own install elsewhere).
pub const BIN_DIR_ENV: &str = "DRD_TEST_BIN_DIR";

/// How long a server may take to answer its first request: moto imports
/// for a few seconds, more on a loaded 2-core machine.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Per-request deadline of the harness's own HTTP requests (bucket and
/// container creation, readiness probes).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

const INSTALL_HINT: &str = "Run `. deploy/dev/setup.sh && drd_setup test` (installs it into \
                            /opt/drd-test)";

/// The path of an emulator's program, or None (after [`crate::require::missing`],
/// which panics unless skipping was asked for).
fn program(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(BIN_DIR_ENV).map_or_else(|| PathBuf::from(BIN_DIR), PathBuf::from);
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    crate::require::missing(&format!("{} not found", path.display()), INSTALL_HINT);
    None
}

/// One emulator process, its directory and log.
struct Server {
    what: &'static str,
    port: u16,
    /// The server's working directory and data; removed on drop.
    dir: tempfile::TempDir,
    log: PathBuf,
    child: Child,
}

impl Server {
    /// Starts `program` with the arguments `args(port, dir)` gives, and
    /// waits until it answers an HTTP request on `port`.
    fn start(
        what: &'static str,
        program: &Path,
        args: impl FnOnce(u16, &Path) -> Vec<String>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("drd-{what}-"))
            .tempdir()
            .unwrap();
        let port = crate::free_port();
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args(port, dir.path()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut s = Self {
            what,
            port,
            dir,
            log,
            child,
        };
        s.wait_ready();
        s
    }

    /// Polls until any HTTP answer comes back (an error status counts: the
    /// server is up); panics with the log if it exits or the deadline passes.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if http(self.port, "GET", "/", &[], b"").is_ok() {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "{} exited with {st} during start:\n{}",
                    self.what,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer on 127.0.0.1:{} within {START_DEADLINE:?}:\n{}",
                self.what,
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Both programs are the server itself (a Python or Node script run
        // by its interpreter), so killing the child ends the server.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port` (one connection, closed
/// after the answer); returns the status code and the body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// moto in server mode: an S3 API on 127.0.0.1 (path-style requests, any
/// credentials accepted, SigV4 checked for form only).
pub struct Moto {
    server: Server,
}

impl Moto {
    /// The credentials and region moto is given; any values work.
    pub const ACCESS_KEY_ID: &str = "test";
    pub const SECRET_ACCESS_KEY: &str = "test";
    pub const REGION: &str = "us-east-1";

    /// Starts moto_server; None only when a missing install is skipped
    /// knowingly (`DRD_TESTS_ALLOW_SKIP=1`, see [`crate::require`]).
    pub fn start() -> Option<Self> {
        let prog = program("moto_server")?;
        let server = Server::start("moto", &prog, |port, _| {
            vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        });
        Some(Self { server })
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    /// The server's directory (its log is `server.log` there).
    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    /// Creates `bucket` (an unsigned `PUT /{bucket}`, which moto accepts).
    pub fn create_bucket(&self, bucket: &str) {
        self.put_bucket(bucket, &[]);
    }

    /// Creates `bucket` with S3 Object Lock enabled (which also turns on
    /// versioning, as on AWS).
    pub fn create_bucket_with_object_lock(&self, bucket: &str) {
        self.put_bucket(bucket, &[("x-amz-bucket-object-lock-enabled", "true")]);
    }

    /// Sets an Object Lock bucket's default retention: every new object
    /// version is locked for `days` in `mode` (`GOVERNANCE` or
    /// `COMPLIANCE`). moto refuses a locked version's delete (AccessDenied)
    /// as S3 does; it accepts this only while the bucket is empty.
    pub fn set_default_retention(&self, bucket: &str, mode: &str, days: u32) {
        let body = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention>\
             <Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention></Rule>\
             </ObjectLockConfiguration>"
        );
        let (code, text) = http(
            self.port(),
            "PUT",
            &format!("/{bucket}?object-lock"),
            &[("Content-Type", "application/xml")],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("PUT /{bucket}?object-lock: {e}"));
        assert_eq!(code, 200, "set default retention on {bucket}: {text}");
    }

    /// The bucket's Object Lock configuration (XML), or None without one.
    pub fn object_lock_configuration(&self, bucket: &str) -> Option<String> {
        let (code, body) = http(
            self.port(),
            "GET",
            &format!("/{bucket}?object-lock"),
            &[],
            b"",
        )
        .unwrap_or_else(|e| panic!("GET /{bucket}?object-lock: {e}"));
        (code == 200).then_some(body)
    }

    /// Whether the bucket's Object Lock configuration says `Enabled`.
    pub fn object_lock_enabled(&self, bucket: &str) -> bool {
        self.object_lock_configuration(bucket)
            .is_some_and(|c| c.contains("<ObjectLockEnabled>Enabled</ObjectLockEnabled>"))
    }

    fn put_bucket(&self, bucket: &str, headers: &[(&str, &str)]) {
        let (code, body) = http(self.port(), "PUT", &format!("/{bucket}"), headers, b"")
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
        assert_eq!(code, 200, "create bucket {bucket}: {body}");
    }

    /// The environment object_store's `AmazonS3Builder::from_env` (and so a
    /// drd process) needs to reach this server at its own endpoint.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_via(&self.endpoint())
    }

    /// The same, with requests sent to `endpoint` instead (a fault proxy
    /// in front of moto).
    pub fn env_via(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_ACCESS_KEY),
            ("AWS_REGION", Self::REGION),
            ("AWS_ENDPOINT", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// Azurite's blob service on 127.0.0.1 with its one well-known development
/// account; requests are path-style (`/{account}/{container}/{blob}`) and
/// signed with the account key (SharedKey), as on Azure.
pub struct Azurite {
    server: Server,
}

impl Azurite {
    /// The development account every Azurite has, and its documented key.
    pub const ACCOUNT: &str = "devstoreaccount1";
    pub const ACCOUNT_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// The REST API version the harness's own requests ask for.
    const API_VERSION: &str = "2021-08-06";

    /// Starts azurite-blob with its data in a temporary directory; None
    /// only when a missing install is skipped knowingly (see [`Moto::start`]).
    pub fn start() -> Option<Self> {
        let prog = program("azurite-blob")?;
        let server = Server::start("azurite", &prog, |port, dir| {
            vec![
                "--blobHost".into(),
                "127.0.0.1".into(),
                "--blobPort".into(),
                port.to_string(),
                "--location".into(),
                dir.join("data").display().to_string(),
                "--silent".into(),
                // object_store may ask for a newer API version than this
                // Azurite knows; the calls it makes are old ones.
                "--skipApiVersionCheck".into(),
                // The account from the path, never from the host name.
                "--disableProductStyleUrl".into(),
                // No reports to Microsoft (nor DNS look-ups that fail here).
                "--disableTelemetry".into(),
            ]
        });
        Some(Self { server })
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The account's blob endpoint, `http://127.0.0.1:PORT/devstoreaccount1`
    /// (object_store's `with_endpoint`, not its `use_emulator`, which reads
    /// the port from a process-wide environment variable).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.server.port, Self::ACCOUNT)
    }

    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    /// Creates `container` (Create Container, signed with the account key).
    pub fn create_container(&self, container: &str) {
        let date = http_date(time::OffsetDateTime::now_utc());
        // The string to sign for a request with no body and no standard
        // headers: the verb, eleven empty standard headers, the x-ms-
        // headers in order, then the resource (the account, then the
        // path, which starts with the account again) and the query.
        let to_sign = format!(
            "PUT\n{}x-ms-date:{date}\nx-ms-version:{}\n/{a}/{a}/{container}\nrestype:container",
            "\n".repeat(11),
            Self::API_VERSION,
            a = Self::ACCOUNT,
        );
        let auth = format!(
            "SharedKey {}:{}",
            Self::ACCOUNT,
            shared_key_signature(Self::ACCOUNT_KEY, &to_sign)
        );
        let (code, body) = http(
            self.port(),
            "PUT",
            &format!("/{}/{container}?restype=container", Self::ACCOUNT),
            &[
                ("x-ms-date", date.as_str()),
                ("x-ms-version", Self::API_VERSION),
                ("Authorization", auth.as_str()),
            ],
            b"",
        )
        .unwrap_or_else(|e| panic!("create container {container}: {e}"));
        assert_eq!(code, 201, "create container {container}: {body}");
    }

    /// The environment object_store's `MicrosoftAzureBuilder::from_env`
    /// (and so a drd process) needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_via(&self.endpoint())
    }

    /// The same, with requests sent to `endpoint` (which must end in
    /// `/devstoreaccount1`; a fault proxy in front of Azurite).
    pub fn env_via(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_ACCOUNT_NAME", Self::ACCOUNT),
            ("AZURE_STORAGE_ACCOUNT_KEY", Self::ACCOUNT_KEY),
            ("AZURE_STORAGE_ENDPOINT", endpoint),
            ("AZURE_ALLOW_HTTP", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// Base64 of HMAC-SHA256(`key_b64` decoded, `to_sign`): Azure's SharedKey.
fn shared_key_signature(key_b64: &str, to_sign: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(key_b64).expect("account key is base64");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    b64.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref())
}

/// RFC 7231's date, `Wed, 02 Dec 2026 12:58:02 GMT` (x-ms-date).
fn http_date(t: time::OffsetDateTime) -> String {
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        &t.weekday().to_string()[..3],
        t.day(),
        &t.month().to_string()[..3],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_date_is_rfc7231() {
        let t = time::OffsetDateTime::from_unix_timestamp(1_796_216_282).unwrap();
        assert_eq!(super::http_date(t), "Wed, 02 Dec 2026 12:58:02 GMT");
    }
}
