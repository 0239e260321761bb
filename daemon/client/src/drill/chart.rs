//! The drill report's lag chart and clock: a report's `lag_history` as one
//! inline SVG, and Unix ms as UTC text. Pure: numbers in, text out — no
//! report strings reach this module, so nothing here needs escaping.

use super::LagPoint;
use std::fmt::Write;

/// The lag line's stroke colour (a browser test looks for its pixels).
pub const LINE_COLOUR: &str = "#1f6feb";
/// The background of buckets where the primary was not connected.
const DISCONNECTED_FILL: &str = "#ffebe9";

/// The SVG's size in user units, and the plot area's margins.
const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 40.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;

const MS_PER_MINUTE: u64 = 60_000;
const MS_PER_DAY: u64 = 86_400_000;
/// Most x-axis ticks drawn.
const MAX_X_TICKS: u64 = 6;

/// A float fit to draw or print: NaN and infinities (a corrupt report)
/// become 0, negatives clamp to 0.
pub fn sane(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

/// Unix ms → `(year, month, day, hour, minute, second)` in UTC, by the
/// days-from-civil algorithm run backwards (H. Hinnant's `civil_from_days`).
pub fn utc_parts(ms: u64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = ms / 1000;
    // u64::MAX / 86_400_000 fits an i64 with room to spare.
    let days = i64::try_from(ms / MS_PER_DAY).unwrap_or(0);
    let sod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let small = |v: i64| u32::try_from(v).unwrap_or(0);
    let small_u = |v: u64| u32::try_from(v).unwrap_or(0);
    (
        year,
        small(month),
        small(day),
        small_u(sod / 3600),
        small_u(sod / 60 % 60),
        small_u(sod % 60),
    )
}

/// Unix ms → `2026-12-02 07:15:00 UTC`.
pub fn utc(ms: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// Unix ms → `07:15` (UTC), an axis label.
fn hhmm(ms: u64) -> String {
    let (_, _, _, h, mi, _) = utc_parts(ms);
    format!("{h:02}:{mi:02}")
}

/// Unix ms → `12-02` (UTC), an axis label for ticks a day or more apart.
fn month_day(ms: u64) -> String {
    let (_, mo, d, _, _, _) = utc_parts(ms);
    format!("{mo:02}-{d:02}")
}

/// What the chart maps: time `t0..t1` (ms) across, `0..y_top` up.
struct Frame {
    t0: u64,
    t1: u64,
    y_top: f64,
}

impl Frame {
    fn x(&self, t: u64) -> f64 {
        let span = self.t1.saturating_sub(self.t0).max(1) as f64;
        let f = (t.saturating_sub(self.t0) as f64 / span).clamp(0.0, 1.0);
        LEFT + f * PLOT_W
    }

    fn y(&self, v: f64) -> f64 {
        let top = if self.y_top > 0.0 { self.y_top } else { 1.0 };
        TOP + PLOT_H - (sane(v) / top).clamp(0.0, 1.0) * PLOT_H
    }
}

/// The y axis's unit for a peak of `peak` seconds: seconds, minutes or
/// hours, so labels stay short.
fn y_unit(peak: f64) -> (f64, &'static str) {
    if peak >= 7200.0 {
        (3600.0, "h")
    } else if peak >= 120.0 {
        (60.0, "min")
    } else {
        (1.0, "s")
    }
}

/// A 1-2-5 step for `0..=max` (max > 0) and how many steps reach past
/// `max`: 2 to 4 steps, so 3 to 5 gridlines.
pub fn nice_step(max: f64) -> (f64, u32) {
    let max = if sane(max) > 0.0 { max } else { 1.0 };
    let magnitude = 10f64.powf((max / 4.0).log10().floor());
    let mut step = magnitude * 10.0;
    for m in [1.0, 2.0, 5.0] {
        if max / (magnitude * m) <= 4.0 {
            step = magnitude * m;
            break;
        }
    }
    // Round-off must not add a fifth step.
    let steps = (max / step - 1e-9).ceil().clamp(1.0, 4.0);
    (step, steps as u32)
}

/// The x-axis tick spacing for a window of `span` ms: the smallest of a
/// few round spans giving at most [`MAX_X_TICKS`] ticks.
fn x_step(span: u64) -> u64 {
    const MINUTES: [u64; 13] = [1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440];
    for m in MINUTES {
        let step = m * MS_PER_MINUTE;
        if span / step < MAX_X_TICKS {
            return step;
        }
    }
    (span / MAX_X_TICKS)
        .div_ceil(MS_PER_DAY)
        .max(1)
        .saturating_mul(MS_PER_DAY)
}

/// Runs of points to join with a line: a new run starts where two
/// neighbours are more than two buckets apart (the daemon was not running).
/// With no bucket size known, it is one run.
fn runs(points: &[LagPoint], bucket_ms: u64) -> Vec<&[LagPoint]> {
    let limit = bucket_ms.saturating_mul(2);
    points
        .chunk_by(|a, b| bucket_ms == 0 || b.at_ms.saturating_sub(a.at_ms) <= limit)
        .collect()
}

/// `[start, end)` spans (ms) where the primary was disconnected, with
/// touching buckets merged.
fn disconnected_spans(points: &[LagPoint], bucket_ms: u64) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for p in points.iter().filter(|p| !p.connected) {
        let end = p.at_ms.saturating_add(bucket_ms);
        match spans.last_mut() {
            Some(last) if p.at_ms <= last.1 => last.1 = last.1.max(end),
            _ => spans.push((p.at_ms, end)),
        }
    }
    spans
}

/// The lag chart: `<svg id="lag-chart">` with a `polyline.lag-line` per
/// run of `history` (sorted by time here, so a shuffled report still
/// draws), red bands where the primary was disconnected, labelled
/// gridlines and UTC ticks. An empty history draws the axes and says so.
pub fn lag_svg(history: &[LagPoint], bucket_seconds: u64) -> String {
    let mut points = history.to_vec();
    points.sort_by_key(|p| p.at_ms);
    let mut o = String::with_capacity(4096 + points.len() * 16);
    let _ = write!(
        o,
        "<svg id=\"lag-chart\" xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {WIDTH:.0} {HEIGHT:.0}\" width=\"{WIDTH:.0}\" height=\"{HEIGHT:.0}\" \
         role=\"img\" aria-label=\"DR lag over time\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    match (points.first(), points.last()) {
        (Some(first), Some(last)) => draw(&mut o, &points, first, last, bucket_seconds),
        _ => empty(&mut o),
    }
    o.push_str("</svg>");
    o
}

/// Everything for a non-empty, sorted history.
fn draw(o: &mut String, points: &[LagPoint], first: &LagPoint, last: &LagPoint, bucket_s: u64) {
    let bucket_ms = bucket_s.saturating_mul(1000);
    let t0 = first.at_ms;
    let t1 = last.at_ms.saturating_add(bucket_ms.max(1000));
    let peak = points
        .iter()
        .map(|p| sane(p.max_lag_seconds))
        .fold(0.0, f64::max);
    let (unit, unit_name) = y_unit(peak);
    let (step, steps) = nice_step((peak / unit).max(1.0 / unit));
    let frame = Frame {
        t0,
        t1,
        y_top: step * f64::from(steps) * unit,
    };
    bands(o, &frame, points, bucket_ms);
    y_grid(o, &frame, step, steps, unit, unit_name);
    x_ticks(o, &frame);
    axes(o);
    lines(o, &frame, points, bucket_ms);
}

/// The "no history" chart: bare axes and a sentence.
fn empty(o: &mut String) {
    axes(o);
    let _ = write!(
        o,
        "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\" \
         font-size=\"16\">no lag history recorded</text>",
        LEFT + PLOT_W / 2.0,
        TOP + PLOT_H / 2.0
    );
}

/// The plot area's left and bottom edges.
fn axes(o: &mut String) {
    let _ = write!(
        o,
        "<path class=\"axes\" d=\"M{LEFT:.1},{TOP:.1}V{b:.1}H{r:.1}\" fill=\"none\" \
         stroke=\"#57606a\" stroke-width=\"1\"/>",
        b = TOP + PLOT_H,
        r = LEFT + PLOT_W
    );
}

/// Light red bands behind buckets where the primary was disconnected.
fn bands(o: &mut String, f: &Frame, points: &[LagPoint], bucket_ms: u64) {
    for (start, end) in disconnected_spans(points, bucket_ms) {
        let x0 = f.x(start);
        let w = (f.x(end) - x0).max(2.0);
        let _ = write!(
            o,
            "<rect class=\"disconnected\" x=\"{x0:.1}\" y=\"{TOP:.1}\" width=\"{w:.1}\" \
             height=\"{PLOT_H:.1}\" fill=\"{DISCONNECTED_FILL}\"/>"
        );
    }
}

/// Horizontal gridlines at each step, labelled on the left.
fn y_grid(o: &mut String, f: &Frame, step: f64, steps: u32, unit: f64, unit_name: &str) {
    let decimals = if step < 1.0 { 1 } else { 0 };
    for i in 0..=steps {
        let v = step * f64::from(i);
        let y = f.y(v * unit);
        let _ = write!(
            o,
            "<line class=\"grid\" x1=\"{LEFT:.1}\" y1=\"{y:.1}\" x2=\"{r:.1}\" y2=\"{y:.1}\" \
             stroke=\"#d0d7de\" stroke-width=\"1\"/>\
             <text class=\"y-label\" x=\"{lx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\" \
             fill=\"#24292f\">{v:.decimals$} {unit_name}</text>",
            r = LEFT + PLOT_W,
            lx = LEFT - 6.0,
            ty = y + 4.0,
        );
    }
    let _ = write!(
        o,
        "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\" \
         fill=\"#57606a\">max lag</text>",
        TOP + PLOT_H / 2.0,
        TOP + PLOT_H / 2.0
    );
}

/// Round UTC times along the bottom, and "UTC" at the right end.
fn x_ticks(o: &mut String, f: &Frame) {
    let step = x_step(f.t1.saturating_sub(f.t0));
    let bottom = TOP + PLOT_H;
    let mut t = f.t0.div_ceil(step).saturating_mul(step);
    for _ in 0..=MAX_X_TICKS {
        if t > f.t1 {
            break;
        }
        let x = f.x(t);
        let label = if step >= MS_PER_DAY {
            month_day(t)
        } else {
            hhmm(t)
        };
        let _ = write!(
            o,
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{TOP:.1}\" x2=\"{x:.1}\" y2=\"{b:.1}\" \
             stroke=\"#eaeef2\" stroke-width=\"1\"/>\
             <text class=\"x-label\" x=\"{x:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\" \
             fill=\"#24292f\">{label}</text>",
            b = bottom + 4.0,
            ly = bottom + 18.0,
        );
        match t.checked_add(step) {
            Some(next) => t = next,
            None => break,
        }
    }
    let _ = write!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#57606a\">UTC</text>",
        LEFT + PLOT_W,
        bottom + 34.0
    );
}

