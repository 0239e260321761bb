//! The end of a run: writes stop, the replica catches up, and the final
//! checks — both sites hold exactly the stream's log, `drctl verify` passes,
//! roles and epochs agree, nothing a promoted node held up to its fork
//! changed afterwards, RSS stayed bounded — then the run's report.

use super::*;

impl World {
    /// End of a run: writes stop, the replica catches up, and both sites
    /// must hold exactly the stream's log.
    pub(super) async fn finish(&mut self) {
        self.writer.stop();
        let total = self.writer.total();
        match self.wait_durable(total, "final catch-up").await {
            Ok(d) => self
                .rep
                .lock()
                .unwrap()
                .recoveries
                .push(("final catch-up", d)),
            Err(e) => {
                self.violation(e);
                return;
            }
        }
        self.shared.sample().await;
        self.check_files("at the end".into());
        let problems = tokio::task::block_in_place(|| {
            let w = self.writer.lock();
            let mut out = Vec::new();
            for s in &self.site {
                out.extend(check::site_equals_log(s, &w.oracle));
            }
            out
        });
        for p in problems {
            self.violation(format!("at the end: {p}"));
        }
        for i in 0..2 {
            let (code, out, err) = ctl(&self.d(i).socket.clone(), &["verify", "--json"]).await;
            if code != 0 {
                self.violation(format!(
                    "drctl verify at {} fails at the end: exit {code}\n{out}{err}",
                    self.d(i).name
                ));
            }
            match status(&self.d(i).socket).await {
                Some(st) => {
                    let want = if i == self.primary {
                        pb::Role::Primary
                    } else {
                        pb::Role::Replica
                    };
                    if st.role != want as i32 || st.epoch != self.epoch {
                        self.violation(format!(
                            "{} ends as role {} epoch {}, expected {want:?} at epoch {}",
                            self.d(i).name,
                            st.role,
                            st.epoch,
                            self.epoch
                        ));
                    }
                }
                None => self.violation(format!("{} does not answer at the end", self.d(i).name)),
            }
        }
        // Invariant 3 over the whole run: what a promoted node held up to
        // its fork never changed afterwards.
        for f in &self.forks {
            let now = dir_digests(&self.site[f.site].landing);
            for (name, sha) in &f.landing {
                if now.get(name) != Some(sha) {
                    self.violation(format!(
                        "{} of {} (held at the promotion to epoch {}, fork {}) changed later",
                        name, self.site[f.site].name, f.epoch, f.fork
                    ));
                }
            }
            for name in now.keys() {
                let base = name.strip_suffix(".partial").unwrap_or(name);
                if !f.landing.contains_key(name) && base <= f.fork_segment.as_str() {
                    self.violation(format!(
                        "{name} appeared at {} after the promotion to epoch {} (at or before the fork segment {})",
                        self.site[f.site].name, f.epoch, f.fork_segment
                    ));
                }
            }
        }
    }
}

/// Copies both daemons' logs to `<target>/chaos/logs/seed-N-SITE.log`.
pub(super) fn save_logs(w: &World) -> Option<PathBuf> {
    let dir = target_dir()?.join("chaos").join("logs");
    std::fs::create_dir_all(&dir).ok()?;
    for i in 0..2 {
        let d = w.d(i);
        let _ = std::fs::copy(&d.log, dir.join(format!("seed-{}-{}.log", w.seed, d.name)));
    }
    Some(dir)
}

pub(super) fn finish_report(w: &World) {
    let mut r = w.rep.lock().unwrap();
    let o = w.writer.lock();
    r.wal_bytes = o.oracle.total();
    r.cut_bytes = o.oracle.cut_bytes;
    r.link_bytes = w
        .links()
        .iter()
        .map(|l| l.forwarded.load(Ordering::Relaxed))
        .sum();
    r.max_rss_kib = [
        w.shared.max_rss_kib[0].load(Ordering::SeqCst),
        w.shared.max_rss_kib[1].load(Ordering::SeqCst),
    ];
    for (i, kib) in r.max_rss_kib.into_iter().enumerate() {
        if kib > w.cfg.rss_bound_kib {
            let v = format!(
                "{}'s RSS reached {} MiB (bound {} MiB)",
                w.d(i).name,
                kib / 1024,
                w.cfg.rss_bound_kib / 1024
            );
            r.violation(v);
        }
    }
    if w.cfg.keep_logs || !r.violations.is_empty() {
        if let Some(dir) = save_logs(w) {
            err_line(&format!(
                "  daemon logs of seed {} saved in {}",
                w.seed,
                dir.display()
            ));
        }
    }
}
