//! Reproducible digests on the real engines and registry: the busybox
//! fixture target built from two fresh state dirs into two namespaces, the
//! second on a private dockerd (no image, no build cache in common), gives
//! the same child and index digests; `kiln verify --rebuild` says
//! identical, names the layer and file when a recipe marked reproducible
//! is not (it writes the time into a file), and builds nothing when the
//! inputs changed since publication. Nothing published moves.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::engine::{PrivateEngine, make_bridge};
use kiln::publish::lockfile::{Entry, Lockfile};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A profile of its own: state dir, namespace, one reproducible busybox
/// OS release, and optionally an engine of its own.
struct Profile {
    dir: tempfile::TempDir,
    config: PathBuf,
    namespace: String,
    os: String,
}

fn profile(name: &str, os: &str, arches: &str, engine: Option<&Path>) -> Profile {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let copy = |from: PathBuf, to: &Path| {
        assert!(
            Command::new("cp")
                .arg("-r")
                .arg(from)
                .arg(to)
                .status()
                .unwrap()
                .success()
        )
    };
    copy(root().join("scripts/demo/versions"), p);
    let linux = p.join("platforms/linux");
    std::fs::create_dir_all(&linux).unwrap();
    for f in ["policy.yaml", "busybox.Dockerfile"] {
        copy(root().join("scripts/demo/platforms/linux").join(f), &linux);
    }
    std::fs::write(
        linux.join("platform.yaml"),
        format!(
            "platform: linux\nbuilder: docker\nrepository: opam\nreleases:\n  - id: {os}\n    distro: busybox\n    tier: 1\n    arches: [{arches}]\n    recipes: [busybox.Dockerfile]\n    parent: 127.0.0.1:5000/kiln-fixtures/busybox:latest\n    reproducible: true\n"
        ),
    )
    .unwrap();
    let namespace = format!("kiln-test-repro-{name}-{}", std::process::id());
    let hosts = engine
        .map(|sock| {
            format!(
                "[docker]\n[[docker.hosts]]\nname = \"private\"\nendpoint = \"unix://{}\"\nos = \"linux\"\narch = \"amd64\"\nemulate = [\"arm64\"]\nconcurrency = 2\n",
                sock.display()
            )
        })
        .unwrap_or_default();
    let config = p.join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\nmanifests_dir = \"manifests\"\n[database]\npath = \"kiln.db\"\n[registry]\nnamespace = \"{namespace}\"\n[plan]\nopam_repository_commit = \"test-pinned\"\n{hosts}"
        ),
    )
    .unwrap();
    Profile {
        dir,
        config,
        namespace,
        os: os.to_string(),
    }
}

