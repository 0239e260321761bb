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
