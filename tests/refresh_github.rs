//! `kiln release` end to end: bump, build on the real engine and registry,
//! verify, gate, then refresh CI through GitHub's REST API. github.com is
//! unreachable here, so a local server speaking the endpoints Kiln calls
//! (contents, git refs, pulls, issues) stands in for it and records every
//! request; the code path is the production one (octocrab).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

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

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn release_cascade_interrupted_then_rerun_opens_one_pr_per_consumer() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("fixtures")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A one-platform profile: busybox amd64.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("versions")).unwrap();
    std::fs::create_dir_all(p.join("platforms/linux")).unwrap();
    std::fs::copy(
        root().join("scripts/demo/versions/5.5.yaml"),
        p.join("versions/5.5.yaml"),
    )
    .unwrap();
    std::fs::write(
        p.join("versions/sets.yaml"),
        "recent: [\"5.5\"]\nsignificant: []\n",
    )
    .unwrap();
    std::fs::write(
        p.join("platforms/linux/platform.yaml"),
        "platform: linux\nbuilder: docker\nrepository: opam\nreleases:\n  - id: busybox-release\n    distro: busybox\n    tier: 1\n    arches: [amd64]\n    recipes: [busybox.Dockerfile]\n    parent: 127.0.0.1:5000/kiln-fixtures/busybox:latest\n",
    )
    .unwrap();
    std::fs::write(
        p.join("platforms/linux/policy.yaml"),
        "versions: [latest]\nrequired_tiers: [1]\n",
    )
    .unwrap();
    std::fs::copy(
        root().join("scripts/demo/platforms/linux/busybox.Dockerfile"),
        p.join("platforms/linux/busybox.Dockerfile"),
    )
    .unwrap();
    // The macOS (ZFS) and OpenBSD (QEMU) paths of the demo, so the cascade
    // runs across all three builders.
    for os in ["macos", "openbsd"] {
        assert!(
            Command::new("cp")
                .arg("-r")
                .arg(root().join("scripts/demo/platforms").join(os))
                .arg(p.join("platforms"))
                .status()
                .unwrap()
                .success()
        );
    }
    let zfs_ok = !root().join(".kiln/run/zfs.unavailable").exists();
    if !zfs_ok {
        eprintln!("SKIPPED the ZFS path: zfs unavailable");
        std::fs::remove_dir_all(p.join("platforms/macos")).unwrap();
    }
    let zprefix = format!("test-release-{}", std::process::id());
    struct ZfsCleanup(String);
    impl Drop for ZfsCleanup {
        fn drop(&mut self) {
            for _ in 0..40 {
                let out = Command::new("zfs")
                    .args(["list", "-H", "-r", "-o", "name", &self.0])
                    .stderr(std::process::Stdio::null())
                    .output()
                    .unwrap();
                let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect();
                if names.is_empty() {
                    return;
                }
                names.sort_by_key(|n| std::cmp::Reverse(n.matches('/').count()));
                for n in names {
                    let _ = Command::new("zfs")
                        .args(["destroy", "-r", "-f", &n])
                        .stderr(std::process::Stdio::null())
                        .status();
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        }
    }
    let _zfs_cleanup = ZfsCleanup(format!("kiln/{zprefix}"));
    let namespace = format!("kiln-test-release-{}", std::process::id());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = p.join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\nmanifests_dir = \"manifests\"\n[database]\npath = \"kiln.db\"\n[registry]\nnamespace = \"{namespace}\"\n[plan]\nopam_repository_commit = \"test-pinned\"\n[qemu]\naccel = \"tcg\"\nsystem = \"qemu-system-x86_64\"\nimg = \"qemu-img\"\nboot_timeout_secs = 300\n[zfs]\n[[zfs.hosts]]\nname = \"local\"\npool = \"kiln\"\nprefix = \"{zprefix}\"\nplatforms = [\"macos\"]\narch = \"amd64\"\n[refresh]\napi_url = \"http://127.0.0.1:{port}\"\ntoken_env = \"KILN_TEST_NO_TOKEN\"\n\
             [[refresh.consumers]]\nrepo = \"ocurrent/ocaml-ci\"\nbase = \"main\"\npath = \"pins.json\"\nformat = \"json-pins\"\n\
             [[refresh.consumers]]\nrepo = \"ocurrent/opam-repo-ci\"\nbase = \"main\"\npath = \"doc/versions.txt\"\nformat = \"version-list\"\n\
             [[refresh.consumers]]\nrepo = \"mirage/mirage-ci\"\nbase = \"main\"\npath = \"pins.yml\"\nformat = \"yaml-pins\"\nmode = \"issue\"\n",
            state = root().join(".kiln").display()
        ),
    )
    .unwrap();
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };

    // Interrupted between build and CI refresh: GitHub is not reachable.
    let out = kiln(&["release", "5.5.1", "--json"]);
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
    let lock = kiln::publish::lockfile::Lockfile::load(&p.join("manifests/lockfile.json")).unwrap();
    let key = format!("{namespace}/opam:busybox-release-ocaml-5.5");
    assert_eq!(lock.entries[&key].ocaml.to_string(), "5.5.1");
    // The same cascade built the OpenBSD disk (QEMU) and the macOS tree (ZFS).
    assert_eq!(
        lock.entries[&format!("{namespace}/openbsd-base:openbsd-7.9-ocaml-5.5")]
            .ocaml
            .to_string(),
        "5.5.1"
    );
    if zfs_ok {
        assert_eq!(
            lock.entries[&format!("{namespace}/macos-base:macos-homebrew-ocaml-5.5")]
                .ocaml
                .to_string(),
            "5.5.1"
        );
    }

    // GitHub comes back.
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
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    let gh = g.clone();
    rt.spawn(async move { axum::serve(listener, app(gh)).await });

    // Dry run: every step shown, no request that writes.
    let out = kiln(&["release", "5.5.1", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(g.lock().unwrap().log.iter().all(|l| l.starts_with("GET")));

    // The rerun continues: nothing is built again, one PR per consumer.
    let out = kiln(&["release", "5.5.1", "--json"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["builds"][0]["built"], 0, "{r}");
    assert_eq!(
        r["builds"][0]["unchanged"],
        if zfs_ok { 3 } else { 2 },
        "{r}"
    );
    assert_eq!(
        r["refreshed"]["ocurrent/ocaml-ci"]["action"], "pull-request-opened",
        "{r}"
    );
    assert_eq!(
        r["refreshed"]["mirage/mirage-ci"]["action"], "issue-opened",
        "{r}"
    );
    {
        let s = g.lock().unwrap();
        assert_eq!(s.pulls.len(), 2);
        assert_eq!(s.issues.len(), 1);
        let branch = "kiln/release-5.5.1";
        let pins = &s.files[&(
            "ocurrent/ocaml-ci".to_string(),
            branch.to_string(),
            "pins.json".to_string(),
        )]
            .0;
        let v: Value = serde_json::from_str(pins).unwrap();
        assert_eq!(v["other"], "x");
        let pin = v["opam:busybox-release-ocaml-5.5"].as_str().unwrap();
        assert!(
            pin.starts_with(&format!(
                "127.0.0.1:5000/{namespace}/opam:busybox-release-ocaml-5.5@sha256:"
            )),
            "{pin}"
        );
        let versions = &s.files[&(
            "ocurrent/opam-repo-ci".to_string(),
            branch.to_string(),
            "doc/versions.txt".to_string(),
        )]
            .0;
        assert_eq!(versions, "4.14.3\n5.5.0\n5.5.1\n");
        let pr = s
            .pulls
            .iter()
            .find(|p| p["repo"] == "ocurrent/ocaml-ci")
            .unwrap();
        assert_eq!(pr["head"], branch);
        assert_eq!(pr["base"], "main");
        assert!(pr["body"].as_str().unwrap().contains(pin), "{}", pr["body"]);
        // The base branch itself is untouched.
        assert_eq!(
            s.files[&(
                "ocurrent/ocaml-ci".to_string(),
                "main".to_string(),
                "pins.json".to_string()
            )]
                .0,
            "{\n  \"other\": \"x\"\n}\n"
        );
    }
    // Once more: nothing new anywhere.
    let out = kiln(&["release", "5.5.1", "--json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["refreshed"]["ocurrent/ocaml-ci"]["action"], "pull-request-exists",
        "{r}"
    );
    assert_eq!(
        r["refreshed"]["mirage/mirage-ci"]["action"], "issue-exists",
        "{r}"
    );
    let s = g.lock().unwrap();
    assert_eq!((s.pulls.len(), s.issues.len()), (2, 1));
}
