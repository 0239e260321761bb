//! `drd-layers`: finds import cycles between the modules of one crate, so
//! the layering in STYLE.md ("each layer using only the ones below it") is
//! checked by CI instead of by review.
//!
//! ```sh
//! drd-layers cycles daemon/src --allow tests/layers-allow.txt [--dot]
//! ```
//!
//! Every `.rs` file under the directory is a module (`lib.rs`/`main.rs` the
//! crate root, `a/mod.rs` is `a`, `a/b.rs` is `a::b`). An edge file → file
//! is a path that names another module: `use crate::…` (grouped and nested
//! too), `crate::a::f()` anywhere, `super::`/`self::` paths, paths through a
//! child module (`catalog::Catalog` in lib.rs) or through a name brought in
//! by a `use` (`use crate::ops;` … `ops::fork::run()` is an edge to
//! `ops::fork`). A path goes to the longest prefix that is a module file;
//! to the crate root only when it names an item defined there
//! (`crate::unix_ms`). Comments, string literals and `#[cfg(test)] mod`
//! blocks are skipped; inline non-test modules are read as part of their
//! file. This is a lexer, not a compiler: macros that build paths and
//! items re-exported from outside the crate are not followed.
//!
//! Every strongly connected component of two or more modules is a cycle.
//! `--allow FILE` lists the cycles tolerated today, one per line as the
//! sorted member modules separated by spaces (`#` starts a comment): a
//! cycle passes only if its member set equals a line exactly, and a line
//! that matches no cycle is stale and fails too, so the list only shrinks.
//! `--dot` prints the graph for Graphviz on stdout (the report then goes
//! to stderr).
//!
//! Exit status: 0 no cycle beyond the allowed ones, 1 a cycle or a stale
//! allowance, 2 a usage or I/O error.

use anyhow::{bail, Context};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: drd-layers cycles SRC_DIR [--allow FILE] [--dot]";

/// A module path without `crate::`; the crate root is empty.
type ModPath = Vec<String>;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drd-layers: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Command-line options of `cycles`.
struct Opts {
    src: PathBuf,
    allow: Option<PathBuf>,
    dot: bool,
}

/// Reads `cycles SRC_DIR [--allow FILE] [--dot]`.
fn parse_args() -> anyhow::Result<Opts> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("cycles") {
        bail!("{USAGE}");
    }
    let (mut src, mut allow, mut dot) = (None, None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--allow" => allow = Some(args.next().context("--allow needs a FILE")?.into()),
            "--dot" => dot = true,
            _ if a.starts_with('-') || src.is_some() => bail!("unexpected argument {a:?}\n{USAGE}"),
            _ => src = Some(PathBuf::from(a)),
        }
    }
    let src = src.with_context(|| format!("SRC_DIR is missing\n{USAGE}"))?;
    Ok(Opts { src, allow, dot })
}

fn run() -> anyhow::Result<ExitCode> {
    let opts = parse_args()?;
    let allowed = match &opts.allow {
        Some(p) => read_allow(p)?,
        None => Vec::new(),
    };
    let graph = Graph::load(&opts.src)?;
    let cycles = graph.cycles();
    let out: fn(String) = if opts.dot {
        print!("{}", graph.dot(&cycles));
        eprintln
    } else {
        println
    };
    let (mut failed, mut n_allowed) = (false, 0);
    for cycle in &cycles {
        let members = cycle.join(" ");
        if allowed.iter().any(|(_, a)| a == cycle) {
            n_allowed += 1;
            out(format!(
                "allowed cycle ({} modules): {members}",
                cycle.len()
            ));
            continue;
        }
        failed = true;
        out(format!("cycle ({} modules): {members}", cycle.len()));
        for m in cycle {
            let (to, at) = graph.edges[m]
                .iter()
                .find(|(to, _)| cycle.contains(to))
                .expect("a member of a cycle has an edge inside it");
            out(format!("  {m} -> {to}  at {at}"));
        }
    }
    for (line, a) in allowed.iter().filter(|(_, a)| !cycles.contains(a)) {
        failed = true;
        out(format!(
            "stale allowance, remove it: {} ({line})",
            a.join(" ")
        ));
    }
    let n_edges: usize = graph.edges.values().map(BTreeMap::len).sum();
    let (n_modules, n_cycles) = (graph.edges.len(), cycles.len());
    out(format!(
        "modules {n_modules}, edges {n_edges}, cycles {n_cycles} (allowed {n_allowed})"
    ));
    Ok(ExitCode::from(u8::from(failed)))
}

