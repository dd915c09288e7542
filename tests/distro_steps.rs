//! Every distro-conditional step of ocaml-dockerfile (and of
//! docker-base-images' compiler Dockerfile) against Kiln's equivalent, as
//! `tests/fixtures/upstream/distro-steps.yaml` lists them: the rendered
//! recipe of each OS release runs upstream's command exactly where upstream
//! runs it, the OS releases carry upstream's parents, gcc versions and
//! package-manager families, and the conditions Kiln does not build for
//! match no OS release it plans.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln::catalogue::{self, Catalogue, OsRelease};
use kiln::plan::{self, Filter};
use serde_norway::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shipped() -> Catalogue {
    catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap()
}

fn steps() -> Vec<Value> {
    let p = root().join("tests/fixtures/upstream/distro-steps.yaml");
    let doc: Value = serde_norway::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    doc["steps"].as_sequence().unwrap().clone()
}

/// The Docker OS releases (Linux, Windows) of a catalogue.
fn docker_releases(cat: &Catalogue) -> Vec<(&str, &OsRelease)> {
    cat.platforms
        .iter()
        .filter(|p| p.platform == "linux" || p.platform == "windows")
        .flat_map(|p| p.releases.iter().map(move |r| (p.platform.as_str(), r)))
        .collect()
}

/// The opam stage of an OS release (its compiler-less image), rendered.
fn opam_stage(cat: &Catalogue, os: &str) -> String {
    let filter = Filter {
        os: Some(os.into()),
        ..Filter::default()
    };
    let t = plan::expand(cat, &filter)
        .unwrap()
        .into_iter()
        .find(|t| t.is_opam_image())
        .unwrap_or_else(|| panic!("{os} has no compiler-less image"));
    plan::render::render(&t).unwrap().remove(0).1
}

/// The shell commands a rendered Dockerfile runs: each RUN's command and,
/// for one joined by `&&`, each part; a step a switch turns off (`if
/// false; then …; fi`, Windows `if false==true …`) runs nothing, one it
/// turns on runs its body.
fn runs(text: &str) -> Vec<String> {
    let escape = if text.starts_with("# escape=`") {
        '`'
    } else {
        '\\'
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if cur.is_empty() && (line.trim_start().starts_with('#') || line.trim().is_empty()) {
            continue;
        }
        if let Some(body) = line.trim_end().strip_suffix(escape) {
            cur.push_str(body.trim());
            cur.push(' ');
            continue;
        }
        cur.push_str(line.trim());
        if let Some(cmd) = cur.strip_prefix("RUN ") {
            out.extend(switched(cmd.trim()));
        }
        cur.clear();
    }
    out
}

