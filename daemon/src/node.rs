//! What one running daemon shares between its tasks: configuration, catalog,
//! role and epoch, and the live status of every stream it ships or receives.

use crate::catalog::{AuditRecord, Catalog, NodeState, Role, SegmentRecord, StreamMeta, Txn};
use crate::config::Config;
use crate::lag::{LagTracker, RateMeter};
use crate::locks::LockExt;
use drd_proto::StreamName;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

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
    pub spool: Option<crate::primary::prune::SpoolUsage>,
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
    pub push: crate::ops::walpush::PushState,
    /// This stream's `max_bandwidth` (changed live on SIGHUP).
    pub bandwidth: crate::throttle::Throttle,
    /// The durable position, published on every ack (`WatchDurable`).
    pub durable: tokio::sync::watch::Sender<u64>,
    /// A `source = "spool"` stream: `spool` is kept up to date.
    pub is_spool: bool,
    /// What the spool holds (pruning passes and `wal-push` update it).
    pub spool: Mutex<crate::primary::prune::SpoolUsage>,
}

impl Shipper {
    /// The spool's usage. A task that panicked while holding the lock left
    /// plain counters behind, at worst a pass old: keep using them.
    pub fn spool_usage(&self) -> std::sync::MutexGuard<'_, crate::primary::prune::SpoolUsage> {
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
    pub session: tokio::sync::Mutex<Option<crate::replica::server::SessionHandle>>,
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
        }
    }
}

/// The daemon's shared state.
pub struct Node {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    /// Role and epoch; tasks subscribe to follow role changes.
    state: watch::Sender<NodeState>,
    /// Held (write) by a role transition; a new replication session holds it
    /// (read) while it checks the role and takes over its stream, so no
    /// session can start half-way through a promotion.
    pub transition: tokio::sync::RwLock<()>,
    pub started: Instant,
    /// This node's certificate, key and CA (None with insecure_plaintext).
    pub tls: Option<crate::tls::TlsMaterial>,
    pub shippers: Vec<Arc<Shipper>>,
    receivers: Mutex<BTreeMap<StreamName, Arc<ReceiveSlot>>>,
    /// The node-wide `max_bandwidth`, shared by all shipped streams.
    pub bandwidth: crate::throttle::Throttle,
    /// Long operations running now, for `drctl`'s progress bars.
    pub operations: crate::progress::Operations,
}

impl Node {
    /// Opens the node's durable state; the first start picks the role from
    /// the configuration (ships streams → primary, else replica), epoch 1.
    pub fn open(
        config: Config,
        catalog: Arc<Catalog>,
        tls: Option<crate::tls::TlsMaterial>,
    ) -> anyhow::Result<Self> {
        let state = match catalog.node_state()? {
            Some(s) => s,
            None => {
                let s = NodeState::new(config.initial_role, 1);
                catalog.set_node_state(&s)?;
                s
            }
        };
        let shippers = config
            .streams
            .iter()
            .map(|s| {
                Arc::new(Shipper {
                    stream: s.name.clone(),
                    peer: s.peer.clone(),
                    state: Mutex::new(ShipState::default()),
                    push: Default::default(),
                    bandwidth: crate::throttle::Throttle::new(s.max_bandwidth),
                    durable: tokio::sync::watch::Sender::new(0),
                    is_spool: s.source == crate::config::SourceMode::Spool,
                    spool: Mutex::new(crate::primary::prune::SpoolUsage {
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
        let bandwidth = crate::throttle::Throttle::new(config.max_bandwidth);
        Ok(Self {
            config,
            catalog,
            state: watch::Sender::new(state),
            transition: tokio::sync::RwLock::new(()),
            started: Instant::now(),
            tls,
            shippers,
            receivers: Mutex::new(receivers),
            bandwidth,
            operations: Default::default(),
        })
    }

    pub fn state(&self) -> NodeState {
        self.state.borrow().clone()
    }

    /// Holds (or releases) shipping during a switchover; see
    /// [`NodeState::shipping_held`].
    pub fn hold_shipping(&self, on: bool) {
        self.state.send_modify(|s| s.shipping_held = on);
    }

    /// Follows role and epoch changes.
    pub fn subscribe(&self) -> watch::Receiver<NodeState> {
        self.state.subscribe()
    }

    /// Commits `next` together with `txn` (log changes, audit records) in one
    /// synced batch, then publishes it to the daemon's tasks.
    pub fn commit_state(&self, next: NodeState, mut txn: Txn) -> anyhow::Result<Vec<AuditRecord>> {
        txn.node_state(&next);
        let written = self.catalog.commit_txn(txn)?;
        self.state.send_replace(next);
        Ok(written)
    }

    /// Raises the epoch of a replica (never lowers it), durably first.
    pub fn adopt_epoch(&self, epoch: u64) -> anyhow::Result<()> {
        let s = self.state();
        if let Some(next) = crate::roles::fence(&s, epoch, "") {
            if next.role == Role::Replica {
                let mut txn = Txn::default();
                txn.audit(AuditRecord {
                    action: "adopt-epoch".into(),
                    user: "drd".into(),
                    origin: "primary's Hello".into(),
                    epoch_before: s.epoch,
                    epoch_after: next.epoch,
                    role_before: s.role.as_str().into(),
                    role_after: next.role.as_str().into(),
                    ..Default::default()
                });
                self.commit_state(next, txn)?;
                tracing::warn!(epoch, "adopted a higher epoch from the primary");
            }
        }
        Ok(())
    }

    /// Ends every replication session this node receives and waits until
    /// their disk workers have stopped: after this, nothing more is written
    /// until a new session starts.
    pub async fn end_sessions(&self) {
        let slots: Vec<_> = self.receivers.locked().values().cloned().collect();
        for slot in slots {
            let mut session = slot.session.lock().await;
            if let Some(old) = session.take() {
                old.end().await;
            }
        }
    }

    /// All streams this node has a log for (shipped or received), by name.
    pub fn stream_names(&self) -> Vec<StreamName> {
        let mut names: Vec<StreamName> = self.shippers.iter().map(|s| s.stream.clone()).collect();
        if let Ok(more) = self.catalog.streams() {
            names.extend(more);
        }
        names.sort();
        names.dedup();
        names
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

    /// Status rows: the shipping side of each stream while this node is
    /// primary (or fenced), the receiving side while it is a replica.
    pub fn stream_views(&self) -> Vec<StreamView> {
        let now = Instant::now();
        let state = self.state();
        if state.role == Role::Replica {
            let slots: Vec<_> = self.receivers.locked().values().cloned().collect();
            return slots.iter().map(|s| s.view(now)).collect();
        }
        self.shippers
            .iter()
            .map(|s| StreamView {
                paused: state.paused,
                ..s.view(now)
            })
            .collect()
    }
}
