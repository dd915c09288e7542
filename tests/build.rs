//! `kiln build` end to end on the real engine and registry: two arches
//! (arm64 by emulation) on the busybox fixture parents, no churn on rebuild, smoke failures publishing nothing,
//! input changes recorded, and the digest API answering from the result.

use std::process::Command;
use std::sync::Arc;

use kiln::catalogue::Arch;
use kiln::publish::lockfile::Lockfile;

mod common;
use common::{Bounded, Profile, root};

fn profile(name: &str) -> Profile {
    Profile::demo(name).create()
}

/// `kiln build --json <args>`: its summary.
fn build(p: &Profile, args: &[&str]) -> serde_json::Value {
    p.build(args).1
}

/// The digest API's store over the profile's lockfile.
fn store(p: &Profile) -> kiln::api::snapshot::Store {
    let config = kiln::config::Config::load(&kiln::config::Sources {
        file: Some(p.config.clone()),
        env: vec![],
        sets: vec![],
    })
    .unwrap();
    let c2 = config.clone();
    kiln::api::snapshot::Store::open(
        config.lockfile_path(),
        "127.0.0.1:5000".into(),
        Arc::new(move || kiln::status::requirements(&c2).map_err(|e| e.to_string())),
    )
    .unwrap()
}

fn fixtures(p: &Profile, debian: bool) {
    let mut args = vec!["fixtures"];
    if debian {
        args.push("--debian");
    }
    let out = p.kiln(&args);
    assert!(
        out.status.success(),
        "kiln fixtures: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tag<'a>(summary: &'a serde_json::Value, suffix: &str) -> &'a serde_json::Value {
    summary["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"].as_str().unwrap().ends_with(suffix))
        .unwrap()
}

fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{reference}"),
        ])
        .output_within(common::LIMIT)
        .unwrap();
    common::ok_json(out)
}

