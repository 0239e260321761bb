//! The primary's shipper for one stream: connects to the replica, learns its
//! durable position from the Welcome, and ships from exactly there — sealed
//! segments whole, the active one byte range by byte range — with at most
//! `window_bytes` sent but not yet acked. On any failure it reconnects with
//! exponential backoff and jitter, and resumes at the replica's position.

use crate::clock::unix_ms;
use crate::config::StreamConfig;
use crate::config::Tuning;
use crate::dial::Dialer;
use crate::locks::LockExt;
use crate::node::{Shipper, StreamRole};
use crate::primary::index::SourceIndex;
use crate::primary::source::{DirSource, DirWatch, SourceSegment};
use crate::storage::catalog::{Catalog, SegmentRecord, StreamMeta};
use crate::throttle::Throttle;
use bytes::Bytes;
use drd_core::sender;
use drd_core::storage::Source as _;
use drd_proto::{pb, Chunk, Hello, NodeId, Seal, SegmentName, ShipMsg, StreamName};
use futures::future::BoxFuture;
use rand::Rng;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Messages queued between the reader and the gRPC transport.
const SEND_QUEUE: usize = 4;
/// How often a stream the replica does not assign to this node is tried
/// again (its config may have been fixed; more often would only fill both
/// sites' logs).
const NOT_ASSIGNED_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{0}")]
    Connect(String),
    #[error("the replica refused the stream: {0}")]
    Refused(String),
    /// The replica does not let this node ship this stream (its config
    /// assigns the stream to another node, or this node's id is not its
    /// certificate's): a configuration to fix, not a fault that heals by
    /// itself — retried every [`NOT_ASSIGNED_RETRY`].
    #[error("the replica refuses this stream from this node: {0}; retrying every minute")]
    NotAssigned(String),
    #[error("a newer primary exists (epoch {epoch}): {message}")]
    Stale { epoch: u64, message: String },
    #[error("the replica closed the stream")]
    Closed,
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("no answer from the replica for {0:?}")]
    Timeout(Duration),
    #[error("reading the WAL source {path}: {source}")]
    Source {
        path: String,
        source: std::io::Error,
    },
    #[error("the source and the replica disagree: {0}")]
    Diverged(String),
    #[error(transparent)]
    Catalog(#[from] crate::storage::catalog::CatalogError),
    /// A blocking task (a source read, a hash, a catalog commit) did not
    /// finish: it panicked, or the runtime is shutting down.
    #[error(
        "the {what} task did not finish: {source}; if it panicked, that is a bug in drd: \
         please report it with this log"
    )]
    Task {
        what: &'static str,
        source: tokio::task::JoinError,
    },
}

