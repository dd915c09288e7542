//! An engine killed mid-build: the target fails cleanly, nothing is
//! published, and a rerun once the engine is back completes. Runs against
//! a private dockerd (own socket, data root, exec root and containerd) so
//! the suite's shared engine is untouched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::publish::lockfile::Lockfile;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
        for _ in 0..10 {
            if Command::new("ip")
                .args(["link", "del", &self.0])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(true)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
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
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.join("data"))
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(self.dir.join("exec"))
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn engine_killed_mid_build_publishes_nothing_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = make_bridge();
    let _bridge_guard = Bridge(bridge.clone());
    let mut engine = PrivateEngine::start(dir.path(), &bridge);
    // Profile: the demo slice, the private engine as the only host.
    let prof = dir.path().join("profile");
    std::fs::create_dir_all(&prof).unwrap();
    for sub in ["versions", "platforms"] {
        assert!(
            Command::new("cp")
                .arg("-r")
                .arg(root().join("scripts/demo").join(sub))
                .arg(&prof)
                .status()
                .unwrap()
                .success()
        );
    }
    let namespace = format!("kiln-test-engine-{}", std::process::id());
    let config = prof.join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\nmanifests_dir = \"manifests\"\n[database]\npath = \"kiln.db\"\n[registry]\nnamespace = \"{namespace}\"\n[plan]\nopam_repository_commit = \"test-pinned\"\n[docker]\n[[docker.hosts]]\nname = \"private\"\nendpoint = \"unix://{sock}\"\nos = \"linux\"\narch = \"amd64\"\nconcurrency = 1\n",
            state = root().join(".kiln").display(),
            sock = engine.socket().display()
        ),
    )
    .unwrap();
    // The parents come from the registry, pushed by the shared engine.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["fixtures"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A distinct OS id keeps this test's log file its own.
    let pf = prof.join("platforms/linux/platform.yaml");
    let text = std::fs::read_to_string(&pf).unwrap();
    std::fs::write(
        &pf,
        text.replace("  - id: busybox\n", "  - id: busybox-enginefault\n"),
    )
    .unwrap();
    let recipe = prof.join("platforms/linux/busybox.Dockerfile");
    let original = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        original.replace("RUN mkdir -p", "RUN sleep 30\nRUN mkdir -p"),
    )
    .unwrap();
    let kiln = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.arg("--config").arg(&config).args([
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
    };
    let child = kiln()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the build is running inside the engine, then kill it.
    let log = root().join(".kiln/log/linux_busybox-enginefault_5.5.0_amd64.log");
    let _ = std::fs::remove_file(&log);
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
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["failed"], 1, "{s}");
    // Nothing published: no lockfile entry, no tag of any kind.
    assert!(
        Lockfile::load(&prof.join("manifests/lockfile.json"))
            .unwrap()
            .entries
            .is_empty()
    );
    let tags = Command::new("skopeo")
        .args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://127.0.0.1:5000/{namespace}/opam"),
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tags.stdout).contains("busybox-enginefault-ocaml-5.5"),
        "{}",
        String::from_utf8_lossy(&tags.stdout)
    );
    // The engine comes back; the rerun completes.
    drop(engine);
    let _engine = PrivateEngine::start(dir.path(), &bridge);
    std::fs::write(&recipe, &original).unwrap();
    let out = kiln().output().unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        s["built"],
        1,
        "{s} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
