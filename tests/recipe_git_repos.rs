//! The shipped Linux recipes' steps that add upstream's extra opam
//! repositories, run for real: the beta repository (a trunk compiler) and
//! the GCC 15 patches overlay (4.14 on Alpine 3.23, tier 1), each against a
//! local git repository standing in for its upstream remote. The step is
//! taken from the target's rendered recipe as it stands (only
//! `{{sources_url}}` is given the directory the source server would
//! serve), the bundle is made by the mirror's own code
//! (`kiln::sources::git::bundle`), and it runs with a real opam (2.1, the
//! images' default `opam`) in a network namespace of its own with a
//! private `/tmp`, as in a build container. Then:
//! - opam has the repository by upstream's URL, with the declared commit's
//!   packages, and git is left with no rewriting of that URL;
//! - upstream moves on, and `opam update` (the network stood in for by a
//!   rewrite to the local upstream, as the test's own configuration)
//!   brings its new commit: the image refreshes from upstream, not from
//!   the mirror;
//! - a bundle of another commit than the declared one fails the step and
//!   adds nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::catalogue;
use kiln::plan::{self, Filter};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@e")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@e")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One of upstream's extra repositories, as the test stands it in.
struct Case {
    /// The git source's name in versions/sources.yaml.
    source: &'static str,
    /// opam's name for the repository, and the URL it is added by.
    repo: &'static str,
    url: &'static str,
    branch: &'static str,
    /// The compiler whose builds add it (on every recipe family: the
    /// first OS release of each that adds it).
    version: &'static str,
    /// The variable that turns the step on.
    switch: &'static str,
}

const BETA: Case = Case {
    source: plan::recipe_vars::BETA_REPOSITORY,
    repo: "beta",
    url: "https://github.com/ocaml/ocaml-beta-repository",
    branch: "master",
    version: "5.6.0",
    switch: "ocaml_beta_repository",
};

const OVERLAY: Case = Case {
    source: plan::recipe_vars::GCC15_OVERLAY,
    repo: "ocaml-patches-overlay",
    url: "https://github.com/ocurrent/opam-repository",
    branch: "patches",
    version: "4.14",
    switch: "ocaml_gcc15_overlay",
};

/// A scratch directory outside `/tmp`, which the step's namespace
/// replaces with its own.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("recipe-git-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Can this machine run the step? (opam, and a network namespace.)
fn runnable(test: &str) -> bool {
    let opam = Command::new("opam").arg("--version").output();
    if !opam.is_ok_and(|o| o.status.success()) {
        common::skip(test, "no opam on PATH (apt-get install opam)");
        return false;
    }
    let ns = Command::new("unshare")
        .args(["--net", "--mount", "true"])
        .output();
    if !ns.is_ok_and(|o| o.status.success()) {
        common::skip(test, "unshare --net --mount is not permitted here");
        return false;
    }
    true
}

/// The local upstream: a bare repository whose `branch` holds an opam
/// repository with package `pkg.1`; returns (bare path, work tree).
fn upstream(dir: &Path, c: &Case, pkg: &str) -> (PathBuf, PathBuf) {
    let bare = dir.join("upstream.git");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(dir, &["init", "--quiet", "--bare", bare.to_str().unwrap()]);
    git(&work, &["init", "--quiet", "-b", c.branch]);
    std::fs::write(work.join("repo"), "opam-version: \"2.0\"\n").unwrap();
    add_package(&work, pkg, "1");
    git(
        &work,
        &["push", "--quiet", bare.to_str().unwrap(), c.branch],
    );
    (bare, work)
}

