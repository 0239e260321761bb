//! The daemon's configuration: TOML at `/etc/drd/drd.toml`, parsed with serde
//! and validated before anything binds or touches the data directory. Every
//! error names the key and says what is wrong with it.

use anyhow::{bail, Context};
use drd_proto::{NodeId, StreamName};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

// What drctl reads of the config too (drd-client), where it always was.
pub use drd_client::config::{DataLoss, DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH};

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: String,
    data_dir: PathBuf,
    #[serde(default)]
    control: RawControl,
    replica: Option<RawReplica>,
    #[serde(default)]
    stream: Vec<RawStream>,
    #[serde(default)]
    tuning: Tuning,
    initial_role: Option<String>,
    rpo_budget: Option<String>,
    #[serde(default)]
    hooks: Hooks,
    tls: Option<RawTls>,
    #[serde(default)]
    insecure_plaintext: bool,
    log_level: Option<String>,
    max_bandwidth: Option<String>,
    metrics: Option<RawMetrics>,
}

/// `[metrics]`: the Prometheus scrape endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    allowed_peers: Vec<String>,
}

/// Commands run at role changes (`sh -c`), each at most once per epoch
/// change, with a timeout; their output is logged.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    /// After this node became primary (e.g. `pg_ctl promote`).
    pub promote: Option<String>,
    /// After this node became a replica in a switchover (stop the database).
    pub demote: Option<String>,
    /// After this node learned it was fenced by a newer primary.
    pub fence: Option<String>,
    /// Before a switchover drains: stop writes at the database.
    pub pre_switchover: Option<String>,
    /// A switchover failed after `pre_switchover` ran: allow writes again.
    pub abort_switchover: Option<String>,
    /// Longest a hook may run before it is killed and counted as failed.
    pub timeout_seconds: u64,
    /// `drctl drill` (issue 21): builds a scratch database from the DR
    /// copy in `$DRD_DRILL_DIR` (see deploy/drill/README.md). Drills are
    /// refused while it is unset.
    pub drill_restore: Option<String>,
    /// Checks the scratch database answers (a query the operator trusts).
    pub drill_check: Option<String>,
    /// Stops and removes the scratch database; runs whenever the restore
    /// started, also after a failure.
    pub drill_teardown: Option<String>,
    /// Longest each drill hook may run (a restore replays the WAL since
    /// the base backup, so it is much longer than `timeout_seconds`).
    pub drill_timeout_seconds: u64,
    /// Where each drill's scratch directory is made (default
    /// `{data_dir}/drill-scratch`): it must hold one restored copy.
    pub drill_scratch_dir: Option<PathBuf>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            promote: None,
            demote: None,
            fence: None,
            pre_switchover: None,
            abort_switchover: None,
            timeout_seconds: 60,
            drill_restore: None,
            drill_check: None,
            drill_teardown: None,
            drill_timeout_seconds: 3600,
            drill_scratch_dir: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
    /// Optional TCP address for remote `drctl` (mTLS only).
    listen: Option<String>,
    #[serde(default)]
    allowed_clients: Vec<String>,
    /// Group that may use the control socket besides its owner (e.g.
    /// `postgres`, whose archive_command runs `drctl wal-push`).
    socket_group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplica {
    listen: String,
    /// `[replica.retention]`: how long received segments are kept.
    retention: Option<crate::replica::retention::RawRetention>,
    /// Accept streams no `[[stream]]` of this node names (from any allowed
    /// peer). Off by default: see [`ReplicaConfig::accept_unlisted_streams`].
    #[serde(default)]
    accept_unlisted_streams: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    name: String,
    /// The role this stream starts in at this node (default: the node's
    /// `initial_role`).
    initial_role: Option<String>,
    wal_dir: PathBuf,
    peer: Option<String>,
    peer_name: Option<String>,
    source: Option<String>,
    mode: Option<String>,
    sync_timeout_seconds: Option<u64>,
    max_bandwidth: Option<String>,
    compression: Option<String>,
    compression_level: Option<i32>,
    spool_retention: Option<String>,
    spool_max_bytes: Option<String>,
    /// `source = "postgres"`: the libpq connection string of the database.
    postgres: Option<String>,
    /// `source = "postgres"`: the physical replication slot drd streams
    /// through.
    slot: Option<String>,
    /// `[[stream.target]]`: object stores the stream's log also goes to.
    #[serde(default)]
    target: Vec<RawTarget>,
}

/// One `[[stream.target]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    url: String,
    endpoint: Option<String>,
    #[serde(default)]
    recipients: Vec<String>,
    encryption: Option<String>,
    upload_interval: Option<String>,
}

/// Tuning numbers. Each has a default that suits a DR link with a local SSD;
/// change them only with a benchmark in hand.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Largest chunk payload the primary sends (bytes, ≤ 1 MiB).
    pub chunk_bytes: usize,
    /// Bytes the primary may have sent but not yet seen acked. Bounds memory
    /// on both sides and the bytes re-sent after a crash.
    pub window_bytes: u64,
    /// The replica fsyncs after at most this many bytes even while more data
    /// is queued (group commit).
    pub group_commit_bytes: u64,
    /// Safety-net rescan of the WAL directory, in addition to inotify.
    pub rescan_interval_ms: u64,
    /// The primary sends a keepalive when it has nothing to ship for this long.
    pub keepalive_interval_ms: u64,
    /// Either side drops a replication stream that is silent for this long
    /// (no message, or no ack while bytes are in flight).
    pub idle_timeout_ms: u64,
    /// First and largest delay between reconnect attempts (with jitter).
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// A replica's node-wide budget of bytes in flight towards it, over all
    /// the streams it receives: each session is granted an equal share as
    /// its window (at most `window_bytes`, at least
    /// [`MIN_GRANTED_WINDOW`]), so a DR site's memory stays bounded when a
    /// hundred primaries catch up at once.
    pub receive_budget_bytes: u64,
}

/// The smallest window a replica grants one session, however many streams
/// share its `receive_budget_bytes`.
pub const MIN_GRANTED_WINDOW: u64 = 256 * 1024;

