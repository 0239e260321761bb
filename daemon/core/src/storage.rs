//! Storage behind traits: what the drivers carry the core's commands out
//! against.
//!
//! - [`SegmentStore`]: a replica's landing directory of one stream, segment
//!   files partial (`<name>.partial`) or complete (`<name>`). It holds the
//!   I/O of [`crate::replica::Command`]: create, write, digest, the tail's
//!   fdatasync, the group's renames and directory fsync, and the cut of a
//!   tail back to its durable size.
//! - [`Catalog`]: the durable record of a stream's segments and its chain
//!   head; one commit is atomic and durable when it returns.
//! - [`Source`]: the primary's database log, segments in name order, every
//!   one but the newest complete.
//!
//! Two kinds of implementation run them: the daemon's (files and RocksDB,
//! in `daemon/src/storage/`) and the in-memory one in [`mem`], which
//! drd-sim runs under power cuts, torn writes, a full disk and bit rot.
//! [`contract`] is one test suite both must pass: what a driver may rely
//! on, whichever store it has.

pub mod contract;
pub mod mem;

use crate::replica::{Record, SealedSegment};
use drd_proto::SegmentName;

/// Which of a segment's two files: the one being received, or the
/// complete one its seal renamed it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileState {
    /// `<name>.partial`: bytes still arriving, or sealed in a group whose
    /// flush has not renamed it yet.
    Partial,
    /// `<name>`: its seal's checksum matched and its group's flush made the
    /// name durable.
    Complete,
}

/// A replica's landing directory of one stream.
///
/// Durability is the trait's contract, not an implementation detail: a
/// write is durable only after [`SegmentStore::sync`] (or, for a sealed
/// segment, [`SegmentStore::make_names_durable`] with `sync`), a new or
/// renamed name only after `make_names_durable`'s directory sync. A driver
/// acks nothing before both and the catalog commit (invariant 1); the
/// in-memory store loses whatever was not made durable at a power cut.
pub trait SegmentStore {
    type Error: std::fmt::Display;

    /// [`crate::replica::Command::Create`]: creates the segment's partial
    /// file, or empties one left from before (it holds no acked byte). Its
    /// name is not durable until the group's `make_names_durable`.
    fn create(&mut self, segment: &SegmentName) -> Result<(), Self::Error>;

    /// [`crate::replica::Command::Write`]: writes `data` at `offset` of the
    /// partial file (which must exist). Not durable until a sync.
    fn write(&mut self, segment: &SegmentName, offset: u64, data: &[u8])
        -> Result<(), Self::Error>;

    /// Bytes `offset..offset + len` of the segment's file in `state`, fewer
    /// where the file ends. An error if there is no such file.
    fn read(
        &mut self,
        segment: &SegmentName,
        state: FileState,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, Self::Error>;

    /// The size of the segment's file in `state`; None if there is none.
    fn size(&mut self, segment: &SegmentName, state: FileState)
        -> Result<Option<u64>, Self::Error>;

    /// [`crate::replica::Command::Digest`]: the SHA-256 of all the stored
    /// bytes of the partial file. `size` is what the seal covers; a file
    /// longer than it must not match the seal's checksum (its bytes past
    /// `size` would become part of the complete file), nor a shorter one.
    fn digest(&mut self, segment: &SegmentName, size: u64) -> Result<[u8; 32], Self::Error> {
        use sha2::{Digest, Sha256};
        const PIECE: u64 = 1 << 20;
        let _ = size;
        let mut h = Sha256::new();
        let mut at = 0;
        loop {
            let piece = self.read(segment, FileState::Partial, at, PIECE)?;
            if piece.is_empty() {
                break;
            }
            at += piece.len() as u64;
            h.update(&piece);
        }
        Ok(h.finalize().into())
    }

    /// [`crate::replica::Command::SyncTail`]: fdatasync of the partial
    /// file; its first `len` bytes are durable when it returns (bytes
    /// written after the call began need not be).
    fn sync(&mut self, segment: &SegmentName, len: u64) -> Result<(), Self::Error>;

    /// [`crate::replica::Command::MakeNamesDurable`]: for each seal, in
    /// order, an fdatasync of its partial file if `sync`, then the rename
    /// to its complete name; then one sync of the directory, which also
    /// makes durable every partial file created since the last one. On an
    /// error the renames done are undone (not durably: a restart
    /// reconciles) and nothing is durable that was not before.
    fn make_names_durable(&mut self, seals: &[SealedSegment]) -> Result<(), Self::Error>;

    /// After a failed catalog commit: gives the seals' complete files back
    /// their partial names (the catalog still says partial). Not durable:
    /// a restart reconciles whichever names reached the disk.
    fn undo_names(&mut self, seals: &[SealedSegment]) -> Result<(), Self::Error>;

    /// Cuts the partial file to `len` bytes, durably: bytes a previous
    /// session wrote but never made durable are not trusted.
    fn cut(&mut self, segment: &SegmentName, len: u64) -> Result<(), Self::Error>;

    /// The segment files present, in name order (a partial and a complete
    /// file of one segment are both listed).
    fn list(&mut self) -> Result<Vec<(SegmentName, FileState)>, Self::Error>;
}

/// The durable record of one stream's segments.
pub trait Catalog {
    type Error: std::fmt::Display;

    /// What the last commit made durable: the records in position order,
    /// and the chain head after the last sealed segment.
    fn load(&mut self) -> Result<(Vec<Record>, [u8; 32]), Self::Error>;

    /// One atomic commit, durable when it returns: these records (each
    /// replacing the record of its segment, if any) and the chain head.
    /// On an error nothing of it is durable.
    fn commit(&mut self, records: &[Record], chain_head: [u8; 32]) -> Result<(), Self::Error>;
}

/// One segment of a source as last listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSegment {
    pub name: SegmentName,
    pub size: u64,
}

/// The primary's database log: append-only segment files in name order,
/// every one but the newest complete; the newest may still grow.
pub trait Source {
    type Error: std::fmt::Display;

    /// The segments named `from` or later (all of them when None), in name
    /// order.
    fn list(&mut self, from: Option<&SegmentName>) -> Result<Vec<SourceSegment>, Self::Error>;

    /// Bytes `offset..offset + len` of a segment, fewer where it ends
    /// (now). An error if there is no such segment.
    fn read(
        &mut self,
        segment: &SegmentName,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, Self::Error>;
}
