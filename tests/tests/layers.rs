//! `drd-layers cycles`: the import-cycle checker CI runs on `daemon/src`.
//! Each test writes a small crate into a temp dir, runs the real binary and
//! reads its report (or, to see single edges, its `--dot` graph); the last
//! one checks the repository itself against `tests/layers-allow.txt`; and
//! `tests/client-check` (drctl links neither the daemon nor RocksDB) on
//! planted trees.

use std::path::Path;
use std::process::Command;
use tempfile::TempDir;

/// A crate's `src/` in a temp dir, from (path, contents) pairs.
fn fixture(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Runs `drd-layers` with `args`: (exit code, stdout, stderr).
fn layers(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drd-layers"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap(),
        text(out.stdout),
        text(out.stderr),
    )
}

/// `cycles DIR [extra…]` on a fixture.
fn check(dir: &TempDir, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["cycles", dir.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    layers(&args)
}

/// Every edge of the fixture's graph as `from -> to at FILE:LINE`, FILE
/// relative to the fixture.
fn edges(dir: &TempDir) -> Vec<String> {
    let (_, dot, _) = check(dir, &["--dot"]);
    let prefix = format!("{}/", dir.path().display());
    dot.lines()
        .filter_map(|l| {
            let (from, rest) = l.trim().strip_prefix('"')?.split_once("\" -> \"")?;
            let (to, rest) = rest.split_once('"')?;
            let at = rest.split('"').nth(1)?.replace(&prefix, "");
            Some(format!("{from} -> {to} at {at}"))
        })
        .collect()
}

/// A crate whose modules a, b, c form the cycle a → b → c → a.
const CYCLE: [(&str, &str); 4] = [
    ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
    ("a.rs", "use crate::b::B;\npub struct A;\n"),
    ("b.rs", "pub struct B;\n\nfn f() {\n    crate::c::g();\n}\n"),
    (
        "c.rs",
        "pub fn g() {}\nfn h() -> crate::a::A {\n    crate::a::A\n}\n",
    ),
];

#[test]
fn a_crate_without_cycles_passes() {
    let dir = fixture(&[
        (
            "lib.rs",
            "mod a;\nmod b;\nmod c;\npub fn now() -> u64 { 0 }\n",
        ),
        ("a.rs", "pub fn f() -> u64 { crate::now() }\n"),
        ("b.rs", "use crate::a;\npub fn g() -> u64 { a::f() }\n"),
        ("c.rs", "use crate::b::g;\n"),
    ]);
    let (code, out, err) = check(&dir, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("modules 4, edges 3, cycles 0 (allowed 0)"),
        "{out}"
    );
}

#[test]
fn a_planted_cycle_fails_naming_its_modules_and_lines() {
    let dir = fixture(&CYCLE);
    let (code, out, _) = check(&dir, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cycle (3 modules): a b c"), "{out}");
    let d = dir.path().display();
    for edge in [
        format!("a -> b  at {d}/a.rs:1"),
        format!("b -> c  at {d}/b.rs:4"),
        format!("c -> a  at {d}/c.rs:2"),
    ] {
        assert!(out.contains(&edge), "{edge:?} missing from:\n{out}");
    }
    assert!(out.contains("cycles 1 (allowed 0)"), "{out}");
}

#[test]
fn grouped_and_nested_use_trees_are_edges() {
    let dir = fixture(&[
        ("lib.rs", "mod a;\nmod b;\nmod x;\n"),
        ("a.rs", "pub struct A;\n"),
        ("b/mod.rs", "pub mod c;\npub mod d;\n"),
        ("b/c.rs", "pub struct Thing;\n"),
        ("b/d.rs", "pub fn g() {}\n"),
        (
            "x.rs",
            "use crate::{\n    a::A,\n    b::{c::Thing, d},\n};\n\nfn f() {\n    d::g();\n}\n",
        ),
    ]);
    let e = edges(&dir);
    // `b::c::Thing` goes to the longest module prefix, `b::c`; the module
    // `d` brought in by the `use` is an edge where it is used.
    assert!(e.contains(&"x -> a at x.rs:2".into()), "{e:?}");
    assert!(e.contains(&"x -> b::c at x.rs:3".into()), "{e:?}");
    assert!(e.contains(&"x -> b::d at x.rs:7".into()), "{e:?}");
    assert!(!e.iter().any(|l| l.starts_with("x -> b ")), "{e:?}");
}

#[test]
fn super_and_self_paths_resolve_against_the_module() {
    let dir = fixture(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "pub fn f() {}\n"),
        (
            "b/mod.rs",
            "mod c;\nmod d;\nfn k() {\n    self::c::h();\n}\n",
        ),
        (
            "b/c.rs",
            "use super::d::D;\npub fn h() {\n    super::super::a::f();\n}\n",
        ),
        ("b/d.rs", "pub struct D;\n"),
    ]);
    let e = edges(&dir);
    assert!(e.contains(&"b::c -> b::d at b/c.rs:1".into()), "{e:?}");
    assert!(e.contains(&"b::c -> a at b/c.rs:3".into()), "{e:?}");
    assert!(e.contains(&"b -> b::c at b/mod.rs:4".into()), "{e:?}");
}

