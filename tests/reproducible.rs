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
use common::{Profile, fixtures};

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
        .output()
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
        .output()
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
