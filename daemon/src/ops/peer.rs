//! The node-to-node calls' connections to the other site's drd, dialed as
//! this node dials (see [`crate::dial`], where the endpoint is built).

use crate::config::StreamConfig;
use crate::node::Node;
use drd_proto::pb::replication_client::ReplicationClient;
use tonic::transport::Channel;

/// A client for short node-to-node calls: every call gets a deadline.
pub async fn connect_for_calls(
    node: &Node,
    cfg: &StreamConfig,
) -> Result<ReplicationClient<Channel>, String> {
    node.dialer().connect_for_calls(cfg).await
}

/// A replication client for the stream's peer with drd's message limits.
pub async fn connect(
    node: &Node,
    cfg: &StreamConfig,
) -> Result<ReplicationClient<Channel>, String> {
    node.dialer().connect(cfg).await
}
