//! An engine killed mid-build: the target fails cleanly, nothing is
//! published, and a rerun once the engine is back completes. Runs against
//! a private dockerd (own socket, data root, exec root and containerd) so
//! the suite's shared engine is untouched.
//!
//! The private engines all take the same bridge address and the builds the
//! same log file: each test holds `LOCK` for its whole run, so the tests of
//! this file run one at a time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::Profile;

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

struct PrivateEngine {
    dir: PathBuf,
    child: Option<Child>,
}

/// The private engine's own bridge: `--bridge=none` would make dockerd
/// delete the host's docker0 (which the shared engine uses), so it gets a
/// bridge of its own, removed at the end.
struct Bridge(String);

impl Drop for Bridge {
    fn drop(&mut self) {
        common::retry(10, Duration::from_millis(300), || {
            Command::new("ip")
                .args(["link", "del", &self.0])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(true)
        });
    }
}

fn make_bridge() -> String {
    let name = format!("kilnpd{}", std::process::id() % 100_000);
    let _ = Command::new("ip")
        .args(["link", "del", &name])
        .stderr(Stdio::null())
        .status();
    assert!(
        Command::new("ip")
            .args(["link", "add", &name, "type", "bridge"])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("ip")
            .args(["addr", "add", "172.31.253.1/24", "dev", &name])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("ip")
            .args(["link", "set", &name, "up"])
            .status()
            .unwrap()
            .success()
    );
    name
}

impl PrivateEngine {
    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn start(dir: &Path, bridge: &str) -> PrivateEngine {
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("setsid")
            .arg("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg(format!("--bridge={bridge}"))
            .args(["--iptables=false", "--ip-masq=false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let e = PrivateEngine {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let ok = Command::new("docker")
                .args(["-H", &format!("unix://{}", e.socket().display()), "version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return e;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "private dockerd did not start: {}",
            std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
        );
    }

    /// SIGKILL the engine and every process it started (its containerd
    /// and shims too), as a crash of the engine host would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as i32;
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
            let _ = c.wait();
        }
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.dir.join("exec").display().to_string()])
            .status();
        // This machine's init may not reap the killed containerd: drop its
        // pid file so the restarted engine starts a fresh one.
        let _ = std::fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
    }

    /// Graceful stop (dockerd unmounts and stops its containerd).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = std::fs::read_to_string(self.dir.join("docker.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        self.stop();
        // Anything still running from this engine's directories (shims).
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.dir.join("exec").display().to_string()])
            .status();
        // Every mount under its directories, deepest first: a killed
        // engine leaves its network namespaces bind-mounted in exec/netns.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount")
                .args(["-l", m])
                .stderr(Stdio::null())
                .status();
        }
    }
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
    let bridge = Bridge(make_bridge());
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
