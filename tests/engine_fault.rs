//! An engine killed mid-build: the target fails cleanly, nothing is
//! published, and a rerun once the engine is back completes. Runs against
//! a private dockerd (own socket, data root, exec root and containerd) so
//! the suite's shared engine is untouched.
//!
//! The private engines all take the same bridge address and the builds the
//! same log file: each test holds `LOCK` for its whole run, so the tests of
//! this file run one at a time.

use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::Profile;
use common::engine::{Bridge, PrivateEngine, make_bridge};

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A build on the private engine, killed with the engine while it runs.
struct KilledBuild {
    // Dropped in this order: the engine, then its bridge and directory.
    engine: Option<PrivateEngine>,
    bridge: Bridge,
    dir: tempfile::TempDir,
    p: Profile,
    /// The busybox recipe before `RUN sleep 30` went into it.
    recipe: String,
    out: Output,
}

const RECIPE: &str = "platforms/linux/busybox.Dockerfile";

fn build_cmd(p: &Profile) -> Command {
    let mut c = p.command();
    c.args([
        "build",
        "--os",
        "busybox-enginefault",
        "--version",
        "5.5",
        "--arch",
        "amd64",
        "--json",
    ]);
    c
}

fn engine_killed_mid_build(name: &str) -> KilledBuild {
    let dir = tempfile::tempdir().unwrap();
    let bridge = make_bridge("kilnpd", "172.31.253.1/24");
    let mut engine = PrivateEngine::start(dir.path(), &bridge.0);
    // Profile: the demo slice, the private engine as the only host.
    let p = Profile::demo(&format!("engine-{name}"))
        .toml(&format!(
            "[docker]\n[[docker.hosts]]\nname = \"private\"\nendpoint = \"unix://{sock}\"\nos = \"linux\"\narch = \"amd64\"\nconcurrency = 1\n",
            sock = engine.socket().display()
        ))
        .create();
    // The parents come from the registry, pushed by the shared engine.
    common::fixtures();
    // A distinct OS id keeps this test's log file its own.
    p.edit("platforms/linux/platform.yaml", |t| {
        t.replace("  - id: busybox\n", "  - id: busybox-enginefault\n")
    });
    let recipe = std::fs::read_to_string(p.file(RECIPE)).unwrap();
    std::fs::write(
        p.file(RECIPE),
        recipe.replace("RUN mkdir -p", "RUN sleep 30\nRUN mkdir -p"),
    )
    .unwrap();
    // Wait until the build is running inside the engine, then kill it.
    let log = common::state_dir().join("log/linux_busybox-enginefault_5.5.0_amd64.log");
    let _ = std::fs::remove_file(&log);
    let child = build_cmd(&p)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("sleep 30") {
            break;
        }
        assert!(Instant::now() < deadline, "the build never started: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    engine.kill();
    let out = child.wait_with_output().unwrap();
    KilledBuild {
        engine: Some(engine),
        bridge,
        dir,
        p,
        recipe,
        out,
    }
}

#[test]
fn engine_killed_mid_build_fails_the_target() {
    let _serial = serial();
    let k = engine_killed_mid_build("fails");
    assert_eq!(
        k.out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&k.out.stderr)
    );
    let s: Value = serde_json::from_slice(&k.out.stdout).unwrap();
    assert_eq!(s["failed"], 1, "{s}");
}

/// Nothing published: no lockfile entry, no tag of any kind.
#[test]
fn engine_killed_mid_build_publishes_nothing() {
    let _serial = serial();
    let k = engine_killed_mid_build("nothing");
    assert!(k.p.entries().is_empty());
    let tags = Command::new("skopeo")
        .args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://127.0.0.1:5000/{}/opam", k.p.namespace),
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tags.stdout).contains("busybox-enginefault-ocaml-5.5"),
        "{}",
        String::from_utf8_lossy(&tags.stdout)
    );
}

/// The engine comes back; the rerun completes.
#[test]
fn rerun_after_the_engine_is_back_completes() {
    let _serial = serial();
    let mut k = engine_killed_mid_build("rerun");
    drop(k.engine.take());
    let _engine = PrivateEngine::start(k.dir.path(), &k.bridge.0);
    std::fs::write(k.p.file(RECIPE), &k.recipe).unwrap();
    let out = build_cmd(&k.p).output().unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        s["built"],
        1,
        "{s} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