/// Smoke containers and local build images still present. Other tests of
/// this file may be mid-build, so wait (up to two minutes) for the count
/// to reach zero: a leak never does.
fn leftovers() -> (usize, usize) {
    let count = || {
        let ps = Command::new("docker")
            .args(["ps", "-aq", "--filter", "name=kiln-smoke"])
            .output_within(common::LIMIT)
            .unwrap();
        let imgs = Command::new("docker")
            .args(["images", "-q", "kiln-build/*"])
            .output_within(common::LIMIT)
            .unwrap();
        (
            String::from_utf8_lossy(&ps.stdout).lines().count(),
            String::from_utf8_lossy(&imgs.stdout).lines().count(),
        )
    };
    for _ in 0..240 {
        if count() == (0, 0) {
            return (0, 0);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    count()
}

#[test]
fn two_arch_build_publishes_then_changes_nothing() {
    let p = profile("twoarch");
    fixtures(&p, false);
    let s = build(&p, &["--os", "busybox"]);
    assert_eq!(s["built"], 2, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    let t = tag(&s, "busybox-ocaml-5.5");
    assert_eq!(t["arches"].as_object().unwrap().len(), 2);
    let lock = Lockfile::load(&p.lockfile_path()).unwrap();
    let e = &lock.entries[&format!("{}/opam:busybox-ocaml-5.5", p.namespace)];
    assert_eq!(e.arches.len(), 2);
    assert!(e.verified_at.is_some());
    // The reference client sees an index with exactly both platforms.
    let raw = skopeo_raw(&format!("127.0.0.1:5000/{}@{}", e.repository, e.digest));
    let mut plats: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
        .collect();
    plats.sort();
    assert_eq!(plats, ["amd64", "arm64"]);
    assert_eq!(raw["annotations"]["org.ocaml.kiln.build-key"], e.build_key);
    // Moving tag, alias and immutable tag all name the index.
    for t in [
        e.tag.as_str(),
        "bb-ocaml-5.5",
        "latest",
        e.immutable_tag.as_str(),
    ] {
        let r = skopeo_raw(&format!("127.0.0.1:5000/{}:{t}", e.repository));
        assert_eq!(
            kiln::registry::sha256_digest(&serde_json::to_vec(&r).unwrap()).len(),
            71,
            "{t}"
        );
    }
    // `docker pull --platform linux/arm64` of the index gets the arm64 child.
    let reference = format!("127.0.0.1:5000/{}@{}", e.repository, e.digest);
    let pull = Command::new("docker")
        .args(["pull", "-q", "--platform", "linux/arm64", &reference])
        .output_within(common::LIMIT)
        .unwrap();
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    let arch = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Architecture}}", &reference])
        .output_within(common::LIMIT)
        .unwrap();
    let _ = Command::new("docker")
        .args(["rmi", "-f", &reference])
        .output_within(common::LIMIT);
    assert_eq!(String::from_utf8_lossy(&arch.stdout).trim(), "arm64");
    let before = std::fs::read(p.lockfile_path()).unwrap();

    // Second round: nothing to build, no digest changes, lockfile untouched.
    let s2 = build(&p, &["--os", "busybox"]);
    assert_eq!(s2["built"], 0, "{s2}");
    assert_eq!(s2["unchanged"], 2, "{s2}");
    assert_eq!(std::fs::read(p.lockfile_path()).unwrap(), before);

    // The digest API on this lockfile: pins, and refusals with reasons.
    let store = store(&p);
    let snap = store.current();
    let pin =
        kiln::api::resolve::resolve(&snap, "ocaml/opam:busybox-ocaml-5.5", Some("arm64")).unwrap();
    assert_eq!(pin.digest, e.digest);
    assert_eq!(
        pin.arch_digest.as_deref(),
        Some(e.arches[&Arch::Arm64].digest.as_str())
    );
    // Known to the catalogue, not built here: refused with what is missing.
    let refused = kiln::api::resolve::resolve(&snap, "macos-base:macos-homebrew-ocaml-5.5", None)
        .unwrap_err();
    assert_eq!(refused.http_status(), 409);
    let win =
        kiln::api::resolve::resolve(&snap, "opam:windows-server-mingw-ltsc2022-ocaml-5.5", None)
            .unwrap_err();
    assert!(serde_json::to_string(&win).unwrap().contains("no-builder"));
    assert_eq!(
        leftovers(),
        (0, 0),
        "containers or build images left behind"
    );

    // Every route over HTTP on this real-build lockfile.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let state = Arc::new(kiln::api::AppState {
            store,
            token: "t0k3n".into(),
            log_dir: Some(common::state_dir().join("log")),
            rebuild: None,
            queue_db: None,
            metrics: kiln::api::Metrics::default(),
            distribution: None,
            workers: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(kiln::api::serve_on(state, listener, std::future::pending()));
        let c = reqwest::Client::new();
        let get = |path: &str| c.get(format!("{base}{path}")).send();
        let r = get("/v1/resolve?image=ocaml/opam:busybox-ocaml-5.5")
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["digest"], e.digest.as_str());
        let r = get("/v1/resolve?image=macos-base:macos-homebrew-ocaml-5.5")
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let v: serde_json::Value = r.json().await.unwrap();
        // This profile configures no ZFS host: nothing can build it.
        assert_eq!(v["missing"][0]["reason"], "no-builder");
        assert_eq!(
            get("/v1/resolve?image=ocaml/opam:nope-ocaml-5.5")
                .await
                .unwrap()
                .status(),
            404
        );
        let v: serde_json::Value = get("/v1/versions").await.unwrap().json().await.unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        let v: serde_json::Value = get("/v1/versions/5.5.0")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            v["cells"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["os"] == "busybox" && c["available"] == true)
        );
        let v: serde_json::Value = get("/v1/platforms").await.unwrap().json().await.unwrap();
        assert!(v["linux"].is_array() && v["windows"].is_array());
        let r = get("/v1/lockfile").await.unwrap();
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        let body = r.bytes().await.unwrap();
        assert_eq!(
            Lockfile::parse(
                std::path::Path::new("api"),
                std::str::from_utf8(&body).unwrap()
            )
            .unwrap(),
            Lockfile::load(&p.lockfile_path()).unwrap()
        );
        let r = c
            .get(format!("{base}/v1/lockfile"))
            .header("If-None-Match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304);
        let html = get("/").await.unwrap().text().await.unwrap();
        assert!(html.contains("busybox") && html.contains("no builder"));
        for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
            assert_eq!(get(path).await.unwrap().status(), 200, "{path}");
        }
        // Logs are the token's: 401 without it, served with it.
        let log = format!("{base}/v1/logs/linux_busybox_5.5.0_arm64.log");
        assert_eq!(
            get("/v1/logs/linux_busybox_5.5.0_arm64.log")
                .await
                .unwrap()
                .status(),
            401
        );
        let r = c.get(&log).bearer_auth("t0k3n").send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .get(format!("{base}/v1/logs/..%2Fkiln.db"))
            .bearer_auth("t0k3n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = c
            .post(format!("{base}/v1/reload"))
            .bearer_auth("t0k3n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    });
}

#[test]
fn smoke_failure_publishes_nothing_and_the_api_says_why() {
    let p = profile("smoke");
    fixtures(&p, false);
    let recipe = p.dir.path().join("platforms/linux/busybox.Dockerfile");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("version {{ocaml_version}}", "version 4.00.0"),
    )
    .unwrap();
    let out = p.kiln(&["build", "--os", "busybox", "--version", "5.5.0", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["failed"], 1);
    let err = serde_json::to_string(&tag(&s, "busybox-ocaml-5.5")["arches"]).unwrap();
    assert!(
        err.contains("smoke test failed") && err.contains("4.00.0"),
        "{err}"
    );
    // The demo's verdict on this summary: a failure, named with its kind.
    let (code, said) = verdict(&out.stdout);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "{}/opam:busybox-ocaml-5.5 amd64 (recipe)",
            p.namespace
        )) && said.contains("smoke test failed"),
        "{said}"
    );
    // Nothing published: no lockfile entry, no moving tag in the registry.
    assert!(
        Lockfile::load(&p.lockfile_path())
            .unwrap()
            .entries
            .is_empty()
    );
    let head = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!(
                "docker://127.0.0.1:5000/{}/opam:busybox-ocaml-5.5",
                p.namespace
            ),
        ])
        .output_within(common::LIMIT)
        .unwrap();
    assert!(!head.status.success());
    // The API refuses with "failed" and the smoke message.
    let store = store(&p);
    let r = kiln::api::resolve::resolve(&store.current(), "ocaml/opam:busybox-ocaml-5.5", None)
        .unwrap_err();
    let body = serde_json::to_string(&r).unwrap();
    assert!(
        body.contains("\"failed\"") && body.contains("4.00.0") && body.contains("log:"),
        "{body}"
    );
    assert_eq!(
        leftovers(),
        (0, 0),
        "containers or build images left behind"
    );
}

