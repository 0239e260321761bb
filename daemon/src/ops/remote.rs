//! This node's side of the node-to-node calls: `Promote` (a switchover asks
//! the drained replica to take over), `Fence` (a new primary tells an old
//! one to stop), `LogInfo` (a bounded summary of a node's log and lookups in it, for
//! rejoin and switchover checks).

use crate::hooks::{self, HookOutcome};
use crate::node::Node;
use crate::ops::logcmp::segment_info;
use crate::ops::{fork, Caller};
use crate::storage::catalog::{AuditRecord, Catalog, Role, SegmentRecord, Txn};
use drd_proto::{pb, SegmentName, StreamName};
use std::sync::Arc;
use tonic::Status;

fn pb_role(r: Role) -> i32 {
    (match r {
        Role::Primary => pb::Role::Primary,
        Role::Replica => pb::Role::Replica,
        Role::Fenced => pb::Role::Fenced,
    }) as i32
}

/// Most records one `LogInfo` page lists: a page stays far below the
/// message size limit (a record is under 250 bytes encoded) however long
/// the log.
pub const MAX_LOG_PAGE: usize = 1000;

/// `LogInfoResponse.summary_version` of this build (defined beside the
/// answer's checked view).
pub use crate::ops::logcmp::LOG_INFO_SUMMARY;

/// What a `LogInfo` caller asked for, checked on receipt.
#[derive(Debug, Default, Clone)]
pub struct LogQuery {
    /// Hash a partial last segment up to its durable size.
    pub hash_tail: bool,
    pub lookup: Option<Lookup>,
    /// A page of the listing: after this segment (None = from the first),
    /// at most this many records (already capped by [`MAX_LOG_PAGE`]).
    pub page: Option<(Option<SegmentName>, usize)>,
}

/// One record to look up.
#[derive(Debug, Clone)]
pub enum Lookup {
    Name(SegmentName),
    Position(u64),
}

impl TryFrom<&pb::LogInfoRequest> for LogQuery {
    type Error = drd_proto::ProtocolError;

    fn try_from(req: &pb::LogInfoRequest) -> Result<Self, Self::Error> {
        let lookup = if req.lookup_by_position {
            Some(Lookup::Position(req.lookup_position))
        } else if !req.lookup_segment.is_empty() {
            Some(Lookup::Name(SegmentName::new(req.lookup_segment.clone())?))
        } else {
            None
        };
        let page = match req.page_limit {
            0 => None,
            n => {
                let after = match req.page_after.as_str() {
                    "" => None,
                    a => Some(SegmentName::new(a)?),
                };
                Some((after, (n as usize).min(MAX_LOG_PAGE)))
            }
        };
        Ok(LogQuery {
            hash_tail: req.hash_tail,
            lookup,
            page,
        })
    }
}

/// The stream's log as this node holds it, summarized: its size never
/// depends on the number of segments (see `LogInfoResponse` in drd.proto).
/// With `hash_tail`, a partial last segment is hashed (up to its durable
/// size), for switchover checks.
pub fn log_info(
    node: &Node,
    stream: &StreamName,
    q: &LogQuery,
) -> Result<pb::LogInfoResponse, Status> {
    let state = node
        .role_of(stream)
        .unwrap_or_else(|| crate::storage::catalog::RoleState::new(Role::Replica, 0));
    let hash_partial = |t: &SegmentRecord| match fork::segment_path(node, stream, t) {
        Some(path) => fork::hash_prefix(&path, t.size).map(Some),
        None => Ok(None),
    };
    let mut r = log_summary(&node.catalog, stream, q, hash_partial)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    r.node_id = node.config.node_id.to_string();
    r.role = pb_role(state.role);
    r.epoch = state.epoch;
    Ok(r)
}

