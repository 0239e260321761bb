//! The operator's actions on one stream: verify, failover and rejoin (as
//! drd-core's step machines order them, with the rejoin cut in the parts
//! of ops/fork.rs), and the switchover's steps.

use super::*;

/// A planned cut (ops/fork.rs's plan_cut): what the Quarantine and Commit
/// steps carry out.
#[derive(Debug)]
struct Cut {
    /// The new primary's fork segment record and the fork position.
    frec: Rec,
    fpos: u64,
    /// This node's file of the fork segment.
    fork_file: Loc,
    /// Bytes of it kept; bytes past them go to quarantine.
    keep: u64,
    tail_bytes: u64,
    /// Files past the fork segment, moved to quarantine.
    moves: Vec<Loc>,
    /// What this node's log held past the fork, piece by piece.
    old: Vec<Vec<u8>>,
}

impl Cut {
    /// How many file operations the quarantine does.
    fn ops(&self) -> usize {
        usize::from(self.tail_bytes > 0) + 1 + self.moves.len()
    }
}

impl World {
    /// `drctl verify` at a node: re-hash every sealed segment and walk the
    /// chain (drd-core's chain::Walker). It must find each rotted segment
    /// and nothing else.
    pub(super) fn verify(&mut self, node: usize) {
        self.out.verifies += 1;
        let n = &mut self.nodes[node];
        let mut walker = chain::Walker::new(chain::GENESIS);
        for r in n.cat.recs.values().filter(|r| r.sealed) {
            let data = rec_loc(&mut n.disk, r).read(&mut n.disk);
            let actual = if (data.len() as u64) < r.size {
                Err("short".to_string())
            } else {
                Ok(hex_of(&sha(&data[..r.size as usize])))
            };
            walker.step(&chain::Stored {
                name: name_of(r.idx).to_string(),
                size: r.size,
                recorded_sha256: r.sha.map(|s| hex_of(&s)).unwrap_or_default(),
                recorded_chain: r.chain.map(|c| hex_of(&c)),
                actual_sha256: actual,
                pruned: false,
            });
        }
        let report = walker.finish();
        let found: BTreeSet<u64> = report
            .problems
            .iter()
            .filter_map(|(name, _)| idx_of(name))
            .collect();
        let rotted: BTreeSet<u64> = n
            .rotted
            .iter()
            .copied()
            .filter(|i| n.cat.recs.get(i).is_some_and(|r| r.sealed))
            .collect();
        if found != rotted {
            let msg = format!(
                "verify at slot {node}: found problems in {found:?} but the segments that rotted \
                 are {rotted:?} ({:?})",
                report.problems.first()
            );
            self.violation(msg);
        }
    }

    /// Runs an operator's step on stream `st` and checks that it changed
    /// no other stream's role or epoch at any node (roles are per stream).
    pub(super) fn on_stream(&mut self, st: usize, f: impl FnOnce(&mut Self)) {
        let before = self.roles();
        f(self);
        self.check_isolation(&before, Some(st));
    }

