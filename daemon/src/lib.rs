//! drd, the disaster-recovery replication daemon, as a library: the binary
//! `drd` and the tests call [`run`] with a validated [`config::Config`] and a
//! shutdown token.
#![forbid(unsafe_code)]

pub mod api;
pub mod caller;
pub mod clock;
pub mod config;
pub mod demo;
pub mod dial;
pub mod gauges;
pub mod hooks;
pub mod lag;
pub mod laghistory;
pub mod locks;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod ops;
pub mod primary;
pub mod progress;
pub mod replica;
pub mod sidefiles;
pub mod storage;
pub mod target_state;
pub mod targets;
pub mod throttle;
pub mod unix;
pub mod walpos;
pub mod wiring;

pub use drd_proto as proto;
// What the daemon shares with its clients (drctl): drd-client, under the
// names these modules always had here.
pub use drd_client::{certs, display, tls, units, version};
// The protocol rules live in drd-core (no I/O); the daemon carries them out.
pub use drd_core::{chain, receiver, roles};

use anyhow::Context;
use config::Config;
use drd_proto::pb;
use locks::LockExt;
use node::Node;
use std::sync::Arc;
use std::time::Duration;
use storage::catalog::{self, Catalog};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for sessions and shippers to finish their last
/// batch (flush, fsync, ack) before giving up on them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub use clock::unix_ms;

/// Runs the daemon until `shutdown` is cancelled: reconciles received
/// streams with the catalog, then serves the replication and control APIs
/// and ships the configured streams.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(config, shutdown, notify::Service::default()).await
}

/// [`run`] as a service: `service` says where to re-read the configuration
/// on SIGHUP and how to change the log level (see [`notify`]).
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    service: notify::Service,
) -> anyhow::Result<()> {
    let hup = notify::hangup(&service);
    config.check_environment()?;
    let tls = config.load_tls()?;
    storage::fsutil::create_dir_durable(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let catalog = Arc::new(Catalog::open(&config.catalog_dir()).with_context(|| {
        format!(
            "cannot open the catalog in {}",
            config.catalog_dir().display()
        )
    })?);
    if config.replica.is_some() {
        reconcile_all(&config, &catalog)?;
    }
    let node = Arc::new(Node::open(config.clone(), catalog, tls.clone())?);
    let roles = node.roles();
    tracing::info!(node_id = %config.node_id, streams = roles.len(), "drd starting");
    for (stream, state) in &roles {
        tracing::info!(%stream, role = state.role.as_str(), epoch = state.epoch, paused = state.paused, "stream role");
    }

    let tracker = TaskTracker::new();

    // Bind everything before serving anything, so a bad address fails fast.
    let control_listener = api::control::bind_socket(
        &config.control_socket,
        config.control_socket_group.as_deref(),
    )?;
    let metrics_exporter = match config.metrics_listen {
        Some(addr) => {
            let exporter = metrics::install(addr)?;
            tracing::info!(%addr, "Prometheus metrics on http://{addr}/metrics");
            Some(exporter)
        }
        None => None,
    };
    let replica_listener = match &config.replica {
        Some(r) => Some(
            tokio::net::TcpListener::bind(r.listen)
                .await
                .with_context(|| format!("cannot listen on replica.listen {}", r.listen))?,
        ),
        None => None,
    };

    if let Some(listener) = replica_listener {
        let svc =
            pb::replication_server::ReplicationServer::new(replica::server::ReplicationService {
                node: node.clone(),
                shutdown: shutdown.clone(),
            })
            .max_decoding_message_size(drd_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(drd_proto::MAX_MESSAGE_BYTES);
        let addr = listener.local_addr()?;
        let stop = shutdown.clone();
        let builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .initial_stream_window_size(Some(dial::H2_STREAM_WINDOW))
            .initial_connection_window_size(Some(dial::H2_CONNECTION_WINDOW));
        match (&tls, &config.tls) {
            (Some(m), Some(t)) => {
                tracing::info!(%addr, allowed_peers = ?t.allowed_peers, "replication service listening (mTLS)");
                let incoming =
                    tls::TlsIncoming::new(listener, m.acceptor()?, t.allowed_peers.clone());
                let mut builder = builder;
                let server = builder
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
                tracker.spawn(async move {
                    if let Err(e) = server.await {
                        tracing::error!(error = %e, "replication service failed");
                    }
                });
            }
            _ => {
                tracing::warn!(%addr, "replication service listening WITHOUT TLS (insecure_plaintext, loopback only)");
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let mut builder = builder;
                let server = builder
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
                tracker.spawn(async move {
                    if let Err(e) = server.await {
                        tracing::error!(error = %e, "replication service failed");
                    }
                });
            }
        }
    }

    {
        let svc = pb::control_server::ControlServer::new(api::control::ControlService {
            node: node.clone(),
        });
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(control_listener);
        let stop = shutdown.clone();
        let socket = config.control_socket.clone();
        tracing::info!(socket = %socket.display(), "control socket listening");
        tracker.spawn(async move {
            let server = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
            if let Err(e) = server.await {
                tracing::error!(error = %e, "control service failed");
            }
            let _ = std::fs::remove_file(&socket);
        });
    }

    // The control API on TCP for remote drctl: mTLS only, and only for the
    // client certificates named in control.allowed_clients.
    if let (Some(cl), Some(m)) = (&config.control_listen, &tls) {
        let listener = tokio::net::TcpListener::bind(cl.addr)
            .await
            .with_context(|| format!("cannot listen on control.listen {}", cl.addr))?;
        tracing::info!(addr = %cl.addr, allowed_clients = ?cl.allowed_clients, "control API listening on TCP (mTLS)");
        let incoming = tls::TlsIncoming::new(listener, m.acceptor()?, cl.allowed_clients.clone());
        let svc = pb::control_server::ControlServer::new(api::control::ControlService {
            node: node.clone(),
        });
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let server = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
            if let Err(e) = server.await {
                tracing::error!(error = %e, "control TCP service failed");
            }
        });
    }

    for (cfg, status) in config.streams.iter().zip(node.shippers.iter()) {
        // The shipper and the spool's pruning get handles, not the node.
        // A configured stream's role entry exists from `Node::open` on, so
        // these do not fail in practice.
        match node.ship_context(cfg, status) {
            Ok(ctx) => {
                tracker.spawn(primary::shipper::run(ctx, shutdown.clone()));
            }
            Err(e) => {
                let _span =
                    tracing::info_span!("ship", stream = %cfg.name, peer = %cfg.peer_label())
                        .entered();
                tracing::error!(error = %e, "cannot read the stream's role; not shipping it");
                status.state.locked().last_error = format!("cannot read the stream's role: {e:#}");
            }
        }
        // A spool stream's segments leave wal_dir once safe at the DR site.
        match node.spool_pruner(cfg, status) {
            Ok(pruner) => {
                tracker.spawn(primary::prune::run(pruner, shutdown.clone()));
            }
            Err(e) => tracing::error!(stream = %cfg.name, error = %format!("{e:#}"),
                "cannot read the stream's role; not pruning its spool"),
        }
        // A `source = "postgres"` stream's WAL comes from the database.
        match node.pg_context(cfg, status) {
            Ok(Some(ctx)) => {
                tracker.spawn(primary::pgstream::run(ctx, shutdown.clone()));
            }
            Ok(None) => {}
            Err(e) => tracing::error!(stream = %cfg.name, error = %format!("{e:#}"),
                "cannot read the stream's role; not streaming from PostgreSQL"),
        }
        // `[[stream.target]]`: the log also goes to object stores.
        for t in node.targets_of(&cfg.name) {
            match node.target_context(cfg, status, &t) {
                Ok(ctx) => {
                    tracker.spawn(targets::run(ctx, shutdown.clone()));
                }
                Err(e) => {
                    tracing::error!(stream = %cfg.name, url = %t.url, error = %format!("{e:#}"),
                    "cannot read the stream's role; not uploading to the target")
                }
            }
        }
        // PostgreSQL's .history/.backup files travel beside the log (to
        // the peer here; the targets upload them themselves).
        if cfg.peer.is_some() {
            tracker.spawn(sidefiles::deliver::run(
                node.clone(),
                cfg.clone(),
                status.clone(),
                shutdown.clone(),
            ));
        }
    }
    // The lag history that drill reports chart, and the drill gauges.
    ops::drill::seed_metrics(&node);
    tracker.spawn(ops::drill::clean_leftovers(node.clone()));
    tracker.spawn(ops::drill::record_lag(node.clone(), shutdown.clone()));
    // The DR site's own retention policy for what it received.
    tracker.spawn(replica::prune::run(
        node.retention_pruner(),
        shutdown.clone(),
    ));
    if let Some(exporter) = metrics_exporter {
        let stop = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = exporter => if let Err(e) = r {
                    tracing::error!(error = ?e, "metrics endpoint failed");
                },
            }
        });
        tracker.spawn(gauges::sample(node.clone(), shutdown.clone()));
    }
    notify::spawn(node.clone(), &tracker, shutdown.clone(), service, hup);
    tracker.close();
    tracing::info!("drd ready");
    notify::ready(&node);

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    notify::stopping();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}");
    }
    Ok(())
}