/// The report's sink without `--dot`.
fn println(s: String) {
    println!("{s}");
}

/// The report's sink with `--dot` (stdout has the graph).
fn eprintln(s: String) {
    eprintln!("{s}");
}

/// The display name of a module: `crate` for the root, else `a::b`.
fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".to_string()
    } else {
        m.join("::")
    }
}

/// The allowed cycles, each with where it was written (`FILE:LINE`).
fn read_allow(path: &Path) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the allow file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_text = line.split('#').next().unwrap_or_default();
        let mut members: Vec<String> = line_text.split_whitespace().map(String::from).collect();
        if members.is_empty() {
            continue;
        }
        members.sort();
        out.push((format!("{}:{}", path.display(), i + 1), members));
    }
    Ok(out)
}

/// The module graph of one crate.
struct Graph {
    /// Every module (a key even without edges) → the modules it names, each
    /// with the first place it does (`path:line`).
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

/// One module file, lexed.
struct Source {
    display: String,
    paths: Vec<RefPath>,
}

impl Graph {
    /// Reads every `.rs` file under `src` and resolves its paths.
    fn load(src: &Path) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        walk(src, &mut files)
            .with_context(|| format!("cannot read the source directory {}", src.display()))?;
        if files.is_empty() {
            bail!(
                "no .rs files under {}: is it a crate's src/?",
                src.display()
            );
        }
        let has_lib = files.iter().any(|f| f == Path::new("lib.rs"));
        let mut modules: BTreeMap<ModPath, Source> = BTreeMap::new();
        let mut root_items = BTreeSet::new();
        for rel in &files {
            let full = src.join(rel);
            let text = std::fs::read_to_string(&full)
                .with_context(|| format!("cannot read {}", full.display()))?;
            let tokens = drop_test_modules(tokenize(&strip(&text)));
            let mut module = module_path(rel);
            if rel == Path::new("main.rs") && has_lib {
                // A binary beside the library: its own crate, which no
                // library module can name.
                module = vec!["main.rs".to_string()];
            } else if module.is_empty() {
                root_items = top_level_items(&tokens);
            }
            let source = Source {
                display: full.display().to_string(),
                paths: paths(&tokens),
            };
            modules.insert(module, source);
        }
        let known: BTreeSet<&ModPath> = modules.keys().collect();
        let aliases: BTreeMap<&ModPath, _> = modules
            .iter()
            .map(|(m, s)| (m, use_aliases(m, s, &known)))
            .collect();
        let no_aliases = BTreeMap::new();
        let root_aliases = aliases.get(&Vec::new()).unwrap_or(&no_aliases);
        let resolver = Resolver {
            known: &known,
            root_items: &root_items,
            root_aliases,
        };
        let mut edges = BTreeMap::new();
        for (m, s) in &modules {
            let out: &mut BTreeMap<String, String> = edges.entry(name(m)).or_default();
            for p in &s.paths {
                let Some((abs, deferred)) = absolute(m, p, &aliases[m], &known) else {
                    continue;
                };
                if deferred {
                    continue;
                }
                let Some(to) = resolver.resolve(&abs) else {
                    continue;
                };
                if &to != m {
                    let at = || format!("{}:{}", s.display, p.line);
                    out.entry(name(&to)).or_insert_with(at);
                }
            }
        }
        Ok(Graph { edges })
    }