    /// The operator: one action on one stream at a random moment.
    pub(super) fn operator(&mut self) {
        if self.healed {
            // After the faults: an operator rejoins what is fenced.
            for node in 0..self.nodes.len() {
                if self.nodes[node].cat.state.role == Role::Fenced {
                    self.on_stream(stream_of(node), |w| w.rejoin(node));
                }
            }
            return;
        }
        let action = self.rng.random_range(0..100);
        let streams = self.shape.streams();
        let st = if streams > 1 {
            self.rng.random_range(0..streams)
        } else {
            0
        };
        let slots = [2 * st, 2 * st + 1];
        self.on_stream(st, |w| match action {
            0..=17 => {
                let r = slots
                    .into_iter()
                    .find(|&i| w.nodes[i].cat.state.role == Role::Replica);
                if let Some(r) = r {
                    w.failover(r);
                }
            }
            18..=35 => {
                let p = w.canon_owner[st];
                if w.switchover[st].is_none() && w.nodes[p].cat.state.role == Role::Primary {
                    w.start_switchover(p);
                }
            }
            36..=60 => {
                for node in slots {
                    if w.nodes[node].cat.state.role == Role::Fenced {
                        w.rejoin(node);
                    }
                }
            }
            61..=75 => {
                let p = w.canon_owner[st];
                let n = &mut w.nodes[p];
                n.paused = !n.paused;
                let paused = n.paused;
                let life = n.life;
                w.log(|| {
                    format!(
                        "operator: {} slot {p}",
                        if paused { "pause" } else { "resume" }
                    )
                });
                if paused {
                    if let Some(s) = w.nodes[p].send.take() {
                        w.close_conn(s.conn);
                    }
                } else {
                    w.after(0, Ev::Connect { node: p, life });
                }
            }
            _ => {
                let node = slots[w.rng.random_range(0..2)];
                if w.nodes[node].up
                    && w.nodes[node].cat.state.role == Role::Replica
                    && w.nodes[node].recv.as_ref().is_none_or(|r| r.job.is_none())
                {
                    w.verify(node);
                }
            }
        });
    }

