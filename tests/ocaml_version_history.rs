//! `kiln export ocaml-version` replayed over ocurrent/ocaml-version's own
//! release commits: for each, a catalogue holding what the parent revision's
//! `ocaml_version.ml` states gets the commit's bump through `kiln bump`,
//! and `kiln export ocaml-version --from` the parent's files must give the
//! commit's `ocaml_version.ml` and `.mli` byte for byte. Where upstream's
//! person wrote otherwise, the differing lines are listed in the fixture
//! with the reason, and the test expects exactly those lines.
//!
//! The commits, their bumps and the blob ids of the files are in
//! `tests/fixtures/upstream/ocaml-version-history.json` (its README gives
//! the provenance). Upstream's files are code and are not copied here: the
//! test reads them from a clone of ocaml-version, `KILN_OCAML_VERSION_GIT`
//! (a git dir; see `clone` for where else it looks), checked against the
//! blob ids. Upstream's files may not be committed here and CI reaches no
//! GitHub, so both tests are `#[ignore]`d with the command that runs them
//! where a clone is (the search tool's `fetch` makes one); run with
//! `--ignored` and no clone, they say SKIPPED.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;

const DEFAULT_GIT: &str = "/work/.mirror/ocurrent+ocaml-version/repo";

fn fixture() -> Value {
    let p = common::root().join("tests/fixtures/upstream/ocaml-version-history.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The clone to read, if one holds the fixture's head commit:
/// `KILN_OCAML_VERSION_GIT`, else `shared/upstream/ocaml-version.git` beside
/// the checkout (where CI finds the steering repo's shared files), else
/// where the search tool's `fetch` puts it.
fn clone(head: &str) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var("KILN_OCAML_VERSION_GIT") {
        Ok(d) => vec![d.into()],
        Err(_) => vec![
            common::root().join("../shared/upstream/ocaml-version.git"),
            PathBuf::from(DEFAULT_GIT),
        ],
    };
    candidates
        .iter()
        .find(|d| git(d, &["cat-file", "-e", &format!("{head}^{{commit}}")]).is_some())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no clone of ocurrent/ocaml-version holding {head} at {} (set KILN_OCAML_VERSION_GIT to a git dir of one)",
                candidates
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        })
}

/// A file at a commit, after checking its blob id.
fn file_at(dir: &Path, commit: &str, file: &str, blob: &str) -> String {
    let id = git(dir, &["rev-parse", &format!("{commit}:{file}")]).unwrap();
    assert_eq!(id.trim(), blob, "{file} at {commit} is not the fixture's");
    git(dir, &["show", &format!("{commit}:{file}")]).unwrap()
}

fn status_of(v: &str) -> &'static str {
    match v.split_once('~').map(|x| x.1) {
        Some(p) if p.starts_with("alpha") => "alpha",
        Some(p) if p.starts_with("beta") => "beta",
        Some(_) => "rc",
        None => "released",
    }
}

