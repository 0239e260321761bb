//! Object-store targets (issue 19) against a real S3-compatible server
//! (moto, started by the test on 127.0.0.1): a stream shipped to a bucket
//! while its growing segment grows, restored through `drctl wal-fetch
//! --from` byte-identical; objects hold no plaintext; a wrong identity is a
//! clear error; `drctl verify --from` names an object altered or removed in
//! the bucket; an overwrite through drd's own code path is refused; kill -9
//! mid-upload loses and duplicates nothing; uploads through a fault proxy
//! (latency, resets, 503s) finish, with the retries counted.

use drd_tests::faultproxy::{FaultProxy, FaultRates};
use drd_tests::objstore::Moto;
use drd_tests::{drctl_json, seg_name, wait_for, Pair};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BUCKET: &str = "hospital-dr";
const MARKER: &[u8] = b"PATIENT-RECORD-MARKER-7F3A";

/// A segment's bytes: the marker every 4 KiB among pseudo-random bytes (so
/// an object that held plaintext would show it).
fn segment_bytes(n: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        if out.len() % 4096 == 0 {
            out.extend_from_slice(MARKER);
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(x as u8);
        }
    }
    out.truncate(len);
    out
}

fn keys_init(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = std::process::Command::new(drd_tests::bin("drctl"))
        .args(["keys", "init", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keys init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.contains("AGE-SECRET-KEY-1"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    (key, recipient)
}

/// drctl at the restore site: no drd, only the bucket (and moto's env).
fn drctl_from(moto_env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(drd_tests::bin("drctl"))
        .args(args)
        .env("DRCTL_NO_PROGRESS", "true")
        .envs(moto_env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `drctl wal-fetch --from URL --endpoint E --identity KEY NAME DEST` at
/// the restore site: (exit code, stderr).
fn fetch_from(
    env: &[(String, String)],
    url: &str,
    endpoint: &str,
    key: &str,
    name: &str,
    dest: &Path,
) -> (i32, String) {
    let (code, _, stderr) = drctl_from(
        env,
        &[
            "wal-fetch",
            "--from",
            url,
            "--endpoint",
            endpoint,
            "--identity",
            key,
            name,
            dest.to_str().unwrap(),
        ],
    );
    (code, stderr)
}

/// `drctl verify --from URL --endpoint E --identity KEY`: (exit code,
/// stdout, stderr).
fn verify_from(
    env: &[(String, String)],
    url: &str,
    endpoint: &str,
    key: &str,
) -> (i32, String, String) {
    drctl_from(
        env,
        &[
            "verify",
            "--from",
            url,
            "--endpoint",
            endpoint,
            "--identity",
            key,
        ],
    )
}

/// The keys `drctl ls --from` lists under `seg/` (every page).
fn listed(
    env: &[(String, String)],
    url: &str,
    endpoint: &str,
    partials: bool,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let mut args = vec![
            "ls",
            "--from",
            url,
            "--endpoint",
            endpoint,
            "--json",
            "--limit",
            "50",
        ];
        if partials {
            args.push("--partials");
        }
        let a;
        if let Some(x) = &after {
            a = x.clone();
            args.extend(["--after", a.as_str()]);
        }
        let (code, stdout, stderr) = drctl_from(env, &args);
        assert_eq!(code, 0, "ls: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for o in v["objects"].as_array().unwrap() {
            out.push((
                o["key"].as_str().unwrap().to_string(),
                o["size"].as_u64().unwrap(),
            ));
        }
        match v["next_after"].as_str() {
            Some(n) if !partials => after = Some(n.to_string()),
            _ => return out,
        }
    }
    panic!("more than 100 pages");
}

/// Direct access to the bucket with more rights than drd uses (an
/// administrator, or an attacker holding them): object_store's own S3
/// client, no drd code.
fn admin(moto: &Moto) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(moto.endpoint())
        .with_allow_http(true)
        .with_region(Moto::REGION)
        .with_access_key_id(Moto::ACCESS_KEY_ID)
        .with_secret_access_key(Moto::SECRET_ACCESS_KEY)
        .build()
        .unwrap()
}

fn obj_path(key: &str) -> object_store::path::Path {
    object_store::path::Path::from(format!("ehr-prod/{key}"))
}

/// The raw object at `key` below the stream's prefix.
async fn raw_object(moto: &Moto, key: &str) -> Vec<u8> {
    use object_store::ObjectStore;
    let r = admin(moto).get(&obj_path(key)).await.unwrap();
    r.bytes().await.unwrap().to_vec()
}

fn target_keys(url: &str, endpoint: &str, recipient: &str, interval: &str) -> String {
    format!(
        "\n[[stream.target]]\nurl = \"{url}\"\nendpoint = \"{endpoint}\"\nrecipients = [\"{recipient}\"]\n\
         upload_interval = \"{interval}\"\n"
    )
}

/// Waits until the bucket (`(env, url, endpoint, identity)`) lists
/// `sealed` segments and `drctl wal-fetch --from` restores the growing
/// segment `growing.0` as `growing.1`'s length, then checks its bytes.
async fn wait_bucket_holds(
    (env, url, endpoint, key): (&[(String, String)], &str, &str, &str),
    sealed: usize,
    growing: (u64, &[u8]),
    dest: &Path,
) {
    let (n, want) = growing;
    wait_for(
        &format!(
            "{sealed} sealed segments and the growing one's {} bytes in the bucket",
            want.len()
        ),
        Duration::from_secs(30),
        || async {
            let listed_all = listed(env, url, endpoint, false).len() == sealed;
            let (code, _) = fetch_from(env, url, endpoint, key, &seg_name(n), dest);
            (listed_all && code == 0 && std::fs::read(dest).unwrap().len() == want.len())
                .then_some(())
        },
    )
    .await;
    assert_eq!(std::fs::read(dest).unwrap(), want, "segment {n} restored");
}

fn target_status(pair: &Pair) -> serde_json::Value {
    let v = drctl_json(&pair.primary.socket, &["status"], 0);
    v["targets"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reaches_the_bucket_encrypted_and_restores_byte_identical() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let endpoint = moto.endpoint();
    let url = format!("s3://{BUCKET}/ehr-prod");
    let keydir = tempfile::tempdir().unwrap();
    let (key, recipient) = keys_init(keydir.path(), "dr.key");
    let mut pair = Pair::with_stream_keys("", &target_keys(&url, &endpoint, &recipient, "500ms"));
    pair.primary.env = moto.env();
    pair.replica.start();
    pair.primary.start();

    // Three sealed segments and a fourth that grows.
    const SEG: usize = 1 << 20;
    for n in 1..=3 {
        std::fs::write(pair.wal.join(seg_name(n)), segment_bytes(n, SEG)).unwrap();
    }
    let growing = segment_bytes(4, SEG);
    let g = pair.wal.join(seg_name(4));
    std::fs::write(&g, &growing[..100_000]).unwrap();
    pair.wait_durable(3 * SEG as u64 + 100_000, Duration::from_secs(30))
        .await;
    let env = moto.env();
    wait_for(
        "three sealed segments in the bucket",
        Duration::from_secs(30),
        || async {
            let keys = listed(&env, &url, &endpoint, false);
            (keys.len() == 3).then_some(())
        },
    )
    .await;
    // The growing segment's first 100000 bytes go up before it grows, so
    // that the growth below is a second partial upload, not the first.
    wait_for(
        "a partial upload of the growing segment",
        Duration::from_secs(30),
        || async { (target_status(&pair)["partials"].as_u64() >= Some(1)).then_some(()) },
    )
    .await;
    // The growing segment: its partial uploads follow it as it grows.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&g).unwrap();
        f.write_all(&growing[100_000..300_000]).unwrap();
    }
    pair.wait_durable(3 * SEG as u64 + 300_000, Duration::from_secs(30))
        .await;
    let key_s = key.to_str().unwrap().to_string();
    let dest = keydir.path().join("restored");
    wait_for(
        "the growing segment's 300000 bytes in the bucket",
        Duration::from_secs(30),
        || async {
            let (code, _, _) = drctl_from(
                &env,
                &[
                    "wal-fetch",
                    "--from",
                    &url,
                    "--endpoint",
                    &endpoint,
                    "--identity",
                    &key_s,
                    &seg_name(4),
                    dest.to_str().unwrap(),
                ],
            );
            (code == 0 && std::fs::read(&dest).unwrap().len() == 300_000).then_some(())
        },
    )
    .await;
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        growing[..300_000],
        "growing segment restored"
    );
    for n in 1..=3 {
        let (code, stderr) = fetch_from(&env, &url, &endpoint, &key_s, &seg_name(n), &dest);
        assert_eq!(code, 0, "wal-fetch {n}: {stderr}");
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            segment_bytes(n, SEG),
            "segment {n} byte-identical"
        );
    }
    // A segment that is not there: exit 1, as restore_command must.
    let (code, stderr) = fetch_from(&env, &url, &endpoint, &key_s, &seg_name(9), &dest);
    assert_eq!(code, 1, "{stderr}");

    // No object holds the plaintext.
    let all = listed(&env, &url, &endpoint, true);
    assert!(all.iter().any(|(k, _)| k.starts_with("part/")), "{all:?}");
    for (k, _) in &all {
        let body = raw_object(&moto, k).await;
        assert!(body.starts_with(b"drd-object v1\n"), "{k}");
        assert!(
            !body.windows(MARKER.len()).any(|w| w == MARKER),
            "{k} holds the plaintext marker"
        );
    }
    // A wrong identity: a clear error, fatal to restore_command.
    let (wrong, _) = keys_init(keydir.path(), "other.key");
    let (code, stderr) = fetch_from(
        &env,
        &url,
        &endpoint,
        wrong.to_str().unwrap(),
        &seg_name(2),
        &dest,
    );
    assert_eq!(code, 126, "{stderr}");
    assert!(
        stderr.contains("cannot be decrypted with the identity given"),
        "{stderr}"
    );

    // verify --from: all good, and its chain head is the primary's.
    let (code, stdout, stderr) = drctl_from(
        &env,
        &[
            "verify",
            "--from",
            &url,
            "--endpoint",
            &endpoint,
            "--identity",
            &key_s,
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["segments"], 3);
    assert_eq!(report["plaintext_checked"], true);
    let local = drctl_json(&pair.primary.socket, &["verify"], 0);
    assert_eq!(
        report["chain_head"], local["chain_head"],
        "the bucket's chain head is the primary's"
    );
    let t = target_status(&pair);
    assert_eq!(t["segments"], 3, "{t}");
    assert!(t["partials"].as_u64().unwrap() >= 2, "{t}");
    assert_eq!(t["state"], "caught up", "{t}");

    // drd's own code path refuses to overwrite: the primary's catalog says
    // segment 2 is other bytes than the bucket's (a primary compromised,
    // or pointed at another stream's prefix).
    pair.primary.kill9();
    let bucket = drd_bucket::Bucket::open_with(
        &url,
        Some(&endpoint),
        drd_bucket::RetryPolicy::default(),
        &moto.env(),
    )
    .unwrap();
    let archive = drd_bucket::Archive::new(bucket, "ehr-prod", "attacker");
    let sealer = drd_bucket::Sealer::from_config(std::slice::from_ref(&recipient), None).unwrap();
    let before = raw_object(&moto, &format!("seg/{}", seg_name(2))).await;
    let evil = vec![0u8; SEG];
    let err = archive
        .write_segment(
            &sealer,
            &drd_bucket::SealedSegment {
                name: &seg_name(2),
                start: SEG as u64,
                bytes: &evil,
                prev_chain: [0; 32],
                chain: [1; 32],
                epoch: 9,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, drd_bucket::ArchiveError::Conflict { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("never overwrites"), "{err}");
    assert_eq!(
        raw_object(&moto, &format!("seg/{}", seg_name(2))).await,
        before,
        "object untouched"
    );

    // Damage at rest, by someone with more rights than drd's: one byte of
    // segment 2's object changed, then the object removed (1 and 3 are
    // there). verify names it both times.
    use object_store::ObjectStore;
    let admin = admin(&moto);
    let seg2 = obj_path(&format!("seg/{}", seg_name(2)));
    let mut damaged = before.clone();
    let at = damaged.len() - 10;
    damaged[at] ^= 1;
    admin.put(&seg2, damaged.into()).await.unwrap();
    let (code, stdout, _) = verify_from(&env, &url, &endpoint, &key_s);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(&format!("BAD  seg/{}", seg_name(2))),
        "{stdout}"
    );
    admin.put(&seg2, before.clone().into()).await.unwrap();
    admin.delete(&seg2).await.unwrap();
    let (code, stdout, _) = verify_from(&env, &url, &endpoint, &key_s);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(&format!("BAD  seg/{}: missing", seg_name(2))),
        "{stdout}"
    );
    // restore_command stops at the gap rather than end recovery early.
    let (code, stderr) = fetch_from(&env, &url, &endpoint, &key_s, &seg_name(2), &dest);
    assert_eq!(code, 126, "{stderr}");
    assert!(stderr.contains("gap"), "{stderr}");
}

/// The shipping side's code has no call that deletes or overwrites an
/// object. Checked on the source, with a planted call shown to be caught.
#[test]
fn the_shipping_path_has_no_delete_or_overwrite() {
    fn offending(src: &str) -> Vec<String> {
        let banned = [
            ".delete(",
            "delete_stream(",
            "PutMode::Overwrite",
            "PutMode::Update",
            "copy(",
            "rename(",
            ".put(&",
        ];
        src.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter(|l| banned.iter().any(|b| l.contains(b)))
            .map(str::to_string)
            .collect()
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut found = Vec::new();
    for f in drd_tests::files_below(&root.join("daemon/bucket/src"))
        .into_iter()
        .chain([root.join("daemon/src/targets.rs")])
    {
        let text = std::fs::read_to_string(&f).unwrap();
        // The unit tests' scaffolding may do what the product never does.
        let product = text.split("#[cfg(test)]").next().unwrap();
        for l in offending(product) {
            found.push(format!("{}: {l}", f.display()));
        }
    }
    assert!(
        found.is_empty(),
        "the shipping path may not delete or overwrite: {found:#?}"
    );
    let planted = "fn f() {\n    store.delete(&path).await?;\n}\n";
    assert_eq!(
        offending(planted).len(),
        1,
        "the check must catch a planted delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_upload_loses_and_duplicates_nothing() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let endpoint = moto.endpoint();
    let url = format!("s3://{BUCKET}/ehr-prod");
    let keydir = tempfile::tempdir().unwrap();
    let (key, recipient) = keys_init(keydir.path(), "dr.key");
    let mut pair = Pair::with_stream_keys("", &target_keys(&url, &endpoint, &recipient, "1s"));
    pair.primary.env = moto.env();
    pair.replica.start();
    pair.primary.start();
    const SEG: usize = 4 << 20;
    const N: u64 = 12;
    for n in 1..=N {
        std::fs::write(pair.wal.join(seg_name(n)), segment_bytes(n, SEG)).unwrap();
    }
    pair.wait_durable(N * SEG as u64, Duration::from_secs(60))
        .await;
    let env = moto.env();
    // Kill while some, not all, segments are up.
    let seen = wait_for("the first uploads", Duration::from_secs(60), || async {
        let k = listed(&env, &url, &endpoint, false);
        (!k.is_empty()).then_some(k.len())
    })
    .await;
    pair.primary.kill9();
    let at_kill = listed(&env, &url, &endpoint, false).len();
    eprintln!(
        "killed with {at_kill} of {} sealed segments in the bucket (first seen {seen})",
        N - 1
    );
    pair.primary.start();
    wait_for(
        "every sealed segment in the bucket",
        Duration::from_secs(90),
        || async { (listed(&env, &url, &endpoint, false).len() as u64 == N - 1).then_some(()) },
    )
    .await;
    let keys = listed(&env, &url, &endpoint, false);
    let mut names: Vec<_> = keys.iter().map(|(k, _)| k.clone()).collect();
    names.dedup();
    assert_eq!(names.len() as u64, N - 1, "no segment twice: {keys:?}");
    let key_s = key.to_str().unwrap();
    let (code, stdout, stderr) = verify_from(&env, &url, &endpoint, key_s);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let dest = keydir.path().join("restored");
    for n in 1..N {
        let (code, stderr) = fetch_from(&env, &url, &endpoint, key_s, &seg_name(n), &dest);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            segment_bytes(n, SEG),
            "segment {n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_through_a_faulty_network_finish_with_retries_counted() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let proxy = FaultProxy::start(
        moto.port(),
        19,
        FaultRates {
            latency: 0.3,
            max_latency: Duration::from_millis(200),
            reset_before: 0.1,
            reset_mid_response: 0.05,
            close_mid_response: 0.0,
            slow_down: 0.15,
        },
    );
    let endpoint = proxy.url();
    let url = format!("s3://{BUCKET}/ehr-prod");
    let keydir = tempfile::tempdir().unwrap();
    let (key, recipient) = keys_init(keydir.path(), "dr.key");
    let mut pair = Pair::with_stream_keys("", &target_keys(&url, &endpoint, &recipient, "500ms"));
    pair.primary.env = moto.env_via(&endpoint);
    pair.replica.start();
    pair.primary.start();
    const SEG: usize = 1 << 20;
    const N: u64 = 9;
    for n in 1..=N {
        std::fs::write(pair.wal.join(seg_name(n)), segment_bytes(n, SEG)).unwrap();
    }
    pair.wait_durable(N * SEG as u64, Duration::from_secs(60))
        .await;
    let t = wait_for(
        "every sealed segment uploaded through the faults",
        Duration::from_secs(120),
        || async {
            let t = target_status(&pair);
            (t["segments"].as_u64() == Some(N - 1)).then_some(t)
        },
    )
    .await;
    let faults = proxy.counts();
    eprintln!("target: {t}\nproxy: {faults:?}");
    assert!(
        faults.failures() > 0,
        "the proxy injected nothing: {faults:?}"
    );
    assert!(t["retries"].as_u64().unwrap() > 0, "{t}");
    proxy.heal_all();
    let env = moto.env();
    let (code, stdout, stderr) = drctl_from(
        &env,
        &[
            "verify",
            "--from",
            &url,
            "--endpoint",
            &moto.endpoint(),
            "--identity",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("{} segments", N - 1)), "{stdout}");
}

/// The same path to Azure Blob, through Azurite: shipped, restored
/// byte-identical, verified, and an overwrite refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blob_through_azurite() {
    let Some(azurite) = drd_tests::objstore::Azurite::start() else {
        return;
    };
    azurite.create_container(BUCKET);
    let endpoint = azurite.endpoint();
    let url = format!("az://{BUCKET}/ehr-prod");
    let keydir = tempfile::tempdir().unwrap();
    let (key, recipient) = keys_init(keydir.path(), "dr.key");
    let mut pair = Pair::with_stream_keys("", &target_keys(&url, &endpoint, &recipient, "500ms"));
    let env = azurite.env();
    pair.primary.env = env.clone();
    pair.replica.start();
    pair.primary.start();
    const SEG: usize = 1 << 20;
    for n in 1..=4 {
        std::fs::write(pair.wal.join(seg_name(n)), segment_bytes(n, SEG)).unwrap();
    }
    pair.wait_durable(4 * SEG as u64, Duration::from_secs(30))
        .await;
    wait_for(
        "three sealed segments in the container",
        Duration::from_secs(30),
        || async { (listed(&env, &url, &endpoint, false).len() == 3).then_some(()) },
    )
    .await;
    let key_s = key.to_str().unwrap();
    let dest = keydir.path().join("restored");
    for n in 1..=3 {
        let (code, stderr) = fetch_from(&env, &url, &endpoint, key_s, &seg_name(n), &dest);
        assert_eq!(code, 0, "wal-fetch {n}: {stderr}");
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            segment_bytes(n, SEG),
            "segment {n}"
        );
    }
    let (code, stdout, stderr) = verify_from(&env, &url, &endpoint, key_s);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("3 segments"), "{stdout}");
    let bucket = drd_bucket::Bucket::open_with(
        &url,
        Some(&endpoint),
        drd_bucket::RetryPolicy::default(),
        &env,
    )
    .unwrap();
    let archive = drd_bucket::Archive::new(bucket, "ehr-prod", "attacker");
    let sealer = drd_bucket::Sealer::from_config(std::slice::from_ref(&recipient), None).unwrap();
    let evil = vec![0u8; SEG];
    let err = archive
        .write_segment(
            &sealer,
            &drd_bucket::SealedSegment {
                name: &seg_name(1),
                start: 0,
                bytes: &evil,
                prev_chain: [0; 32],
                chain: [1; 32],
                epoch: 9,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, drd_bucket::ArchiveError::Conflict { .. }),
        "{err}"
    );
}

/// A WORM bucket (S3 Object Lock, compliance mode, default retention):
/// drd's uploads are accepted (they carry the checksum such buckets
/// require; without it moto refuses them, as S3 does), and the bucket
/// keeps what drd wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_lock_bucket_takes_the_uploads_and_keeps_them() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket_with_object_lock(BUCKET);
    moto.set_default_retention(BUCKET, "COMPLIANCE", 30);
    assert!(moto.object_lock_enabled(BUCKET));
    let endpoint = moto.endpoint();
    let url = format!("s3://{BUCKET}/ehr-prod");
    let keydir = tempfile::tempdir().unwrap();
    let (key, recipient) = keys_init(keydir.path(), "dr.key");
    let mut pair = Pair::with_stream_keys("", &target_keys(&url, &endpoint, &recipient, "500ms"));
    pair.primary.env = moto.env();
    pair.replica.start();
    pair.primary.start();
    const SEG: usize = 1 << 20;
    for n in 1..=3 {
        std::fs::write(pair.wal.join(seg_name(n)), segment_bytes(n, SEG)).unwrap();
    }
    pair.wait_durable(3 * SEG as u64, Duration::from_secs(30))
        .await;
    let env = moto.env();
    wait_for(
        "two sealed segments in the locked bucket",
        Duration::from_secs(30),
        || async { (listed(&env, &url, &endpoint, false).len() == 2).then_some(()) },
    )
    .await;
    let (code, stdout, stderr) = verify_from(&env, &url, &endpoint, key.to_str().unwrap());
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The bucket keeps what drd wrote whatever a stolen credential asks:
    // a delete only hides the object behind a marker; the locked version
    // is still there, byte for byte.
    use object_store::ObjectStore;
    let admin = admin(&moto);
    let seg1 = obj_path(&format!("seg/{}", seg_name(1)));
    let before = admin.get(&seg1).await.unwrap();
    let version = before.meta.version.clone();
    let before = before.bytes().await.unwrap();
    assert!(version.is_some(), "an Object Lock bucket keeps versions");
    admin.delete(&seg1).await.unwrap();
    let opts = object_store::GetOptions {
        version: version.clone(),
        ..Default::default()
    };
    let kept = admin
        .get_opts(&seg1, opts)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        kept, before,
        "the locked version {version:?} is still there"
    );
    let t = target_status(&pair);
    assert!(t["retries"].as_u64().is_some(), "{t}");
    assert_eq!(t["segments"], 2, "{t}");
}

