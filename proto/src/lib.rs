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
    include!(concat!(env!("OUT_DIR"), "/drd.v1.rs"));
}

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Oldest protocol version this build still accepts from a peer. A release
/// that changes the protocol keeps accepting the previous version for a
/// while, so the two sites can be upgraded one after the other; `drctl
/// status` warns while they differ.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Longest software version string kept from a peer (longer ones are cut).
pub const MAX_SOFTWARE_VERSION_LEN: usize = 64;

/// A peer's software version as it may be shown and logged: printable
/// ASCII only, at most [`MAX_SOFTWARE_VERSION_LEN`] characters.
pub fn sanitize_software_version(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_SOFTWARE_VERSION_LEN)
        .collect()
}

/// The protocol version a peer announced: 0 (a build from before the field
/// existed) means 1, the only version such builds spoke.
pub fn announced_protocol_version(v: u32) -> u32 {
    if v == 0 {
        1
    } else {
        v
    }
}

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
    #[error(
        "unsupported protocol version {0} (this build speaks {MIN_PROTOCOL_VERSION} to \
         {PROTOCOL_VERSION}); upgrade the older site so both run the same drd release"
    )]
    Version(u32),
    #[error("position overflow in segment {0}")]
    Overflow(String),
    /// A value from the peer that cannot be true (a position past the
    /// largest one, a fork outside its segment): named, with what was
    /// expected, instead of wrapping or panicking in arithmetic on it.
    #[error("impossible {what} from the peer: {value}; expected {expected}")]
    Impossible {
        what: &'static str,
        value: String,
        expected: String,
    },
    #[error("epoch 0 is not valid")]
    ZeroEpoch,
    #[error(
        "chunk of segment {segment} at offset {offset}: unknown compression {value} \
         (this build decodes NONE = 0 and ZSTD = 1; upgrade the replica or set \
         `compression = \"none\"` on the primary's stream)"
    )]
    UnknownCompression {
        segment: String,
        offset: u64,
        value: i32,
    },
    #[error(
        "chunk of segment {segment} at offset {offset}: declares {len} uncompressed bytes, \
         over the limit of {MAX_CHUNK_BYTES} bytes"
    )]
    UncompressedTooLarge {
        segment: String,
        offset: u64,
        len: u64,
    },
    #[error(
        "chunk of segment {segment} at offset {offset}: declares {declared} uncompressed bytes \
         but {problem}"
    )]
    UncompressedLength {
        segment: String,
        offset: u64,
        declared: u64,
        problem: String,
    },
    #[error(
        "chunk of segment {segment} at offset {offset}: its zstd data does not decompress \
         within the declared {declared} bytes: {reason}"
    )]
    Decompress {
        segment: String,
        offset: u64,
        declared: u64,
        reason: String,
    },
}

#[cfg(feature = "grpc")]
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
        ///
        /// Shared, not copied, when cloned: an index of a WAL directory
        /// holds the same names in several maps (issue 16: 100,000
        /// segments must fit in the daemon's memory bound).
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(std::sync::Arc<str>);

        impl $ty {
            /// Validates `name`; the only way to make one.
            pub fn new(name: impl Into<String>) -> Result<Self, ProtocolError> {
                let name = name.into();
                Self::check(&name)?;
                Ok(Self(name.into()))
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
    /// The protocol version the sender speaks (within the accepted range).
    /// Senders always announce [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The sender's drd release, sanitized ("" if it sent none).
    pub software_version: String,
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
    /// The source database's end of WAL as the primary last heard it
    /// (`source = "postgres"`; zero otherwise).
    pub source_lsn: SourceLsn,
    /// CRC32C of `data` when it is known without another pass over the
    /// bytes: a chunk received uncompressed carries the wire CRC it was
    /// checked against. `None` for a decompressed chunk and for one built
    /// here. The receiver extends its running CRC of the partial file
    /// with it (`crc32c_combine`) instead of reading the bytes again.
    pub data_crc32c: Option<u32>,
}

/// A PostgreSQL LSN with its timeline, as a primary reports its database's
/// end of WAL (all zero: unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceLsn {
    pub timeline: u32,
    pub lsn: u64,
}

impl Chunk {
    /// Stream position just past this chunk. Checked on receipt to fit in a
    /// u64 (see [`ShipMsg`]'s `TryFrom`); saturates for a chunk built by
    /// hand that does not.
    pub fn end_position(&self) -> u64 {
        self.segment_start
            .saturating_add(self.offset)
            .saturating_add(self.data.len() as u64)
    }
}

