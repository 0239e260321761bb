//! The scheduled events: how each fault is injected, held and lifted,
//! and the crash-time checks of a replica kill -9, a bit flip at rest, a
//! failover (fencing, lower-epoch check, rejoin) and a switchover.

use super::*;

impl World {
    pub(super) async fn event(&mut self, kind: Fault) -> Result<(), String> {
        let p = self.primary;
        let r = 1 - p;
        let hold = self.hold(kind);
        match kind {
            Fault::Latency => {
                let (ms, jitter) = (self.rng.random_range(20..150), self.rng.random_range(0..60));
                for l in self.links() {
                    l.set_latency(ms, jitter);
                }
                // Holding the fault for its scheduled time (pacing).
                tokio::time::sleep(hold).await;
                for l in self.links() {
                    l.set_latency(0, 0);
                }
            }
            Fault::Bandwidth => {
                let rate = self.rng.random_range(128u64 << 10..1 << 20);
                self.link(p).set_rate(Some(rate));
                tokio::time::sleep(hold).await; // holding the fault
                self.link(p).set_rate(None);
            }
            Fault::Reset => {
                for l in self.links() {
                    l.reset_all();
                }
            }
            Fault::Corrupt => {
                let l = self.link(p);
                l.corrupt_once();
                let deadline = Instant::now() + Duration::from_secs(10);
                while l.corruption_pending() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if l.corruption_pending() {
                    l.heal_all();
                    self.skip("corruption: no traffic to corrupt within 10 s");
                    return Ok(());
                }
            }
            Fault::HalfOpen => {
                let dir = if self.rng.random_bool(0.5) {
                    Dir::Up
                } else {
                    Dir::Down
                };
                self.link(p).stall(dir, true);
                tokio::time::sleep(hold).await; // holding the fault
                self.link(p).stall(dir, false);
            }
            Fault::Partition => {
                for l in self.links() {
                    l.cut(true);
                }
                tokio::time::sleep(hold).await; // holding the fault
                for l in self.links() {
                    l.cut(false);
                }
            }
            Fault::IptablesPartition => {
                if let Err(why) = &self.iptables {
                    let why = why.clone();
                    self.rep.lock().unwrap().unavailable(why);
                    return Ok(());
                }
                let ports = [self.link(0).port, self.link(1).port];
                let guard = IptablesGuard::drop_ports(&ports)?;
                tokio::time::sleep(hold).await; // holding the fault
                drop(guard);
            }
            Fault::KillPrimary => {
                let down = Duration::from_millis(self.rng.random_range(0..1000));
                self.kill(p);
                tokio::time::sleep(down).await; // downtime before the restart
                self.start(p).await;
            }
            Fault::KillReplica => self.kill_replica().await?,
            Fault::StopPrimary | Fault::StopReplica => {
                let i = if kind == Fault::StopPrimary { p } else { r };
                self.d(i).signal("STOP");
                tokio::time::sleep(hold).await; // holding the fault
                self.d(i).signal("CONT");
            }
            Fault::Restart => {
                let i = if self.rng.random_bool(0.5) { p } else { r };
                self.shared.pids.lock().unwrap()[i] = None;
                let code = tokio::task::block_in_place(|| self.d_mut(i).terminate());
                self.running[i] = false;
                if code != Some(0) {
                    self.violation(format!(
                        "{} exited with {code:?} after SIGTERM (expected 0)",
                        self.d(i).name
                    ));
                }
                self.start(i).await;
            }
            Fault::DiskFull => {
                let Some(g) = &self.tmpfs[r] else {
                    self.skip("disk full: the replica's data dir is not on a tmpfs");
                    return Ok(());
                };
                let (filler, _) = g.fill();
                tokio::time::sleep(hold).await; // holding the fault
                let _ = std::fs::remove_file(&filler);
            }
            Fault::CorruptAtRest => {
                self.corrupt_at_rest().await;
                return Ok(());
            }
            Fault::Failover => return self.failover().await,
            Fault::Switchover => return self.switchover().await,
        }
        self.fault(kind.name());
        self.recover(kind.name()).await
    }

