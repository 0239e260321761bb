//! The node-to-node calls' connections to the other site's drd, dialed as
//! this node dials (see [`crate::dial`], where the endpoint is built).

use crate::config::StreamConfig;
use crate::node::Node;
use drd_proto::pb::replication_client::ReplicationClient;
use tonic::transport::Channel;

pub use crate::dial::describe;

/// A client for short node-to-node calls: every call gets a deadline.
pub async fn connect_for_calls(
    node: &Node,
    cfg: &StreamConfig,
) -> Result<ReplicationClient<Channel>, String> {
    node.dialer().connect_for_calls(cfg).await
}
