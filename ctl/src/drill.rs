//! `drctl drill` (issue 21): run a DR drill at the DR site and keep its
//! signed report; `drctl drill verify DIR` checks a report; `drctl drill
//! history` lists the node's drills.
//!
//! Exit codes: 0 the drill passed / the report verifies / the history's
//! chain is intact; 1 the drill failed / the report does not verify / the
//! chain is broken; 2 usage; 3 the daemon could not be reached.

use crate::{print_json, progress, time};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use drd_client::display::bytes;
use drd_client::drill::{seal, Report, REPORT_HTML, REPORT_JSON, REPORT_SIG};
use drd_proto::pb;
use drd_proto::pb::control_client::ControlClient;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tonic::transport::Channel;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DrillArgs {
    #[command(subcommand)]
    pub cmd: Option<DrillCmd>,
    /// Stream to drill (default: the node's only stream).
    #[arg(long, default_value = "")]
    pub stream: String,
    /// Directory under which the report goes, as OUT/ID/{report.json,
    /// report.html, report.sig} (created). The node keeps its own copy
    /// under its data directory too.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Why the drill runs (kept in the report and the history).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Print JSON for scripts instead of a summary (no progress bar).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum DrillCmd {
    /// Check a drill report: its files' SHA-256, the signature by the DR
    /// node's certificate and that certificate's chain to the CA (at the
    /// signing time); where this node's daemon is reachable, also that it
    /// recorded the report and that its log holds the report's chain head.
    Verify(VerifyArgs),
    /// The node's drills, newest first, and whether the history's hash
    /// chain is intact.
    History(HistoryArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The directory holding report.json, report.html and report.sig.
    pub dir: PathBuf,
    /// Do not ask the local daemon (the signature and CA checks still run).
    #[arg(long)]
    pub offline: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct HistoryArgs {
    /// Only this stream (default: every stream).
    #[arg(long, default_value = "")]
    pub stream: String,
    /// Most entries shown.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

/// `drctl drill --stream S`: asks the daemon to run the drill and writes
/// the files it answers with.
pub async fn run(
    c: &mut ControlClient<Channel>,
    a: &DrillArgs,
    no_progress: bool,
) -> anyhow::Result<ExitCode> {
    let token = progress::token("drill");
    let mut call = c.clone();
    let request = call.drill(pb::DrillRequest {
        stream: a.stream.clone(),
        reason: a.reason.clone(),
        progress_token: token.clone(),
    });
    let show = progress::wanted(a.json, no_progress);
    let r = match progress::follow(c.clone(), &token, "drill", show, request).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            eprintln!("drctl: the drill did not run: {}", s.message());
            return Ok(ExitCode::from(2));
        }
    };
    let dir = a.out.join(&r.id);
    write_report(&dir, &r)
        .with_context(|| format!("cannot write the report into {}", dir.display()))?;
    let report = Report::from_json(&r.report_json).map_err(anyhow::Error::msg)?;
    if a.json {
        print_json(&json!({
            "id": r.id,
            "passed": r.passed,
            "dir": dir,
            "stored_in": r.stored_in,
            "rto_seconds": report.rto.seconds,
            "rpo_bytes": report.rpo.bytes,
            "rpo_seconds": report.rpo.seconds,
            "restored_lsn": report.rpo.restored_lsn,
            "reasons": report.verdict.reasons,
        }))?;
    } else {
        print_summary(&report, &dir, &r.stored_in);
    }
    Ok(if r.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The three files, each fsynced (the report is evidence; a crash right
/// after "written" must not leave it empty).
fn write_report(dir: &Path, r: &pb::DrillResponse) -> anyhow::Result<()> {
    use std::io::Write;
    if dir.join(REPORT_JSON).exists() {
        bail!("{} already holds a report", dir.display());
    }
    std::fs::create_dir_all(dir)?;
    for (name, data) in [
        (REPORT_JSON, &r.report_json),
        (REPORT_HTML, &r.report_html),
        (REPORT_SIG, &r.report_sig),
    ] {
        let mut f = std::fs::File::create(dir.join(name))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn print_summary(r: &Report, dir: &Path, stored_in: &str) {
    let verdict = if r.verdict.passed { "PASSED" } else { "FAILED" };
    println!("DRILL {verdict}: {} ({})", r.id, r.stream);
    for why in &r.verdict.reasons {
        println!("  why: {why}");
    }
    match r.rto.seconds {
        Some(s) => println!("  RTO  {s:.1} s (drill start to the scratch database answering)"),
        None => println!("  RTO  not reached"),
    }
    let restored = r
        .rpo
        .restored_lsn
        .as_ref()
        .map(|l| format!("; replay ended at {l}"))
        .unwrap_or_default();
    println!(
        "  RPO  {} / {:.1} s at the snapshot{restored}",
        bytes(r.rpo.bytes),
        r.rpo.seconds
    );
    println!("  steps:");
    for s in &r.steps {
        println!(
            "    {:<9} {:<8} {:>8.1} s  {}",
            s.name,
            s.outcome.as_str(),
            s.duration_ms as f64 / 1000.0,
            s.summary
        );
    }
    println!(
        "  report: {} (the node keeps a copy in {stored_in})",
        dir.display()
    );
    println!("  check it with: drctl drill verify {}", dir.display());
}

/// `drctl drill verify DIR`: offline first (files, signature, CA), then,
/// unless `--offline`, what the local daemon knows of the report.
pub async fn verify(a: &VerifyArgs, ca: Option<&Path>, socket: &Path) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    let read = |name: &str| std::fs::read(a.dir.join(name));
    let sig = read(REPORT_SIG)
        .with_context(|| format!("cannot read {}", a.dir.join(REPORT_SIG).display()))?;
    let sealed = seal::Seal::from_json(&sig).map_err(|e| anyhow::anyhow!("{REPORT_SIG}: {e}"))?;
    let ca_pem = match ca {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("cannot read the CA {}", p.display()))?)
        }
        None => None,
    };
    let verified = seal::verify(&sealed, read, ca_pem.as_deref());
    match &verified {
        Ok(v) if !v.chained_to_ca => problems.push(
            "the signing certificate was not checked against a CA: pass --ca (the hospital's \
             drd CA certificate) or run this where the config names it"
                .to_string(),
        ),
        Ok(_) => {}
        Err(e) => problems.push(e.to_string()),
    }
    for name in [REPORT_JSON, REPORT_HTML] {
        if !sealed.files.iter().any(|f| f.name == name) {
            problems.push(format!("{REPORT_SIG} does not cover {name}"));
        }
    }
    let json_bytes = read(REPORT_JSON).unwrap_or_default();
    let report = Report::from_json(&json_bytes);
    // What the node that signed it says, when it is this one.
    let mut node_check: Option<pb::DrillCheckResponse> = None;
    let mut node_note = String::from("not asked (--offline)");
    if let (false, Ok(r)) = (a.offline, &report) {
        match drd_client::control::connect(socket).await {
            Err(_) => node_note = format!("not checked: no drd reachable at {}", socket.display()),
            Ok(mut c) => {
                let req = pb::DrillCheckRequest {
                    stream: r.stream.clone(),
                    report_sha256: hex_sha256(&json_bytes),
                    segment: r.snapshot.last_segment.clone(),
                    chain_head: r.snapshot.chain_head.clone(),
                };
                match c.drill_check(req).await {
                    Err(s) => node_note = format!("not checked: {}", s.message()),
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        node_note = resp.detail.clone();
                        if !resp.recorded {
                            problems.push(format!(
                                "the drd at {} has no drill with this report in its history",
                                socket.display()
                            ));
                        }
                        if !resp.chain_matches && !resp.chain_at_segment.is_empty() {
                            problems.push(format!("chain head: {}", resp.detail));
                        }
                        node_check = Some(resp);
                    }
                }
            }
        }
    }
    let ok = problems.is_empty();
    if a.json {
        print_json(&json!({
            "ok": ok,
            "dir": a.dir,
            "problems": problems,
            "signer": verified.as_ref().ok().map(|v| v.signer.clone()),
            "signer_names": verified.as_ref().ok().map(|v| v.signer_names.clone()),
            "signed_at_ms": verified.as_ref().ok().map(|v| v.signed_at_ms),
            "chained_to_ca": verified.as_ref().is_ok_and(|v| v.chained_to_ca),
            "passed": report.as_ref().ok().map(|r| r.verdict.passed),
            "chain_head": report.as_ref().ok().map(|r| r.snapshot.chain_head.clone()),
            "node_recorded": node_check.as_ref().map(|c| c.recorded),
            "node_chain_matches": node_check.as_ref().map(|c| c.chain_matches),
            "node": node_note,
        }))?;
    } else {
        match &verified {
            Ok(v) => println!(
                "signature: valid, by {} ({}) at {}, {}",
                v.signer,
                v.signer_names.join(", "),
                time(v.signed_at_ms),
                if v.chained_to_ca {
                    "certificate issued by the given CA"
                } else {
                    "certificate NOT checked against a CA"
                }
            ),
            Err(e) => println!("signature: INVALID: {e}"),
        }
        if let Ok(r) = &report {
            println!(
                "report:    {} of {}: drill {} (chain head {} at {})",
                r.id,
                r.stream,
                if r.verdict.passed { "passed" } else { "FAILED" },
                short(&r.snapshot.chain_head),
                if r.snapshot.last_segment.is_empty() {
                    "-"
                } else {
                    &r.snapshot.last_segment
                }
            );
        }
        println!("node:      {node_note}");
        if ok {
            println!(
                "VERIFIED: {} is the report the DR node signed, unchanged.",
                a.dir.display()
            );
        } else {
            println!("NOT VERIFIED:");
            for p in &problems {
                println!("  - {p}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn hex_sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn short(h: &str) -> &str {
    h.get(..16).unwrap_or(h)
}

/// `drctl drill history`.
pub async fn history(c: &mut ControlClient<Channel>, a: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let r = c
        .drill_history(pb::DrillHistoryRequest {
            stream: a.stream.clone(),
            limit: a.limit,
        })
        .await
        .context("drill history request failed")?
        .into_inner();
    if a.json {
        print_json(&json!({
            "chain_ok": r.chain_ok,
            "chain_problem": r.chain_problem,
            "total": r.total,
            "drills": r.drills.iter().map(|d| json!({
                "seq": d.seq, "id": d.id, "stream": d.stream,
                "started_at_ms": d.started_at_ms, "finished_at_ms": d.finished_at_ms,
                "passed": d.passed,
                "rto_seconds": (d.rto_seconds >= 0.0).then_some(d.rto_seconds),
                "rpo_bytes": d.rpo_bytes, "rpo_seconds": d.rpo_seconds,
                "user": d.user, "reason": d.reason, "why": d.why,
                "report_sha256": d.report_sha256, "seal_sha256": d.seal_sha256,
                "prev_hash": d.prev_hash, "entry_hash": d.entry_hash, "stored_in": d.stored_in,
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        if r.drills.is_empty() {
            println!("no drill recorded yet (run `drctl drill --stream NAME` at the DR site)");
        } else {
            println!(
                "{:<4} {:<32} {:<20} {:<7} {:>8} {:>12} {:>8}  WHY / REASON",
                "SEQ", "ID", "STARTED", "RESULT", "RTO", "RPO", "RPO s"
            );
        }
        for d in &r.drills {
            let rto = if d.rto_seconds >= 0.0 {
                format!("{:.1} s", d.rto_seconds)
            } else {
                "-".into()
            };
            println!(
                "{:<4} {:<32} {:<20} {:<7} {:>8} {:>12} {:>8.1}  {}",
                d.seq,
                d.id,
                time(d.started_at_ms),
                if d.passed { "passed" } else { "FAILED" },
                rto,
                bytes(d.rpo_bytes),
                d.rpo_seconds,
                if d.why.is_empty() { &d.reason } else { &d.why }
            );
        }
        if r.chain_ok {
            println!("history chain: intact ({} entries)", r.total);
        } else {
            println!("history chain: BROKEN: {}", r.chain_problem);
        }
    }
    Ok(if r.chain_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The CA for `drill verify`: `--ca`, else the config's `[tls] ca` when
/// the config file exists.
pub fn ca_for_verify(flag: Option<&Path>, config: &Path) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    drd_client::config::tls_ca(config).ok().flatten()
}