/// Maps a blocking task's [`tokio::task::JoinError`] to [`ShipError::Task`].
fn task_failed(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> ShipError {
    move |source| ShipError::Task { what, source }
}

fn refused(s: tonic::Status) -> ShipError {
    let epoch = s
        .metadata()
        .get(crate::primary::wire::EPOCH_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    match epoch {
        Some(epoch) if s.code() == tonic::Code::FailedPrecondition => ShipError::Stale {
            epoch,
            message: s.message().to_string(),
        },
        _ if s.code() == tonic::Code::PermissionDenied => {
            ShipError::NotAssigned(s.message().to_string())
        }
        // The code by name (its Display is a generic sentence), then the
        // replica's own words.
        _ => ShipError::Refused(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// Ship only while this node is the stream's primary and it is not paused.
fn may_ship(s: &crate::storage::catalog::RoleState) -> bool {
    s.role == crate::storage::catalog::Role::Primary && !s.paused && !s.shipping_held
}

/// Where shipping stands inside the source.
struct Cursor {
    segment: SegmentName,
    /// Stream position of the segment's first byte.
    start: u64,
    /// Next byte of the segment to send.
    offset: u64,
    /// Running SHA-256 over [0, covered); None when shipping began mid-file.
    hasher: Option<(Sha256, u64)>,
    file: Option<Arc<File>>,
}

impl Cursor {
    fn new(segment: SegmentName, start: u64, offset: u64) -> Self {
        Self {
            segment,
            start,
            offset,
            hasher: (offset == 0).then(|| (Sha256::new(), 0)),
            file: None,
        }
    }
}

/// Delay between reconnect attempts: doubles up to a maximum, with ±50 %
/// jitter so a fleet of primaries does not reconnect in lockstep.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::rng().random_range(0.5..1.5);
        base.mul_f64(jitter)
    }
}

/// Everything one stream's shipper uses, built by the composition root
/// (`Node::ship_context`): the shipper holds this, not the node.
pub struct ShipContext {
    pub cfg: StreamConfig,
    /// The stream's live state, written by the shipper.
    pub status: Arc<Shipper>,
    /// The stream's role and epoch here: shipping follows it.
    pub role: Arc<StreamRole>,
    /// This node's own log of the stream (what it sealed, its counters).
    pub catalog: Arc<Catalog>,
    /// The node's `[tuning]`: windows, chunk size, timeouts, backoff.
    pub tuning: Tuning,
    /// Sent in the Hello: who ships.
    pub node_id: NodeId,
    /// The node-wide `max_bandwidth`, shared with the other streams.
    pub bandwidth: Arc<Throttle>,
    /// Dials the stream's peer (TLS material, timeouts, windows).
    pub dialer: Dialer,
    /// Fences this node's side of the stream when the replica reports a
    /// newer primary.
    pub fence: Arc<dyn Fence>,
}

/// What the shipper asks of the layer above when a replica refuses it for
/// a newer epoch: fence this node's side of the stream. That is an
/// operation (a recorded role change, its audit record, the `fence` hook:
/// `ops::remote::fence_self`), so the shipper calls it through this
/// instead of importing the operations.
pub trait Fence: Send + Sync {
    /// Fences `stream` here for `seen_epoch`, refused by `from` for `reason`.
    fn fence_self<'a>(
        &'a self,
        stream: &'a StreamName,
        seen_epoch: u64,
        reason: &'a str,
        from: &'a str,
    ) -> BoxFuture<'a, ()>;
}

/// Chunks up to this size are read on the shipper's task rather than on
/// the blocking pool: a small chunk is the end of a growing segment, just
/// written and in the page cache (at worst one small disk read).
const INLINE_READ_BYTES: u64 = 64 * 1024;

/// Registers the shipper with the stream's [`crate::node::WriteHook`] for
/// as long as it lives: a write by this node's own WAL writer marks the
/// segment's size stale and wakes the shipper, as the watch's event would.
struct WriteHookGuard(Arc<Shipper>);

impl WriteHookGuard {
    fn set(status: &Arc<Shipper>, index: &Arc<SourceIndex>, wake: &Arc<Notify>) -> Self {
        status.wrote.set(on_write(index.clone(), wake.clone()));
        Self(status.clone())
    }
}

/// What a write to `wal_dir` does to the shipper: the segment's size in
/// the index is stale, and the shipper wakes (as for the watch's event).
fn on_write(index: Arc<SourceIndex>, wake: Arc<Notify>) -> crate::node::OnWrite {
    Arc::new(move |segment: &SegmentName| {
        index.changed(segment);
        wake.notify_one();
    })
}

impl Drop for WriteHookGuard {
    fn drop(&mut self) {
        self.0.wrote.clear();
    }
}

/// Runs the shipper of one stream until `shutdown`.
pub async fn run(ctx: ShipContext, shutdown: CancellationToken) {
    let span = tracing::info_span!("ship", stream = %ctx.cfg.name, peer = %ctx.cfg.peer_label());
    run_stream(ctx, shutdown).instrument(span).await
}

async fn run_stream(ctx: ShipContext, shutdown: CancellationToken) {
    let ShipContext {
        cfg,
        status,
        role,
        catalog,
        tuning,
        node_id,
        bandwidth,
        dialer,
        fence,
    } = ctx;
    let wake = Arc::new(Notify::new());
    let index = Arc::new(SourceIndex::new(&cfg.wal_dir));
    let _watch = match DirWatch::start(&cfg.wal_dir, wake.clone(), index.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the WAL directory; relying on periodic rescans");
            None
        }
    };
    let _hook = WriteHookGuard::set(&status, &index, &wake);
    let mut backoff = Backoff::new(
        Duration::from_millis(tuning.reconnect_min_ms),
        Duration::from_millis(tuning.reconnect_max_ms),
    );
    let rescan_interval = tuning.rescan_interval();
    let mut shipper = StreamShipper {
        catalog,
        tuning,
        node_id,
        bandwidth,
        dialer,
        granted_window: 0,
        role: role.clone(),
        cfg,
        status,
        wake,
        index,
        shutdown: shutdown.clone(),
        meta: StreamMeta::default(),
        progressed: false,
        anchor: None,
        log_end: None,
        recording: None,
        sent: Arc::default(),
    };
    let mut state_rx = role.subscribe();
    'sessions: loop {
        // Idle until this node is a primary of the stream that may ship.
        loop {
            let st = state_rx.borrow_and_update().clone();
            if may_ship(&st) {
                break;
            }
            shipper.status.state.locked().connected = false;
            // Paused: keep the written position (and so the lag) current.
            if st.role == crate::storage::catalog::Role::Primary {
                shipper.refresh_written();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break 'sessions,
                r = state_rx.changed() => if r.is_err() { break 'sessions },
                _ = tokio::time::sleep(rescan_interval) => {}
            }
        }
        // A seal record still being committed from the last session must
        // be in the catalog before init reads it back.
        shipper.settle_or_log().await;
        if let Err(e) = shipper.init() {
            tracing::error!(error = %e, "cannot read this stream's catalog");
        }
        let at_start = state_rx.borrow().clone();
        let mut watch_rx = state_rx.clone();
        let state_changed = async move {
            loop {
                if watch_rx.changed().await.is_err() {
                    return;
                }
                let now = watch_rx.borrow().clone();
                if now.epoch != at_start.epoch || !may_ship(&now) {
                    return;
                }
            }
        };
        shipper.progressed = false;
        let result = tokio::select! {
            _ = shutdown.cancelled() => break 'sessions,
            _ = state_changed => {
                tracing::warn!("role or epoch changed; replication session ended");
                Ok(())
            }
            r = shipper.session_any() => r,
        };
        {
            let mut st = shipper.status.state.locked();
            st.connected = false;
            if let Err(e) = &result {
                st.last_error = e.to_string();
            }
        }
        match &result {
            Ok(()) => continue,
            // Not "reconnecting": the daemon is on its way out.
            Err(ShipError::ShuttingDown) => break,
            Err(ShipError::Stale { epoch, message }) => {
                // Fencing rewrites this stream's record: our own last seal
                // record must land first, not after it.
                shipper.settle_or_log().await;
                fence
                    .fence_self(&shipper.cfg.name, *epoch, message, shipper.cfg.peer_label())
                    .await;
                continue;
            }
            Err(e @ ShipError::NotAssigned(_)) => {
                tracing::error!(error = %e, "replication refused")
            }
            Err(e) => tracing::warn!(error = %e, "replication session ended; reconnecting"),
        }
        if shipper.progressed {
            backoff.reset();
        }
        let mut delay = backoff.next_delay();
        if matches!(result, Err(ShipError::NotAssigned(_))) {
            delay = delay.max(NOT_ASSIGNED_RETRY);
        }
        // While disconnected, keep watching the source so that the written
        // position — and so the lag an operator sees — stays current.
        let until = Instant::now() + delay;
        loop {
            shipper.refresh_written();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break 'sessions,
                _ = state_rx.changed() => break,
                _ = tokio::time::sleep(left.min(rescan_interval)) => {}
            }
        }
    }
    // The last seal's own record, if still being committed, is kept.
    shipper.settle_or_log().await;
    tracing::info!("shipper stopped");
}

