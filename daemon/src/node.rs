//! What one running daemon shares between its tasks: configuration, catalog,
//! each stream's role and epoch, and the live status of every stream it
//! ships or receives.

use crate::config::Config;
use crate::lag::{LagTracker, RateMeter};
use crate::locks::LockExt;
use crate::storage::catalog::{
    AuditRecord, Catalog, Role, RoleState, SegmentRecord, StreamMeta, Txn,
};
use drd_core::pg::lsn::Lsn;
use drd_proto::{SegmentName, StreamName};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Status of one stream, as `drctl status` shows it.
#[derive(Clone, Debug, Default)]
pub struct StreamView {
    pub name: String,
    /// "shipping" (this node sends) or "receiving".
    pub direction: &'static str,
    pub peer: String,
    pub connected: bool,
    pub written_position: u64,
    pub durable_position: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub network_bytes: u64,
    pub segments: u64,
    pub sealed_segments: u64,
    pub current_segment: String,
    pub reconnects: u64,
    pub last_error: String,
    pub throughput_bytes_per_second: f64,
    pub paused: bool,
    /// The peer's protocol version and drd release from its last handshake
    /// (0 / "" before one, or from a build that did not send them).
    pub peer_protocol_version: u32,
    pub peer_software_version: String,
    /// A spool stream's usage at the primary (None for `tail` streams and
    /// on the receiving side).
    pub spool: Option<SpoolUsage>,
    /// The stream's role and epoch at this node, and why it is fenced.
    pub role: Option<Role>,
    pub epoch: u64,
    pub fenced_reason: String,
    /// The mode in effect here and the operator's override, if any (a
    /// stream this node ships).
    pub mode: String,
    pub mode_override: Option<drd_core::roles::ModeOverride>,
    /// A `source = "postgres"` stream at its primary: the database side.
    pub postgres: Option<PgState>,
}

/// What `drctl status` and the metrics show of a postgres stream's
/// database side.
#[derive(Clone, Debug, Default)]
pub struct PgState {
    pub connected: bool,
    pub system_id: String,
    /// The timeline being streamed.
    pub timeline: u32,
    /// PostgreSQL's end of WAL (its flush position) in its latest message.
    pub server_end: Lsn,
    /// When that message came (Unix ms).
    pub server_end_at_ms: u64,
    /// Written into `wal_dir`, and fdatasync'd there.
    pub written: Lsn,
    pub local_durable: Lsn,
    /// What drd last reported to PostgreSQL.
    pub reported_write: Lsn,
    pub reported_flush: Lsn,
    /// The DR replica's durable point (timeline, LSN).
    pub dr_durable: Option<(u32, Lsn)>,
    /// The mode in effect.
    pub mode: String,
    pub slot: String,
    /// From the monitoring connection: WAL the slot holds back in the
    /// database's pg_wal, and the slot's `wal_status` ("" before a poll).
    pub slot_retained_bytes: u64,
    pub slot_wal_status: String,
    /// The slot was invalidated, or the WAL drd needs is gone.
    pub slot_lost: bool,
    pub last_error: String,
}

/// Live state of a stream this node ships, written by its shipper task.
#[derive(Debug, Default)]
pub struct ShipState {
    pub connected: bool,
    pub durable: u64,
    pub lag: LagTracker,
    pub rate: RateMeter,
    pub network_bytes: u64,
    pub sealed_segments: u64,
    pub current_segment: String,
    /// Stream position of `current_segment`'s first byte.
    pub current_start: u64,
    pub reconnects: u64,
    pub sessions: u64,
    pub last_error: String,
    /// A sealed segment's record is being committed to this node's own
    /// catalog in the background (switchover's drain waits for it).
    pub recording_seal: bool,
    /// The replica's protocol version and drd release, from its Welcome.
    pub peer_protocol_version: u32,
    pub peer_software_version: String,
}

