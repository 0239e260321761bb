//! Runs the cargo-fuzz targets in `fuzz/` for a bounded time (CI's short
//! run; set DRD_FUZZ_SECONDS for a longer one): the replica's message
//! handling, name validation and the decoding of PostgreSQL's CopyData
//! payloads must not crash or break their properties.

use std::path::Path;
use std::process::Command;

#[test]
fn fuzz_targets_run_briefly_without_a_crash() {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        drd_tests::require::missing(
            "cargo-fuzz is not installed",
            "cargo install cargo-fuzz --locked",
        );
        return;
    }
    let secs: u64 = std::env::var("DRD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    // A target dir of its own: the outer `cargo test` holds its own dir's lock.
    let exe = std::env::current_exe().unwrap();
    let target_root = exe.ancestors().nth(3).unwrap().join("fuzz");
    for target in ["replica_messages", "names", "pg_copydata"] {
        let out = Command::new("cargo")
            .current_dir(&fuzz_dir)
            .env("CARGO_TARGET_DIR", &target_root)
            // Stable toolchain: cargo-fuzz's coverage flags need no nightly
            // without a sanitizer (Rust's own checks stay on).
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", target, "--"])
            .arg(format!("-max_total_time={secs}"))
            .arg("-seed=20261123")
            .output()
            .expect("run cargo fuzz");
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        println!(
            "fuzz target {target}: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        );
        assert!(out.status.success(), "fuzz target {target} failed:\n{err}");
        assert!(
            err.contains("Done") || err.contains("runs in"),
            "no fuzzing happened:\n{err}"
        );
    }
}