/// A primary with no DR drd at all ("ship straight from the hospital"):
/// two streams with only a `[[stream.target]]` each — one reading a WAL
/// directory (its growing segment goes up as partials), one a spool filled
/// by `drctl wal-push`, whose segments leave the spool once the bucket
/// holds them. After a kill -9 and a restart the chain goes on from the
/// node's own log, and `drctl verify --from` passes on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_with_no_peer_ships_to_the_bucket_alone() {
    use drd_tests::{drctl, make_certs, tls_section, Daemon, PRIMARY_ID};
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let endpoint = moto.endpoint();
    let root = tempfile::tempdir().unwrap();
    let (key, recipient) = keys_init(root.path(), "dr.key");
    let key_s = key.to_str().unwrap().to_string();
    let wal = root.path().join("wal");
    let spool = root.path().join("spool");
    std::fs::create_dir_all(&wal).unwrap();
    std::fs::create_dir_all(&spool).unwrap();
    let certs = make_certs(root.path());
    let ehr_url = format!("s3://{BUCKET}/ehr-prod");
    let lab_url = format!("s3://{BUCKET}/lab");
    let mut node = Daemon::new(
        root.path(),
        "primary",
        PRIMARY_ID,
        &format!(
            "initial_role = \"primary\"\n\
             [[stream]]\nname = \"ehr-prod\"\nwal_dir = \"{}\"\n{}\
             [[stream]]\nname = \"lab\"\nwal_dir = \"{}\"\nsource = \"spool\"\n{}{}",
            wal.display(),
            target_keys(&ehr_url, &endpoint, &recipient, "500ms"),
            spool.display(),
            target_keys(&lab_url, &endpoint, &recipient, "500ms"),
            tls_section(&certs, PRIMARY_ID),
        ),
    );
    node.env = moto.env();
    node.start();
    node.wait_ready().await;
    let env = moto.env();

    const SEG: usize = 1 << 20;
    for n in 1..=3 {
        std::fs::write(wal.join(seg_name(n)), segment_bytes(n, SEG)).unwrap();
    }
    let growing = segment_bytes(4, SEG);
    std::fs::write(wal.join(seg_name(4)), &growing[..200_000]).unwrap();
    let pushed = root.path().join("pushed");
    std::fs::create_dir_all(&pushed).unwrap();
    let lab_bytes = |n: u64| segment_bytes(100 + n, SEG);
    for n in 1..=3 {
        let p = pushed.join(seg_name(n));
        std::fs::write(&p, lab_bytes(n)).unwrap();
        let (code, out, err) = drctl(
            &node.socket,
            &["wal-push", "--stream", "lab", p.to_str().unwrap()],
        );
        assert_eq!(code, 0, "wal-push {n}: {out}{err}");
    }

    let v = drctl_json(&node.socket, &["status"], 0);
    let peers: Vec<_> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["peer"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        peers.iter().all(|p| p.contains("no peer")),
        "status names no peer: {v}"
    );
    let dest = root.path().join("restored");
    let at = (
        &env[..],
        ehr_url.as_str(),
        endpoint.as_str(),
        key_s.as_str(),
    );
    wait_bucket_holds(at, 3, (4, &growing[..200_000]), &dest).await;
    // The spool: all three in the bucket, and the first two gone from the
    // spool (the newest stays: a spool keeps its tail).
    wait_for(
        "lab's segments in the bucket and out of the spool",
        Duration::from_secs(30),
        || async {
            let up = listed(&env, &lab_url, &endpoint, false).len() == 3;
            let gone = (1..=2).all(|n| !spool.join(seg_name(n)).exists());
            (up && gone).then_some(())
        },
    )
    .await;
    assert!(spool.join(seg_name(3)).exists(), "the spool's tail stays");
    for n in 1..=3 {
        let (code, stderr) = fetch_from(&env, &lab_url, &endpoint, &key_s, &seg_name(n), &dest);
        assert_eq!(code, 0, "lab {n}: {stderr}");
        assert_eq!(std::fs::read(&dest).unwrap(), lab_bytes(n), "lab {n}");
    }
    // Sync mode needs a DR drd: refused, naming why.
    let (code, _, err) = drctl(&node.socket, &["mode", "lab", "sync", "--reason", "test"]);
    assert_ne!(code, 0);
    assert!(err.contains("has no peer"), "{err}");

    // kill -9, restart, more WAL: the chain goes on from the node's log.
    node.kill9();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(wal.join(seg_name(4)))
            .unwrap();
        f.write_all(&growing[200_000..]).unwrap();
    }
    std::fs::write(wal.join(seg_name(5)), segment_bytes(5, 300_000)).unwrap();
    let p = pushed.join(seg_name(4));
    std::fs::write(&p, lab_bytes(4)).unwrap();
    node.start();
    node.wait_ready().await;
    let (code, out, err) = drctl(
        &node.socket,
        &["wal-push", "--stream", "lab", p.to_str().unwrap()],
    );
    assert_eq!(code, 0, "wal-push 4: {out}{err}");
    wait_for(
        "the segments written across the restart in the bucket",
        Duration::from_secs(30),
        || async {
            (listed(&env, &ehr_url, &endpoint, false).len() == 4
                && listed(&env, &lab_url, &endpoint, false).len() == 4)
                .then_some(())
        },
    )
    .await;
    let (code, stderr) = fetch_from(&env, &ehr_url, &endpoint, &key_s, &seg_name(4), &dest);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(&dest).unwrap(), growing, "segment 4 whole");
    for url in [&ehr_url, &lab_url] {
        let (code, stdout, stderr) = verify_from(&env, url, &endpoint, &key_s);
        assert_eq!(code, 0, "verify {url}: {stdout}{stderr}");
    }
    wait_for(
        "both targets caught up",
        Duration::from_secs(30),
        || async {
            let t = drctl_json(&node.socket, &["status"], 0);
            let states: Vec<_> = t["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["state"].clone())
                .collect();
            (states.len() == 2 && states.iter().all(|s| s == "caught up")).then_some(())
        },
    )
    .await;
}