/// A stream this node ships, with its live state.
#[derive(Debug)]
pub struct Shipper {
    pub stream: StreamName,
    pub peer: String,
    pub state: Mutex<ShipState>,
    /// What the replica confirmed, for `drctl wal-push` in sync mode.
    pub push: PushState,
    /// This stream's `max_bandwidth` (changed live on SIGHUP).
    pub bandwidth: crate::throttle::Throttle,
    /// The durable position, published on every ack (`WatchDurable`).
    pub durable: tokio::sync::watch::Sender<u64>,
    /// The same durable point as (segment, bytes of it durable), from the
    /// same acks: a `source = "postgres"` stream maps it to an LSN.
    pub durable_at: tokio::sync::watch::Sender<Option<(String, u64)>>,
    /// A `source = "postgres"` stream's database side, for status.
    pub pg: Mutex<PgState>,
    /// A `source = "spool"` stream: `spool` is kept up to date.
    pub is_spool: bool,
    /// The configured `mode` (`drctl mode` may override it).
    pub mode: crate::config::SyncMode,
    /// A `source = "postgres"` stream: `pg` is kept up to date.
    pub is_postgres: bool,
    /// What the spool holds (pruning passes and `wal-push` update it).
    pub spool: Mutex<SpoolUsage>,
    /// Told by this node's own WAL writer (`source = "postgres"`) of each
    /// write, so that the shipper reads the new bytes at once rather than
    /// when the directory watch's event comes round.
    pub wrote: WriteHook,
}

/// A segment of the stream's `wal_dir` was written to: what the shipper
/// registered to hear of it (its index marks the size stale and it wakes).
pub type OnWrite = Arc<dyn Fn(&SegmentName) + Send + Sync>;

/// Lets a writer in this process wake the stream's shipper directly. The
/// directory watch still sees every change (and alone reports new files,
/// whose order the shipper's index relies on); this only saves the
/// watch's hop — its thread's wake-up, then the shipper's — on the commit
/// path of a `sync` stream.
#[derive(Default)]
pub struct WriteHook(Mutex<Option<OnWrite>>);

impl std::fmt::Debug for WriteHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteHook")
    }
}

impl WriteHook {
    /// Registers the shipper's handler (replacing an earlier one).
    pub fn set(&self, on_write: OnWrite) {
        *self.0.locked() = Some(on_write);
    }

    /// The shipper stopped watching the directory.
    pub fn clear(&self) {
        *self.0.locked() = None;
    }

    /// `segment` was written to (its new bytes are in the file).
    pub fn wrote(&self, segment: &SegmentName) {
        let on_write = self.0.locked().clone();
        if let Some(f) = on_write {
            f(segment);
        }
    }
}

impl Shipper {
    /// The spool's usage. A task that panicked while holding the lock left
    /// plain counters behind, at worst a pass old: keep using them.
    pub fn spool_usage(&self) -> std::sync::MutexGuard<'_, SpoolUsage> {
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an ack (or a Welcome): the replica is durable at `position`.
    pub fn set_durable(&self, position: u64, now: Instant) {
        let mut st = self.state.locked();
        st.durable = position;
        st.rate.record(position, now);
        drop(st);
        self.durable.send_replace(position);
    }

    /// A `source = "postgres"` stream's database end of WAL as last heard
    /// (zero for other streams), for the chunks and keepalives.
    pub fn source_lsn(&self) -> drd_proto::SourceLsn {
        let pg = self.pg.locked();
        drd_proto::SourceLsn {
            timeline: pg.timeline,
            lsn: pg.server_end.0,
        }
    }

    pub fn view(&self, now: Instant) -> StreamView {
        let mut s = self.state.locked();
        let written = s.lag.written();
        let durable = s.durable;
        let lag_seconds = s.lag.lag(durable, now).as_secs_f64();
        StreamView {
            name: self.stream.to_string(),
            direction: "shipping",
            peer: self.peer.clone(),
            connected: s.connected,
            written_position: written,
            durable_position: durable,
            lag_bytes: written.saturating_sub(durable),
            lag_seconds,
            network_bytes: s.network_bytes,
            segments: s.sealed_segments + u64::from(!s.current_segment.is_empty()),
            sealed_segments: s.sealed_segments,
            current_segment: s.current_segment.clone(),
            reconnects: s.reconnects,
            last_error: s.last_error.clone(),
            throughput_bytes_per_second: s.rate.rate(now),
            paused: false,
            peer_protocol_version: s.peer_protocol_version,
            peer_software_version: s.peer_software_version.clone(),
            spool: self.is_spool.then(|| self.spool_usage().clone()),
            mode: self.mode.as_str().into(),
            postgres: self.is_postgres.then(|| self.pg.locked().clone()),
            ..Default::default()
        }
    }
}

