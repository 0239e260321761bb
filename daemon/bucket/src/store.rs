//! The connection to one bucket: a target URL made into an `object_store`
//! client (credentials the way each cloud's own tools take them: the
//! environment, profile and credential files, instance identity), and the
//! four calls drd makes — a create-only put, get, head, and a paged list.
//! There is no delete and no overwrite on this type: the shipping side
//! cannot destroy what it wrote. Every call retries on its own, bounded,
//! with exponential backoff and full jitter, and counts what it did.

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why a bucket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("target URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("{url}: cannot set up the client: {why}")]
    Client { url: String, why: String },
    #[error("{op} {object}: {why}")]
    Request {
        op: &'static str,
        object: String,
        why: String,
    },
    #[error(
        "{op} {object}: access denied by the store ({why}); check the credentials in the \
         environment (AWS_*, AZURE_*, GOOGLE_*) and the bucket policy"
    )]
    Denied {
        op: &'static str,
        object: String,
        why: String,
    },
    #[error("{op} {object}: gave up after {attempts} attempts over {secs} s: {why}")]
    GaveUp {
        op: &'static str,
        object: String,
        attempts: u32,
        secs: u64,
        why: String,
    },
}

/// What a create-only put found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    Created,
    /// The name was taken already; the object there is untouched.
    Exists,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Key below the target's prefix (`seg/000000010000000000000003`).
    pub key: String,
    pub size: u64,
    pub modified_ms: i64,
}

/// Counters of one bucket's traffic (shown as metrics and in status).
#[derive(Debug, Default)]
pub struct Stats {
    pub puts: AtomicU64,
    pub gets: AtomicU64,
    pub heads: AtomicU64,
    pub lists: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
    pub put_bytes: AtomicU64,
    pub get_bytes: AtomicU64,
}

/// Bounds on retrying one call.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Time after which no new attempt starts.
    pub budget: Duration,
    /// One attempt's time limit (connect + transfer).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            budget: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// A target's bucket (or container, or directory) and key prefix. A clone
/// shares the client and the counters.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    retry: RetryPolicy,
    /// The store lists in key order (S3, Azure, GCS do; a local directory
    /// does not, so its listing is read whole and sorted).
    ordered: bool,
    pub stats: Arc<Stats>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.url)
    }
}

fn bad(url: &str, why: impl Into<String>) -> StoreError {
    StoreError::BadUrl {
        url: url.to_string(),
        why: why.into(),
    }
}

