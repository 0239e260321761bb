//! A stream's log in a bucket: which object holds what, writing it once,
//! and reading it back verified.
//!
//! Keys below the target's prefix:
//! - `seg/NAME` — a sealed segment, whole, linked into the hash chain;
//! - `part/NAME/OFFSET-END-NONCE` — bytes `[OFFSET, END)` of a segment that
//!   was still growing (hex offsets; a nonce keeps every name unique, so no
//!   upload ever needs to replace one);
//! - `side/NAME` — a side file (`.history`).
//!
//! Nothing is ever rewritten or deleted by drd, so the bucket can be WORM
//! (S3 Object Lock, Azure immutable blobs, GCS retention lock). Old
//! partials are superseded by the sealed segment, not removed: a lifecycle
//! rule on `part/` may expire them once the bucket's retention allows.

use crate::crypto::{CryptoError, Opener, Sealer};
use crate::object::{self, Kind, ObjectError, Record};
use crate::store::{Bucket, Put, StoreError};
use bytes::Bytes;

/// Key of a sealed segment.
pub fn segment_key(name: &str) -> String {
    format!("seg/{name}")
}

/// Key of a side file.
pub fn side_key(name: &str) -> String {
    format!("side/{name}")
}

/// Key of a partial upload of `name`'s bytes `[offset, end)`.
pub fn partial_key(name: &str, offset: u64, end: u64, nonce: u32) -> String {
    format!("part/{name}/{offset:016x}-{end:016x}-{nonce:08x}")
}

/// `(offset, end)` of a partial's key (its last path element).
pub fn parse_partial(last: &str) -> Option<(u64, u64)> {
    let mut it = last.split('-');
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let end = u64::from_str_radix(it.next()?, 16).ok()?;
    u32::from_str_radix(it.next()?, 16).ok()?;
    (it.next().is_none() && end > offset).then_some((offset, end))
}

/// Largest object drd reads back: a segment (PostgreSQL's are at most
/// 1 GiB) with age's overhead and the header.
pub const MAX_OBJECT_BYTES: u64 = (1 << 30) + (1 << 20);

/// Keys per listing request.
pub const LIST_PAGE: usize = 1000;

/// What went wrong with an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("{key}: {source}")]
    Object { key: String, source: ObjectError },
    #[error(
        "{key} already exists in the bucket with other content ({found}); drd never overwrites \
         an object. Either another node ships this stream to the same prefix (give each \
         stream its own prefix), or the bucket was tampered with: compare with `drctl verify \
         --from`"
    )]
    Conflict { key: String, found: String },
    #[error(
        "{key}: the plaintext does not match its record ({why}); the object was altered \
         before it was encrypted, or encrypted for another record"
    )]
    Plaintext { key: String, why: String },
    #[error("cannot read {name} here to upload it: {why}")]
    Read { name: String, why: String },
}

/// One write's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    /// The same content was there already (a retry, or a restart after an
    /// upload whose acknowledgement was lost).
    AlreadyThere,
}

/// Where an object's payload sits: its kind, segment (or side file) name,
/// the segment's stream position and the payload's offset in it.
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    kind: Kind,
    name: &'a str,
    start: u64,
    offset: u64,
}

/// A sealed segment to write.
#[derive(Debug, Clone)]
pub struct SealedSegment<'a> {
    pub name: &'a str,
    /// Stream position of its first byte.
    pub start: u64,
    pub bytes: &'a [u8],
    /// The chain value before it, and after it.
    pub prev_chain: [u8; 32],
    pub chain: [u8; 32],
    pub epoch: u64,
}

/// A sealed segment's object, encrypted and ready to put.
pub struct Prepared {
    key: String,
    rec: Record,
    parts: Vec<Bytes>,
}

impl Prepared {
    /// SHA-256 (hex) of the plaintext the object holds.
    pub fn plain_sha256(&self) -> &str {
        &self.rec.sha256
    }
}

/// A restored segment (or the longest prefix of one that the bucket holds).
#[derive(Debug)]
pub struct Restored {
    pub bytes: Vec<u8>,
    /// False: pieced from partial uploads; the segment was still growing.
    pub complete: bool,
    /// Objects read.
    pub objects: usize,
}