/// The DR site tiers its copy: the target is on the replica's stream (the
/// primary has none). What the replica holds durable — sealed segments
/// whole, the growing one as partials — reaches the bucket, restores
/// byte-identical and verifies; the replica's `drctl status` shows the
/// target, and nothing is uploaded by the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dr_site_tiers_its_copy_to_the_bucket() {
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let endpoint = moto.endpoint();
    let url = format!("s3://{BUCKET}/ehr-prod");
    let keydir = tempfile::tempdir().unwrap();
    let (key, recipient) = keys_init(keydir.path(), "dr.key");
    let key_s = key.to_str().unwrap().to_string();
    let mut pair =
        Pair::with_replica_stream_keys("", &target_keys(&url, &endpoint, &recipient, "500ms"));
    pair.replica.env = moto.env();
    pair.replica.start();
    pair.primary.start();
    pair.replica.wait_ready().await;
    pair.primary.wait_ready().await;

    const SEG: usize = 1 << 20;
    for n in 1..=3 {
        std::fs::write(pair.wal.join(seg_name(n)), segment_bytes(n, SEG)).unwrap();
    }
    let growing = segment_bytes(4, SEG);
    std::fs::write(pair.wal.join(seg_name(4)), &growing[..250_000]).unwrap();
    pair.wait_durable(3 * SEG as u64 + 250_000, Duration::from_secs(30))
        .await;
    let env = moto.env();
    let dest = keydir.path().join("restored");
    let at = (&env[..], url.as_str(), endpoint.as_str(), key_s.as_str());
    wait_bucket_holds(at, 3, (4, &growing[..250_000]), &dest).await;
    for n in 1..=3 {
        let (code, stderr) = fetch_from(&env, &url, &endpoint, &key_s, &seg_name(n), &dest);
        assert_eq!(code, 0, "wal-fetch {n}: {stderr}");
        assert_eq!(std::fs::read(&dest).unwrap(), segment_bytes(n, SEG), "{n}");
    }
    let (code, stdout, stderr) = verify_from(&env, &url, &endpoint, &key_s);
    assert_eq!(code, 0, "verify --from: {stdout}{stderr}");
    // The objects say which node wrote them: the DR node, not the primary.
    let first = listed(&env, &url, &endpoint, false)[0].0.clone();
    let body = raw_object(&moto, &first).await;
    let line = body.split(|&b| b == b'\n').nth(1).unwrap();
    let rec: serde_json::Value = serde_json::from_slice(line).unwrap();
    assert_eq!(rec["node"], drd_tests::REPLICA_ID, "{rec}");
    // Status: the replica shows its target; the primary has none.
    wait_for(
        "the replica's target caught up",
        Duration::from_secs(30),
        || async {
            let v = drctl_json(&pair.replica.socket, &["status"], 0);
            (v["targets"][0]["state"] == "caught up").then_some(())
        },
    )
    .await;
    let v = drctl_json(&pair.primary.socket, &["status"], 0);
    assert!(
        v["targets"].as_array().is_none_or(|t| t.is_empty()),
        "the primary uploads nothing: {v}"
    );
}
