//! One test suite for every implementation of the storage traits: what a
//! driver may rely on, whichever store it carries the core's commands out
//! against. The in-memory stores (drd-core's tests) and the daemon's files
//! and RocksDB (the daemon's tests) both run it; a store that breaks a
//! rule fails it (this module's tests plant such stores).
//!
//! Each check returns `Err` naming the rule broken instead of panicking,
//! so that a test can also show the suite fails on a broken store. What
//! only one kind of store can show (a power cut, a reopened RocksDB) is
//! that store's own test.

use super::{Catalog, FileState, SegmentStore, Source, SourceSegment};
use crate::replica::{Record, SealedSegment};
use drd_proto::SegmentName;

macro_rules! ensure {
    ($cond:expr, $($what:tt)+) => {
        if !$cond {
            return Err(format!($($what)+));
        }
    };
}

fn name(s: &str) -> Result<SegmentName, String> {
    SegmentName::new(s).map_err(|e| e.to_string())
}

fn io<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).into()
}

/// Runs the segment-store suite on an empty landing directory.
pub fn segment_store<S: SegmentStore>(s: &mut S) -> Result<(), String> {
    ensure!(
        io("list an empty store", s.list())?.is_empty(),
        "a new store lists files"
    );
    let a = name("000000010000000000000001")?;
    let b = name("000000010000000000000002")?;
    let c = name("000000010000000000000003")?;

    // Create, write, read back.
    io("create", s.create(&a))?;
    ensure!(
        io("size", s.size(&a, FileState::Partial))? == Some(0),
        "a created file is not empty"
    );
    io("write", s.write(&a, 0, b"hello "))?;
    io("write", s.write(&a, 6, b"world"))?;
    ensure!(
        io("read", s.read(&a, FileState::Partial, 0, 100))? == b"hello world",
        "reading back does not give the bytes written"
    );
    ensure!(
        io("read", s.read(&a, FileState::Partial, 6, 3))? == b"wor",
        "a read at an offset gives other bytes"
    );
    ensure!(
        io("read past the end", s.read(&a, FileState::Partial, 50, 10))?.is_empty(),
        "a read past the end gives bytes"
    );
    // A re-sent chunk overwrites in place.
    io("rewrite", s.write(&a, 0, b"HELLO"))?;
    ensure!(
        io("read", s.read(&a, FileState::Partial, 0, 100))? == b"HELLO world",
        "a rewrite at offset 0 did not overwrite in place"
    );
    ensure!(
        io("size", s.size(&a, FileState::Partial))? == Some(11),
        "the size is not the bytes written"
    );
    ensure!(
        io("size", s.size(&a, FileState::Complete))?.is_none(),
        "a partial segment has a complete file"
    );
    ensure!(
        s.read(&a, FileState::Complete, 0, 1).is_err(),
        "reading a file that does not exist succeeded"
    );
    ensure!(
        s.write(&b, 0, b"x").is_err(),
        "writing a segment that was never created succeeded"
    );
    ensure!(
        io("size", s.size(&b, FileState::Partial))?.is_none(),
        "a failed write created a file"
    );

    // Digest: of every stored byte, whatever size the seal claims (bytes
    // past it would end up in the complete file).
    let d = io("digest", s.digest(&a, 11))?;
    ensure!(
        d == sha256(b"HELLO world"),
        "the digest is not the SHA-256 of the bytes"
    );
    let d5 = io("digest", s.digest(&a, 5))?;
    ensure!(
        d5 != sha256(b"HELLO"),
        "a file longer than the seal's size matched the checksum of its first bytes"
    );

    // Sync and cut.
    io("sync", s.sync(&a, 11))?;
    io("cut", s.cut(&a, 5))?;
    ensure!(
        io("read", s.read(&a, FileState::Partial, 0, 100))? == b"HELLO",
        "a cut did not shorten the file to its length"
    );
    ensure!(s.sync(&b, 1).is_err(), "syncing a missing file succeeded");
    ensure!(s.cut(&b, 0).is_err(), "cutting a missing file succeeded");

    // Create empties a leftover file.
    io("create again", s.create(&a))?;
    ensure!(
        io("size", s.size(&a, FileState::Partial))? == Some(0),
        "creating over a leftover file kept its bytes"
    );
    io("write", s.write(&a, 0, b"segment a"))?;

    // The group's names: sync, rename, directory sync.
    io("create", s.create(&b))?;
    io("write", s.write(&b, 0, b"segment b"))?;
    let seals = [
        SealedSegment {
            segment: a.clone(),
            sync: true,
        },
        SealedSegment {
            segment: b.clone(),
            sync: false,
        },
    ];
    io("make names durable", s.make_names_durable(&seals))?;
    for (seg, data) in [(&a, &b"segment a"[..]), (&b, &b"segment b"[..])] {
        ensure!(
            io("size", s.size(seg, FileState::Partial))?.is_none(),
            "{seg}: the partial name is still there after the rename"
        );
        ensure!(
            io("read", s.read(seg, FileState::Complete, 0, 100))? == data,
            "{seg}: the complete file does not hold the partial's bytes"
        );
    }
    ensure!(
        io("list", s.list())?
            == vec![
                (a.clone(), FileState::Complete),
                (b.clone(), FileState::Complete)
            ],
        "the listing is not the two complete files"
    );

    // Undo: back to partial names.
    io("undo names", s.undo_names(&seals[1..]))?;
    ensure!(
        io("read", s.read(&b, FileState::Partial, 0, 100))? == b"segment b",
        "undo did not give the segment back its partial name"
    );
    ensure!(
        io("size", s.size(&b, FileState::Complete))?.is_none(),
        "undo left the complete name"
    );

    // A failed group renames nothing: the seal of a missing file fails it
    // and the renames before it are undone.
    let failing = [
        SealedSegment {
            segment: b.clone(),
            sync: true,
        },
        SealedSegment {
            segment: c.clone(),
            sync: true,
        },
    ];
    ensure!(
        s.make_names_durable(&failing).is_err(),
        "renaming a segment that has no partial file succeeded"
    );
    ensure!(
        io("size", s.size(&b, FileState::Partial))? == Some(9)
            && io("size", s.size(&b, FileState::Complete))?.is_none(),
        "a failed group left a rename done"
    );
    ensure!(
        io("list", s.list())? == vec![(a.clone(), FileState::Complete), (b, FileState::Partial)],
        "the listing after a failed group is not what was before it"
    );
    Ok(())
}