/// How a sender encodes chunk payloads on the wire (a stream's `compression`
/// and `compression_level` keys). Receivers always decode both; the domain
/// [`Chunk`] always holds the uncompressed bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Payloads as they are.
    #[default]
    None,
    /// Each chunk one zstd frame at this level. A chunk that zstd does not
    /// make smaller (e.g. already compressed or random data) is sent as it
    /// is, with `NONE`: so a wire payload never exceeds [`MAX_CHUNK_BYTES`],
    /// and the receiver spends no time on a frame that saved nothing.
    Zstd {
        /// zstd level; see [`zstd_levels`].
        level: i32,
    },
}

/// The zstd levels a sender may use (the linked libzstd's range; 1 is
/// fastest of the positive levels, negative levels are faster still and
/// compress less).
pub fn zstd_levels() -> std::ops::RangeInclusive<i32> {
    zstd::compression_level_range()
}

impl Compression {
    /// What to send to the peer that answered with `welcome`: `self` if the
    /// replica said it decodes it, else `None` (a replica from before
    /// compression existed lists nothing, and must never receive bytes it
    /// would store as they arrive).
    pub fn accepted_by(self, welcome: &pb::Welcome) -> Compression {
        let wire = match self {
            Compression::None => return Compression::None,
            Compression::Zstd { .. } => pb::Compression::Zstd,
        };
        if welcome.accepts_compression.contains(&(wire as i32)) {
            self
        } else {
            Compression::None
        }
    }
}

/// The encodings a replica of this build lists in its Welcome.
pub fn accepted_compressions() -> Vec<i32> {
    vec![pb::Compression::Zstd as i32]
}

thread_local! {
    /// One zstd compression context per thread, reused across chunks (a
    /// fresh context allocates and zeroes its tables every time).
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// One zstd decompression context per thread, reused across chunks.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `data` as one zstd frame at `level`, or None if that is not smaller than
/// `data` (or zstd failed, which the caller treats the same: send as is).
pub fn zstd_compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = slot.as_mut()?;
        // Room for no more than `data` itself: zstd stops with "destination
        // too small" as soon as compressing cannot pay off.
        let mut out = Vec::with_capacity(data.len());
        c.compress_to_buffer(data, &mut out).ok()?;
        (out.len() < data.len()).then_some(out)
    })
}