    /// The strongly connected components of two or more modules (Tarjan),
    /// each sorted, in sorted order.
    fn cycles(&self) -> Vec<Vec<String>> {
        /// Tarjan's state: each visited module's (index, lowlink).
        struct Tarjan<'a> {
            g: &'a Graph,
            index: BTreeMap<&'a str, (usize, usize)>,
            stack: Vec<&'a str>,
            out: Vec<Vec<String>>,
        }
        impl<'a> Tarjan<'a> {
            fn visit(&mut self, v: &'a str) {
                let i = self.index.len();
                self.index.insert(v, (i, i));
                self.stack.push(v);
                for w in self.g.edges[v].keys() {
                    let low = match self.index.get(w.as_str()) {
                        None => {
                            self.visit(w);
                            self.index[w.as_str()].1
                        }
                        Some(&(wi, _)) if self.stack.contains(&w.as_str()) => wi,
                        Some(_) => continue,
                    };
                    let entry = self.index.get_mut(v).expect("visited");
                    entry.1 = entry.1.min(low);
                }
                if self.index[v].0 == self.index[v].1 {
                    let at = self.stack.iter().rposition(|x| *x == v).expect("on stack");
                    let mut scc: Vec<String> = self.stack.drain(at..).map(String::from).collect();
                    if scc.len() > 1 {
                        scc.sort();
                        self.out.push(scc);
                    }
                }
            }
        }
        let (index, stack, out) = (BTreeMap::new(), Vec::new(), Vec::new());
        let mut t = Tarjan {
            g: self,
            index,
            stack,
            out,
        };
        for v in self.edges.keys() {
            if !t.index.contains_key(v.as_str()) {
                t.visit(v);
            }
        }
        t.out.sort();
        t.out
    }

    /// The graph in Graphviz format, edges inside a cycle in red, each with
    /// where it comes from as its tooltip.
    fn dot(&self, cycles: &[Vec<String>]) -> String {
        let mut s = String::from("digraph layers {\n  rankdir=BT;\n");
        for (from, tos) in &self.edges {
            s += &format!("  \"{from}\";\n");
            for (to, at) in tos {
                let red = cycles.iter().any(|c| c.contains(from) && c.contains(to));
                let color = if red { ", color=red" } else { "" };
                s += &format!("  \"{from}\" -> \"{to}\" [tooltip=\"{at}\"{color}];\n");
            }
        }
        s + "}\n"
    }
}

/// The `.rs` files under `dir`, relative to it, sorted.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    fn go(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries = std::fs::read_dir(base.join(rel))?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let rel = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                go(base, &rel, out)?;
            } else if rel.extension().is_some_and(|x| x == "rs") {
                out.push(rel);
            }
        }
        Ok(())
    }
    go(dir, Path::new(""), out)
}

/// `lib.rs`/`main.rs` → root, `a/mod.rs` → `a`, `a/b.rs` → `a::b`.
fn module_path(rel: &Path) -> ModPath {
    let mut m: ModPath = rel
        .with_extension("")
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if m.last().is_some_and(|l| l == "mod") || (m.len() == 1 && (m[0] == "lib" || m[0] == "main")) {
        m.pop();
    }
    m
}

/// Where paths go once made absolute.
struct Resolver<'a> {
    known: &'a BTreeSet<&'a ModPath>,
    root_items: &'a BTreeSet<String>,
    /// The root's `use` names, so `crate::Name` re-exported there resolves.
    root_aliases: &'a BTreeMap<String, ModPath>,
}

impl Resolver<'_> {
    /// The module that the absolute path `abs` names: its longest prefix
    /// that is a module file, else the root if it names a root item, else
    /// what a name the root brings in with `use` stands for.
    fn resolve(&self, abs: &[String]) -> Option<ModPath> {
        let longest = |abs: &[String]| {
            let prefixes = (1..=abs.len()).rev().map(|k| abs[..k].to_vec());
            prefixes.into_iter().find(|p| self.known.contains(p))
        };
        if let Some(m) = longest(abs) {
            return Some(m);
        }
        let first = abs.first()?;
        let has_root = self.known.contains(&Vec::new());
        if has_root && (self.root_items.contains(first) || first == "*") {
            return Some(Vec::new());
        }
        let mut through_root = self.root_aliases.get(first)?.clone();
        through_root.extend_from_slice(&abs[1..]);
        longest(&through_root)
    }
}

/// The absolute form of `p` as seen from module `m`, or `None` if it is not
/// a path inside the crate; `true` beside it when it is a private `use` of
/// a whole module, whose edge comes from the paths that use the name.
fn absolute(
    m: &ModPath,
    p: &RefPath,
    aliases: &BTreeMap<String, ModPath>,
    known: &BTreeSet<&ModPath>,
) -> Option<(ModPath, bool)> {
    let segs = &p.segs;
    let (base, rest): (ModPath, &[String]) = match segs[0].as_str() {
        "crate" => (Vec::new(), &segs[1..]),
        "self" => (m.clone(), &segs[1..]),
        "super" => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            (m[..m.len().checked_sub(ups)?].to_vec(), &segs[ups..])
        }
        first if segs.len() >= 2 && aliases.contains_key(first) => {
            (aliases[first].clone(), &segs[1..])
        }
        first if segs.len() >= 2 => {
            let mut child = m.clone();
            child.push(first.to_string());
            known.contains(&child).then_some(())?;
            (child, &segs[1..])
        }
        _ => return None,
    };
    if rest.is_empty() && !p.in_use {
        return None; // `self` alone is a receiver, `crate` alone a visibility.
    }
    let mut abs = base;
    abs.extend(rest.iter().cloned());
    let deferred = p.in_use && !p.public && known.contains(&abs);
    Some((abs, deferred))
}

