//! The human half of a drill report: one self-contained, printable HTML5
//! page (`report.html`) — inline CSS and SVG, no script, no external
//! resources. Everything taken from the report is escaped ([`esc`]): hook
//! output is arbitrary text. The lag chart is drawn by [`super::chart`].

use super::chart::{self, sane, utc};
use super::{LagPoint, Report, Rpo, Rto, Snapshot, Step, Verdict, Verify};
use crate::display;
use std::fmt::Write;

/// The page's style: readable on screen, and in print (colours kept).
const CSS: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#24292f;max-width:60rem;\
margin:1.5rem auto;padding:0 1rem;line-height:1.45}\
h1{font-size:1.6rem;margin-bottom:.5rem}h2{font-size:1.2rem;margin:1.6rem 0 .5rem;\
border-bottom:1px solid #d0d7de}\
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}\
#verdict{color:#fff;font-size:1.6rem;font-weight:700;padding:.6rem 1rem;border-radius:6px}\
#verdict.pass{background:#1a7f37}#verdict.fail{background:#cf222e}\
ul.reasons{margin:.4rem 0 0}\
table{border-collapse:collapse;width:100%;margin:.3rem 0}\
th,td{text-align:left;vertical-align:top;padding:.25rem .5rem;border-bottom:1px solid #eaeef2}\
th{white-space:nowrap;font-weight:600}\
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}\
.mono{word-break:break-all}\
pre{white-space:pre-wrap;word-break:break-all;background:#f6f8fa;padding:.5rem;margin:.3rem 0;\
border-radius:4px}\
.boxes{display:flex;gap:1rem;flex-wrap:wrap}\
.box{flex:1 1 18rem;border:1px solid #d0d7de;border-radius:6px;padding:.4rem 1rem .8rem}\
.box h2{border:0;margin-top:.4rem}.big{font-size:1.5rem;font-weight:700;margin:.2rem 0}\
.muted{color:#57606a}.bad{color:#cf222e;font-weight:600}\
.outcome{font-weight:700}.outcome.passed{color:#1a7f37}.outcome.failed{color:#cf222e}\
.outcome.skipped{color:#57606a}\
figure{margin:.5rem 0}#lag-chart{max-width:100%;height:auto}\
figcaption{font-size:.9rem;color:#57606a}\
footer{margin-top:2rem;border-top:1px solid #d0d7de;padding-top:.5rem;font-size:.9rem}\
@media print{body{margin:0;max-width:none}section,figure,tr{break-inside:avoid}\
details::details-content{content-visibility:visible;display:block}}";

/// `s` made safe as HTML text or as a quoted attribute value: `& < > " '`
/// escaped, and control characters other than tab and newlines (say, a
/// hook's terminal colour codes) shown as U+FFFD.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if c.is_control() => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

/// The page for `report`: self-contained, deterministic (the same report
/// gives the same bytes), and safe for any report, however corrupt.
pub fn render(report: &Report) -> String {
    let output: usize = report.steps.iter().map(|s| s.output.len()).sum();
    let mut o = String::with_capacity(24 * 1024 + output.saturating_mul(2));
    head(&mut o, report);
    verdict(&mut o, &report.verdict);
    summary(&mut o, report);
    recovery(&mut o, &report.rto, &report.rpo);
    snapshot(&mut o, &report.snapshot);
    lag(&mut o, &report.lag_history, report.lag_bucket_seconds);
    verification(&mut o, &report.verify);
    steps(&mut o, &report.steps);
    scratch(&mut o, report);
    footer(&mut o, report.format);
    o
}

/// `1258291` → `1,258,291`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut o = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && digits.len().saturating_sub(i).is_multiple_of(3) {
            o.push(',');
        }
        o.push(c);
    }
    o
}

/// `1258291` → `1.2 MiB (1,258,291 bytes)`; small sizes just in bytes.
fn size(n: u64) -> String {
    if n < 1024 {
        format!("{n} bytes")
    } else {
        format!("{} ({} bytes)", display::bytes(n), grouped(n))
    }
}

/// A stream position: `1,258,291 (1.2 MiB)`.
fn position(n: u64) -> String {
    format!("{} ({})", grouped(n), display::bytes(n))
}

/// Seconds with one decimal, corrupt values as 0: `12.3 s`.
fn seconds(v: f64) -> String {
    format!("{:.1} s", sane(v))
}

/// A duration in ms for people: `850 ms`, `12.3 s`, `5 min`,
/// `3 min 05 s`, `2 h 03 min`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms} ms")
    } else if s < 60 {
        format!("{}.{} s", s, ms % 1000 / 100)
    } else if s < 3600 && s.is_multiple_of(60) && ms.is_multiple_of(1000) {
        format!("{} min", s / 60)
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else if s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else {
        format!("{} h {:02} min", s / 3600, s / 60 % 60)
    }
}

/// Seconds as a duration for people, alongside the exact figure.
fn seconds_long(v: f64) -> String {
    let v = sane(v);
    if v < 60.0 {
        seconds(v)
    } else {
        // Saturates for absurd values; fine for a label.
        format!("{} ({})", seconds(v), duration((v * 1000.0) as u64))
    }
}

/// A time that may be "never" (0).
fn time_or_never(ms: u64) -> String {
    if ms == 0 {
        "never".into()
    } else {
        utc(ms)
    }
}

/// One `<tr>`: `label` is ours (plain text); `value` is HTML the caller
/// built (escaped where it came from the report).
fn row(o: &mut String, label: &str, value: &str) {
    let _ = write!(o, "<tr><th>{label}</th><td>{value}</td></tr>");
}

/// A row whose value is report text, escaped here.
fn text_row(o: &mut String, label: &str, value: &str) {
    row(o, label, &esc(value));
}

/// A row whose value is monospace report text.
fn mono_row(o: &mut String, label: &str, value: &str) {
    row(
        o,
        label,
        &format!("<span class=\"mono\">{}</span>", esc(value)),
    );
}

fn head(o: &mut String, r: &Report) {
    let title = format!("drd DR drill — {}", esc(&r.stream));
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" \
         content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
    );
}

fn verdict(o: &mut String, v: &Verdict) {
    let (class, word) = if v.passed {
        ("pass", "PASSED")
    } else {
        ("fail", "FAILED")
    };
    let _ = writeln!(o, "<div id=\"verdict\" class=\"{class}\">{word}</div>");
    if !v.reasons.is_empty() {
        o.push_str("<ul class=\"reasons\">");
        for reason in &v.reasons {
            let _ = write!(o, "<li>{}</li>", esc(reason));
        }
        o.push_str("</ul>\n");
    }
}

fn summary(o: &mut String, r: &Report) {
    o.push_str("<section id=\"summary\"><h2>Summary</h2><table>");
    text_row(o, "Stream", &r.stream);
    mono_row(o, "Drill id", &r.id);
    text_row(o, "DR node", &r.node_id);
    text_row(o, "Primary", &r.primary);
    text_row(o, "drd version", &r.drd_version);
    match &r.database_version {
        Some(v) => text_row(o, "Database version", v),
        None => row(
            o,
            "Database version",
            "<span class=\"muted\">not reported</span>",
        ),
    }
    text_row(o, "Requested by", &r.user);
    text_row(o, "From", &r.origin);
    text_row(o, "Reason", &r.reason);
    row(o, "Started", &utc(r.started_at_ms));
    row(o, "Finished", &utc(r.finished_at_ms));
    row(
        o,
        "Duration",
        &duration(r.finished_at_ms.saturating_sub(r.started_at_ms)),
    );
    o.push_str("</table></section>\n");
}

fn recovery(o: &mut String, rto: &Rto, rpo: &Rpo) {
    o.push_str("<div class=\"boxes\">");
    let rto_value = match rto.seconds {
        Some(v) => seconds_long(v),
        None => "not reached".into(),
    };
    let _ = write!(
        o,
        "<section class=\"box\" id=\"rto\"><h2>RTO — recovery time</h2>\
         <p class=\"big\">{rto_value}</p><p class=\"muted\">{}</p></section>",
        esc(&rto.method)
    );
    let _ = write!(
        o,
        "<section class=\"box\" id=\"rpo\"><h2>RPO — recovery point</h2>\
         <p class=\"big\">{}</p><p>{} behind the primary</p>",
        size(rpo.bytes),
        seconds_long(rpo.seconds)
    );
    if let Some(lsn) = &rpo.restored_lsn {
        let _ = write!(o, "<p>Restored to LSN <code>{}</code></p>", esc(lsn));
    }
    if let Some(gap) = rpo.restored_lsn_gap_bytes {
        let _ = write!(o, "<p>Gap to the primary's LSN: {}</p>", size(gap));
    }
    let _ = write!(o, "<p class=\"muted\">{}</p></section>", esc(&rpo.method));
    o.push_str("</div>\n");
}

/// `X/Y` with its timeline when known.
fn lsn(lsn: &str, timeline: Option<u32>) -> String {
    match timeline {
        Some(t) => format!("<code>{}</code> (timeline {t})", esc(lsn)),
        None => format!("<code>{}</code>", esc(lsn)),
    }
}

fn snapshot(o: &mut String, s: &Snapshot) {
    o.push_str("<section id=\"snapshot\"><h2>Snapshot of the verified log</h2><table>");
    row(o, "Taken at", &utc(s.taken_at_ms));
    row(o, "DR durable position", &position(s.durable_position));
    row(o, "Durable since", &time_or_never(s.durable_at_ms));
    row(
        o,
        "Primary written position",
        &position(s.primary_written_position),
    );
    let heard = if s.primary_heard_at_ms == 0 {
        "unknown (not connected at the snapshot)".to_string()
    } else {
        chart::utc(s.primary_heard_at_ms)
    };
    row(o, "Primary heard at", &heard);
    row(
        o,
        "Primary connected",
        if s.primary_connected {
            "yes"
        } else {
            "<span class=\"bad\">no</span>"
        },
    );
    row(
        o,
        "Lag",
        &format!("{}, {}", size(s.lag_bytes), seconds_long(s.lag_seconds)),
    );
    mono_row(o, "Chain head", &s.chain_head);
    mono_row(o, "Last sealed segment", &s.last_segment);
    row(o, "Sealed segments", &grouped(s.sealed_segments));
    if let Some(l) = &s.durable_lsn {
        row(o, "DR durable LSN", &lsn(l, s.durable_timeline));
    }
    if let Some(l) = &s.primary_lsn {
        row(o, "Primary LSN", &lsn(l, s.primary_timeline));
    }
    o.push_str("</table></section>\n");
}

/// The worst point by seconds (first wins a tie) and the peak bytes.
fn peaks(history: &[LagPoint]) -> (Option<&LagPoint>, u64) {
    let mut worst: Option<&LagPoint> = None;
    for p in history {
        if worst.is_none_or(|w| sane(p.max_lag_seconds) > sane(w.max_lag_seconds)) {
            worst = Some(p);
        }
    }
    let bytes = history.iter().map(|p| p.max_lag_bytes).max().unwrap_or(0);
    (worst, bytes)
}

fn lag(o: &mut String, history: &[LagPoint], bucket_seconds: u64) {
    o.push_str("<section id=\"lag\"><h2>DR lag before the drill</h2><figure>");
    o.push_str(&chart::lag_svg(history, bucket_seconds));
    o.push_str("<figcaption>");
    let first = history.iter().map(|p| p.at_ms).min();
    let last = history.iter().map(|p| p.at_ms).max();
    match (first, last, peaks(history)) {
        (Some(first), Some(last), (Some(worst), peak_bytes)) => {
            let end = last.saturating_add(bucket_seconds.saturating_mul(1000));
            let _ = write!(
                o,
                "Window {} – {}, one point per {} bucket ({} points). \
                 Peak lag {} at {}; peak {} behind. \
                 Red bands: the primary was disconnected; breaks in the line: \
                 the daemon was not running.",
                utc(first),
                utc(end),
                duration(bucket_seconds.saturating_mul(1000)),
                history.len(),
                seconds_long(worst.max_lag_seconds),
                utc(worst.at_ms),
                size(peak_bytes)
            );
        }
        _ => o.push_str("No lag history recorded."),
    }
    o.push_str("</figcaption></figure></section>\n");
}

fn verification(o: &mut String, v: &Verify) {
    o.push_str("<section id=\"verify\"><h2>Verification of the sealed segments</h2><p>");
    let _ = write!(
        o,
        "{} segments, {} checked; ",
        grouped(v.segments_checked),
        size(v.bytes_checked)
    );
    if v.problems_total == 0 && v.problems.is_empty() {
        o.push_str("no problems found.</p>");
    } else {
        let _ = write!(
            o,
            "<span class=\"bad\">{} problem{}</span>.</p>",
            grouped(v.problems_total),
            if v.problems_total == 1 { "" } else { "s" }
        );
    }
    if !v.problems.is_empty() {
        o.push_str("<table><tr><th>Segment</th><th>Problem</th></tr>");
        for p in &v.problems {
            let _ = write!(
                o,
                "<tr><td class=\"mono\">{}</td><td>{}</td></tr>",
                esc(&p.segment),
                esc(&p.problem)
            );
        }
        o.push_str("</table>");
    }
    let listed = u64::try_from(v.problems.len()).unwrap_or(u64::MAX);
    if v.problems_total > listed {
        let _ = write!(
            o,
            "<p>… and {} more not listed.</p>",
            grouped(v.problems_total - listed)
        );
    }
    o.push_str("</section>\n");
}

fn steps(o: &mut String, steps: &[Step]) {
    o.push_str(
        "<section id=\"steps\"><h2>Steps</h2><table><tr><th>Step</th><th>Start</th>\
         <th>Duration</th><th>Outcome</th><th>Summary</th><th>Command</th></tr>",
    );
    for s in steps {
        step(o, s);
    }
    o.push_str("</table></section>\n");
}

fn step(o: &mut String, s: &Step) {
    let outcome = s.outcome.as_str();
    let command = if s.command.is_empty() {
        "<span class=\"muted\">—</span>".to_string()
    } else {
        format!("<code>{}</code>", esc(&s.command))
    };
    let _ = write!(
        o,
        "<tr class=\"step\"><td>{}</td><td>+{}</td><td>{}</td>\
         <td class=\"outcome {outcome}\">{outcome}</td><td>{}</td><td>{command}</td></tr>",
        esc(&s.name),
        duration(s.started_after_ms),
        duration(s.duration_ms),
        esc(&s.summary),
    );
    let _ = write!(
        o,
        "<tr class=\"output\"><td colspan=\"6\"><details><summary>output</summary>\
         <pre>{}</pre></details></td></tr>",
        esc(&s.output)
    );
}

fn scratch(o: &mut String, r: &Report) {
    let removed = if r.scratch_removed {
        "removed after teardown"
    } else {
        "<span class=\"bad\">NOT removed after teardown</span>"
    };
    let _ = writeln!(
        o,
        "<section id=\"scratch\"><h2>Scratch directory</h2>\
         <p><code>{}</code> — {removed}.</p></section>",
        esc(&r.scratch_dir)
    );
}

fn footer(o: &mut String, format: u32) {
    let _ = write!(
        o,
        "<footer><p>This page is covered by report.sig; check it with \
         <code>drctl drill verify DIR</code>.</p>\
         <p class=\"muted\">drd drill report format {format}.</p></footer>\n</body>\n</html>\n"
    );
}

#[cfg(test)]
mod tests {
    use super::super::{Outcome, Problem, REPORT_FORMAT};
    use super::*;

    const T0: u64 = 1_796_109_300_000; // 2026-12-01 07:15:00 UTC

    fn point(i: u64, lag: f64) -> LagPoint {
        LagPoint {
            at_ms: T0 + i * 300_000,
            max_lag_seconds: lag,
            max_lag_bytes: i * 1000,
            connected: i % 7 != 3,
        }
    }

    fn sample() -> Report {
        Report {
            format: REPORT_FORMAT,
            id: "ehr-20261202T071500Z".into(),
            stream: "ehr".into(),
            node_id: "dr-1".into(),
            primary: "pri-1".into(),
            drd_version: "drd 0.1.0 (abc123)".into(),
            started_at_ms: T0 + 86_400_000,
            finished_at_ms: T0 + 86_400_000 + 754_200,
            steps: vec![Step {
                name: "restore".into(),
                outcome: Outcome::Failed,
                output: "line 1\nline 2".into(),
                ..Default::default()
            }],
            rto: Rto {
                seconds: Some(754.2),
                method: "start to check".into(),
            },
            rpo: Rpo {
                bytes: 1_258_291,
                seconds: 0.4,
                ..Default::default()
            },
            lag_history: (0..10).map(|i| point(i, i as f64 * 0.5)).collect(),
            lag_bucket_seconds: 300,
            verdict: Verdict {
                passed: true,
                reasons: vec![],
            },
            ..Default::default()
        }
    }

    /// Every `points="…"` attribute of the lag polylines, as point counts.
    fn polylines(page: &str) -> Vec<usize> {
        page.split("<polyline class=\"lag-line\"")
            .skip(1)
            .map(|rest| {
                let pts = rest.split("points=\"").nth(1).unwrap();
                pts[..pts.find('"').unwrap()].split(' ').count()
            })
            .collect()
    }

    #[test]
    fn verdict_banner_is_pass_or_fail() {
        let page = render(&sample());
        assert!(page.contains("<div id=\"verdict\" class=\"pass\">PASSED</div>"));
        assert!(page.contains("<title>drd DR drill — ehr</title>"));
        let mut r = sample();
        r.verdict = Verdict {
            passed: false,
            reasons: vec!["check hook exited 1".into(), "RPO over 60 s".into()],
        };
        let page = render(&r);
        assert!(page.contains("<div id=\"verdict\" class=\"fail\">FAILED</div>"));
        assert!(page.contains("<li>check hook exited 1</li><li>RPO over 60 s</li>"));
        assert!(page.contains("#verdict.fail{background:#cf222e}"));
        assert!(page.contains("#verdict.pass{background:#1a7f37}"));
    }

    #[test]
    fn summary_and_recovery_read_naturally() {
        let page = render(&sample());
        assert!(page.contains("2026-12-02 07:15:00 UTC"), "started");
        assert!(page.contains("12 min 34 s"), "duration");
        assert!(page.contains("1.2 MiB (1,258,291 bytes)"));
        assert!(page.contains("754.2 s (12 min 34 s)"));
        assert!(page.contains("not reported"));
        let mut r = sample();
        r.rto.seconds = None;
        assert!(render(&r).contains("not reached"));
    }

    #[test]
    fn chart_draws_one_line_per_point() {
        let page = render(&sample());
        assert!(page.contains("<svg id=\"lag-chart\""));
        assert!(page.contains("stroke=\"#1f6feb\" stroke-width=\"3\""));
        assert_eq!(polylines(&page), vec![10]);
        assert!(page.contains("class=\"disconnected\""), "bucket 3 is down");
        assert!(page.contains("Peak lag 4.5 s at 2026-12-01 08:00:00 UTC"));
    }

    #[test]
    fn a_gap_splits_the_line() {
        let mut r = sample();
        // 3 buckets missing after the fifth point: more than two buckets.
        for p in r.lag_history.iter_mut().skip(5) {
            p.at_ms += 3 * 300_000;
        }
        assert_eq!(polylines(&render(&r)), vec![5, 5]);
        // One missing bucket is not a gap.
        let mut r = sample();
        for p in r.lag_history.iter_mut().skip(5) {
            p.at_ms += 300_000;
        }
        assert_eq!(polylines(&render(&r)), vec![10]);
    }

    #[test]
    fn empty_history_says_so_inside_the_svg() {
        let mut r = sample();
        r.lag_history.clear();
        let page = render(&r);
        let svg = &page[page.find("<svg id=\"lag-chart\"").unwrap()..];
        let svg = &svg[..svg.find("</svg>").unwrap()];
        assert!(svg.contains("no lag history recorded"));
        assert!(svg.contains("class=\"axes\""));
        assert!(polylines(&page).is_empty());
    }

    #[test]
    fn flat_zero_history_still_draws() {
        let mut r = sample();
        for p in &mut r.lag_history {
            p.max_lag_seconds = 0.0;
        }
        let page = render(&r);
        assert_eq!(polylines(&page), vec![10]);
        assert!(page.contains(">1.0 s</text>"), "y range is at least 1 s");
    }

    #[test]
    fn everything_from_the_report_is_escaped() {
        let evil = "<script>alert(1)</script> \" ' & \u{1b}[31m";
        let mut r = sample();
        for s in [
            &mut r.id,
            &mut r.stream,
            &mut r.node_id,
            &mut r.primary,
            &mut r.drd_version,
            &mut r.user,
            &mut r.origin,
            &mut r.reason,
            &mut r.scratch_dir,
            &mut r.rto.method,
            &mut r.rpo.method,
            &mut r.snapshot.chain_head,
            &mut r.snapshot.last_segment,
        ] {
            *s = evil.into();
        }
        r.database_version = Some(evil.into());
        r.rpo.restored_lsn = Some(evil.into());
        r.snapshot.durable_lsn = Some(evil.into());
        r.snapshot.primary_lsn = Some(evil.into());
        r.verdict.reasons = vec![evil.into()];
        r.steps = vec![Step {
            name: evil.into(),
            summary: evil.into(),
            command: evil.into(),
            output: evil.into(),
            ..Default::default()
        }];
        r.verify.problems = vec![Problem {
            segment: evil.into(),
            problem: evil.into(),
        }];
        let page = render(&r);
        assert!(!page.to_lowercase().contains("<script"), "{page}");
        assert!(!page.contains('\u{1b}'));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &quot; &#39; &amp;"));
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }

    #[test]
    fn output_is_deterministic() {
        let r = sample();
        assert_eq!(render(&r), render(&r.clone()));
        assert_eq!(render(&Report::default()), render(&Report::default()));
    }

    #[test]
    fn corrupt_reports_render_without_panicking() {
        let mut r = sample();
        r.started_at_ms = u64::MAX;
        r.finished_at_ms = 0;
        r.rto.seconds = Some(f64::NAN);
        r.rpo.seconds = f64::NEG_INFINITY;
        r.snapshot.lag_seconds = f64::INFINITY;
        r.lag_bucket_seconds = u64::MAX;
        r.lag_history.push(LagPoint {
            at_ms: u64::MAX,
            max_lag_seconds: f64::NAN,
            max_lag_bytes: u64::MAX,
            connected: false,
        });
        r.verify.problems_total = 3;
        r.verify.problems = vec![Problem::default()];
        let page = render(&r);
        assert!(!page.contains("NaN") && !page.contains("inf"));
        assert!(page.contains("… and 2 more not listed."));
        let _ = render(&Report::default());
    }

    #[test]
    fn helpers_format_numbers() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_258_291), "1,258,291");
        assert_eq!(size(512), "512 bytes");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(185_000), "3 min 05 s");
        assert_eq!(duration(7_380_000), "2 h 03 min");
        assert_eq!(duration(300_000), "5 min");
        assert_eq!(duration(7_200_000), "2 h");
    }
}
