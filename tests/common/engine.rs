//! A private dockerd: its own socket, data root, exec root, containerd and
//! bridge, so that a test can kill an engine without touching the suite's,
//! or build on one that shares no image and no build cache with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Bounded;

/// A dockerd of its own, stopped (and everything it mounted unmounted)
/// when dropped.
pub struct PrivateEngine {
    dir: PathBuf,
    child: Option<Child>,
}

/// The private engine's own bridge: `--bridge=none` would make dockerd
/// delete the host's docker0 (which the shared engine uses), so it gets a
/// bridge of its own, removed at the end.
pub struct Bridge(pub String);

impl Drop for Bridge {
    fn drop(&mut self) {
        super::retry(10, Duration::from_millis(300), || {
            Command::new("ip")
                .args(["link", "del", &self.0])
                .stderr(Stdio::null())
                .status_within(Duration::from_secs(60))
                .map(|s| s.success())
                .unwrap_or(true)
        });
    }
}

/// A bridge `<prefix><pid>` with address `addr` (CIDR), removed when the
/// returned guard drops.
pub fn make_bridge(prefix: &str, addr: &str) -> Bridge {
    let name = format!("{prefix}{}", std::process::id() % 100_000);
    let _ = Command::new("ip")
        .args(["link", "del", &name])
        .stderr(Stdio::null())
        .status_within(Duration::from_secs(60));
    assert!(
        Command::new("ip")
            .args(["link", "add", &name, "type", "bridge"])
            .status_within(Duration::from_secs(60))
            .unwrap()
            .success()
    );
    assert!(
        Command::new("ip")
            .args(["addr", "add", addr, "dev", &name])
            .status_within(Duration::from_secs(60))
            .unwrap()
            .success()
    );
    assert!(
        Command::new("ip")
            .args(["link", "set", &name, "up"])
            .status_within(Duration::from_secs(60))
            .unwrap()
            .success()
    );
    Bridge(name)
}

impl PrivateEngine {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    pub fn start(dir: &Path, bridge: &str) -> PrivateEngine {
        PrivateEngine::start_in(dir, bridge, None)
    }

    /// [`PrivateEngine::start`] inside the network namespace `netns` (made
    /// by `ip netns add`): its builds' host network is that namespace's,
    /// and `bridge` must exist there.
    pub fn start_in(dir: &Path, bridge: &str, netns: Option<&str>) -> PrivateEngine {
        PrivateEngine::start_with(dir, bridge, netns, &[])
    }

    /// [`PrivateEngine::start_in`] with more `dockerd` arguments (another
    /// listener, its TLS files).
    pub fn start_with(
        dir: &Path,
        bridge: &str,
        netns: Option<&str>,
        extra: &[String],
    ) -> PrivateEngine {
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let mut cmd = Command::new("setsid");
        if let Some(ns) = netns {
            // nsenter, not `ip netns exec`: that one remounts /sys in a
            // mount namespace of its own, hiding the cgroups dockerd needs.
            cmd.arg("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .arg("--");
        }
        let child = cmd
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
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        PrivateEngine {
            dir: dir.to_path_buf(),
            child: Some(child),
        }
        .answering()
    }

    /// A current Docker Engine (Debian trixie's docker.io, 26.x, from
    /// [`current_docker_root`]) as a private engine: run chrooted in that
    /// root, in a mount namespace of its own (the root's /proc, /sys, /dev
    /// and a tmpfs /run; `dir` bound at /kiln/d for its socket, pid file
    /// and data root; the root bound on itself, so that `/` is a mount point
    /// as the engine's layer unpacking needs), on this machine's network and `bridge`. With
    /// `containerd_store` it keeps images in containerd's image store (the
    /// `containerd-snapshotter` feature) instead of the classic one.
    pub fn start_current(dir: &Path, bridge: &str, containerd_store: bool) -> PrivateEngine {
        let root = current_docker_root();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let r = root.display();
        let script = format!(
            "set -e; mount --make-rprivate /; mount --bind {r} {r}; \
             mount --rbind /proc {r}/proc; mount --rbind /sys {r}/sys; mount --rbind /dev {r}/dev; \
             mount -t tmpfs tmpfs {r}/run; mount --bind {d} {r}/kiln/d; \
             exec chroot {r} dockerd --data-root /kiln/d/data --exec-root /run/docker \
               -p /kiln/d/docker.pid -H unix:///kiln/d/docker.sock --bridge={bridge} \
               --iptables=false --ip-masq=false{features}",
            d = dir.display(),
            features = if containerd_store {
                " --config-file /kiln/d/daemon.json"
            } else {
                ""
            }
        );
        if containerd_store {
            std::fs::write(
                dir.join("daemon.json"),
                r#"{"features": {"containerd-snapshotter": true}}"#,
            )
            .unwrap();
        }
        let child = Command::new("setsid")
            .args(["unshare", "--mount", "bash", "-c", &script])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        PrivateEngine {
            dir: dir.to_path_buf(),
            child: Some(child),
        }
        .answering()
    }

    /// Wait until the engine answers (panics with its log if it does not).
    fn answering(self) -> PrivateEngine {
        let e = self;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let ok = Command::new("docker")
                .args(["-H", &format!("unix://{}", e.socket().display()), "version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status_within(Duration::from_secs(30))
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return e;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "private dockerd did not start: {}",
            std::fs::read_to_string(e.dir.join("dockerd.log")).unwrap_or_default()
        );
    }

    /// The engine's server version (`docker version`).
    pub fn version(&self) -> String {
        self.format("version", "{{.Server.Version}}")
    }

    /// Its storage driver (`docker info`): `overlay2` for the classic
    /// image store, `overlayfs` for containerd's snapshotter.
    pub fn driver(&self) -> String {
        self.format("info", "{{.Driver}}")
    }

    fn format(&self, what: &str, format: &str) -> String {
        let out = Command::new("docker")
            .args(["-H", &format!("unix://{}", self.socket().display())])
            .args([what, "--format", format])
            .output_within(Duration::from_secs(30))
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// SIGKILL the engine and every process it started (its containerd
    /// and shims too), as a crash of the engine host would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as i32;
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
            let _ = c.wait();
        }
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.dir.join("exec").display().to_string()])
            .status_within(Duration::from_secs(60));
        // This machine's init may not reap the killed containerd: drop its
        // pid file so the restarted engine starts a fresh one.
        let _ = std::fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
    }

    /// Graceful stop (dockerd unmounts and stops its containerd).
    pub fn stop(&mut self) {
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
            .status_within(Duration::from_secs(60));
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
                .status_within(Duration::from_secs(60));
        }
    }
}

/// A root filesystem of Debian trixie with its docker.io (Docker Engine
/// 26.x, containerd, runc), made once by `debootstrap` from Debian's
/// mirror and kept under the services' state dir (`.kiln/fixtures`).
pub fn current_docker_root() -> PathBuf {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let root = super::state_dir().join("fixtures/trixie-docker");
    if root.join("kiln/d").is_dir() {
        return root;
    }
    let partial = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=docker.io,ca-certificates",
            "trixie",
        ])
        .arg(&partial)
        .arg("http://deb.debian.org/debian")
        .output_within(Duration::from_secs(1200))
        .unwrap();
    assert!(
        out.status.success(),
        "debootstrap trixie with docker.io: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(partial.join("kiln/d")).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&partial, &root).unwrap();
    root
}