impl Profile {
    fn kiln(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// `kiln build --json` of this profile's OS release at `version`.
    fn build(&self, version: &str) -> serde_json::Value {
        let out = self.kiln(&["build", "--json", "--os", &self.os, "--version", version]);
        assert!(
            out.status.success(),
            "kiln build: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn lockfile(&self) -> PathBuf {
        self.dir.path().join("manifests/lockfile.json")
    }

    fn entry(&self, series: &str) -> Entry {
        let key = format!("{}/opam:{}-ocaml-{series}", self.namespace, self.os);
        Lockfile::load(&self.lockfile()).unwrap().entries[&key].clone()
    }

    /// `kiln verify --rebuild … --json`: exit code and report.
    fn rebuild(&self, series: &str, arch: &str) -> (Option<i32>, serde_json::Value) {
        let reference = format!("{}/opam:{}-ocaml-{series}", self.namespace, self.os);
        let out = self.kiln(&["verify", "--rebuild", &reference, "--arch", arch, "--json"]);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "kiln verify --rebuild: {e}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), report)
    }
}

fn fixtures() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("fixtures")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln fixtures: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn skopeo(args: &[&str], reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .args(args)
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_same_key_built_on_two_engines_gives_the_same_digests() {
    fixtures();
    // 4.13.1 has a catalogue date: every timestamp is clamped to it.
    let a = profile("a", "busybox-repro", "amd64, arm64", None);
    let s = a.build("4.13");
    assert_eq!(s["built"], 1, "{s}");
    let dir = tempfile::tempdir().unwrap();
    let bridge = make_bridge("kilnrp", "172.31.252.1/24");
    let engine = PrivateEngine::start(dir.path(), &bridge.0);
    let b = profile("b", "busybox-repro", "amd64, arm64", Some(&engine.socket()));
    let s = b.build("4.13");
    assert_eq!(s["built"], 1, "{s}");
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
    let (ea, eb) = (a.entry("4.13"), b.entry("4.13"));
    assert_ne!(ea.repository, eb.repository);
    assert_eq!(ea.build_key, eb.build_key);
    assert_eq!(ea.immutable_tag, eb.immutable_tag);
    for (arch, x) in &ea.arches {
        assert_eq!(x.digest, eb.arches[arch].digest, "{arch}");
    }
    assert_eq!(ea.digest, eb.digest, "index digests");
    // The image says when its compiler was released, not when it was built.
    let amd64 = &ea.arches[&kiln::catalogue::Arch::Amd64].digest;
    let config = skopeo(
        &["--config"],
        &format!("127.0.0.1:5000/{}@{amd64}", ea.repository),
    );
    assert_eq!(config["created"], "2021-10-04T00:00:00Z");
    assert!(config.get("container_config").is_none(), "{config}");
    let index = skopeo(
        &["--raw"],
        &format!("127.0.0.1:5000/{}@{}", eb.repository, eb.digest),
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.created"],
        "2021-10-04T00:00:00Z"
    );
}

#[test]
fn verify_rebuild_says_identical_or_names_the_layer_and_file_that_differ() {
    fixtures();
    let p = profile("verify", "busybox-stamp", "amd64", None);
    p.build("5.5");
    let before = std::fs::read(p.lockfile()).unwrap();
    let (code, r) = p.rebuild("5.5", "amd64");
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["verdict"], "identical", "{r}");
    assert_eq!(r["rebuilt"], r["published"], "{r}");
    assert_eq!(r["reproducible"], true);

    // A recipe marked reproducible that is not: it writes the time.
    let recipe = p.dir.path().join("platforms/linux/busybox.Dockerfile");
    let text = std::fs::read_to_string(&recipe).unwrap();
    let stamped = text.replacen("RUN mkdir -p", "RUN date +%s%N > /stamp\nRUN mkdir -p", 1);
    std::fs::write(&recipe, &stamped).unwrap();
    p.build("5.5");
    let published = std::fs::read(p.lockfile()).unwrap();
    assert_ne!(published, before);
    let e = p.entry("5.5");
    let (code, r) = p.rebuild("5.5", "amd64");
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["verdict"], "different", "{r}");
    let d = &r["difference"];
    // The parent's two layers, then the stamp's.
    assert_eq!(d["layer"], 2, "{r}");
    assert_eq!(d["file"], "stamp", "{r}");
    assert_ne!(d["rebuilt_layer"], d["published_layer"], "{r}");
    // The text says the same.
    let reference = format!("{}/opam:busybox-stamp-ocaml-5.5", p.namespace);
    let out = p.kiln(&["verify", "--rebuild", &reference]);
    assert_eq!(out.status.code(), Some(1));
    let text_out = String::from_utf8_lossy(&out.stdout);
    assert!(
        text_out.contains("different")
            && text_out.contains("layer 2")
            && text_out.contains("file stamp"),
        "{text_out}"
    );
    // Nothing published moved.
    assert_eq!(std::fs::read(p.lockfile()).unwrap(), published);
    let reg =
        kiln::registry::Registry::new(&kiln::config::Config::defaults(&root()).unwrap().registry)
            .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for t in [&e.tag, &e.immutable_tag] {
        let (d, _) = rt
            .block_on(reg.head_manifest(&e.repository, t))
            .unwrap()
            .unwrap();
        assert_eq!(d, e.digest, "{t}");
    }

    // An edited recipe is not the published one: nothing is built.
    std::fs::write(&recipe, stamped.replace("date +%s%N", "date +%s")).unwrap();
    let (code, r) = p.rebuild("5.5", "amd64");
    assert_eq!(code, Some(2), "{r}");
    assert_eq!(r["verdict"], "inputs-changed", "{r}");
    assert_eq!(r["inputs"][0], "recipe:busybox.Dockerfile", "{r}");
    assert!(r["rebuilt"].is_null(), "{r}");
}
