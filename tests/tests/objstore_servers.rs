//! The object-store test infrastructure (tests/src/objstore.rs,
//! tests/src/faultproxy.rs) with the real object_store client that issue
//! 19's targets use: put, get, list and create-only puts on moto (S3) and
//! Azurite (Azure Blob); S3 Object Lock buckets on moto; and the fault
//! proxy in front of moto — object_store's retries ride out its faults,
//! and without retries they show.

use drd_tests::faultproxy::{Fault, FaultProxy, FaultRates};
use drd_tests::objstore::{Azurite, Moto};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
};
use std::sync::Arc;
use std::time::Duration;

/// Quick retries: the faults are many and the test is short.
fn retries(max_retries: usize) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            base: 2.0,
        },
        max_retries,
        retry_timeout: Duration::from_secs(20),
    }
}

fn client_options() -> ClientOptions {
    ClientOptions::new().with_timeout(Duration::from_secs(10))
}

/// An S3 store built from the harness's environment (as a drd process
/// would read it), with `endpoint` in place of moto's own.
fn s3(moto: &Moto, endpoint: &str, bucket: &str, retry: RetryConfig) -> Arc<dyn ObjectStore> {
    // Client options first: they replace those the config keys set
    // (AWS_ALLOW_HTTP among them).
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_client_options(client_options())
        .with_retry(retry);
    for (k, v) in moto.env_via(endpoint) {
        let key: AmazonS3ConfigKey = k.to_ascii_lowercase().parse().unwrap();
        b = b.with_config(key, v);
    }
    Arc::new(b.build().unwrap())
}

/// An S3 store that sends a SHA-256 checksum with every put, named in
/// `x-amz-sdk-checksum-algorithm` as the AWS SDKs do: what a put into an
/// Object Lock bucket with default retention needs. object_store sends
/// only `x-amz-checksum-sha256` by itself, which moto does not take for
/// that (the header is added to every request, which S3 ignores elsewhere).
fn s3_with_checksum(moto: &Moto, bucket: &str) -> Arc<dyn ObjectStore> {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-amz-sdk-checksum-algorithm",
        http::HeaderValue::from_static("SHA256"),
    );
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_client_options(client_options().with_default_headers(headers))
        .with_checksum_algorithm(Checksum::SHA256);
    for (k, v) in moto.env() {
        let key: AmazonS3ConfigKey = k.to_ascii_lowercase().parse().unwrap();
        b = b.with_config(key, v);
    }
    Arc::new(b.build().unwrap())
}

fn azure(az: &Azurite, endpoint: &str, container: &str) -> Arc<dyn ObjectStore> {
    let mut b = MicrosoftAzureBuilder::new()
        .with_container_name(container)
        .with_client_options(client_options())
        .with_retry(retries(3));
    for (k, v) in az.env_via(endpoint) {
        let key: AzureConfigKey = k.to_ascii_lowercase().parse().unwrap();
        b = b.with_config(key, v);
    }
    Arc::new(b.build().unwrap())
}

fn create() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

async fn get(store: &dyn ObjectStore, name: &str) -> Vec<u8> {
    let r = store.get(&Path::from(name)).await;
    let r = r.unwrap_or_else(|e| panic!("get {name}: {e}"));
    r.bytes().await.unwrap().to_vec()
}

async fn list(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    names.sort();
    names
}

/// What the product relies on, on one store: put, get, list, and a
/// create-only put that refuses an existing name.
async fn store_basics(store: &dyn ObjectStore) {
    let a = "wal/000000010000000000000001";
    let b = "wal/000000010000000000000002";
    let segment: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    store
        .put(&Path::from(a), PutPayload::from(segment.clone()))
        .await
        .unwrap();
    assert_eq!(get(store, a).await, segment);
    store
        .put_opts(&Path::from(b), PutPayload::from_static(b"second"), create())
        .await
        .expect("a create-only put of a new name succeeds");
    store
        .put(&Path::from("other/x"), PutPayload::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(list(store, "wal").await, vec![a.to_string(), b.to_string()]);

    let again = store
        .put_opts(
            &Path::from(a),
            PutPayload::from_static(b"overwrite?"),
            create(),
        )
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "a create-only put of an existing name must fail with AlreadyExists: {again:?}"
    );
    assert_eq!(
        get(store, a).await,
        segment,
        "the refused put changed nothing"
    );
}

#[tokio::test]
async fn moto_s3_put_get_list_and_create_only() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("drd-wal");
    let store = s3(&moto, &moto.endpoint(), "drd-wal", retries(3));
    store_basics(store.as_ref()).await;

    // Object Lock (WORM) buckets: moto keeps the setting per bucket.
    moto.create_bucket_with_object_lock("drd-wal-locked");
    moto.set_default_retention("drd-wal-locked", "COMPLIANCE", 1);
    assert!(moto.object_lock_enabled("drd-wal-locked"));
    let conf = moto.object_lock_configuration("drd-wal-locked").unwrap();
    assert!(
        conf.contains("<Mode>COMPLIANCE</Mode><Days>1</Days>"),
        "{conf}"
    );
    assert!(!moto.object_lock_enabled("drd-wal"));
    // As on AWS, a put into a bucket with default retention needs a
    // checksum (Content-MD5 or an x-amz-checksum-*): moto refuses one
    // without (MissingUploadObjectWithObjectLockHeaders).
    let plain = s3(&moto, &moto.endpoint(), "drd-wal-locked", retries(0));
    let refused = plain
        .put(&Path::from("no-checksum"), PutPayload::from_static(b"x"))
        .await;
    let refusal = format!("{refused:?}");
    assert!(
        refusal.contains("MissingUploadObjectWithObjectLockHeaders"),
        "{refusal}"
    );
    let locked = s3_with_checksum(&moto, "drd-wal-locked");
    store_basics(locked.as_ref()).await;
}