/// [`log_info`] from the catalog alone (all but node id, role and epoch).
/// `hash_partial` hashes a partial tail's durable prefix when `q` asks.
pub fn log_summary(
    cat: &Catalog,
    stream: &StreamName,
    q: &LogQuery,
    hash_partial: impl FnOnce(&SegmentRecord) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<pb::LogInfoResponse> {
    let meta = cat.stream_meta(stream)?;
    let tail = cat.tail(stream)?;
    // The partial tail's digest, computed once if asked for.
    let tail_sha = match &tail {
        Some(t) if q.hash_tail && !t.sealed => hash_partial(t)?,
        _ => None,
    };
    let info = |rec: &SegmentRecord| {
        let mut i = segment_info(rec);
        if let (Some(t), Some(sha)) = (&tail, &tail_sha) {
            if t.name == rec.name {
                i.sha256 = sha.clone();
            }
        }
        i
    };
    let first = cat.first(stream)?;
    let last_sealed = cat.last_sealed(stream)?;
    let (lookup, lookup_previous) = match &q.lookup {
        None => (None, None),
        Some(l) => {
            let rec = match l {
                Lookup::Name(n) => cat.segment(stream, n)?,
                Lookup::Position(p) => cat.segment_at(stream, *p)?,
            };
            let prev = match &rec {
                Some(r) => cat.previous(stream, &SegmentName::new(r.name.clone())?)?,
                None => None,
            };
            (rec, prev)
        }
    };
    let (page, next_page_after) = match &q.page {
        None => (Vec::new(), String::new()),
        Some((after, limit)) => {
            let (recs, more) = cat.page(stream, after.as_ref(), *limit)?;
            let next = match (more, recs.last()) {
                (true, Some(r)) => r.name.clone(),
                _ => String::new(),
            };
            (recs.iter().map(info).collect(), next)
        }
    };
    let fork_rec = match &meta.fork {
        Some(f) => match SegmentName::new(f.segment.clone()) {
            Ok(n) => cat.segment(stream, &n)?,
            Err(_) => None,
        },
        None => None,
    };
    // The deprecated full listing, kept to the few records that callers
    // from before the summary look for: the fork segment (rejoin), the last
    // sealed and the last record (switchover).
    let mut legacy: Vec<&SegmentRecord> = [&fork_rec, &last_sealed, &tail]
        .into_iter()
        .flatten()
        .collect();
    legacy.sort_by(|a, b| a.name.cmp(&b.name));
    legacy.dedup_by(|a, b| a.name == b.name);
    let durable = tail.as_ref().map_or(0, |r| r.end());
    Ok(pb::LogInfoResponse {
        durable_position: durable,
        segments: legacy.into_iter().map(info).collect(),
        fork_segment: meta
            .fork
            .as_ref()
            .map(|f| f.segment.clone())
            .unwrap_or_default(),
        fork_position: meta.fork.as_ref().map_or(0, |f| f.position),
        summary_version: LOG_INFO_SUMMARY,
        first: first.as_ref().map(info),
        last_sealed: last_sealed.as_ref().map(info),
        tail: tail.as_ref().map(info),
        lookup: lookup.as_ref().map(info),
        lookup_previous: lookup_previous.as_ref().map(info),
        page,
        next_page_after,
        segments_recorded: meta.segments,
        chain_head: meta.chain_head.clone().unwrap_or_default(),
        ..Default::default()
    })
}

/// A switchover's promotion, at the replica. The promote hook runs *before*
/// the role change is committed, so that a failing hook leaves this node a
/// replica at the old epoch: the switchover rolls back cleanly.
pub async fn promote(
    node: &Arc<Node>,
    req: pb::PromoteRequest,
) -> Result<pb::PromoteResponse, Status> {
    let stream = StreamName::new(req.stream.clone()).map_err(Status::from)?;
    let who = Caller {
        user: format!("{} (on {})", req.requested_by, req.from_node),
        origin: format!("switchover from {}", req.from_node),
    };
    let role = node
        .stream_role(&stream)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    let _gate = role.transition.write().await;
    let state = role.state();
    let next = crate::roles::promote_for(&state, req.epoch)
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    // Stop receiving this stream, then check we hold exactly the primary's
    // log of it.
    node.end_session(&stream).await;
    let tail = node
        .catalog
        .tail(&stream)
        .map_err(|e| Status::internal(e.to_string()))?;
    let durable = tail.as_ref().map_or(0, |t| t.end());
    if durable != req.fork_position {
        return Err(Status::failed_precondition(format!(
            "not drained: this replica is durable at {durable}, the primary at {}",
            req.fork_position
        )));
    }
    let outcome = hooks::run_configured(
        node,
        &stream,
        "promote",
        next.epoch,
        "primary",
        Some(durable),
    )
    .await;
    if let HookOutcome::Failed { .. } = outcome {
        return Err(Status::aborted(format!(
            "{}; this node stays a replica at epoch {}",
            outcome.summary("promote"),
            state.epoch
        )));
    }
    let mut txn = Txn::default();
    let mut detail = vec![outcome.summary("promote")];
    match fork::close_received_log(node, &stream, next.epoch, &mut txn) {
        Ok(Some(f)) => detail.push(format!("{stream}: fork at {} in {}", f.position, f.segment)),
        Ok(None) => {}
        Err(e) => {
            return Err(Status::internal(format!(
                "cannot close the log of {stream}: {e:#}"
            )))
        }
    }
    txn.audit(AuditRecord {
        user: who.user,
        origin: who.origin,
        reason: req.reason,
        detail: detail.join("; "),
        ..AuditRecord::role_change("promote (switchover)", &state, &next)
    });
    node.commit_role(&stream, next.clone(), txn)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    tracing::warn!(%stream, epoch = next.epoch, "SWITCHOVER: this node is now primary of the stream");
    Ok(pb::PromoteResponse {
        new_epoch: next.epoch,
        hook_report: outcome.summary("promote"),
    })
}

/// Fences the stream the request names at this node if `epoch` is newer
/// than its own there (see [`crate::roles::fence`]), runs the fence hook,
/// and answers with the written position so the new primary can report
/// the known loss. A request that names no stream (from a release before
/// roles per stream) fences every stream the sender is assigned here.
pub async fn fence(node: &Arc<Node>, req: pb::FenceRequest) -> Result<pb::FenceResponse, Status> {
    let reason = format!(
        "node {} became primary at epoch {}{}",
        req.from_node,
        req.epoch,
        if req.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", req.reason)
        }
    );
    let streams: Vec<StreamName> = if req.stream.is_empty() {
        node.stream_names()
            .into_iter()
            .filter(|s| {
                drd_core::handshake::assigned(s.as_str(), &req.from_node, node.assignment(s))
                    .is_ok()
            })
            .collect()
    } else {
        vec![crate::ops::stream_name(&req.stream)?]
    };
    for s in &streams {
        fence_self(node, s, req.epoch, &reason, &req.from_node).await;
    }
    let written = node
        .stream_views()
        .into_iter()
        .filter(|v| streams.iter().any(|s| s.as_str() == v.name))
        .map(|v| pb::StreamPosition {
            stream: v.name,
            position: v.written_position,
        })
        .collect();
    // The role and epoch of the one stream named (the highest epoch of
    // those fenced for an old peer's request).
    let (role, epoch) = streams
        .iter()
        .filter_map(|s| node.role_of(s))
        .max_by_key(|s| s.epoch)
        .map_or((Role::Replica, 0), |s| (s.role, s.epoch));
    Ok(pb::FenceResponse {
        node_id: node.config.node_id.to_string(),
        role: pb_role(role),
        epoch,
        written,
    })
}