fn record(seg: &SegmentName, start: u64, size: u64, sealed: bool) -> Record {
    Record {
        segment: seg.clone(),
        start,
        size,
        sealed,
        sha256: sealed.then_some([7; 32]),
        chain: sealed.then_some([8; 32]),
        check: None,
        epoch: 3,
        received_at_ms: 1_000,
        sealed_at_ms: sealed.then_some(2_000),
    }
}

/// Runs the catalog suite on an empty catalog of one stream.
pub fn catalog<C: Catalog>(c: &mut C) -> Result<(), String> {
    let (recs, _) = io("load an empty catalog", c.load())?;
    ensure!(recs.is_empty(), "a new catalog holds records");
    let a = name("000000010000000000000001")?;
    let b = name("000000010000000000000002")?;
    let ra = record(&a, 0, 100, true);
    let rb = record(&b, 100, 10, false);
    io("commit", c.commit(&[rb.clone(), ra.clone()], [1; 32]))?;
    let (recs, head) = io("load", c.load())?;
    ensure!(
        recs == vec![ra.clone(), rb.clone()],
        "load does not give the records committed, in position order: {recs:?}"
    );
    ensure!(
        head == [1; 32],
        "load does not give the chain head committed"
    );
    // A later commit replaces its segment's record, keeps the others.
    let rb2 = Record {
        size: 20,
        ..rb.clone()
    };
    io("commit", c.commit(std::slice::from_ref(&rb2), [2; 32]))?;
    let (recs, head) = io("load", c.load())?;
    ensure!(
        recs == vec![ra, rb2],
        "a commit did not replace its segment's record: {recs:?}"
    );
    ensure!(head == [2; 32], "the chain head is not the last committed");
    Ok(())
}

/// The source suite's segments: a caller writes these into its source
/// (each file holding its bytes) before it runs [`source`].
pub const SOURCE_FIXTURE: &[(&str, &[u8])] = &[
    ("000000010000000000000001", b"first segment"),
    ("000000010000000000000002", b"second"),
    ("000000010000000000000003", b"tail"),
];

/// Runs the source suite on a source holding [`SOURCE_FIXTURE`].
pub fn source<S: Source>(s: &mut S) -> Result<(), String> {
    let all = io("list", s.list(None))?;
    let want: Vec<SourceSegment> = SOURCE_FIXTURE
        .iter()
        .map(|(n, d)| {
            Ok(SourceSegment {
                name: name(n)?,
                size: d.len() as u64,
            })
        })
        .collect::<Result<_, String>>()?;
    ensure!(
        all == want,
        "the listing is not the segments in name order with their sizes: {all:?}"
    );
    let from = io("list from", s.list(Some(&want[1].name)))?;
    ensure!(
        from == want[1..],
        "listing from a segment does not start at it: {from:?}"
    );
    for (n, d) in SOURCE_FIXTURE {
        let n = name(n)?;
        ensure!(
            io("read", s.read(&n, 0, 1 << 20))? == *d,
            "{n}: reading it whole does not give its bytes"
        );
    }
    ensure!(
        io("read", s.read(&want[0].name, 6, 3))? == b"seg",
        "a read at an offset gives other bytes"
    );
    ensure!(
        io("read past the end", s.read(&want[2].name, 4, 10))?.is_empty(),
        "a read at the end gives bytes"
    );
    ensure!(
        s.read(&name("000000010000000000000009")?, 0, 1).is_err(),
        "reading a segment that does not exist succeeded"
    );
    Ok(())
}