fn add_package(work: &Path, pkg: &str, version: &str) {
    let d = work.join(format!("packages/{pkg}/{pkg}.{version}"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("opam"), "opam-version: \"2.0\"\n").unwrap();
    git(work, &["add", "."]);
    git(
        work,
        &["commit", "--quiet", "-m", &format!("{pkg}.{version}")],
    );
}

fn shipped() -> catalogue::Catalogue {
    catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap()
}

fn filter(c: &Case, os: Option<&str>) -> Filter {
    Filter {
        os: os.map(str::to_string),
        version: Some(c.version.into()),
        arch: Some(catalogue::Arch::Amd64),
        variant: Some(plan::PLAIN_VARIANT.into()),
        ..Filter::default()
    }
}

/// Per Linux recipe family (`apk.Dockerfile`, …), the first OS release
/// whose build of `c.version` adds the repository. (Upstream adds these
/// repositories in its Linux Dockerfiles only: builds.expected has no
/// Windows compiler image that does.)
fn families(c: &Case) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let linux = Filter {
        platform: Some("linux".into()),
        ..filter(c, None)
    };
    for t in plan::expand(&shipped(), &linux).unwrap() {
        let Some(family) = t.recipes.first().and_then(|r| r.file_name()) else {
            continue;
        };
        let family = family.to_string_lossy().to_string();
        if t.vars.get(c.switch).map(String::as_str) == Some("true")
            && !out.iter().any(|(f, _)| *f == family)
        {
            out.push((family, t.os.clone()));
        }
    }
    out.sort();
    out
}

/// The step of `os`'s rendered recipe that adds `c.repo`, with the source
/// server at `served`, as one shell command.
fn rendered_step(c: &Case, os: &str, declared: &str, served: &Path) -> String {
    let mut cat = shipped();
    let g = cat
        .sources
        .git
        .iter_mut()
        .find(|g| g.name == c.source)
        .expect("the git source is in versions/sources.yaml");
    g.commit = Some(declared.to_string());
    let targets = plan::expand(&cat, &filter(c, Some(os))).unwrap();
    let [t] = targets.as_slice() else {
        panic!("{os} {}: {} targets", c.version, targets.len())
    };
    assert_eq!(
        t.vars[c.switch], "true",
        "{os} {} adds {}",
        c.version, c.repo
    );
    let recipes = plan::render::render(t).unwrap();
    let joined = recipes[0].1.replace("\\\n", " ");
    let add = format!("opam repo add {} git+", c.repo);
    let step = joined
        .lines()
        .find(|l| l.starts_with("RUN ") && l.contains(&add))
        .unwrap_or_else(|| panic!("no step adds {} in {}", c.repo, recipes[0].0));
    step.trim_start_matches("RUN ")
        .replace("{{sources_url}}", &format!("file://{}", served.display()))
}

/// opam (and git) as the image's user: `home` is its HOME.
fn opam(home: &Path, args: &[&str]) -> Output {
    Command::new("opam")
        .args(args)
        .env("HOME", home)
        .env_remove("OPAMROOT")
        .env_remove("OPAMSWITCH")
        .env("OPAMYES", "1")
        .output()
        .unwrap()
}

/// A home with opam initialised on a local default repository, as the
/// image's `opam` stage leaves it.
fn initialised(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    let default = dir.join("default");
    std::fs::create_dir_all(default.join("packages")).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(default.join("repo"), "opam-version: \"2.0\"\n").unwrap();
    let d = default.to_str().unwrap();
    let o = opam(
        &home,
        &["init", "--bare", "-n", "--disable-sandboxing", "default", d],
    );
    assert!(o.status.success(), "opam init: {}", text(&o));
    home
}

/// Run the step as a build would: no network, a private /tmp.
fn run_step(home: &Path, step: &str) -> Output {
    let script = format!("mount -t tmpfs kiln-tmp /tmp && set -e && {step}");
    Command::new("unshare")
        .args(["--net", "--mount", "sh", "-c", &script])
        .env("HOME", home)
        .env_remove("OPAMROOT")
        .env_remove("OPAMSWITCH")
        .output()
        .unwrap()
}

/// The mirror's bundle of `declared` (`kiln sources sync`'s own code),
/// written where the source server serves it.
fn mirror(dir: &Path, c: &Case, bare: &Path, declared: &str) -> PathBuf {
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    let g = catalogue::sources::GitSource {
        name: c.source.to_string(),
        url: c.url.to_string(),
        git_ref: c.branch.to_string(),
        commit: Some(declared.to_string()),
    };
    let dest = served.join(g.served());
    let url = format!("file://{}", bare.display());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(kiln::sources::git::bundle(
            &dir.join("state"),
            &g,
            &url,
            &dest,
        ))
        .unwrap();
    served
}

