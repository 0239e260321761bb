//! The release-binary check (`tests/release-check`) can fail: the debug
//! `drd` that `cargo test --workspace` builds carries the chaos suite's
//! deliberately broken early-ack path (feature `chaos-testing`, debug
//! assertions on), and the check must name it there. On main, `tests/run`
//! runs the same check on the release binaries, where it must pass.

use std::path::Path;
use std::process::Command;

fn release_check(bins: &[&Path]) -> (Option<i32>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("release-check");
    let out = Command::new("bash")
        .arg(&script)
        .args(bins)
        .output()
        .expect("run tests/release-check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn the_release_check_fails_on_a_binary_with_the_test_only_path() {
    let debug_drd = drd_tests::bin("drd");
    let (code, text) = release_check(&[&debug_drd]);
    assert_eq!(
        code,
        Some(1),
        "the check must fail on the test build of drd (which has the early-ack path): {text}"
    );
    assert!(
        text.contains("FAIL") && text.contains("DRD_CHAOS_UNSAFE"),
        "{text}"
    );
}

#[test]
fn the_release_check_passes_on_a_binary_without_it() {
    // Any program of the system: no drd code at all. (The test builds of
    // drctl and drd-bench link the daemon's library, chaos path included;
    // `tests/run` checks the release builds of all three.)
    let clean = Path::new("/bin/true");
    let (code, text) = release_check(&[clean]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok:"), "{text}");
}

#[test]
fn the_release_check_refuses_a_missing_binary() {
    let (code, text) = release_check(&[Path::new("/nonexistent/drd")]);
    assert_eq!(code, Some(2), "{text}");
}
