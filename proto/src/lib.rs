//! drd's wire boundary: the generated gRPC code (`pb`) and the domain types the
//! rest of drd works with. Every message from the network is converted with
//! `TryFrom`, which validates names, sizes and checksums; code past this crate
//! never re-checks them.
#![forbid(unsafe_code)]

use bytes::Bytes;
use std::fmt;

pub mod pb {
    //! Code generated from `proto/drd.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("drd.v1");
}

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest chunk payload a sender produces and a receiver accepts.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Largest encoded gRPC message either side decodes: one full chunk plus room
/// for the header fields. Set on every client and server so an oversized frame
/// is refused by the transport before it is buffered.
pub const MAX_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES + 64 * 1024;

/// Longest stream, node or segment name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// Suffix of a segment that is still being received. Reserved: no segment
/// name may end with it.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// A message that breaks the protocol. Maps to `Status::invalid_argument`.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid {kind} name {name:?}: {reason}")]
    BadName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("message is missing its {0}")]
    Missing(&'static str),
    #[error("chunk of segment {segment} at offset {offset}: CRC32C mismatch (got {got:#010x}, computed {computed:#010x})")]
    Crc {
        segment: String,
        offset: u64,
        got: u32,
        computed: u32,
    },
    #[error("chunk of {len} bytes exceeds the limit of {MAX_CHUNK_BYTES} bytes")]
    ChunkTooLarge { len: usize },
    #[error("empty chunk")]
    EmptyChunk,
    #[error("seal of segment {0}: sha256 and chain must be 32 bytes each")]
    BadDigest(String),
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    Version(u32),
    #[error("position overflow in segment {0}")]
    Overflow(String),
    #[error("epoch 0 is not valid")]
    ZeroEpoch,
}

