//! Issue 19 with a real PostgreSQL 15: a standby at a "cloud region" where
//! no drd runs restores only from the bucket (`restore_command = 'drctl
//! wal-fetch --from s3://…'`), follows the primary through sealed segments
//! and the growing one's partial uploads, and once the primary site is
//! killed -9 and the standby promoted, holds every row the primary had.

use drd_tests::objstore::Moto;
use drd_tests::pg::require_postgres;
use drd_tests::pgsites::{Sites, SitesOptions};
use drd_tests::wait_for;
use std::time::Duration;

const BUCKET: &str = "hospital-dr";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_standby_restoring_from_the_bucket_reaches_the_primary() {
    let Some(pg) = require_postgres() else {
        return;
    };
    let Some(moto) = Moto::start() else { return };
    moto.create_bucket(BUCKET);
    let endpoint = moto.endpoint();
    let url = format!("s3://{BUCKET}/ehr-prod");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("dr.key");
    let out = std::process::Command::new(drd_tests::bin("drctl"))
        .args(["keys", "init", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let opts = SitesOptions {
        mode: "async".into(),
        a_stream_keys: format!(
            "[[stream.target]]\nurl = \"{url}\"\nendpoint = \"{endpoint}\"\n\
             recipients = [\"{recipient}\"]\nupload_interval = \"500ms\"\n"
        ),
        a_env: moto.env(),
        ..SitesOptions::default()
    };
    let mut sites = Sites::new(&pg, &opts).await;
    // The restore site's key, readable by the database's OS user.
    let cloud_key = sites.root.join("cloud.key");
    std::fs::copy(&key, &cloud_key).unwrap();
    pg.give(&cloud_key).unwrap();

    let primary = &sites.primary;
    primary
        .psql("CREATE TABLE t (id bigint PRIMARY KEY, note text)")
        .unwrap();
    // The cloud standby: a base backup, then WAL from the bucket alone.
    let creds: String = moto
        .env()
        .iter()
        .filter(|(k, _)| {
            k.starts_with("AWS_ACCESS") || k.starts_with("AWS_SECRET") || k == "AWS_REGION"
        })
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    let cloud = sites.standby_restoring(
        "cloud",
        &format!(
            "{creds}{} wal-fetch --from {url} --endpoint {endpoint} --identity {} %f %p",
            sites.drctl,
            cloud_key.display()
        ),
    );

    // Rows across several segments (1 MiB each), the last one still growing.
    for batch in 0..8 {
        primary
            .psql(&format!(
                "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series({}, {}) g",
                batch * 2000 + 1,
                (batch + 1) * 2000
            ))
            .unwrap();
    }
    let want = primary.psql("SELECT count(*) FROM t").unwrap();
    let end = primary.lsn("pg_current_wal_flush_lsn()").unwrap().unwrap();
    let replayed = wait_for(
        "the cloud standby replaying from the bucket up to the primary's end of WAL",
        Duration::from_secs(90),
        || async {
            let r = cloud.replay_lsn().ok().flatten()?;
            (r >= end).then_some(r)
        },
    )
    .await;
    println!(
        "cloud standby replayed {} from the bucket (primary at {}); {want} rows",
        drd_tests::pg::format_lsn(replayed),
        drd_tests::pg::format_lsn(end)
    );
    let t = drd_tests::drctl_json(&sites.a.socket, &["status"], 0)["targets"][0].clone();
    assert!(t["partials"].as_u64().unwrap() >= 1, "{t}");

    // The primary site dies; the cloud region takes over.
    sites.kill_primary_site();
    cloud.promote().unwrap();
    wait_for(
        "the cloud database promoted",
        Duration::from_secs(60),
        || async { (cloud.psql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(()) },
    )
    .await;
    assert_eq!(
        cloud.psql("SELECT count(*) FROM t").unwrap(),
        want,
        "every row of the primary is at the cloud region\n{}",
        cloud.log_tail()
    );
    cloud
        .psql("INSERT INTO t VALUES (-1, 'written at the cloud region')")
        .unwrap();
    cloud.stop().unwrap();
}