/// Reconciles every received stream's landing directory with the catalog.
fn reconcile_all(config: &Config, catalog: &Catalog) -> anyhow::Result<()> {
    for stream in catalog.streams()? {
        let landing = config.landing_dir(&stream);
        let tail = catalog.tail(&stream)?;
        let previous = |rec: &catalog::SegmentRecord| -> anyhow::Result<_> {
            Ok(catalog.previous(&stream, &rec.segment_name()?)?)
        };
        let r = replica::reconcile::reconcile_stream(&landing, tail.as_ref(), previous)
            .with_context(|| format!("stream {stream}: cannot reconcile {}", landing.display()))?;
        if let (Some(size), Some(rec)) = (r.cut_back_to, tail.as_ref()) {
            let fixed = replica::reconcile::cut_back_record(rec);
            let meta = catalog.stream_meta(&stream)?;
            catalog.commit(&stream, &[&fixed], &meta)?;
            tracing::warn!(%stream, segment = %rec.name, recorded = rec.size, kept = size,
                "the last group commit was recorded but its bytes did not all reach the disk \
                 (power loss?): they were never acked; cut back to the previous durable point");
        }
        if r.truncated_bytes > 0 || r.unsealed {
            tracing::warn!(%stream, truncated_bytes = r.truncated_bytes, unsealed = r.unsealed,
                "reconciled the landing directory with the catalog after an unclean stop");
        }
        if !r.renamed_sealed.is_empty() {
            tracing::warn!(%stream, segments = ?r.renamed_sealed,
                "sealed segments were still under their .partial name (a rename lost); \
                 their SHA-256 matched the catalog and they were renamed");
        }
        if !r.unrecorded.is_empty() {
            tracing::warn!(%stream, files = ?r.unrecorded,
                "complete files past the catalog's last record (a group renamed before a crash \
                 lost its commit; never acked) got their .partial name back");
        }
        for stray in replica::reconcile::stray_partials(&landing, tail.as_ref()) {
            tracing::warn!(%stream, file = %stray, "stray partial file left alone (never acked)");
        }
    }
    Ok(())
}