/// `scripts/demo/build-verdict.py` (how README's first command judges its
/// build) on a `kiln build --json` summary: its exit code and what it said.
fn verdict(summary: &[u8]) -> (Option<i32>, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), summary).unwrap();
    let out = Command::new("python3")
        .arg(root().join("scripts/demo/build-verdict.py"))
        .arg(file.path())
        .output_within(std::time::Duration::from_secs(60))
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Targets with no builder here (Windows: no engine) are not a failure of
/// the demo's build: they are shown as such and the verdict passes.
#[test]
fn targets_without_a_builder_do_not_fail_the_demo_verdict() {
    let p = profile("nobuilder");
    let out = p.kiln(&["build", "--platform", "windows", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["no_builder"].as_u64() > Some(0), "{s}");
    let (code, said) = verdict(&out.stdout);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("no-builder") && !said.contains("FAILED"),
        "{said}"
    );
}

#[test]
fn an_input_change_rebuilds_and_records_why() {
    let p = profile("change");
    fixtures(&p, false);
    let s = build(&p, &["--os", "busybox", "--version", "4.13"]);
    assert_eq!(s["built"], 1, "{s}");
    let key = format!("{}/opam:busybox-ocaml-4.13", p.namespace);
    let first = Lockfile::load(&p.lockfile_path()).unwrap().entries[&key].clone();
    let plan_states = |p: &Profile| {
        let out = p.kiln(&[
            "plan",
            "--os",
            "busybox",
            "--version",
            "4.13",
            "--targets",
            "--keys",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["states"].clone()
    };
    assert_eq!(
        plan_states(&p)["linux/busybox/4.13.1/amd64"],
        "published, current"
    );
    let recipe = p.dir.path().join("platforms/linux/busybox.Dockerfile");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("LABEL ", "LABEL org.ocaml.kiln.test=\"changed\" "),
    )
    .unwrap();
    assert_eq!(
        plan_states(&p)["linux/busybox/4.13.1/arm64"],
        "stale: recipe:busybox.Dockerfile changed"
    );
    let s = build(&p, &["--os", "busybox", "--version", "4.13"]);
    assert_eq!(s["built"], 1, "{s}");
    let changed = serde_json::to_string(&tag(&s, "busybox-ocaml-4.13")["changed_inputs"]).unwrap();
    assert!(
        changed.contains("amd64.recipe:busybox.Dockerfile")
            && changed.contains("arm64.recipe:busybox.Dockerfile"),
        "{changed}"
    );
    let second = Lockfile::load(&p.lockfile_path()).unwrap().entries[&key].clone();
    assert_ne!(second.digest, first.digest);
    assert_eq!(second.history[0].digest, first.digest);
    assert!(
        second.history[0]
            .replaced_because
            .contains("recipe:busybox.Dockerfile")
    );
    assert_ne!(second.immutable_tag, first.immutable_tag);
}

/// Build a variant of the busybox parent (both arches) and tag it `tag` in
/// `repo`; returns the index digest.
async fn push_parent_variant(repo: &str, tag: &str, marker: &str) -> String {
    use kiln::builders::docker::{self, BuildSpec, SmokeCheck};
    use kiln::registry::index::{self, Platform};
    let cfg = kiln::config::Config::defaults(root()).unwrap();
    let engine = docker::connect(&cfg.docker.hosts[0]).await.unwrap();
    let reg = kiln::registry::Registry::new(&cfg.registry).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for arch in [Arch::Amd64, Arch::Arm64] {
        let plat = Platform::for_arch("linux", arch);
        let (name, base) = kiln::plan::prepare::resolve_parent(
            &cfg,
            "127.0.0.1:5000/kiln-fixtures/busybox:latest",
            &plat,
        )
        .await
        .unwrap();
        let spec = BuildSpec {
            target: format!("test/parent/{arch}"),
            dockerfile: format!("FROM {name}@{base}\nRUN echo {marker} > /parent-marker\n"),
            context: Default::default(),
            os: "linux".into(),
            arch,
            repository: repo.to_string(),
            engine_tag: format!("{tag}-{arch}"),
            parent: Some(format!("{name}@{base}")),
            source_date_epoch: 0,
            work_dir: dir.path().join("work"),
            smoke: vec![SmokeCheck {
                argv: vec!["cat".into(), "/parent-marker".into()],
                expect: marker.into(),
            }],
            log: dir.path().join(format!("{arch}.log")),
            labels: Default::default(),
            host: "local".into(),
            proxy: None,
            isolation: None,
            no_cache: false,
            auth: Default::default(),
        };
        digests.push(docker::build(&engine, &reg, &spec).await.unwrap().digest);
    }
    let required: Vec<Platform> = [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .map(|a| Platform::for_arch("linux", a))
        .collect();
    let idx = index::assemble(&reg, repo, &digests, &required, &Default::default())
        .await
        .unwrap();
    reg.put_manifest(repo, tag, &idx.bytes, kiln::registry::OCI_INDEX)
        .await
        .unwrap();
    idx.digest
}

#[test]
fn a_parent_change_rebuilds_exactly_its_dependents() {
    let p = profile("parent");
    fixtures(&p, false);
    let parent_repo = format!("kiln-test/parent-{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(push_parent_variant(&parent_repo, "latest", "one"));
    // A second OS release on the shared fixture parent, which must not move.
    let platform_yaml = p.dir.path().join("platforms/linux/platform.yaml");
    let text = std::fs::read_to_string(&platform_yaml).unwrap();
    let text = text.replacen(
        "parent: 127.0.0.1:5000/kiln-fixtures/busybox:latest",
        &format!("parent: 127.0.0.1:5000/{parent_repo}:latest"),
        1,
    );
    let text = format!(
        "{}\n  - id: busybox-stable\n    distro: busybox\n    tier: 1\n    arches: [amd64]\n    recipes: [busybox.Dockerfile]\n    parent: 127.0.0.1:5000/kiln-fixtures/busybox:latest\n",
        text.trim_end()
    );
    std::fs::write(&platform_yaml, text).unwrap();
    let s = build(&p, &["--os", "busybox", "--version", "5.5"]);
    assert_eq!(s["built"], 1, "{s}");
    // `latest` and the other series-less aliases wait for the whole tier-1
    // set of 5.5.0: busybox-stable is not built yet.
    let k = format!("{}/opam:busybox-ocaml-5.5", p.namespace);
    let lock = Lockfile::load(&p.lockfile_path()).unwrap();
    assert!(
        !lock.entries[&k].aliases.contains(&"latest".to_string()),
        "{:?}",
        lock.entries[&k].aliases
    );
    assert!(
        lock.entries[&k]
            .aliases
            .contains(&"bb-ocaml-5.5".to_string())
    );
    let latest = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://127.0.0.1:5000/{}/opam:latest", p.namespace),
        ])
        .output_within(common::LIMIT)
        .unwrap();
    assert!(
        !latest.status.success(),
        "latest moved before the tier-1 set was complete"
    );
    let s = build(&p, &["--os", "busybox-stable", "--version", "5.5"]);
    assert_eq!(s["built"], 1, "{s}");
    let lock = Lockfile::load(&p.lockfile_path()).unwrap();
    for a in ["latest", "busybox", "bb"] {
        assert!(
            lock.entries[&k].aliases.contains(&a.to_string()),
            "{a}: {:?}",
            lock.entries[&k].aliases
        );
    }
    let latest = skopeo_raw(&format!("127.0.0.1:5000/{}/opam:latest", p.namespace));
    assert!(latest["manifests"].is_array());
    let before = Lockfile::load(&p.lockfile_path()).unwrap();
    // The parent moves to new content: only its dependents rebuild.
    rt.block_on(push_parent_variant(&parent_repo, "latest", "two"));
    let s = build(&p, &["--version", "5.5", "--platform", "linux"]);
    let t = s["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"] == "busybox-ocaml-5.5")
        .unwrap();
    assert_eq!(t["outcome"]["outcome"], "built", "{s}");
    let changed = serde_json::to_string(&t["changed_inputs"]).unwrap();
    assert!(
        changed.contains("amd64.parent_digest") && changed.contains("arm64.parent_digest"),
        "{changed}"
    );
    let stable = s["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"] == "busybox-stable-ocaml-5.5")
        .unwrap();
    assert_eq!(stable["outcome"]["outcome"], "unchanged", "{s}");
    let after = Lockfile::load(&p.lockfile_path()).unwrap();
    let k_stable = format!("{}/opam:busybox-stable-ocaml-5.5", p.namespace);
    assert_eq!(after.entries[&k_stable], before.entries[&k_stable]);
    let k = format!("{}/opam:busybox-ocaml-5.5", p.namespace);
    assert_ne!(after.entries[&k].digest, before.entries[&k].digest);
    assert!(
        after.entries[&k].history[0]
            .replaced_because
            .contains("parent_digest")
    );
}