/// Decompresses one chunk's zstd payload into at most `capacity` bytes
/// (never more: a hostile frame cannot make the receiver allocate beyond
/// it). Errors carry zstd's reason.
pub fn zstd_decompress(data: &[u8], capacity: usize) -> Result<Vec<u8>, String> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match &mut *slot {
            Some(d) => d,
            empty => empty.insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
        };
        d.decompress(data, capacity).map_err(|e| e.to_string())
    })
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
    Keepalive {
        epoch: Epoch,
        source_position: u64,
        source_lsn: SourceLsn,
    },
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
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.protocol_version) {
                    return Err(ProtocolError::Version(h.protocol_version));
                }
                Ok(ShipMsg::Hello(Hello {
                    stream: StreamName::new(h.stream)?,
                    node_id: NodeId::new(h.node_id)?,
                    epoch: check_epoch(h.epoch)?,
                    protocol_version: h.protocol_version,
                    software_version: sanitize_software_version(&h.software_version),
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
                // The CRC covers the bytes as sent: corruption in flight is
                // caught before anything is decompressed.
                let computed = crc32c::crc32c(&c.data);
                if computed != c.crc32c && !mutation::skip_crc() {
                    return Err(ProtocolError::Crc {
                        segment: segment.to_string(),
                        offset: c.offset,
                        got: c.crc32c,
                        computed,
                    });
                }
                let plain = c.compression == pb::Compression::None as i32;
                let data = decode_payload(
                    &segment,
                    c.offset,
                    c.compression,
                    c.uncompressed_length,
                    c.data,
                )?;
                // Uncompressed, `data` is the bytes `computed` was taken of.
                let data_crc32c = plain.then_some(computed);
                c.segment_start
                    .checked_add(c.offset)
                    .and_then(|p| p.checked_add(data.len() as u64))
                    .ok_or_else(|| ProtocolError::Overflow(segment.to_string()))?;
                Ok(ShipMsg::Chunk(Chunk {
                    epoch: check_epoch(c.epoch)?,
                    segment,
                    segment_start: c.segment_start,
                    offset: c.offset,
                    data,
                    source_position: c.source_position,
                    written_at_ms: c.written_at_ms,
                    source_lsn: SourceLsn {
                        timeline: c.source_timeline,
                        lsn: c.source_lsn,
                    },
                    data_crc32c,
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
                source_lsn: SourceLsn {
                    timeline: k.source_timeline,
                    lsn: k.source_lsn,
                },
            }),
        }
    }
}

/// Checks a replica's Welcome on receipt, before the primary resumes from
/// it: the last segment it names must be a valid name whose end
/// (`last_segment_start + last_segment_size`) is a position, so no
/// arithmetic on it can wrap.
pub fn check_welcome(w: &pb::Welcome) -> Result<(), ProtocolError> {
    if w.last_segment.is_empty() {
        return Ok(());
    }
    SegmentName::new(w.last_segment.clone())?;
    if w.last_segment_start
        .checked_add(w.last_segment_size)
        .is_none()
    {
        return Err(ProtocolError::Impossible {
            what: "resume point",
            value: format!(
                "last segment {} at position {} with {} bytes",
                w.last_segment, w.last_segment_start, w.last_segment_size
            ),
            expected: format!("start + size at most {}", u64::MAX),
        });
    }
    Ok(())
}

/// A chunk's payload as the receiver stores it: `data` itself with NONE,
/// decompressed (bounded by the declared length) with ZSTD. `data` has
/// passed its CRC already.
fn decode_payload(
    segment: &SegmentName,
    offset: u64,
    compression: i32,
    declared: u64,
    data: Bytes,
) -> Result<Bytes, ProtocolError> {
    let length = |problem: String| ProtocolError::UncompressedLength {
        segment: segment.to_string(),
        offset,
        declared,
        problem,
    };
    match pb::Compression::try_from(compression) {
        Ok(pb::Compression::None) => {
            if declared != 0 {
                return Err(length(
                    "the chunk is not compressed (the length is for ZSTD only)".into(),
                ));
            }
            Ok(data)
        }
        Ok(pb::Compression::Zstd) => {
            if declared == 0 {
                return Err(length("a chunk may not be empty".into()));
            }
            if declared > MAX_CHUNK_BYTES as u64 {
                return Err(ProtocolError::UncompressedTooLarge {
                    segment: segment.to_string(),
                    offset,
                    len: declared,
                });
            }
            let out = zstd_decompress(&data, declared as usize).map_err(|reason| {
                ProtocolError::Decompress {
                    segment: segment.to_string(),
                    offset,
                    declared,
                    reason,
                }
            })?;
            if out.len() as u64 != declared {
                return Err(length(format!("decompresses to {} bytes", out.len())));
            }
            Ok(Bytes::from(out))
        }
        Err(_) => Err(ProtocolError::UnknownCompression {
            segment: segment.to_string(),
            offset,
            value: compression,
        }),
    }
}

impl ShipMsg {
    /// The wire message, with a chunk's payload encoded as `compression`
    /// says (compressed only if that makes it smaller; see
    /// [`Compression::Zstd`]). Other messages are the same either way.
    pub fn to_wire(self, compression: Compression) -> pb::ShipMessage {
        match (self, compression) {
            (ShipMsg::Chunk(c), Compression::Zstd { level }) => {
                match zstd_compress(&c.data, level) {
                    Some(z) => {
                        let data = Bytes::from(z);
                        pb::ShipMessage {
                            msg: Some(pb::ship_message::Msg::Chunk(pb::Chunk {
                                epoch: c.epoch,
                                segment: c.segment.0.to_string(),
                                segment_start: c.segment_start,
                                offset: c.offset,
                                crc32c: crc32c::crc32c(&data),
                                uncompressed_length: c.data.len() as u64,
                                data,
                                source_position: c.source_position,
                                written_at_ms: c.written_at_ms,
                                compression: pb::Compression::Zstd as i32,
                                source_lsn: c.source_lsn.lsn,
                                source_timeline: c.source_lsn.timeline,
                            })),
                        }
                    }
                    None => ShipMsg::Chunk(c).into(),
                }
            }
            (m, _) => m.into(),
        }
    }
}

impl From<ShipMsg> for pb::ShipMessage {
    /// The wire message with chunk payloads uncompressed.
    fn from(m: ShipMsg) -> Self {
        use pb::ship_message::Msg;
        let msg = match m {
            ShipMsg::Hello(h) => Msg::Hello(pb::Hello {
                protocol_version: h.protocol_version,
                stream: h.stream.0.to_string(),
                node_id: h.node_id.0.to_string(),
                epoch: h.epoch,
                software_version: h.software_version,
            }),
            ShipMsg::Chunk(c) => Msg::Chunk(pb::Chunk {
                epoch: c.epoch,
                segment: c.segment.0.to_string(),
                segment_start: c.segment_start,
                offset: c.offset,
                crc32c: crc32c::crc32c(&c.data),
                data: c.data,
                source_position: c.source_position,
                written_at_ms: c.written_at_ms,
                compression: pb::Compression::None as i32,
                uncompressed_length: 0,
                source_lsn: c.source_lsn.lsn,
                source_timeline: c.source_lsn.timeline,
            }),
            ShipMsg::Seal(s) => Msg::Seal(pb::Seal {
                epoch: s.epoch,
                segment: s.segment.0.to_string(),
                segment_start: s.segment_start,
                size: s.size,
                sha256: s.sha256.to_vec(),
                source_position: s.source_position,
                chain: s.chain.to_vec(),
            }),
            ShipMsg::Keepalive {
                epoch,
                source_position,
                source_lsn,
            } => Msg::Keepalive(pb::Keepalive {
                epoch,
                source_position,
                source_lsn: source_lsn.lsn,
                source_timeline: source_lsn.timeline,
            }),
        };
        pb::ShipMessage { msg: Some(msg) }
    }
}

/// drd-sim's planted bug in this crate (see `drd-sim --list-mutations`):
/// without the `mutations` feature every switch is a constant `false`.
pub mod mutation {
    #[cfg(feature = "mutations")]
    thread_local! {
        static SKIP_CRC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Whether a chunk's CRC32C is ignored on receipt (the planted bug).
    #[inline(always)]
    pub fn skip_crc() -> bool {
        #[cfg(feature = "mutations")]
        {
            SKIP_CRC.with(|c| c.get())
        }
        #[cfg(not(feature = "mutations"))]
        {
            false
        }
    }

    /// Plants (or removes) the bug on this thread.
    #[cfg(feature = "mutations")]
    pub fn set_skip_crc(on: bool) {
        SKIP_CRC.with(|c| c.set(on));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_welcome_whose_resume_point_overflows_is_refused() {
        let mut w = pb::Welcome {
            last_segment: "000000010000000000000003".into(),
            last_segment_start: 32 << 20,
            last_segment_size: 5000,
            ..Default::default()
        };
        assert_eq!(check_welcome(&w), Ok(()));
        w.last_segment_size = u64::MAX;
        let e = check_welcome(&w).unwrap_err().to_string();
        assert!(
            e.contains("impossible resume point")
                && e.contains(&u64::MAX.to_string())
                && e.contains("000000010000000000000003"),
            "{e}"
        );
        w.last_segment_size = 0;
        w.last_segment_start = u64::MAX;
        assert!(
            check_welcome(&w).is_ok(),
            "position 2^64-1 itself is a position"
        );
        w.last_segment_size = 1;
        assert!(check_welcome(&w).is_err());
        w.last_segment = "../x".into();
        assert!(matches!(
            check_welcome(&w),
            Err(ProtocolError::BadName { .. })
        ));
        // Nothing held: the sizes are not used.
        let empty = pb::Welcome {
            last_segment_start: u64::MAX,
            last_segment_size: u64::MAX,
            ..Default::default()
        };
        assert_eq!(check_welcome(&empty), Ok(()));
        let c = Chunk {
            epoch: 1,
            segment: SegmentName::new("a").unwrap(),
            segment_start: u64::MAX,
            offset: u64::MAX,
            data: Bytes::from_static(b"x"),
            source_position: 0,
            written_at_ms: 0,
            source_lsn: Default::default(),
            data_crc32c: None,
        };
        assert_eq!(c.end_position(), u64::MAX, "saturates, never wraps");
    }

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
            source_lsn: Default::default(),
            data_crc32c: None,
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

    fn chunk(data: Vec<u8>) -> Chunk {
        Chunk {
            epoch: 3,
            segment: SegmentName::new("000000010000000000000001").unwrap(),
            segment_start: 16 << 20,
            offset: 4096,
            data: Bytes::from(data),
            source_position: 99 << 20,
            written_at_ms: 1_700_000_000_000,
            source_lsn: Default::default(),
            data_crc32c: None,
        }
    }

    /// WAL-like bytes: repetitive records with a counter in them.
    fn compressible(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut i = 0u32;
        while v.len() < len {
            v.extend_from_slice(b"INSERT INTO pgbench_history VALUES (");
            v.extend_from_slice(&i.to_le_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    /// Bytes zstd cannot shrink (xorshift64*).
    fn random(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    fn wire_chunk(m: &pb::ShipMessage) -> &pb::Chunk {
        match m.msg.as_ref() {
            Some(pb::ship_message::Msg::Chunk(c)) => c,
            other => panic!("not a chunk: {other:?}"),
        }
    }

    fn wire_chunk_mut(m: &mut pb::ShipMessage) -> &mut pb::Chunk {
        match m.msg.as_mut() {
            Some(pb::ship_message::Msg::Chunk(c)) => c,
            other => panic!("not a chunk: {other:?}"),
        }
    }

    const ZSTD1: Compression = Compression::Zstd { level: 1 };

    #[test]
    fn compressible_chunks_round_trip_through_zstd() {
        for len in [1, 100, 4096, MAX_CHUNK_BYTES] {
            let c = chunk(compressible(len));
            let wire = ShipMsg::Chunk(c.clone()).to_wire(ZSTD1);
            let w = wire_chunk(&wire);
            if len >= 4096 {
                assert_eq!(w.compression, pb::Compression::Zstd as i32, "len {len}");
                assert_eq!(w.uncompressed_length, len as u64);
                assert!(
                    w.data.len() < len / 4,
                    "len {len}: {} on the wire",
                    w.data.len()
                );
                assert_eq!(w.crc32c, crc32c::crc32c(&w.data), "CRC over the wire bytes");
            }
            // A decompressed chunk's CRC is not known without a pass; an
            // uncompressed one carries the wire CRC it was checked against.
            let expect = Chunk {
                data_crc32c: (w.compression == pb::Compression::None as i32)
                    .then(|| crc32c::crc32c(&c.data)),
                ..c
            };
            assert_eq!(ShipMsg::try_from(wire).unwrap(), ShipMsg::Chunk(expect));
        }
    }

    #[test]
    fn incompressible_chunks_go_uncompressed() {
        let c = chunk(random(MAX_CHUNK_BYTES));
        let wire = ShipMsg::Chunk(c.clone()).to_wire(ZSTD1);
        let w = wire_chunk(&wire);
        assert_eq!(w.compression, pb::Compression::None as i32);
        assert_eq!(w.uncompressed_length, 0);
        assert_eq!(w.data, c.data);
        let received = Chunk {
            data_crc32c: Some(crc32c::crc32c(&c.data)),
            ..c.clone()
        };
        assert_eq!(ShipMsg::try_from(wire).unwrap(), ShipMsg::Chunk(received));
        // And without compression nothing changes at all.
        let plain = ShipMsg::Chunk(c.clone()).to_wire(Compression::None);
        assert_eq!(plain, pb::ShipMessage::from(ShipMsg::Chunk(c)));
    }

    /// A chunk compressed honestly, then `edit`ed; CRC recomputed over the
    /// edited wire bytes unless `edit` breaks it on purpose.
    fn tampered(edit: impl FnOnce(&mut pb::Chunk)) -> Result<ShipMsg, ProtocolError> {
        let mut wire = ShipMsg::Chunk(chunk(compressible(64 * 1024))).to_wire(ZSTD1);
        let w = wire_chunk_mut(&mut wire);
        assert_eq!(w.compression, pb::Compression::Zstd as i32);
        edit(w);
        ShipMsg::try_from(wire)
    }

    fn fix_crc(w: &mut pb::Chunk) {
        w.crc32c = crc32c::crc32c(&w.data);
    }

    #[test]
    fn hostile_compressed_chunks_are_refused() {
        // Flipped in flight: the CRC over the wire bytes catches it before
        // anything is decompressed.
        let e = tampered(|w| {
            let mut d = w.data.to_vec();
            d[10] ^= 1;
            w.data = Bytes::from(d);
        });
        assert!(matches!(e, Err(ProtocolError::Crc { .. })), "{e:?}");
        // Unknown encoding.
        let e = tampered(|w| w.compression = 7).unwrap_err();
        assert!(matches!(
            e,
            ProtocolError::UnknownCompression { value: 7, .. }
        ));
        assert!(e.to_string().contains("unknown compression 7"), "{e}");
        // Declares more than any chunk may hold.
        let e = tampered(|w| w.uncompressed_length = MAX_CHUNK_BYTES as u64 + 1).unwrap_err();
        assert!(
            matches!(e, ProtocolError::UncompressedTooLarge { .. }),
            "{e}"
        );
        let e = tampered(|w| w.uncompressed_length = u64::MAX).unwrap_err();
        assert!(
            matches!(e, ProtocolError::UncompressedTooLarge { .. }),
            "{e}"
        );
        // Declares more than the frame holds: decompresses short.
        let e = tampered(|w| w.uncompressed_length += 1).unwrap_err();
        assert!(matches!(e, ProtocolError::UncompressedLength { .. }), "{e}");
        assert!(e.to_string().contains("decompresses to 65536 bytes"), "{e}");
        // Declares less than the frame holds: refused, never written past.
        let e = tampered(|w| w.uncompressed_length -= 1).unwrap_err();
        assert!(matches!(e, ProtocolError::Decompress { .. }), "{e}");
        // ZSTD with no length, NONE with one.
        let e = tampered(|w| w.uncompressed_length = 0).unwrap_err();
        assert!(matches!(e, ProtocolError::UncompressedLength { .. }), "{e}");
        let e = tampered(|w| {
            w.compression = pb::Compression::None as i32;
        })
        .unwrap_err();
        assert!(matches!(e, ProtocolError::UncompressedLength { .. }), "{e}");
        // Not zstd at all, with a matching CRC.
        let e = tampered(|w| {
            w.data = Bytes::from(random(4096));
            fix_crc(w);
        })
        .unwrap_err();
        assert!(matches!(e, ProtocolError::Decompress { .. }), "{e}");
        // A truncated frame.
        let e = tampered(|w| {
            w.data = w.data.slice(..w.data.len() / 2);
            fix_crc(w);
        })
        .unwrap_err();
        assert!(
            matches!(
                e,
                ProtocolError::Decompress { .. } | ProtocolError::UncompressedLength { .. }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_zstd_bomb_is_refused_within_the_declared_room() {
        // 64 MiB of zeros in a few KiB: small on the wire, far over the limit
        // once decompressed. The receiver stops at the declared 1 MiB.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 1).unwrap();
        assert!(bomb.len() < MAX_CHUNK_BYTES);
        let e = tampered(|w| {
            w.data = Bytes::from(bomb);
            w.uncompressed_length = MAX_CHUNK_BYTES as u64;
            fix_crc(w);
        })
        .unwrap_err();
        assert!(matches!(e, ProtocolError::Decompress { .. }), "{e}");
    }

    #[test]
    fn compression_is_used_only_with_a_replica_that_accepts_it() {
        let old = pb::Welcome::default();
        assert_eq!(ZSTD1.accepted_by(&old), Compression::None);
        let new = pb::Welcome {
            accepts_compression: accepted_compressions(),
            ..Default::default()
        };
        assert_eq!(ZSTD1.accepted_by(&new), ZSTD1);
        assert_eq!(Compression::None.accepted_by(&new), Compression::None);
        assert!(zstd_levels().contains(&1) && zstd_levels().contains(&22));
    }

    #[test]
    fn hello_carries_versions_within_the_accepted_range() {
        let hello = |v: u32, sw: &str| pb::ShipMessage {
            msg: Some(pb::ship_message::Msg::Hello(pb::Hello {
                protocol_version: v,
                stream: "ehr-prod".into(),
                node_id: "verona-db1".into(),
                epoch: 1,
                software_version: sw.into(),
            })),
        };
        match ShipMsg::try_from(hello(PROTOCOL_VERSION, "0.1.0 (git abc)\x1b[2J")).unwrap() {
            ShipMsg::Hello(h) => {
                assert_eq!(h.protocol_version, PROTOCOL_VERSION);
                // Control characters from the network never reach a terminal.
                assert_eq!(h.software_version, "0.1.0 (git abc)[2J");
            }
            m => panic!("{m:?}"),
        }
        let long = "9".repeat(500);
        match ShipMsg::try_from(hello(PROTOCOL_VERSION, &long)).unwrap() {
            ShipMsg::Hello(h) => assert_eq!(h.software_version.len(), MAX_SOFTWARE_VERSION_LEN),
            m => panic!("{m:?}"),
        }
        for v in [0, PROTOCOL_VERSION + 1] {
            let e = ShipMsg::try_from(hello(v, "")).unwrap_err();
            assert_eq!(e, ProtocolError::Version(v));
            assert!(e.to_string().contains("upgrade the older site"), "{e}");
        }
        assert_eq!(announced_protocol_version(0), 1);
        assert_eq!(announced_protocol_version(3), 3);
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