/// `http://` is allowed only to a loopback address (a local test server):
/// credentials and objects otherwise cross the network in the clear.
fn check_endpoint(url: &str, endpoint: &str) -> Result<bool, StoreError> {
    let e =
        url::Url::parse(endpoint).map_err(|e| bad(url, format!("endpoint {endpoint:?}: {e}")))?;
    match e.scheme() {
        "https" => Ok(false),
        "http" => {
            let loopback = match e.host() {
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if loopback {
                Ok(true)
            } else {
                Err(bad(
                    url,
                    format!("endpoint {endpoint:?}: plain http is only allowed to a loopback address; use https"),
                ))
            }
        }
        other => Err(bad(
            url,
            format!("endpoint {endpoint:?}: scheme {other:?} must be https"),
        )),
    }
}

/// Checks a target URL (and endpoint) without building a client or
/// touching anything: what `drd --check-config` runs.
pub fn check_url(url: &str, endpoint: Option<&str>) -> Result<(), StoreError> {
    let u = url::Url::parse(url).map_err(|e| bad(url, e.to_string()))?;
    if let Some(e) = endpoint {
        check_endpoint(url, e)?;
    }
    match u.scheme() {
        "s3" | "az" | "gs" if u.host_str().unwrap_or_default().is_empty() => {
            return Err(bad(url, "no bucket (container) name after the scheme"))
        }
        "gs" if endpoint.is_some() => {
            return Err(bad(
                url,
                "`endpoint` is not used with gs:// (GCS takes its endpoint from the service \
                 account key's gcs_base_url)",
            ))
        }
        "s3" | "az" | "gs" => {}
        "file" => {
            if u.host_str().is_some_and(|h| !h.is_empty()) || u.path().len() < 2 {
                return Err(bad(
                    url,
                    "file:// needs an absolute directory, e.g. file:///srv/drd-archive",
                ));
            }
        }
        other => {
            return Err(bad(
                url,
                format!("scheme {other:?} must be s3://, az://, gs:// or file://"),
            ))
        }
    }
    if u.path().split('/').any(|p| p == ".." || p == ".")
        || url.contains("/../")
        || url.ends_with("/..")
    {
        return Err(bad(url, "the prefix may not contain `.` or `..`"));
    }
    Ok(())
}

impl Bucket {
    /// Opens `url` (`s3://BUCKET/PREFIX`, `az://CONTAINER/PREFIX`,
    /// `gs://BUCKET/PREFIX`, `file:///DIR`), with an optional endpoint for
    /// S3-compatible stores (and Azure/GCS emulators).
    pub fn open(
        url: &str,
        endpoint: Option<&str>,
        retry: RetryPolicy,
    ) -> Result<Bucket, StoreError> {
        Self::open_with(url, endpoint, retry, &[])
    }

    /// [`Bucket::open`] with settings given as the environment variables
    /// each cloud's tools read (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_ACCOUNT_NAME`,
    /// …), applied on top of the process environment: for a caller that
    /// holds them itself (a test; a tool reading a credentials vault).
    pub fn open_with(
        url: &str,
        endpoint: Option<&str>,
        retry: RetryPolicy,
        vars: &[(String, String)],
    ) -> Result<Bucket, StoreError> {
        check_url(url, endpoint)?;
        let u = url::Url::parse(url).map_err(|e| bad(url, e.to_string()))?;
        let client_err = |e: object_store::Error| StoreError::Client {
            url: url.to_string(),
            why: e.to_string(),
        };
        let allow_http = match endpoint {
            Some(e) => check_endpoint(url, e)?,
            None => false,
        };
        let options = object_store::ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout(retry.request_timeout)
            .with_connect_timeout(Duration::from_secs(10));
        // drd retries (below) so that it can count and bound them; the
        // client's own retries are off.
        let no_retry = object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        };
        let host = u.host_str().unwrap_or_default().to_string();
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match u.scheme() {
            "s3" | "az" | "gs" if host.is_empty() => {
                return Err(bad(url, "no bucket (container) name after the scheme"))
            }
            "s3" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env();
                for (k, v) in vars {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
                // S3 Object Lock buckets (the WORM setup deploy/objstore
                // recommends) refuse a put without an integrity header;
                // with the SHA-256 checksum below, S3-compatible stores
                // (moto) also want the SDK's algorithm header to accept it.
                let mut headers = http::HeaderMap::new();
                headers.insert(
                    "x-amz-sdk-checksum-algorithm",
                    http::HeaderValue::from_static("SHA256"),
                );
                let mut b = b
                    .with_bucket_name(&host)
                    .with_client_options(options.with_default_headers(headers))
                    .with_retry(no_retry)
                    // x-amz-checksum-sha256 on every put: the store checks
                    // what it received (and S3 Object Lock buckets require
                    // an integrity header on puts).
                    .with_checksum_algorithm(object_store::aws::Checksum::SHA256);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                (
                    Arc::new(b.build().map_err(client_err)?),
                    u.path().to_string(),
                )
            }
            "az" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env();
                for (k, v) in vars {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
                let mut b = b
                    .with_container_name(&host)
                    .with_client_options(options)
                    .with_retry(no_retry);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e.to_string());
                }
                (
                    Arc::new(b.build().map_err(client_err)?),
                    u.path().to_string(),
                )
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env();
                for (k, v) in vars {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
                let b = b
                    .with_bucket_name(&host)
                    .with_client_options(options)
                    .with_retry(no_retry);
                if endpoint.is_some() {
                    return Err(bad(
                        url,
                        "`endpoint` is not used with gs:// (GCS takes its endpoint from the \
                         service account key's gcs_base_url)",
                    ));
                }
                (
                    Arc::new(b.build().map_err(client_err)?),
                    u.path().to_string(),
                )
            }
            "file" => {
                let dir = std::path::PathBuf::from(u.path());
                if !dir.is_absolute() || u.path().len() < 2 {
                    return Err(bad(
                        url,
                        "file:// needs an absolute directory, e.g. file:///srv/drd-archive",
                    ));
                }
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(url, format!("cannot create {}: {e}", dir.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(client_err)?;
                (Arc::new(fs), String::new())
            }
            other => {
                return Err(bad(
                    url,
                    format!("scheme {other:?} must be s3://, az://, gs:// or file://"),
                ))
            }
        };
        let ordered = u.scheme() != "file";
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err(bad(url, "the prefix may not contain `.` or `..`"));
        }
        Ok(Bucket {
            store,
            prefix,
            url: url.trim_end_matches('/').to_string(),
            retry,
            ordered,
            stats: Arc::new(Stats::default()),
        })
    }

    /// The URL as configured, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn shown(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    /// Runs `f` until it succeeds, fails for good, or the policy's bounds
    /// are reached. Errors a retry cannot fix (not found, exists,
    /// precondition, denied) come back at once.
    async fn retried<T, F, Fut>(&self, op: &'static str, key: &str, mut f: F) -> Result<T, RawError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        let started = tokio::time::Instant::now();
        let mut delay = self.retry.first_delay;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let e = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match &e {
                object_store::Error::NotFound { .. } => return Err(RawError::NotFound),
                object_store::Error::AlreadyExists { .. } => return Err(RawError::Exists),
                object_store::Error::Precondition { .. }
                | object_store::Error::NotModified { .. } => return Err(RawError::Exists),
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(RawError::Failed(StoreError::Denied {
                        op,
                        object: self.shown(key),
                        why: e.to_string(),
                    }));
                }
                object_store::Error::NotImplemented
                | object_store::Error::NotSupported { .. }
                | object_store::Error::InvalidPath { .. }
                | object_store::Error::UnknownConfigurationKey { .. } => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(RawError::Failed(StoreError::Request {
                        op,
                        object: self.shown(key),
                        why: e.to_string(),
                    }));
                }
                _ => {}
            }
            let spent = started.elapsed();
            if attempt >= self.retry.attempts || spent + delay > self.retry.budget {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                return Err(RawError::Failed(StoreError::GaveUp {
                    op,
                    object: self.shown(key),
                    attempts: attempt,
                    secs: spent.as_secs(),
                    why: e.to_string(),
                }));
            }
            // Full jitter: anywhere in [0, delay], so that many nodes
            // retrying after one outage do not all come back at once.
            let nap = delay.mul_f64(rand::random::<f64>());
            tracing::debug!(op, object = %self.shown(key), attempt, error = %e,
                "object store request failed; retrying in {} ms", nap.as_millis());
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(nap).await;
            delay = (delay * 2).min(self.retry.max_delay);
        }
    }

    /// Writes `bytes` under `key` only if nothing has that name yet
    /// (If-None-Match: *; a local directory links the file into place).
    /// A name already taken is `Put::Exists`, and the object there is left
    /// as it is: the caller decides whether it holds the same content.
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<Put, StoreError> {
        self.put_new_parts(key, vec![bytes]).await
    }

    /// [`Bucket::put_new`] of the concatenation of `parts` (sent as they
    /// are, not copied into one buffer).
    pub async fn put_new_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<Put, StoreError> {
        let path = self.path(key);
        let len = parts.iter().map(|p| p.len() as u64).sum::<u64>();
        let payload: PutPayload = parts.into_iter().collect();
        let r = self
            .retried("put", key, || {
                self.stats.puts.fetch_add(1, Ordering::Relaxed);
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                self.store.put_opts(&path, payload.clone(), opts)
            })
            .await;
        match r {
            Ok(_) => {
                self.stats.put_bytes.fetch_add(len, Ordering::Relaxed);
                Ok(Put::Created)
            }
            Err(RawError::Exists) => Ok(Put::Exists),
            Err(RawError::NotFound) => Err(StoreError::Request {
                op: "put",
                object: self.shown(key),
                why: "the bucket (container) does not exist".into(),
            }),
            Err(RawError::Failed(e)) => Err(e),
        }
    }

    /// The object's bytes, or None when there is no such object.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = self.path(key);
        let r = self
            .retried("get", key, || async {
                self.stats.gets.fetch_add(1, Ordering::Relaxed);
                self.store.get(&path).await?.bytes().await
            })
            .await;
        match r {
            Ok(b) => {
                self.stats
                    .get_bytes
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                Ok(Some(b))
            }
            Err(RawError::NotFound) => Ok(None),
            Err(RawError::Exists) => Err(StoreError::Request {
                op: "get",
                object: self.shown(key),
                why: "unexpected precondition answer".into(),
            }),
            Err(RawError::Failed(e)) => Err(e),
        }
    }

    /// Up to `limit` keys below `dir` (e.g. `seg/`), in key order, after
    /// `after` (a key from an earlier page). Bounded per call: a caller
    /// walks a year of objects page by page.
    pub async fn list(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let dir_path = self.path(dir.trim_end_matches('/'));
        let strip = match self.prefix.is_empty() {
            true => String::new(),
            false => format!("{}/", self.prefix),
        };
        let offset = after.map(|a| self.path(a));
        let r = self
            .retried("list", dir, || async {
                self.stats.lists.fetch_add(1, Ordering::Relaxed);
                let mut s = match &offset {
                    Some(o) => self.store.list_with_offset(Some(&dir_path), o),
                    None => self.store.list(Some(&dir_path)),
                };
                let mut out = Vec::new();
                while let Some(m) = s.next().await {
                    out.push(m?);
                    // +1: a store may return `after` itself.
                    if self.ordered && out.len() > limit {
                        break;
                    }
                }
                Ok(out)
            })
            .await;
        let mut metas = match r {
            Ok(m) => m,
            Err(RawError::NotFound) => Vec::new(),
            Err(RawError::Exists) => Vec::new(),
            Err(RawError::Failed(e)) => return Err(e),
        };
        // Not every store lists in key order (a local directory does not).
        metas.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.as_ref();
                let key = full
                    .strip_prefix(strip.as_str())
                    .unwrap_or(full)
                    .to_string();
                if after.is_some_and(|a| key.as_str() <= a) {
                    return None;
                }
                Some(Listed {
                    key,
                    size: m.size,
                    modified_ms: m.last_modified.timestamp_millis(),
                })
            })
            .take(limit)
            .collect())
    }
}