impl Default for Tuning {
    fn default() -> Self {
        Self {
            chunk_bytes: 1024 * 1024,
            window_bytes: 8 * 1024 * 1024,
            group_commit_bytes: 4 * 1024 * 1024,
            rescan_interval_ms: 1000,
            keepalive_interval_ms: 1000,
            idle_timeout_ms: 15_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5000,
            receive_budget_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Tuning {
    pub fn rescan_interval(&self) -> Duration {
        Duration::from_millis(self.rescan_interval_ms)
    }
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: NodeId,
    /// Catalog (RocksDB) and landing directories live here.
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
    /// Group the control socket is given to (`control.socket_group`), so
    /// e.g. PostgreSQL's `archive_command` can run `drctl wal-push`.
    pub control_socket_group: Option<String>,
    /// Set on a node that receives streams.
    pub replica: Option<ReplicaConfig>,
    /// Streams this node ships.
    pub streams: Vec<StreamConfig>,
    pub tuning: Tuning,
    /// Role at the very first start (afterwards the catalog's role rules).
    pub initial_role: crate::storage::catalog::Role,
    /// Largest data loss a failover accepts without `--force`.
    pub rpo_budget: Option<DataLoss>,
    pub hooks: Hooks,
    /// mTLS between sites (None only with `insecure_plaintext = true`).
    pub tls: Option<TlsConfig>,
    /// Remote control API over TCP with mTLS.
    pub control_listen: Option<ControlListen>,
    /// Log filter (`log_level`, e.g. `info` or `info,drd=debug`); the
    /// `DRD_LOG` environment variable overrides it at start. Reloadable.
    pub log_level: Option<String>,
    /// Node-wide limit on bytes shipped per second, all streams together
    /// (`max_bandwidth`; None: unlimited). Reloadable.
    pub max_bandwidth: Option<u64>,
    /// Prometheus scrape endpoint (`[metrics] listen`).
    pub metrics_listen: Option<SocketAddr>,
}

/// Log filter when neither `log_level` nor `DRD_LOG` says otherwise.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// `[tls]`: this node's certificate and who may connect to it.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub files: crate::tls::TlsFiles,
    /// Certificate names allowed to connect for replication and node-to-node calls.
    pub allowed_peers: Vec<String>,
}

/// `[control] listen`: the control API on TCP, for these client certificates.
#[derive(Clone, Debug)]
pub struct ControlListen {
    pub addr: SocketAddr,
    pub allowed_clients: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub listen: SocketAddr,
    /// `[replica.retention]`: this DR site's own policy for what it
    /// received (default: keep everything). Reloadable.
    pub retention: crate::replica::retention::Retention,
    /// `accept_unlisted_streams`: a stream that no `[[stream]]` of this
    /// node names is accepted from any allowed peer. Off (the default), a
    /// replica receives only the streams its config assigns, each from the
    /// one primary its `[[stream]]`'s `peer_name` names — so one host of a
    /// fleet cannot write into another's stream.
    pub accept_unlisted_streams: bool,
}

#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub name: StreamName,
    /// `initial_role`: the role this stream starts in here, the first time
    /// this node sees it (None: the node's `initial_role`). Lets one node
    /// be primary of some streams and the replica of others.
    pub initial_role: Option<crate::storage::catalog::Role>,
    pub wal_dir: PathBuf,
    /// Replica endpoint, e.g. `https://rochester-dr1.example:7601`. None:
    /// the stream has no DR drd, only `[[stream.target]]`s — the primary
    /// seals its log locally (see `primary::shipper`, the local session)
    /// and the targets are its DR copy.
    pub peer: Option<String>,
    /// The name the peer's certificate must carry (with TLS).
    pub peer_name: Option<String>,
    /// How segments get into `wal_dir` (`source`).
    pub source: SourceMode,
    /// When `drctl wal-push` reports success (`mode`).
    pub mode: SyncMode,
    /// How long a sync-mode `wal-push` waits for the replica
    /// (`sync_timeout_seconds`) before it fails and PostgreSQL retries.
    pub sync_timeout: Duration,
    /// Limit on bytes this stream ships per second (`max_bandwidth`; None:
    /// unlimited). Reloadable.
    pub max_bandwidth: Option<u64>,
    /// How chunk payloads travel (`compression`, `compression_level`):
    /// zstd trades the primary's and the replica's CPU for link bandwidth.
    /// Used only with a replica that says it decodes it. Not reloadable.
    pub compression: drd_proto::Compression,
    /// How long a spooled segment stays in `wal_dir` after the replica
    /// holds it sealed and verified (`spool_retention`; default 0: removed
    /// as soon as it is safely at the DR site). Spool streams only.
    pub spool_retention: Duration,
    /// Most bytes of segments the spool may hold (`spool_max_bytes`): a
    /// `wal-push` that would pass it is refused, and PostgreSQL keeps the
    /// segment in pg_wal and retries. Spool streams only.
    pub spool_max_bytes: u64,
    /// `source = "postgres"`: where and how drd streams the database's WAL.
    pub postgres: Option<PostgresSource>,
    /// `[[stream.target]]`: object stores this node writes the stream's
    /// log to, whatever its role (the primary ships straight to a cloud
    /// region; a DR site tiers its copy to a bucket).
    pub targets: Vec<TargetConfig>,
}

/// An object-store target of a stream (`[[stream.target]]`).
#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// `s3://BUCKET/PREFIX`, `az://CONTAINER/PREFIX`, `gs://BUCKET/PREFIX`
    /// or `file:///DIR`.
    pub url: String,
    /// An S3-compatible (or emulator) endpoint instead of the cloud's own.
    pub endpoint: Option<String>,
    /// Who can decrypt: the recipients' public keys (or plaintext, said
    /// explicitly with `encryption = "none"`).
    pub sealer: drd_bucket::Sealer,
    /// The active segment's new bytes are uploaded at least this often:
    /// the bound on the bucket's RPO while a segment grows.
    pub upload_interval: Duration,
}

/// Default of `stream.target.upload_interval`.
pub const DEFAULT_UPLOAD_INTERVAL: Duration = Duration::from_secs(10);

/// A `source = "postgres"` stream's database side.
#[derive(Clone, Debug)]
pub struct PostgresSource {
    /// `postgres`: the libpq connection string (validated; its password,
    /// if any, never appears in logs or errors).
    pub conninfo: crate::primary::pgstream::conninfo::Conninfo,
    /// `slot`: the physical replication slot, created if missing.
    pub slot: String,
}

/// Checks a replication slot name as PostgreSQL does
/// (ReplicationSlotValidateName): 1 to 63 of lower-case letters, digits
/// and underscores.
pub fn check_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "{name:?} must be 1 to 63 characters long (PostgreSQL's NAMEDATALEN)"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "{name:?} contains {c:?}: a replication slot name has only lower-case letters, \
             digits and underscores"
        ));
    }
    Ok(())
}

/// A directory that is (or sits in) a PostgreSQL data directory's
/// `pg_wal`: drd must never write its own files there.
fn looks_like_pg_wal(dir: &std::path::Path) -> bool {
    dir.file_name().is_some_and(|n| n == "pg_wal")
        || dir.parent().is_some_and(|p| p.join("PG_VERSION").exists())
}

/// Default of `stream.spool_max_bytes`: 16 GiB, a thousand 16 MiB segments —
/// hours of a busy database's WAL while the DR link is down, and far from
/// filling a database host's disk. Set it to what the spool's file system
/// can spare; PostgreSQL's own pg_wal then grows while pushes are refused.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 16 << 30;

/// Default of `stream.compression_level`: zstd's fastest positive level,
/// which already gets most of the ratio on WAL.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

/// How segments get into a stream's `wal_dir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceMode {
    /// The database writes `wal_dir` itself: the newest segment is active
    /// and may grow; a segment is sealed once a newer one exists.
    Tail,
    /// `wal_dir` is a spool that only `drctl wal-push` fills, one complete
    /// file at a time (atomic rename): every segment is sealed as soon as
    /// it has been shipped.
    Spool,
    /// drd streams the database's WAL over PostgreSQL's replication
    /// protocol and writes it into `wal_dir` itself, append-only: like
    /// `Tail`, the newest segment grows and is sealed once a newer one
    /// exists; like `Spool`, the directory is drd's own and pruned.
    Postgres,
}

impl SourceMode {
    /// drd writes `wal_dir` (and so may prune it); the database does not.
    pub fn drd_owned(self) -> bool {
        matches!(self, SourceMode::Spool | SourceMode::Postgres)
    }
}

impl StreamConfig {
    /// The peer's endpoint for logs and messages, or a phrase saying the
    /// stream has none.
    pub fn peer_label(&self) -> &str {
        self.peer.as_deref().unwrap_or("(no peer: targets only)")
    }
}

/// When `drctl wal-push` reports success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Once the file is durable in the local spool.
    Async,
    /// Once the replica has it durably and verified (a segment acked
    /// sealed, a side file stored).
    Sync,
}

impl SyncMode {
    /// The mode in effect for a stream configured with `self`, given its
    /// role state here (an operator's `drctl mode` overrides the config).
    pub fn in_effect(self, state: &crate::storage::catalog::RoleState) -> SyncMode {
        match &state.mode_override {
            Some(o) if o.sync => SyncMode::Sync,
            Some(_) => SyncMode::Async,
            None => self,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Async => "async",
            SyncMode::Sync => "sync",
        }
    }
}

