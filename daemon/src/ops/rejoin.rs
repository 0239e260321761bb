//! `drctl rejoin`: a fenced node becomes a replica of the current primary.
//! Steps:
//!
//! 1. preflight — the stream is fenced here and has its `[[stream]]`;
//! 2. find the fork — ask the new primary (its configured peer) for the
//!    fork of the new epoch, then look its segment up (and the one before
//!    it): lookups, never a listing;
//! 3. compare the logs before the fork — the hash chain at the segment
//!    before the fork;
//! 4. plan the cut — under the transition gate, the role again, then the
//!    fork segment's prefix by SHA-256 and what lies past the fork;
//! 5. quarantine — move everything past the fork into
//!    `data_dir/quarantine/…` (never delete it) and cut the fork segment;
//! 6. record the new role — replica at the primary's epoch, with the cut's
//!    records and the audit record, in one catalog transaction;
//! 7. resume — the primary then ships the new epoch's segments to it.
//!
//! The order and what a failure means are drd-core's step machine
//! (`drd_core::rejoin`): up to the plan nothing changed and a failure
//! refuses; a failure in the quarantine or the commit leaves the stream
//! fenced with what was moved kept in quarantine, and a second rejoin
//! finishes the cut.

use crate::config::StreamConfig;
use crate::node::{Node, StreamRole};
use crate::ops::{fork, logcmp, peer, remote, Caller};
use crate::storage::catalog::{AuditRecord, Role, RoleState, Txn};
use drd_core::rejoin::{OnFailure, Rejoin, Step};
use drd_proto::{pb, SegmentName, StreamName};
use std::path::PathBuf;
use std::sync::Arc;
use tonic::Status;

/// Most quarantined files one rejoin reply lists: an old primary that wrote
/// for days past the fork must not make a reply that grows with its log.
/// The quarantine directory holds them all; `quarantined_files` counts them.
pub const MAX_QUARANTINE_LISTED: usize = 100;

/// A rejoin in progress: drd-core's step machine, and what a failure
/// report names.
struct Run {
    /// Which step comes next, and what a failure at each one means.
    rj: Rejoin,
    stream: String,
    /// Where this attempt moves what lies past the fork (once known).
    quarantine: Option<PathBuf>,
}

impl Run {
    /// Reports `step`'s result to the step machine, and says what a failure
    /// leaves behind; hands the result on.
    fn report<T>(&mut self, step: Step, result: Result<T, Status>) -> Result<T, Status> {
        let e = match &result {
            Ok(_) => {
                if let Err(e) = self.rj.succeeded(step) {
                    tracing::error!(error = %e, "rejoin steps out of order (a bug in drd)");
                }
                return result;
            }
            Err(e) => e,
        };
        let dir = self
            .quarantine
            .as_ref()
            .map_or_else(String::new, |q| q.display().to_string());
        match self.rj.failed(step) {
            Ok(OnFailure::Refuse) => {}
            Ok(OnFailure::StayFenced) => tracing::error!(
                stream = %self.stream,
                step = step.name(),
                error = e.message(),
                quarantine = %dir,
                "rejoin stopped after its quarantine began: the stream stays fenced (it ships \
                 nothing); what was moved stays in the quarantine directory — run `drctl rejoin` \
                 again to finish the cut"
            ),
            Ok(OnFailure::Warn) => tracing::warn!(
                stream = %self.stream,
                step = step.name(),
                error = e.message(),
                "rejoined, with a warning"
            ),
            Err(e) => tracing::error!(error = %e, "rejoin steps out of order (a bug in drd)"),
        }
        result
    }
}

/// What the preflight found: a fenced stream with its config.
struct Fenced<'a> {
    stream: StreamName,
    role: Arc<StreamRole>,
    state: RoleState,
    cfg: &'a StreamConfig,
}

/// The new primary's fork, as it reported it (checked).
struct Found {
    /// Its first answer: node id, epoch, fork.
    info: pb::LogInfoResponse,
    /// Its records around the fork segment.
    primary: logcmp::PeerLog,
    remote: fork::RemoteFork,
}