/// A `kiln build` killed (SIGKILL) during a smoke test cannot clean up: its
/// container and local image stay. The next build on this host sweeps
/// them, and only them (they name their owner, a process that is gone).
#[test]
fn what_a_killed_build_leaves_is_swept_by_the_next() {
    let p = profile("killed");
    fixtures(&p, false);
    let recipe = p.dir.path().join("platforms/linux/busybox.Dockerfile");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace(
            "echo \"The OCaml toplevel",
            "sleep 300; echo \"The OCaml toplevel",
        ),
    )
    .unwrap();
    let mut child = common::Spawned::start(
        "kiln build",
        p.command()
            .args(["build", "--json", "--os", "busybox", "--arch", "amd64"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let owner = format!("label=org.ocaml.kiln.owner={host}/{}", child.id());
    let pid_tag = format!("{}-", child.id());
    let left = || {
        let ps = Command::new("docker")
            .args(["ps", "-aq", "--filter", &owner])
            .output_within(common::LIMIT)
            .unwrap();
        let imgs = Command::new("docker")
            .args(["images", "--format", "{{.Tag}}", "kiln-build/amd64"])
            .output_within(common::LIMIT)
            .unwrap();
        (
            String::from_utf8_lossy(&ps.stdout).lines().count(),
            String::from_utf8_lossy(&imgs.stdout)
                .lines()
                .filter(|t| t.starts_with(&pid_tag))
                .count(),
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while left().0 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the smoke test never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    child.sigkill();
    let (containers, images) = left();
    assert!(
        containers >= 1 && images >= 1,
        "the killed build left ({containers}, {images})"
    );
    std::fs::write(&recipe, &text).unwrap();
    let s = build(&p, &["--os", "busybox", "--arch", "amd64"]);
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(left(), (0, 0), "swept by the next build");
    assert!(
        Lockfile::load(&p.lockfile_path())
            .unwrap()
            .entries
            .values()
            .all(|e| e.history.is_empty()),
        "published once each"
    );
}

/// What a live build holds (its smoke container, its local build image)
/// is never swept by another build on the same engine, though both carry
/// an owner mark; the held build then completes, publishes, and leaves
/// nothing.
#[test]
fn the_sweep_never_touches_what_a_live_build_holds() {
    common::fixtures();
    let a = Profile::busybox("sweep-live", "busybox-sweeplive").create();
    // A's smoke test waits for a file the test creates in its container.
    a.edit("platforms/linux/busybox.Dockerfile", |t| {
        t.replace(
            "echo \"The OCaml toplevel",
            "while [ ! -e /kiln-go ]; do sleep 0.1; done; echo \"The OCaml toplevel",
        )
    });
    let build = common::Spawned::piped("kiln build", a.command().args(["build", "--json"]));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let owner = format!("label=org.ocaml.kiln.owner={host}/{}", build.id());
    let pid_tag = format!("{}-", build.id());
    let docker = |args: &[&str]| -> String {
        let out = Command::new("docker")
            .args(args)
            .output_within(std::time::Duration::from_secs(120))
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let held = || -> (Vec<String>, Vec<String>) {
        let containers = docker(&["ps", "-aq", "--filter", &owner]);
        let images = docker(&["images", "--format", "{{.Tag}}", "kiln-build/amd64"]);
        (
            containers.lines().map(str::to_string).collect(),
            images
                .lines()
                .filter(|t| t.starts_with(&pid_tag))
                .map(str::to_string)
                .collect(),
        )
    };
    common::wait_until("A's smoke test to start", 180, || {
        let (c, i) = held();
        !c.is_empty() && !i.is_empty()
    });
    let before = held();
    // Another build on the same engine sweeps what dead builds left.
    let b = Profile::busybox("sweep-other", "busybox-sweepother").create();
    let (code, s) = b.build(&[]);
    assert_eq!((code, &s["built"]), (Some(0), &serde_json::json!(1)), "{s}");
    assert_eq!(held(), before, "the sweep touched what a live build holds");
    // A goes on: its smoke test ends, it publishes, and cleans up.
    docker(&["exec", &before.0[0], "touch", "/kiln-go"]);
    let out = build.output_within(common::LIMIT);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        (out.status.code(), &s["built"]),
        (Some(0), &serde_json::json!(1)),
        "{s}"
    );
    a.entry(&format!("{}/opam:busybox-sweeplive-ocaml-5.5", a.namespace));
    assert_eq!(held(), (vec![], vec![]), "A left its own things behind");
}

/// The build log of `p`'s build of `os` `version` (a prefix: `4.13`).
fn log_of(p: &Profile, os: &str, version: &str) -> String {
    let dir = p.path().join("state/log");
    let prefix = format!("linux_{os}_{version}");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with(&prefix) && n.ends_with("_amd64.log")
        })
        .unwrap_or_else(|| panic!("no {prefix}*_amd64.log in {}", dir.display()));
    std::fs::read_to_string(file.path()).unwrap()
}

/// Two builds share their first step (the second one's own step is
/// another: the recipe changed after it): the second build takes the
/// shared step from the engine's layer cache (its build output says so),
/// because a published build's steps stay on the engine; its own step is
/// built afresh.
#[test]
fn a_second_build_reuses_the_steps_it_shares_with_the_first() {
    common::fixtures();
    let p = Profile::busybox("layer-cache", "busybox-layercache")
        .own_state()
        .create();
    // A step no earlier run has cached.
    let mark = format!(
        "kiln-shared-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        t.replacen(
            "RUN mkdir -p /usr/local/bin",
            &format!("RUN echo {mark} > /kiln-shared-step\nRUN mkdir -p /usr/local/bin"),
            1,
        )
    });
    let cached_after = |log: &str, step: &str| -> bool {
        let at = log
            .rfind(step)
            .unwrap_or_else(|| panic!("no step {step:?} in {log}"));
        let next = &log[at..];
        let end = next[1..].find("Step ").map_or(next.len(), |e| e + 1);
        next[..end].contains("Using cache")
    };
    let (code, s) = p.build(&["--arch", "amd64"]);
    assert_eq!((code, &s["built"]), (Some(0), &serde_json::json!(1)), "{s}");
    let first = log_of(&p, "busybox-layercache", "5.5");
    assert!(
        !cached_after(&first, &mark),
        "the first build had no cache to take: {first}"
    );
    // The compiler's own step changes: the tag is built again.
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        t.replacen(
            "RUN mkdir -p /usr/local/bin",
            "RUN mkdir -p /usr/local/bin /opt/kiln-second",
            1,
        )
    });
    let (code, s) = p.build(&["--arch", "amd64"]);
    assert_eq!((code, &s["built"]), (Some(0), &serde_json::json!(1)), "{s}");
    let second = log_of(&p, "busybox-layercache", "5.5");
    assert!(
        cached_after(&second, &mark),
        "the shared step was built again: {second}"
    );
    assert!(
        !cached_after(&second, "RUN mkdir -p /usr/local/bin /opt/kiln-second"),
        "the changed step came from the cache: {second}"
    );
}