#[tokio::test]
async fn azurite_put_get_list_and_create_only() {
    let Some(az) = Azurite::start() else { return };
    az.create_container("drd-wal");
    let store = azure(&az, &az.endpoint(), "drd-wal");
    store_basics(store.as_ref()).await;

    // Through the proxy with no faults: Azurite keeps connections alive,
    // so this exercises the proxy's keep-alive forwarding.
    let proxy = FaultProxy::start(az.port(), 1, FaultRates::NONE);
    az.create_container("via-proxy");
    let endpoint = format!("{}/{}", proxy.url(), Azurite::ACCOUNT);
    let store = azure(&az, &endpoint, "via-proxy");
    store_basics(store.as_ref()).await;
    let c = proxy.counts();
    assert_eq!(c.failures(), 0);
    assert_eq!(c.forwarded, c.requests);
    assert!(c.forwarded >= 6, "{c:?}");
}

#[tokio::test]
async fn fault_proxy_faults_show_without_retries_and_retries_ride_them_out() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket("drd-wal");
    let faults = FaultRates {
        latency: 0.3,
        max_latency: Duration::from_millis(20),
        reset_before: 0.1,
        reset_mid_response: 0.1,
        close_mid_response: 0.05,
        slow_down: 0.15,
    };
    let proxy = FaultProxy::start(moto.port(), 19, faults);

    // Without retries, the faults reach the caller.
    let bare = s3(&moto, &proxy.url(), "drd-wal", retries(0));
    let mut failed = 0;
    for i in 0..20 {
        let name = Path::from(format!("bare/{i:03}"));
        if bare
            .put(&name, PutPayload::from_static(b"x"))
            .await
            .is_err()
        {
            failed += 1;
        }
    }
    let c = proxy.counts();
    assert!(failed > 0, "no put failed without retries: {c:?}");
    assert!(c.failures() >= failed, "{failed} failed puts, {c:?}");

    // With retries, every put completes, and the proxy did inject faults.
    let before = proxy.counts();
    let store = s3(&moto, &proxy.url(), "drd-wal", retries(10));
    const N: usize = 40;
    for i in 0..N {
        let name = Path::from(format!("wal/{i:03}"));
        let body = format!("segment {i}").into_bytes();
        store
            .put(&name, PutPayload::from(body))
            .await
            .unwrap_or_else(|e| panic!("put {i} with retries: {e}"));
    }
    let c = proxy.counts();
    assert!(
        c.failures() > before.failures(),
        "no fault injected during the retried puts: {c:?}"
    );
    assert!(c.delayed > 0, "{c:?}");
    // What landed, read straight from moto.
    let direct = s3(&moto, &moto.endpoint(), "drd-wal", retries(0));
    assert_eq!(list(direct.as_ref(), "wal").await.len(), N);
    assert_eq!(get(direct.as_ref(), "wal/007").await, b"segment 7");

    // A reset after the server answered: the create-only put landed, the
    // client got an error (object_store does not retry a PUT it cannot
    // know to be idempotent), and a second try finds the name taken.
    proxy.set_rates(FaultRates {
        reset_mid_response: 1.0,
        ..FaultRates::NONE
    });
    let name = Path::from("wal/ambiguous");
    let first = store
        .put_opts(&name, PutPayload::from_static(b"landed"), create())
        .await;
    assert!(
        first.is_err(),
        "the response was cut, yet the put succeeded"
    );
    proxy.heal_all();
    let second = store
        .put_opts(&name, PutPayload::from_static(b"landed"), create())
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "{second:?}"
    );
    assert_eq!(get(direct.as_ref(), "wal/ambiguous").await, b"landed");

    // The same with an orderly close (FIN) instead of a reset: object_store
    // takes the cut response for a request never sent and retries even a
    // create-only put, whose second try then meets the first one's object.
    // AlreadyExists from a create-only put therefore does not prove that
    // someone else wrote the name: the product must compare what is there.
    let closes = proxy.counts().close_mid_response;
    proxy.inject_next(Fault::CloseMidResponse);
    let name = Path::from("wal/retried");
    let retried = store
        .put_opts(&name, PutPayload::from_static(b"mine"), create())
        .await;
    assert_eq!(proxy.counts().close_mid_response, closes + 1);
    assert!(
        matches!(retried, Err(object_store::Error::AlreadyExists { .. })),
        "{retried:?}"
    );
    assert_eq!(get(direct.as_ref(), "wal/retried").await, b"mine");

    // Healed: requests pass untouched.
    let healed = proxy.counts();
    store
        .put(&Path::from("wal/healed"), PutPayload::from_static(b"ok"))
        .await
        .unwrap();
    assert_eq!(proxy.counts().failures(), healed.failures());
}
