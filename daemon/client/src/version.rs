//! What this build is: its release and git commit (from `build.rs`) for
//! `--version`, the status reply and the replication handshake, and the
//! rule for warning when the two sites speak different protocol versions.

/// `0.1.0 (git 8bd3ff1b2c3d)`; `-dirty` after the commit when the tree had
/// changes, `unknown` when built outside a git checkout.
pub const VERSION_LINE: &str = env!("DRD_VERSION_LINE");

/// The git commit alone (`8bd3ff1b2c3d`, `8bd3ff1b2c3d-dirty` or `unknown`).
pub const GIT_COMMIT: &str = env!("DRD_GIT_COMMIT");

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = drd_proto::PROTOCOL_VERSION;

/// The warning `drctl status` prints (and the daemon logs) when a stream's
/// peer speaks another protocol version than this node, or None when they
/// agree or the peer's version is not known (never connected, or a build
/// too old to send it: `peer_protocol == 0`). `ours == 0` is a daemon from
/// before it reported its own: it speaks 1.
pub fn protocol_warning(
    stream: &str,
    ours: u32,
    our_software: &str,
    peer: &str,
    peer_protocol: u32,
    peer_software: &str,
) -> Option<String> {
    let ours = drd_proto::announced_protocol_version(ours);
    if peer_protocol == 0 || peer_protocol == ours {
        return None;
    }
    let name = |sw: &str| {
        if sw.is_empty() {
            "an unknown drd release".to_string()
        } else {
            format!("drd {sw}")
        }
    };
    let (older, newer) = if peer_protocol < ours {
        (format!("the peer {peer}"), "this node")
    } else {
        ("this node".to_string(), "its peer")
    };
    Some(format!(
        "stream {stream}: this node ({}) speaks replication protocol {ours}, its peer {peer} ({}) \
         speaks protocol {peer_protocol}. Replication works while {newer} still accepts the \
         older version, but upgrade {older} to the same drd release soon.",
        name(our_software),
        name(peer_software),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_line_names_release_and_commit() {
        assert!(VERSION_LINE.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION_LINE.ends_with(&format!("(git {GIT_COMMIT})")));
    }

    #[test]
    fn a_different_peer_protocol_is_a_warning_naming_both_versions() {
        assert_eq!(protocol_warning("s", 1, "0.1.0", "p", 1, "0.1.0"), None);
        // Unknown peer version (never connected, or an old build): no warning.
        assert_eq!(protocol_warning("s", 1, "0.1.0", "p", 0, ""), None);
        // A daemon from before it reported its own version speaks 1.
        assert_eq!(protocol_warning("s", 0, "", "p", 1, "0.1.0"), None);

        let w = protocol_warning("ehr-prod", 2, "0.2.0", "rochester-dr1", 1, "0.1.0").unwrap();
        assert!(w.contains("protocol 2") && w.contains("protocol 1"), "{w}");
        assert!(w.contains("drd 0.2.0") && w.contains("drd 0.1.0"), "{w}");
        assert!(w.contains("upgrade the peer rochester-dr1"), "{w}");

        let w = protocol_warning("ehr-prod", 1, "0.1.0", "verona-db1", 2, "").unwrap();
        assert!(w.contains("upgrade this node"), "{w}");
        assert!(w.contains("an unknown drd release"), "{w}");
    }
}
