//! The architecture invariants that code can check: the top-level modules
//! use only modules below them in the layer order ARCHITECTURE.md gives,
//! so the module graph has no cycle; no library file is over 600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top; a module may use those before it (ARCHITECTURE.md,
/// "Architecture invariants").
const LAYERS: &[&[&str]] = &[
    &["process", "config", "catalogue"],
    &["model"],
    &["lockfile"],
    &["registry", "state", "sources"],
    &["plan"],
    &["builders"],
    &["publish"],
    &["pipeline", "status"],
    &["api", "daemon", "refresh"],
    &["doctor", "cmd"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's text without its `#[cfg(test)] mod tests` (tests may reach
/// anywhere).
fn library_text(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap();
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn top_module(src: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    if name == "main" { "cmd".into() } else { name }
}

/// `crate::x` (library) or `kiln::x` (binary) paths used by each top-level module.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(src, &mut all);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in all {
        let top = top_module(src, &p);
        if top == "lib" {
            continue;
        }
        let text = library_text(&p);
        for prefix in ["crate::", "kiln::"] {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    edges.entry(top.clone()).or_default().insert(name);
                }
            }
        }
    }
    edges
}

#[test]
fn modules_use_only_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (from, tos) in edges(&src) {
        let Some(rf) = rank(&from) else {
            wrong.push(format!("{from}: not in the layer order"));
            continue;
        };
        for to in tos {
            match rank(&to) {
                Some(rt) if rt < rf || (rt == rf && from != to) => {}
                Some(_) => wrong.push(format!("{from} -> {to}: uses a higher layer")),
                None => wrong.push(format!("{from} -> {to}: {to} is not in the layer order")),
            }
        }
    }
    assert!(wrong.is_empty(), "layer violations:\n{}", wrong.join("\n"));
}

#[test]
fn modules_of_one_layer_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let e = edges(&src);
    for (a, tos) in &e {
        for b in tos {
            assert!(
                !e.get(b).is_some_and(|back| back.contains(a)),
                "{a} and {b} use each other"
            );
        }
    }
}

#[test]
fn no_library_file_is_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let long: Vec<String> = all
        .iter()
        .filter_map(|p| {
            let n = library_text(p).lines().count();
            (n > 600).then(|| format!("{}: {n} lines", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over 600 lines:\n{}",
        long.join("\n")
    );
}