/// Live state of a stream this node receives, written by its session tasks.
#[derive(Debug)]
pub struct ReceiveState {
    pub connected: bool,
    pub peer: String,
    pub durable: u64,
    pub tail: Option<SegmentRecord>,
    pub meta: StreamMeta,
    /// Last time the durable position had reached the primary's position.
    pub caught_up_at: Instant,
    pub rate: RateMeter,
    pub sessions: u64,
    pub last_error: String,
    /// The primary's protocol version and drd release, from its Hello.
    pub peer_protocol_version: u32,
    pub peer_software_version: String,
}

/// A stream this node receives.
#[derive(Debug)]
pub struct ReceiveSlot {
    pub stream: StreamName,
    pub state: Mutex<ReceiveState>,
    /// Held by the session that currently receives the stream; a new session
    /// takes it over (ending the old one) before it reads the catalog.
    pub session: tokio::sync::Mutex<Option<SessionHandle>>,
}

impl ReceiveSlot {
    pub fn new(stream: StreamName, tail: Option<SegmentRecord>, meta: StreamMeta) -> Self {
        let durable = tail.as_ref().map_or(0, SegmentRecord::end);
        Self {
            stream,
            state: Mutex::new(ReceiveState {
                connected: false,
                peer: meta.last_primary.clone().unwrap_or_default(),
                durable,
                tail,
                meta,
                caught_up_at: Instant::now(),
                rate: RateMeter::default(),
                sessions: 0,
                last_error: String::new(),
                peer_protocol_version: 0,
                peer_software_version: String::new(),
            }),
            session: tokio::sync::Mutex::new(None),
        }
    }

    pub fn view(&self, now: Instant) -> StreamView {
        let s = self.state.locked();
        let written = s.meta.source_position.max(s.durable);
        let lag_bytes = written - s.durable;
        StreamView {
            name: self.stream.to_string(),
            direction: "receiving",
            peer: s.peer.clone(),
            connected: s.connected,
            written_position: written,
            durable_position: s.durable,
            lag_bytes,
            // The replica cannot know when bytes it has not seen were
            // written; it reports the time since it was last caught up,
            // which never understates the lag. The primary's figure is exact.
            lag_seconds: if lag_bytes == 0 {
                0.0
            } else {
                now.duration_since(s.caught_up_at).as_secs_f64()
            },
            network_bytes: s.meta.network_bytes,
            segments: s.meta.segments,
            sealed_segments: s.meta.sealed_segments,
            current_segment: s.tail.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
            reconnects: s.sessions.saturating_sub(1),
            last_error: s.last_error.clone(),
            throughput_bytes_per_second: s.rate.rate(now),
            paused: false,
            peer_protocol_version: s.peer_protocol_version,
            peer_software_version: s.peer_software_version.clone(),
            spool: None,
            ..Default::default()
        }
    }
}

/// One stream's role and epoch at this node, and the gate of its role
/// changes. Roles belong to a stream: failing one over leaves the others'
/// untouched.
pub struct StreamRole {
    pub stream: StreamName,
    /// Role and epoch; tasks subscribe to follow this stream's changes.
    state: watch::Sender<RoleState>,
    /// Held (write) by a role transition of this stream; a new replication
    /// session of it holds it (read) while it checks the role and takes
    /// over the stream, so no session can start half-way through a
    /// promotion. Other streams' sessions never wait for it.
    pub transition: tokio::sync::RwLock<()>,
}

impl StreamRole {
    fn new(stream: StreamName, state: RoleState) -> Self {
        Self {
            stream,
            state: watch::Sender::new(state),
            transition: tokio::sync::RwLock::new(()),
        }
    }

    pub fn state(&self) -> RoleState {
        self.state.borrow().clone()
    }

    /// Follows this stream's role and epoch changes.
    pub fn subscribe(&self) -> watch::Receiver<RoleState> {
        self.state.subscribe()
    }
}