struct StreamShipper {
    /// This node's catalog: the stream's own log and counters.
    catalog: Arc<Catalog>,
    tuning: Tuning,
    node_id: NodeId,
    /// The node-wide `max_bandwidth` (the stream's own is in `status`).
    bandwidth: Arc<Throttle>,
    dialer: Dialer,
    /// The window the replica granted in this session's Welcome (0: none;
    /// see [`sender::Limits::new`]).
    granted_window: u64,
    /// The stream's role and epoch here.
    role: Arc<StreamRole>,
    cfg: StreamConfig,
    status: Arc<Shipper>,
    wake: Arc<Notify>,
    /// The WAL directory from the cursor on, kept by the watch and rescans:
    /// what the ship loop asks instead of listing the directory.
    index: Arc<SourceIndex>,
    shutdown: CancellationToken,
    /// This stream's counters in the primary's own catalog.
    meta: StreamMeta,
    /// Set once a session shipped something, to reset the backoff.
    progressed: bool,
    /// Latest known (segment, start position) pair, to compute the written
    /// position from a directory listing.
    anchor: Option<(SegmentName, u64)>,
    /// The end of this node's own log (last sealed segment, e.g. a fork):
    /// the written position before any cursor is known.
    log_end: Option<(String, u64)>,
    /// The catalog commit of the last sealed segment's record, running on
    /// a blocking thread while shipping goes on (see `record_sealed`).
    recording: Option<tokio::task::JoinHandle<Result<(), crate::storage::catalog::CatalogError>>>,
    /// What the current session has sent, to check the replica's acks.
    sent: Arc<Sent>,
}

/// The session's sender rules (drd-core): what was sent, what the replica
/// acked, which acks to believe. Shared by the ship loop and the ack reader.
type Sent = Mutex<sender::Session>;

/// The end of the replica's log as its Welcome reports it (None: it holds
/// nothing), checked: a name the replica made up is a divergence.
fn replica_end(w: &pb::Welcome) -> Result<Option<sender::ReplicaEnd>, ShipError> {
    if w.last_segment.is_empty() {
        return Ok(None);
    }
    let segment = SegmentName::new(w.last_segment.clone())
        .map_err(|e| ShipError::Diverged(format!("replica reported {e}")))?;
    Ok(Some(sender::ReplicaEnd {
        segment,
        start: w.last_segment_start,
        size: w.last_segment_size,
        sealed: w.last_segment_sealed,
    }))
}

impl StreamShipper {
    /// Loads the stream's record and reports the written position before any
    /// replica is reachable.
    fn init(&mut self) -> Result<(), ShipError> {
        self.meta = self.catalog.stream_meta(&self.cfg.name)?;
        self.anchor = None;
        self.log_end = self
            .catalog
            .tail(&self.cfg.name)?
            .filter(|t| t.sealed)
            .map(|t| (t.name.clone(), t.end()));
        let listing = self.scan()?;
        // The log may have been cut back since the last session (a rejoin
        // quarantined everything past the fork): start the tracker over.
        let written = self.written_of(&listing);
        let mut st = self.status.state.locked();
        st.lag.rebase(written, Instant::now());
        st.network_bytes = self.meta.network_bytes;
        st.sealed_segments = self.meta.sealed_segments;
        Ok(())
    }

    fn scan(&self) -> Result<Vec<SourceSegment>, ShipError> {
        self.list(None)
    }

    /// The segments from `from` on: all the ship loop needs once it has a
    /// cursor (the written position counts from the cursor's segment).
    fn scan_from(&self, from: &SegmentName) -> Result<Vec<SourceSegment>, ShipError> {
        self.list(Some(from))
    }

    /// The WAL directory's listing, through drd-core's source trait.
    fn list(&self, from: Option<&SegmentName>) -> Result<Vec<SourceSegment>, ShipError> {
        DirSource::new(&self.cfg.wal_dir)
            .list(from)
            .map_err(|e| ShipError::Source {
                path: e.path.display().to_string(),
                source: e.source,
            })
    }

    fn idle(&self) -> Duration {
        self.tuning.idle_timeout()
    }

    /// One session: with the DR site's drd when the stream has a peer,
    /// else the local one.
    async fn session_any(&mut self) -> Result<(), ShipError> {
        if self.cfg.peer.is_some() {
            self.session().await
        } else {
            self.local_session().await
        }
    }

    /// A stream with no peer (only `[[stream.target]]`s): the ship loop
    /// runs as it does for a replica — the same cursor, seal checks, hash
    /// chain and catalog records, which are what the targets upload from —
    /// but what it "sends" goes to [`local_acks`], which acks each chunk
    /// once read and each seal at once. The bytes are already on this
    /// node's disk (wal-push fsyncs the spool, the PostgreSQL source its
    /// copy; a `tail` source is the database's own files), so nothing more
    /// is made durable here; the seal's record is committed by the loop as
    /// with a replica. The DR copy is the targets': retention waits for
    /// them (`Keep::NotInTarget`).
    async fn local_session(&mut self) -> Result<(), ShipError> {
        let epoch = self.role.state().epoch;
        let welcome = self.local_welcome(epoch)?;
        tracing::info!(
            durable_position = welcome.durable_position,
            last_segment = %welcome.last_segment,
            "no peer: sealing the stream's log here for its targets"
        );
        self.begin(&welcome)?;
        let (tx, rx) = mpsc::channel::<pb::ShipMessage>(SEND_QUEUE);
        let (ack_tx, ack_rx) = watch::channel(welcome.durable_position);
        let acks = local_acks(rx, self.sent.clone(), self.status.clone(), ack_tx);
        tokio::select! {
            r = acks => r,
            r = self.ship(&tx, ack_rx, &welcome, epoch) => r,
        }
    }

    /// A session starts (with a replica, or local): the status counts it
    /// and takes the resume point from `welcome`, and the sender's rules
    /// start over from it.
    fn begin(&self, welcome: &pb::Welcome) -> Result<(), ShipError> {
        {
            let mut st = self.status.state.locked();
            st.connected = true;
            st.sessions += 1;
            st.reconnects = st.sessions - 1;
            st.last_error.clear();
            st.durable = welcome.durable_position;
        }
        self.status.durable.send_replace(welcome.durable_position);
        if !welcome.last_segment.is_empty() {
            self.status.durable_at.send_replace(Some((
                welcome.last_segment.clone(),
                welcome.last_segment_size,
            )));
        }
        if welcome.last_segment_sealed {
            self.status.push.note_sealed(&welcome.last_segment);
        }
        *self.sent.locked() =
            sender::Session::new(welcome.durable_position, replica_end(welcome)?.as_ref());
        Ok(())
    }

