//! Human-readable rendering shared by `drctl` and the demo: byte sizes,
//! rates and the status table.

use drd_proto::pb;

/// Unix ms → `2026-12-01T11:34:01Z` (UTC).
pub fn unix_ms_utc(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A PostgreSQL LSN as PostgreSQL prints it: `0x1_6B37_4D848` → `16/B374D848`.
pub fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

pub fn rate(bytes_per_second: f64) -> String {
    format!("{}/s", bytes(bytes_per_second.max(0.0) as u64))
}

pub fn role_name(role: i32) -> &'static str {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Primary) => "primary",
        Ok(pb::Role::Replica) => "replica",
        Ok(pb::Role::Fenced) => "FENCED",
        Ok(pb::Role::Mixed) => "mixed",
        _ => "unknown",
    }
}

/// A stream's role at node `n`: its own (roles are per stream), or the
/// node's from a daemon that did not report one per stream.
pub fn stream_role(n: &pb::StatusResponse, s: &pb::StreamStatus) -> i32 {
    if s.role == pb::Role::Unspecified as i32 {
        n.role
    } else {
        s.role
    }
}

/// A stream's epoch at node `n` (see [`stream_role`]).
pub fn stream_epoch(n: &pb::StatusResponse, s: &pb::StreamStatus) -> u64 {
    if s.role == pb::Role::Unspecified as i32 {
        n.epoch
    } else {
        s.epoch
    }
}

/// Orders streams worst first: fenced, then disconnected, then by lag in
/// seconds and bytes (largest first), then by name — what an operator of
/// a fleet must look at first is on top.
pub fn worst_first(n: &pb::StatusResponse, streams: &mut [pb::StreamStatus]) {
    let key = |s: &pb::StreamStatus| (stream_role(n, s) != pb::Role::Fenced as i32, s.connected);
    streams.sort_by(|a, b| {
        key(a)
            .cmp(&key(b))
            .then(b.lag_seconds.total_cmp(&a.lag_seconds))
            .then(b.lag_bytes.cmp(&a.lag_bytes))
            .then(a.name.cmp(&b.name))
    });
}

/// One line about a node's streams: how many have each role, how many are
/// disconnected, paused or fenced, and the worst lag —
/// `100 streams: 99 replica, 1 primary; 2 disconnected; worst lag 3.2 s (p03-s2)`.
pub fn streams_summary(n: &pb::StatusResponse) -> String {
    if n.streams.is_empty() {
        return "no streams".into();
    }
    let mut by_role = std::collections::BTreeMap::<&str, usize>::new();
    for s in &n.streams {
        *by_role.entry(role_name(stream_role(n, s))).or_default() += 1;
    }
    let roles: Vec<String> = by_role.iter().map(|(r, c)| format!("{c} {r}")).collect();
    let mut line = format!(
        "{} stream{}: {}",
        n.streams.len(),
        if n.streams.len() == 1 { "" } else { "s" },
        roles.join(", ")
    );
    let down = n.streams.iter().filter(|s| !s.connected).count();
    let paused = n.streams.iter().filter(|s| s.paused).count();
    line.push_str(&format!("; {down} disconnected"));
    if paused > 0 {
        line.push_str(&format!("; {paused} paused"));
    }
    if let Some(w) = n.streams.iter().max_by(|a, b| {
        a.lag_seconds
            .total_cmp(&b.lag_seconds)
            .then(a.lag_bytes.cmp(&b.lag_bytes))
    }) {
        line.push_str(&format!(
            "; worst lag {:.1} s / {} ({})",
            w.lag_seconds,
            bytes(w.lag_bytes),
            w.name
        ));
    }
    line
}

/// Renders rows as an aligned text table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = w));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The status of one or more nodes as one table: a row per stream.
pub fn status_table(nodes: &[pb::StatusResponse]) -> String {
    let header = [
        "NODE",
        "ROLE",
        "EPOCH",
        "STREAM",
        "DIRECTION",
        "PEER",
        "CONN",
        "WRITTEN",
        "DURABLE",
        "LAG",
        "LAG(s)",
        "RATE",
        "SEGMENTS",
        "LAST ERROR",
    ];
    let mut rows = Vec::new();
    for n in nodes {
        if n.streams.is_empty() {
            rows.push(vec![
                n.node_id.clone(),
                role_name(n.role).into(),
                n.epoch.to_string(),
                "-".into(),
            ]);
        }
        for s in &n.streams {
            rows.push(vec![
                n.node_id.clone(),
                role_name(stream_role(n, s)).into(),
                stream_epoch(n, s).to_string(),
                s.name.clone(),
                s.direction.clone(),
                s.peer.clone(),
                if s.connected { "yes" } else { "NO" }.into(),
                bytes(s.written_position),
                bytes(s.durable_position),
                bytes(s.lag_bytes),
                format!("{:.2}", s.lag_seconds),
                rate(s.throughput_bytes_per_second),
                format!("{}/{}", s.sealed_segments, s.segments),
                s.last_error.chars().take(60).collect(),
            ]);
        }
    }
    // Pad short rows so every row has a cell per column.
    for r in &mut rows {
        r.resize(header.len(), String::new());
    }
    table(&header, &rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_naturally() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(16 * 1024 * 1024), "16.0 MiB");
    }
}
