//! What one running daemon shares between its tasks: configuration, catalog,
//! role and epoch, and the live status of every stream it ships or receives.

use crate::catalog::{Catalog, NodeState, Role, SegmentRecord, StreamMeta};
use crate::config::Config;
use crate::lag::{LagTracker, RateMeter};
use drd_proto::StreamName;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    pub reconnects: u64,
    pub sessions: u64,
    pub last_error: String,
}

/// A stream this node ships, with its live state.
#[derive(Debug)]
pub struct Shipper {
    pub stream: StreamName,
    pub peer: String,
    pub state: Mutex<ShipState>,
}

impl Shipper {
    pub fn view(&self, now: Instant) -> StreamView {
        let mut s = self.state.lock().unwrap();
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
            }),
            session: tokio::sync::Mutex::new(None),
        }
    }

    pub fn view(&self, now: Instant) -> StreamView {
        let s = self.state.lock().unwrap();
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
        }
    }
}

/// The daemon's shared state.
pub struct Node {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    state: Mutex<NodeState>,
    pub started: Instant,
    pub shippers: Vec<Arc<Shipper>>,
    receivers: Mutex<BTreeMap<StreamName, Arc<ReceiveSlot>>>,
}

impl Node {
    /// Opens the node's durable state; the first start picks the role from
    /// the configuration (ships streams → primary, else replica), epoch 1.
    pub fn open(config: Config, catalog: Arc<Catalog>) -> anyhow::Result<Self> {
        let state = match catalog.node_state()? {
            Some(s) => s,
            None => {
                let s = NodeState {
                    role: if config.streams.is_empty() {
                        Role::Replica
                    } else {
                        Role::Primary
                    },
                    epoch: 1,
                };
                catalog.set_node_state(s)?;
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
        Ok(Self {
            config,
            catalog,
            state: Mutex::new(state),
            started: Instant::now(),
            shippers,
            receivers: Mutex::new(receivers),
        })
    }

    pub fn state(&self) -> NodeState {
        *self.state.lock().unwrap()
    }

    /// Raises the epoch (never lowers it), durably before returning.
    pub fn adopt_epoch(&self, epoch: u64) -> anyhow::Result<()> {
        let mut s = self.state.lock().unwrap();
        if epoch > s.epoch {
            let next = NodeState { epoch, ..*s };
            self.catalog.set_node_state(next)?;
            *s = next;
            tracing::warn!(epoch, "adopted a higher epoch from the primary");
        }
        Ok(())
    }

    /// The slot of a received stream, created on first contact.
    pub fn receive_slot(&self, stream: &StreamName) -> anyhow::Result<Arc<ReceiveSlot>> {
        let mut map = self.receivers.lock().unwrap();
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

    pub fn stream_views(&self) -> Vec<StreamView> {
        let now = Instant::now();
        let mut out: Vec<StreamView> = self.shippers.iter().map(|s| s.view(now)).collect();
        let slots: Vec<_> = self.receivers.lock().unwrap().values().cloned().collect();
        out.extend(slots.iter().map(|s| s.view(now)));
        out
    }
}