#[test]
fn path_expressions_and_root_items_are_edges() {
    let dir = fixture(&[
        (
            "lib.rs",
            "mod a;\nmod x;\npub fn unix_ms() -> u64 { 0 }\nfn run() {\n    a::start();\n}\n",
        ),
        (
            "a/mod.rs",
            "pub mod b;\npub fn start() {}\npub struct Other;\n",
        ),
        (
            "a/b.rs",
            "pub struct C;\nimpl C { pub fn new() -> Self { C } }\n",
        ),
        (
            "x.rs",
            "fn f() {\n    let _ = crate::a::b::C::new();\n    let _: crate::a::Other;\n    \
             let _ = crate::unix_ms();\n    let _ = crate::nothing::here();\n}\n",
        ),
    ]);
    let e = edges(&dir);
    assert!(e.contains(&"x -> a::b at x.rs:2".into()), "{e:?}");
    assert!(e.contains(&"x -> a at x.rs:3".into()), "{e:?}");
    // The root is an edge only for an item it defines (`unix_ms`), and a
    // child module named from lib.rs (`a::start()`) is an edge of the root.
    assert!(e.contains(&"x -> crate at x.rs:4".into()), "{e:?}");
    assert!(e.contains(&"crate -> a at lib.rs:5".into()), "{e:?}");
    assert_eq!(e.len(), 4, "{e:?}");
}

#[test]
fn comments_strings_and_test_modules_make_no_edge() {
    let dir = fixture(&[
        (
            "lib.rs",
            "mod a;\nmod b;\nmod c;\nmod d;\nmod e;\nmod f;\nmod g;\nmod x;\n",
        ),
        ("a.rs", ""),
        ("b.rs", ""),
        ("c.rs", ""),
        ("d.rs", ""),
        ("e.rs", ""),
        ("f.rs", ""),
        ("g.rs", "pub fn h() {}\n"),
        (
            "x.rs",
            r####"//! Docs naming [`crate::a::A`].
// use crate::b::B;
/* crate::c::C /* nested crate::c::D */ still a comment crate::c::E */
const S: &str = "crate::d::x() \" crate::d::y";
const R: &str = r#"crate::e::z "quoted" "#;
fn f() {
    let q = '"';
    crate::g::h();
}

#[cfg(test)]
#[allow(unused)]
mod tests {
    use crate::f::*;
    fn t() { crate::f::x(); }
}
"####,
        ),
    ]);
    let e = edges(&dir);
    assert_eq!(e, vec!["x -> g at x.rs:8".to_string()]);
}

#[test]
fn an_allowed_cycle_passes_only_while_it_matches_exactly() {
    let dir = fixture(&CYCLE);
    let allow = dir.path().join("layers-allow.txt");
    let allow_s = allow.to_str().unwrap();

    // Exact match (the order on the line does not matter).
    std::fs::write(&allow, "# cycles to break\nc a b  # the planted one\n").unwrap();
    let (code, out, _) = check(&dir, &["--allow", allow_s]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("allowed cycle (3 modules): a b c"), "{out}");
    assert!(out.contains("cycles 1 (allowed 1)"), "{out}");

    // A stale line fails even though every cycle is allowed.
    std::fs::write(&allow, "a b c\nb d\n").unwrap();
    let (code, out, _) = check(&dir, &["--allow", allow_s]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("stale allowance, remove it: b d ({allow_s}:2)")),
        "{out}"
    );

    // The cycle grows by d: no longer the allowed set.
    let grown = fixture(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\n"),
        ("a.rs", "use crate::b::B;\npub struct A;\n"),
        ("b.rs", "pub struct B;\nfn f() { crate::c::g(); }\n"),
        (
            "c.rs",
            "pub fn g() { crate::d::h() }\nfn h() -> crate::a::A { crate::a::A }\n",
        ),
        ("d.rs", "pub fn h() { let _ = crate::a::A; }\n"),
    ]);
    std::fs::write(&allow, "a b c\n").unwrap();
    let (code, out, _) = check(&grown, &["--allow", allow_s]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cycle (4 modules): a b c d"), "{out}");
    assert!(out.contains("stale allowance, remove it: a b c"), "{out}");
}

#[test]
fn usage_and_io_errors_exit_2_naming_the_path() {
    let (code, _, err) = layers(&["cycles"]);
    assert_eq!(code, 2);
    assert!(err.contains("usage: drd-layers cycles SRC_DIR"), "{err}");

    let (code, _, err) = layers(&["cycles", "/nonexistent/src"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/src"), "{err}");

    let dir = fixture(&CYCLE);
    let (code, _, err) = check(&dir, &["--allow", "/nonexistent/allow.txt"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/allow.txt"), "{err}");
}

/// The daemon has no import cycle beyond those listed in
/// `tests/layers-allow.txt`, and every line there is still a cycle.
#[test]
fn the_daemon_has_no_cycles_beyond_the_allow_list() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = tests.join("../daemon/src");
    let allow = tests.join("layers-allow.txt");
    let (code, out, err) = layers(&[
        "cycles",
        src.to_str().unwrap(),
        "--allow",
        allow.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `tests/client-check` on a tree file: (exit code, stdout + stderr).
fn client_check(tree: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tree.txt");
    std::fs::write(&file, tree).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("client-check");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// drctl's tree may hold drd-client and drd-proto, never the daemon crate
/// `drd` or RocksDB (`tests/client-check`, run by tests/run on the real
/// `cargo tree -p drctl -p drd-client`).
#[test]
fn client_check_fails_on_the_daemon_or_rocksdb_in_drctls_tree() {
    let clean = "drctl v0.1.0 (/w/ctl)\ndrd-client v0.1.0 (/w/daemon/client)\n\
                 drd-proto v0.1.0 (/w/proto)\ntonic v0.14.9\n";
    let (code, out) = client_check(clean);
    assert_eq!(code, 0, "{out}");
    let (code, out) = client_check(&format!("{clean}drd v0.1.0 (/w/daemon)\n"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("depends on drd "), "{out}");
    let (code, out) = client_check(&format!("{clean}rocksdb v0.20.1\nlibrocksdb-sys v0.11.0\n"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("librocksdb-sys rocksdb"), "{out}");
}
