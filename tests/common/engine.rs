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
            std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
        );
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
