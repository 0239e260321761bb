//! The replica's `Replication` service: one session per incoming stream.
//!
//! A session reads the Hello, checks the epoch, takes over the stream from
//! any previous session (a primary that reconnects after a partition may
//! leave a half-open one behind), answers with a Welcome that says where to
//! resume, then runs network reader → bounded queue → disk worker → acks.

use crate::locks::LockExt;
use crate::node::{Node, SessionHandle};
use crate::replica::disk::DiskWorker;
use drd_core::handshake::Admit;
use drd_proto::pb::replication_server::Replication;
use drd_proto::{pb, Hello, ShipMsg, StreamName};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Messages queued between the network reader and the disk worker. With
/// chunks of at most 1 MiB this bounds a session's buffered data; when it is
/// full the reader stops reading and HTTP/2 flow control pushes back.
const DISK_QUEUE_MESSAGES: usize = 16;
/// Acks queued towards the primary.
const ACK_QUEUE: usize = 64;

pub struct ReplicationService {
    pub node: Arc<Node>,
    pub shutdown: CancellationToken,
}

type AckStream = Pin<Box<dyn futures::Stream<Item = Result<pb::ReplicaMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type ReplicateStream = AckStream;

    async fn replicate(
        &self,
        request: Request<Streaming<pb::ShipMessage>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let remote = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let cert_names = self.cert_names(&request);
        let mut inbound = request.into_inner();
        let idle = self.node.config.tuning.idle_timeout();
        let first = match tokio::time::timeout(idle, inbound.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Err(Status::invalid_argument("stream closed before Hello")),
            Ok(Err(s)) => return Err(s),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no Hello within the idle timeout",
                ))
            }
        };
        let hello = match ShipMsg::try_from(first) {
            Ok(ShipMsg::Hello(h)) => h,
            Ok(_) => return Err(Status::invalid_argument("the first message must be Hello")),
            Err(e) => {
                tracing::warn!(%remote, error = %e, "refused a replication stream");
                return Err(e.into());
            }
        };
        self.check_identity(hello.node_id.as_str(), &cert_names, &remote)?;
        // Before anything about the stream is looked up or created here.
        self.check_assigned(&hello.stream, hello.node_id.as_str(), &remote)?;
        let span = tracing::info_span!("session", stream = %hello.stream, peer = %hello.node_id, epoch = hello.epoch);
        let role = self
            .node
            .stream_role(&hello.stream)
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        // No session of this stream may start while its role changes.
        let _gate = role.transition.read().await;
        self.start_session(hello, inbound, remote, idle)
            .instrument(span)
            .await
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteResponse>, Status> {
        let names = self.cert_names(&request);
        let req = request.get_ref();
        self.check_identity(&req.from_node, &names, "promote request")?;
        let stream = crate::ops::stream_name(&req.stream)?;
        self.check_assigned(&stream, &req.from_node, "promote request")?;
        crate::ops::remote::promote(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn fence(
        &self,
        request: Request<pb::FenceRequest>,
    ) -> Result<Response<pb::FenceResponse>, Status> {
        let names = self.cert_names(&request);
        let req = request.get_ref();
        self.check_identity(&req.from_node, &names, "fence request")?;
        if !req.stream.is_empty() {
            let stream = crate::ops::stream_name(&req.stream)?;
            self.check_assigned(&stream, &req.from_node, "fence request")?;
        }
        crate::ops::remote::fence(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn log_info(
        &self,
        request: Request<pb::LogInfoRequest>,
    ) -> Result<Response<pb::LogInfoResponse>, Status> {
        let req = request.into_inner();
        let stream = crate::ops::stream_name(&req.stream)?;
        let query = crate::ops::remote::LogQuery::try_from(&req).map_err(Status::from)?;
        crate::ops::remote::log_info(&self.node, &stream, &query).map(Response::new)
    }

    async fn put_file(
        &self,
        request: Request<pb::PutFileRequest>,
    ) -> Result<Response<pb::PutFileResponse>, Status> {
        let names = self.cert_names(&request);
        let req = request.get_ref();
        self.check_identity(&req.from_node, &names, "put-file request")?;
        let stream = crate::ops::stream_name(&req.stream)?;
        self.check_assigned(&stream, &req.from_node, "put-file request")?;
        crate::sidefiles::put_file(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }
}

impl ReplicationService {
    /// Names in the client certificate (empty without TLS).
    fn cert_names<T>(&self, request: &Request<T>) -> Vec<String> {
        if self.node.tls.is_some() {
            crate::tls::peer_names(request)
        } else {
            Vec::new()
        }
    }

    /// With TLS a peer may only claim a node id its certificate carries: an
    /// allowed peer cannot impersonate another node.
    fn check_identity(
        &self,
        claimed: &str,
        cert_names: &[String],
        from: &str,
    ) -> Result<(), Status> {
        if self.node.tls.is_none() || cert_names.iter().any(|n| n == claimed) {
            return Ok(());
        }
        tracing::warn!(%from, claimed, ?cert_names, "refused: the claimed node id is not in the client certificate");
        Err(Status::permission_denied(format!(
            "node id {claimed:?} does not match the client certificate (names: {})",
            cert_names.join(", ")
        )))
    }

    /// A peer may act on a stream only if this node's config assigns the
    /// stream to it (see [`drd_core::handshake::assigned`]).
    fn check_assigned(&self, stream: &StreamName, sender: &str, from: &str) -> Result<(), Status> {
        drd_core::handshake::assigned(stream.as_str(), sender, self.node.assignment(stream))
            .map_err(|e| {
                tracing::warn!(%from, %stream, sender, "refused: {e}");
                crate::metrics::refused_unassigned(stream);
                Status::permission_denied(e.to_string())
            })
    }

    async fn start_session(
        &self,
        hello: Hello,
        mut inbound: Streaming<pb::ShipMessage>,
        remote: String,
        idle: std::time::Duration,
    ) -> Result<Response<AckStream>, Status> {
        self.check_hello(&hello)?;
        let slot = self
            .node
            .receive_slot(&hello.stream)
            .map_err(|e| Status::internal(format!("{e:#}")))?;

        // Take the stream over from a previous session and wait until its
        // disk worker has stopped: only one writer per stream, ever.
        let mut session = slot.session.lock().await;
        if let Some(old) = session.take() {
            tracing::info!("a new session replaces the previous one");
            old.end().await;
        }

        let landing = self.node.config.landing_dir(&hello.stream);
        let role = self
            .node
            .stream_role(&hello.stream)
            .map_err(|e| Status::internal(format!("{e:#}")))?;
        let node_epoch = role.state().epoch;
        let worker = DiskWorker::new(
            hello.stream.clone(),
            landing,
            self.node.catalog.clone(),
            slot.clone(),
            node_epoch,
            self.node.config.tuning.group_commit_bytes,
            &hello.node_id,
        )
        .map_err(Status::from)?;

        let tail = worker.tail().cloned();
        let welcome = pb::Welcome {
            role: pb::Role::Replica as i32,
            epoch: node_epoch,
            durable_position: worker.durable_position(),
            last_segment: tail
                .as_ref()
                .map(|t| t.segment.to_string())
                .unwrap_or_default(),
            last_segment_size: tail.as_ref().map_or(0, |t| t.size),
            last_segment_sealed: tail.as_ref().is_some_and(|t| t.sealed),
            last_segment_start: tail.as_ref().map_or(0, |t| t.start),
            chain: worker.chain_head().to_vec(),
            accepts_compression: drd_proto::accepted_compressions(),
            protocol_version: drd_proto::PROTOCOL_VERSION,
            software_version: crate::version::VERSION_LINE.to_string(),
            max_window_bytes: self.node.granted_window(),
        };
        tracing::info!(
            durable_position = welcome.durable_position,
            last_segment = %welcome.last_segment,
            granted_window = welcome.max_window_bytes,
            "primary connected; resuming at the durable position"
        );
        // Test-only: logs the broken early-ack mode's WARN at session start.
        #[cfg(all(feature = "chaos-testing", debug_assertions))]
        crate::replica::chaos::unsafe_early_ack();
        {
            let mut st = slot.state.locked();
            st.connected = true;
            st.peer = format!("{} ({remote})", hello.node_id);
            st.sessions += 1;
            st.last_error.clear();
            st.meta.last_primary = Some(hello.node_id.to_string());
            st.peer_protocol_version = hello.protocol_version;
            st.peer_software_version = hello.software_version.clone();
        }
        if let Some(w) = crate::version::protocol_warning(
            hello.stream.as_str(),
            drd_proto::PROTOCOL_VERSION,
            crate::version::VERSION_LINE,
            hello.node_id.as_str(),
            hello.protocol_version,
            &hello.software_version,
        ) {
            tracing::warn!("{w}");
        }

        let (ack_tx, ack_rx) = mpsc::channel(ACK_QUEUE);
        ack_tx
            .send(Ok(pb::ReplicaMessage {
                msg: Some(pb::replica_message::Msg::Welcome(welcome)),
            }))
            .await
            .map_err(|_| Status::cancelled("primary went away"))?;

        let (disk_tx, disk_rx) = mpsc::channel(DISK_QUEUE_MESSAGES);
        let worker_acks = ack_tx.clone();
        let worker = tokio::task::spawn_blocking(move || worker.run(disk_rx, worker_acks));

        let cancel = self.shutdown.child_token();
        let reader_cancel = cancel.clone();
        // A role or epoch change ends the session (the transition also ends
        // it explicitly and waits; this covers changes from other paths).
        let mut state_rx = role.subscribe();
        let watch_cancel = cancel.clone();
        tokio::spawn(async move {
            let start = state_rx.borrow().clone();
            loop {
                tokio::select! {
                    _ = watch_cancel.cancelled() => return,
                    changed = state_rx.changed() => {
                        if changed.is_err() { return; }
                        let now = state_rx.borrow().clone();
                        if now.role != start.role || now.epoch != start.epoch {
                            watch_cancel.cancel();
                            return;
                        }
                    }
                }
            }
        });
        let reader_slot = slot.clone();
        let done = tokio::spawn(
            async move {
                let end = read_loop(&mut inbound, &disk_tx, &ack_tx, &reader_cancel, idle).await;
                drop(disk_tx);
                let _ = worker.await;
                let mut st = reader_slot.state.locked();
                st.connected = false;
                if let Err(e) = &end {
                    st.last_error = e.clone();
                }
                tracing::info!(end = ?end, "session ended");
            }
            .in_current_span(),
        );
        *session = Some(SessionHandle::new(cancel, done));
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_rx))))
    }

    fn check_hello(&self, hello: &Hello) -> Result<(), Status> {
        let state = self
            .node
            .stream_role(&hello.stream)
            .map_err(|e| Status::internal(format!("{e:#}")))?
            .state();
        // The decision is drd-core's (handshake::admit); this carries it out.
        match drd_core::handshake::admit(&state, hello.epoch) {
            Admit::Accept { adopt: None } => return Ok(()),
            Admit::Accept { adopt: Some(_) } => {}
            Admit::Stale { .. } => {
                tracing::warn!(
                    current = state.epoch,
                    "refused a primary with a stale epoch"
                );
                return Err(crate::ops::stale_epoch(&self.node, &state, hello.epoch));
            }
            Admit::Retry => {
                // Our own switchover just promoted the sender; we are about
                // to become its replica. Not a reason to fence: retry.
                return Err(Status::unavailable(
                    "a switchover is in progress on this node; retry in a moment",
                ));
            }
            Admit::FenceSelf { seen } => {
                // A newer primary is talking to us: we are the stale one.
                let reason = format!(
                    "node {} connected as primary at epoch {}",
                    hello.node_id, hello.epoch
                );
                let node = self.node.clone();
                let from = hello.node_id.to_string();
                let stream = hello.stream.clone();
                tokio::spawn(async move {
                    crate::ops::remote::fence_self(&node, &stream, seen, &reason, &from).await
                });
                return Err(Status::failed_precondition(format!(
                    "node {} was primary of {} at epoch {} and is fencing itself for it; run \
                     `drctl rejoin --stream {}` on it",
                    self.node.config.node_id, hello.stream, state.epoch, hello.stream
                )));
            }
            Admit::RefusePrimary => {
                tracing::error!(
                    stream = %hello.stream,
                    "another node claims to be primary at epoch {} while this node is primary at epoch {}",
                    hello.epoch,
                    state.epoch
                );
                return Err(Status::failed_precondition(format!(
                    "node {} is primary of {} at epoch {}; it does not receive that stream",
                    self.node.config.node_id, hello.stream, state.epoch
                )));
            }
            Admit::RefuseFenced => {
                return Err(Status::failed_precondition(format!(
                    "{} is fenced on node {}; run `drctl rejoin --stream {}` on it first",
                    hello.stream, self.node.config.node_id, hello.stream
                )))
            }
        }
        self.node
            .adopt_epoch(&hello.stream, hello.epoch)
            .map_err(|e| Status::internal(format!("{e:#}")))
    }
}

