//! Reproducible digests on the real engines and registry: the busybox
//! fixture target built from two fresh state dirs into two namespaces, the
//! second on a private dockerd (no image, no build cache in common), gives
//! the same child and index digests; `kiln verify --rebuild` says
//! identical, names the layer and file when a recipe marked reproducible
//! is not (it writes the time into a file), and builds nothing when the
//! inputs changed since publication. Nothing published moves.

use std::process::Command;

use serde_json::Value;

mod common;
use common::engine::{PrivateEngine, make_bridge};
use common::{Bounded, LIMIT, PrivateRegistry, Profile, fixtures};

/// `kiln build --json <args>`, which must publish one tag.
fn build_one(p: &Profile, args: &[&str]) {
    let (code, s) = p.build(args);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["built"], 1, "{s}");
}

/// `kiln verify --rebuild <reference> --arch amd64 --json`: exit code and report.
fn rebuild(p: &Profile, reference: &str) -> (Option<i32>, Value) {
    let out = p.kiln(&[
        "verify",
        "--rebuild",
        reference,
        "--arch",
        "amd64",
        "--json",
    ]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kiln verify --rebuild: {e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn skopeo(args: &[&str], reference: &str) -> Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .args(args)
        .arg(format!("docker://127.0.0.1:5000/{reference}"))
        .output_within(LIMIT)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The demo's busybox release (reproducible, amd64 and arm64) at 4.13.1,
/// which has a catalogue date: every timestamp is clamped to it.
#[test]
fn the_same_key_built_on_two_engines_gives_the_same_digests() {
    fixtures();
    let args = ["--os", "busybox", "--version", "4.13"];
    let a = Profile::demo("repro-a").own_state().create();
    build_one(&a, &args);
    let dir = tempfile::tempdir().unwrap();
    let bridge = make_bridge("kilnrp", "172.31.252.1/24");
    let engine = PrivateEngine::start(dir.path(), &bridge.0);
    let b = Profile::demo("repro-b")
        .own_state()
        .toml(&format!(
            "[docker]\n[[docker.hosts]]\nname = \"private\"\nendpoint = \"unix://{}\"\nos = \"linux\"\narch = \"amd64\"\nemulate = [\"arm64\"]\nconcurrency = 2\n",
            engine.socket().display()
        ))
        .create();
    build_one(&b, &args);
    // It was built there: the private engine pulled the parent.
    let images = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", engine.socket().display()))
        .args(["images", "-q", "127.0.0.1:5000/kiln-fixtures/busybox"])
        .output_within(LIMIT)
        .unwrap();
    assert!(
        !images.stdout.is_empty(),
        "the private engine built nothing"
    );
    drop(engine);
    let ea = a.entry(&format!("{}/opam:busybox-ocaml-4.13", a.namespace));
    let eb = b.entry(&format!("{}/opam:busybox-ocaml-4.13", b.namespace));
    assert_ne!(ea["repository"], eb["repository"]);
    for field in ["build_key", "immutable_tag"] {
        assert_eq!(ea[field], eb[field], "{field}");
    }
    for arch in ["amd64", "arm64"] {
        assert_eq!(
            ea["arches"][arch]["digest"], eb["arches"][arch]["digest"],
            "{arch}"
        );
    }
    assert_eq!(ea["digest"], eb["digest"], "index digests");
    // The image says when its compiler was released, not when it was built.
    let amd64 = ea["arches"]["amd64"]["digest"].as_str().unwrap();
    let repo = eb["repository"].as_str().unwrap();
    let config = skopeo(&["--config"], &format!("{repo}@{amd64}"));
    assert_eq!(config["created"], "2021-10-04T00:00:00Z");
    assert!(config.get("container_config").is_none(), "{config}");
    let index = skopeo(
        &["--raw"],
        &format!("{repo}@{}", eb["digest"].as_str().unwrap()),
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.created"],
        "2021-10-04T00:00:00Z"
    );
}

/// A current Docker Engine (26.x, Debian trixie's) writes `docker save`
/// in the OCI image layout, and with the containerd image store keeps
/// images differently again: the same key built there, on each store, has
/// the digest the suite's Docker 20.10 gives it.
#[test]
fn docker_26_on_either_image_store_gives_the_digest_of_docker_20_10() {
    fixtures();
    let args = ["--os", "busybox", "--version", "4.13", "--arch", "amd64"];
    let a = Profile::demo("repro-20").own_state().create();
    build_one(&a, &args);
    let tag = |p: &Profile| p.entry(&format!("{}/opam:busybox-ocaml-4.13", p.namespace));
    let want = tag(&a)["arches"]["amd64"]["digest"].clone();
    for (name, containerd) in [("classic", false), ("containerd", true)] {
        let dir = tempfile::tempdir().unwrap();
        let bridge = make_bridge("kilnr6", "172.31.249.1/24");
        let engine = PrivateEngine::start_current(dir.path(), &bridge.0, containerd);
        assert!(engine.version().starts_with("26."), "{}", engine.version());
        let driver = if containerd { "overlayfs" } else { "overlay2" };
        assert_eq!(engine.driver(), driver, "{name} store");
        let b = Profile::demo(&format!("repro-26-{name}"))
            .own_state()
            .toml(&format!(
                "[docker]\n[[docker.hosts]]\nname = \"docker26\"\nendpoint = \"unix://{}\"\nos = \"linux\"\narch = \"amd64\"\nconcurrency = 1\n",
                engine.socket().display()
            ))
            .create();
        build_one(&b, &args);
        let log =
            std::fs::read_to_string(b.path().join("state/log/linux_busybox_4.13.1_amd64.log"))
                .unwrap();
        assert!(log.contains("on docker host docker26"), "{log}");
        assert_eq!(tag(&b)["arches"]["amd64"]["digest"], want, "{name} store");
        drop(engine);
    }
}

#[test]
fn verify_rebuild_says_identical_or_names_the_layer_and_file_that_differ() {
    fixtures();
    let p = Profile::busybox("repro-verify", "busybox-stamp")
        .reproducible()
        .create();
    let key = format!("{}/opam:busybox-stamp-ocaml-5.5", p.namespace);
    build_one(&p, &["--os", "busybox-stamp"]);
    let (code, r) = rebuild(&p, &key);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["verdict"], "identical", "{r}");
    assert_eq!(r["rebuilt"], r["published"], "{r}");
    assert_eq!(r["reproducible"], true);

    // A recipe marked reproducible that is not: it writes the time.
    let recipe = "platforms/linux/busybox.Dockerfile";
    p.edit(recipe, |t| {
        t.replacen("RUN mkdir -p", "RUN date +%s%N > /stamp\nRUN mkdir -p", 1)
    });
    build_one(&p, &["--os", "busybox-stamp"]);
    let published = std::fs::read(p.lockfile_path()).unwrap();
    let e = p.entry(&key);
    let (code, r) = rebuild(&p, &key);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["verdict"], "different", "{r}");
    let d = &r["difference"];
    // The parent's two layers, then the stamp's.
    assert_eq!(d["layer"], 2, "{r}");
    assert_eq!(d["file"], "stamp", "{r}");
    assert_ne!(d["rebuilt_layer"], d["published_layer"], "{r}");
    // The text says the same.
    let out = p.kiln(&["verify", "--rebuild", &key]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("different") && text.contains("layer 2") && text.contains("file stamp"),
        "{text}"
    );
    // Nothing published moved: the lockfile, the moving and immutable tags.
    assert_eq!(std::fs::read(p.lockfile_path()).unwrap(), published);
    let config = kiln::config::Config::defaults(common::root()).unwrap();
    let reg = kiln::registry::Registry::new(&config.registry).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = e["repository"].as_str().unwrap();
    for t in ["tag", "immutable_tag"] {
        let tag = e[t].as_str().unwrap();
        let (digest, _) = rt.block_on(reg.head_manifest(repo, tag)).unwrap().unwrap();
        assert_eq!(digest, e["digest"].as_str().unwrap(), "{tag}");
    }

    // An edited recipe is not the published one: nothing is built.
    p.edit(recipe, |t| t.replace("date +%s%N", "date +%s"));
    let (code, r) = rebuild(&p, &key);
    assert_eq!(code, Some(2), "{r}");
    assert_eq!(r["verdict"], "inputs-changed", "{r}");
    assert_eq!(r["inputs"][0], "recipe:busybox.Dockerfile", "{r}");
    assert!(r["rebuilt"].is_null(), "{r}");
}

/// `kiln verify --rebuild` pushes nothing: against a registry of its own,
/// whose storage is the same file for file before and after the rebuild
/// (no blob, manifest, tag or upload), identical or different.
#[test]
fn verify_rebuild_pushes_nothing() {
    fixtures();
    let storage = tempfile::tempdir().unwrap();
    let registry = PrivateRegistry::start(storage.path());
    let p = Profile::busybox("repro-nopush", "busybox-nopush")
        .reproducible()
        .own_state()
        .registry_url(&registry.url())
        .create();
    std::fs::create_dir_all(p.path().join("state")).unwrap();
    let key = format!("{}/opam:busybox-nopush-ocaml-5.5", p.namespace);
    build_one(&p, &["--os", "busybox-nopush"]);
    let before = registry.contents();
    let (code, r) = rebuild(&p, &key);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["verdict"], "identical", "{r}");
    assert_eq!(
        registry.contents(),
        before,
        "the identical rebuild wrote to the registry"
    );
    // Different: the recipe is not what it claims (it writes the time).
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        t.replacen("RUN mkdir -p", "RUN date +%s%N > /stamp\nRUN mkdir -p", 1)
    });
    build_one(&p, &["--os", "busybox-nopush"]);
    let before = registry.contents();
    let (code, r) = rebuild(&p, &key);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["verdict"], "different", "{r}");
    assert_eq!(
        registry.contents(),
        before,
        "the different rebuild wrote to the registry"
    );
}