/// The lag line: one polyline per run, and a dot for a run of one point
/// (a polyline of one point draws nothing).
fn lines(o: &mut String, f: &Frame, points: &[LagPoint], bucket_ms: u64) {
    for run in runs(points, bucket_ms) {
        o.push_str("<polyline class=\"lag-line\" fill=\"none\" stroke=\"");
        o.push_str(LINE_COLOUR);
        o.push_str("\" stroke-width=\"3\" stroke-linejoin=\"round\" points=\"");
        for (i, p) in run.iter().enumerate() {
            if i > 0 {
                o.push(' ');
            }
            let _ = write!(o, "{:.1},{:.1}", f.x(p.at_ms), f.y(p.max_lag_seconds));
        }
        o.push_str("\"/>");
        if let [only] = run {
            let _ = write!(
                o,
                "<circle class=\"lag-dot\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{LINE_COLOUR}\"/>",
                f.x(only.at_ms),
                f.y(only.max_lag_seconds)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, lag: f64) -> LagPoint {
        LagPoint {
            at_ms: ms,
            max_lag_seconds: lag,
            max_lag_bytes: 0,
            connected: true,
        }
    }

    #[test]
    fn utc_matches_known_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_796_195_700_000), "2026-12-02 07:15:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(4_107_542_399_999), "2100-02-28 23:59:59 UTC");
        // The far future neither panics nor wraps.
        assert!(utc(u64::MAX).starts_with("584556019-"));
    }

    #[test]
    fn nice_steps_give_three_to_five_gridlines() {
        for max in [
            1.0, 1.5, 2.01, 3.0, 4.1, 7.7, 10.0, 59.9, 99.0, 1e6, 1e300, 0.0,
        ] {
            let (step, n) = nice_step(max);
            assert!((2..=4).contains(&n), "{max}: {n} steps");
            assert!(step * f64::from(n) >= max.max(1.0) - 1e-9, "{max}");
        }
        assert_eq!(nice_step(f64::NAN), nice_step(1.0));
    }

    #[test]
    fn runs_split_at_gaps_and_bands_merge() {
        let pts = [at(0, 1.0), at(300_000, 1.0), at(2_000_000, 1.0)];
        assert_eq!(runs(&pts, 300_000).len(), 2);
        assert_eq!(runs(&pts, 0).len(), 1);
        let mut off = pts;
        for p in &mut off {
            p.connected = false;
        }
        assert_eq!(
            disconnected_spans(&off, 300_000),
            vec![(0, 600_000), (2_000_000, 2_300_000)]
        );
    }

    #[test]
    fn corrupt_values_draw_as_zero() {
        let pts = [at(0, f64::NAN), at(1000, f64::INFINITY), at(2000, -5.0)];
        let svg = lag_svg(&pts, 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let svg = lag_svg(&[at(u64::MAX, 1.0), at(0, 2.0)], u64::MAX);
        assert!(svg.contains("lag-line"));
    }
}