/// A stream's log in one bucket, as a writer (the shipping node) or a
/// reader (drctl at the restore site) sees it.
#[derive(Clone)]
pub struct Archive {
    pub bucket: Bucket,
    stream: String,
    node: String,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Archive {
    pub fn new(bucket: Bucket, stream: &str, node: &str) -> Self {
        Archive {
            bucket,
            stream: stream.to_string(),
            node: node.to_string(),
        }
    }

    /// The record of `bytes`, placed as `at` says.
    fn record(&self, at: At<'_>, bytes: &[u8], epoch: u64, sealer: &Sealer) -> Record {
        self.record_for(
            at,
            bytes.len() as u64,
            object::sha256_hex(bytes),
            epoch,
            sealer,
        )
    }

    /// The record of `len` bytes whose SHA-256 (hex) is `sha256`.
    fn record_for(
        &self,
        at: At<'_>,
        len: u64,
        sha256: String,
        epoch: u64,
        sealer: &Sealer,
    ) -> Record {
        Record {
            kind: at.kind,
            stream: self.stream.clone(),
            name: at.name.to_string(),
            start: at.start,
            offset: at.offset,
            len,
            sha256,
            prev_chain: None,
            chain: None,
            encryption: sealer.encryption(),
            payload_len: 0,
            payload_sha256: String::new(),
            node: self.node.clone(),
            epoch,
            written_at_ms: now_ms(),
        }
    }

    /// Writes a sealed segment once. If its key is taken, the object there
    /// must describe the same bytes (name, size, SHA-256, chain) and be
    /// intact; anything else is a [`ArchiveError::Conflict`] and the
    /// object is left alone.
    pub async fn write_segment(
        &self,
        sealer: &Sealer,
        seg: &SealedSegment<'_>,
    ) -> Result<Written, ArchiveError> {
        let prepared = self.prepare_segment(sealer, seg)?;
        self.put_segment(prepared).await
    }

    /// The CPU half of [`Archive::write_segment`]: the record and the
    /// encrypted payload, ready to put. Once it returns, the caller may drop
    /// the plaintext (a segment is then held once, encrypted, not twice).
    pub fn prepare_segment(
        &self,
        sealer: &Sealer,
        seg: &SealedSegment<'_>,
    ) -> Result<Prepared, ArchiveError> {
        let mut src = seg.bytes;
        self.prepare_segment_from(sealer, seg, &mut src, seg.bytes.len() as u64)
    }

    /// [`Archive::prepare_segment`] of `len` bytes read from `src` (a
    /// segment file) instead of `seg.bytes`, which is not read: the
    /// plaintext streams through [`Sealer::seal_from`], so only the
    /// encrypted payload is held, and it is hashed (SHA-256) on the way.
    /// The caller checks [`Prepared::plain_sha256`] against what it
    /// recorded before it puts the object.
    pub fn prepare_segment_from(
        &self,
        sealer: &Sealer,
        seg: &SealedSegment<'_>,
        src: &mut dyn std::io::Read,
        len: u64,
    ) -> Result<Prepared, ArchiveError> {
        let at = At {
            kind: Kind::Segment,
            name: seg.name,
            start: seg.start,
            offset: 0,
        };
        let sealed = sealer.seal_from(src, len).map_err(|e| ArchiveError::Read {
            name: seg.name.to_string(),
            why: e.to_string(),
        })?;
        let mut rec = self.record_for(at, len, hex::encode(sealed.plain_sha256), seg.epoch, sealer);
        rec.prev_chain = Some(hex::encode(seg.prev_chain));
        rec.chain = Some(hex::encode(seg.chain));
        let payload_len = sealed.payload.len() as u64;
        let head = Bytes::from(object::header_for(
            &mut rec,
            payload_len,
            hex::encode(sealed.payload_sha256),
        ));
        Ok(Prepared {
            key: segment_key(seg.name),
            rec,
            parts: vec![head, Bytes::from(sealed.payload)],
        })
    }

    /// The I/O half of [`Archive::write_segment`].
    pub async fn put_segment(&self, prepared: Prepared) -> Result<Written, ArchiveError> {
        let Prepared { key, rec, parts } = prepared;
        match self.bucket.put_new_parts(&key, parts).await? {
            Put::Created => Ok(Written::Created),
            Put::Exists => {
                let found = self.bucket.get(&key).await?;
                let Some(found) = found else {
                    // Taken a moment ago, gone now: a store that lets
                    // objects be deleted. Not ours to paper over.
                    return Err(ArchiveError::Conflict {
                        key,
                        found: "an object that vanished while being compared".into(),
                    });
                };
                let (theirs, _) = object::decode(&found).map_err(|e| ArchiveError::Conflict {
                    key: key.clone(),
                    found: e.to_string(),
                })?;
                let same = theirs.kind == Kind::Segment
                    && theirs.name == rec.name
                    && theirs.len == rec.len
                    && theirs.sha256 == rec.sha256
                    && theirs.chain == rec.chain
                    && theirs.start == rec.start;
                if same {
                    Ok(Written::AlreadyThere)
                } else {
                    Err(ArchiveError::Conflict {
                        key,
                        found: format!(
                            "{} bytes, SHA-256 {}, written by {} at epoch {}; this node has {} \
                             bytes, SHA-256 {}",
                            theirs.len,
                            theirs.sha256,
                            theirs.node,
                            theirs.epoch,
                            rec.len,
                            rec.sha256
                        ),
                    })
                }
            }
        }
    }

    /// Uploads bytes `[offset, offset + bytes.len())` of a growing segment
    /// under a fresh unique key; returns the key.
    pub async fn write_partial(
        &self,
        sealer: &Sealer,
        name: &str,
        start: u64,
        offset: u64,
        bytes: &[u8],
        epoch: u64,
    ) -> Result<String, ArchiveError> {
        let end = offset + bytes.len() as u64;
        let at = At {
            kind: Kind::Partial,
            name,
            start,
            offset,
        };
        let mut rec = self.record(at, bytes, epoch, sealer);
        let payload = sealer.seal(bytes)?;
        let obj = Bytes::from(object::encode(&mut rec, &payload));
        // A nonce collision (one in 2^32 for the same range) just draws again.
        for _ in 0..4 {
            let key = partial_key(name, offset, end, rand::random());
            if self.bucket.put_new(&key, obj.clone()).await? == Put::Created {
                return Ok(key);
            }
        }
        Err(ArchiveError::Conflict {
            key: partial_key(name, offset, end, 0),
            found: "four unique names in a row were taken".into(),
        })
    }

    /// Writes a side file once (same rules as a segment, without a chain).
    pub async fn write_side(
        &self,
        sealer: &Sealer,
        name: &str,
        bytes: &[u8],
        epoch: u64,
    ) -> Result<Written, ArchiveError> {
        let key = side_key(name);
        let at = At {
            kind: Kind::Side,
            name,
            start: 0,
            offset: 0,
        };
        let mut rec = self.record(at, bytes, epoch, sealer);
        let payload = sealer.seal(bytes)?;
        let obj = Bytes::from(object::encode(&mut rec, &payload));
        match self.bucket.put_new(&key, obj).await? {
            Put::Created => Ok(Written::Created),
            Put::Exists => {
                let found = self.bucket.get(&key).await?.unwrap_or_default();
                match object::decode(&found) {
                    Ok((t, _)) if t.sha256 == rec.sha256 && t.len == rec.len => {
                        Ok(Written::AlreadyThere)
                    }
                    Ok((t, _)) => Err(ArchiveError::Conflict {
                        key,
                        found: format!("{} bytes, SHA-256 {}", t.len, t.sha256),
                    }),
                    Err(e) => Err(ArchiveError::Conflict {
                        key,
                        found: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Reads one object, checks it is intact and opens its payload; the
    /// plaintext is checked against the record.
    pub async fn read_object(
        &self,
        opener: &Opener,
        key: &str,
    ) -> Result<Option<(Record, Vec<u8>)>, ArchiveError> {
        let Some(bytes) = self.bucket.get(key).await? else {
            return Ok(None);
        };
        let (rec, payload) = object::decode(&bytes).map_err(|source| ArchiveError::Object {
            key: key.to_string(),
            source,
        })?;
        let plain = opener.open(&rec, payload)?;
        check_plaintext(key, &rec, &plain)?;
        Ok(Some((rec, plain)))
    }

    /// The segment `name`: the sealed object, or else the longest
    /// contiguous prefix the partial uploads hold. None: nothing of it.
    pub async fn fetch(
        &self,
        opener: &Opener,
        name: &str,
    ) -> Result<Option<Restored>, ArchiveError> {
        let key = segment_key(name);
        if let Some((rec, bytes)) = self.read_object(opener, &key).await? {
            if rec.kind != Kind::Segment || rec.name != name {
                return Err(ArchiveError::Plaintext {
                    key,
                    why: format!("the record names {:?} {}", rec.kind, rec.name),
                });
            }
            return Ok(Some(Restored {
                bytes,
                complete: true,
                objects: 1,
            }));
        }
        // The partial uploads of a segment still growing when the shipping
        // stopped: (offset, end, key), every page of them.
        let dir = format!("part/{name}/");
        let mut parts = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.bucket.list(&dir, after.as_deref(), LIST_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for l in &page {
                if let Some((o, e)) = l.key.rsplit('/').next().and_then(parse_partial) {
                    parts.push((o, e, l.key.clone()));
                }
            }
            if page.len() < LIST_PAGE {
                break;
            }
        }
        let mut out = Vec::new();
        let mut objects = 0;
        loop {
            let at = out.len() as u64;
            // The partial that starts here and reaches furthest.
            let Some((_, _, key)) = parts
                .iter()
                .filter(|(o, _, _)| *o == at)
                .max_by_key(|(_, e, _)| *e)
                .cloned()
            else {
                break;
            };
            let Some((rec, bytes)) = self.read_object(opener, &key).await? else {
                break;
            };
            if rec.kind != Kind::Partial || rec.name != name || rec.offset != at {
                return Err(ArchiveError::Plaintext {
                    key,
                    why: format!("the record says {} at offset {}", rec.name, rec.offset),
                });
            }
            objects += 1;
            out.extend_from_slice(&bytes);
            parts.retain(|(o, _, _)| *o > at);
        }
        Ok((objects > 0).then_some(Restored {
            bytes: out,
            complete: false,
            objects,
        }))
    }
}

/// The plaintext's length and digest must be the record's.
fn check_plaintext(key: &str, rec: &Record, plain: &[u8]) -> Result<(), ArchiveError> {
    if plain.len() as u64 != rec.len {
        return Err(ArchiveError::Plaintext {
            key: key.to_string(),
            why: format!("{} bytes, the record says {}", plain.len(), rec.len),
        });
    }
    let sha = object::sha256_hex(plain);
    if sha != rec.sha256 {
        return Err(ArchiveError::Plaintext {
            key: key.to_string(),
            why: format!("SHA-256 {sha}, the record says {}", rec.sha256),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RetryPolicy;
    use drd_core::chain;

    fn archive(dir: &std::path::Path) -> Archive {
        let url = format!("file://{}", dir.display());
        Archive::new(
            Bucket::open(&url, None, RetryPolicy::default()).unwrap(),
            "ehr",
            "verona",
        )
    }

    #[tokio::test]
    async fn write_once_fetch_and_partials() {
        let dir = tempfile::tempdir().unwrap();
        let a = archive(dir.path());
        let (secret, public) = crate::crypto::generate();
        let sealer = Sealer::from_config(&[public], None).unwrap();
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key.path(), &secret).unwrap();
        let opener = Opener::from_file(key.path()).unwrap();

        let bytes = vec![7u8; 100_000];
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
        let c1 = chain::link(&chain::GENESIS, &digest, "A", bytes.len() as u64);
        let seg = SealedSegment {
            name: "A",
            start: 0,
            bytes: &bytes,
            prev_chain: chain::GENESIS,
            chain: c1,
            epoch: 1,
        };
        assert_eq!(
            a.write_segment(&sealer, &seg).await.unwrap(),
            Written::Created
        );
        // A restart re-encrypts (other ciphertext, same content): done.
        assert_eq!(
            a.write_segment(&sealer, &seg).await.unwrap(),
            Written::AlreadyThere
        );
        // Other bytes under the same name: refused, the object untouched.
        let other = vec![8u8; 100_000];
        let bad = SealedSegment {
            bytes: &other,
            ..seg.clone()
        };
        let err = a.write_segment(&sealer, &bad).await.unwrap_err();
        assert!(matches!(err, ArchiveError::Conflict { .. }), "{err}");
        let back = a.fetch(&opener, "A").await.unwrap().unwrap();
        assert!(back.complete);
        assert_eq!(back.bytes, bytes);

        // A growing segment B: three partial uploads, one of them repeated.
        let b: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        a.write_partial(&sealer, "B", 100_000, 0, &b[..1000], 1)
            .await
            .unwrap();
        a.write_partial(&sealer, "B", 100_000, 1000, &b[1000..2000], 1)
            .await
            .unwrap();
        a.write_partial(&sealer, "B", 100_000, 1000, &b[1000..2000], 1)
            .await
            .unwrap();
        a.write_partial(&sealer, "B", 100_000, 2000, &b[2000..], 1)
            .await
            .unwrap();
        let back = a.fetch(&opener, "B").await.unwrap().unwrap();
        assert!(!back.complete);
        assert_eq!(back.objects, 3);
        assert_eq!(back.bytes, b);
        assert!(a.fetch(&opener, "C").await.unwrap().is_none());
    }

    #[test]
    fn partial_keys_round_trip() {
        let k = partial_key("000000010000000000000001", 0x10, 0x2000, 7);
        let last = k.rsplit('/').next().unwrap();
        assert_eq!(parse_partial(last), Some((0x10, 0x2000)));
        assert_eq!(parse_partial("10-10-1"), None);
        assert_eq!(parse_partial("x-10-1"), None);
    }
}
