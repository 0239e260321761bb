//! Connections to the other site's drd: one place that builds the endpoint
//! (timeouts, keepalives, windows, message limits) for shipping and for the
//! node-to-node calls of failover, switchover and rejoin. A [`Dialer`] holds
//! what that needs (this node's TLS material), so a driver that dials its
//! peer is handed one instead of the node.

use crate::config::StreamConfig;
use drd_proto::pb::replication_client::ReplicationClient;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Time allowed to establish the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a single node-to-node call (promote, fence, log info).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings keep NAT/firewall state alive and detect dead peers even
/// when the stream is idle.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 flow-control windows: large enough that one stream can fill a
/// fast link (the in-flight window, not HTTP/2, is what bounds memory).
pub const H2_STREAM_WINDOW: u32 = 16 * 1024 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

pub use drd_client::peer::describe;

/// Dials a stream's peer the way this node does.
#[derive(Clone)]
pub struct Dialer {
    /// This node's certificate, key and CA (None with insecure_plaintext).
    tls: Option<crate::tls::TlsMaterial>,
}

impl Dialer {
    pub fn new(tls: Option<crate::tls::TlsMaterial>) -> Self {
        Self { tls }
    }

    /// The endpoint for a stream's peer: `https://` with mTLS (the peer must
    /// present a certificate for `peer_name`, signed by our CA), or plaintext
    /// `http://` on loopback when the node runs with insecure_plaintext.
    pub fn endpoint(&self, cfg: &StreamConfig) -> Result<Endpoint, String> {
        let peer = cfg.peer.clone().ok_or_else(|| {
            format!(
                "stream {} has no peer (it ships only to its [[stream.target]]s)",
                cfg.name
            )
        })?;
        let mut ep = Endpoint::from_shared(peer).map_err(|e| describe(&e))?;
        if let (Some(m), Some(name)) = (&self.tls, &cfg.peer_name) {
            ep = ep
                .tls_config(crate::tls::client_tls(m, name))
                .map_err(|e| describe(&e))?;
        }
        Ok(ep
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(Some(H2_STREAM_WINDOW))
            .initial_connection_window_size(Some(H2_CONNECTION_WINDOW)))
    }

    /// A replication client for the stream's peer with drd's message limits.
    pub async fn connect(&self, cfg: &StreamConfig) -> Result<ReplicationClient<Channel>, String> {
        let peer = cfg.peer_label();
        let channel = self
            .endpoint(cfg)?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {peer}: {}", describe(&e)))?;
        Ok(ReplicationClient::new(channel)
            .max_decoding_message_size(drd_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(drd_proto::MAX_MESSAGE_BYTES))
    }

    /// A client for short node-to-node calls: every call gets a deadline.
    pub async fn connect_for_calls(
        &self,
        cfg: &StreamConfig,
    ) -> Result<ReplicationClient<Channel>, String> {
        let peer = cfg.peer_label();
        let channel = self
            .endpoint(cfg)?
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {peer}: {}", describe(&e)))?;
        Ok(ReplicationClient::new(channel))
    }
}
