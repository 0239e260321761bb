//! One object's bytes: a two-line plaintext header (a magic line, then the
//! object's record as one line of JSON) followed by the payload — an age
//! file, or the plain bytes where the target said `encryption = "none"`.
//!
//! The record travels inside the object, not in store metadata, so that a
//! single write-once put carries both (one request per object, the same on
//! every kind of store, local directories included), and so that nothing a
//! store can rewrite on its own (metadata) describes the bytes. By hand:
//! `tail -n +3 OBJECT | age -d -i KEY` is the plaintext.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// First line of every object drd writes.
pub const MAGIC: &[u8] = b"drd-object v1\n";

/// Longest record line accepted when reading (a record is ~600 bytes): an
/// object that claims more is not one of ours.
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

/// What an object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A sealed segment, whole.
    Segment,
    /// Bytes `[offset, offset + len)` of a segment that was still growing.
    Partial,
    /// A file kept beside the log (`.history`, `.backup`).
    Side,
}

/// How the payload is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// An age file for the target's X25519 recipients.
    Age,
    /// Plain bytes (`encryption = "none"`, said explicitly in the config).
    None,
}

/// The record at the head of each object: what the payload is and how it
/// links into the stream's hash chain. Carries names, sizes and digests,
/// never log contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: Kind,
    pub stream: String,
    /// Segment (or side file) name.
    pub name: String,
    /// Stream position of the segment's first byte (0 for side files).
    pub start: u64,
    /// Offset in the segment of the payload's first byte (0 but for partials).
    pub offset: u64,
    /// Plaintext bytes.
    pub len: u64,
    /// SHA-256 (hex) of the plaintext.
    pub sha256: String,
    /// Segments: the hash chain value before this segment and after it
    /// (`drd_core::chain::link`), the same values the drd nodes keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_chain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    pub encryption: Encryption,
    /// The payload as stored: its length and SHA-256 (hex). Lets anyone
    /// without the key check that the object is intact.
    pub payload_len: u64,
    pub payload_sha256: String,
    /// The node that wrote the object, its epoch, and when (Unix ms).
    pub node: String,
    pub epoch: u64,
    pub written_at_ms: u64,
}

/// Why bytes read from a store are not a valid object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    #[error("not a drd object (no `drd-object v1` header)")]
    NoMagic,
    #[error("the record line is missing or longer than {MAX_RECORD_BYTES} bytes")]
    NoRecord,
    #[error("the record is not valid: {0}")]
    BadRecord(String),
    #[error(
        "the payload is {found} bytes, the record says {recorded}: the object was cut short \
         or altered"
    )]
    PayloadLength { recorded: u64, found: u64 },
    #[error(
        "the payload's SHA-256 is {found}, the record says {recorded}: the object was altered"
    )]
    PayloadDigest { recorded: String, found: String },
}

/// SHA-256 as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The object's bytes: header, record line, payload. `rec.payload_len` and
/// `rec.payload_sha256` are filled in from `payload`.
pub fn encode(rec: &mut Record, payload: &[u8]) -> Vec<u8> {
    let mut out = header(rec, payload);
    out.extend_from_slice(payload);
    out
}

/// The object's first two lines for `payload` (which follows them, and is
/// sent as a second chunk so that a segment is never copied whole).
pub fn header(rec: &mut Record, payload: &[u8]) -> Vec<u8> {
    header_for(rec, payload.len() as u64, sha256_hex(payload))
}

/// [`header`] for a payload whose length and SHA-256 (hex) are known
/// already (hashed as it was made).
pub fn header_for(rec: &mut Record, payload_len: u64, payload_sha256: String) -> Vec<u8> {
    rec.payload_len = payload_len;
    rec.payload_sha256 = payload_sha256;
    // A struct of strings and integers always serialises.
    let line = serde_json::to_vec(rec).unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC.len() + line.len() + 1);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&line);
    out.push(b'\n');
    out
}

/// Splits an object into its record and payload, checking the payload's
/// length and digest against the record.
pub fn decode(bytes: &[u8]) -> Result<(Record, &[u8]), ObjectError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(ObjectError::NoMagic)?;
    let window = &rest[..rest.len().min(MAX_RECORD_BYTES + 1)];
    let nl = window
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(ObjectError::NoRecord)?;
    let rec: Record =
        serde_json::from_slice(&rest[..nl]).map_err(|e| ObjectError::BadRecord(e.to_string()))?;
    let payload = &rest[nl + 1..];
    if payload.len() as u64 != rec.payload_len {
        return Err(ObjectError::PayloadLength {
            recorded: rec.payload_len,
            found: payload.len() as u64,
        });
    }
    let found = sha256_hex(payload);
    if found != rec.payload_sha256 {
        return Err(ObjectError::PayloadDigest {
            recorded: rec.payload_sha256.clone(),
            found,
        });
    }
    Ok((rec, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record() -> Record {
        Record {
            kind: Kind::Segment,
            stream: "ehr-prod".into(),
            name: "000000010000000000000001".into(),
            start: 0,
            offset: 0,
            len: 5,
            sha256: sha256_hex(b"hello"),
            prev_chain: None,
            chain: None,
            encryption: Encryption::None,
            payload_len: 0,
            payload_sha256: String::new(),
            node: "verona-db1".into(),
            epoch: 1,
            written_at_ms: 1,
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let mut rec = record();
        let bytes = encode(&mut rec, b"hello");
        let (back, payload) = decode(&bytes).unwrap();
        assert_eq!(back, rec);
        assert_eq!(payload, b"hello");
        // `tail -n +3` is the payload.
        let lines: Vec<&[u8]> = bytes.splitn(3, |&b| b == b'\n').collect();
        assert_eq!(lines[2], b"hello");

        let mut cut = bytes.clone();
        cut.pop();
        assert!(matches!(
            decode(&cut),
            Err(ObjectError::PayloadLength { .. })
        ));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode(&flipped),
            Err(ObjectError::PayloadDigest { .. })
        ));
        assert_eq!(decode(b"PAR1...."), Err(ObjectError::NoMagic));
        let mut long = MAGIC.to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES + 10));
        assert_eq!(decode(&long), Err(ObjectError::NoRecord));
    }
}