impl From<ProtocolError> for tonic::Status {
    fn from(e: ProtocolError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn validate_name(kind: &'static str, name: &str) -> Result<(), ProtocolError> {
    let bad = |reason| ProtocolError::BadName {
        kind,
        name: name.chars().take(MAX_NAME_LEN).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("it is longer than 128 bytes"));
    }
    if name.starts_with('.') {
        return Err(bad("it starts with '.'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(
            "only ASCII letters, digits, '.', '_' and '-' are allowed (no '/', NUL or spaces)",
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// Validates `name`; the only way to make one.
            pub fn new(name: impl Into<String>) -> Result<Self, ProtocolError> {
                let name = name.into();
                Self::check(&name)?;
                Ok(Self(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A stream (one database's log) name, safe to use as a directory name.
    StreamName,
    "stream"
);
name_type!(
    /// A node id, e.g. `verona-db1`.
    NodeId,
    "node"
);
name_type!(
    /// A segment file name, safe to join onto a directory: no separators, no
    /// leading dot, not ending in `.partial`.
    SegmentName,
    "segment"
);

impl StreamName {
    fn check(name: &str) -> Result<(), ProtocolError> {
        validate_name("stream", name)
    }
}

impl NodeId {
    fn check(name: &str) -> Result<(), ProtocolError> {
        validate_name("node", name)
    }
}

impl SegmentName {
    fn check(name: &str) -> Result<(), ProtocolError> {
        validate_name("segment", name)?;
        if name.ends_with(PARTIAL_SUFFIX) {
            return Err(ProtocolError::BadName {
                kind: "segment",
                name: name.to_string(),
                reason: "the suffix '.partial' is reserved",
            });
        }
        Ok(())
    }

    /// File name of the segment while it is being received.
    pub fn partial_file_name(&self) -> String {
        format!("{}{}", self.0, PARTIAL_SUFFIX)
    }
}

/// A stream epoch: a fencing number that only grows; never 0.
pub type Epoch = u64;

/// Opening message of a replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub stream: StreamName,
    pub node_id: NodeId,
    pub epoch: Epoch,
}

/// A verified byte range of one segment (its CRC matched on receipt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub epoch: Epoch,
    pub segment: SegmentName,
    pub segment_start: u64,
    pub offset: u64,
    pub data: Bytes,
    pub source_position: u64,
    pub written_at_ms: u64,
}

impl Chunk {
    /// Stream position just past this chunk.
    pub fn end_position(&self) -> u64 {
        self.segment_start + self.offset + self.data.len() as u64
    }
}

/// A segment's final size and whole-file SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal {
    pub epoch: Epoch,
    pub segment: SegmentName,
    pub segment_start: u64,
    pub size: u64,
    pub sha256: [u8; 32],
    pub source_position: u64,
    /// Hash chain value after this segment (see `drd::chain`).
    pub chain: [u8; 32],
}

/// A validated message from a primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShipMsg {
    Hello(Hello),
    Chunk(Chunk),
    Seal(Seal),
    Keepalive { epoch: Epoch, source_position: u64 },
}

fn check_epoch(epoch: u64) -> Result<Epoch, ProtocolError> {
    if epoch == 0 {
        return Err(ProtocolError::ZeroEpoch);
    }
    Ok(epoch)
}

impl TryFrom<pb::ShipMessage> for ShipMsg {
    type Error = ProtocolError;

    fn try_from(m: pb::ShipMessage) -> Result<Self, Self::Error> {
        use pb::ship_message::Msg;
        match m.msg.ok_or(ProtocolError::Missing("body"))? {
            Msg::Hello(h) => {
                if h.protocol_version != PROTOCOL_VERSION {
                    return Err(ProtocolError::Version(h.protocol_version));
                }
                Ok(ShipMsg::Hello(Hello {
                    stream: StreamName::new(h.stream)?,
                    node_id: NodeId::new(h.node_id)?,
                    epoch: check_epoch(h.epoch)?,
                }))
            }
            Msg::Chunk(c) => {
                let segment = SegmentName::new(c.segment)?;
                if c.data.is_empty() {
                    return Err(ProtocolError::EmptyChunk);
                }
                if c.data.len() > MAX_CHUNK_BYTES {
                    return Err(ProtocolError::ChunkTooLarge { len: c.data.len() });
                }
                c.segment_start
                    .checked_add(c.offset)
                    .and_then(|p| p.checked_add(c.data.len() as u64))
                    .ok_or_else(|| ProtocolError::Overflow(segment.to_string()))?;
                let computed = crc32c::crc32c(&c.data);
                if computed != c.crc32c {
                    return Err(ProtocolError::Crc {
                        segment: segment.to_string(),
                        offset: c.offset,
                        got: c.crc32c,
                        computed,
                    });
                }
                Ok(ShipMsg::Chunk(Chunk {
                    epoch: check_epoch(c.epoch)?,
                    segment,
                    segment_start: c.segment_start,
                    offset: c.offset,
                    data: c.data,
                    source_position: c.source_position,
                    written_at_ms: c.written_at_ms,
                }))
            }
            Msg::Seal(s) => {
                let segment = SegmentName::new(s.segment)?;
                let sha256: [u8; 32] = s
                    .sha256
                    .as_slice()
                    .try_into()
                    .map_err(|_| ProtocolError::BadDigest(segment.to_string()))?;
                let chain: [u8; 32] = s
                    .chain
                    .as_slice()
                    .try_into()
                    .map_err(|_| ProtocolError::BadDigest(segment.to_string()))?;
                s.segment_start
                    .checked_add(s.size)
                    .ok_or_else(|| ProtocolError::Overflow(segment.to_string()))?;
                Ok(ShipMsg::Seal(Seal {
                    epoch: check_epoch(s.epoch)?,
                    segment,
                    segment_start: s.segment_start,
                    size: s.size,
                    sha256,
                    source_position: s.source_position,
                    chain,
                }))
            }
            Msg::Keepalive(k) => Ok(ShipMsg::Keepalive {
                epoch: check_epoch(k.epoch)?,
                source_position: k.source_position,
            }),
        }
    }
}

impl From<ShipMsg> for pb::ShipMessage {
    fn from(m: ShipMsg) -> Self {
        use pb::ship_message::Msg;
        let msg = match m {
            ShipMsg::Hello(h) => Msg::Hello(pb::Hello {
                protocol_version: PROTOCOL_VERSION,
                stream: h.stream.0,
                node_id: h.node_id.0,
                epoch: h.epoch,
            }),
            ShipMsg::Chunk(c) => Msg::Chunk(pb::Chunk {
                epoch: c.epoch,
                segment: c.segment.0,
                segment_start: c.segment_start,
                offset: c.offset,
                crc32c: crc32c::crc32c(&c.data),
                data: c.data,
                source_position: c.source_position,
                written_at_ms: c.written_at_ms,
            }),
            ShipMsg::Seal(s) => Msg::Seal(pb::Seal {
                epoch: s.epoch,
                segment: s.segment.0,
                segment_start: s.segment_start,
                size: s.size,
                sha256: s.sha256.to_vec(),
                source_position: s.source_position,
                chain: s.chain.to_vec(),
            }),
            ShipMsg::Keepalive {
                epoch,
                source_position,
            } => Msg::Keepalive(pb::Keepalive {
                epoch,
                source_position,
            }),
        };
        pb::ShipMessage { msg: Some(msg) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\0b",
            "a b",
            ".hidden",
            "x.partial",
        ] {
            assert!(SegmentName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SegmentName::new("x".repeat(129)).is_err());
        for good in [
            "000000010000000000000001",
            "00000002.history",
            "seg-1_a.backup",
        ] {
            assert!(SegmentName::new(good).is_ok(), "{good:?} refused");
        }
        assert!(StreamName::new("ehr-prod").is_ok());
        assert!(StreamName::new("ehr/prod").is_err());
    }

    #[test]
    fn chunk_crc_is_checked_on_receipt() {
        let good: pb::ShipMessage = ShipMsg::Chunk(Chunk {
            epoch: 1,
            segment: SegmentName::new("seg1").unwrap(),
            segment_start: 0,
            offset: 0,
            data: Bytes::from_static(b"hello"),
            source_position: 5,
            written_at_ms: 0,
        })
        .into();
        assert!(ShipMsg::try_from(good.clone()).is_ok());
        let mut bad = good;
        if let Some(pb::ship_message::Msg::Chunk(c)) = bad.msg.as_mut() {
            c.crc32c ^= 1;
        }
        assert!(matches!(
            ShipMsg::try_from(bad),
            Err(ProtocolError::Crc { .. })
        ));
    }

    #[test]
    fn oversized_and_empty_chunks_are_refused() {
        let mk = |len: usize| pb::ShipMessage {
            msg: Some(pb::ship_message::Msg::Chunk(pb::Chunk {
                epoch: 1,
                segment: "s".into(),
                data: Bytes::from(vec![0u8; len]),
                crc32c: crc32c::crc32c(&vec![0u8; len]),
                ..Default::default()
            })),
        };
        assert_eq!(ShipMsg::try_from(mk(0)), Err(ProtocolError::EmptyChunk));
        assert!(matches!(
            ShipMsg::try_from(mk(MAX_CHUNK_BYTES + 1)),
            Err(ProtocolError::ChunkTooLarge { .. })
        ));
    }
}