    /// What a replica holding exactly this node's own log would say: the
    /// session resumes after the last sealed segment in the catalog.
    fn local_welcome(&self, epoch: u64) -> Result<pb::Welcome, ShipError> {
        let mut w = pb::Welcome {
            epoch,
            chain: crate::chain::GENESIS.to_vec(),
            protocol_version: drd_proto::PROTOCOL_VERSION,
            software_version: crate::version::VERSION_LINE.to_string(),
            ..Default::default()
        };
        let Some(tail) = self.catalog.tail(&self.cfg.name)? else {
            return Ok(w);
        };
        if !tail.sealed {
            return Err(ShipError::Diverged(format!(
                "this node's log of the stream ends in {}, which it holds only in part (it                  received it as a replica); a stream with no peer goes on only from a sealed                  segment. Run `drctl verify --stream {}` and see deploy/ on rejoining",
                tail.name, self.cfg.name
            )));
        }
        let chain = tail
            .chain
            .as_deref()
            .and_then(crate::chain::from_hex)
            .ok_or_else(|| {
                ShipError::Diverged(format!(
                    "the catalog's record of {} has no hash chain value",
                    tail.name
                ))
            })?;
        w.durable_position = tail.end();
        w.last_segment = tail.name.clone();
        w.last_segment_size = tail.size;
        w.last_segment_start = tail.start;
        w.last_segment_sealed = true;
        w.chain = chain.to_vec();
        Ok(w)
    }

    /// One connection: handshake, then ship until something fails.
    async fn session(&mut self) -> Result<(), ShipError> {
        let mut client = self
            .dialer
            .connect(&self.cfg)
            .await
            .map_err(ShipError::Connect)?;

        let epoch = self.role.state().epoch;
        let (tx, rx) = mpsc::channel::<pb::ShipMessage>(SEND_QUEUE);
        let hello = ShipMsg::Hello(Hello {
            stream: self.cfg.name.clone(),
            node_id: self.node_id.clone(),
            epoch,
            protocol_version: drd_proto::PROTOCOL_VERSION,
            software_version: crate::version::VERSION_LINE.to_string(),
        });
        tx.send(hello.into()).await.map_err(|_| ShipError::Closed)?;
        let idle = self.idle();
        let response = tokio::time::timeout(idle, client.replicate(ReceiverStream::new(rx)))
            .await
            .map_err(|_| ShipError::Timeout(idle))?
            .map_err(refused)?;
        let mut inbound = response.into_inner();
        let welcome = match tokio::time::timeout(idle, inbound.message()).await {
            Err(_) => return Err(ShipError::Timeout(idle)),
            Ok(Err(s)) => return Err(refused(s)),
            Ok(Ok(None)) => return Err(ShipError::Closed),
            Ok(Ok(Some(pb::ReplicaMessage {
                msg: Some(pb::replica_message::Msg::Welcome(w)),
            }))) => w,
            Ok(Ok(Some(_))) => return Err(ShipError::Refused("expected Welcome".into())),
        };
        // Its resume point is the replica's word: check it before any
        // arithmetic on it.
        drd_proto::check_welcome(&welcome).map_err(|e| ShipError::Refused(e.to_string()))?;
        self.granted_window = welcome.max_window_bytes;
        tracing::info!(
            durable_position = welcome.durable_position,
            last_segment = %welcome.last_segment,
            replica_epoch = welcome.epoch,
            "connected; resuming at the replica's durable position"
        );
        let peer_software = drd_proto::sanitize_software_version(&welcome.software_version);
        if let Some(w) = crate::version::protocol_warning(
            self.cfg.name.as_str(),
            drd_proto::PROTOCOL_VERSION,
            crate::version::VERSION_LINE,
            self.cfg.peer_label(),
            welcome.protocol_version,
            &peer_software,
        ) {
            tracing::warn!("{w}");
        }
        {
            let mut st = self.status.state.locked();
            st.peer_protocol_version = welcome.protocol_version;
            st.peer_software_version = peer_software;
        }
        self.begin(&welcome)?;
        let (ack_tx, ack_rx) = watch::channel(welcome.durable_position);
        let status = self.status.clone();
        let sent = self.sent.clone();
        let acks = async move {
            loop {
                let m = match tokio::time::timeout(idle, inbound.message()).await {
                    Err(_) => return Err(ShipError::Timeout(idle)),
                    Ok(Err(s)) => return Err(refused(s)),
                    Ok(Ok(None)) => return Err(ShipError::Closed),
                    Ok(Ok(Some(m))) => m,
                };
                let Some(pb::replica_message::Msg::Ack(a)) = m.msg else {
                    return Err(ShipError::Refused("expected an Ack".into()));
                };
                sent.locked()
                    .on_ack(a.durable_position, a.sealed, &a.segment)
                    .map_err(|e| ShipError::Refused(e.to_string()))?;
                status.set_durable(a.durable_position, Instant::now());
                if !a.segment.is_empty() {
                    status
                        .durable_at
                        .send_replace(Some((a.segment.clone(), a.segment_size)));
                }
                tracing::trace!(durable = a.durable_position, "ack");
                if a.sealed {
                    // Durable and verified at the replica: sync wal-push waits for this.
                    status.push.note_sealed(&a.segment);
                }
                ack_tx.send_replace(a.durable_position);
            }
        };
        tokio::select! {
            r = acks => r,
            r = self.ship(&tx, ack_rx, &welcome, epoch) => r,
        }
    }

    /// The written position from the index, anchored at the segment that
    /// starts at `start`, recorded for lag.
    fn observe_written(&self, start: u64) -> Result<u64, ShipError> {
        let written = self.index.written(start).map_err(|e| self.source_err(e))?;
        self.status
            .state
            .locked()
            .lag
            .observe_written(written, Instant::now());
        Ok(written)
    }

    /// Where to start, given what the replica holds.
    fn resume_cursor(
        &self,
        w: &pb::Welcome,
        listing: &[SourceSegment],
    ) -> Result<Option<Cursor>, ShipError> {
        // The replica's durable position is the truth the session resumes
        // from (drd-core decides; this carries it out against the source).
        let end = replica_end(w)?;
        match sender::resume(end.as_ref()).map_err(|e| ShipError::Diverged(e.to_string()))? {
            sender::Resume::FromFirst => {
                self.check_not_pruned(None)?;
                let Some(first) = self.next_segment(None)?.0 else {
                    return Ok(None);
                };
                // Our own record of where this segment starts, if we have one.
                let start = self
                    .catalog
                    .segment(&self.cfg.name, &first.name)?
                    .map_or(0, |r| r.start);
                Ok(Some(Cursor::new(first.name.clone(), start, 0)))
            }
            sender::Resume::Continue(c) => {
                if !listing.iter().any(|s| s.name == c.segment) {
                    return Err(ShipError::Diverged(format!(
                        "the replica's partial segment {} is not in {}",
                        c.segment,
                        self.cfg.wal_dir.display()
                    )));
                }
                Ok(Some(Cursor::new(c.segment, c.start, c.offset)))
            }
            sender::Resume::After { sealed, next_start } => {
                self.check_not_pruned(Some(&sealed))?;
                Ok(self
                    .next_segment(Some(&sealed))?
                    .0
                    .map(|next| Cursor::new(next.name, next_start, 0)))
            }
        }
    }

