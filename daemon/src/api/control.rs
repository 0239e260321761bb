//! The control API (`drctl`'s side of the daemon) on a Unix socket. The
//! client connector that `drctl` and the tests use to reach it is
//! drd-client's, re-exported here as [`connect`].

use crate::node::{Node, StreamView};
use crate::ops::{self, Caller};
use drd_proto::pb;
use drd_proto::pb::control_server::Control;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Socket mode: owner and group (the `drd` group) may connect.
pub const SOCKET_MODE: u32 = 0o660;

pub struct ControlService {
    pub node: Arc<Node>,
}

impl From<StreamView> for pb::StreamStatus {
    fn from(v: StreamView) -> Self {
        pb::StreamStatus {
            name: v.name,
            direction: v.direction.to_string(),
            peer: v.peer,
            connected: v.connected,
            written_position: v.written_position,
            durable_position: v.durable_position,
            lag_bytes: v.lag_bytes,
            lag_seconds: v.lag_seconds,
            network_bytes: v.network_bytes,
            segments: v.segments,
            sealed_segments: v.sealed_segments,
            current_segment: v.current_segment,
            reconnects: v.reconnects,
            last_error: v.last_error,
            throughput_bytes_per_second: v.throughput_bytes_per_second,
            paused: v.paused,
            peer_protocol_version: v.peer_protocol_version,
            peer_software_version: v.peer_software_version,
            spool: v.spool.map(|u| pb::SpoolStatus {
                bytes: u.bytes,
                segments: u.segments,
                limit_bytes: u.limit_bytes,
                full: u.full,
                retention_seconds: u.retention_seconds,
                pruned_segments: u.pruned_segments,
                pruned_bytes: u.pruned_bytes,
                refused_pushes: u.refused_pushes,
            }),
            role: v.role.map_or(pb::Role::Unspecified, pb_role) as i32,
            epoch: v.epoch,
            fenced_reason: v.fenced_reason,
            mode: v.mode,
            mode_override: v.mode_override.as_ref().map(ops::mode::to_pb),
            postgres: v.postgres.map(|p| pb::PgStreamStatus {
                connected: p.connected,
                system_id: p.system_id,
                timeline: p.timeline,
                server_end_lsn: p.server_end.0,
                server_end_at_ms: p.server_end_at_ms,
                written_lsn: p.written.0,
                local_durable_lsn: p.local_durable.0,
                reported_write_lsn: p.reported_write.0,
                reported_flush_lsn: p.reported_flush.0,
                dr_durable_lsn: p.dr_durable.map_or(0, |d| d.1 .0),
                dr_durable_timeline: p.dr_durable.map_or(0, |d| d.0),
                slot: p.slot,
                slot_retained_bytes: p.slot_retained_bytes,
                slot_wal_status: p.slot_wal_status,
                last_error: p.last_error,
                slot_lost: p.slot_lost,
            }),
        }
    }
}

/// The OS user behind a control request, from the Unix socket's peer
/// credentials (SO_PEERCRED): who ran `drctl`, for the audit log.
fn caller<T>(request: &Request<T>) -> Caller {
    let cred = request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred);
    match cred {
        Some(c) => Caller {
            user: user_name(c.uid()),
            origin: format!(
                "control socket, pid {}",
                c.pid().map_or("?".to_string(), |p| p.to_string())
            ),
        },
        // Remote drctl over mTLS: the client certificate names the caller.
        None => Caller {
            user: format!("certificate {}", crate::tls::peer_names(request).join(", ")),
            origin: format!(
                "control TCP from {}",
                request
                    .remote_addr()
                    .map_or("?".to_string(), |a| a.to_string())
            ),
        },
    }
}

/// `uid` → login name through the system's user database (NSS: files,
/// LDAP, SSSD…); the uid itself if it has no name.
fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

