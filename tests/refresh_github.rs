//! `kiln release` end to end: bump, build on the real engine and registry,
//! verify, gate, then refresh CI through GitHub's REST API. github.com is
//! unreachable here, so a local server speaking the endpoints Kiln calls
//! (contents, git refs, pulls, issues) stands in for it and records every
//! request; the code path is the production one (octocrab).
//!
//! Every test starts from its own interrupted release (a build on all three
//! builders, seconds long). The ZFS path needs zfs-fuse to itself: each test
//! holds `LOCK` for its whole run, so the tests of this file run one at a
//! time.

use std::process::Output;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

mod common;
use common::github::{Gh, Shared, app};
use common::{Profile, zfs};

/// The personal token the stand-in GitHub accepts, and the variable the
/// release profiles read it from (`refresh.token_env`).
const PAT: &str = "ghp_kilnTestPersonalToken0123456789";
const TOKEN_ENV: &str = "KILN_TEST_GITHUB_TOKEN";

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A one-platform profile (busybox amd64) plus the macOS (ZFS) and OpenBSD
/// (QEMU) paths of the demo, so the cascade runs across all three builders;
/// CI refresh through a GitHub API at `port`: ocaml-version first, then the
/// pins of a CI (pull request) and of another (issue).
struct Release {
    // Dropped first: the datasets go before the profile's directory.
    _zfs: zfs::Tree,
    p: Profile,
    /// Whether the macOS (ZFS) path is in the cascade.
    zfs_ok: bool,
    port: u16,
}

impl Release {
    /// `kiln` with the personal token GitHub accepts.
    fn kiln(&self, args: &[&str]) -> Output {
        use common::Bounded;
        self.p
            .command()
            .env(TOKEN_ENV, PAT)
            .args(args)
            .output_within(common::LIMIT)
            .unwrap()
    }

    fn key(&self, image: &str) -> String {
        format!("{}/{image}", self.p.namespace)
    }
}

/// The ocaml-version the opam-repository of the profile holds: the demo's
/// tree plus a stand-in `ocaml-version.4.1.4` package, committed before
/// anything is built, so the images are built at a commit that has it.
const OCAML_VERSION_PACKAGE: &str = "4.1.4";

fn with_ocaml_version_package(p: &Profile) {
    let tree = p.path().join("opam-repository-tree");
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(common::root().join("scripts/demo/opam-repository"))
        .arg(&tree)
        .status()
        .unwrap();
    assert!(copy.success());
    let pkg = tree.join(format!(
        "packages/ocaml-version/ocaml-version.{OCAML_VERSION_PACKAGE}"
    ));
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("opam"),
        "opam-version: \"2.0\"\nsynopsis: \"A stand-in release of ocaml-version for Kiln's tests\"\n",
    )
    .unwrap();
    let ok = std::process::Command::new("bash")
        .arg(common::root().join("scripts/demo/opam-repository.sh"))
        .arg(&tree)
        .arg(p.path().join("opam-repository.git"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "opam-repository.sh");
}

fn release_profile(test: &str, name: &str) -> Release {
    common::fixtures();
    let zprefix = format!("test-release-{name}-{}", std::process::id());
    let port = common::free_port();
    let mut b = Profile::busybox(&format!("release-{name}"), "busybox-release").platform("openbsd");
    let zfs_ok = match zfs::unavailable() {
        None => true,
        Some(why) => {
            common::skip(&format!("{test} (its ZFS path)"), &why);
            false
        }
    };
    if zfs_ok {
        b = b.platform("macos");
    }
    // The demo's opam repository: the macOS recipe takes its bundle from
    // the source mirror, which needs a commit that exists.
    let p = b
        .demo_opam_repository()
        .toml(&common::qemu_toml(300))
        .toml(&common::zfs_toml(&zprefix, None))
        .toml(&format!(
            "[refresh]\napi_url = \"http://127.0.0.1:{port}\"\ntoken_env = \"{TOKEN_ENV}\"\n\
             [[refresh.consumers]]\nrepo = \"ocurrent/ocaml-version\"\nbase = \"main\"\nformat = \"ocaml-version\"\n\
             paths = [\"ocaml_version.ml\", \"ocaml_version.mli\", \"CHANGES.md\"]\n\
             [[refresh.consumers]]\nrepo = \"ocurrent/ocaml-ci\"\nbase = \"main\"\nformat = \"opam-pin\"\n\
             paths = [\"dune-project\", \"ocaml-ci.opam\", \"Dockerfile\"]\n\
             [[refresh.consumers]]\nrepo = \"mirage/mirage-ci\"\nbase = \"main\"\nformat = \"opam-pin\"\n\
             paths = [\"mirage-ci.opam\"]\nmode = \"issue\"\n"
        ))
        .create();
    with_ocaml_version_package(&p);
    // The OpenBSD slice's install sets and the macOS slice's opam-repository
    // bundle, into this namespace's source mirror.
    p.sync_sources();
    Release {
        _zfs: zfs::Tree(format!("kiln/{zprefix}")),
        p,
        zfs_ok,
        port,
    }
}