/// A call's result before it is named for the caller.
enum RawError {
    NotFound,
    Exists,
    Failed(StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let r = RetryPolicy::default();
        for (url, endpoint, says) in [
            ("ftp://x/y", None, "must be s3://"),
            ("s3:///nobucket", None, "no bucket"),
            ("file://relative", None, "absolute directory"),
            ("s3://b/p", Some("http://10.0.0.1:9000"), "loopback"),
            ("s3://b/../p", None, "`..`"),
        ] {
            let e = Bucket::open(url, endpoint, r).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
        Bucket::open("s3://b/p", Some("http://127.0.0.1:9000"), r).unwrap();
    }

    #[tokio::test]
    async fn a_directory_is_write_once_and_lists_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("archive").display());
        let b = Bucket::open(&url, None, RetryPolicy::default()).unwrap();
        assert_eq!(
            b.put_new("seg/a", Bytes::from_static(b"1")).await.unwrap(),
            Put::Created
        );
        assert_eq!(
            b.put_new("seg/a", Bytes::from_static(b"2")).await.unwrap(),
            Put::Exists
        );
        assert_eq!(
            b.get("seg/a").await.unwrap().unwrap(),
            Bytes::from_static(b"1")
        );
        assert_eq!(b.get("seg/zz").await.unwrap(), None);
        for k in ["seg/b", "seg/c", "part/c/0-1"] {
            b.put_new(k, Bytes::from_static(b"x")).await.unwrap();
        }
        let page = b.list("seg/", None, 2).await.unwrap();
        let keys: Vec<_> = page.iter().map(|l| l.key.as_str()).collect();
        assert_eq!(keys, ["seg/a", "seg/b"]);
        let page = b.list("seg/", Some("seg/b"), 2).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].key, "seg/c");
        assert_eq!(b.stats.puts.load(Ordering::Relaxed), 5);
    }
}