/// `kiln build --tag … --force` rebuilds that one tag although its key is
/// unchanged: on the reproducible busybox release it gives the published
/// digest again and says so; nothing else is built. On a recipe that is
/// not reproducible it publishes the new image and says the digest
/// differs. `--force` without `--tag`, and a tag not in the plan, are
/// refused before anything is built.
#[test]
fn a_forced_rebuild_builds_only_its_tag_and_says_whether_the_digest_held() {
    fixtures();
    let p = Profile::demo("force").own_state().create();
    let (code, first) = p.build(&["--os", "busybox"]);
    assert_eq!(code, Some(0), "{first}");
    let tags = first["tags"].as_array().unwrap();
    assert!(tags.len() >= 2, "{first}");
    let one = tags
        .iter()
        .find(|t| t["ocaml"].as_str().is_some_and(|v| v.starts_with("4.13")))
        .unwrap();
    let tag = format!(
        "{}:{}",
        one["repository"].as_str().unwrap(),
        one["tag"].as_str().unwrap()
    );
    let before = p.entries();
    let (code, forced) = p.build(&["--tag", &tag, "--force"]);
    assert_eq!(code, Some(0), "{forced}");
    assert_eq!(forced["tags"].as_array().unwrap().len(), 1, "{forced}");
    assert_eq!(forced["built"], 1, "{forced}");
    let report = &forced["tags"][0];
    assert_eq!(
        report["outcome"]["digest"], one["outcome"]["digest"],
        "{forced}"
    );
    assert!(
        report["changed_inputs"][0]
            .as_str()
            .unwrap()
            .contains("the published digest again (reproducible)"),
        "{forced}"
    );
    let after = p.entries();
    for (k, e) in &before {
        assert_eq!(after[k]["digest"], e["digest"], "{k} moved");
    }
    // Refused before anything runs.
    let out = p.kiln(&["build", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = p.kiln(&["build", "--tag", "opam:no-such-tag", "--force"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such tag in the plan"),
        "{out:?}"
    );
    // Not reproducible (a step writes the time): the rebuilt image
    // cannot take the key's immutable tag, so nothing moves, and the run
    // says why.
    let q = Profile::busybox("forcenr", "busybox-forcenr")
        .recipe_prefix("RUN date +%s%N > /built-at\n")
        .own_state()
        .create();
    let (code, s) = q.build(&[]);
    assert_eq!(code, Some(0), "{s}");
    let was = s["tags"][0]["outcome"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let tag = s["tags"][0]["tag"].as_str().unwrap().to_string();
    let (code, s) = q.build(&["--tag", &tag, "--force"]);
    assert_eq!(code, Some(1), "{s}");
    let error = s["tags"][0]["outcome"]["error"].as_str().unwrap();
    assert!(
        error.contains("forced rebuild gave") && error.contains("not reproducible"),
        "{s}"
    );
    let key = format!("{}/opam:{tag}", q.namespace);
    assert_eq!(q.entry(&key)["digest"], was.as_str());
}