/// A catalogue stating what `ml` states, in `dir`.
fn catalogue_of(dir: &Path, ml: &str) {
    let st = kiln::refresh::ocaml_version::state(ml).unwrap();
    let mut series: BTreeMap<kiln::catalogue::OcamlVersion, Vec<(String, &str)>> = BTreeMap::new();
    for v in st.released.iter().chain(&st.betas) {
        let s = v.to_string();
        let status = status_of(&s);
        series.entry(v.series()).or_default().push((s, status));
    }
    let newest_dev = st.dev.iter().max();
    for d in &st.dev {
        let status = if Some(d) == newest_dev {
            "trunk"
        } else {
            "dev"
        };
        series
            .entry(d.series())
            .or_default()
            .push((d.to_string(), status));
    }
    let versions = dir.join("versions");
    std::fs::create_dir_all(&versions).unwrap();
    std::fs::create_dir_all(dir.join("platforms")).unwrap();
    for (s, mut releases) in series {
        releases.sort_by_key(|(v, _)| v.parse::<kiln::catalogue::OcamlVersion>().unwrap());
        let mut y = format!(
            "series: '{}'\nnative:\n- amd64\nbytecode_only: []\nreleases:\n",
            s
        );
        for (v, status) in releases {
            y.push_str(&format!("- version: '{v}'\n  status: {status}\n"));
        }
        std::fs::write(versions.join(format!("{s}.yaml")), y).unwrap();
    }
    let names = |vs: &[kiln::catalogue::OcamlVersion]| {
        vs.iter()
            .map(|v| format!("'{v}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    std::fs::write(
        versions.join("sets.yaml"),
        format!(
            "recent: [{}]\nsignificant: [{}]\n",
            names(&st.recent),
            names(&st.significant)
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("kiln.toml"),
        "state_dir = \"state\"\nversions_dir = \"versions\"\nplatforms_dir = \"platforms\"\nmanifests_dir = \"manifests\"\n",
    )
    .unwrap();
}

fn kiln(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = common::kiln()
        .arg("--config")
        .arg(dir.join("kiln.toml"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every line where `kiln` differs from `upstream`: `FILE:LINE: - text`
/// for upstream's line, `FILE:LINE: + text` for Kiln's.
fn differing(file: &str, upstream: &str, kiln: &str) -> Vec<String> {
    let d = similar::TextDiff::from_lines(upstream, kiln);
    d.iter_all_changes()
        .filter_map(|c| {
            let text = c.value().trim_end_matches('\n');
            match c.tag() {
                similar::ChangeTag::Delete => Some(format!(
                    "{file}:{}: - {text}",
                    c.old_index().map_or(0, |i| i + 1)
                )),
                similar::ChangeTag::Insert => Some(format!(
                    "{file}:{}: + {text}",
                    c.new_index().map_or(0, |i| i + 1)
                )),
                similar::ChangeTag::Equal => None,
            }
        })
        .collect()
}

/// One commit replayed: its differing lines, and its CHANGES.md entry.
fn replay(git_dir: &Path, c: &Value) -> (Vec<String>, Option<String>) {
    let (parent, commit) = (c["parent"].as_str().unwrap(), c["commit"].as_str().unwrap());
    let blobs = &c["blobs"];
    let dir = tempfile::tempdir().unwrap();
    let ml = file_at(
        git_dir,
        parent,
        "ocaml_version.ml",
        blobs["parent"]["ocaml_version.ml"].as_str().unwrap(),
    );
    let mli = file_at(
        git_dir,
        parent,
        "ocaml_version.mli",
        blobs["parent"]["ocaml_version.mli"].as_str().unwrap(),
    );
    catalogue_of(dir.path(), &ml);
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(&checkout).unwrap();
    std::fs::write(checkout.join("ocaml_version.ml"), &ml).unwrap();
    std::fs::write(checkout.join("ocaml_version.mli"), &mli).unwrap();
    for b in c["bump"].as_array().unwrap() {
        let (v, s) = (
            b["version"].as_str().unwrap(),
            b["status"].as_str().unwrap(),
        );
        kiln(dir.path(), &["bump", v, "--status", s]);
    }
    let from = checkout.join("ocaml_version.ml");
    let out: Value = serde_json::from_slice(
        &kiln(
            dir.path(),
            &[
                "export",
                "ocaml-version",
                "--from",
                from.to_str().unwrap(),
                "--json",
            ],
        )
        .stdout,
    )
    .unwrap();
    let mut lines = Vec::new();
    for f in ["ocaml_version.ml", "ocaml_version.mli"] {
        let want = file_at(git_dir, commit, f, blobs["commit"][f].as_str().unwrap());
        lines.extend(differing(f, &want, out["files"][f].as_str().unwrap()));
    }
    (lines, out["entry"].as_str().map(str::to_string))
}

#[test]
#[ignore = "needs a clone of ocurrent/ocaml-version, which may not be committed here nor fetched in CI: KILN_OCAML_VERSION_GIT=<git dir> cargo test --test ocaml_version_history -- --ignored"]
fn every_release_commit_of_ocaml_version_is_what_kiln_export_writes() {
    let fx = fixture();
    let git_dir = match clone(fx["source"]["head"].as_str().unwrap()) {
        Ok(d) => d,
        Err(why) => {
            common::skip(
                "every_release_commit_of_ocaml_version_is_what_kiln_export_writes",
                &why,
            );
            return;
        }
    };
    let commits = fx["commits"].as_array().unwrap();
    assert!(commits.len() >= 4, "the four newest releases at least");
    let mut report = Vec::new();
    for c in commits {
        let (lines, entry) = replay(&git_dir, c);
        let excused: Vec<String> = c["excused"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["line"].as_str().unwrap().to_string())
            .collect();
        if lines != excused {
            report.push(format!(
                "{} ({}): differing lines\n  {}\n  (the fixture excuses: {excused:?})",
                &c["commit"].as_str().unwrap()[..7],
                c["subject"].as_str().unwrap(),
                lines.join("\n  ")
            ));
        }
        if let Some(want) = c["changes_entry"].as_str()
            && entry.as_deref() != Some(want)
        {
            report.push(format!(
                "{}: CHANGES.md entry {entry:?}, upstream wrote {want:?}",
                &c["commit"].as_str().unwrap()[..7]
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// Every commit since the cut that changes `ocaml_version.ml` is in the
/// fixture, as a release replayed or as a named non-release.
#[test]
#[ignore = "needs a clone of ocurrent/ocaml-version, which may not be committed here nor fetched in CI: KILN_OCAML_VERSION_GIT=<git dir> cargo test --test ocaml_version_history -- --ignored"]
fn the_fixture_names_every_commit_that_changes_ocaml_version_ml() {
    let fx = fixture();
    let git_dir = match clone(fx["source"]["head"].as_str().unwrap()) {
        Ok(d) => d,
        Err(why) => {
            common::skip(
                "the_fixture_names_every_commit_that_changes_ocaml_version_ml",
                &why,
            );
            return;
        }
    };
    let range = format!(
        "{}^..{}",
        fx["source"]["cut"].as_str().unwrap(),
        fx["source"]["head"].as_str().unwrap()
    );
    let log = git(
        &git_dir,
        &["log", "--format=%H", &range, "--", "ocaml_version.ml"],
    )
    .unwrap();
    let known: Vec<&str> = fx["commits"]
        .as_array()
        .unwrap()
        .iter()
        .chain(fx["not_releases"].as_array().unwrap())
        .map(|c| c["commit"].as_str().unwrap())
        .collect();
    let unknown: Vec<&str> = log.lines().filter(|c| !known.contains(c)).collect();
    assert!(log.lines().count() >= 5, "{log}");
    assert!(
        unknown.is_empty(),
        "commits the fixture does not name: {unknown:?}"
    );
}