/// Every stream's role entry at this node, by name: the configured streams
/// and every stream the catalog holds from the start, a stream first seen
/// over the network from its first Hello. Shared (an `Arc`) by the node and
/// the drivers that follow or gate on roles, so they need not hold the node.
pub struct Roles {
    map: Mutex<BTreeMap<StreamName, Arc<StreamRole>>>,
    /// Where a new stream's first role is recorded.
    catalog: Arc<Catalog>,
    /// The role each configured stream starts in (see [`default_role`]);
    /// an unlisted stream starts as a replica.
    initial: BTreeMap<StreamName, Role>,
}

impl Roles {
    /// `stream`'s role entry, created on first sight: a stream first seen
    /// over the network is received here (a replica at epoch 1 until its
    /// primary's Hello raises it), recorded before it is used.
    pub fn stream_role(&self, stream: &StreamName) -> anyhow::Result<Arc<StreamRole>> {
        let mut map = self.map.locked();
        if let Some(r) = map.get(stream) {
            return Ok(r.clone());
        }
        let state = match self.catalog.role(stream)? {
            Some(s) => s,
            None => {
                let role = self.initial.get(stream).copied().unwrap_or(Role::Replica);
                let s = RoleState::new(role, 1);
                let mut txn = Txn::default();
                txn.role(stream, &s);
                self.catalog.commit_txn(txn)?;
                s
            }
        };
        let r = Arc::new(StreamRole::new(stream.clone(), state));
        map.insert(stream.clone(), r.clone());
        Ok(r)
    }

    /// `stream`'s role and epoch here, if this node knows the stream.
    pub fn role_of(&self, stream: &StreamName) -> Option<RoleState> {
        self.map.locked().get(stream).map(|r| r.state())
    }

    /// Every stream's role and epoch here, by name.
    pub fn roles(&self) -> Vec<(StreamName, RoleState)> {
        self.map
            .locked()
            .iter()
            .map(|(k, r)| (k.clone(), r.state()))
            .collect()
    }

    /// Every stream with a role entry or data in the catalog, by name.
    pub fn stream_names(&self) -> Vec<StreamName> {
        let mut names: Vec<StreamName> = self.map.locked().keys().cloned().collect();
        if let Ok(more) = self.catalog.streams() {
            names.extend(more);
        }
        names.sort();
        names.dedup();
        names
    }

    /// How many streams this node is a replica of.
    fn receiving(&self) -> usize {
        self.map
            .locked()
            .values()
            .filter(|r| r.state().role == Role::Replica)
            .count()
    }
}

/// The daemon's shared state.
pub struct Node {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    /// Each stream's role and epoch, by name.
    pub roles: Arc<Roles>,
    pub started: Instant,
    /// This node's certificate, key and CA (None with insecure_plaintext).
    pub tls: Option<crate::tls::TlsMaterial>,
    pub shippers: Vec<Arc<Shipper>>,
    receivers: Mutex<BTreeMap<StreamName, Arc<ReceiveSlot>>>,
    /// The node-wide `max_bandwidth`, shared by all shipped streams (and
    /// held by each of their shippers).
    pub bandwidth: Arc<crate::throttle::Throttle>,
    /// Long operations running now, for `drctl`'s progress bars.
    pub operations: crate::progress::Operations,
    /// The received streams' lag over the last 24 h, for drill reports.
    pub lag_history: crate::laghistory::LagHistory,
    /// Streams with a drill running now (one at a time per stream).
    pub drills: Mutex<BTreeSet<StreamName>>,
    /// Every stream's object-store targets, their live state.
    pub targets: Vec<Arc<crate::target_state::TargetState>>,
}