/// Files of the stand-ins for ocaml-version and the two CIs, written for
/// these tests in the layout of the real ones.
const ML: &str = "let x = 1\n\nmodule Releases = struct\n  let v5_5_0 = of_string_exn \"5.5.0\"\n  let v5_5 = v5_5_0\n\n  let all_patches = [\n    v5_5_0 ]\n\n  let all = [ v5_5 ]\n\n  let recent = [ v5_5 ]\n\n  let latest = v5_5\n\n  let unreleased_betas = [ ]\n  let dev = [ ]\nend\n";
const MLI: &str = "module Releases : sig\n\n  val v5_5_0 : t\n  (** Version 5.5.0 *)\n\n  val v5_5 : t\n  (** Latest release in the 5.5.x series *)\n\n  val all_patches : t list\nend\n";
const CHANGES: &str = "## v4.1.3 (2026-06-01)\n\n * Add OCaml 5.5.0 (@someone #91)\n";
const DUNE: &str =
    "(package\n (name ocaml-ci)\n (depends\n  (ocaml-version (>= 4.1.3))\n  (logs (>= 0.7.0))))\n";
const OPAM: &str = "depends: [\n  \"ocaml-version\" {>= \"4.1.3\"}\n  \"logs\" {>= \"0.7.0\"}\n]\n";

fn dockerfile() -> String {
    format!(
        "FROM ocaml/opam:debian-13-ocaml-5.5\nRUN cd ~/opam-repository && git fetch -q origin master && git reset --hard {} && opam update\n",
        "0".repeat(40)
    )
}

/// `kiln release 5.5.1` interrupted between build and the pins' refresh:
/// the CIs' repositories are not there yet (ocaml-version's is).
fn interrupted(test: &str, name: &str) -> (Release, GitHub, Output) {
    let r = release_profile(test, name);
    let gh = github(&r);
    let out = r.kiln(&["release", "5.5.1", "--json"]);
    (r, gh, out)
}

/// The stand-in GitHub, serving on the release's port with ocaml-version's
/// files on its base branch; stops on drop.
struct GitHub {
    g: Shared,
    _rt: tokio::runtime::Runtime,
}

fn put(s: &mut Gh, repo: &str, files: &[(&str, &str)]) {
    for (path, content) in files {
        s.files.insert(
            (repo.into(), "main".into(), path.to_string()),
            (content.to_string(), "base0".into()),
        );
    }
    s.refs.insert((repo.into(), "main".into()), "main0".into());
}

