//! Build information for `--version`: the git commit the binary was built
//! from, as `DRD_GIT_COMMIT` (12 hex digits, `-dirty` when tracked files had
//! changes, `unknown` outside a git checkout, e.g. from a source package),
//! and `DRD_VERSION_LINE` = `0.1.0 (git 8bd3ff1b2c3d)`. Packagers who build
//! from a tarball may set `DRD_GIT_COMMIT` themselves. Never fails the build.
//!
//! drctl builds with this same script (`build = "../daemon/build.rs"` in
//! ctl/Cargo.toml).

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

/// The commit, or None outside a git checkout (or without git).
fn commit(dir: &Path) -> Option<String> {
    let head = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves (checkout, commit) and when the index changes
    // (what makes the tree dirty or clean again).
    let git_dir = PathBuf::from(git(dir, &["rev-parse", "--absolute-git-dir"])?);
    let common = git(dir, &["rev-parse", "--git-common-dir"])
        .map(|c| dir.join(c))
        .unwrap_or_else(|| git_dir.clone());
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    println!("cargo:rerun-if-changed={}", git_dir.join("index").display());
    if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={}", common.join(r).display());
        println!(
            "cargo:rerun-if-changed={}",
            common.join("packed-refs").display()
        );
    }
    // No optional locks: `git status` must not rewrite the index (that
    // would make the next build run this script again).
    let dirty = git(
        dir,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DRD_GIT_COMMIT");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    // The crate's own sources: an edit can turn a clean tree dirty.
    println!("cargo:rerun-if-changed={}", dir.join("src").display());
    let commit = std::env::var("DRD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| commit(&dir))
        .unwrap_or_else(|| "unknown".to_string());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=DRD_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=DRD_VERSION_LINE={version} (git {commit})");
}