impl Node {
    /// Opens the node's durable state. Each stream's role and epoch come
    /// from the catalog; a configured stream seen for the first time starts
    /// in the node's `initial_role` at epoch 1 (recorded at once). A
    /// catalog from before roles per stream gives its one role to every
    /// stream it held.
    pub fn open(
        config: Config,
        catalog: Arc<Catalog>,
        tls: Option<crate::tls::TlsMaterial>,
    ) -> anyhow::Result<Self> {
        let mut known: Vec<StreamName> = config.streams.iter().map(|s| s.name.clone()).collect();
        known.extend(catalog.streams()?);
        // A stream whose role was recorded at its first Hello, before any
        // of its data was.
        known.extend(catalog.roles()?.into_iter().map(|(s, _)| s));
        known.sort();
        known.dedup();
        let migrated = catalog.migrate_roles(&known)?;
        if migrated > 0 {
            tracing::warn!(
                streams = migrated,
                "roles are per stream now: each stream of this node took the node's role and epoch"
            );
        }
        let mut roles = BTreeMap::new();
        let mut first = Txn::default();
        let mut new_roles = 0;
        for stream in known {
            let state = match catalog.role(&stream)? {
                Some(s) => s,
                None => {
                    let s = RoleState::new(default_role(&config, &stream), 1);
                    first.role(&stream, &s);
                    new_roles += 1;
                    s
                }
            };
            roles.insert(stream.clone(), Arc::new(StreamRole::new(stream, state)));
        }
        if new_roles > 0 {
            catalog.commit_txn(first)?;
        }
        if config
            .replica
            .as_ref()
            .is_some_and(|r| !r.accept_unlisted_streams)
        {
            for (stream, state) in roles.iter().map(|(k, v)| (k, v.state())) {
                let listed = config.streams.iter().any(|c| &c.name == stream);
                if !listed && state.role == Role::Replica {
                    tracing::warn!(
                        %stream,
                        "this node holds the stream but no [[stream]] of its config names it: its \
                         primary will be refused (add a [[stream]] with its name and the primary's \
                         peer_name, or set [replica] accept_unlisted_streams = true)"
                    );
                }
            }
        }
        let shippers = config
            .streams
            .iter()
            .map(|s| {
                Arc::new(Shipper {
                    stream: s.name.clone(),
                    peer: s.peer_label().to_string(),
                    state: Mutex::new(ShipState::default()),
                    push: Default::default(),
                    bandwidth: crate::throttle::Throttle::new(s.max_bandwidth),
                    durable: tokio::sync::watch::Sender::new(0),
                    durable_at: tokio::sync::watch::Sender::new(None),
                    pg: Mutex::default(),
                    is_spool: s.source.drd_owned(),
                    mode: s.mode,
                    is_postgres: s.source == crate::config::SourceMode::Postgres,
                    wrote: WriteHook::default(),
                    spool: Mutex::new(SpoolUsage {
                        limit_bytes: s.spool_max_bytes,
                        retention_seconds: s.spool_retention.as_secs_f64(),
                        ..Default::default()
                    }),
                })
            })
            .collect();
        let mut receivers = BTreeMap::new();
        if config.replica.is_some() {
            for stream in catalog.streams()? {
                let tail = catalog.tail(&stream)?;
                let meta = catalog.stream_meta(&stream)?;
                receivers.insert(
                    stream.clone(),
                    Arc::new(ReceiveSlot::new(stream, tail, meta)),
                );
            }
        }
        let targets = config
            .streams
            .iter()
            .flat_map(|s| {
                s.targets.iter().map(|t| {
                    Arc::new(crate::target_state::TargetState {
                        stream: s.name.to_string(),
                        url: t.url.clone(),
                        ..Default::default()
                    })
                })
            })
            .collect();
        let bandwidth = Arc::new(crate::throttle::Throttle::new(config.max_bandwidth));
        let initial = config
            .streams
            .iter()
            .map(|s| (s.name.clone(), default_role(&config, &s.name)))
            .collect();
        let roles = Arc::new(Roles {
            map: Mutex::new(roles),
            catalog: catalog.clone(),
            initial,
        });
        Ok(Self {
            config,
            catalog,
            roles,
            started: Instant::now(),
            tls,
            shippers,
            receivers: Mutex::new(receivers),
            bandwidth,
            operations: Default::default(),
            lag_history: Default::default(),
            drills: Default::default(),
            targets,
        })
    }

    /// How this node dials a stream's peer (its TLS material).
    /// The targets of `stream`, in config order.
    pub fn targets_of(&self, stream: &StreamName) -> Vec<Arc<crate::target_state::TargetState>> {
        self.targets
            .iter()
            .filter(|t| t.stream == stream.as_str())
            .cloned()
            .collect()
    }

    pub fn dialer(&self) -> crate::dial::Dialer {
        crate::dial::Dialer::new(self.tls.clone())
    }