fn switched(cmd: &str) -> Vec<String> {
    let body = if let Some(rest) = cmd.strip_prefix("if true; then ") {
        rest.trim_end()
            .strip_suffix("fi")
            .map(|b| b.trim_end().trim_end_matches(';').trim())
    } else if let Some(rest) = cmd.strip_prefix("if true==true ") {
        Some(rest.trim())
    } else if cmd.starts_with("if false; then ") || cmd.starts_with("if false==true ") {
        return vec![];
    } else {
        Some(cmd)
    };
    let Some(body) = body else { return vec![] };
    let mut out = vec![body.to_string()];
    let parts: Vec<&str> = body.split(" && ").collect();
    if parts.len() > 1 {
        out.extend(parts.iter().map(|p| p.trim().to_string()));
    }
    out
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// `runs`/`runs_containing` in `family` only on `only_on` (`times` when given).
fn check_runs(cat: &Catalogue, what: &str, c: &Value) -> Vec<String> {
    let family = strings(&c["family"]);
    let only_on = strings(&c["only_on"]);
    let exact = c["runs"].as_str();
    let part = c["runs_containing"].as_str();
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for (_, os) in docker_releases(cat) {
        if !family.contains(&os.recipes[0]) {
            continue;
        }
        seen.insert(os.id.clone());
        let n = runs(&opam_stage(cat, &os.id))
            .iter()
            .filter(|r| match (exact, part) {
                (Some(e), _) => r.as_str() == e,
                (None, Some(p)) => r.contains(p),
                _ => false,
            })
            .count();
        let want = match c["times"][os.id.as_str()].as_u64() {
            Some(t) => t as usize,
            None => usize::from(only_on.contains(&os.id)),
        };
        let ok = if c["times"][os.id.as_str()].is_null() && want == 1 {
            n >= 1
        } else {
            n == want
        };
        if !ok {
            wrong.push(format!(
                "{what}: {} runs it {n} times, upstream {want}",
                os.id
            ));
        }
    }
    for os in only_on.difference(&seen) {
        wrong.push(format!("{what}: {os} is not an OS release of {family:?}"));
    }
    wrong
}

/// An OS release's field as the table names it.
fn field(os: &OsRelease, name: &str) -> Option<String> {
    match name {
        "parent" => os.parent.clone(),
        "recipes" => os.recipes.first().cloned(),
        _ => os.vars.get(name.strip_prefix("vars.")?).cloned(),
    }
}

fn check_each(cat: &Catalogue, what: &str, c: &Value) -> Vec<String> {
    let name = c["each"].as_str().unwrap();
    let expect: BTreeMap<String, String> = serde_norway::from_value(c["expect"].clone()).unwrap();
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for (_, os) in docker_releases(cat) {
        let Some(ours) = field(os, name) else {
            continue;
        };
        seen.insert(os.id.clone());
        match expect.get(&os.id) {
            Some(up) if *up == ours => {}
            Some(up) => wrong.push(format!(
                "{what}: {}: {name} {ours:?}, upstream {up:?}",
                os.id
            )),
            None => wrong.push(format!(
                "{what}: {}: {name} {ours:?}, not in the table",
                os.id
            )),
        }
    }
    for os in expect.keys().filter(|o| !seen.contains(*o)) {
        wrong.push(format!(
            "{what}: {os} is listed but Kiln builds it with no {name}"
        ));
    }
    wrong
}

fn version(s: &str) -> Vec<u32> {
    s.split('.').map(|n| n.parse().unwrap()).collect()
}

fn check_installs(cat: &Catalogue, what: &str, c: &Value) -> Vec<String> {
    let package = c["installs"].as_str().unwrap();
    let minimum = version(c["minimum"].as_str().unwrap());
    let versions: BTreeMap<String, String> =
        serde_norway::from_value(c["versions"].clone()).unwrap();
    let mut wrong = Vec::new();
    for (os, v) in &versions {
        if version(v) < minimum {
            wrong.push(format!(
                "{what}: {os} ships {package} {v}, older than the minimum"
            ));
        }
    }
    for (platform, os) in docker_releases(cat) {
        if platform != "linux" {
            continue;
        }
        if !versions.contains_key(&os.id) {
            wrong.push(format!("{what}: {} is not in the table", os.id));
        }
        let installs = runs(&opam_stage(cat, &os.id)).iter().any(|r| {
            let ws: Vec<&str> = r.split_whitespace().collect();
            ws.contains(&package) && ["install", "add", "-Syu"].iter().any(|k| ws.contains(k))
        });
        if !installs {
            wrong.push(format!("{what}: {} does not install {package}", os.id));
        }
    }
    wrong
}

fn check_not_built(cat: &Catalogue, what: &str, c: &Value) -> Vec<String> {
    let ids: BTreeSet<String> = cat
        .platforms
        .iter()
        .flat_map(|p| p.releases.iter())
        .flat_map(|r| std::iter::once(r.id.clone()).chain(r.aliases.iter().cloned()))
        .collect();
    strings(&c["not_built"])
        .into_iter()
        .filter(|o| ids.contains(o))
        .map(|o| format!("{what}: {o} is built"))
        .collect()
}

fn check(cat: &Catalogue, step: &Value) -> Vec<String> {
    let what = step["upstream"].as_str().unwrap();
    let c = &step["check"];
    for key in ["condition", "kiln"] {
        assert!(
            step[key].as_str().is_some_and(|s| !s.is_empty()),
            "{what}: no {key}"
        );
    }
    if c["runs"].is_string() || c["runs_containing"].is_string() {
        check_runs(cat, what, c)
    } else if c["each"].is_string() {
        check_each(cat, what, c)
    } else if c["installs"].is_string() {
        check_installs(cat, what, c)
    } else if c["not_built"].is_sequence() {
        check_not_built(cat, what, c)
    } else if let Some(elsewhere) = c["compiler"].as_str() {
        // Checked by the test it names, which must exist.
        let file = elsewhere
            .split(|ch: char| ch.is_whitespace() || ch == '(')
            .find(|w| w.starts_with("tests/"))
            .unwrap_or_else(|| panic!("{what}: `compiler` names no test file"));
        assert!(root().join(file).is_file(), "{what}: {file} does not exist");
        vec![]
    } else {
        panic!("{what}: unknown check {c:?}")
    }
}

#[test]
fn every_distro_step_of_upstream_is_where_upstream_has_it() {
    let cat = shipped();
    let all = steps();
    assert!(all.len() >= 20, "{} steps", all.len());
    let wrong: Vec<String> = all.iter().flat_map(|s| check(&cat, s)).collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The table can fail: a step switched off where upstream has it, and a
/// parent that is not upstream's, are both reported.
#[test]
fn a_step_missing_or_misplaced_fails_the_table() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["versions", "platforms"] {
        let ok = std::process::Command::new("cp")
            .arg("-r")
            .arg(root().join(sub))
            .arg(dir.path().join(sub))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    let yaml = dir.path().join("platforms/linux/platform.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let text = text
        .replacen("gcc: \"15.2\", gnu_coreutils: \"true\"", "gcc: \"15.2\"", 1)
        .replacen("parent: debian:12", "parent: debian:bookworm", 1);
    std::fs::write(&yaml, text).unwrap();
    let cat = catalogue::load(&dir.path().join("versions"), &dir.path().join("platforms")).unwrap();
    let wrong: Vec<String> = steps().iter().flat_map(|s| check(&cat, s)).collect();
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("maybe_replace_uutils_coreutils") && w.contains("ubuntu-26.04")),
        "{wrong:?}"
    );
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("debian-12: parent \"debian:bookworm\"")),
        "{wrong:?}"
    );
    // A step switch must be a shell word.
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, text.replacen("crb: \"true\"", "crb: \"yes\"", 1)).unwrap();
    let err = catalogue::load(&dir.path().join("versions"), &dir.path().join("platforms"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("vars.crb") && err.contains("\"yes\""), "{err}");
}