/// The manifest of `reference` for amd64 (its index's child, if an index).
fn amd64_manifest(reference: &str) -> serde_json::Value {
    let raw = skopeo_raw(reference);
    let Some(children) = raw["manifests"].as_array() else {
        return raw;
    };
    let child = children
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap_or_else(|| panic!("no amd64 in {raw}"));
    let name = reference.split('@').next().unwrap();
    let name = name
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or(name, |(n, _)| n);
    skopeo_raw(&format!("{name}@{}", child["digest"].as_str().unwrap()))
}

/// The image keeps its parent's layers as the parent's registry holds
/// them: the same blobs, mounted from the parent's repository (not
/// compressed again), its own layers after them.
#[test]
fn the_parents_layers_are_mounted_as_its_registry_holds_them() {
    common::fixtures();
    let p = Profile::busybox("mounted", "busybox-mounted")
        .own_state()
        .create();
    let s = build(&p, &["--arch", "amd64"]);
    assert_eq!(s["failed"], 0, "{s}");
    let lock = Lockfile::load(&p.lockfile_path()).unwrap();
    let e = &lock.entries[&format!("{}/opam:busybox-mounted-ocaml-5.5", p.namespace)];
    let ours = amd64_manifest(&format!("127.0.0.1:5000/{}@{}", e.repository, e.digest));
    let parent = amd64_manifest("127.0.0.1:5000/kiln-fixtures/busybox:latest");
    let digests = |m: &serde_json::Value| -> Vec<String> {
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    let (ours, parent) = (digests(&ours), digests(&parent));
    assert!(!parent.is_empty());
    assert_eq!(
        ours[..parent.len()],
        parent[..],
        "the parent's blobs, as they are"
    );
    assert!(ours.len() > parent.len(), "the image's own layers follow");
    let log = log_of(&p, "busybox-mounted", "5.5");
    assert!(
        log.contains("(parent, mounted from kiln-fixtures/busybox)"),
        "{log}"
    );
}