fn github(r: &Release) -> GitHub {
    let g: Shared = Arc::new(Mutex::new(Gh {
        lockfile: r.p.lockfile_path(),
        pat: PAT.into(),
        ..Gh::default()
    }));
    put(
        &mut g.lock().unwrap(),
        "ocurrent/ocaml-version",
        &[
            ("ocaml_version.ml", ML),
            ("ocaml_version.mli", MLI),
            ("CHANGES.md", CHANGES),
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", r.port)))
        .unwrap();
    let gh = g.clone();
    rt.spawn(async move { axum::serve(listener, app(gh)).await });
    GitHub { g, _rt: rt }
}

/// The CIs' repositories appear.
fn consumers_back(gh: &GitHub) {
    let mut s = gh.g.lock().unwrap();
    let d = dockerfile();
    put(
        &mut s,
        "ocurrent/ocaml-ci",
        &[
            ("dune-project", DUNE),
            ("ocaml-ci.opam", OPAM),
            ("Dockerfile", &d),
        ],
    );
    put(&mut s, "mirage/mirage-ci", &[("mirage-ci.opam", OPAM)]);
}

/// Interrupted, then the CIs come back and a dry run shows every step;
/// the log's length before the dry run.
fn after_dry_run(test: &str, name: &str) -> (Release, GitHub, usize) {
    let (r, gh, _) = interrupted(test, name);
    consumers_back(&gh);
    let before = gh.g.lock().unwrap().log.len();
    let out = r.kiln(&["release", "5.5.1", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (r, gh, before)
}

/// After the dry run, the rerun continues: its summary.
fn rerun(test: &str, name: &str) -> (Release, GitHub, Value) {
    let (r, gh, _) = after_dry_run(test, name);
    let out = r.kiln(&["release", "5.5.1", "--json"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = serde_json::from_slice(&out.stdout).unwrap();
    (r, gh, summary)
}

const BRANCH: &str = "kiln/release-5.5.1";

fn file(s: &Gh, repo: &str, branch: &str, path: &str) -> String {
    s.files[&(repo.to_string(), branch.to_string(), path.to_string())]
        .0
        .clone()
}

/// The opam-repository commit the release's busybox image was built with.
fn built_at(r: &Release) -> String {
    let e = r.p.entry(&r.key("opam:busybox-release-ocaml-5.5"));
    e["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("opam_repository_commit"))
        .map(|(_, v)| v.as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn release_interrupted_before_the_ci_refresh_exits_2_naming_the_consumer() {
    let _serial = serial();
    let (_r, _gh, out) = interrupted(
        "release_interrupted_before_the_ci_refresh_exits_2_naming_the_consumer",
        "exit",
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ocurrent/ocaml-ci"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The same cascade built the Linux image (Docker), the OpenBSD disk
/// (QEMU) and the macOS tree (ZFS), and published them before stopping.
#[test]
fn release_interrupted_before_the_ci_refresh_keeps_every_builders_images() {
    let _serial = serial();
    let (r, _gh, _) = interrupted(
        "release_interrupted_before_the_ci_refresh_keeps_every_builders_images",
        "built",
    );
    assert_eq!(
        r.p.entry(&r.key("opam:busybox-release-ocaml-5.5"))["ocaml"],
        "5.5.1"
    );
    assert_eq!(
        r.p.entry(&r.key("openbsd-base:openbsd-79-amd64-ocaml-5.5"))["ocaml"],
        "5.5.1"
    );
    if r.zfs_ok {
        assert_eq!(
            r.p.entry(&r.key("macos-base:macos-homebrew-ocaml-5.5"))["ocaml"],
            "5.5.1"
        );
    }
}

/// ocaml-version's pull request is opened before any image of 5.5.1 is
/// published; the CIs' pins are read and written only once the gate let
/// 5.5.1 through.
#[test]
fn release_opens_ocaml_versions_pull_request_first_and_the_pins_only_after_the_gate_opened() {
    let _serial = serial();
    let (_r, gh, _) = rerun(
        "release_opens_ocaml_versions_pull_request_first_and_the_pins_only_after_the_gate_opened",
        "order",
    );
    let s = gh.g.lock().unwrap();
    let opened = |repo: &str| {
        s.log
            .iter()
            .position(|l| l.starts_with(&format!("POST /repos/{repo}/pulls ")))
            .unwrap_or_else(|| panic!("no pull request to {repo}: {:?}", s.log))
    };
    let first = opened("ocurrent/ocaml-version");
    assert!(s.log[first].ends_with("published=false"), "{:?}", s.log);
    let ci = opened("ocurrent/ocaml-ci");
    assert!(first < ci, "{:?}", s.log);
    for l in s.log.iter().filter(|l| {
        l.contains("/repos/ocurrent/ocaml-ci/") || l.contains("/repos/mirage/mirage-ci/")
    }) {
        assert!(l.ends_with("published=true"), "{l}: {:?}", s.log);
    }
}

/// Dry run: every step shown, no request that writes.
#[test]
fn release_dry_run_sends_github_no_request_that_writes() {
    let _serial = serial();
    let (_r, gh, before) =
        after_dry_run("release_dry_run_sends_github_no_request_that_writes", "dry");
    let s = gh.g.lock().unwrap();
    assert!(s.log.len() > before, "the dry run read nothing");
    assert!(
        s.log[before..].iter().all(|l| l.starts_with("GET")),
        "{:?}",
        &s.log[before..]
    );
}

/// The rerun continues where the interrupted release stopped.
#[test]
fn release_rerun_builds_nothing_again() {
    let _serial = serial();
    let (r, _gh, summary) = rerun("release_rerun_builds_nothing_again", "nobuild");
    assert_eq!(summary["builds"][0]["built"], 0, "{summary}");
    assert_eq!(
        summary["builds"][0]["unchanged"],
        if r.zfs_ok { 3 } else { 2 },
        "{summary}"
    );
}

#[test]
fn release_rerun_opens_one_pull_request_or_issue_per_consumer() {
    let _serial = serial();
    let (_r, gh, summary) = rerun(
        "release_rerun_opens_one_pull_request_or_issue_per_consumer",
        "prs",
    );
    let action = |repo: &str| summary["refreshed"][repo]["action"].clone();
    assert_eq!(
        action("ocurrent/ocaml-version"),
        "pull-request-exists",
        "{summary}"
    );
    assert_eq!(
        action("ocurrent/ocaml-ci"),
        "pull-request-opened",
        "{summary}"
    );
    assert_eq!(action("mirage/mirage-ci"), "issue-opened", "{summary}");
    let s = gh.g.lock().unwrap();
    assert_eq!(s.pulls.len(), 2);
    assert_eq!(s.issues.len(), 1);
    let pr = s
        .pulls
        .iter()
        .find(|p| p["repo"] == "ocurrent/ocaml-ci")
        .unwrap();
    assert_eq!(pr["head"], BRANCH);
    assert_eq!(pr["base"], "main");
    assert!(
        pr["body"]
            .as_str()
            .unwrap()
            .contains("opam:busybox-release-ocaml-5.5"),
        "{}",
        pr["body"]
    );
}

#[test]
fn release_writes_ocaml_version_and_the_pins_on_branches_and_leaves_the_bases_untouched() {
    let _serial = serial();
    let (r, gh, _) = rerun(
        "release_writes_ocaml_version_and_the_pins_on_branches_and_leaves_the_bases_untouched",
        "pins",
    );
    let s = gh.g.lock().unwrap();
    let ov = "ocurrent/ocaml-version";
    assert_eq!(
        file(&s, ov, BRANCH, "ocaml_version.ml"),
        ML.replace(
            "  let v5_5 = v5_5_0\n",
            "  let v5_5_1 = of_string_exn \"5.5.1\"\n  let v5_5 = v5_5_1\n"
        )
        .replace("    v5_5_0 ]", "    v5_5_0; v5_5_1 ]")
    );
    assert_eq!(
        file(&s, ov, BRANCH, "ocaml_version.mli"),
        MLI.replace(
            "  val v5_5 : t\n",
            "  val v5_5_1 : t\n  (** Version 5.5.1 *)\n\n  val v5_5 : t\n"
        )
    );
    assert_eq!(
        file(&s, ov, BRANCH, "CHANGES.md"),
        format!("## unreleased\n\n * Add OCaml 5.5.1\n\n{CHANGES}")
    );
    let ci = "ocurrent/ocaml-ci";
    let bound = OCAML_VERSION_PACKAGE;
    assert_eq!(
        file(&s, ci, BRANCH, "dune-project"),
        DUNE.replace("4.1.3", bound)
    );
    assert_eq!(
        file(&s, ci, BRANCH, "ocaml-ci.opam"),
        OPAM.replace("4.1.3", bound)
    );
    assert_eq!(
        file(&s, ci, BRANCH, "Dockerfile"),
        dockerfile().replace(&"0".repeat(40), &built_at(&r))
    );
    assert!(
        s.issues[0]["body"]
            .as_str()
            .unwrap()
            .contains(&format!("{{>= \"{bound}\"}}")),
        "{}",
        s.issues[0]["body"]
    );
    // The base branches themselves are untouched.
    assert_eq!(file(&s, ov, "main", "ocaml_version.ml"), ML);
    assert_eq!(file(&s, ci, "main", "ocaml-ci.opam"), OPAM);
}

/// Once more: nothing new anywhere.
#[test]
fn release_run_once_more_opens_nothing_new() {
    let _serial = serial();
    let (r, gh, _) = rerun("release_run_once_more_opens_nothing_new", "again");
    let out = r.kiln(&["release", "5.5.1", "--json"]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let action = |repo: &str| summary["refreshed"][repo]["action"].clone();
    assert_eq!(
        action("ocurrent/ocaml-version"),
        "pull-request-exists",
        "{summary}"
    );
    assert_eq!(
        action("ocurrent/ocaml-ci"),
        "pull-request-exists",
        "{summary}"
    );
    assert_eq!(action("mirage/mirage-ci"), "issue-exists", "{summary}");
    let s = gh.g.lock().unwrap();
    assert_eq!((s.pulls.len(), s.issues.len()), (2, 1));
}