/// Default of `stream.sync_timeout_seconds`.
pub const DEFAULT_SYNC_TIMEOUT_SECONDS: u64 = 60;

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // Checked before serde, which would only say "unknown field" (or
        // "missing field `ca`" when [tls] holds nothing else).
        let misplaced = text.parse::<toml::Table>().ok().is_some_and(|t| {
            t.get("tls")
                .and_then(|tls| tls.get("insecure_plaintext"))
                .is_some()
        });
        if misplaced {
            bail!(
                "key `tls.insecure_plaintext`: `insecure_plaintext` is a top-level key, not part of \
                 [tls]; move it to the top of the file, before any [section] (and remove [tls] \
                 if you mean plaintext)"
            );
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let node_id = NodeId::new(raw.node_id).context("key `node_id`")?;
        if !raw.data_dir.is_absolute() {
            bail!(
                "key `data_dir`: {:?} must be an absolute path",
                raw.data_dir
            );
        }
        let control_socket = raw
            .control
            .socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
        if !control_socket.is_absolute() {
            bail!("key `control.socket`: {control_socket:?} must be an absolute path");
        }
        let control_socket_group = raw.control.socket_group;
        if let Some(g) = &control_socket_group {
            let valid = !g.is_empty()
                && g.len() <= 32
                && g.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !valid {
                bail!("key `control.socket_group`: {g:?} is not a group name");
            }
        }
        let replica = match raw.replica {
            Some(r) => {
                let listen: SocketAddr = r.listen.parse().map_err(|e| {
                    anyhow::anyhow!(
                        "key `replica.listen`: {:?} is not an address like 127.0.0.1:7601 ({e})",
                        r.listen
                    )
                })?;
                if raw.tls.is_none() && !listen.ip().is_loopback() {
                    bail!(
                        "key `replica.listen`: {listen} is not a loopback address; \
                         plaintext replication is only allowed on loopback — configure [tls]"
                    );
                }
                let retention = crate::replica::retention::Retention::from_raw(
                    r.retention.unwrap_or_default(),
                )?;
                Some(ReplicaConfig {
                    listen,
                    retention,
                    accept_unlisted_streams: r.accept_unlisted_streams,
                })
            }
            None => None,
        };
        let mut streams = Vec::new();
        let mut seen = HashSet::new();
        for (i, s) in raw.stream.into_iter().enumerate() {
            let name =
                StreamName::new(s.name).with_context(|| format!("key `stream[{i}].name`"))?;
            if !seen.insert(name.clone()) {
                bail!("key `stream[{i}].name`: stream \"{name}\" is configured twice");
            }
            if !s.wal_dir.is_absolute() {
                bail!(
                    "key `stream[{i}].wal_dir`: {:?} must be an absolute path",
                    s.wal_dir
                );
            }
            match &s.peer {
                Some(p) => check_peer(p, raw.tls.is_some())
                    .with_context(|| format!("key `stream[{i}].peer`"))?,
                None if s.target.is_empty() => bail!(
                    "key `stream[{i}].peer`: stream \"{name}\" goes nowhere: give it a `peer` \
                     (the DR site's drd, e.g. \"https://rochester-dr1.example.org:7601\"), a \
                     `[[stream.target]]` (an object store), or both"
                ),
                None if s.peer_name.is_some() => bail!(
                    "key `stream[{i}].peer_name`: names the certificate of the `peer`, and this \
                     stream has none; remove the key or add the peer"
                ),
                None => {}
            }
            let peer_name = match (&raw.tls, s.peer_name) {
                (Some(_), None) if s.peer.is_some() => bail!(
                    "key `stream[{i}].peer_name`: with [tls], name the node whose certificate the peer \
                     must present (e.g. \"rochester-dr1\")"
                ),
                (_, Some(n)) => Some(
                    NodeId::new(n)
                        .with_context(|| format!("key `stream[{i}].peer_name`"))?
                        .to_string(),
                ),
                (_, None) => None,
            };
            let source = match s.source.as_deref() {
                None | Some("tail") => SourceMode::Tail,
                Some("spool") => SourceMode::Spool,
                Some("postgres") => SourceMode::Postgres,
                Some(other) => bail!(
                    "key `stream[{i}].source`: {other:?} must be \"tail\" (drd reads the database's \
                     WAL directory), \"spool\" (drctl wal-push fills it) or \"postgres\" (drd \
                     streams the WAL from PostgreSQL through a replication slot)"
                ),
            };
            let mode = match s.mode.as_deref() {
                None | Some("async") => SyncMode::Async,
                Some("sync") => SyncMode::Sync,
                Some(other) => {
                    bail!("key `stream[{i}].mode`: {other:?} must be \"async\" or \"sync\"")
                }
            };
            if mode == SyncMode::Sync && s.peer.is_none() {
                bail!(
                    "key `stream[{i}].mode`: \"sync\" waits for the DR site's drd (the `peer`), \
                     and this stream has none; its targets are written asynchronously (the RPO \
                     is bounded by `upload_interval`). Use mode = \"async\" or add a peer"
                );
            }
            if mode == SyncMode::Sync && !source.drd_owned() {
                bail!(
                    "key `stream[{i}].mode`: \"sync\" needs `source = \"postgres\"` (COMMIT \
                     waits for the DR site) or `source = \"spool\"` (drctl wal-push waits)"
                );
            }
            if s.sync_timeout_seconds.is_some() && source == SourceMode::Postgres {
                bail!(
                    "key `stream[{i}].sync_timeout_seconds`: applies to drctl wal-push; with \
                     `source = \"postgres\"` PostgreSQL decides how long a COMMIT waits \
                     (synchronous_standby_names). Remove the key"
                );
            }
            let postgres = match (source, s.postgres, s.slot) {
                (SourceMode::Postgres, Some(conninfo), Some(slot)) => {
                    let conninfo = conninfo
                        .parse()
                        .map_err(|e| anyhow::anyhow!("key `stream[{i}].postgres`: {e}"))?;
                    check_slot_name(&slot)
                        .map_err(|e| anyhow::anyhow!("key `stream[{i}].slot`: {e}"))?;
                    Some(PostgresSource { conninfo, slot })
                }
                (SourceMode::Postgres, None, _) => bail!(
                    "key `stream[{i}].postgres`: a `source = \"postgres\"` stream needs the \
                     database's connection string, e.g. \
                     \"host=/var/run/postgresql port=5432 user=drd application_name=drd\""
                ),
                (SourceMode::Postgres, Some(_), None) => bail!(
                    "key `stream[{i}].slot`: a `source = \"postgres\"` stream needs the name of \
                     its physical replication slot, e.g. \"drd_rochester\" (created if missing)"
                ),
                (_, Some(_), _) => bail!(
                    "key `stream[{i}].postgres`: applies only to a `source = \"postgres\"` stream"
                ),
                (_, None, Some(_)) => bail!(
                    "key `stream[{i}].slot`: applies only to a `source = \"postgres\"` stream"
                ),
                (_, None, None) => None,
            };
            if source == SourceMode::Postgres && looks_like_pg_wal(&s.wal_dir) {
                bail!(
                    "key `stream[{i}].wal_dir`: {:?} looks like a PostgreSQL data directory's \
                     pg_wal; a `source = \"postgres\"` stream writes its own copy of the WAL \
                     there — give it a directory of its own, e.g. /var/lib/drd/wal/<stream>",
                    s.wal_dir
                );
            }
            let sync_timeout_seconds = s
                .sync_timeout_seconds
                .unwrap_or(DEFAULT_SYNC_TIMEOUT_SECONDS);
            if sync_timeout_seconds == 0 {
                bail!("key `stream[{i}].sync_timeout_seconds`: must be greater than 0");
            }
            let max_bandwidth = s
                .max_bandwidth
                .as_deref()
                .map(crate::throttle::parse_bandwidth)
                .transpose()
                .map_err(|e| anyhow::anyhow!("key `stream[{i}].max_bandwidth`: {e}"))?
                .flatten();
            let compression = match (s.compression.as_deref(), s.compression_level) {
                (None | Some("none"), None) => drd_proto::Compression::None,
                (None | Some("none"), Some(_)) => bail!(
                    "key `stream[{i}].compression_level`: applies only with \
                     `compression = \"zstd\"`; set that too or remove the level"
                ),
                (Some("zstd"), level) => {
                    let level = level.unwrap_or(DEFAULT_COMPRESSION_LEVEL);
                    let range = drd_proto::zstd_levels();
                    if !range.contains(&level) {
                        bail!(
                            "key `stream[{i}].compression_level`: {level} is not a zstd level \
                             ({} to {}; 1 is fast and the default, higher compresses more \
                             and costs more CPU)",
                            range.start(),
                            range.end()
                        );
                    }
                    drd_proto::Compression::Zstd { level }
                }
                (Some(other), _) => bail!(
                    "key `stream[{i}].compression`: {other:?} must be \"none\" (the default) \
                     or \"zstd\""
                ),
            };
            let spool_only = |key: &str| {
                anyhow::anyhow!(
                    "key `stream[{i}].{key}`: applies only to a `source = \"spool\"` stream \
                     (filled by drctl wal-push); this stream reads the database's own WAL \
                     directory (source = \"tail\"), whose files drd never removes — PostgreSQL \
                     recycles them (wal_keep_size, max_slot_wal_keep_size). Remove the key, or \
                     set source = \"spool\" (archive_command = drctl wal-push) or \
                     source = \"postgres\" (drd streams into its own wal_dir)"
                )
            };
            let spool_retention = match s.spool_retention.as_deref() {
                None => Duration::ZERO,
                Some(_) if !source.drd_owned() => return Err(spool_only("spool_retention")),
                Some(t) => crate::units::parse_duration(t)
                    .map_err(|e| anyhow::anyhow!("key `stream[{i}].spool_retention`: {e}"))?,
            };
            let spool_max_bytes = match s.spool_max_bytes.as_deref() {
                None => DEFAULT_SPOOL_MAX_BYTES,
                Some(_) if !source.drd_owned() => return Err(spool_only("spool_max_bytes")),
                Some(t) => {
                    let b = crate::units::parse_size(t)
                        .map_err(|e| anyhow::anyhow!("key `stream[{i}].spool_max_bytes`: {e}"))?;
                    if b == 0 {
                        bail!(
                            "key `stream[{i}].spool_max_bytes`: must be greater than 0 (a size \
                             like \"4GiB\"; leave it out for the default of 16GiB)"
                        );
                    }
                    b
                }
            };
            let stream_role = match s.initial_role.as_deref() {
                None => None,
                Some("primary") => Some(crate::storage::catalog::Role::Primary),
                Some("replica") if replica.is_none() => bail!(
                    "key `stream[{i}].initial_role`: a stream that starts as a replica needs \
                     `[replica] listen` (this node receives it)"
                ),
                Some("replica") => Some(crate::storage::catalog::Role::Replica),
                Some(other) => bail!(
                    "key `stream[{i}].initial_role`: {other:?} must be \"primary\" or \"replica\""
                ),
            };
            let mut targets = Vec::with_capacity(s.target.len());
            let mut urls = HashSet::new();
            for (j, t) in s.target.into_iter().enumerate() {
                let key = format!("stream[{i}].target[{j}]");
                drd_bucket::store::check_url(&t.url, t.endpoint.as_deref())
                    .map_err(|e| anyhow::anyhow!("key `{key}.url`: {e}"))?;
                if !urls.insert(t.url.trim_end_matches('/').to_string()) {
                    bail!("key `{key}.url`: {} is this stream's target twice", t.url);
                }
                let sealer =
                    drd_bucket::Sealer::from_config(&t.recipients, t.encryption.as_deref())
                        .map_err(|e| anyhow::anyhow!("key `{key}.recipients`: {e}"))?;
                let upload_interval = match t.upload_interval.as_deref() {
                    None => DEFAULT_UPLOAD_INTERVAL,
                    Some(v) => crate::units::parse_duration(v)
                        .map_err(|e| anyhow::anyhow!("key `{key}.upload_interval`: {e}"))?,
                };
                if upload_interval < Duration::from_millis(100) {
                    bail!(
                        "key `{key}.upload_interval`: at least 100ms (each upload is a request \
                         the store bills; 10s is the default)"
                    );
                }
                targets.push(TargetConfig {
                    url: t.url,
                    endpoint: t.endpoint,
                    sealer,
                    upload_interval,
                });
            }
            streams.push(StreamConfig {
                name,
                targets,
                initial_role: stream_role,
                wal_dir: s.wal_dir,
                peer: s.peer,
                peer_name,
                source,
                mode,
                sync_timeout: Duration::from_secs(sync_timeout_seconds),
                max_bandwidth,
                compression,
                spool_retention,
                spool_max_bytes,
                postgres,
            });
        }
        if replica.is_none() && streams.is_empty() {
            bail!("nothing to do: configure `[replica]` to receive or `[[stream]]` to ship");
        }
        let t = &raw.tuning;
        if t.chunk_bytes == 0 || t.chunk_bytes > drd_proto::MAX_CHUNK_BYTES {
            bail!(
                "key `tuning.chunk_bytes`: {} must be between 1 and {}",
                t.chunk_bytes,
                drd_proto::MAX_CHUNK_BYTES
            );
        }
        if t.window_bytes < t.chunk_bytes as u64 {
            bail!("key `tuning.window_bytes`: must be at least `tuning.chunk_bytes`");
        }
        for (key, v) in [
            ("rescan_interval_ms", t.rescan_interval_ms),
            ("keepalive_interval_ms", t.keepalive_interval_ms),
            ("idle_timeout_ms", t.idle_timeout_ms),
            ("reconnect_min_ms", t.reconnect_min_ms),
            ("group_commit_bytes", t.group_commit_bytes),
            ("receive_budget_bytes", t.receive_budget_bytes),
        ] {
            if v == 0 {
                bail!("key `tuning.{key}`: must be greater than 0");
            }
        }
        if t.idle_timeout_ms <= t.keepalive_interval_ms {
            bail!(
                "key `tuning.idle_timeout_ms`: must be longer than `tuning.keepalive_interval_ms`"
            );
        }
        if t.reconnect_max_ms < t.reconnect_min_ms {
            bail!("key `tuning.reconnect_max_ms`: must be at least `tuning.reconnect_min_ms`");
        }
        use crate::storage::catalog::Role;
        let initial_role = match raw.initial_role.as_deref() {
            Some("primary") => Role::Primary,
            Some("replica") => Role::Replica,
            Some(other) => {
                bail!("key `initial_role`: {other:?} must be \"primary\" or \"replica\"")
            }
            // Every stream says its own: the node's is only the default
            // of streams that arrive unlisted.
            None if !streams.is_empty() && streams.iter().all(|s| s.initial_role.is_some()) => {
                if replica.is_some() {
                    Role::Replica
                } else {
                    Role::Primary
                }
            }
            None if replica.is_some() && !streams.is_empty() => bail!(
                "key `initial_role`: a node with both `[replica]` and `[[stream]]` must say \
                 which role it starts in (\"primary\" or \"replica\")"
            ),
            None if streams.is_empty() => Role::Replica,
            None => Role::Primary,
        };
        if initial_role == Role::Primary && streams.is_empty() {
            bail!("key `initial_role`: a primary needs at least one `[[stream]]` to ship");
        }
        if initial_role == Role::Replica && replica.is_none() {
            bail!("key `initial_role`: a replica needs `[replica] listen`");
        }
        let rpo_budget = raw
            .rpo_budget
            .as_deref()
            .map(DataLoss::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("key `rpo_budget`: {e}"))?;
        let tls = match (raw.tls, raw.insecure_plaintext) {
            (Some(_), true) => bail!(
                "key `insecure_plaintext`: cannot be true together with [tls]; remove one of them"
            ),
            (None, false) => bail!(
                "key `tls`: replication is encrypted and authenticated by default; configure [tls] \
                 (ca, cert, key, allowed_peers — `drctl certs init` makes them), or for a \
                 loopback-only test set `insecure_plaintext = true` as a top-level key (at the \
                 top of the file, before any [section])"
            ),
            (None, true) => None,
            (Some(t), false) => {
                for (key, p) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
                    if !p.is_absolute() {
                        bail!("key `tls.{key}`: {p:?} must be an absolute path");
                    }
                }
                if replica.is_some() && t.allowed_peers.is_empty() {
                    bail!("key `tls.allowed_peers`: a node that receives must list the certificate names allowed to connect");
                }
                for (i, n) in t.allowed_peers.iter().enumerate() {
                    NodeId::new(n.clone())
                        .with_context(|| format!("key `tls.allowed_peers[{i}]`"))?;
                }
                Some(TlsConfig {
                    files: crate::tls::TlsFiles {
                        ca: t.ca,
                        cert: t.cert,
                        key: t.key,
                    },
                    allowed_peers: t.allowed_peers,
                })
            }
        };
        let control_listen = match raw.control.listen {
            None => None,
            Some(l) => {
                let addr: SocketAddr = l.parse().map_err(|e| {
                    anyhow::anyhow!("key `control.listen`: {l:?} is not IP:PORT ({e})")
                })?;
                if tls.is_none() {
                    bail!("key `control.listen`: the control API on TCP needs [tls] (mTLS)");
                }
                if raw.control.allowed_clients.is_empty() {
                    bail!("key `control.allowed_clients`: list the client certificate names allowed to use the control API");
                }
                Some(ControlListen {
                    addr,
                    allowed_clients: raw.control.allowed_clients,
                })
            }
        };
        if raw.hooks.timeout_seconds == 0 {
            bail!("key `hooks.timeout_seconds`: must be greater than 0");
        }
        if raw.hooks.drill_timeout_seconds == 0 {
            bail!("key `hooks.drill_timeout_seconds`: must be greater than 0");
        }
        if let Some(d) = &raw.hooks.drill_scratch_dir {
            if !d.is_absolute() {
                bail!("key `hooks.drill_scratch_dir`: {d:?} must be an absolute path");
            }
        }
        if let Some(level) = &raw.log_level {
            tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
                anyhow::anyhow!(
                    "key `log_level`: {level:?} is not a log filter like \"info\" or \"info,drd=debug\" ({e})"
                )
            })?;
        }
        let max_bandwidth = raw
            .max_bandwidth
            .as_deref()
            .map(crate::throttle::parse_bandwidth)
            .transpose()
            .map_err(|e| anyhow::anyhow!("key `max_bandwidth`: {e}"))?
            .flatten();
        let metrics_listen = match raw.metrics {
            None => None,
            Some(m) => Some(m.listen.parse::<SocketAddr>().map_err(|e| {
                anyhow::anyhow!(
                    "key `metrics.listen`: {:?} is not an address like 127.0.0.1:9601 ({e})",
                    m.listen
                )
            })?),
        };
        Ok(Config {
            node_id,
            data_dir: raw.data_dir,
            control_socket,
            control_socket_group,
            replica,
            streams,
            tuning: raw.tuning,
            initial_role,
            rpo_budget,
            hooks: raw.hooks,
            tls,
            control_listen,
            log_level: raw.log_level,
            max_bandwidth,
            metrics_listen,
        })
    }

    /// Loads the TLS material named in `[tls]` (None without TLS): files
    /// exist, keys are private (mode 0600), certificates chain to the CA and
    /// are valid now.
    pub fn load_tls(&self) -> anyhow::Result<Option<crate::tls::TlsMaterial>> {
        match &self.tls {
            None => Ok(None),
            Some(t) => Ok(Some(crate::tls::load(&t.files).context("key `tls`")?)),
        }
    }

    /// Checks what can only be checked on this machine (directories exist,
    /// TLS files load).
    pub fn check_environment(&self) -> anyhow::Result<()> {
        self.load_tls()?;
        for (i, s) in self.streams.iter().enumerate() {
            if !s.wal_dir.is_dir() {
                bail!(
                    "key `stream[{i}].wal_dir`: {} is not a directory; create it or fix the path",
                    s.wal_dir.display()
                );
            }
        }
        if let Some(g) = &self.control_socket_group {
            let gid = crate::unix::group_id(g).with_context(|| {
                format!("key `control.socket_group`: cannot look up group {g:?}")
            })?;
            if gid.is_none() {
                bail!(
                    "key `control.socket_group`: there is no group {g:?} on this machine \
                     (`getent group {g}` finds none); create it or name an existing group"
                );
            }
        }
        Ok(())
    }

    pub fn catalog_dir(&self) -> PathBuf {
        self.data_dir.join("catalog")
    }

    /// Landing directory of a received stream: complete segments as `NAME`,
    /// the one being received as `NAME.partial`.
    /// The DR site's retention policy for a received stream, if any.
    pub fn retention_for(&self, stream: &StreamName) -> Option<&crate::replica::retention::Policy> {
        self.replica.as_ref()?.retention.for_stream(stream)
    }

    pub fn landing_dir(&self, stream: &StreamName) -> PathBuf {
        landing_dir(&self.data_dir, stream)
    }
}