    /// Refuses to ship on from `after` (the replica's last sealed segment;
    /// None: it holds nothing) when the segment that follows it in this
    /// node's log was pruned from the spool: the next file in the spool is
    /// not its successor, and shipping it would leave a gap. That happens
    /// only when the replica lost what it had acked, or is another one.
    fn check_not_pruned(&self, after: Option<&SegmentName>) -> Result<(), ShipError> {
        let Some(next) = self.catalog.segment_after(&self.cfg.name, after)? else {
            return Ok(());
        };
        if next.pruned_at_ms.is_none() {
            return Ok(());
        }
        Err(ShipError::Diverged(format!(
            "the replica {} but this node removed {} from its spool after a replica had acked \
             it sealed (spool_retention); shipping the next spooled segment would leave a gap. \
             Was the replica rebuilt or restored from an older copy? Seed it from a copy that \
             holds the whole log (another DR copy, or a new base backup), then resume",
            match after {
                Some(a) => format!("holds the log only up to {a},"),
                None => "holds nothing of this stream,".to_string(),
            },
            next.name
        )))
    }

    /// The first segment named after `after` (the very first when `None`),
    /// and the listing it was found in.
    ///
    /// A directory listing is not a snapshot: a readdir that runs while
    /// files are created may return a newer file and miss older ones (the
    /// chaos soak found it, seed 1029: a primary stopped between two
    /// `getdents` calls of one scan came back, saw a segment three names
    /// on, and shipped it as the next one — two segments were skipped). So
    /// the answer is taken from a second scan: whatever the first scan saw
    /// existed before the second began, and so did every segment created
    /// before it (a WAL writer creates segments in name order), so the
    /// second scan holds the true successor.
    fn next_segment(
        &self,
        after: Option<&SegmentName>,
    ) -> Result<(Option<SourceSegment>, Vec<SourceSegment>), ShipError> {
        successor(after, || match after {
            Some(a) => self.scan_from(a),
            None => self.scan(),
        })
    }

    fn observe(&mut self, listing: &[SourceSegment], cursor: Option<&Cursor>) {
        self.note_cursor(cursor);
        self.observe_listing(listing);
    }

    /// Records where the cursor is, for the status and the written position.
    fn note_cursor(&mut self, cursor: Option<&Cursor>) {
        if let Some(c) = cursor {
            self.anchor = Some((c.segment.clone(), c.start));
            let mut st = self.status.state.locked();
            st.current_segment = c.segment.to_string();
            st.current_start = c.start;
        }
    }

    /// Records the source's written position as of `listing`.
    fn observe_listing(&self, listing: &[SourceSegment]) {
        let written = self.written_of(listing);
        self.status
            .state
            .locked()
            .lag
            .observe_written(written, Instant::now());
    }

    /// The source's written position as of `listing`.
    fn written_of(&self, listing: &[SourceSegment]) -> u64 {
        match (&self.anchor, &self.log_end) {
            (Some((name, start)), _) => written_from(listing, name, *start),
            (None, Some((tail, end))) => {
                end + listing
                    .iter()
                    .filter(|s| s.name.as_str() > tail.as_str())
                    .map(|s| s.size)
                    .sum::<u64>()
            }
            (None, None) => listing.iter().map(|s| s.size).sum(),
        }
    }

    /// Rescans the source and records its written position.
    fn refresh_written(&self) {
        match self.scan() {
            Ok(listing) => self.observe_listing(&listing),
            Err(e) => tracing::warn!(error = %e, "cannot scan the WAL directory"),
        }
    }