fn pb_role(r: crate::storage::catalog::Role) -> pb::Role {
    match r {
        crate::storage::catalog::Role::Primary => pb::Role::Primary,
        crate::storage::catalog::Role::Replica => pb::Role::Replica,
        crate::storage::catalog::Role::Fenced => pb::Role::Fenced,
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    type WatchDurableStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::DurableUpdate, Status>> + Send + 'static>,
    >;

    async fn watch_durable(
        &self,
        request: Request<pb::WatchDurableRequest>,
    ) -> Result<Response<Self::WatchDurableStream>, Status> {
        use tokio_stream::StreamExt;
        let want = request.into_inner().stream;
        let shippers = &self.node.shippers;
        let shipper = match (want.as_str(), shippers.as_slice()) {
            ("", [only]) => only,
            ("", []) => {
                return Err(Status::failed_precondition(
                    "this node ships no stream (no [[stream]] in its config)",
                ))
            }
            ("", _) => {
                return Err(Status::invalid_argument(
                    "this node ships several streams: name one",
                ))
            }
            (name, all) => all
                .iter()
                .find(|s| s.stream.as_str() == name)
                .ok_or_else(|| {
                    Status::not_found(format!("this node ships no stream named {name:?}"))
                })?,
        };
        let name = shipper.stream.to_string();
        let updates = tokio_stream::wrappers::WatchStream::new(shipper.durable.subscribe()).map(
            move |durable_position| {
                Ok(pb::DurableUpdate {
                    stream: name.clone(),
                    durable_position,
                })
            },
        );
        Ok(Response::new(Box::pin(updates)))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        // The node-wide fields summarize the streams' (each row has its
        // own role and epoch): one role if they share it, else MIXED.
        let roles = self.node.roles();
        let (role, epoch) = self.node.summary_role();
        let fenced: Vec<_> = roles
            .iter()
            .filter(|(_, s)| s.role == crate::storage::catalog::Role::Fenced)
            .collect();
        let fenced_reason = match fenced.as_slice() {
            [] => String::new(),
            [(_, s)] if roles.len() == 1 => s.fenced_reason.clone().unwrap_or_default(),
            many => format!(
                "{} of {} streams are fenced ({}); `drctl status` shows why for each",
                many.len(),
                roles.len(),
                many.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Ok(Response::new(pb::StatusResponse {
            node_id: self.node.config.node_id.to_string(),
            role: role.map_or(pb::Role::Mixed, pb_role) as i32,
            epoch,
            streams: self
                .node
                .stream_views()
                .into_iter()
                .map(Into::into)
                .collect(),
            version: crate::version::VERSION_LINE.to_string(),
            uptime_seconds: self.node.started.elapsed().as_secs(),
            paused: !roles.is_empty() && roles.iter().all(|(_, s)| s.paused),
            fenced_reason,
            protocol_version: crate::version::PROTOCOL_VERSION,
            operations: self.node.operations.snapshot(),
            targets: self.node.targets.iter().map(|t| t.status()).collect(),
        }))
    }

    async fn failover(
        &self,
        request: Request<pb::FailoverRequest>,
    ) -> Result<Response<pb::FailoverResponse>, Status> {
        let who = caller(&request);
        let r = ops::failover::failover(&self.node, request.into_inner(), who).await;
        Ok(Response::new(r))
    }

    async fn switchover(
        &self,
        request: Request<pb::SwitchoverRequest>,
    ) -> Result<Response<pb::SwitchoverResponse>, Status> {
        let who = caller(&request);
        let r = ops::switchover::switchover(&self.node, request.into_inner(), who).await;
        Ok(Response::new(r))
    }

    async fn rejoin(
        &self,
        request: Request<pb::RejoinRequest>,
    ) -> Result<Response<pb::RejoinResponse>, Status> {
        let who = caller(&request);
        ops::rejoin::rejoin(&self.node, request.into_inner(), who)
            .await
            .map(Response::new)
    }

    async fn pause(
        &self,
        request: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        let who = caller(&request);
        ops::pause::pause(&self.node, request.into_inner(), who)
            .await
            .map(Response::new)
    }

    async fn set_mode(
        &self,
        request: Request<pb::SetModeRequest>,
    ) -> Result<Response<pb::SetModeResponse>, Status> {
        let who = caller(&request);
        ops::mode::set_mode(&self.node, request.into_inner(), who)
            .await
            .map(Response::new)
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        ops::history::history(&self.node, request.into_inner()).map(Response::new)
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let node = self.node.clone();
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || ops::verify::verify(&node, req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }

    async fn prune(
        &self,
        request: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let who = caller(&request);
        ops::prune::prune(&self.node, request.into_inner(), who)
            .await
            .map(Response::new)
    }

    async fn drill(
        &self,
        request: Request<pb::DrillRequest>,
    ) -> Result<Response<pb::DrillResponse>, Status> {
        let who = caller(&request);
        ops::drill::drill(self.node.clone(), request.into_inner(), who)
            .await
            .map(Response::new)
    }

    async fn drill_history(
        &self,
        request: Request<pb::DrillHistoryRequest>,
    ) -> Result<Response<pb::DrillHistoryResponse>, Status> {
        ops::drill::history(&self.node, request.into_inner()).map(Response::new)
    }

    async fn drill_check(
        &self,
        request: Request<pb::DrillCheckRequest>,
    ) -> Result<Response<pb::DrillCheckResponse>, Status> {
        ops::drill::check(&self.node, request.into_inner()).map(Response::new)
    }

    async fn fetch_segment(
        &self,
        request: Request<pb::FetchSegmentRequest>,
    ) -> Result<Response<pb::FetchSegmentResponse>, Status> {
        ops::fetch::fetch_segment(&self.node, request.into_inner()).map(Response::new)
    }

    async fn wal_push(
        &self,
        request: Request<tonic::Streaming<pb::WalPushRequest>>,
    ) -> Result<Response<pb::WalPushResponse>, Status> {
        let who = caller(&request);
        ops::walpush::wal_push(&self.node, request.into_inner(), who)
            .await
            .map(Response::new)
    }
}

/// Binds the control socket: creates its directory, replaces a stale socket
/// file (one nobody listens on), sets mode 0660 and, with
/// `control.socket_group`, gives it to that group.
pub fn bind_socket(path: &Path, group: Option<&str>) -> anyhow::Result<tokio::net::UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the control socket's directory {}",
                dir.display()
            )
        })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another drd is already listening on {}; stop it or set `control.socket`",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("cannot set mode 0660 on {}", path.display()))?;
    if let Some(g) = group {
        let gid = crate::unix::group_id(g)
            .with_context(|| format!("key `control.socket_group`: cannot look up group {g:?}"))?
            .with_context(|| {
                format!(
                    "key `control.socket_group`: there is no group {g:?} on this machine \
                     (`getent group {g}` finds none)"
                )
            })?;
        std::os::unix::fs::chown(path, None, Some(gid)).with_context(|| {
            format!(
                "cannot give the control socket {} to group {g} (drd must run as root or be a \
                 member of {g})",
                path.display()
            )
        })?;
    }
    Ok(listener)
}

/// The client connector (drctl, tests), re-exported where it always was.
pub use drd_client::control::connect;