    /// `stream`'s role entry, created on first sight (see
    /// [`Roles::stream_role`]).
    pub fn stream_role(&self, stream: &StreamName) -> anyhow::Result<Arc<StreamRole>> {
        self.roles.stream_role(stream)
    }

    /// `stream`'s role and epoch here, if this node knows the stream.
    pub fn role_of(&self, stream: &StreamName) -> Option<RoleState> {
        self.roles.role_of(stream)
    }

    /// Every stream's role and epoch here, by name.
    pub fn roles(&self) -> Vec<(StreamName, RoleState)> {
        self.roles.roles()
    }

    /// What the node as a whole is, for a one-line summary: the role all
    /// its streams share (None when they differ) and the highest epoch.
    pub fn summary_role(&self) -> (Option<Role>, u64) {
        let roles = self.roles();
        let epoch = roles.iter().map(|(_, s)| s.epoch).max().unwrap_or(0);
        let mut it = roles.iter().map(|(_, s)| s.role);
        let first = it.next().unwrap_or(self.config.initial_role);
        (it.all(|r| r == first).then_some(first), epoch)
    }

    /// Holds (or releases) `stream`'s shipping during a switchover; see
    /// [`RoleState::shipping_held`].
    pub fn hold_shipping(&self, stream: &StreamName, on: bool) {
        if let Ok(r) = self.stream_role(stream) {
            r.state.send_modify(|s| s.shipping_held = on);
        }
    }

    /// Commits `stream`'s `next` role together with `txn` (log changes,
    /// audit records) in one synced batch, then publishes it to the
    /// daemon's tasks. Each audit record in `txn` is stamped with the
    /// stream.
    pub fn commit_role(
        &self,
        stream: &StreamName,
        next: RoleState,
        mut txn: Txn,
    ) -> anyhow::Result<Vec<AuditRecord>> {
        let entry = self.stream_role(stream)?;
        txn.role(stream, &next);
        txn.stamp_stream(stream);
        let written = self.catalog.commit_txn(txn)?;
        entry.state.send_replace(next);
        Ok(written)
    }

    /// Raises the epoch of a stream this node receives (never lowers it),
    /// durably first.
    pub fn adopt_epoch(&self, stream: &StreamName, epoch: u64) -> anyhow::Result<()> {
        let s = self.stream_role(stream)?.state();
        if let Some(next) = crate::roles::fence(&s, epoch, "") {
            if next.role == Role::Replica {
                let mut txn = Txn::default();
                txn.audit(AuditRecord {
                    user: "drd".into(),
                    origin: "primary's Hello".into(),
                    ..AuditRecord::role_change("adopt-epoch", &s, &next)
                });
                self.commit_role(stream, next, txn)?;
                tracing::warn!(%stream, epoch, "adopted a higher epoch from the primary");
            }
        }
        Ok(())
    }

    /// Ends the replication session this node receives `stream` on, if
    /// any, and waits until its disk worker has stopped: after this,
    /// nothing more is written to the stream until a new session starts.
    pub async fn end_session(&self, stream: &StreamName) {
        let slot = self.receivers.locked().get(stream).cloned();
        if let Some(slot) = slot {
            let mut session = slot.session.lock().await;
            if let Some(old) = session.take() {
                old.end().await;
            }
        }
    }

    /// All streams this node knows (configured, shipped or received), by
    /// name.
    pub fn stream_names(&self) -> Vec<StreamName> {
        let mut names = self.roles.stream_names();
        names.extend(self.shippers.iter().map(|s| s.stream.clone()));
        names.sort();
        names.dedup();
        names
    }