    async fn ship(
        &mut self,
        tx: &mpsc::Sender<pb::ShipMessage>,
        mut acked: watch::Receiver<u64>,
        welcome: &pb::Welcome,
        epoch: u64,
    ) -> Result<(), ShipError> {
        let t = self.tuning.clone();
        // Where to resume is found once per session from full listings;
        // from then on the index answers (see primary/index.rs).
        let listing = self.scan()?;
        // The replica's log as far as this session knows (it moves when a
        // spool segment is sealed with no newer one to move on to).
        let mut welcome = welcome.clone();
        let welcome = &mut welcome;
        let mut cursor = self.resume_cursor(welcome, &listing)?;
        self.observe(&listing, cursor.as_ref());
        if let Some(c) = &cursor {
            self.index_from(&c.segment)?;
        }
        // The hash chain continues from the replica's last sealed segment.
        let mut chain: [u8; 32] = welcome
            .chain
            .as_slice()
            .try_into()
            .unwrap_or(crate::chain::GENESIS);
        let mut last_sent = Instant::now();
        loop {
            let Some(cur) = cursor.as_mut() else {
                cursor = self
                    .wait_for_first(tx, &mut last_sent, welcome, epoch)
                    .await?;
                continue;
            };
            let Some(size) = self
                .index
                .size(&cur.segment)
                .map_err(|e| self.source_err(e))?
            else {
                return Err(ShipError::Diverged(format!(
                    "segment {} disappeared from {} before it was shipped",
                    cur.segment,
                    self.cfg.wal_dir.display()
                )));
            };
            let written = self.observe_written(cur.start)?;
            // A newer segment exists, or the source is a spool whose files
            // are complete when they appear: the segment is complete once
            // all of it is sent.
            let spool = self.cfg.source == crate::config::SourceMode::Spool;
            let complete = cur.offset >= size
                && (spool
                    || self
                        .index
                        .has_after(&cur.segment)
                        .map_err(|e| self.source_err(e))?);
            let at = sender::Cursor {
                segment: cur.segment.clone(),
                start: cur.start,
                offset: cur.offset,
            };
            let limits =
                sender::Limits::new(t.chunk_bytes as u64, t.window_bytes, self.granted_window);
            // max_bandwidth: this stream's limit, then the node's.
            let cap = crate::throttle::chunk_cap(&[&self.status.bandwidth, &self.bandwidth]);
            let next = self
                .sent
                .locked()
                .next(&at, sender::SourceView { size, complete }, limits, cap)
                .map_err(|e| ShipError::Diverged(e.to_string()))?;
            match next {
                sender::Next::WaitForAcks { .. } => {
                    // In-flight window: wait for acks before sending more.
                    acked.changed().await.map_err(|_| ShipError::Closed)?;
                    continue;
                }
                sender::Next::Chunk { len: n, end } => {
                    self.status.bandwidth.acquire(n).await;
                    self.bandwidth.acquire(n).await;
                    let t0 = Instant::now();
                    let data = self.read(cur, n).await?;
                    let read_us = t0.elapsed().as_micros() as u64;
                    if let Some((h, covered)) = &mut cur.hasher {
                        h.update(&data);
                        *covered += n;
                    }
                    let chunk = ShipMsg::Chunk(Chunk {
                        epoch,
                        segment: cur.segment.clone(),
                        segment_start: cur.start,
                        offset: cur.offset,
                        data,
                        source_position: written,
                        written_at_ms: unix_ms(),
                        source_lsn: self.status.source_lsn(),
                        data_crc32c: None,
                    });
                    let t0 = Instant::now();
                    // Before the send: its ack can only come after it.
                    self.sent.locked().sent_chunk(end);
                    tx.send(crate::primary::wire::encode(&self.cfg, welcome, chunk))
                        .await
                        .map_err(|_| ShipError::Closed)?;
                    tracing::trace!(
                        end,
                        read_us,
                        send_us = t0.elapsed().as_micros() as u64,
                        "chunk queued"
                    );
                    crate::metrics::chunk_shipped(self.cfg.name.as_str(), n);
                    cur.offset += n;
                    last_sent = Instant::now();
                    self.progressed = true;
                    self.status.state.locked().network_bytes += n;
                    self.meta.network_bytes += n;
                    continue;
                }
                sender::Next::WaitForSource => {
                    // Caught up with the active segment: wait for it to grow.
                    self.wait_for_source(tx, &mut last_sent, epoch, written)
                        .await?;
                    continue;
                }
                sender::Next::Seal { .. } => {}
            }
            // Sealing: re-check its size first — it may have grown since it
            // was last read.
            {
                let path = self.cfg.wal_dir.join(cur.segment.as_str());
                let now_size = std::fs::metadata(&path).map_err(|source| ShipError::Source {
                    path: path.display().to_string(),
                    source,
                })?;
                if now_size.len() != size {
                    self.index.changed(&cur.segment);
                    continue;
                }
                let digest = self.digest(cur).await?;
                chain = crate::chain::link(&chain, &digest, cur.segment.as_str(), size);
                let seal = Seal {
                    epoch,
                    segment: cur.segment.clone(),
                    segment_start: cur.start,
                    size,
                    sha256: digest,
                    source_position: written,
                    chain,
                };
                self.sent.locked().sent_seal(&cur.segment);
                tx.send(ShipMsg::Seal(seal).into())
                    .await
                    .map_err(|_| ShipError::Closed)?;
                self.record_sealed(cur, size, digest, chain, epoch).await?;
                // Not just the next name seen: a listing may have missed
                // segments created while it was read (see primary/index.rs).
                let next = self
                    .index
                    .successor(&cur.segment)
                    .map_err(|e| self.source_err(e))?;
                match next {
                    Some(next) => {
                        let next_start = position_after(&cur.segment, cur.start, size)?;
                        self.index.advance(&next);
                        cursor = Some(Cursor::new(next, next_start, 0));
                        self.note_cursor(cursor.as_ref());
                    }
                    None => {
                        // Spool: wait for the next pushed segment after this one.
                        welcome.last_segment = cur.segment.to_string();
                        welcome.last_segment_start = cur.start;
                        welcome.last_segment_size = size;
                        welcome.last_segment_sealed = true;
                        cursor = None;
                    }
                }
            }
        }
    }

    /// With no cursor (nothing to ship yet, or a spool's last segment is
    /// sealed): waits for the source to change, then looks for where to go
    /// on. After a sealed segment the index answers; before any, full
    /// listings do (once per wait).
    async fn wait_for_first(
        &mut self,
        tx: &mpsc::Sender<pb::ShipMessage>,
        last_sent: &mut Instant,
        welcome: &pb::Welcome,
        epoch: u64,
    ) -> Result<Option<Cursor>, ShipError> {
        let tail = (welcome.last_segment_sealed && !welcome.last_segment.is_empty())
            .then(|| SegmentName::new(welcome.last_segment.clone()).ok())
            .flatten()
            .filter(|t| self.index.floor().as_ref() == Some(t));
        if tail.is_some() {
            self.observe_written(welcome.last_segment_start)?;
        }
        self.wait_for_source(tx, last_sent, epoch, 0).await?;
        if let Some(tail) = tail {
            let Some(next) = self
                .index
                .successor(&tail)
                .map_err(|e| self.source_err(e))?
            else {
                return Ok(None);
            };
            let start =
                position_after(&tail, welcome.last_segment_start, welcome.last_segment_size)?;
            self.index.advance(&next);
            let cursor = Some(Cursor::new(next, start, 0));
            self.note_cursor(cursor.as_ref());
            return Ok(cursor);
        }
        let listing = self.scan()?;
        let cursor = self.resume_cursor(welcome, &listing)?;
        self.observe(&listing, cursor.as_ref());
        if let Some(c) = &cursor {
            self.index_from(&c.segment)?;
        }
        Ok(cursor)
    }

    /// Starts the index over from the cursor's segment: one full listing
    /// now; [`SourceIndex::successor`] lists again if it must.
    fn index_from(&self, segment: &SegmentName) -> Result<(), ShipError> {
        self.index.reset(segment);
        self.index.rescan().map_err(|e| self.source_err(e))
    }

    fn source_err(&self, source: std::io::Error) -> ShipError {
        ShipError::Source {
            path: self.cfg.wal_dir.display().to_string(),
            source,
        }
    }

