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

use std::collections::HashMap;
use std::process::Output;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

mod common;
use common::{Profile, zfs};

#[derive(Default)]
struct Gh {
    /// (repo, branch, path) → (content, sha)
    files: HashMap<(String, String, String), (String, String)>,
    /// (repo, branch) → commit sha
    refs: HashMap<(String, String), String>,
    pulls: Vec<Value>,
    issues: Vec<Value>,
    log: Vec<String>,
    seq: u64,
}

type Shared = Arc<Mutex<Gh>>;

fn gh_error(code: StatusCode, msg: &str) -> Response {
    (
        code,
        Json(json!({"message": msg, "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn get_contents(
    State(g): State<Shared>,
    Path((o, r, path)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    m: Method,
    u: Uri,
) -> Response {
    let mut g = g.lock().unwrap();
    g.log.push(format!("{m} {u}"));
    let branch = q.get("ref").cloned().unwrap_or_else(|| "main".into());
    match g.files.get(&(format!("{o}/{r}"), branch, path.clone())) {
        Some((content, sha)) => Json(json!({"type": "file", "path": path, "sha": sha, "encoding": "base64", "content": b64(content)})).into_response(),
        None => gh_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn put_contents(
    State(g): State<Shared>,
    Path((o, r, path)): Path<(String, String, String)>,
    m: Method,
    u: Uri,
    Json(b): Json<Value>,
) -> Response {
    let mut g = g.lock().unwrap();
    g.log.push(format!("{m} {u}"));
    let repo = format!("{o}/{r}");
    let branch = b["branch"].as_str().unwrap_or("main").to_string();
    let content = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b["content"].as_str().unwrap_or(""))
            .unwrap(),
    )
    .unwrap();
    let key = (repo.clone(), branch.clone(), path.clone());
    if let Some((_, sha)) = g.files.get(&key)
        && b["sha"].as_str() != Some(sha.as_str())
    {
        return gh_error(StatusCode::CONFLICT, "sha does not match");
    }
    g.seq += 1;
    let sha = format!("blob{}", g.seq);
    g.files.insert(key, (content, sha.clone()));
    let commit = format!("commit{}", g.seq);
    g.refs.insert((repo, branch), commit);
    Json(json!({"content": {"sha": sha, "path": path}, "commit": {"sha": format!("commit{}", g.seq)}})).into_response()
}

async fn get_ref(
    State(g): State<Shared>,
    Path((o, r, branch)): Path<(String, String, String)>,
    m: Method,
    u: Uri,
) -> Response {
    let mut g = g.lock().unwrap();
    g.log.push(format!("{m} {u}"));
    match g.refs.get(&(format!("{o}/{r}"), branch.clone())) {
        Some(sha) => Json(json!({"ref": format!("refs/heads/{branch}"), "object": {"sha": sha, "type": "commit"}})).into_response(),
        None => gh_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn post_ref(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    m: Method,
    u: Uri,
    Json(b): Json<Value>,
) -> Response {
    let mut g = g.lock().unwrap();
    g.log.push(format!("{m} {u}"));
    let repo = format!("{o}/{r}");
    let branch = b["ref"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("refs/heads/")
        .to_string();
    if g.refs.contains_key(&(repo.clone(), branch.clone())) {
        return gh_error(StatusCode::UNPROCESSABLE_ENTITY, "Reference already exists");
    }
    // The new branch starts with the base's files.
    let base: Vec<_> = g
        .files
        .iter()
        .filter(|((rp, br, _), _)| *rp == repo && br == "main")
        .map(|((_, _, p), v)| (p.clone(), v.clone()))
        .collect();
    for (p, v) in base {
        g.files.insert((repo.clone(), branch.clone(), p), v);
    }
    g.refs.insert(
        (repo, branch.clone()),
        b["sha"].as_str().unwrap_or("").to_string(),
    );
    (
        StatusCode::CREATED,
        Json(json!({"ref": format!("refs/heads/{branch}")})),
    )
        .into_response()
}

async fn get_pulls(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    m: Method,
    u: Uri,
) -> Response {
    let mut g = g.lock().unwrap();
    g.log.push(format!("{m} {u}"));
    let repo = format!("{o}/{r}");
    let head = q.get("head").cloned().unwrap_or_default();
    let list: Vec<Value> = g
        .pulls
        .iter()
        .filter(|p| {
            p["repo"] == repo.as_str()
                && (head.is_empty() || format!("{o}:{}", p["head"].as_str().unwrap_or("")) == head)
        })
        .cloned()
        .collect();
    Json(json!(list)).into_response()
}

async fn post_pull(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    m: Method,
    u: Uri,
    Json(b): Json<Value>,
) -> Response {
    let mut g = g.lock().unwrap();
    g.log.push(format!("{m} {u}"));
    g.seq += 1;
    let n = g.seq;
    let pr = json!({"repo": format!("{o}/{r}"), "number": n, "html_url": format!("https://github.com/{o}/{r}/pull/{n}"),
        "head": b["head"], "base": b["base"], "title": b["title"], "body": b["body"], "state": "open"});
    g.pulls.push(pr.clone());
    (StatusCode::CREATED, Json(pr)).into_response()
}

async fn get_issues(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    m: Method,
    u: Uri,
) -> Response {
    let mut g = g.lock().unwrap();
    g.log.push(format!("{m} {u}"));
    let repo = format!("{o}/{r}");
    let list: Vec<Value> = g
        .issues
        .iter()
        .filter(|i| i["repo"] == repo.as_str())
        .cloned()
        .collect();
    Json(json!(list)).into_response()
}

async fn post_issue(
    State(g): State<Shared>,
    Path((o, r)): Path<(String, String)>,
    m: Method,
    u: Uri,
    Json(b): Json<Value>,
) -> Response {
    let mut g = g.lock().unwrap();
    g.log.push(format!("{m} {u}"));
    g.seq += 1;
    let i = json!({"repo": format!("{o}/{r}"), "number": g.seq, "title": b["title"], "body": b["body"], "state": "open"});
    g.issues.push(i.clone());
    (StatusCode::CREATED, Json(i)).into_response()
}

fn app(g: Shared) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(
            "/repos/{o}/{r}/contents/{*path}",
            get(get_contents).put(put_contents),
        )
        .route("/repos/{o}/{r}/git/ref/heads/{*branch}", get(get_ref))
        .route("/repos/{o}/{r}/git/refs", post(post_ref))
        .route("/repos/{o}/{r}/pulls", get(get_pulls).post(post_pull))
        .route("/repos/{o}/{r}/issues", get(get_issues).post(post_issue))
        .with_state(g)
}

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A one-platform profile (busybox amd64) plus the macOS (ZFS) and OpenBSD
/// (QEMU) paths of the demo, so the cascade runs across all three builders;
/// CI refresh through a GitHub API at `port`, not served yet.
struct Release {
    // Dropped first: the datasets go before the profile's directory.
    _zfs: zfs::Tree,
    p: Profile,
    /// Whether the macOS (ZFS) path is in the cascade.
    zfs_ok: bool,
    port: u16,
}

impl Release {
    fn kiln(&self, args: &[&str]) -> Output {
        self.p.kiln(args)
    }

    fn key(&self, image: &str) -> String {
        format!("{}/{image}", self.p.namespace)
    }
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
            "[refresh]\napi_url = \"http://127.0.0.1:{port}\"\ntoken_env = \"KILN_TEST_NO_TOKEN\"\n\
             [[refresh.consumers]]\nrepo = \"ocurrent/ocaml-ci\"\nbase = \"main\"\npath = \"pins.json\"\nformat = \"json-pins\"\n\
             [[refresh.consumers]]\nrepo = \"ocurrent/opam-repo-ci\"\nbase = \"main\"\npath = \"doc/versions.txt\"\nformat = \"version-list\"\n\
             [[refresh.consumers]]\nrepo = \"mirage/mirage-ci\"\nbase = \"main\"\npath = \"pins.yml\"\nformat = \"yaml-pins\"\nmode = \"issue\"\n"
        ))
        .create();
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

/// `kiln release 5.5.1` interrupted between build and CI refresh: GitHub is
/// not reachable.
fn interrupted(test: &str, name: &str) -> (Release, Output) {
    let r = release_profile(test, name);
    let out = r.kiln(&["release", "5.5.1", "--json"]);
    (r, out)
}

/// The stand-in GitHub, serving on the release's port, its consumers'
/// base branches holding their files; stops on drop.
struct GitHub {
    g: Shared,
    _rt: tokio::runtime::Runtime,
}

fn github_back(r: &Release) -> GitHub {
    let g: Shared = Arc::new(Mutex::new(Gh::default()));
    {
        let mut s = g.lock().unwrap();
        for (repo, path, content) in [
            (
                "ocurrent/ocaml-ci",
                "pins.json",
                "{\n  \"other\": \"x\"\n}\n",
            ),
            (
                "ocurrent/opam-repo-ci",
                "doc/versions.txt",
                "4.14.3\n5.5.0\n",
            ),
            ("mirage/mirage-ci", "pins.yml", "a: b\n"),
        ] {
            s.files.insert(
                (repo.into(), "main".into(), path.into()),
                (content.into(), "base0".into()),
            );
            s.refs.insert((repo.into(), "main".into()), "main0".into());
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", r.port)))
        .unwrap();
    let gh = g.clone();
    rt.spawn(async move { axum::serve(listener, app(gh)).await });
    GitHub { g, _rt: rt }
}

/// Interrupted, then GitHub comes back and a dry run shows every step.
fn after_dry_run(test: &str, name: &str) -> (Release, GitHub) {
    let (r, _) = interrupted(test, name);
    let gh = github_back(&r);
    let out = r.kiln(&["release", "5.5.1", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (r, gh)
}

/// After the dry run, the rerun continues: its summary.
fn rerun(test: &str, name: &str) -> (Release, GitHub, Value) {
    let (r, gh) = after_dry_run(test, name);
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

/// The pin the rerun wrote into ocaml-ci's pins.json on the release branch.
fn busybox_pin(s: &Gh) -> String {
    let v: Value =
        serde_json::from_str(&file(s, "ocurrent/ocaml-ci", BRANCH, "pins.json")).unwrap();
    v["opam:busybox-release-ocaml-5.5"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn release_interrupted_before_the_ci_refresh_exits_2_naming_the_consumer() {
    let _serial = serial();
    let (_r, out) = interrupted(
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
    let (r, _) = interrupted(
        "release_interrupted_before_the_ci_refresh_keeps_every_builders_images",
        "built",
    );
    assert_eq!(
        r.p.entry(&r.key("opam:busybox-release-ocaml-5.5"))["ocaml"],
        "5.5.1"
    );
    assert_eq!(
        r.p.entry(&r.key("openbsd-base:openbsd-7.9-ocaml-5.5"))["ocaml"],
        "5.5.1"
    );
    if r.zfs_ok {
        assert_eq!(
            r.p.entry(&r.key("macos-base:macos-homebrew-ocaml-5.5"))["ocaml"],
            "5.5.1"
        );
    }
}

/// Dry run: every step shown, no request that writes.
#[test]
fn release_dry_run_sends_github_no_request_that_writes() {
    let _serial = serial();
    let (_r, gh) = after_dry_run("release_dry_run_sends_github_no_request_that_writes", "dry");
    let s = gh.g.lock().unwrap();
    assert!(s.log.iter().all(|l| l.starts_with("GET")), "{:?}", s.log);
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
    assert_eq!(
        summary["refreshed"]["ocurrent/ocaml-ci"]["action"], "pull-request-opened",
        "{summary}"
    );
    assert_eq!(
        summary["refreshed"]["mirage/mirage-ci"]["action"], "issue-opened",
        "{summary}"
    );
    let s = gh.g.lock().unwrap();
    assert_eq!(s.pulls.len(), 2);
    assert_eq!(s.issues.len(), 1);
    let pin = busybox_pin(&s);
    let pr = s
        .pulls
        .iter()
        .find(|p| p["repo"] == "ocurrent/ocaml-ci")
        .unwrap();
    assert_eq!(pr["head"], BRANCH);
    assert_eq!(pr["base"], "main");
    assert!(
        pr["body"].as_str().unwrap().contains(&pin),
        "{}",
        pr["body"]
    );
}

#[test]
fn release_rerun_writes_the_pins_on_a_branch_and_leaves_the_base_untouched() {
    let _serial = serial();
    let (r, gh, _) = rerun(
        "release_rerun_writes_the_pins_on_a_branch_and_leaves_the_base_untouched",
        "pins",
    );
    let s = gh.g.lock().unwrap();
    let v: Value =
        serde_json::from_str(&file(&s, "ocurrent/ocaml-ci", BRANCH, "pins.json")).unwrap();
    assert_eq!(v["other"], "x");
    let pin = busybox_pin(&s);
    assert!(
        pin.starts_with(&format!(
            "127.0.0.1:5000/{}/opam:busybox-release-ocaml-5.5@sha256:",
            r.p.namespace
        )),
        "{pin}"
    );
    assert_eq!(
        file(&s, "ocurrent/opam-repo-ci", BRANCH, "doc/versions.txt"),
        "4.14.3\n5.5.0\n5.5.1\n"
    );
    // The base branch itself is untouched.
    assert_eq!(
        file(&s, "ocurrent/ocaml-ci", "main", "pins.json"),
        "{\n  \"other\": \"x\"\n}\n"
    );
}

/// Once more: nothing new anywhere.
#[test]
fn release_run_once_more_opens_nothing_new() {
    let _serial = serial();
    let (r, gh, _) = rerun("release_run_once_more_opens_nothing_new", "again");
    let out = r.kiln(&["release", "5.5.1", "--json"]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["refreshed"]["ocurrent/ocaml-ci"]["action"], "pull-request-exists",
        "{summary}"
    );
    assert_eq!(
        summary["refreshed"]["mirage/mirage-ci"]["action"], "issue-exists",
        "{summary}"
    );
    let s = gh.g.lock().unwrap();
    assert_eq!((s.pulls.len(), s.issues.len()), (2, 1));
}
