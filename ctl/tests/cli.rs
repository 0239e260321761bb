//! `drctl` command-line behaviour that needs no daemon.

use std::process::Command;

#[test]
fn an_unreachable_daemon_exits_3_and_says_what_to_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_drctl"))
        .args(["--socket", "/nonexistent/drd.sock", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("cannot reach drd at /nonexistent/drd.sock"),
        "{err}"
    );
    assert!(err.contains("Is drd running"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_drctl"))
        .arg("no-such-command")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn version_names_the_release_and_the_git_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_drctl"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.trim_end();
    let rest = line
        .strip_prefix(&format!("drctl {} (git ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not `drctl VERSION (git COMMIT)`: {line:?}"));
    let commit = rest.strip_suffix("-dirty").unwrap_or(rest);
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "bad commit {rest:?} in {line:?}"
    );
}

#[test]
fn man_pages_are_roff_one_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drctl"))
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "drctl.1",
        "drctl-status.1",
        "drctl-verify.1",
        "drctl-switchover.1",
        "drctl-rejoin.1",
        "drctl-completions.1",
        "drctl-certs-init.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".TH") || text.starts_with(".ie"),
            "{page}: {text}"
        );
    }
    assert!(
        !dir.path().join("drctl-man.1").exists(),
        "hidden command documented"
    );
    if Command::new("man").arg("--version").output().is_ok() {
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.path().join("drctl-status.1"))
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("--watch"));
    }
}

#[test]
fn completions_are_scripts_the_shells_accept() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_drctl"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("drctl"), "{shell}: {script}");
        assert!(
            script.contains("switchover"),
            "{shell}: subcommands missing"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drctl"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let path = dir.path().join("drctl.bash");
    std::fs::write(&path, &out.stdout).unwrap();
    let ok = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(ok.success(), "bash -n refused the completion script");
    // No daemon is needed, and an unknown shell is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_drctl"))
        .args(["--socket", "/nonexistent/drd.sock", "completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
