//! Side files: PostgreSQL's timeline history (`TTTTTTTT.history`) and backup
//! label (`<segment>.<offset>.backup`) files, and the `<segment>.partial`
//! file a promoted server archives. Their names do not fit the
//! position-ordered log (a `.backup` file can arrive after later segments),
//! so they are kept whole, by name, in `data_dir/streams/STREAM/files/` on
//! every node — a directory of its own, because the landing directory is
//! read with segment semantics (reconciliation, rejoin's cut-back).
//!
//! They are write-once ([`crate::storage::spool`]): a name that arrives again with
//! the same bytes is accepted, with different bytes refused — a compromised
//! primary cannot overwrite anything. The primary delivers `.history` and
//! `.backup` files to its replica with `PutFile` ([`deliver`]); `.partial`
//! files stay local (PostgreSQL never restores them). `drctl wal-fetch`
//! serves them all.

pub mod deliver;

use crate::node::Node;
use crate::storage::catalog::Role;
use drd_proto::{pb, StreamName};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::Status;

/// Largest side file shipped with `PutFile`: it must fit in one replication
/// message (`drd_proto::MAX_MESSAGE_BYTES`). Real `.history` and `.backup`
/// files are a few hundred bytes.
pub const MAX_SIDE_FILE_BYTES: usize = 512 * 1024;

/// Largest segment (or `.partial` file) `wal-push` accepts: PostgreSQL's
/// largest `wal_segsize`.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// What a file archived by PostgreSQL is, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalFileKind {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`: a WAL segment, part of the log.
    Segment,
    /// `TTTTTTTT.history`: a timeline's history.
    History,
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`: a base backup's label.
    Backup,
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.partial`: the last, incomplete segment of
    /// the old timeline, archived by a promoted server.
    Partial,
}

fn upper_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

impl WalFileKind {
    /// Classifies a file name; None for anything PostgreSQL does not
    /// archive (and so for every path, hidden or traversing name).
    pub fn classify(name: &str) -> Option<Self> {
        if upper_hex(name, 24) {
            return Some(Self::Segment);
        }
        if let Some(tli) = name.strip_suffix(".history") {
            return upper_hex(tli, 8).then_some(Self::History);
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return upper_hex(seg, 24).then_some(Self::Partial);
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.')?;
            return (upper_hex(seg, 24) && upper_hex(off, 8)).then_some(Self::Backup);
        }
        None
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Segment => "segment",
            Self::History => "history",
            Self::Backup => "backup",
            Self::Partial => "partial",
        }
    }

    /// Kept in the side-file directory rather than in the log.
    pub fn is_side_file(self) -> bool {
        self != Self::Segment
    }

    /// Delivered to the replica with `PutFile`.
    pub fn is_shipped_side_file(self) -> bool {
        matches!(self, Self::History | Self::Backup)
    }
}

/// Where a stream's side files live on this node.
pub fn side_dir(data_dir: &Path, stream: &StreamName) -> PathBuf {
    data_dir.join("streams").join(stream.as_str()).join("files")
}

/// The side files of a stream that are shipped to replicas, by name.
pub fn shipped_side_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| WalFileKind::classify(n).is_some_and(WalFileKind::is_shipped_side_file))
        .collect();
    names.sort();
    names
}

