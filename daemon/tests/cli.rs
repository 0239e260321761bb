//! `drd` command-line behaviour: `--check-config` exit codes and messages.

use std::process::Command;

// A test helper: a failed unwrap here is a failed test, with its location.
#[allow(clippy::unwrap_used)]
fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drd.toml");
    std::fs::write(
        &path,
        config.replace("WAL", &dir.path().display().to_string()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drd"))
        .args(["--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), text)
}

const GOOD: &str = r#"insecure_plaintext = true
node_id = "verona-db1"
data_dir = "/var/lib/drd"
[control]
socket = "/run/drd/drd.sock"
[[stream]]
name = "ehr-prod"
wal_dir = "WAL"
peer = "http://127.0.0.1:7601"
"#;

#[test]
fn a_valid_config_passes() {
    let (code, text) = check(GOOD);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("configuration is valid"));
}

#[test]
fn broken_configs_exit_2_naming_the_key() {
    for (broken, key) in [
        (GOOD.replace("peer =", "peeer ="), "peeer"),
        (GOOD.replace("\"ehr-prod\"", "\"../ehr\""), "stream[0].name"),
        (
            GOOD.replace("\"WAL\"", "\"/nonexistent/wal\""),
            "stream[0].wal_dir",
        ),
        (
            GOOD.replace("127.0.0.1:7601", "192.0.2.7:7601"),
            "stream[0].peer",
        ),
        (
            GOOD.replace("node_id = \"verona-db1\"", "node_id = 5"),
            "node_id",
        ),
        ("node_id = \"x\"\n[[stream".to_string(), "TOML"),
        (
            GOOD.replace("insecure_plaintext = true\n", ""),
            "configure [tls]",
        ),
    ] {
        let (code, text) = check(&broken);
        assert_eq!(code, 2, "{broken}\n{text}");
        assert!(text.contains(key), "error does not name {key:?}: {text}");
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_drd"))
        .args(["--check-config", "--config", "/nonexistent/drd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/drd.toml"));
}

/// The README's first command, run for a few seconds: it must start both
/// daemons, ship, catch up, and report every segment identical.
#[test]
fn the_demo_runs_and_ends_byte_identical() {
    let out = Command::new(env!("CARGO_BIN_EXE_drd"))
        .args([
            "demo",
            "--seconds",
            "4",
            "--rate-mib",
            "16",
            "--segment-mib",
            "4",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("verona-db1") && stdout.contains("rochester-dr1"),
        "{stdout}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    println!("{last}");
    assert!(last.contains("byte-identical"), "{last}");
    let (same, total) = last
        .split_whitespace()
        .find(|w| w.contains('/'))
        .and_then(|w| w.split_once('/'))
        .unwrap();
    assert_eq!(same, total);
    assert!(total.parse::<u32>().unwrap() >= 3, "{last}");
}

/// nss_wrapper's preload library (Debian package `libnss-wrapper`), found
/// through dpkg. Without it the NSS test skips — except in CI, where a
/// missing library is a broken setup (deploy/dev/setup.sh installs it).
fn nss_wrapper() -> Option<std::path::PathBuf> {
    let listed = Command::new("dpkg")
        .args(["-L", "libnss-wrapper"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let found = listed
        .lines()
        .map(std::path::PathBuf::from)
        .find(|p| p.file_name().is_some_and(|n| n == "libnss_wrapper.so") && p.exists());
    if found.is_none() && std::env::var("CI").as_deref() == Ok("true") {
        panic!("libnss_wrapper.so not found: install the Debian package libnss-wrapper");
    }
    found
}

/// `control.socket_group` is looked up through NSS (as `getent group`
/// does), not by reading /etc/group: a group that only LDAP or SSSD knows
/// must pass `--check-config`. nss_wrapper stands in for such a directory:
/// its group file has a group that /etc/group does not.
#[test]
fn socket_group_is_looked_up_through_nss() {
    let Some(lib) = nss_wrapper() else {
        eprintln!("skipped: libnss_wrapper.so not installed (apt-get install libnss-wrapper)");
        return;
    };
    let group = "drd-ldap-archivers";
    assert!(
        !std::fs::read_to_string("/etc/group")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{group}:"))),
        "{group} must not be in /etc/group for this test to mean anything"
    );
    let nss = tempfile::tempdir().unwrap();
    let passwd = nss.path().join("passwd");
    let groups = nss.path().join("group");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/sh\ndrd:x:4711:4711:drd:/var/lib/drd:/bin/false\n",
    )
    .unwrap();
    std::fs::write(&groups, format!("root:x:0:\n{group}:x:4712:drd,postgres\n")).unwrap();
    let run = |config: String| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drd.toml");
        std::fs::write(
            &path,
            config.replace("WAL", &dir.path().display().to_string()),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_drd"))
            .args(["--check-config", "--config"])
            .arg(&path)
            .env("LD_PRELOAD", &lib)
            .env("NSS_WRAPPER_PASSWD", &passwd)
            .env("NSS_WRAPPER_GROUP", &groups)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap(), text)
    };
    let with_group = |g: &str| {
        GOOD.replace(
            "socket = \"/run/drd/drd.sock\"",
            &format!("socket = \"/run/drd/drd.sock\"\nsocket_group = \"{g}\""),
        )
    };
    let (code, text) = run(with_group(group));
    assert_eq!(code, 0, "a group known to NSS is accepted: {text}");
    assert!(text.contains("configuration is valid"), "{text}");
    let (code, text) = run(with_group("no-such-group"));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("control.socket_group")
            && text.contains("there is no group \"no-such-group\""),
        "{text}"
    );
}

/// `drd 0.1.0 (git 8bd3ff1b2c3d)`, `-dirty` after changes, `unknown`
/// outside a git checkout.
fn assert_version_line(binary: &str, out: &str) {
    let line = out.trim_end();
    let rest = line
        .strip_prefix(&format!("{binary} {} (git ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not `{binary} VERSION (git COMMIT)`: {line:?}"));
    let commit = rest.strip_suffix("-dirty").unwrap_or(rest);
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "bad commit {rest:?} in {line:?}"
    );
}

#[test]
fn version_names_the_release_and_the_git_commit() {
    for flag in ["--version", "-V"] {
        let out = Command::new(env!("CARGO_BIN_EXE_drd"))
            .arg(flag)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_version_line("drd", &String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn drd_writes_its_man_page_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drd"))
        .args(["man", "--out"])
        .arg(dir.path().join("man1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = dir.path().join("man1").join("drd.1");
    let text = std::fs::read_to_string(&page).unwrap();
    assert!(text.starts_with(".TH") || text.starts_with(".ie"), "{text}");
    assert!(text.contains("check\\-config"), "{text}");
    // The hidden subcommand stays out of --help.
    let help = Command::new(env!("CARGO_BIN_EXE_drd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(!help.contains("man "), "{help}");
    assert!(help.contains("completions"), "{help}");
    if Command::new("man").arg("--version").output().is_ok() {
        let out = Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("replication daemon"), "{shown}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_drd"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = dir.path().join("drd.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let ok = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(ok.success(), "bash -n refused the drd completion script");
}
