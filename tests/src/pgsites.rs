//! Two sites for the `source = "postgres"` tests (tests/tests/pgstream.rs,
//! pgstream_ops.rs): Verona's drd streams from a real PostgreSQL 15 through
//! a slot and ships to Rochester's drd, whose promote hook promotes a DR
//! standby that restores through `drctl wal-fetch`. Run as root, the
//! PostgreSQL programs run as the `postgres` OS user, which must reach the
//! drds' control sockets (`control.socket_group`) and run drctl.

use crate::pg::{Cluster, ClusterOptions, Postgres};
use crate::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The stream's physical replication slot.
pub const SLOT: &str = "drd_rochester";

/// chmod, in a test.
pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A copy of drctl in `root/bin` that the `postgres` OS user may run (its
/// restore_command), `root` made traversable.
pub fn drctl_for_postgres(root: &Path) -> PathBuf {
    chmod(root, 0o755);
    let drctl = root.join("bin").join("drctl");
    std::fs::create_dir_all(drctl.parent().unwrap()).unwrap();
    std::fs::copy(bin("drctl"), &drctl).unwrap();
    chmod(&drctl, 0o755);
    drctl
}

/// Lets the cluster owner reach `d`'s control socket: its directory
/// traversable and, when PostgreSQL runs as another user, the socket given
/// to that user's group (`control.socket_group`, the deployment mechanism).
/// Call before the daemon starts.
pub fn open_to_postgres(pg: &Postgres, d: &Daemon) {
    chmod(&d.dir, 0o755);
    if let Some((user, _, _)) = &pg.run_as {
        // Daemon::new writes [control] last: this key lands in it.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&d.config)
            .unwrap();
        writeln!(f, "socket_group = \"{user}\"").unwrap();
    }
}

/// Two sites: Verona streams from its PostgreSQL (`source = "postgres"`)
/// and ships to Rochester, whose DR standby restores through drd.
pub struct Sites {
    _root: tempfile::TempDir,
    /// The temporary directory everything lives in.
    pub root: PathBuf,
    pub pg: Postgres,
    /// Verona: the primary's drd, `source = "postgres"`.
    pub a: Daemon,
    /// Rochester: the DR drd, with the promote hook.
    pub b: Daemon,
    pub primary: Cluster,
    /// A local streaming standby of the primary (`local_standby`) that
    /// drd's conninfo lists as a second host.
    pub local: Option<Cluster>,
    /// Where [`Sites::standby`] puts the DR standby (the hook's PGDATA).
    pub standby_data: PathBuf,
    /// A drctl the `postgres` OS user may run.
    pub drctl: String,
    /// Verona's and Rochester's `[metrics] listen` ports.
    pub metrics_port: u16,
    pub b_metrics_port: u16,
    /// The sites' certificates (`make_certs`).
    pub certs: PathBuf,
}

/// What [`Sites::new`] builds.
#[derive(Clone, Debug, Default)]
pub struct SitesOptions {
    /// The stream's `mode`: "sync" (with `synchronous_standby_names =
    /// 'drd'`) or "async".
    pub mode: String,
    /// Lines appended to the primary's postgresql.conf.
    pub pg_conf: String,
    /// Also a local HA standby of the primary, see [`Sites::local`].
    pub local_standby: bool,
    /// Lines added to Rochester's `[hooks]` (e.g. the drill hooks).
    pub b_hooks: String,
    /// Lines added at the end of Verona's `[[stream]]` (e.g. a
    /// `[[stream.target]]`), and Verona's extra environment (the object
    /// store's credentials).
    pub a_stream_keys: String,
    pub a_env: Vec<(String, String)>,
}

impl SitesOptions {
    pub fn mode(mode: &str) -> Self {
        SitesOptions {
            mode: mode.to_string(),
            ..Self::default()
        }
    }
}

impl Sites {
    /// Both drds and the primary database, drd streaming and connected to
    /// Rochester (so the slot exists and retains WAL); the DR standby is
    /// made by [`Sites::standby`]. With `local_standby`, a local HA standby
    /// streams from the primary through a slot of its own and holds drd's
    /// slot too, as the deploy docs ask; drd's conninfo then names both,
    /// `target_session_attrs=read-write`.
    pub async fn new(pg: &Postgres, opts: &SitesOptions) -> Sites {
        let (mode, local_standby) = (opts.mode.as_str(), opts.local_standby);
        let root = tempfile::Builder::new()
            .prefix("drd-pgstream-")
            .tempdir()
            .unwrap();
        let r = root.path().to_path_buf();
        // The postgres user must reach the sockets and run drctl.
        let drctl_bin = drctl_for_postgres(&r);
        let pgdir = r.join("pg");
        std::fs::create_dir_all(&pgdir).unwrap();
        pg.give(&pgdir).unwrap();

        let ssn = if mode == "sync" { "drd" } else { "" };
        let primary = Cluster::init(
            pg,
            &pgdir,
            "primary",
            &ClusterOptions {
                wal_segment_mib: 1,
                conf: format!(
                    "max_wal_senders = 8\nmax_replication_slots = 8\nwal_sender_timeout = 10s\n\
                     max_slot_wal_keep_size = 1GB\nshared_buffers = 16MB\n\
                     synchronous_standby_names = '{ssn}'\nlog_line_prefix = '%m [%p] '\n{}\n",
                    opts.pg_conf
                ),
                ..ClusterOptions::default()
            },
        )
        .unwrap();
        primary.start().unwrap();
        let local = local_standby.then(|| {
            let b =
                Cluster::basebackup_from(&primary, &pgdir, "local", &["-R", "-C", "-S", "local"])
                    .unwrap();
            b.start().unwrap();
            // PostgreSQL 15 does not copy slots to standbys: drd's slot is
            // made on the standby too, so that it holds WAL for drd once
            // promoted.
            b.psql(&format!(
                "SELECT pg_create_physical_replication_slot('{SLOT}', true)"
            ))
            .unwrap();
            b
        });
        let conninfo = match &local {
            None => primary.conninfo(),
            Some(b) => format!(
                "host={d},{d} port={},{} user=postgres target_session_attrs=read-write",
                primary.port,
                b.port,
                d = primary.socket_dir.display()
            ),
        };

        let certs = make_certs(&r);
        let (a_port, b_port, metrics_port) = (free_port(), free_port(), free_port());
        let b_metrics_port = free_port();
        let standby_data = pgdir.join("standby");
        let hook = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("deploy/postgresql/promote-hook.sh");
        let tuning = "[tuning]\nidle_timeout_ms = 4000\nkeepalive_interval_ms = 300\n\
                      reconnect_max_ms = 1000\n";
        let wal = r.join("verona-wal");
        let b_spool = r.join("rochester-spool");
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::create_dir_all(&b_spool).unwrap();
        let mut a = Daemon::new(
            &r,
            "verona",
            PRIMARY_ID,
            &format!(
                "initial_role = \"primary\"\n[replica]\nlisten = \"127.0.0.1:{a_port}\"\n\
                 [[stream]]\nname = \"{STREAM}\"\nsource = \"postgres\"\n\
                 postgres = \"{} application_name=drd\"\nslot = \"{SLOT}\"\n\
                 wal_dir = \"{}\"\nmode = \"{mode}\"\npeer = \"https://127.0.0.1:{b_port}\"\n\
                 peer_name = \"{REPLICA_ID}\"\n{}\n{tuning}\
                 [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n{}",
                conninfo,
                wal.display(),
                opts.a_stream_keys,
                tls_section(&certs, PRIMARY_ID)
            ),
        );
        a.env.extend(opts.a_env.iter().cloned());
        let promote = format!(
            "PGDATA='{}' PGBIN='{}' sh '{}'",
            standby_data.display(),
            pg.bin.display(),
            hook.display()
        );
        let mut b = Daemon::new(
            &r,
            "rochester",
            REPLICA_ID,
            &format!(
                "initial_role = \"replica\"\n[replica]\nlisten = \"127.0.0.1:{b_port}\"\n\
                 [[stream]]\nname = \"{STREAM}\"\nwal_dir = \"{}\"\nsource = \"spool\"\n\
                 peer = \"https://127.0.0.1:{a_port}\"\npeer_name = \"{PRIMARY_ID}\"\n{tuning}\
                 [metrics]\nlisten = \"127.0.0.1:{b_metrics_port}\"\n\
                 [hooks]\npromote = \"{promote}\"\ntimeout_seconds = 150\n{}\n{}",
                b_spool.display(),
                opts.b_hooks,
                tls_section(&certs, REPLICA_ID)
            ),
        );
        for d in [&a, &b] {
            open_to_postgres(pg, d);
        }
        b.start_ready().await;
        a.start_ready().await;
        let sites = Sites {
            _root: root,
            root: r,
            pg: pg.clone(),
            a,
            b,
            primary,
            local,
            standby_data,
            drctl: drctl_bin.display().to_string(),
            metrics_port,
            b_metrics_port,
            certs,
        };
        sites.wait_streaming(true).await;
        sites
    }

    /// Verona's `drctl status --json`, its one stream.
    pub fn stream_json(&self) -> serde_json::Value {
        drctl_json(&self.a.socket, &["status"], 0)["streams"][0].clone()
    }

    /// Verona's `postgres` status (drctl status --json).
    pub fn pg_status(&self) -> serde_json::Value {
        self.stream_json()["postgres"].clone()
    }

    /// Until Verona streams from PostgreSQL (and, with `peer`, is
    /// connected to Rochester).
    pub async fn wait_streaming(&self, peer: bool) {
        wait_for(
            "Verona streaming from PostgreSQL",
            Duration::from_secs(30),
            || async {
                let s = self.a.stream().await.ok()?;
                let pg = s.postgres?;
                (pg.connected && (s.connected || !peer)).then_some(())
            },
        )
        .await;
    }

    /// Restarts Verona's drd (SIGTERM, then start).
    pub async fn restart_a(&mut self) {
        assert_eq!(self.a.terminate(), Some(0), "{}", self.a.log_text());
        self.a.start_ready().await;
    }

    /// Both drds' logs and the primary's, for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "--- verona ---\n{}\n--- rochester ---\n{}\n--- postgres ---\n{}",
            self.a.log_text(),
            self.b.log_text(),
            self.primary.log_tail()
        )
    }

    /// The DR standby: a base backup taken after drd's slot exists (so all
    /// WAL after the backup's start is in drd), restoring through drctl
    /// wal-fetch at Rochester.
    pub fn standby(&self) -> Cluster {
        let restore = format!(
            "{} --socket {} wal-fetch %f %p",
            self.drctl,
            self.b.socket.display()
        );
        let standby = self.standby_restoring("standby", &restore);
        assert_eq!(standby.data, self.standby_data);
        standby
    }

    /// A standby named `name` from a base backup of the primary, started,
    /// whose `restore_command` is `restore` (e.g. from a bucket).
    pub fn standby_restoring(&self, name: &str, restore: &str) -> Cluster {
        let standby =
            Cluster::basebackup_from(&self.primary, &self.root.join("pg"), name, &[]).unwrap();
        standby
            .configure(&format!(
                "restore_command = '{restore}'\n\
                 wal_retrieve_retry_interval = '200ms'\nrecovery_target_timeline = 'latest'\n\
                 synchronous_standby_names = ''\n"
            ))
            .unwrap();
        let signal = standby.data.join("standby.signal");
        std::fs::write(&signal, b"").unwrap();
        self.pg.give(&signal).unwrap();
        standby.start().unwrap();
        assert_eq!(standby.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
        standby
    }

    /// kill -9 of the primary's PostgreSQL and of Verona's drd, in one
    /// `kill` (PostgreSQL's processes first in its argv).
    pub fn kill_primary_site(&mut self) -> usize {
        let mut pids = self.primary.pids().unwrap();
        let n = pids.len();
        pids.push(self.a.pid());
        let status = std::process::Command::new("kill")
            .arg("-9")
            .args(pids.iter().map(|p| p.to_string()))
            .status()
            .unwrap();
        assert!(status.success(), "kill -9 {pids:?}");
        self.a.kill9();
        n
    }

    /// `drctl failover --yes` at Rochester, whose hook promotes the standby.
    pub async fn fail_over(&self, standby: &Cluster) -> serde_json::Value {
        let rep = drctl_json(
            &self.b.socket,
            &["failover", "--yes", "--reason", "Verona down: killed -9"],
            0,
        );
        assert!(
            rep["hook_report"]
                .as_str()
                .unwrap_or("")
                .contains("promote hook: succeeded"),
            "{rep}\n--- drd ---\n{}\n--- standby ---\n{}",
            self.b.log_text(),
            standby.log_tail()
        );
        wait_for(
            "the DR database promoted",
            Duration::from_secs(60),
            || async { (standby.psql("SELECT pg_is_in_recovery()").ok()? == "f").then_some(()) },
        )
        .await;
        rep
    }
}
