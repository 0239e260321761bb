//! Chunks onto the wire: the stream's `compression`, applied only when the
//! replica's Welcome says it decodes it, and the bytes that actually go out
//! counted next to the payload bytes (`drd_shipped_wire_bytes_total`); and
//! the epoch a replica's refusal carries back.

use crate::config::StreamConfig;
use drd_proto::{pb, ShipMsg};

/// Metadata key carrying the refusing node's epoch, so a stale primary
/// learns it must fence itself.
pub const EPOCH_METADATA: &str = "drd-epoch";

/// `msg` as sent to the replica that answered with `welcome`, encoded with
/// `stream`'s compression where that replica accepts it. A chunk's payload
/// bytes as sent are added to the stream's wire-bytes counter.
///
/// zstd at level 1 takes a few milliseconds per 1 MiB chunk; it runs on
/// the shipper's task, which the in-flight window keeps from running ahead
/// of the network anyway.
pub fn encode(stream: &StreamConfig, welcome: &pb::Welcome, msg: ShipMsg) -> pb::ShipMessage {
    let wire = msg.to_wire(stream.compression.accepted_by(welcome));
    if let Some(pb::ship_message::Msg::Chunk(c)) = &wire.msg {
        crate::metrics::chunk_on_wire(stream.name.as_str(), c.data.len() as u64);
    }
    wire
}
