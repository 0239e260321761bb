//! `drctl wal-fetch` — PostgreSQL's `restore_command` — on the daemon side:
//! where the complete, verified copy of a segment or side file is.

use crate::locks::LockExt;
use crate::node::Node;
use crate::ops::failover::pick_stream;
use crate::ops::fork;
use drd_proto::{pb, SegmentName};
use tonic::Status;

/// Serialises [`crate::storage::catalog::Catalog::note_fetched`]'s read-compare-write.
static FETCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `drctl wal-fetch`: where the complete, verified copy of a segment (or a
/// side file) is.
pub fn fetch_segment(
    node: &Node,
    req: pb::FetchSegmentRequest,
) -> Result<pb::FetchSegmentResponse, Status> {
    let stream = pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    // `.history`, `.backup`, `.partial`: kept whole beside the log.
    if crate::sidefiles::WalFileKind::classify(&req.segment).is_some_and(|k| k.is_side_file()) {
        return crate::sidefiles::fetch(node, &stream, &req.segment);
    }
    let seg = SegmentName::new(req.segment).map_err(Status::from)?;
    let rec = node
        .catalog
        .segment(&stream, &seg)
        .map_err(|e| Status::internal(e.to_string()))?
        .filter(|r| r.sealed);
    let Some(rec) = rec else {
        let state = node
            .catalog
            .retention(&stream)
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Some(b) = state
            .boundary
            .filter(|b| seg.as_str() <= b.segment.as_str())
        {
            return Err(Status::not_found(format!(
                "segment {seg} of {stream} was removed by this DR site's retention policy \
                 (everything through {} is gone, the last removal at {}); restore from an \
                 older base backup's archive, or lengthen [replica.retention]",
                b.segment,
                crate::display::unix_ms_utc(b.at_ms)
            )));
        }
        return Err(Status::not_found(format!(
            "segment {seg} of {stream} is not complete here"
        )));
    };
    if rec.pruned_at_ms.is_some() {
        // Not here any more, and that is no loss: "not found", which
        // restore_command reports to PostgreSQL as "not available".
        return Err(Status::not_found(format!(
            "segment {seg} of {stream} was removed from this node's spool once the replica \
             held it sealed and verified (spool_retention); fetch it at the DR site"
        )));
    }
    // The DR database has read up to here: retention may remove what is
    // older (never this one: PostgreSQL may still be replaying it). A
    // drill's scratch database is not the DR database: not recorded.
    if !req.drill {
        let _one = FETCH_LOCK.locked();
        if let Err(e) = node
            .catalog
            .note_fetched(&stream, &seg, crate::clock::unix_ms())
        {
            tracing::warn!(%stream, segment = %seg, error = %e,
                "cannot record the newest fetched segment; retention keeps what follows the \
                 last one recorded");
        }
    }
    let path = fork::segment_path(node, &stream, &rec).ok_or_else(|| {
        Status::data_loss(format!(
            "segment {seg} is in the catalog but its file is missing"
        ))
    })?;
    // The log's last segment, closed at a failover inside the segment: the
    // promoted database must replay every commit in it, and PostgreSQL
    // restores only whole segments ("wrong size" otherwise).
    let pad_to = if rec.fork {
        crate::walpos::wal_segment_size(&path)
            .filter(|s| *s > rec.size)
            .unwrap_or(0)
    } else {
        0
    };
    Ok(pb::FetchSegmentResponse {
        path: path.display().to_string(),
        size: rec.size,
        sha256: rec.sha256.unwrap_or_default(),
        fork: rec.fork,
        pad_to,
    })
}