    /// Who may ship `stream` to this node, by its config.
    pub fn assignment(&self, stream: &StreamName) -> drd_core::handshake::Assignment<'_> {
        use drd_core::handshake::Assignment;
        match self.config.streams.iter().find(|s| &s.name == stream) {
            Some(c) => Assignment::Listed {
                peer_name: c.peer_name.as_deref(),
            },
            None => Assignment::Unlisted {
                accept: self
                    .config
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.accept_unlisted_streams),
            },
        }
    }

    /// The window this replica grants a session (`Welcome.max_window_bytes`):
    /// an equal share of `receive_budget_bytes` among the streams it
    /// receives, at most `window_bytes`, at least
    /// [`crate::config::MIN_GRANTED_WINDOW`].
    pub fn granted_window(&self) -> u64 {
        let t = &self.config.tuning;
        let receiving = self.roles.receiving().max(1) as u64;
        (t.receive_budget_bytes / receiving)
            .min(t.window_bytes)
            .max(crate::config::MIN_GRANTED_WINDOW)
    }

    /// The shipper of `stream` (configured here), if any.
    pub fn shipper(&self, stream: &StreamName) -> Option<&Arc<Shipper>> {
        self.shippers.iter().find(|s| &s.stream == stream)
    }

    /// The slot of a received stream, created on first contact.
    pub fn receive_slot(&self, stream: &StreamName) -> anyhow::Result<Arc<ReceiveSlot>> {
        let mut map = self.receivers.locked();
        if let Some(slot) = map.get(stream) {
            return Ok(slot.clone());
        }
        let slot = Arc::new(ReceiveSlot::new(
            stream.clone(),
            self.catalog.tail(stream)?,
            self.catalog.stream_meta(stream)?,
        ));
        map.insert(stream.clone(), slot.clone());
        Ok(slot)
    }

    /// Status rows, one per stream with its role: the shipping side of a
    /// stream this node is primary (or fenced) of, the receiving side of
    /// one it is a replica of. A stream whose side has no live state here
    /// (a primary without a `[[stream]]` source, a replica that has not
    /// heard from its primary since it started) gets a row from its role
    /// and catalog alone.
    pub fn stream_views(&self) -> Vec<StreamView> {
        let now = Instant::now();
        let mut rows = Vec::new();
        for (stream, state) in self.roles() {
            let mut v = if state.role == Role::Replica {
                let slot = self.receivers.locked().get(&stream).cloned();
                match slot {
                    Some(slot) => slot.view(now),
                    None => self.catalog_view(&stream, "receiving", now),
                }
            } else {
                match self.shipper(&stream) {
                    Some(s) => StreamView {
                        paused: state.paused,
                        mode: s.mode.in_effect(&state).as_str().into(),
                        mode_override: state.mode_override.clone(),
                        ..s.view(now)
                    },
                    None => self.catalog_view(&stream, "shipping", now),
                }
            };
            v.role = Some(state.role);
            v.epoch = state.epoch;
            v.fenced_reason = state.fenced_reason.clone().unwrap_or_default();
            rows.push(v);
        }
        rows
    }

    /// A status row from the catalog alone.
    fn catalog_view(
        &self,
        stream: &StreamName,
        direction: &'static str,
        now: Instant,
    ) -> StreamView {
        match (self.catalog.tail(stream), self.catalog.stream_meta(stream)) {
            (Ok(tail), Ok(meta)) => {
                let mut v = ReceiveSlot::new(stream.clone(), tail, meta).view(now);
                v.direction = direction;
                v.connected = false;
                if direction == "shipping" {
                    v.last_error =
                        "no [[stream]] in this node's config: nothing to ship from".into();
                }
                v
            }
            (Err(e), _) | (_, Err(e)) => StreamView {
                name: stream.to_string(),
                direction,
                last_error: format!("cannot read the catalog: {e}"),
                ..Default::default()
            },
        }
    }
}

/// The role a stream starts in here: its `[[stream]]`'s `initial_role`,
/// else the node's, for a stream its config lists; replica for one that
/// arrives over the network.
fn default_role(config: &Config, stream: &StreamName) -> Role {
    match config.streams.iter().find(|s| &s.name == stream) {
        Some(s) => s.initial_role.unwrap_or(config.initial_role),
        None => Role::Replica,
    }
}

/// What a stream's spool holds, for `drctl status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpoolUsage {
    /// Segment files in `wal_dir` and their bytes, as of the last pass or push.
    pub segments: u64,
    pub bytes: u64,
    /// The stream's `spool_max_bytes`.
    pub limit_bytes: u64,
    /// The stream's `spool_retention`, in seconds.
    pub retention_seconds: f64,
    /// The last `wal-push` of a new segment was refused at the limit, and
    /// nothing has been pushed or pruned since.
    pub full: bool,
    /// Segments and bytes removed since drd started.
    pub pruned_segments: u64,
    pub pruned_bytes: u64,
    /// `wal-push`es refused at the limit since drd started.
    pub refused_pushes: u64,
}