/// `drctl wal-fetch` of a side file: where it is, its size and SHA-256.
pub fn fetch(
    node: &Node,
    stream: &StreamName,
    name: &str,
) -> Result<pb::FetchSegmentResponse, Status> {
    let path = side_dir(&node.config.data_dir, stream).join(name);
    match crate::storage::spool::hash_path(&path) {
        Ok((sha256, size)) => Ok(pb::FetchSegmentResponse {
            path: path.display().to_string(),
            size,
            sha256,
            fork: false,
            pad_to: 0,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Status::not_found(format!("{name} of {stream} is not here")))
        }
        Err(e) => Err(Status::internal(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// The replica's side of `PutFile`: checks name, size, checksum, epoch and
/// role before anything is written, then stores the file once.
pub async fn put_file(
    node: &Arc<Node>,
    req: pb::PutFileRequest,
) -> Result<pb::PutFileResponse, Status> {
    let stream = crate::ops::stream_name(&req.stream)?;
    let kind = WalFileKind::classify(&req.name)
        .filter(|k| k.is_shipped_side_file())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "{:?} is not a side file name (TTTTTTTT.history or SEGMENT.OFFSET.backup); \
                 nothing written",
                req.name.chars().take(64).collect::<String>()
            ))
        })?;
    if req.data.len() > MAX_SIDE_FILE_BYTES {
        return Err(Status::invalid_argument(format!(
            "side file {} has {} bytes, more than the limit of {MAX_SIDE_FILE_BYTES}; nothing written",
            req.name,
            req.data.len()
        )));
    }
    let digest: [u8; 32] = Sha256::digest(&req.data).into();
    if req.sha256.as_slice() != digest.as_slice() {
        return Err(Status::invalid_argument(format!(
            "side file {}: SHA-256 mismatch (sent {}, computed {}); nothing written",
            req.name,
            hex::encode(&req.sha256),
            hex::encode(digest)
        )));
    }
    if req.epoch == 0 {
        return Err(drd_proto::ProtocolError::ZeroEpoch.into());
    }
    // Not half-way through a promotion.
    let role = node
        .stream_role(&stream)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    let _gate = role.transition.read().await;
    let state = role.state();
    if req.epoch < state.epoch {
        tracing::warn!(%stream, name = %req.name, from = %req.from_node, epoch = req.epoch,
            "refused a side file from a stale epoch");
        return Err(crate::ops::stale_epoch(node, &state, req.epoch));
    }
    match state.role {
        Role::Replica => {}
        Role::Primary | Role::Fenced => {
            return Err(Status::failed_precondition(format!(
                "node {} is {} of {stream} at epoch {}; it does not receive that stream",
                node.config.node_id,
                state.role.as_str(),
                state.epoch
            )))
        }
    }
    node.adopt_epoch(&stream, req.epoch)
        .map_err(|e| Status::internal(format!("{e:#}")))?;

    let dir = side_dir(&node.config.data_dir, &stream);
    let name = req.name.clone();
    let stored = tokio::task::spawn_blocking(move || {
        // One writer at a time per process: temporary names are per file.
        let _one = STORE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        crate::storage::spool::write_once(&dir, &name, &req.data)
    })
    .await
    .map_err(|e| Status::internal(format!("store task failed: {e}")))?;
    match stored {
        Ok(p) => {
            tracing::info!(%stream, name = %req.name, kind = kind.as_str(), size = p.size,
                already_present = p.already_present, from = %req.from_node, "side file stored");
            Ok(pb::PutFileResponse {
                stored: !p.already_present,
            })
        }
        Err(e @ crate::storage::spool::SpoolError::Conflict { .. }) => {
            tracing::error!(%stream, name = %req.name, from = %req.from_node, error = %e,
                "REFUSED a side file that would replace a different one");
            Err(Status::already_exists(e.to_string()))
        }
        Err(e) => Err(Status::internal(e.to_string())),
    }
}

/// Serialises writes of side files received from the network.
static STORE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_names_are_classified_and_nothing_else_passes() {
        use WalFileKind::*;
        let cases = [
            ("000000010000000000000001", Some(Segment)),
            ("00000002.history", Some(History)),
            ("000000010000000000000002.00000028.backup", Some(Backup)),
            ("000000010000000000000005.partial", Some(Partial)),
            ("00000001000000000000000a", None),
            ("0000000100000000000000011", None),
            ("2.history", None),
            ("../00000002.history", None),
            (".00000002.history", None),
            ("000000010000000000000002.backup", None),
            ("000000010000000000000002.0000002G.backup", None),
            ("archive_status", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(WalFileKind::classify(name), want, "{name:?}");
        }
        assert!(History.is_shipped_side_file() && Backup.is_shipped_side_file());
        assert!(!Partial.is_shipped_side_file() && Partial.is_side_file());
        assert!(!Segment.is_side_file());
    }

    #[test]
    fn only_history_and_backup_files_are_listed_for_shipping() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000005.partial",
            ".00000003.history.drd-tmp",
        ] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        assert_eq!(
            shipped_side_files(d.path()),
            [
                "000000010000000000000002.00000028.backup",
                "00000002.history"
            ]
        );
    }
}
