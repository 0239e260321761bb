//! What to do when a test needs something this machine lacks (PostgreSQL,
//! root for a tmpfs, systemd-analyze, cargo-fuzz): fail, saying how to get
//! it. `tests/run` (the README's test command) installs all of it, so a
//! skip would only hide a broken install step — as a missing iptables once
//! did. A developer who knowingly runs part of the suite on a bare machine
//! sets `DRD_TESTS_ALLOW_SKIP=1`; the test then says SKIPPED loudly.

/// The environment variable that turns a missing prerequisite into a skip.
pub const ALLOW_SKIP: &str = "DRD_TESTS_ALLOW_SKIP";

/// Call where a test cannot run: `what` is missing, `install` says how to
/// get it. Panics unless skipping was asked for; returns when it was (the
/// test then returns early).
pub fn missing(what: &str, install: &str) {
    let allowed = std::env::var(ALLOW_SKIP).is_ok_and(|v| v == "1");
    assert!(
        allowed,
        "{what}: this test cannot run. {install} — `bash tests/run` installs everything the \
         suite needs; set {ALLOW_SKIP}=1 to skip such tests knowingly"
    );
    eprintln!("SKIPPED ({ALLOW_SKIP}=1): {what}. {install}");
}
