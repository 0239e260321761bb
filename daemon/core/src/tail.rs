//! After a crash or power cut: how much of a partial tail segment to keep,
//! without I/O. The driver reads the file's length and the CRC32C of its
//! prefixes; this decides.

use crate::mutation::{self, Mutation};
use serde::{Deserialize, Serialize};

/// CRC32C of a partial segment's first `size` bytes, and the previous
/// durable point. A group's fdatasync runs alongside the catalog commit that
/// records it (one disk flush of latency per ack instead of two), and the
/// ack waits for both; but after a power loss the commit may be on disk
/// while some of the group's bytes are not. Those bytes were never acked,
/// and the previous point's bytes were synced before this commit began —
/// so a restart checks the CRC and, if it does not match, falls back to
/// the previous point, whose CRC must match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialCheck {
    /// CRC32C of bytes `0..size` of the partial file.
    pub crc32c: u32,
    /// The durable size before this record, and the CRC32C of `0..prev_size`.
    pub prev_size: u64,
    pub prev_crc32c: u32,
}

/// The recovered durable size of a partial tail, and what the driver must
/// do before it reports those bytes durable (a Welcome, an ack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Bytes of the file that hold: truncate the file to this (durably).
    pub keep: u64,
    /// The record must be cut back to its previous point (its commit got
    /// ahead of its bytes).
    pub cut_back: bool,
    /// fdatasync the file (when it is not truncated, which syncs it): the
    /// kept bytes may be only in the page cache — a kill -9 after the
    /// commit but before the tail's fdatasync returned leaves them there.
    /// Found by drd-sim: a crash, a restart, then a power cut lost bytes
    /// that the restarted replica had reported durable.
    pub sync: bool,
}

/// Why a tail cannot be recovered: synced data is missing or changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TailError {
    #[error(
        "the file ({len} bytes) matches the catalog's checksum neither at its durable size \
         {size} nor at the previous point {prev_size}"
    )]
    NoMatch { len: u64, size: u64, prev_size: u64 },
    #[error("the file has {len} bytes but {size} were acked as durable")]
    Short { len: u64, size: u64 },
}

/// Decides how much of a partial tail to keep: the catalog records `size`
/// bytes (with `check`, when the record has one); the file holds `len`;
/// `crc_at(n)` is the CRC32C of the file's first `n` bytes (n ≤ len).
pub fn recover(
    size: u64,
    check: Option<PartialCheck>,
    len: u64,
    mut crc_at: impl FnMut(u64) -> u32,
) -> Result<Recovered, TailError> {
    let sync = !mutation::active(Mutation::SkipRecoverySync);
    let Some(check) = check else {
        if len < size {
            return Err(TailError::Short { len, size });
        }
        return Ok(Recovered {
            keep: size,
            cut_back: false,
            sync,
        });
    };
    if len >= size && (mutation::active(Mutation::TrustTailRecord) || crc_at(size) == check.crc32c)
    {
        return Ok(Recovered {
            keep: size,
            cut_back: false,
            sync,
        });
    }
    if len >= check.prev_size && crc_at(check.prev_size) == check.prev_crc32c {
        return Ok(Recovered {
            keep: check.prev_size,
            cut_back: true,
            sync,
        });
    }
    Err(TailError::NoMatch {
        len,
        size,
        prev_size: check.prev_size,
    })
}

/// Promotion (failover, switchover): how much of the partial tail becomes
/// the fork segment. Its bytes must still be the ones its record's CRC
/// covers — bytes that rotted at rest must not become a fork segment with
/// a fresh checksum (found by drd-sim: bit rot of a partial tail, then a
/// failover). The same decision as after a crash.
pub fn fork_point(
    size: u64,
    check: Option<PartialCheck>,
    len: u64,
    crc_at: impl FnMut(u64) -> u32,
) -> Result<Recovered, TailError> {
    if mutation::active(Mutation::ForkUncheckedPartial) && len >= size {
        return Ok(Recovered {
            keep: size,
            cut_back: false,
            sync: true,
        });
    }
    recover(size, check, len, crc_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_ahead_of_its_bytes_falls_back_to_the_previous_point() {
        let data: Vec<u8> = (0..100u8).collect();
        let crc = |n: u64| crc32c::crc32c(&data[..n as usize]);
        let check = PartialCheck {
            crc32c: crc(100),
            prev_size: 60,
            prev_crc32c: crc(60),
        };
        // All 100 bytes made it.
        assert_eq!(
            recover(100, Some(check), 100, crc).unwrap(),
            Recovered {
                keep: 100,
                cut_back: false,
                sync: true
            }
        );
        // Only 80 did (zeros after them, as a power cut leaves).
        let mut torn = data.clone();
        torn[80..].fill(0);
        let crc_torn = |n: u64| crc32c::crc32c(&torn[..n as usize]);
        assert_eq!(
            recover(100, Some(check), 100, crc_torn).unwrap(),
            Recovered {
                keep: 60,
                cut_back: true,
                sync: true
            }
        );
        // Even the previous point is gone: an error, nothing guessed.
        assert!(recover(100, Some(check), 50, crc).is_err());
        // No check: the length must cover the record.
        assert!(recover(100, None, 99, crc).is_err());
        assert_eq!(recover(100, None, 120, crc).unwrap().keep, 100);
    }
}