    /// Waits for the WAL directory to change, sending keepalives meanwhile.
    async fn wait_for_source(
        &self,
        tx: &mpsc::Sender<pb::ShipMessage>,
        last_sent: &mut Instant,
        epoch: u64,
        written: u64,
    ) -> Result<(), ShipError> {
        let t = &self.tuning;
        let keepalive_due =
            (*last_sent + t.keepalive_interval()).saturating_duration_since(Instant::now());
        let wait = keepalive_due.min(t.rescan_interval());
        let t0 = Instant::now();
        tokio::select! {
            _ = self.wake.notified() => {
                tracing::trace!(waited_us = t0.elapsed().as_micros() as u64, "woken by the WAL directory");
            }
            _ = tokio::time::sleep(wait) => {
                tracing::trace!(waited_us = t0.elapsed().as_micros() as u64, "woken by the rescan timer");
                // The safety net: a full listing, in case an event was missed.
                self.index.rescan().map_err(|e| self.source_err(e))?;
            }
            // An error, not Ok: the ship loop must end here, not rescan and
            // come back to a wait that returns at once (a busy loop that
            // never yields, so SIGTERM never finished).
            _ = self.shutdown.cancelled() => return Err(ShipError::ShuttingDown),
        }
        if last_sent.elapsed() >= t.keepalive_interval() {
            let ka = ShipMsg::Keepalive {
                epoch,
                source_position: written,
                source_lsn: self.status.source_lsn(),
            };
            tx.send(ka.into()).await.map_err(|_| ShipError::Closed)?;
            *last_sent = Instant::now();
        }
        Ok(())
    }

    fn open(&self, cur: &mut Cursor) -> Result<Arc<File>, ShipError> {
        if let Some(f) = &cur.file {
            return Ok(f.clone());
        }
        let path = self.cfg.wal_dir.join(cur.segment.as_str());
        let f = Arc::new(File::open(&path).map_err(|source| ShipError::Source {
            path: path.display().to_string(),
            source,
        })?);
        cur.file = Some(f.clone());
        Ok(f)
    }

    async fn read(&self, cur: &mut Cursor, n: u64) -> Result<Bytes, ShipError> {
        let file = self.open(cur)?;
        let offset = cur.offset;
        let path = self.cfg.wal_dir.join(cur.segment.as_str());
        let read = move || {
            let mut buf = vec![0u8; n as usize];
            file.read_exact_at(&mut buf, offset)
                .map(|()| Bytes::from(buf))
        };
        let r = if n <= INLINE_READ_BYTES {
            // A few KiB the source has just written: in the page cache, so
            // read here; the blocking pool's two thread hops cost more than
            // the read, on the commit path of a sync stream.
            read()
        } else {
            tokio::task::spawn_blocking(read)
                .await
                .map_err(task_failed("source read"))?
        };
        r.map_err(|source| ShipError::Source {
            path: path.display().to_string(),
            source,
        })
    }

    async fn digest(&self, cur: &mut Cursor) -> Result<[u8; 32], ShipError> {
        if let Some((h, covered)) = cur.hasher.take() {
            if covered == cur.offset {
                return Ok(h.finalize().into());
            }
        }
        // Shipping began mid-segment: hash the whole file from local disk
        // (a local read, nothing is re-sent).
        let file = self.open(cur)?;
        let path = self.cfg.wal_dir.join(cur.segment.as_str());
        tokio::task::spawn_blocking(move || crate::storage::segments::hash_file(&file))
            .await
            .map_err(task_failed("segment hash"))?
            .map_err(|source| ShipError::Source {
                path: path.display().to_string(),
                source,
            })
    }

    /// Adds a sealed segment to the primary's own log in its catalog.
    ///
    /// The synced commit runs on a blocking thread and shipping goes on
    /// while it runs: it is this node's own record, not what makes anything
    /// durable at the replica, and waiting for it here held up the next
    /// segment's bytes and the processing of acks (a commit that met a
    /// 160 ms journal stall showed up as 160 ms of lag). Records still land
    /// in order: the next seal, and the next session, wait for this one
    /// first (`settle`).
    async fn record_sealed(
        &mut self,
        cur: &Cursor,
        size: u64,
        digest: [u8; 32],
        chain: [u8; 32],
        epoch: u64,
    ) -> Result<(), ShipError> {
        self.settle().await?;
        let now = unix_ms();
        self.meta.chain_head = Some(hex::encode(chain));
        let rec = SegmentRecord {
            name: cur.segment.to_string(),
            start: cur.start,
            size,
            sealed: true,
            sha256: Some(hex::encode(digest)),
            epoch,
            received_at_ms: now,
            sealed_at_ms: Some(now),
            fork: false,
            in_source: true,
            chain: self.meta.chain_head.clone(),
            check: None,
            pruned_at_ms: None,
        };
        self.meta.segments += 1;
        self.meta.sealed_segments += 1;
        let (catalog, stream, meta) = (
            self.catalog.clone(),
            self.cfg.name.clone(),
            self.meta.clone(),
        );
        let status = self.status.clone();
        status.state.locked().recording_seal = true;
        self.recording = Some(tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let r = catalog.commit(&stream, &[&rec], &meta);
            tracing::trace!(
                elapsed_us = t0.elapsed().as_micros() as u64,
                "seal: catalog commit"
            );
            let mut st = status.state.locked();
            st.recording_seal = false;
            if r.is_ok() {
                st.sealed_segments = meta.sealed_segments;
            }
            r
        }));
        Ok(())
    }

    /// Waits for the last sealed segment's record to be committed.
    async fn settle(&mut self) -> Result<(), ShipError> {
        match self.recording.take() {
            Some(h) => Ok(h.await.map_err(task_failed("catalog commit"))??),
            None => Ok(()),
        }
    }

    /// [`Self::settle`] where no caller can act on a failure but the log.
    async fn settle_or_log(&mut self) {
        if let Err(e) = self.settle().await {
            tracing::error!(error = %e, "cannot record a sealed segment in the catalog");
        }
    }
}

