//! Latency samples and their percentiles, and the result table.

use std::time::Duration;

/// Latencies in milliseconds.
#[derive(Default, Clone)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e3);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile (nearest rank), 0 when empty.
    pub fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(0.0, f64::max)
    }
}

/// One line of the result table.
pub struct Row {
    pub cells: [String; 6],
}

impl Row {
    /// `met`: whether the target is met (None: no target).
    pub fn new(
        what: &str,
        drd: String,
        baseline: String,
        ratio: String,
        target: &str,
        met: Option<bool>,
    ) -> Self {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**NO**",
            None => "-",
        };
        Self {
            cells: [what.into(), drd, baseline, ratio, target.into(), met.into()],
        }
    }
}

/// The table as Markdown (readable as plain text too).
pub fn markdown(rows: &[Row]) -> String {
    let head = [
        "measure",
        "drd",
        "baseline (same run)",
        "ratio",
        "target",
        "met",
    ]
    .map(String::from);
    let mut w = head.clone().map(|h| h.chars().count());
    for r in rows {
        for (i, c) in r.cells.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |c: &[String; 6]| {
        let mut s = String::from("|");
        for (i, cell) in c.iter().enumerate() {
            s += &format!(" {cell}{} |", " ".repeat(w[i] - cell.chars().count()));
        }
        s + "\n"
    };
    let mut out = line(&head);
    out += &line(&w.map(|n| "-".repeat(n)));
    for r in rows {
        out += &line(&r.cells);
    }
    out
}
