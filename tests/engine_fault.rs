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
use std::time::Duration;

use serde_json::Value;

mod common;
use common::barrier::Barrier;
use common::engine::{Bridge, PrivateEngine, make_bridge};
use common::{Bounded, LIMIT, Profile, Spawned};

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
    /// The busybox recipe before the barrier step went into it.
    recipe: String,
    out: Output,
    /// The killed-engine build's pid (its work dirs are `<pid>-…`).
    pid: u32,
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
    // The build waits at the barrier: the engine is killed while a step
    // of the build runs in it.
    let barrier = Barrier::for_engine(&bridge.0);
    let recipe = std::fs::read_to_string(p.file(RECIPE)).unwrap();
    std::fs::write(
        p.file(RECIPE),
        recipe.replace(
            "RUN mkdir -p",
            &format!("{}RUN mkdir -p", barrier.docker_step(name)),
        ),
    )
    .unwrap();
    let build = Spawned::piped("kiln build", &mut build_cmd(&p));
    let pid = build.id();
    barrier.wait_for_arrivals(1, Duration::from_secs(180));
    engine.kill();
    let out = build.output_within(LIMIT);
    KilledBuild {
        engine: Some(engine),
        bridge,
        dir,
        p,
        recipe,
        out,
        pid,
    }
}

/// What a Docker build of `pid` may leave in the state dir: its export
/// directories (`work/docker/<pid>-…`).
fn work_dirs_of(pid: u32) -> Vec<String> {
    let work = common::state_dir().join("work/docker");
    std::fs::read_dir(&work)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{pid}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// An engine dying mid-build is an infrastructure failure (the kind the
/// daemon retries), never the recipe's; the build leaves nothing.
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
    let arch = &s["tags"][0]["arches"]["amd64"];
    assert_eq!(arch["outcome"], "failed", "{s}");
    assert_eq!(arch["kind"], "infra", "{s}");
    assert_eq!(s["tags"][0]["outcome"]["kind"], "infra", "{s}");
    assert_eq!(work_dirs_of(k.pid), Vec::<String>::new(), "work dirs left");
}

/// Nothing published: no lockfile entry, no tag of any kind.
#[test]
fn engine_killed_mid_build_publishes_nothing() {
    let _serial = serial();
    let k = engine_killed_mid_build("nothing");
    assert!(k.p.entries().is_empty());
    // The registry says the repository has no tag (or does not exist):
    // any other answer, or none, is a failure, not "nothing published".
    let url = format!("http://127.0.0.1:5000/v2/{}/opam/tags/list", k.p.namespace);
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", &url])
        .output_within(Duration::from_secs(60))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap();
    match code {
        "404" => assert!(body.contains("NAME_UNKNOWN"), "{body}"),
        "200" => {
            let v: Value = serde_json::from_str(body).unwrap();
            let tags = v["tags"].as_array().cloned().unwrap_or_default();
            assert!(
                tags.iter()
                    .all(|t| !t.as_str().unwrap_or("").contains("busybox-enginefault")),
                "{body}"
            );
        }
        other => panic!("{url} answered {other}: {body}"),
    }
}

/// The engine comes back; the rerun completes, and on the engine nothing
/// of the killed build is left (its smoke container and build image
/// swept, or never made).
#[test]
fn rerun_after_the_engine_is_back_completes() {
    let _serial = serial();
    let mut k = engine_killed_mid_build("rerun");
    drop(k.engine.take());
    let engine = PrivateEngine::start(k.dir.path(), &k.bridge.0);
    std::fs::write(k.p.file(RECIPE), &k.recipe).unwrap();
    let out = build_cmd(&k.p).output_within(LIMIT).unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        s["built"],
        1,
        "{s} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docker = |args: &[&str]| -> String {
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", engine.socket().display()))
            .args(args)
            .stdin(Stdio::null())
            .output_within(Duration::from_secs(60))
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        docker(&["ps", "-aq", "--filter", "name=kiln-smoke"]).trim(),
        ""
    );
    assert_eq!(docker(&["images", "-q", "kiln-build/*"]).trim(), "");
    assert_eq!(work_dirs_of(k.pid), Vec::<String>::new(), "work dirs left");
}
