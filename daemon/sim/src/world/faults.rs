//! The faults that strike at random moments during the fault phase, what
//! heals them, and the idle timeouts that notice a dead connection.

use super::*;

impl World {
    pub(super) fn fault(&mut self) {
        let mut kind = self.rng.random_range(0..DRAWN_FAULTS);
        // Rot in a partial tail stops its replica for good once the seal
        // detects it (an operator must restore the segment), which ends
        // that schedule's liveness check: keep it rare (a tenth of the
        // others) so that most schedules are checked for liveness too.
        if kind == 7 && self.rng.random_bool(0.9) {
            kind = 2;
        }
        // Two nodes (a crash hits a; a partition cuts a from b) and a
        // stream (the faults at a replica hit this one's).
        let nodes = self.shape.nodes;
        let a = self.rng.random_range(0..nodes);
        let b = if nodes == 2 {
            1 - a
        } else {
            (a + self.rng.random_range(1..nodes)) % nodes
        };
        let streams = self.shape.streams();
        let st = if streams > 1 {
            self.rng.random_range(0..streams)
        } else {
            0
        };
        let primary = self.canon_owner[st];
        let replica = peer(primary);
        self.out.faults[kind] += 1;
        self.log(|| format!("fault: {} (node {a}, node {b}, stream {st})", FAULTS[kind]));
        match kind {
            0 | 1 => {
                self.links_down[a][b] = true;
                if kind == 0 {
                    self.links_down[b][a] = true;
                }
                let d = self.rng.random_range(50 * MS..1_500 * MS);
                self.after(d, Ev::Heal);
            }
            2 => {
                let ids: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.open)
                    .map(|(i, _)| *i)
                    .collect();
                for i in ids {
                    self.close_conn(i);
                }
            }
            3 => self.crash(a, false),
            4 => self.crash(a, true),
            5 => {
                // The replica's node's disk: every stream there.
                for k in self.slots_at(self.shape.node_of(replica)) {
                    self.nodes[k].disk.full = true;
                }
                let d = self.rng.random_range(20 * MS..500 * MS);
                self.after(d, Ev::Heal);
            }
            6 => {
                // A sealed segment at the replica, not its last one.
                let n = &self.nodes[replica];
                let sealed: Vec<u64> = n
                    .cat
                    .recs
                    .values()
                    .filter(|r| r.sealed && !r.fork && !r.in_source && r.size > 0)
                    .filter(|r| !n.rotted.contains(&r.idx))
                    .map(|r| r.idx)
                    .collect();
                if sealed.len() >= 3 {
                    let i = sealed[self.rng.random_range(0..sealed.len() - 2)];
                    let at = self
                        .rng
                        .random_range(0..self.nodes[replica].cat.recs[&i].size)
                        as usize;
                    let path = land(i, false);
                    if self.nodes[replica].disk.exists(&path) {
                        self.nodes[replica].disk.rot(&path, at);
                        self.nodes[replica].rotted.insert(i);
                    }
                }
            }
            7 => {
                // The replica's partial tail, before its seal: the
                // session's tail (what the catalog says may be older).
                let n = &self.nodes[replica];
                let tail = match n.recv.as_ref() {
                    Some(r) => r
                        .session
                        .tail()
                        .filter(|t| !t.sealed)
                        .map(|t| (idx_of(t.segment.as_str()).unwrap_or(0), t.size)),
                    None => n
                        .cat
                        .recs
                        .values()
                        .next_back()
                        .filter(|t| !t.sealed)
                        .map(|t| (t.idx, t.size)),
                };
                if let Some((i, size)) = tail.filter(|t| t.1 > 0) {
                    let at = self.rng.random_range(0..size) as usize;
                    self.nodes[replica].disk.rot(&land(i, true), at);
                    self.nodes[replica].rotted_partial.insert(i);
                }
            }
            8 => self.corrupt_next = true,
            9 => self.dup_next = true,
            10 => self.reorder_next = true,
            11 => self.replay_old_session(replica),
            _ => {
                // A hostile replica acks past what it was sent.
                let r = &self.nodes[replica];
                if let Some(rv) = r.recv.as_ref() {
                    let conn = rv.conn;
                    let acked = r.acked_max;
                    // Past what it was sent (an ack within it is a lie no
                    // protocol can catch; one past it must be refused).
                    // It may arrive after a Welcome moved the session on,
                    // so it is placed past the primary's whole log, not
                    // just past what this session has sent so far (a
                    // session not yet welcomed has sent nothing: seed
                    // 548473 acked within what the primary then sent).
                    let sent = self.nodes[primary]
                        .send
                        .as_ref()
                        .map_or(acked, |s| s.session.sent_end());
                    let log = self.own_log(primary);
                    let disk = &mut self.nodes[primary].disk;
                    let primary_end = log
                        .values()
                        .map(|(start, loc, _)| start + loc.len(disk).unwrap_or(0))
                        .max()
                        .unwrap_or(0);
                    let bogus = sent.max(acked).max(primary_end)
                        + 64 * SEG_BYTES
                        + self.rng.random_range(0..1000);
                    self.send_msg(
                        conn,
                        primary,
                        Msg::Ack {
                            durable: bogus,
                            sealed: false,
                            segment: String::new(),
                        },
                    );
                }
            }
        }
    }

    /// An old session's traffic arrives again at the replica (a middlebox
    /// replaying it, or a stale primary's process that never died): the
    /// epoch checks must refuse it when its epoch is lower.
    /// `--io-faults`: a flush step fails with EIO instead of completing.
    ///
    /// - The tail's fdatasync: the dirty pages of the failed writeback may
    ///   be dropped, so its unsynced bytes are lost or torn now, not only
    ///   at a power cut (Linux marks them clean after the error).
    /// - A sealed file's fdatasync before its rename: nothing is renamed
    ///   and the directory is not synced; that file's unsynced bytes may be
    ///   lost the same way.
    /// - The catalog commit: nothing of it is written (drd-core then has
    ///   the renames undone, not durably, as the daemon does).
    ///
    /// The group then reports the failure to drd-core, which acks nothing
    /// of it and asks for a rollback of the tail's record if the commit
    /// had recorded bytes the failed fdatasync did not make durable.
    pub(super) fn flush_step_fails(&mut self, node: usize, job_id: u64, step: Step) {
        let n = &mut self.nodes[node];
        let Some(r) = n.recv.as_mut() else { return };
        let Some(j) = r.job.as_mut().filter(|j| j.id == job_id) else {
            return;
        };
        let which = match step {
            Step::TailSynced => {
                if let Some((segment, _)) = &j.tail {
                    let path = landing_path(segment, FileState::Partial);
                    n.disk.lose_unsynced(&path, &mut Draws(&mut self.rng));
                }
                0
            }
            Step::NamesDurable => {
                if let Some(s) = j.renames.iter().find(|s| s.sync) {
                    let path = landing_path(&s.segment, FileState::Partial);
                    n.disk.lose_unsynced(&path, &mut Draws(&mut self.rng));
                }
                1
            }
            // drd-core then asks for the renames to be undone.
            Step::Committed => {
                j.commit_started = false;
                2
            }
        };
        self.out.io_errors[which] += 1;
        self.log(|| format!("slot {node}: flush step {step:?} fails (EIO)"));
        let Some(j) = self.nodes[node].recv.as_mut().and_then(|r| r.job.as_mut()) else {
            return;
        };
        match j.group.handle(GroupEvent::Failed(step)) {
            Ok(cmds) => self.after_flush_step(node, job_id, cmds),
            Err(e) => {
                self.misuse(node, e);
            }
        }
    }

    fn replay_old_session(&mut self, to: usize) {
        let history = &self.history[stream_of(to)];
        if history.len() < 2 {
            return;
        }
        let i = self.rng.random_range(0..history.len() - 1);
        let (epoch, msgs) = self.history[stream_of(to)][i].clone();
        if epoch >= self.nodes[to].cat.state.epoch {
            // Same epoch: a duplicate session that the continuity checks
            // handle; replay only older ones here.
            return;
        }
        let conn = self.open_conn(peer(to), to, true);
        self.log(|| format!("net: replaying a session of epoch {epoch} on conn {conn}"));
        let mut t = self.now;
        for m in msgs {
            t += self.rng.random_range(50..500);
            self.at(t, Ev::Deliver { conn, to, msg: m });
        }
    }

    fn heal_faults(&mut self) {
        for links in &mut self.links_down {
            links.fill(false);
        }
        for n in &mut self.nodes {
            n.disk.full = false;
        }
    }

    pub(super) fn heal(&mut self) {
        if self.now >= self.heal_at && !self.healed {
            self.healed = true;
            self.heal_faults();
            self.corrupt_next = false;
            self.dup_next = false;
            self.reorder_next = false;
            if let Some((c, to, m)) = self.held_reorder.take() {
                self.after(
                    1,
                    Ev::Deliver {
                        conn: c,
                        to,
                        msg: m,
                    },
                );
            }
            self.log(|| "all faults heal".to_string());
            for node in 0..self.nodes.len() {
                let n = &mut self.nodes[node];
                n.db_hold = false;
                if !n.up {
                    let host = self.shape.node_of(node);
                    self.after(MS, Ev::Restart { node: host });
                }
                let n = &mut self.nodes[node];
                n.paused = false;
                let life = n.life;
                self.after(MS, Ev::Connect { node, life });
            }
            self.switchover.fill(None);
            return;
        }
        if !self.healed {
            // One fault's end: heal the network and the disk (other faults
            // still come).
            self.heal_faults();
            for node in 0..self.nodes.len() {
                let life = self.nodes[node].life;
                self.after(MS, Ev::Connect { node, life });
            }
        }
    }

    /// Idle timeouts: a session with no message for IDLE is given up.
    pub(super) fn idle(&mut self) {
        for node in 0..self.nodes.len() {
            if let Some(s) = &self.nodes[node].send {
                let dead = self.conns.get(&s.conn).is_none_or(|c| !c.open);
                if dead && self.now.saturating_sub(s.last_seen) > IDLE
                    || self.now.saturating_sub(s.last_seen) > 4 * IDLE
                {
                    self.end_send(node);
                }
            } else if self.nodes[node].cat.state.role == Role::Primary {
                let life = self.nodes[node].life;
                self.after(0, Ev::Connect { node, life });
            }
            if let Some(r) = &self.nodes[node].recv {
                let dead = self.conns.get(&r.conn).is_none_or(|c| !c.open);
                if r.job.is_none() && dead && self.now.saturating_sub(r.last_seen) > IDLE {
                    self.end_recv(node);
                }
            }
        }
    }
}