pub async fn rejoin(
    node: &Arc<Node>,
    req: pb::RejoinRequest,
    who: Caller,
) -> Result<pb::RejoinResponse, Status> {
    let mut run = Run {
        rj: Rejoin::new(),
        stream: req.stream.clone(),
        quarantine: None,
    };

    // 1. preflight
    let Fenced {
        stream,
        role,
        state,
        cfg,
    } = run.report(Step::Preflight, preflight(node, &req))?;
    run.stream = stream.to_string();
    let progress = node
        .operations
        .start("rejoin", cfg.name.as_str(), &req.progress_token);

    // 2. find the fork
    progress.set_phase("asking the new primary for the fork");
    let found = run.report(Step::FindFork, find_fork(node, cfg, &state).await)?;
    let Found {
        info,
        primary,
        remote,
    } = found;

    // 3. compare the logs before the fork
    progress.set_phase("comparing the logs before the fork");
    run.report(
        Step::CompareBeforeFork,
        compare_before_fork(node, cfg, &info, &primary),
    )?;
    let quarantine = node
        .config
        .data_dir
        .join("quarantine")
        .join(cfg.name.as_str())
        .join(format!("epoch-{}-{}", info.epoch, crate::clock::unix_ms()));
    run.quarantine = Some(quarantine.clone());

    // 4. plan the cut
    progress.set_phase("waiting for other role changes to finish");
    let _gate = role.transition.write().await;
    // Read again under the gate: another role change may have come first.
    let state = role.state();
    let planned = match crate::roles::rejoin(&state, info.epoch) {
        Err(e) => Err(Status::failed_precondition(e.to_string())),
        Ok(next) => fork::plan_cut(node, cfg, &remote, &progress)
            .map(|plan| (next, plan))
            .map_err(|e| Status::failed_precondition(format!("{e:#}"))),
    };
    let (next, plan) = run.report(Step::PlanCut, planned)?;

    // 5. quarantine: from here on a failure leaves the stream fenced, with
    // what was moved kept in quarantine.
    let moved = fork::quarantine(&plan, &remote, &quarantine, &progress)
        .map_err(|e| Status::failed_precondition(format!("{e:#}")));
    let moved = run.report(Step::Quarantine, moved)?;

    // 6. record the new role: the cut, the role and the audit record in one
    // synced transaction.
    let total: u64 = moved.iter().map(|q| q.bytes).sum();
    let mut txn = Txn::default();
    let committed = match fork::record_cut(node, cfg, &remote, &plan, &mut txn) {
        Err(e) => Err(Status::failed_precondition(format!("{e:#}"))),
        Ok(()) => {
            progress.set_phase("recording the new role");
            txn.audit(AuditRecord {
                user: who.user,
                origin: who.origin,
                reason: req.reason,
                detail: format!(
                    "replica of {} from fork {} in {}; {} files / {total} bytes past the fork moved to {}",
                    info.node_id,
                    remote.position,
                    remote.segment,
                    moved.len(),
                    quarantine.display()
                ),
                ..AuditRecord::role_change("rejoin", &state, &next)
            });
            node.commit_role(&stream, next.clone(), txn)
                .map_err(|e| Status::internal(format!("{e:#}")))
        }
    };
    run.report(Step::Commit, committed)?;

    // 7. resume: the new role is published (commit_role); the new primary
    // ships the new epoch's segments from the fork on.
    tracing::warn!(
        %stream,
        epoch = next.epoch,
        fork = remote.position,
        quarantined_bytes = total,
        "REJOINED as a replica of {}",
        info.node_id
    );
    let response = pb::RejoinResponse {
        stream: cfg.name.to_string(),
        fork_position: remote.position,
        fork_segment: remote.segment.to_string(),
        new_epoch: next.epoch,
        new_primary: info.node_id,
        quarantine_dir: quarantine.display().to_string(),
        quarantined_files: moved.len() as u64,
        quarantined: moved
            .iter()
            .take(MAX_QUARANTINE_LISTED)
            .map(|q| pb::QuarantinedFile {
                path: q.path.display().to_string(),
                bytes: q.bytes,
                from: q.from.display().to_string(),
            })
            .collect(),
        quarantined_bytes: total,
    };
    run.report(Step::Resume, Ok(response))
}

/// Step 1: the stream is fenced here and has its `[[stream]]` (whose peer
/// is the new primary).
fn preflight<'a>(node: &'a Node, req: &pb::RejoinRequest) -> Result<Fenced<'a>, Status> {
    let stream =
        crate::ops::failover::pick_stream(node, &req.stream).map_err(Status::invalid_argument)?;
    let role = node
        .stream_role(&stream)
        .map_err(|e| Status::internal(format!("{e:#}")))?;
    let state = role.state();
    if state.role != Role::Fenced {
        return Err(Status::failed_precondition(format!(
            "{stream} is {} at epoch {} on this node; only a fenced stream rejoins",
            state.role.as_str(),
            state.epoch
        )));
    }
    let Some(cfg) = node.config.streams.iter().find(|c| c.name == stream) else {
        return Err(Status::failed_precondition(format!(
            "rejoin of {stream} needs its [[stream]] in this node's config (its peer is the new primary)"
        )));
    };
    Ok(Fenced {
        stream,
        role,
        state,
        cfg,
    })
}