/// Reads messages until the stream ends, fails, idles out or is cancelled.
/// Returns Err with a reason when the stream ended abnormally.
async fn read_loop(
    inbound: &mut Streaming<pb::ShipMessage>,
    disk: &mpsc::Sender<ShipMsg>,
    acks: &mpsc::Sender<Result<pb::ReplicaMessage, Status>>,
    cancel: &CancellationToken,
    idle: std::time::Duration,
) -> Result<(), String> {
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Err("replaced by a newer session or shutting down".into()),
            r = tokio::time::timeout(idle, inbound.message()) => r,
        };
        let raw = match next {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => {
                // E.g. a frame over the size limit: tell the sender why.
                tracing::warn!(code = ?status.code(), error = status.message(), "replication stream failed; nothing of the failed message was written");
                let reason = format!("stream error: {}", status.message());
                let _ = acks.send(Err(status)).await;
                return Err(reason);
            }
            Err(_) => {
                let _ = acks
                    .send(Err(Status::deadline_exceeded(
                        "no message within the idle timeout",
                    )))
                    .await;
                return Err(format!("primary silent for {idle:?}"));
            }
        };
        let msg = match ShipMsg::try_from(raw) {
            Ok(ShipMsg::Hello(_)) => {
                let e = "a second Hello on one stream";
                let _ = acks.send(Err(Status::invalid_argument(e))).await;
                return Err(e.into());
            }
            Ok(m) => m,
            Err(e) => {
                // Validation failed before anything reached the disk.
                tracing::warn!(error = %e, "refused a malformed message; nothing written");
                let _ = acks.send(Err(e.clone().into())).await;
                return Err(e.to_string());
            }
        };
        // !!! DELIBERATELY BROKEN — TEST-ONLY — NEVER IN PRODUCTION !!!
        // With the `chaos-testing` feature (enabled only by the tests crate)
        // and DRD_CHAOS_UNSAFE_EARLY_ACK=1, the replica acks a chunk's end
        // position as soon as it arrives, before it is written or fsynced:
        // exactly the bug Invariant 1 forbids. The chaos suite runs it to
        // prove its checker catches a replica that loses acked bytes.
        #[cfg(all(feature = "chaos-testing", debug_assertions))]
        if let ShipMsg::Chunk(c) = &msg {
            if crate::replica::chaos::unsafe_early_ack() {
                let early = pb::ReplicaMessage {
                    msg: Some(pb::replica_message::Msg::Ack(pb::Ack {
                        durable_position: c.end_position(),
                        segment: c.segment.to_string(),
                        segment_size: c.offset + c.data.len() as u64,
                        sealed: false,
                    })),
                };
                let _ = acks.send(Ok(early)).await;
            }
        }
        if disk.send(msg).await.is_err() {
            // The disk worker stopped (it refused something and said why).
            return Err("disk worker stopped".into());
        }
    }
}