/// The names a module's `use` lines bring in from inside the crate, each
/// with the absolute path it stands for.
fn use_aliases(m: &ModPath, s: &Source, known: &BTreeSet<&ModPath>) -> BTreeMap<String, ModPath> {
    let none = BTreeMap::new();
    let mut out = BTreeMap::new();
    for p in s.paths.iter().filter(|p| p.in_use) {
        let Some(alias) = &p.alias else { continue };
        if let Some((abs, _)) = absolute(m, p, &none, known) {
            out.insert(alias.clone(), abs);
        }
    }
    out
}

/// A path in the code: its segments (`*` last for a glob), where it is and,
/// in a `use`, the name it brings in.
#[derive(Debug)]
struct RefPath {
    segs: Vec<String>,
    line: usize,
    in_use: bool,
    /// In a `pub use` (a re-export: the edge is at the `use`).
    public: bool,
    alias: Option<String>,
}

/// A token of comment- and string-free source.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

impl Tok {
    /// Whether this is the identifier or punctuation `s`.
    fn is(&self, s: &str) -> bool {
        match self {
            Tok::Ident(x) => x == s,
            Tok::Sep => s == "::",
            Tok::Punct(c) => s.len() == 1 && s.starts_with(*c),
        }
    }
}

/// `src` with comments and string and char literals blanked out, newlines
/// kept so line numbers still match.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, s: &[char]| {
        out.extend(s.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        let start = i;
        let prev_ident = i > 0 && ident(c[i - 1]);
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if (c[i] == '"' || !prev_ident && matches!(c[i], 'r' | 'b' | 'c'))
            && raw_or_plain(&c, i).is_some()
        {
            i = raw_or_plain(&c, i).expect("checked");
        } else if c[i] == '\'' && (at(i + 1) == '\\' || (at(i + 2) == '\'' && at(i + 1) != '\'')) {
            // Past `'x` or `'\x`, then to the closing quote (`'\u{…}'`).
            i += if at(i + 1) == '\\' { 3 } else { 2 };
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
            continue;
        }
        blank(&mut out, &c[start..i.min(c.len())]);
    }
    out
}

/// If a string literal (`"…"`, `b"…"`, `c"…"`, `r#"…"#`, `br"…"`) starts at
/// `i`, the index just past it.
fn raw_or_plain(c: &[char], mut i: usize) -> Option<usize> {
    if matches!(c[i], 'b' | 'c') {
        i += 1;
    }
    if c.get(i) == Some(&'r') {
        i += 1;
        let hashes = c[i..].iter().take_while(|&&ch| ch == '#').count();
        i += hashes;
        if c.get(i) != Some(&'"') {
            return None;
        }
        let close: Vec<char> = std::iter::once('"')
            .chain(std::iter::repeat_n('#', hashes))
            .collect();
        let end = (i + 1..c.len()).find(|&k| c[k..].starts_with(&close))?;
        return Some(end + close.len());
    }
    if c.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < c.len() && c[i] != '"' {
        i += if c[i] == '\\' { 2 } else { 1 };
    }
    Some((i + 1).min(c.len()))
}

/// Identifiers, `::` and single punctuation, each with its line.
fn tokenize(s: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = s.chars().collect();
    let (mut out, mut line, mut i) = (Vec::new(), 1, 0);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
        }
        if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            if !ch.is_ascii_digit() {
                out.push((Tok::Ident(c[start..i].iter().collect()), line));
            }
            continue;
        }
        if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Sep, line));
            i += 2;
            continue;
        }
        if !ch.is_whitespace() {
            out.push((Tok::Punct(ch), line));
        }
        i += 1;
    }
    out
}

/// `tokens` without `#[cfg(test)] mod name { … }` blocks (further
/// attributes and a visibility may come between).
fn drop_test_modules(tokens: Vec<(Tok, usize)>) -> Vec<(Tok, usize)> {
    const CFG_TEST: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    let (mut out, mut i) = (Vec::with_capacity(tokens.len()), 0);
    while i < tokens.len() {
        let at = |k: usize| tokens.get(k).map_or(&Tok::Punct('\0'), |t| &t.0);
        if (0..7).all(|k| at(i + k).is(CFG_TEST[k])) {
            let mut j = i + 7;
            while j < tokens.len() && !["mod", "fn", "{", ";"].iter().any(|s| at(j).is(s)) {
                j += 1;
            }
            if at(j).is("mod") && at(j + 2).is("{") {
                let (mut depth, mut k) = (0, j + 2);
                while k < tokens.len() {
                    depth += i32::from(at(k).is("{")) - i32::from(at(k).is("}"));
                    k += 1;
                    if depth == 0 {
                        break;
                    }
                }
                i = k;
                continue;
            }
        }
        out.push(tokens[i].clone());
        i += 1;
    }
    out
}