    /// Reports a step to one of drd-core's step machines; a report out of
    /// order is a bug in this driver.
    fn steps<T, E: std::fmt::Display>(&mut self, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(e) => {
                self.violation(format!("driver: {e}"));
                None
            }
        }
    }

    /// `drctl failover` at the DR node, carried out step by step as
    /// drd-core's [`failover::Failover`] orders them (ops/failover.rs):
    /// promote at the durable position; the last partial segment becomes
    /// the fork segment (ops/fork.rs's close_received_log); tell the old
    /// primary to fence if reachable; the promote hook.
    fn failover(&mut self, node: usize) {
        let mut steps = failover::Failover::new();
        self.failover_steps(node, &mut steps);
        match steps.outcome() {
            Some(FoOutcome::Refused { .. }) => self.out.failovers_refused += 1,
            Some(FoOutcome::Promoted { old_primary, .. }) => match old_primary {
                OldPrimary::NotReached => self.out.fence_not_reached += 1,
                OldPrimary::Unknown => self.out.fence_unknown += 1,
                OldPrimary::Fenced | OldPrimary::NotAsked => {}
            },
            None => self.violation(format!("failover at slot {node} stopped half way")),
        }
    }

    fn failover_steps(&mut self, node: usize, steps: &mut failover::Failover) {
        use failover::Step as F;
        // Preflight: the stream is a replica here, not in a flush, and its
        // epoch can grow.
        let ready = self.nodes[node].up
            && self.nodes[node]
                .recv
                .as_ref()
                .is_none_or(|r| r.job.is_none());
        let next = ready
            .then(|| roles::promote(&self.nodes[node].cat.state).ok())
            .flatten();
        let Some(next) = next else {
            let r = steps.failed(F::Preflight);
            self.steps(r);
            return;
        };
        let r = steps.succeeded(F::Preflight);
        self.steps(r);
        // Confirm: the simulated operator always confirms.
        let r = steps.succeeded(F::Confirm);
        self.steps(r);
        self.end_recv(node);
        let r = steps.succeeded(F::EndSession);
        self.steps(r);
        let Some(fork_rec) = self.close_log(node, None) else {
            let r = steps.failed(F::CloseLog);
            self.steps(r);
            return;
        };
        let r = steps.succeeded(F::CloseLog);
        self.steps(r);
        self.commit_promotion(node, fork_rec, next.clone());
        let r = steps.succeeded(F::Commit);
        self.steps(r);
        // Tell the old primary; the simulator does not wait for an answer,
        // so the outcome is unknown unless the request never went out.
        let old = peer(node);
        let lost = self.blocked(node, old);
        let c = self.open_conn(node, old, false);
        self.send_msg(c, old, Msg::Fence { epoch: next.epoch });
        let r = if lost {
            steps.failed(F::FenceOldPrimary)
        } else {
            steps.unknown(F::FenceOldPrimary)
        };
        self.steps(r);
        self.promote_hook(node);
        let r = steps.succeeded(F::PromoteHook);
        self.steps(r);
    }

    /// A switchover's Promote at the replica (not the failover machine: the
    /// daemon's Promote RPC has its own order): the fork exactly where the
    /// primary's log ends, or no promotion.
    fn promote_for_switchover(&mut self, node: usize, want: u64) -> bool {
        if !self.nodes[node].up
            || self.nodes[node]
                .recv
                .as_ref()
                .is_some_and(|r| r.job.is_some())
        {
            return false;
        }
        let Ok(next) = roles::promote(&self.nodes[node].cat.state) else {
            return false;
        };
        self.end_recv(node);
        let Some(fork_rec) = self.close_log(node, Some(want)) else {
            return false;
        };
        let epoch = next.epoch;
        self.commit_promotion(node, fork_rec, next);
        let c = self.open_conn(node, peer(node), false);
        self.send_msg(c, peer(node), Msg::Fence { epoch });
        self.promote_hook(node);
        true
    }

    /// Failover's CloseLog: the received log closed at its longest verified
    /// prefix (`tail::fork_point`); returns the fork segment's record. None:
    /// refused (a rotted tail; with `expect`, a fork elsewhere than there).
    fn close_log(&mut self, node: usize, expect: Option<u64>) -> Option<Rec> {
        let tail = self.nodes[node].cat.recs.values().next_back().cloned()?;
        // Before the promotion: its log is what the primary had (as far as
        // it got), byte for byte.
        self.check_replica_log(node, "at its failover");
        if !self.out.violations.is_empty() {
            return None;
        }
        let n = &mut self.nodes[node];
        let mut tail = tail;
        if !tail.sealed {
            // The partial must still match its record (ops/fork.rs's
            // close_received_log, with drd-core's tail::recover).
            let data = n
                .disk
                .landing()
                .read(&name_of(tail.idx), FileState::Partial, 0, u64::MAX)
                .unwrap_or_default();
            match drd_core::tail::fork_point(tail.size, tail.check, data.len() as u64, |k| {
                crc32c::crc32c(&data[..k as usize])
            }) {
                Ok(k) if expect.is_some_and(|e| tail.start + k.keep != e) => {
                    // A switchover's promotion forks exactly where the
                    // primary's log ends, or not at all.
                    return None;
                }
                Ok(k) => tail.size = k.keep,
                Err(_) => {
                    // Refused: the DR copy's tail rotted; the operator must
                    // restore it. Detected, so not a violation.
                    n.stalled_on_rot = true;
                    return None;
                }
            }
            if tail.start + tail.size < self.nodes[node].acked_max {
                if !self.nodes[node].rotted_partial.contains(&tail.idx) {
                    self.violation(format!(
                        "slot {node}: failover cut an intact partial below what it acked"
                    ));
                    return None;
                }
                // The rot took acked bytes; drd detected it and forked
                // before them.
                self.nodes[node].acked_max = tail.start + tail.size;
            }
        }
        let n = &mut self.nodes[node];
        let mut fork_rec = tail.clone();
        if !tail.sealed {
            let seg = name_of(tail.idx);
            let mut store = n.disk.landing();
            let cut = store
                .cut(&seg, tail.size)
                .and_then(|()| store.digest(&seg, tail.size));
            let digest = match cut {
                Ok(d) => d,
                Err(e) => {
                    self.violation(format!("slot {node}: the fork's cut: {e}"));
                    return None;
                }
            };
            fork_rec.sha = Some(digest);
            fork_rec.chain = Some(chain::link(
                &n.cat.chain_head,
                &digest,
                name_of(tail.idx).as_str(),
                tail.size,
            ));
            fork_rec.sealed = true;
            fork_rec.check = None;
        }
        fork_rec.fork = true;
        Some(fork_rec)
    }

    /// Failover's Commit: the fork, the new role, and (the promoted
    /// database's) source after the fork, in one catalog transaction.
    fn commit_promotion(&mut self, node: usize, fork_rec: Rec, next: RoleState) {
        let n = &mut self.nodes[node];
        let (idx, end) = (fork_rec.idx, fork_rec.end());
        n.cat.chain_head = fork_rec.chain.unwrap_or(n.cat.chain_head);
        n.cat.recs.insert(idx, fork_rec);
        n.cat.fork = Some((idx, end));
        n.cat.state = next.clone();
        // The promoted database writes the new epoch's segments after the fork.
        n.src.clear();
        n.src.insert(idx + 1, end);
        n.disk.append_durable(&wal(idx + 1), &[]);
        n.paused = false;
        n.stalled_on_rot = false;
        n.handed_over = false;
        self.canon[stream_of(node)].truncate(end as usize);
        self.canon_owner[stream_of(node)] = node;
        self.out.failovers += 1;
        self.log(|| {
            format!(
                "operator: failover to slot {node} at epoch {} (fork at {end})",
                next.epoch
            )
        });
    }

    /// Failover's PromoteHook: the database here takes writes.
    fn promote_hook(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.db_on = true;
        n.db_hold = false;
        let life = n.life;
        self.after(MS, Ev::Connect { node, life });
    }

    /// `drctl rejoin` at a fenced node, carried out step by step as
    /// drd-core's [`rejoin::Rejoin`] orders them (ops/rejoin.rs): ask the
    /// new primary for its fork, compare the logs before it, cut back
    /// (drd-core's fork plan), quarantine what lay past it, record the cut
    /// with the new role.
    fn rejoin(&mut self, node: usize) {
        let mut steps = rejoin::Rejoin::new();
        self.rejoin_steps(node, &mut steps);
        match steps.outcome() {
            Some(RjOutcome::Refused { .. }) => self.out.rejoins_refused += 1,
            Some(RjOutcome::PartlyQuarantined { .. }) => self.out.rejoins_partly_quarantined += 1,
            Some(RjOutcome::Rejoined { .. }) => {}
            None => self.violation(format!("rejoin at slot {node} stopped half way")),
        }
    }

    fn rejoin_steps(&mut self, node: usize, steps: &mut rejoin::Rejoin) {
        use rejoin::Step as R;
        // Preflight: this node is up and the stream fenced here.
        if !self.nodes[node].up || self.nodes[node].cat.state.role != Role::Fenced {
            let r = steps.failed(R::Preflight);
            self.steps(r);
            return;
        }
        let r = steps.succeeded(R::Preflight);
        self.steps(r);
        // FindFork: the new primary answers, is primary, and has a fork.
        let p = peer(node);
        let found = (self.nodes[p].up
            && !self.blocked(node, p)
            && !self.blocked(p, node)
            && self.nodes[p].cat.state.role == Role::Primary)
            .then_some(self.nodes[p].cat.fork)
            .flatten()
            .and_then(|(fidx, fpos)| {
                let frec = self.nodes[p].cat.recs.get(&fidx)?;
                Some((frec.clone(), fpos))
            });
        let Some((frec, fpos)) = found else {
            let r = steps.failed(R::FindFork);
            self.steps(r);
            return;
        };
        let r = steps.succeeded(R::FindFork);
        self.steps(r);
        // CompareBeforeFork: the hash chain at the segment before the fork
        // segment (when both record it).
        let before = frec.idx.checked_sub(1);
        let theirs = before.and_then(|i| self.nodes[p].cat.recs.get(&i)?.chain);
        let ours = before.and_then(|i| self.nodes[node].cat.recs.get(&i)?.chain);
        if let (Some(a), Some(b)) = (theirs, ours) {
            if a != b {
                // Detected and refused; but no schedule can make honest logs
                // diverge before a fork.
                self.violation(format!(
                    "rejoin at slot {node}: the logs diverged before the fork segment {}",
                    frec.idx
                ));
                let r = steps.failed(R::CompareBeforeFork);
                self.steps(r);
                return;
            }
        }
        let r = steps.succeeded(R::CompareBeforeFork);
        self.steps(r);
        // PlanCut: the role again, then drd-core's fork plan.
        let primary_epoch = self.nodes[p].cat.state.epoch;
        let planned = roles::rejoin(&self.nodes[node].cat.state, primary_epoch)
            .ok()
            .and_then(|next| Some((next, self.plan_cut(node, &frec, fpos, "rejoin").ok()?)));
        let Some((next, cut)) = planned else {
            let r = steps.failed(R::PlanCut);
            self.steps(r);
            return;
        };
        let r = steps.succeeded(R::PlanCut);
        self.steps(r);
        // Quarantine; the only fault of its own: a crash half way.
        let crash_at = if !self.healed && self.aux.random_bool(0.25) {
            Some(self.aux.random_range(0..=cut.ops()))
        } else {
            None
        };
        if self
            .quarantine(node, &cut, primary_epoch, crash_at)
            .is_err()
        {
            let r = steps.failed(R::Quarantine);
            self.steps(r);
            return;
        }
        let r = steps.succeeded(R::Quarantine);
        self.steps(r);
        // Commit: the cut's records and the new role together.
        if self
            .record_cut(node, &cut, primary_epoch, "rejoin")
            .is_err()
        {
            return;
        }
        self.nodes[node].cat.state = next;
        let r = steps.succeeded(R::Commit);
        self.steps(r);
        // Resume: the new primary ships to this replica.
        self.nodes[node].db_on = false;
        self.out.rejoins += 1;
        self.log(|| format!("operator: slot {node} rejoined at fork {fpos}"));
        self.check_replica_log(node, "after its rejoin");
        let r = steps.succeeded(R::Resume);
        self.steps(r);
    }

    /// The cut of a rejoin or a switchover's demotion, planned (ops/fork.rs's
    /// plan_cut: up to `fork::Fork::plan`); it changes nothing.
    fn plan_cut(&mut self, node: usize, frec: &Rec, fpos: u64, why: &str) -> Result<Cut, ()> {
        let fidx = frec.idx;
        // What this node's log held past the fork, piece by piece, for
        // invariant 5.
        let old: Vec<Vec<u8>> = {
            let log = self.own_log(node);
            let mut pieces = Vec::new();
            for (_, (start, loc, _)) in log.range(fidx..) {
                let d = loc.read(&mut self.nodes[node].disk);
                let from = fpos.saturating_sub(*start) as usize;
                if from < d.len() {
                    pieces.push(d[from..].to_vec());
                }
            }
            pieces
        };
        let disk = &mut self.nodes[node].disk;
        let candidates = [
            Loc::Wal(fidx),
            Loc::Land(fidx, FileState::Complete),
            Loc::Land(fidx, FileState::Partial),
        ];
        let found = candidates
            .into_iter()
            .find_map(|l| l.len(disk).map(|len| (l, len)));
        let Some((fork_file, have)) = found else {
            let msg = format!("{why} at slot {node}: it does not hold the fork segment {fidx}");
            self.violation(msg);
            return Err(());
        };
        // The files held: the source's, then the landing directory's, each
        // in file-name order (a segment's complete file before its partial).
        let mut held: Vec<(u64, Loc)> = Vec::new();
        for s in disk.wal().list(None).unwrap_or_default() {
            if let Some(i) = idx_of(s.name.as_str()) {
                held.push((i, Loc::Wal(i)));
            }
        }
        let mut landed = disk.landing().list().unwrap_or_default();
        landed.sort_by_key(|(name, st)| (name.clone(), *st == FileState::Partial));
        for (name, st) in landed {
            if let Some(i) = idx_of(name.as_str()) {
                held.push((i, Loc::Land(i, st)));
            }
        }
        let f = fork::Fork {
            segment: name_of(fidx),
            start: frec.start,
            position: fpos,
        };
        let data = fork_file.read(disk);
        let plan = f.plan(
            have,
            |len| Some(sha(&data[..len as usize])) == frec.sha,
            held.iter().map(|(i, _)| name_of(*i)),
        );
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("{why} at slot {node} refused: {e}");
                self.violation(msg);
                return Err(());
            }
        };
        let moves = plan
            .quarantine
            .iter()
            .filter_map(|seg| idx_of(seg.as_str()))
            .flat_map(|i| held.iter().filter(move |(h, _)| *h == i))
            .map(|(_, loc)| loc.clone())
            .collect();
        Ok(Cut {
            frec: frec.clone(),
            fpos,
            fork_file,
            keep: plan.keep,
            tail_bytes: plan.tail_bytes,
            moves,
            old,
        })
    }

    /// The cut's Quarantine step (ops/fork.rs's quarantine): the fork
    /// segment's tail past the fork is written to quarantine, the segment
    /// cut back, and the later segments moved there. `crash_at`: the
    /// process dies before that many of these operations (a fault).
    fn quarantine(
        &mut self,
        node: usize,
        cut: &Cut,
        epoch: u64,
        crash_at: Option<usize>,
    ) -> Result<(), ()> {
        let fidx = cut.frec.idx;
        // What was owed to quarantine by a cut that did not finish stays
        // owed (invariant 5 across both rejoins).
        self.nodes[node].quar_owed.extend(cut.old.iter().cloned());
        let mut ops = 0;
        let mut crash = |w: &mut World| {
            if crash_at == Some(ops) {
                w.out.faults[QUARANTINE_CRASH] += 1;
                w.log(|| format!("fault: slot {node} crashes during its quarantine"));
                w.crash(w.shape.node_of(node), false);
                return true;
            }
            ops += 1;
            false
        };
        if cut.tail_bytes > 0 {
            if crash(self) {
                return Err(());
            }
            let n = &mut self.nodes[node];
            let data = cut.fork_file.read(&mut n.disk)[cut.keep as usize..].to_vec();
            let q = format!("quar/e{epoch}/{fidx}.after-fork-at-{}", cut.keep);
            n.disk.write_durable(&q, &data);
        }
        if crash(self) {
            return Err(());
        }
        // The fork segment cut back: a partial one through the store; the
        // source's or a complete one (which the store never cuts) on the
        // disk itself, as ops/fork.rs does.
        let disk = &mut self.nodes[node].disk;
        match cut.fork_file {
            Loc::Land(i, FileState::Partial) => {
                if let Err(e) = disk.landing().cut(&name_of(i), cut.keep) {
                    self.violation(format!("slot {node}: the fork's cut: {e}"));
                    return Err(());
                }
            }
            ref other => disk.truncate_durable(&other.path(), cut.keep),
        }
        // The quarantine is the ops layer's, not a store's: on the disk.
        for loc in &cut.moves {
            if crash(self) {
                return Err(());
            }
            let path = loc.path();
            let to = format!("quar/e{epoch}/{path}");
            self.nodes[node].disk.move_durable(&path, &to);
        }
        if crash(self) {
            return Err(());
        }
        Ok(())
    }

    /// The cut's catalog part (ops/fork.rs's record_cut), committed with
    /// the role; then invariant 5: every byte past the fork, of this cut and
    /// of any earlier one that did not finish, is in quarantine.
    fn record_cut(&mut self, node: usize, cut: &Cut, epoch: u64, why: &str) -> Result<(), ()> {
        let fidx = cut.frec.idx;
        let n = &mut self.nodes[node];
        n.cat.recs.retain(|&i, _| i < fidx);
        n.cat.recs.insert(
            fidx,
            Rec {
                idx: fidx,
                start: cut.frec.start,
                size: cut.keep,
                sealed: true,
                sha: cut.frec.sha,
                chain: cut.frec.chain,
                check: None,
                fork: true,
                in_source: matches!(cut.fork_file, Loc::Wal(_)),
            },
        );
        n.cat.chain_head = cut.frec.chain.unwrap_or(chain::GENESIS);
        n.cat.fork = Some((fidx, cut.fpos));
        n.src.clear();
        n.rotted.retain(|&i| i < fidx);
        n.rotted_partial.retain(|&i| i < fidx);
        n.stalled_on_rot = false;
        let held: BTreeSet<&[u8]> = n
            .disk
            .list("quar")
            .into_iter()
            .filter_map(|q| n.disk.file(&format!("quar/{q}")))
            .map(|f| &f.data[..])
            .collect();
        let lost: Vec<usize> = n
            .quar_owed
            .iter()
            .filter(|p| !held.contains(&p[..]))
            .map(Vec::len)
            .collect();
        n.quar_owed.clear();
        if !lost.is_empty() {
            let msg = format!(
                "invariant 5: {why} at slot {node} (epoch {epoch}): pieces of {lost:?} bytes of \
                 its log past the fork are not in quarantine"
            );
            self.violation(msg);
            return Err(());
        }
        Ok(())
    }

    fn start_switchover(&mut self, p: usize) {
        let mut steps = switchover::Switchover::new();
        // Preflight: the replica answers and is at our epoch.
        let r = peer(p);
        let ok = self.nodes[r].up
            && !self.blocked(p, r)
            && !self.blocked(r, p)
            && self.nodes[r].cat.state.role == Role::Replica
            && self.nodes[r].cat.state.epoch == self.nodes[p].cat.state.epoch;
        if !ok {
            self.switchover_failed(
                p,
                &mut steps,
                SwStep::Preflight,
                "the replica does not answer",
            );
            return;
        }
        let _ = steps.succeeded(SwStep::Preflight);
        // The pre-switchover hook stops writes.
        self.nodes[p].db_hold = true;
        let _ = steps.succeeded(SwStep::StopWrites);
        let stream = stream_of(p);
        self.switchover[stream] = Some(Switchover {
            primary: p,
            deadline: self.now + 2 * SEC,
            steps,
        });
        self.log(|| format!("operator: switchover from slot {p}: writes held, draining"));
        self.after(10 * MS, Ev::SwitchoverCheck { stream });
    }

    /// A failed step: drd-core says whether to roll back or fence.
    fn switchover_failed(
        &mut self,
        p: usize,
        steps: &mut switchover::Switchover,
        step: SwStep,
        why: &str,
    ) {
        self.switchover[stream_of(p)] = None;
        match steps.failed(step) {
            OnFailure::RollBack { resume_writes } => {
                if resume_writes {
                    self.nodes[p].db_hold = false;
                }
                self.out.switchovers_rolled_back += 1;
                self.log(|| format!("switchover rolled back at {}: {why}", step.name()));
            }
            OnFailure::Fence => {
                let epoch = self.nodes[peer(p)].cat.state.epoch;
                self.fence(
                    p,
                    epoch,
                    "switchover: promoted the replica but could not demote",
                );
                self.log(|| {
                    format!(
                        "switchover: slot {p} fenced itself at {}: {why}",
                        step.name()
                    )
                });
            }
        }
    }

    /// `drctl switchover`, step by step (drd-core's step machine): drain to
    /// lag 0, verify, promote the replica, demote the primary.
    pub(super) fn switchover_check(&mut self, stream: usize) {
        let Some(mut sw) = self.switchover[stream].take() else {
            return;
        };
        let p = sw.primary;
        let r = peer(p);
        let want = self.canon[stream].len() as u64;
        if self.nodes[p].cat.state.role != Role::Primary
            || self.nodes[r].cat.state.role != Role::Replica
            || self.canon_owner[stream] != p
        {
            let step = sw.steps.next().unwrap_or(SwStep::Drain);
            self.switchover_failed(p, &mut sw.steps, step, "roles changed");
            return;
        }
        let drained = self.nodes[p].up
            && self.nodes[r].up
            && self.nodes[p]
                .send
                .as_ref()
                .is_some_and(|s| s.welcomed && s.session.acked() == want)
            && self.nodes[r].recv.as_ref().is_none_or(|x| x.job.is_none())
            && self.log_end(r) == want
            && !self.blocked(p, r)
            && !self.blocked(r, p);
        if !drained {
            if self.now >= sw.deadline {
                self.switchover_failed(p, &mut sw.steps, SwStep::Drain, "not drained in time");
            } else {
                self.switchover[stream] = Some(sw);
                self.after(10 * MS, Ev::SwitchoverCheck { stream });
            }
            return;
        }
        let _ = sw.steps.succeeded(SwStep::Drain);
        // Verify: the logs agree (the chain head of the sealed segments).
        if self.nodes[r].cat.chain_head != self.nodes[p].cat.chain_head
            && self.nodes[p].cat.recs.values().any(|x| x.sealed)
        {
            self.switchover_failed(p, &mut sw.steps, SwStep::Verify, "hash chains differ");
            return;
        }
        // The oracle (invariant 4): the new primary has exactly the old
        // primary's log (segments that rotted at rest excepted: verify
        // reports those).
        self.check_replica_log(r, "at its switchover");
        if self.log_end(r) != want {
            self.violation(format!(
                "invariant 4: switchover: slot {r}'s log ends at {} but slot {p}'s at {want}",
                self.log_end(r)
            ));
        }
        if !self.out.violations.is_empty() {
            return;
        }
        let _ = sw.steps.succeeded(SwStep::Verify);
        if !self.promote_for_switchover(r, want) {
            self.switchover_failed(p, &mut sw.steps, SwStep::Promote, "promotion failed");
            return;
        }
        let _ = sw.steps.succeeded(SwStep::Promote);
        self.out.failovers -= 1;
        self.out.switchovers += 1;
        self.nodes[p].handed_over = true;
        let new_epoch = self.nodes[r].cat.state.epoch;
        if let Some(s) = self.nodes[p].send.take() {
            self.close_conn(s.conn);
        }
        // The demotion: its catalog commit can fail (a disk error).
        if self.rng.random_bool(0.1) {
            self.switchover_failed(
                p,
                &mut sw.steps,
                SwStep::Demote,
                "the demotion's commit failed",
            );
            return;
        }
        let Ok(next) = roles::demote(&self.nodes[p].cat.state, new_epoch) else {
            self.violation(format!(
                "switchover: demote of slot {p} to epoch {new_epoch} refused"
            ));
            return;
        };
        let Some((fidx, fpos)) = self.nodes[r].cat.fork else {
            return;
        };
        let Some(frec) = self.nodes[r].cat.recs.get(&fidx).cloned() else {
            return;
        };
        let Ok(cut) = self.plan_cut(p, &frec, fpos, "switchover") else {
            return;
        };
        if self.quarantine(p, &cut, new_epoch, None).is_err()
            || self.record_cut(p, &cut, new_epoch, "switchover").is_err()
        {
            return;
        }
        if fpos != want {
            self.violation(format!(
                "invariant 4: switchover forked at {fpos} but the log was {want} bytes"
            ));
        }
        let _ = sw.steps.succeeded(SwStep::Demote);
        let n = &mut self.nodes[p];
        n.cat.state = next;
        n.db_on = false;
        n.db_hold = false;
        n.handed_over = false;
        self.check_replica_log(p, "after its switchover");
    }
}