/// Applies a newer epoch of `stream` seen from `from`: a primary of it
/// fences itself for that stream (loudly, with an audit record and the
/// fence hook), a replica adopts the epoch. Other streams are untouched.
pub async fn fence_self(
    node: &Arc<Node>,
    stream: &StreamName,
    seen_epoch: u64,
    reason: &str,
    from: &str,
) {
    let role = match node.stream_role(stream) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(%stream, error = %e, "cannot read the stream's role to fence it");
            return;
        }
    };
    let state = role.state();
    let Some(next) = crate::roles::fence(&state, seen_epoch, reason) else {
        return;
    };
    let action = if next.role == Role::Fenced {
        "fence"
    } else {
        "adopt-epoch"
    };
    let mut txn = Txn::default();
    txn.audit(AuditRecord {
        user: from.to_string(),
        origin: "peer node".into(),
        reason: reason.to_string(),
        ..AuditRecord::role_change(action, &state, &next)
    });
    if let Err(e) = node.commit_role(stream, next.clone(), txn) {
        tracing::error!(%stream, error = %e, "cannot record the fence");
        return;
    }
    if next.role != Role::Fenced {
        return;
    }
    tracing::error!(
        %stream,
        epoch = state.epoch,
        seen_epoch,
        %reason,
        "FENCED: a newer primary of this stream exists; this node stopped shipping it. Run \
         `drctl rejoin --stream {stream}` to make it a replica"
    );
    let outcome = hooks::run_configured(node, stream, "fence", seen_epoch, "fenced", None).await;
    crate::ops::audit_hook(
        node,
        stream,
        &Caller {
            user: "drd".into(),
            origin: "fence".into(),
        },
        seen_epoch,
        &outcome.summary("fence"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::catalog::{Fork, StreamMeta};
    use prost::Message;

    /// Largest encoded `LogInfo` answer allowed by the test below, with
    /// every optional part filled in: a few KiB, whatever the log's length.
    const SUMMARY_BOUND: usize = 4 * 1024;

    fn name(i: u64) -> String {
        format!("{:024X}", i + 1)
    }

    /// A stream of `n` sealed 1 KiB segments (plus a partial one), chained.
    fn big_catalog(cat: &Catalog, stream: &StreamName, n: u64) {
        let mut prev = crate::chain::GENESIS;
        let mut meta = StreamMeta::default();
        let mut batch = Vec::new();
        for i in 0..=n {
            let sealed = i < n;
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(i.to_be_bytes()));
            let chain = sealed.then(|| {
                prev = crate::chain::link(
                    &prev,
                    &crate::chain::from_hex(&sha).unwrap(),
                    &name(i),
                    1024,
                );
                hex::encode(prev)
            });
            batch.push(SegmentRecord {
                name: name(i),
                start: i * 1024,
                size: if sealed { 1024 } else { 100 },
                sealed,
                sha256: sealed.then(|| sha.clone()),
                epoch: 1,
                received_at_ms: 0,
                sealed_at_ms: None,
                fork: false,
                in_source: false,
                chain,
                check: None,
                pruned_at_ms: None,
            });
            if batch.len() == 10_000 || i == n {
                meta.segments = i + 1;
                meta.sealed_segments = i.min(n);
                meta.chain_head = Some(hex::encode(prev));
                meta.fork = Some(Fork {
                    segment: name(n / 2),
                    position: (n / 2) * 1024 + 1024,
                    epoch: 2,
                });
                let refs: Vec<_> = batch.iter().collect();
                cat.commit(stream, &refs, &meta).unwrap();
                batch.clear();
            }
        }
    }

    fn ask(cat: &Catalog, stream: &StreamName, req: pb::LogInfoRequest) -> pb::LogInfoResponse {
        let q = LogQuery::try_from(&req).unwrap();
        log_summary(cat, stream, &q, |_| Ok(Some("ab".repeat(32)))).unwrap()
    }

    /// Issue 16: with 8,000 segments the answer outgrew the 1 MiB message
    /// limit. With 100,000 it stays a few KiB, and lookups still find any
    /// record by name or by position.
    #[test]
    fn log_info_stays_bounded_with_100k_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let stream = StreamName::new("ehr-prod").unwrap();
        const N: u64 = 100_000;
        big_catalog(&cat, &stream, N);

        let plain = ask(&cat, &stream, pb::LogInfoRequest::default());
        let by_name = ask(
            &cat,
            &stream,
            pb::LogInfoRequest {
                hash_tail: true,
                lookup_segment: name(77_777),
                ..Default::default()
            },
        );
        let by_pos = ask(
            &cat,
            &stream,
            pb::LogInfoRequest {
                lookup_by_position: true,
                lookup_position: 12_345 * 1024 + 1000,
                ..Default::default()
            },
        );
        for (what, r) in [
            ("plain", &plain),
            ("by name", &by_name),
            ("by position", &by_pos),
        ] {
            let len = r.encoded_len();
            println!("LogInfo answer ({what}) with {N} segments: {len} bytes encoded");
            assert!(len < SUMMARY_BOUND, "{what}: {len} bytes");
            assert!(
                r.segments.len() <= 3,
                "{what}: legacy listing {}",
                r.segments.len()
            );
        }
        assert_eq!(plain.summary_version, LOG_INFO_SUMMARY);
        assert_eq!(plain.durable_position, N * 1024 + 100);
        assert_eq!(plain.first.as_ref().unwrap().name, name(0));
        assert_eq!(plain.last_sealed.as_ref().unwrap().name, name(N - 1));
        let tail = plain.tail.as_ref().unwrap();
        assert_eq!((tail.name.clone(), tail.sealed), (name(N), false));
        assert_eq!(by_name.tail.as_ref().unwrap().sha256, "ab".repeat(32));
        assert_eq!(plain.segments_recorded, N + 1);

        let l = by_name.lookup.as_ref().unwrap();
        assert_eq!((l.name.clone(), l.start), (name(77_777), 77_777 * 1024));
        assert_eq!(by_name.lookup_previous.as_ref().unwrap().name, name(77_776));
        let p = by_pos.lookup.as_ref().unwrap();
        assert_eq!(p.name, name(12_345));
        assert_eq!(by_pos.lookup_previous.as_ref().unwrap().name, name(12_344));
        // The chain value at the lookup is the one the catalog recorded.
        let rec = cat
            .segment(&stream, &SegmentName::new(name(12_345)).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(Some(p.chain.clone()), rec.chain);

        // Edges of the position lookup: the first byte, a segment's first
        // byte, the log's end (the tail), past the end.
        for (pos, want) in [
            (0, Some(name(0))),
            (1024, Some(name(1))),
            (1023, Some(name(0))),
            (N * 1024 + 100, Some(name(N))),
            (N * 1024 + 101, None),
            (u64::MAX, None),
        ] {
            let r = ask(
                &cat,
                &stream,
                pb::LogInfoRequest {
                    lookup_by_position: true,
                    lookup_position: pos,
                    ..Default::default()
                },
            );
            assert_eq!(r.lookup.map(|l| l.name), want, "position {pos}");
        }
        // A name this node does not hold: no record, no error.
        let r = ask(
            &cat,
            &stream,
            pb::LogInfoRequest {
                lookup_segment: "FFFFFFFFFFFFFFFFFFFFFFFF".into(),
                ..Default::default()
            },
        );
        assert!(r.lookup.is_none() && r.lookup_previous.is_none());
    }

    #[test]
    fn listings_are_paged_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path()).unwrap();
        let stream = StreamName::new("s").unwrap();
        big_catalog(&cat, &stream, 2_500);
        let page = |after: &str, limit: u32| {
            ask(
                &cat,
                &stream,
                pb::LogInfoRequest {
                    page_limit: limit,
                    page_after: after.into(),
                    ..Default::default()
                },
            )
        };
        // The limit is capped, and one full page stays far below the
        // message limit.
        let p = page("", u32::MAX);
        assert_eq!(p.page.len(), MAX_LOG_PAGE);
        assert!(p.encoded_len() < 512 * 1024, "{}", p.encoded_len());
        // Walking every page sees every record once, in order.
        let (mut after, mut seen) = (String::new(), Vec::new());
        loop {
            let p = page(&after, 700);
            seen.extend(p.page.iter().map(|s| s.name.clone()));
            if p.next_page_after.is_empty() {
                break;
            }
            after = p.next_page_after;
        }
        assert_eq!(seen, (0..=2_500).map(name).collect::<Vec<_>>());
        // A hostile page_after or lookup name is refused before any use.
        for req in [
            pb::LogInfoRequest {
                page_limit: 5,
                page_after: "../x".into(),
                ..Default::default()
            },
            pb::LogInfoRequest {
                lookup_segment: "a/b".into(),
                ..Default::default()
            },
        ] {
            assert!(LogQuery::try_from(&req).is_err());
        }
    }
}