/// The names the root file defines at its top level (`fn unix_ms`, …).
fn top_level_items(tokens: &[(Tok, usize)]) -> BTreeSet<String> {
    const KINDS: [&str; 9] = [
        "fn",
        "const",
        "static",
        "struct",
        "enum",
        "trait",
        "type",
        "union",
        "macro_rules",
    ];
    let mut depth = 0i32;
    let mut out = BTreeSet::new();
    for (k, (t, _)) in tokens.iter().enumerate() {
        match t {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth -= 1,
            Tok::Ident(kind) if depth == 0 && KINDS.contains(&kind.as_str()) => {
                let next = tokens[k + 1..].iter().find(|(t, _)| *t != Tok::Punct('!'));
                if let Some((Tok::Ident(n), _)) = next {
                    out.insert(n.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// Every path of two or more segments in `tokens`, `use` trees expanded
/// into one path per leaf.
fn paths(tokens: &[(Tok, usize)]) -> Vec<RefPath> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let prev = i.checked_sub(1).map(|k| &tokens[k].0);
        let starts = matches!(tokens[i].0, Tok::Ident(_)) || tokens[i].0 == Tok::Sep;
        if !starts {
            i += 1;
            continue;
        }
        let in_use = prev.is_some_and(|t| t.is("use"));
        // `pub use`, `pub(crate) use`: a re-export.
        let before_use = i.checked_sub(2).map(|k| &tokens[k].0);
        let public = in_use && before_use.is_some_and(|t| t.is("pub") || t.is(")"));
        let mut found = Vec::new();
        let end = tree(tokens, i, &[], in_use, &mut found);
        // A path after `::`, `.` or `$` (`$crate`) is not one of ours.
        let foreign =
            tokens[i].0 == Tok::Sep || matches!(prev, Some(Tok::Sep | Tok::Punct('.' | '$')));
        if !foreign {
            out.extend(found.into_iter().map(|mut p| {
                p.public = public;
                p
            }));
        }
        i = end.max(i + 1);
    }
    out.retain(|p| p.segs.len() >= 2 || p.in_use);
    out
}

/// Reads one path or `use` tree at `i` under `prefix`; returns the index
/// past it.
fn tree(
    tokens: &[(Tok, usize)],
    mut i: usize,
    prefix: &[String],
    in_use: bool,
    out: &mut Vec<RefPath>,
) -> usize {
    let mut segs = prefix.to_vec();
    let line = tokens[i].1;
    if tokens[i].0 == Tok::Sep {
        i += 1;
    }
    loop {
        match tokens.get(i).map(|t| &t.0) {
            Some(Tok::Ident(s)) => segs.push(s.clone()),
            Some(Tok::Punct('*')) => {
                segs.push("*".into());
                out.push(RefPath {
                    segs,
                    line,
                    in_use,
                    public: false,
                    alias: None,
                });
                return i + 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                while let Some((t, _)) = tokens.get(i) {
                    match t {
                        Tok::Punct('}') => return i + 1,
                        Tok::Punct(',') => i += 1,
                        _ => i = tree(tokens, i, &segs, in_use, out).max(i + 1),
                    }
                }
                return i;
            }
            _ => break,
        }
        i += 1;
        if tokens.get(i).map(|t| &t.0) != Some(&Tok::Sep) {
            break;
        }
        i += 1;
    }
    if segs.last().is_some_and(|s| s == "self") && segs.len() > prefix.len().max(1) {
        segs.pop();
    }
    let mut alias = segs.last().cloned();
    if in_use && tokens.get(i).is_some_and(|t| t.0.is("as")) {
        if let Some((Tok::Ident(n), _)) = tokens.get(i + 1) {
            alias = Some(n.clone());
        }
        i += 2;
    }
    if segs.len() > prefix.len() || in_use {
        out.push(RefPath {
            segs,
            line,
            in_use,
            public: false,
            alias,
        });
    }
    i
}