/// What the replica confirmed of a stream, for `wal-push` in sync mode.
#[derive(Debug)]
pub struct PushState {
    /// Name of the newest segment the replica acked as sealed (complete,
    /// durable, verified); "" before the first. The log is ordered by name,
    /// so every segment up to this one is sealed at the replica.
    pub sealed_acked: watch::Sender<String>,
    /// Side files the replica confirmed or refused in this epoch.
    pub side: watch::Sender<SideDelivery>,
    /// Wakes the side-file delivery task when a side file arrives.
    pub wake: Notify,
}

/// Side files known to be at the current replica, and those it refused.
#[derive(Debug, Default)]
pub struct SideDelivery {
    pub confirmed: BTreeSet<String>,
    /// Name → the replica's reason (e.g. a different file of that name).
    pub refused: BTreeMap<String, String>,
}

impl Default for PushState {
    fn default() -> Self {
        Self {
            sealed_acked: watch::Sender::new(String::new()),
            side: watch::Sender::new(SideDelivery::default()),
            wake: Notify::new(),
        }
    }
}

impl PushState {
    /// The replica acked `segment` sealed (or reported it sealed on
    /// connect). Only ever moves forward.
    pub fn note_sealed(&self, segment: &str) {
        self.sealed_acked.send_if_modified(|cur| {
            if segment > cur.as_str() {
                *cur = segment.to_string();
                true
            } else {
                false
            }
        });
    }
}

/// One push at a time per daemon: PostgreSQL's archiver is serial anyway,
/// and `wal-push`'s order and room checks ([`crate::ops::walpush`]) must
/// see the spool as it will be. Spool pruning ([`crate::primary::prune`])
/// holds it too.
pub static PUSH_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Handle on a running session, so a newer one can end it and wait.
#[derive(Debug)]
pub struct SessionHandle {
    cancel: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl SessionHandle {
    /// The handle on a session that `cancel` ends and `done` waits for.
    pub fn new(cancel: CancellationToken, done: tokio::task::JoinHandle<()>) -> Self {
        Self { cancel, done }
    }

    /// Ends the session and waits until its disk worker has stopped.
    pub async fn end(self) {
        self.cancel.cancel();
        let _ = self.done.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18: each stream starts in its own `initial_role` (else the
    /// node's); a stream that arrives unlisted is received; what was
    /// recorded survives a restart with another config.
    #[test]
    fn each_stream_starts_in_its_own_role_and_keeps_what_was_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let conf = |ehr: &str| {
            Config::parse(&format!(
                "insecure_plaintext = true\nnode_id = \"site-a\"\ndata_dir = \"{}\"\n\
                 initial_role = \"primary\"\n[replica]\nlisten = \"127.0.0.1:7600\"\n\
                 [[stream]]\nname = \"ehr\"\nwal_dir = \"/var/lib/ehr\"\npeer = \"http://127.0.0.1:7601\"\n{ehr}\n\
                 [[stream]]\nname = \"lab\"\nwal_dir = \"/var/lib/lab\"\npeer = \"http://127.0.0.1:7602\"\n\
                 initial_role = \"replica\"\n",
                dir.path().display()
            ))
            .unwrap()
        };
        let name = |s: &str| StreamName::new(s).unwrap();
        let catalog = Arc::new(Catalog::open(&dir.path().join("catalog")).unwrap());
        let node = Node::open(conf(""), catalog.clone(), None).unwrap();
        assert_eq!(node.role_of(&name("ehr")).unwrap().role, Role::Primary);
        assert_eq!(node.role_of(&name("lab")).unwrap().role, Role::Replica);
        assert_eq!(node.summary_role(), (None, 1), "mixed roles");
        let arrived = node.stream_role(&name("billing")).unwrap().state();
        assert_eq!((arrived.role, arrived.epoch), (Role::Replica, 1));
        drop(node);
        // Recorded roles win over a changed config.
        let node = Node::open(conf("initial_role = \"replica\""), catalog, None).unwrap();
        assert_eq!(node.role_of(&name("ehr")).unwrap().role, Role::Primary);
        assert!(
            node.role_of(&name("billing")).is_some(),
            "known from its record"
        );
    }
}