/// [`StreamShipper::next_segment`]'s rule: the first segment after `after`
/// as seen by a scan that began after another scan had seen one.
/// The acks of a local session ([`StreamShipper::local_session`]): each
/// chunk is acked at its end, each seal at once, checked by the same
/// sender rules a replica's acks are.
async fn local_acks(
    mut rx: mpsc::Receiver<pb::ShipMessage>,
    sent: Arc<Sent>,
    status: Arc<Shipper>,
    ack_tx: watch::Sender<u64>,
) -> Result<(), ShipError> {
    use pb::ship_message::Msg;
    while let Some(m) = rx.recv().await {
        let (segment, start, end, sealed) = match m.msg {
            Some(Msg::Chunk(c)) => {
                let end = c.offset.saturating_add(c.data.len() as u64);
                (c.segment, c.segment_start, end, false)
            }
            Some(Msg::Seal(s)) => (s.segment, s.segment_start, s.size, true),
            _ => continue,
        };
        let durable = start.saturating_add(end);
        sent.locked()
            .on_ack(durable, sealed, &segment)
            .map_err(|e| ShipError::Diverged(e.to_string()))?;
        status.set_durable(durable, Instant::now());
        status.durable_at.send_replace(Some((segment.clone(), end)));
        if sealed {
            status.push.note_sealed(&segment);
        }
        ack_tx.send_replace(durable);
    }
    Err(ShipError::Closed)
}

fn successor<E>(
    after: Option<&SegmentName>,
    mut scan: impl FnMut() -> Result<Vec<SourceSegment>, E>,
) -> Result<(Option<SourceSegment>, Vec<SourceSegment>), E> {
    let first_after = |l: &[SourceSegment]| {
        l.iter()
            .find(|s| after.is_none_or(|a| &s.name > a))
            .cloned()
    };
    if first_after(&scan()?).is_none() {
        return Ok((None, Vec::new()));
    }
    let listing = scan()?;
    Ok((first_after(&listing), listing))
}

/// The source's written position, given that `anchor` starts at `start`:
/// the anchor's start plus the sizes of it and every later segment.
fn written_from(listing: &[SourceSegment], anchor: &SegmentName, start: u64) -> u64 {
    // `start` may come from the replica's Welcome: saturate, never wrap
    // (position_after refuses such a start before anything is shipped).
    listing
        .iter()
        .filter(|s| &s.name >= anchor)
        .fold(start, |p, s| p.saturating_add(s.size))
}

/// The stream position `len` bytes into `segment`, which starts at `start`
/// (a value the replica may have reported): an error, not a wrap, when it
/// is past the largest position.
fn position_after(segment: &SegmentName, start: u64, len: u64) -> Result<u64, ShipError> {
    start.checked_add(len).ok_or_else(|| {
        ShipError::Diverged(format!(
            "segment {segment} starts at position {start} (as the replica reported): \
             {len} bytes past it is beyond the largest position"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: u64) -> SourceSegment {
        SourceSegment {
            name: SegmentName::new(format!("00000001{:016X}", n)).unwrap(),
            size: 1,
        }
    }

    /// Issue 15: a replica reporting a last segment at u64::MAX made the
    /// resume arithmetic overflow (a panic in debug builds, a wrap in
    /// release).
    #[test]
    fn a_welcome_naming_an_invalid_segment_is_a_divergence() {
        let w = pb::Welcome {
            last_segment: "../etc/passwd".into(),
            ..Default::default()
        };
        assert!(matches!(replica_end(&w), Err(ShipError::Diverged(_))));
        assert!(replica_end(&pb::Welcome::default()).unwrap().is_none());
    }

    /// The WAL writer's hook does what the watch's event would: without
    /// any event, the index learns the segment's new size and the shipper
    /// is woken.
    #[test]
    fn a_write_hook_marks_the_size_stale_and_wakes_the_shipper() {
        use futures::FutureExt;
        let d = tempfile::tempdir().unwrap();
        let name = seg(1).name;
        let path = d.path().join(name.as_str());
        std::fs::write(&path, [1u8; 10]).unwrap();
        let index = Arc::new(SourceIndex::new(d.path()));
        index.reset(&name);
        index.rescan().unwrap();
        assert_eq!(index.size(&name).unwrap(), Some(10));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, &[2u8; 5]).unwrap();
        assert_eq!(
            index.size(&name).unwrap(),
            Some(10),
            "no event: still stale"
        );
        let wake = Arc::new(Notify::new());
        let hook = crate::node::WriteHook::default();
        hook.wrote(&name); // nothing registered: nothing happens
        hook.set(on_write(index.clone(), wake.clone()));
        hook.wrote(&name);
        assert_eq!(index.size(&name).unwrap(), Some(15));
        assert!(
            wake.notified().now_or_never().is_some(),
            "the shipper was woken"
        );
        hook.clear();
        std::io::Write::write_all(&mut f, &[3u8; 5]).unwrap();
        hook.wrote(&name);
        assert_eq!(
            index.size(&name).unwrap(),
            Some(15),
            "cleared: no longer told"
        );
    }

    #[test]
    fn positions_from_the_replica_never_wrap() {
        let s = seg(3).name;
        assert_eq!(position_after(&s, 100, 5).unwrap(), 105);
        let e = position_after(&s, u64::MAX - 1, 5).unwrap_err().to_string();
        assert!(
            e.contains(&(u64::MAX - 1).to_string()) && e.contains("beyond the largest position"),
            "{e}"
        );
        assert_eq!(written_from(&[seg(3), seg(4)], &s, u64::MAX), u64::MAX);
        assert_eq!(written_from(&[seg(3), seg(4)], &s, 10), 12);
    }

    #[test]
    fn the_successor_comes_from_a_scan_that_cannot_have_missed_it() {
        // Seed 1029: a listing read while segments 0A..0C were created
        // returned 0C but not 0A and 0B. A second scan has them all.
        let mut scans = vec![
            vec![seg(9), seg(10), seg(11), seg(12)],
            vec![seg(9), seg(12)],
        ];
        let (next, listing) =
            successor::<()>(Some(&seg(9).name), || Ok(scans.pop().unwrap())).unwrap();
        assert_eq!(next, Some(seg(10)));
        assert_eq!(listing.len(), 4);
        assert!(scans.is_empty(), "two scans");

        // Nothing after: one scan is enough.
        let mut calls = 0;
        let (next, _) = successor::<()>(Some(&seg(9).name), || {
            calls += 1;
            Ok(vec![seg(9)])
        })
        .unwrap();
        assert_eq!((next, calls), (None, 1));

        // The very first segment, the same way.
        let mut scans = vec![vec![seg(1), seg(2)], vec![seg(2)]];
        let (first, _) = successor::<()>(None, || Ok(scans.pop().unwrap())).unwrap();
        assert_eq!(first, Some(seg(1)));
    }
}
