//! `kiln daemon` on the real stack: scheduled rounds that build nothing
//! when nothing changed, a rebuild asked for through the API, SIGTERM,
//! a second daemon refused, a bad schedule refused, and kill -9 mid-build
//! followed by a restart that resumes the interrupted round.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::publish::lockfile::Lockfile;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Profile {
    dir: tempfile::TempDir,
    config: PathBuf,
    namespace: String,
    port: u16,
}

/// A one-tag profile (busybox, amd64, OCaml 5.5.0) with its own state dir.
fn profile(name: &str, schedule: &str, recipe_prefix: &str) -> Profile {
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
    let os = format!("busybox-daemon-{name}");
    std::fs::write(
        p.join("platforms/linux/platform.yaml"),
        format!("platform: linux\nbuilder: docker\nrepository: opam\nreleases:\n  - id: {os}\n    distro: busybox\n    tier: 1\n    arches: [amd64]\n    recipes: [busybox.Dockerfile]\n    parent: 127.0.0.1:5000/kiln-fixtures/busybox:latest\n"),
    )
    .unwrap();
    std::fs::write(
        p.join("platforms/linux/policy.yaml"),
        "versions: [latest]\nrequired_tiers: [1]\n",
    )
    .unwrap();
    let recipe =
        std::fs::read_to_string(root().join("scripts/demo/platforms/linux/busybox.Dockerfile"))
            .unwrap();
    std::fs::write(
        p.join("platforms/linux/busybox.Dockerfile"),
        recipe.replace("RUN mkdir -p", &format!("{recipe_prefix}RUN mkdir -p")),
    )
    .unwrap();
    let namespace = format!("kiln-test-daemon-{name}-{}", std::process::id());
    let port = free_port();
    let config = p.join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\nmanifests_dir = \"manifests\"\n[database]\npath = \"state/kiln.db\"\n[registry]\nnamespace = \"{namespace}\"\n[plan]\nopam_repository_commit = \"test-pinned\"\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"daemon-token\"\n[daemon]\nschedule = \"{schedule}\"\nmax_attempts = 3\n"
        ),
    )
    .unwrap();
    Profile {
        dir,
        config,
        namespace,
        port,
    }
}

impl Profile {
    fn spawn(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&self.config)
            .arg("daemon")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn rounds(&self) -> Vec<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&self.config)
            .args(["daemon", "status", "--json", "--limit", "50"])
            .output()
            .unwrap();
        let mut v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.reverse();
        v
    }

    fn wait_rounds(&self, n: usize, done: bool, secs: u64) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.rounds();
            let finished = r
                .iter()
                .filter(|x| !done || x["state"] != "running")
                .count();
            if finished >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {n} rounds, have {r:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn lockfile(&self) -> Lockfile {
        Lockfile::load(&self.dir.path().join("manifests/lockfile.json")).unwrap()
    }
}

fn sigterm(child: &mut Child) -> Option<i32> {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_http(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "daemon API never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scheduled_rounds_build_once_then_nothing_and_stop_on_sigterm() {
    let p = profile("sched", "*/3 * * * * *", "");
    let mut d = p.spawn();
    wait_http(p.port);
    // A second daemon on the same state refuses to start, naming the first.
    let second = p.spawn().wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(2));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!("another kiln daemon (pid {})", d.id())),
        "{err}"
    );

    let r = p.wait_rounds(2, true, 120);
    assert_eq!(r[0]["built"], 1, "{r:?}");
    assert_eq!(r[1]["built"], 0, "{r:?}");
    assert_eq!(r[1]["unchanged"], 1, "{r:?}");
    let lock = p.lockfile();
    let key = format!("{}/opam:busybox-daemon-sched-ocaml-5.5", p.namespace);
    assert!(
        lock.entries[&key].history.is_empty(),
        "no digest change without an input change"
    );

    // A rebuild asked for through the API (token required).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = |token: Option<&str>| {
        rt.block_on(async {
            let mut r =
                reqwest::Client::new().post(format!("http://127.0.0.1:{}/v1/rebuild", p.port));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().await.unwrap().status().as_u16()
        })
    };
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("daemon-token")), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p
        .rounds()
        .iter()
        .any(|x| x["trigger"] == "manual: api" && x["state"] == "done")
    {
        assert!(
            Instant::now() < deadline,
            "the requested round never ran: {:?}",
            p.rounds()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        p.lockfile(),
        lock,
        "rounds without input changes must not touch the lockfile"
    );
    assert_eq!(sigterm(&mut d), Some(0));
    assert!(p.rounds().iter().all(|x| x["state"] != "running"));
}

#[test]
fn bad_schedule_is_refused_at_start() {
    let p = profile("badcron", "every tuesday", "");
    let out = p.spawn().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("daemon.schedule") && err.contains("every tuesday"),
        "{err}"
    );
}

#[test]
fn killed_mid_build_then_restarted_resumes_and_publishes_once() {
    let p = profile("kill", "*/2 * * * * *", "RUN sleep 6\n");
    let mut d = p.spawn();
    wait_http(p.port);
    // Wait until the first round is building, then kill -9 the daemon.
    let log = p
        .dir
        .path()
        .join("state/log/linux_busybox-daemon-kill_5.5.0_amd64.log");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("sleep 6")
    {
        assert!(
            Instant::now() < deadline,
            "the round never started building"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe {
        libc::kill(d.id() as i32, libc::SIGKILL);
    }
    let _ = d.wait();
    let r = p.rounds();
    assert_eq!(r.last().unwrap()["state"], "running", "{r:?}");
    assert!(
        p.lockfile().entries.is_empty(),
        "nothing may be published by a killed round"
    );
    // Restart: the interrupted round is marked and resumed.
    let mut d = p.spawn();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = p.rounds();
        if r.iter()
            .any(|x| x["trigger"] == "resume-interrupted" && x["state"] == "done")
        {
            assert_eq!(r[0]["state"], "interrupted", "{r:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no resumed round: {r:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let lock = p.lockfile();
    assert_eq!(lock.entries.len(), 1);
    assert!(
        lock.entries.values().all(|e| e.history.is_empty()),
        "published once"
    );
    assert_eq!(sigterm(&mut d), Some(0));
}