fn versions(home: &Path, pkg: &str) -> String {
    let o = opam(home, &["show", pkg, "-f", "all-versions"]);
    assert!(o.status.success(), "opam show {pkg}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The whole story for one OS release: added from the mirror under no
/// network, by upstream's URL; refreshed from upstream afterwards.
fn added_and_refreshed(c: &Case, os: &str) {
    let dir = scratch();
    let pkg = format!("kiln-{}", c.repo);
    let (bare, work) = upstream(dir.path(), c, &pkg);
    let declared = git(&work, &["rev-parse", "HEAD"]);
    let served = mirror(dir.path(), c, &bare, &declared);
    let home = initialised(dir.path());
    let step = rendered_step(c, os, &declared, &served);
    let o = run_step(&home, &step);
    assert!(o.status.success(), "{os}: {step}\n{}", text(&o));
    // opam has it by upstream's URL, with the declared commit's packages.
    let list = opam(&home, &["repo", "list", "--all"]);
    let want = format!("{} git+{}", c.repo, c.url);
    let line = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .find(|l| l.starts_with(&format!("{} ", c.repo)))
        .unwrap_or_default();
    assert!(line.starts_with(&want), "{os}: {line:?} in {}", text(&list));
    assert_eq!(versions(&home, &pkg), "1", "{os}");
    // git no longer rewrites the upstream URL.
    let cfg = std::fs::read_to_string(home.join(".gitconfig")).unwrap_or_default();
    assert!(!cfg.contains("insteadOf"), "{os}: {cfg}");
    // Upstream moves on; with the network (stood in for by the test's own
    // rewrite to the local upstream), `opam update` brings its commit.
    add_package(&work, &pkg, "2");
    git(
        &work,
        &["push", "--quiet", bare.to_str().unwrap(), c.branch],
    );
    let network = format!("url.file://{}.insteadOf", bare.display());
    let o = Command::new("git")
        .args(["config", "--global", &network, c.url])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = opam(&home, &["update", c.repo]);
    assert!(o.status.success(), "{os}: opam update: {}", text(&o));
    assert_eq!(versions(&home, &pkg), "1  2", "{os}");
}

/// Every Linux recipe family adds it: run on the first OS release of each.
fn added_from_the_mirror_refreshed_from_upstream(test: &str, c: &Case) {
    if !runnable(test) {
        return;
    }
    let families = families(c);
    let names: Vec<&str> = families.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        [
            "apk.Dockerfile",
            "apt.Dockerfile",
            "dnf.Dockerfile",
            "pacman.Dockerfile",
            "zypper.Dockerfile"
        ],
        "{}: the families that add {}",
        c.version,
        c.repo
    );
    for (_, os) in &families {
        added_and_refreshed(c, os);
    }
}

#[test]
fn the_beta_repository_is_added_from_the_mirror_and_refreshed_from_upstream() {
    added_from_the_mirror_refreshed_from_upstream(
        "the_beta_repository_is_added_from_the_mirror_and_refreshed_from_upstream",
        &BETA,
    );
}

#[test]
fn the_gcc15_overlay_is_added_from_the_mirror_and_refreshed_from_upstream() {
    added_from_the_mirror_refreshed_from_upstream(
        "the_gcc15_overlay_is_added_from_the_mirror_and_refreshed_from_upstream",
        &OVERLAY,
    );
}

/// The step checks the bundle against the declared commit: served a
/// bundle of upstream's later head, it fails, and opam has no such
/// repository.
#[test]
fn a_bundle_of_another_commit_fails_the_step() {
    let test = "a_bundle_of_another_commit_fails_the_step";
    if !runnable(test) {
        return;
    }
    let c = &OVERLAY;
    let dir = scratch();
    let (bare, work) = upstream(dir.path(), c, "kiln-stale");
    let declared = git(&work, &["rev-parse", "HEAD"]);
    add_package(&work, "kiln-stale", "2");
    git(
        &work,
        &["push", "--quiet", bare.to_str().unwrap(), c.branch],
    );
    let head = git(&work, &["rev-parse", "HEAD"]);
    let served = mirror(dir.path(), c, &bare, &head);
    let home = initialised(dir.path());
    let o = run_step(&home, &rendered_step(c, "alpine-3.23", &declared, &served));
    assert!(!o.status.success(), "{}", text(&o));
    let list = opam(&home, &["repo", "list", "--all"]);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(c.repo),
        "{}",
        text(&list)
    );
}