    /// kill -9 of the replica at a random point or in the middle of a
    /// burst; its first Welcome after the restart must resume at or past
    /// every position it acked (Invariant 1, checked at the crash).
    pub(super) async fn kill_replica(&mut self) -> Result<(), String> {
        let r = 1 - self.primary;
        let burst = self.rng.random_bool(self.cfg.kill_burst);
        let wait = Duration::from_millis(self.rng.random_range(0..500));
        let down = Duration::from_millis(self.rng.random_range(0..800));
        if burst {
            let before = self.primary_durable().await.unwrap_or(0);
            let n = self.cfg.burst_bytes;
            tokio::task::block_in_place(|| self.writer.lock().append(n));
            // Kill as soon as the primary sees the burst being acked.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.primary_durable().await.unwrap_or(0) > before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        } else {
            tokio::time::sleep(wait).await; // a random point in the stream
        }
        let log = self.d(r).log.clone();
        let log_len = std::fs::metadata(&log).map_or(0, |m| m.len());
        self.kill(r);
        // Acks sent before the kill have reached the primary (or are lost,
        // which only lowers this bound).
        self.shared.sample().await;
        let acked = self.shared.max_acked.load(Ordering::SeqCst);
        tokio::time::sleep(down).await; // downtime before the restart
        self.start(r).await;
        let t0 = Instant::now();
        let resumed = loop {
            if let Some(pos) = welcome_after(&log, log_len) {
                break pos;
            }
            if t0.elapsed() > self.cfg.recovery_bound {
                return Err(format!(
                    "no session to the restarted replica within {:?}",
                    self.cfg.recovery_bound
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if resumed < acked {
            self.violation(format!(
                "kill -9 of the replica ({}) lost acked bytes: positions up to {acked} were acked, \
                 the restarted replica resumed at its durable position {resumed} ({} acked bytes gone)",
                self.d(r).name,
                acked - resumed
            ));
        }
        Ok(())
    }

    /// A bit flip in a sealed segment at the replica: `drctl verify` must
    /// name it; then the byte is restored and verify passes again.
    pub(super) async fn corrupt_at_rest(&mut self) {
        let r = 1 - self.primary;
        let (pick, offset, bit) = (
            self.rng.random_range(0..1_000_000usize),
            self.rng.random::<u64>(),
            self.rng.random_range(0..8u32),
        );
        let list = |landing: &Path| {
            let mut sealed: Vec<String> = std::fs::read_dir(landing)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| check::is_segment_name(n))
                        .collect()
                })
                .unwrap_or_default();
            sealed.sort();
            // The newest complete file may not be committed in the catalog yet.
            sealed.pop();
            sealed
        };
        // Early in a run nothing may be sealed yet: give the writer a few
        // seconds (bounded) to fill two segments.
        let landing = self.site[r].landing.clone();
        let t0 = Instant::now();
        let mut sealed = list(&landing);
        while sealed.is_empty() && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sealed = list(&landing);
        }
        if sealed.is_empty() {
            self.skip("bit flip at rest: nothing sealed yet");
            return;
        }
        let name = sealed[pick % sealed.len()].clone();
        let path = self.site[r].landing.join(&name);
        let Ok(mut bytes) = std::fs::read(&path) else {
            self.skip("bit flip at rest: segment vanished");
            return;
        };
        if bytes.is_empty() {
            self.skip("bit flip at rest: empty segment");
            return;
        }
        let at = (offset % bytes.len() as u64) as usize;
        let original = bytes[at];
        bytes[at] ^= 1 << bit;
        let write_byte = |b: u8| {
            use std::os::unix::fs::FileExt;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.write_all_at(&[b], at as u64).and_then(|_| f.sync_data()))
        };
        if let Err(e) = write_byte(bytes[at]) {
            self.skip(format!("bit flip at rest: cannot write: {e}"));
            return;
        }
        self.fault(Fault::CorruptAtRest.name());
        let socket = self.d(r).socket.clone();
        let (code, out, err) = ctl(&socket, &["verify", "--json"]).await;
        let found = serde_json::from_str::<Value>(&out).ok().is_some_and(|j| {
            j["ok"] == false
                && j["problems"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["segment"] == name.as_str()))
        });
        if code != 1 || !found {
            self.violation(format!(
                "drctl verify at {} did not report the bit flip in {name} at byte {at}: exit {code}\n{out}{err}",
                self.d(r).name
            ));
        }
        if let Err(e) = write_byte(original) {
            self.violation(format!("cannot restore {name}: {e}"));
            return;
        }
        let (code, out, err) = ctl(&socket, &["verify", "--json"]).await;
        if code != 0 {
            self.violation(format!(
                "drctl verify at {} fails after {name} was restored: exit {code}\n{out}{err}",
                self.d(r).name
            ));
        }
    }

    /// Unplanned failover at the replica — after kill -9 of the primary, in
    /// a partition, or fencing a live primary — then the old primary comes
    /// back, must fence itself, and rejoins.
    pub(super) async fn failover(&mut self) -> Result<(), String> {
        let (p, r) = (self.primary, 1 - self.primary);
        let variant = self.rng.random_range(0..3);
        let pause = Duration::from_millis(self.rng.random_range(100..600));
        let name = [
            "failover after kill -9",
            "failover in a partition",
            "failover, live primary fenced",
        ][variant];
        match variant {
            0 => self.kill(p),
            1 => {
                for l in self.links() {
                    l.cut(true);
                }
            }
            _ => {}
        }
        // The old primary's database may write past the fork meanwhile.
        tokio::time::sleep(pause).await;
        let reason = format!("chaos seed {}", self.seed);
        let socket_r = self.d(r).socket.clone();
        let (code, out, err) = ctl(
            &socket_r,
            &["failover", "--yes", "--reason", &reason, "--json"],
        )
        .await;
        let j: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if code != 0 || j["refused"].as_str().is_some_and(|s| !s.is_empty()) {
            return Err(format!(
                "failover at {} failed: exit {code}\n{out}{err}",
                self.d(r).name
            ));
        }
        self.fault(name);
        self.rep.lock().unwrap().failovers += 1;
        self.epoch += 1;
        if j["new_epoch"].as_u64() != Some(self.epoch) {
            self.violation(format!("failover to epoch {} expected: {j}", self.epoch));
        }
        let fork = j["durable_position"].as_u64().unwrap_or(0);
        self.shared.sample().await;
        let acked = self.shared.max_acked.load(Ordering::SeqCst);
        if fork < acked {
            self.violation(format!(
                "failover lost acked bytes: the new primary's fork is at {fork}, but {acked} were acked"
            ));
        }
        // The log is now the old one up to the fork; new segments come
        // from the new primary's WAL dir, named past the fork segment.
        let landing = dir_digests(&self.site[r].landing);
        let fork_segment = {
            let mut w = self.writer.lock();
            w.oracle.truncate(fork);
            let next = w.last_segment() + 1;
            let dir = self.site[r].wal.clone();
            w.move_to(&dir, next);
            w.oracle
                .segments
                .last()
                .map(|s| s.name.clone())
                .unwrap_or_default()
        };
        self.primary = r;
        self.forks.push(ForkRecord {
            site: r,
            epoch: self.epoch,
            fork,
            fork_segment,
            landing: landing.clone(),
        });

        // The old primary comes back and must fence itself.
        match variant {
            0 => self.start(p).await,
            1 => {
                for l in self.links() {
                    l.cut(false);
                }
            }
            _ => {}
        }
        let t0 = Instant::now();
        loop {
            let st = status(&self.d(p).socket).await;
            if st.is_some_and(|s| s.role == pb::Role::Fenced as i32) {
                break;
            }
            if t0.elapsed() > self.cfg.recovery_bound {
                return Err(format!(
                    "the old primary {} did not fence itself within {:?} after the failover\n{}",
                    self.d(p).name,
                    self.cfg.recovery_bound,
                    self.d(p).log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Invariant 3: nothing of the lower epoch landed at the new primary.
        if dir_digests(&self.site[r].landing) != landing {
            self.violation(format!(
                "after the promotion to epoch {}, the old primary's session changed {}'s landing dir",
                self.epoch,
                self.d(r).name
            ));
        }
        let (_, hist, _) = ctl(&socket_r, &["history", "--json"]).await;
        let recorded = serde_json::from_str::<Value>(&hist).ok().is_some_and(|h| {
            h.as_array().is_some_and(|a| {
                a.iter().any(|e| {
                    e["action"] == "failover" && e["epoch_after"].as_u64() == Some(self.epoch)
                })
            })
        });
        if !recorded {
            self.violation(format!(
                "{}'s history has no failover to epoch {}: {hist}",
                self.d(r).name,
                self.epoch
            ));
        }
        let socket_p = self.d(p).socket.clone();
        let (code, out, err) = ctl(&socket_p, &["rejoin", "--reason", &reason, "--json"]).await;
        if code != 0 {
            return Err(format!(
                "rejoin of {} failed: exit {code}\n{out}{err}",
                self.d(p).name
            ));
        }
        let j: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if j["fork_position"].as_u64() != Some(fork) || j["new_epoch"].as_u64() != Some(self.epoch)
        {
            self.violation(format!(
                "rejoin reported a different fork/epoch than the failover ({fork}, {}): {j}",
                self.epoch
            ));
        }
        self.recover(Fault::Failover.name()).await
    }

    /// Planned switchover with the writer stopped: zero loss (Invariant 4),
    /// then the writer continues at the new primary.
    pub(super) async fn switchover(&mut self) -> Result<(), String> {
        let (p, r) = (self.primary, 1 - self.primary);
        self.writer.set_paused(true);
        let reason = format!("chaos seed {}", self.seed);
        let socket = self.d(p).socket.clone();
        let (code, out, err) = ctl(&socket, &["switchover", "--reason", &reason, "--json"]).await;
        let j: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if code != 0 || j["ok"] != true {
            self.writer.set_paused(false);
            let st = status(&socket).await.map(|s| s.streams);
            self.violation(format!(
                "switchover from {} failed (healthy link, writes stopped): exit {code}\n{out}{err}\n\
                 its stream now: {st:?}; the stream's log ends at {}",
                self.d(p).name,
                self.writer.total()
            ));
            return self.recover("switchover rolled back").await;
        }
        self.fault(Fault::Switchover.name());
        self.rep.lock().unwrap().switchovers += 1;
        self.epoch += 1;
        if j["new_epoch"].as_u64() != Some(self.epoch) {
            self.violation(format!("switchover to epoch {} expected: {j}", self.epoch));
        }
        self.primary = r;
        let problems = tokio::task::block_in_place(|| {
            check::site_equals_log(&self.site[r], &self.writer.lock().oracle)
        });
        for p in problems {
            self.violation(format!("after the switchover, the new primary: {p}"));
        }
        {
            let mut w = self.writer.lock();
            let next = w.seg + u64::from(w.in_seg > 0);
            let dir = self.site[r].wal.clone();
            w.move_to(&dir, next);
            w.paused = false;
        }
        self.recover(Fault::Switchover.name()).await
    }
}

/// The durable position of the first Welcome logged after byte `from`.
fn welcome_after(log: &Path, from: u64) -> Option<u64> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(from as usize..)?);
    let line = text
        .lines()
        .find(|l| l.contains("resuming at the durable position"))?;
    let v = line.split("durable_position=").nth(1)?;
    v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}