/// Step 2: the new primary's fork. First ask for the fork, then look its
/// segment up (and the one before it): two bounded answers, however long
/// either log is. Its answers change nothing here.
async fn find_fork(node: &Node, cfg: &StreamConfig, state: &RoleState) -> Result<Found, Status> {
    let mut client = peer::connect_for_calls(node, cfg)
        .await
        .map_err(|e| Status::unavailable(format!("cannot reach the new primary: {e}")))?;
    let info = client
        .log_info(pb::LogInfoRequest {
            stream: cfg.name.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    if info.role != pb::Role::Primary as i32 || info.epoch <= state.epoch {
        return Err(Status::failed_precondition(format!(
            "{} is not a primary with a newer epoch (epoch {}); nothing to rejoin",
            info.node_id, info.epoch
        )));
    }
    if info.fork_segment.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{} reports no fork for {}; it cannot say where the logs diverged",
            info.node_id, cfg.name
        )));
    }
    let refused = |e: &dyn std::fmt::Display| refused(&info.node_id, e);
    let fork_name = SegmentName::new(info.fork_segment.clone()).map_err(|e| refused(&e))?;
    let at_fork = if info.summary_version >= remote::LOG_INFO_SUMMARY {
        client
            .log_info(pb::LogInfoRequest {
                stream: cfg.name.to_string(),
                lookup_segment: fork_name.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner()
    } else {
        // Older daemons list their whole log in the first answer.
        info.clone()
    };
    if (at_fork.epoch, &at_fork.fork_segment, at_fork.fork_position)
        != (info.epoch, &info.fork_segment, info.fork_position)
    {
        return Err(refused(&format!(
            "its fork changed between two answers (epoch {} fork {} at {}, then epoch {} fork {} at {}); try again",
            info.epoch, info.fork_segment, info.fork_position,
            at_fork.epoch, at_fork.fork_segment, at_fork.fork_position
        )));
    }
    let primary = logcmp::PeerLog::from_response(&at_fork, Some(fork_name.as_str()))
        .map_err(|e| refused(&e))?;
    let seg = primary
        .lookup
        .as_ref()
        .filter(|s| s.name == fork_name)
        .ok_or_else(|| refused(&format!("its fork segment {fork_name} is not in its log")))?;
    let remote =
        fork::RemoteFork::from_rec(seg, info.fork_position, info.epoch).map_err(|e| refused(&e))?;
    Ok(Found {
        info,
        primary,
        remote,
    })
}

/// Step 3: before the fork segment the logs must agree: compare the hash
/// chain at the segment before it (which covers every sealed segment up to
/// there); the cut's plan then compares the fork segment's own prefix.
fn compare_before_fork(
    node: &Node,
    cfg: &StreamConfig,
    info: &pb::LogInfoResponse,
    primary: &logcmp::PeerLog,
) -> Result<(), Status> {
    let before = match primary.lookup_previous.as_ref() {
        Some(p) => our_record_of(node, cfg, &p.name)
            .map_err(|e| refused(&info.node_id, &format!("{e:#}")))?,
        None => None,
    };
    let our_first = node
        .catalog
        .first(&cfg.name)
        .map_err(|e| Status::internal(e.to_string()))?
        .map(|r| logcmp::Rec::from_record(&r))
        .transpose()
        .map_err(|e| Status::internal(e.to_string()))?;
    let agreed =
        logcmp::check_before_fork(primary, before.as_ref(), our_first.as_ref()).map_err(|e| {
            Status::failed_precondition(format!(
                "the logs diverged before the fork: {e}; refusing to rejoin (nothing changed)"
            ))
        })?;
    if let Some(a) = &agreed {
        tracing::info!(%a, "rejoin: the logs agree before the fork");
    }
    Ok(())
}

/// The new primary's answer does not allow a rejoin; nothing changed.
fn refused(primary: &str, e: &dyn std::fmt::Display) -> Status {
    Status::failed_precondition(format!(
        "{primary}: {e}; refusing to rejoin (nothing changed)"
    ))
}

/// This node's record of segment `name`, for comparing with the new
/// primary's. A segment whose file is here but whose record is not (a
/// primary killed between sending a seal and recording it) is compared by
/// its bytes: size and SHA-256, no chain.
fn our_record_of(
    node: &Node,
    cfg: &StreamConfig,
    name: &SegmentName,
) -> anyhow::Result<Option<logcmp::Rec>> {
    if let Some(rec) = node.catalog.segment(&cfg.name, name)? {
        return Ok(Some(logcmp::Rec::from_record(&rec)?));
    }
    let landing = node.config.landing_dir(&cfg.name);
    let Some(path) = [cfg.wal_dir.join(name.as_str()), landing.join(name.as_str())]
        .into_iter()
        .find(|p| p.exists())
    else {
        return Ok(None);
    };
    let size = std::fs::metadata(&path)?.len();
    // Its start is not known without a record: taken from the previous one.
    let start = node
        .catalog
        .previous(&cfg.name, name)?
        .map_or(0, |p| p.end());
    Ok(Some(logcmp::Rec {
        name: name.clone(),
        start,
        size,
        sealed: true,
        sha256: fork::hash_prefix(&path, size)?,
        chain: None,
    }))
}