/// See [`Config::landing_dir`]; also used by tools that only know the data dir.
pub fn landing_dir(data_dir: &Path, stream: &StreamName) -> PathBuf {
    data_dir
        .join("streams")
        .join(stream.as_str())
        .join("segments")
}

/// With TLS a peer is `https://HOST:PORT`; without, `http://` to loopback.
fn check_peer(peer: &str, tls: bool) -> anyhow::Result<()> {
    if tls {
        let rest = peer.strip_prefix("https://").ok_or_else(|| {
            anyhow::anyhow!("{peer:?} must look like https://HOST:PORT (the [tls] section is set)")
        })?;
        let host_port = rest.trim_end_matches('/');
        if host_port
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            bail!("{peer:?}: {host_port:?} is not HOST:PORT");
        }
        return Ok(());
    }
    let rest = peer.strip_prefix("http://").ok_or_else(|| {
        anyhow::anyhow!("{peer:?} must look like http://IP:PORT (plaintext, loopback only)")
    })?;
    let addr: SocketAddr = rest
        .trim_end_matches('/')
        .parse()
        .map_err(|e| anyhow::anyhow!("{peer:?}: {rest:?} is not IP:PORT ({e})"))?;
    if !addr.ip().is_loopback() {
        bail!("{peer:?}: plaintext replication is only allowed to a loopback address; configure [tls]");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
insecure_plaintext = true
node_id = "verona-db1"
data_dir = "/var/lib/drd"
[control]
socket = "/run/drd/drd.sock"
[replica]
listen = "127.0.0.1:7601"
[[stream]]
name = "ehr-prod"
wal_dir = "/var/lib/postgresql/wal"
peer = "http://127.0.0.1:7601"
"#;

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    /// Issue 18: one node primary of one stream and replica of another
    /// (active/active sites), each stream saying its own starting role.
    #[test]
    fn each_stream_may_say_its_own_initial_role() {
        use crate::storage::catalog::Role;
        let conf = |node_role: &str, ehr_role: &str, replica: bool| {
            format!(
                "insecure_plaintext = true\nnode_id = \"verona-db1\"\ndata_dir = \"/var/lib/drd\"\n{node_role}\n\
                 {}\
                 [[stream]]\nname = \"ehr-prod\"\nwal_dir = \"/var/lib/ehr\"\npeer = \"http://127.0.0.1:7601\"\n{ehr_role}\n\
                 [[stream]]\nname = \"lab\"\nwal_dir = \"/var/lib/lab\"\npeer = \"http://127.0.0.1:7602\"\n\
                 initial_role = \"replica\"\n",
                if replica { "[replica]\nlisten = \"127.0.0.1:7600\"\n" } else { "" }
            )
        };
        let c = Config::parse(&conf(
            "initial_role = \"primary\"",
            "initial_role = \"primary\"",
            true,
        ))
        .unwrap();
        assert_eq!(c.streams[0].initial_role, Some(Role::Primary));
        assert_eq!(c.streams[1].initial_role, Some(Role::Replica));
        // A stream without its own takes the node's.
        let c = Config::parse(&conf("initial_role = \"primary\"", "", true)).unwrap();
        assert_eq!(c.streams[0].initial_role, None);
        assert_eq!(c.initial_role, Role::Primary);
        // With every stream saying its own, the node-wide key may go.
        assert!(Config::parse(&conf("", "initial_role = \"primary\"", true)).is_ok());
        // Without it and without a stream's own, the node must say.
        assert!(err(&conf("", "", true)).contains("key `initial_role`"));
        assert!(err(&conf(
            "initial_role = \"primary\"",
            "initial_role = \"boss\"",
            true
        ))
        .contains("stream[0].initial_role"));
        // A stream that starts as a replica on a node that receives nothing.
        let e = err(&conf("initial_role = \"primary\"", "", false));
        assert!(
            e.contains("stream[1].initial_role") && e.contains("[replica] listen"),
            "{e}"
        );
    }

    #[test]
    fn the_documented_shape_parses() {
        let c = Config::parse(&format!("initial_role = \"primary\"\n{GOOD}")).unwrap();
        assert_eq!(c.node_id.as_str(), "verona-db1");
        assert_eq!(c.streams.len(), 1);
        assert_eq!(c.replica.unwrap().listen.port(), 7601);
    }

    #[test]
    fn tls_is_the_default_and_plaintext_stays_on_loopback() {
        let g = format!("initial_role = \"replica\"\n{GOOD}");
        let no_tls = g.replace("insecure_plaintext = true\n", "");
        assert!(err(&no_tls).contains("encrypted and authenticated by default"));
        let tls = format!(
            "{}\n[tls]\nca = \"/t/ca.pem\"\ncert = \"/t/n.pem\"\nkey = \"/t/n.key\"\nallowed_peers = [\"rochester-dr1\"]\n",
            no_tls.replace("http://127.0.0.1:7601", "https://10.0.0.2:7601")
        );
        assert!(
            err(&tls).contains("peer_name"),
            "TLS peers need a certificate name"
        );
        let ok = tls.replace("peer = ", "peer_name = \"rochester-dr1\"\npeer = ");
        let c = Config::parse(&ok).unwrap();
        assert_eq!(c.streams[0].peer_name.as_deref(), Some("rochester-dr1"));
        assert!(err(&ok.replace("https://", "http://")).contains("https://"));
        assert!(err(&format!("insecure_plaintext = true\n{ok}")).contains("insecure_plaintext"));
    }

    #[test]
    fn insecure_plaintext_is_a_top_level_key() {
        let g = format!("initial_role = \"replica\"\n{GOOD}");
        let no_tls = g.replace("insecure_plaintext = true\n", "");
        let e = err(&no_tls);
        assert!(
            e.contains("`insecure_plaintext = true` as a top-level key")
                && e.contains("before any [section]"),
            "{e}"
        );
        // Put under [tls], as the hint used to invite: a specific error,
        // not serde's "unknown field".
        let under_tls = format!(
            "{no_tls}[tls]\nca = \"/t/ca.pem\"\ncert = \"/t/n.pem\"\nkey = \"/t/n.key\"\n\
             insecure_plaintext = true\n"
        );
        let e = err(&under_tls);
        assert!(
            e.contains("tls.insecure_plaintext")
                && e.contains("top-level key")
                && e.contains("move it")
                && !e.contains("unknown field"),
            "{e}"
        );
        let only_flag = format!("{no_tls}[tls]\ninsecure_plaintext = true\n");
        let e = err(&only_flag);
        assert!(e.contains("top-level key") && e.contains("move it"), "{e}");
    }

    #[test]
    fn data_loss_amounts_parse() {
        assert_eq!(DataLoss::parse("16MiB"), Ok(DataLoss::Bytes(16 << 20)));
        assert_eq!(DataLoss::parse("100"), Ok(DataLoss::Bytes(100)));
        assert_eq!(DataLoss::parse("30s"), Ok(DataLoss::Seconds(30.0)));
        assert_eq!(DataLoss::parse("500ms"), Ok(DataLoss::Seconds(0.5)));
        assert!(DataLoss::parse("5 parsecs").is_err());
        assert!(DataLoss::parse("MiB").is_err());
        // One meaning everywhere (issue 15): KB is 1000 as in max_bandwidth,
        // and a bare M is neither minutes nor MiB but refused.
        assert_eq!(DataLoss::parse("64KB"), Ok(DataLoss::Bytes(64_000)));
        assert_eq!(DataLoss::parse("64KiB"), Ok(DataLoss::Bytes(65_536)));
        assert_eq!(DataLoss::parse("16min"), Ok(DataLoss::Seconds(960.0)));
        let g = format!("initial_role = \"replica\"\n{GOOD}");
        for bad in ["16m", "16M"] {
            let e = err(&format!("rpo_budget = \"{bad}\"\n{g}"));
            assert!(
                e.contains("key `rpo_budget`")
                    && e.contains("ambiguous")
                    && e.contains("\"16MiB\"")
                    && e.contains("\"16MB\"")
                    && e.contains("\"16min\""),
                "{e}"
            );
        }
        let e = err(&format!("max_bandwidth = \"200M/s\"\n{g}"));
        assert!(
            e.contains("key `max_bandwidth`") && e.contains("\"200MiB/s\""),
            "{e}"
        );
    }

    /// Issue 15: errors printed `StreamName("ehr-prod")`, a Rust Debug form.
    #[test]
    fn errors_show_names_as_written() {
        let g = format!("initial_role = \"primary\"\n{GOOD}");
        let twice = format!(
            "{g}[[stream]]\nname = \"ehr-prod\"\nwal_dir = \"/w2\"\npeer = \"http://127.0.0.1:7602\"\n"
        );
        let e = err(&twice);
        assert!(e.contains("stream \"ehr-prod\" is configured twice"), "{e}");
        assert!(!e.contains("StreamName("), "{e}");
        let e = err(&g.replace("\"ehr-prod\"", "\"x/y\""));
        assert!(e.contains("\"x/y\"") && !e.contains("StreamName("), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err(GOOD).contains("initial_role"),
            "both sides need initial_role"
        );
        let g = format!("initial_role = \"replica\"\n{GOOD}");
        assert!(err(&g.replace("listen =", "lisen =")).contains("lisen"));
        assert!(err(&g.replace("\"ehr-prod\"", "\"../etc\"")).contains("stream[0].name"));
        assert!(err(&g.replace("\"/var/lib/drd\"", "\"rel\"")).contains("data_dir"));
        assert!(
            err(&g.replace("127.0.0.1:7601\"\n[[", "10.1.2.3:7601\"\n[["))
                .contains("replica.listen")
        );
        assert!(err(&g.replace("http://127.0.0.1:7601", "ftp://x")).contains("stream[0].peer"));
        assert!(err(&format!("{g}[tuning]\nchunk_bytes = 0\n")).contains("tuning.chunk_bytes"));
        assert!(err(&g.replace("\"replica\"", "\"boss\"")).contains("initial_role"));
        assert!(err(&format!("rpo_budget = \"lots\"\n{g}")).contains("rpo_budget"));
    }

    #[test]
    fn operations_keys() {
        let g = format!("initial_role = \"primary\"\n{GOOD}");
        let c = Config::parse(&g).unwrap();
        assert_eq!((c.max_bandwidth, c.streams[0].max_bandwidth), (None, None));
        assert_eq!((c.metrics_listen, c.log_level.clone()), (None, None));
        let ops = format!(
            "max_bandwidth = \"1Gbit/s\"\nlog_level = \"info,drd=debug\"\n{g}\
             max_bandwidth = \"200MiB/s\"\n[metrics]\nlisten = \"127.0.0.1:9601\"\n"
        );
        let c = Config::parse(&ops).unwrap();
        assert_eq!(c.max_bandwidth, Some(125_000_000));
        assert_eq!(c.streams[0].max_bandwidth, Some(200 << 20));
        assert_eq!(c.metrics_listen.unwrap().port(), 9601);
        assert_eq!(c.log_level.as_deref(), Some("info,drd=debug"));
        assert!(err(&ops.replace("\"200MiB/s\"", "\"lots\"")).contains("stream[0].max_bandwidth"));
        assert!(err(&ops.replace("\"1Gbit/s\"", "\"1Gbit\"")).contains("key `max_bandwidth`"));
        assert!(err(&ops.replace("127.0.0.1:9601", "nowhere")).contains("metrics.listen"));
        assert!(err(&ops.replace("info,drd=debug", "info,drd=[")).contains("log_level"));
        assert!(err(&format!("{ops}lissen = 1\n")).contains("lissen"));
    }

    #[test]
    fn compression_keys() {
        use drd_proto::Compression;
        let g = format!("initial_role = \"primary\"\n{GOOD}");
        let c = Config::parse(&g).unwrap();
        assert_eq!(c.streams[0].compression, Compression::None);
        let c = Config::parse(&format!("{g}compression = \"none\"\n")).unwrap();
        assert_eq!(c.streams[0].compression, Compression::None);
        let zstd = format!("{g}compression = \"zstd\"\n");
        let c = Config::parse(&zstd).unwrap();
        assert_eq!(c.streams[0].compression, Compression::Zstd { level: 1 });
        let c = Config::parse(&format!("{zstd}compression_level = 19\n")).unwrap();
        assert_eq!(c.streams[0].compression, Compression::Zstd { level: 19 });
        let c = Config::parse(&format!("{zstd}compression_level = -5\n")).unwrap();
        assert_eq!(c.streams[0].compression, Compression::Zstd { level: -5 });
        let e = err(&format!("{zstd}compression_level = 23\n"));
        assert!(
            e.contains("stream[0].compression_level") && e.contains("23"),
            "{e}"
        );
        let e = err(&format!("{g}compression = \"gzip\"\n"));
        assert!(
            e.contains("stream[0].compression") && e.contains("gzip"),
            "{e}"
        );
        let e = err(&format!("{g}compression_level = 3\n"));
        assert!(e.contains("stream[0].compression_level"), "{e}");
        assert!(err(&format!("{zstd}compression_level = \"fast\"\n")).contains("compression_level"));
    }

    #[test]
    fn spool_sync_and_socket_group_keys() {
        let g = format!("initial_role = \"primary\"\n{GOOD}");
        let c = Config::parse(&g).unwrap();
        assert_eq!(c.streams[0].source, SourceMode::Tail);
        assert_eq!(c.streams[0].mode, SyncMode::Async);
        assert_eq!(c.streams[0].sync_timeout, Duration::from_secs(60));
        assert_eq!(c.control_socket_group, None);
        let spool = format!("{g}source = \"spool\"\nmode = \"sync\"\nsync_timeout_seconds = 5\n");
        let c = Config::parse(&spool).unwrap();
        assert_eq!(c.streams[0].source, SourceMode::Spool);
        assert_eq!(c.streams[0].mode, SyncMode::Sync);
        assert_eq!(c.streams[0].sync_timeout, Duration::from_secs(5));
        assert!(err(&format!("{g}mode = \"sync\"\n")).contains("stream[0].mode"));
        assert!(err(&format!("{g}source = \"pipe\"\n")).contains("stream[0].source"));
        assert!(err(&format!("{g}mode = \"eventually\"\n")).contains("stream[0].mode"));
        assert!(err(&spool.replace("= 5", "= 0")).contains("sync_timeout_seconds"));
        let grp = g.replace(
            "socket = \"/run/drd/drd.sock\"",
            "socket = \"/run/drd/drd.sock\"\nsocket_group = \"postgres\"",
        );
        let c = Config::parse(&grp).unwrap();
        assert_eq!(c.control_socket_group.as_deref(), Some("postgres"));
        assert!(err(&grp.replace("\"postgres\"", "\"a b\"")).contains("control.socket_group"));
    }

    #[test]
    fn spool_retention_and_limit_keys() {
        let g = format!("initial_role = \"primary\"\n{GOOD}");
        let spool = format!("{g}source = \"spool\"\n");
        let c = Config::parse(&spool).unwrap();
        assert_eq!(c.streams[0].spool_retention, Duration::ZERO);
        assert_eq!(c.streams[0].spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
        let set = format!("{spool}spool_retention = \"1h\"\nspool_max_bytes = \"4GiB\"\n");
        let c = Config::parse(&set).unwrap();
        assert_eq!(c.streams[0].spool_retention, Duration::from_secs(3600));
        assert_eq!(c.streams[0].spool_max_bytes, 4 << 30);
        for key in ["spool_retention = \"1h\"", "spool_max_bytes = \"4GiB\""] {
            let e = err(&format!("{g}{key}\n"));
            let name = key.split(' ').next().unwrap();
            assert!(
                e.contains(&format!("stream[0].{name}"))
                    && e.contains("source = \"spool\"")
                    && e.contains("never removes"),
                "{e}"
            );
        }
        let e = err(&set.replace("\"1h\"", "\"soon\""));
        assert!(e.contains("stream[0].spool_retention"), "{e}");
        let e = err(&set.replace("\"4GiB\"", "\"4G\""));
        assert!(e.contains("stream[0].spool_max_bytes"), "{e}");
        let e = err(&set.replace("\"4GiB\"", "\"0\""));
        assert!(e.contains("greater than 0"), "{e}");
    }

    /// A `source = "postgres"` stream (issue 22) with `extra` keys, at a
    /// primary whose wal_dir is `wal_dir`.
    fn pg_stream(wal_dir: &str, extra: &str) -> String {
        format!(
            "initial_role = \"primary\"\n{}\
             source = \"postgres\"\n{extra}\n",
            GOOD.replace("/var/lib/postgresql/wal", wal_dir)
        )
    }

    const PG_KEYS: &str =
        "postgres = \"host=/var/run/postgresql port=5432 user=drd application_name=drd\"\n\
         slot = \"drd_rochester\"";

    #[test]
    fn a_postgres_stream_needs_a_conninfo_and_a_slot() {
        let c = Config::parse(&pg_stream("/var/lib/drd/wal/ehr-prod", PG_KEYS)).unwrap();
        let s = &c.streams[0];
        assert_eq!(s.source, SourceMode::Postgres);
        assert_eq!(s.mode, SyncMode::Async);
        let pg = s.postgres.as_ref().unwrap();
        assert_eq!(pg.slot, "drd_rochester");
        let e = err(&pg_stream("/w", "slot = \"drd_rochester\""));
        assert!(
            e.contains("key `stream[0].postgres`") && e.contains("connection string"),
            "{e}"
        );
        let e = err(&pg_stream("/w", "postgres = \"host=/tmp\""));
        assert!(
            e.contains("key `stream[0].slot`") && e.contains("replication slot"),
            "{e}"
        );
        let e = err(&pg_stream("/w", ""));
        assert!(e.contains("key `stream[0].postgres`"), "{e}");
    }

    #[test]
    fn postgres_and_slot_apply_only_to_postgres_streams() {
        let g = format!("initial_role = \"primary\"\n{GOOD}");
        for source in ["", "source = \"tail\"\n", "source = \"spool\"\n"] {
            for key in ["postgres = \"host=/tmp\"", "slot = \"drd_rochester\""] {
                let e = err(&format!("{g}{source}{key}\n"));
                let name = key.split(' ').next().unwrap();
                assert!(
                    e.contains(&format!("key `stream[0].{name}`"))
                        && e.contains("applies only to a `source = \"postgres\"` stream"),
                    "{source:?} {key:?}: {e}"
                );
            }
        }
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        let with_slot = |slot: &str| {
            pg_stream(
                "/w",
                &format!("postgres = \"host=/tmp\"\nslot = \"{slot}\""),
            )
        };
        assert!(Config::parse(&with_slot("drd_1")).is_ok());
        assert!(Config::parse(&with_slot(&"a".repeat(63))).is_ok());
        for (bad, why) in [
            ("Drd_rochester", "lower-case"),
            ("drd-rochester", "lower-case"),
            ("drd rochester", "lower-case"),
            ("", "1 to 63"),
        ] {
            let e = err(&with_slot(bad));
            assert!(
                e.contains("key `stream[0].slot`") && e.contains(why),
                "{bad:?}: {e}"
            );
        }
        let e = err(&with_slot(&"a".repeat(64)));
        assert!(
            e.contains("key `stream[0].slot`") && e.contains("1 to 63"),
            "{e}"
        );
    }

    /// Issue 19: `[[stream.target]]`, and the refusals that name the key.
    #[test]
    fn stream_targets_parse_and_bad_ones_are_refused() {
        let (_, public) = drd_bucket::crypto::generate();
        let (secret, _) = drd_bucket::crypto::generate();
        let with = |t: &str| format!("initial_role = \"primary\"\n{GOOD}[[stream.target]]\n{t}\n");
        let c = Config::parse(&with(&format!(
            "url = \"s3://hospital-dr/ehr-prod\"\nrecipients = [\"{public}\"]\nupload_interval = \"2s\""
        )))
        .unwrap();
        let t = &c.streams[0].targets[0];
        assert_eq!(t.url, "s3://hospital-dr/ehr-prod");
        assert_eq!(t.upload_interval, Duration::from_secs(2));
        assert_eq!(t.sealer.encryption(), drd_bucket::object::Encryption::Age);
        let c = Config::parse(&with(
            "url = \"file:///srv/archive\"\nencryption = \"none\"",
        ))
        .unwrap();
        assert_eq!(
            c.streams[0].targets[0].upload_interval,
            DEFAULT_UPLOAD_INTERVAL
        );
        for (t, says) in [
            ("url = \"s3://b/p\"".to_string(), "encryption = \"none\""),
            (format!("url = \"s3://b/p\"\nrecipients = [\"{secret}\"]"), "secret key"),
            (format!("url = \"ftp://b/p\"\nrecipients = [\"{public}\"]"), "must be s3://"),
            (
                format!("url = \"s3://b/p\"\nendpoint = \"http://10.1.1.1:9000\"\nrecipients = [\"{public}\"]"),
                "loopback",
            ),
            (
                format!("url = \"s3://b/p\"\nrecipients = [\"{public}\"]\nupload_interval = \"10ms\""),
                "at least 100ms",
            ),
            (format!("url = \"s3://b/p\"\nrecipients = [\"{public}\"]\nsecret = 1"), "unknown field"),
        ] {
            let e = err(&with(&t));
            assert!(e.contains(says), "{t}: {e}");
            assert!(e.contains("stream[0].target[0]") || says == "unknown field", "{t}: {e}");
            assert!(!e.contains(&secret), "the error shows the secret key: {e}");
        }
        let twice = format!(
            "initial_role = \"primary\"\n{GOOD}[[stream.target]]\nurl = \"file:///a\"\nencryption = \"none\"\n\
             [[stream.target]]\nurl = \"file:///a/\"\nencryption = \"none\"\n"
        );
        assert!(err(&twice).contains("target twice"), "{}", err(&twice));
    }

    /// Issue 19: a stream may have targets and no peer; it must go
    /// somewhere, `peer_name` needs a peer, and sync mode needs the peer.
    #[test]
    fn a_stream_with_targets_needs_no_peer() {
        let base =
            "insecure_plaintext = true\nnode_id = \"verona-db1\"\ndata_dir = \"/var/lib/drd\"\n\
                    [control]\nsocket = \"/run/drd/drd.sock\"\n[[stream]]\nname = \"ehr-prod\"\n\
                    wal_dir = \"/var/lib/drd/spool\"\nsource = \"spool\"\n";
        let target = "[[stream.target]]\nurl = \"file:///srv/archive\"\nencryption = \"none\"\n";
        let c = Config::parse(&format!("{base}{target}")).unwrap();
        assert_eq!(c.streams[0].peer, None);
        assert_eq!(c.streams[0].peer_label(), "(no peer: targets only)");
        let e = err(base);
        assert!(
            e.contains("key `stream[0].peer`") && e.contains("goes nowhere"),
            "{e}"
        );
        let e = err(&format!("{base}peer_name = \"rochester-dr1\"\n{target}"));
        assert!(
            e.contains("key `stream[0].peer_name`") && e.contains("has none"),
            "{e}"
        );
        let e = err(&format!("{base}mode = \"sync\"\n{target}"));
        assert!(
            e.contains("key `stream[0].mode`") && e.contains("add a peer"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_conninfo_is_refused_without_its_password() {
        let secret = "s3cr3t-Hunter2";
        for ci in [
            format!("host=/tmp password={secret} bogus_key=1"),
            format!("host=/tmp port=notaport password={secret}"),
            format!("host=/tmp password='{secret}"),
            format!("host /tmp password={secret}"),
        ] {
            let e = err(&pg_stream(
                "/w",
                &format!("postgres = \"{ci}\"\nslot = \"drd_rochester\""),
            ));
            assert!(e.contains("key `stream[0].postgres`"), "{ci:?}: {e}");
            assert!(
                !e.contains(secret),
                "{ci:?}: the error shows the password: {e}"
            );
        }
        // A well-formed one with a password parses, and does not show it.
        let c = Config::parse(&pg_stream(
            "/w",
            &format!("postgres = \"host=/tmp password={secret}\"\nslot = \"drd_rochester\""),
        ))
        .unwrap();
        let pg = c.streams[0].postgres.as_ref().unwrap();
        assert!(pg.conninfo.has_password());
        assert!(!format!("{pg:?}").contains(secret), "{pg:?}");
    }

    #[test]
    fn sync_mode_needs_a_drd_owned_source() {
        let c = Config::parse(&pg_stream("/w", &format!("{PG_KEYS}\nmode = \"sync\""))).unwrap();
        assert_eq!(c.streams[0].mode, SyncMode::Sync);
        let g = format!("initial_role = \"primary\"\n{GOOD}");
        let c = Config::parse(&format!("{g}source = \"spool\"\nmode = \"sync\"\n")).unwrap();
        assert_eq!(c.streams[0].mode, SyncMode::Sync);
        for tail in ["", "source = \"tail\"\n"] {
            let e = err(&format!("{g}{tail}mode = \"sync\"\n"));
            assert!(
                e.contains("key `stream[0].mode`") && e.contains("source = \"postgres\""),
                "{e}"
            );
        }
    }

    #[test]
    fn postgres_streams_take_spool_keys_but_not_sync_timeout() {
        let e = err(&pg_stream(
            "/w",
            &format!("{PG_KEYS}\nsync_timeout_seconds = 5"),
        ));
        assert!(
            e.contains("key `stream[0].sync_timeout_seconds`")
                && e.contains("synchronous_standby_names"),
            "{e}"
        );
        let c = Config::parse(&pg_stream(
            "/w",
            &format!("{PG_KEYS}\nspool_retention = \"2h\"\nspool_max_bytes = \"8GiB\""),
        ))
        .unwrap();
        assert_eq!(c.streams[0].spool_retention, Duration::from_secs(7200));
        assert_eq!(c.streams[0].spool_max_bytes, 8 << 30);
    }

    #[test]
    fn a_postgres_stream_never_writes_into_pg_wal() {
        let e = err(&pg_stream("/var/lib/postgresql/15/main/pg_wal", PG_KEYS));
        assert!(
            e.contains("key `stream[0].wal_dir`") && e.contains("pg_wal"),
            "{e}"
        );
        // A directory inside a data directory (next to PG_VERSION).
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("PG_VERSION"), "15\n").unwrap();
        let inside = data.path().join("drd-wal");
        let e = err(&pg_stream(inside.to_str().unwrap(), PG_KEYS));
        assert!(e.contains("key `stream[0].wal_dir`"), "{e}");
        // A tail stream reads pg_wal (that is what it is for).
        let g = format!("initial_role = \"primary\"\n{GOOD}");
        assert!(Config::parse(&g.replace("/var/lib/postgresql/wal", "/pg/main/pg_wal")).is_ok());
    }
}
