//! A ZFS worker reachable only by ssh: an `sshd` of its own on a loopback
//! port (its own host key and config), a user of its own allowed to run
//! zfs through `sudo -n`, the test's client key and known-hosts file, and
//! a zfs-fuse pool of its own. Kiln reaches it through an ssh_config file
//! (`ssh_config` in `[[zfs.hosts]]`). Everything is removed on drop: sshd
//! killed by its pid, the user and its sudoers entry deleted, the pool
//! destroyed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::zfs;
use super::{Bounded, Spawned};

/// A test user with NOPASSWD sudo: its processes killed, its sudoers
/// entry and the user removed on drop. Made before `useradd`, so that a
/// failure right after still removes the user.
struct Account {
    user: String,
    sudoers: PathBuf,
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.sudoers);
        super::retry(20, Duration::from_millis(250), || {
            // Only this test's own user's processes (ssh sessions, the
            // watchdog of a recipe), so that userdel may remove it.
            let _ = Command::new("pkill")
                .args(["-KILL", "-u", &self.user])
                .stderr(Stdio::null())
                .status_within(Duration::from_secs(30));
            let gone = Command::new("id")
                .arg(&self.user)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status_within(Duration::from_secs(30))
                .map(|s| !s.success())
                .unwrap_or(false);
            gone || Command::new("userdel")
                .args(["-r", &self.user])
                .stderr(Stdio::null())
                .status_within(Duration::from_secs(60))
                .map(|s| s.success())
                .unwrap_or(false)
        });
    }
}

pub struct SshWorker {
    /// The ssh_config `Host` Kiln connects to.
    pub alias: String,
    pub user: String,
    pub ssh_config: PathBuf,
    pub port: u16,
    // Dropped in this order, after `drop` killed the connections: sshd,
    // the pool, the user, then the files.
    sshd: Option<Spawned>,
    pub pool: zfs::Pool,
    _account: Account,
    dir: tempfile::TempDir,
}

/// Run a setup step; its failure is the test's (a fault of this machine,
/// not a missing component), named with its stderr.
fn run(what: &str, c: &mut Command) {
    let out = c
        .output_within(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl SshWorker {
    /// Start a worker named `tag`. `Err` only when a tool it needs is not
    /// installed (the caller reports the test skipped, which fails under
    /// KILN_REQUIRE_ALL); any other failure to set it up panics, cleaning
    /// up what was made.
    pub fn start(tag: &str) -> Result<SshWorker, String> {
        for tool in ["/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/sudo"] {
            if !Path::new(tool).exists() {
                return Err(format!(
                    "{tool} is missing (scripts/services.sh up installs openssh-server and sudo)"
                ));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // sshd reads the authorized keys as the user.
        run("chmod", Command::new("chmod").arg("755").arg(d));
        for key in ["host_key", "client_key"] {
            run(
                "ssh-keygen",
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", tag, "-f"])
                    .arg(d.join(key)),
            );
        }
        let user = format!("kw{}{tag}", std::process::id());
        let account = Account {
            user: user.clone(),
            sudoers: PathBuf::from(format!("/etc/sudoers.d/kiln-test-{user}")),
        };
        // One left by a killed earlier run of this pid: gone first.
        drop(Account {
            user: user.clone(),
            sudoers: account.sudoers.clone(),
        });
        run(
            "useradd",
            Command::new("useradd").args(["-m", "-s", "/bin/sh", &user]),
        );
        // No password, but not locked: sshd refuses locked accounts.
        run("usermod", Command::new("usermod").args(["-p", "*", &user]));
        std::fs::write(
            &account.sudoers,
            format!("{user} ALL=(ALL) NOPASSWD: ALL\n"),
        )
        .unwrap();
        run(
            "chmod",
            Command::new("chmod").arg("440").arg(&account.sudoers),
        );
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        let port = super::free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin no\nAllowUsers {user}\n\
                 MaxSessions 50\nMaxStartups 50\nLogLevel DEBUG1\nGatewayPorts clientspecified\n",
                d = d.display()
            ),
        )
        .unwrap();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}", host_pub.trim()),
        )
        .unwrap();
        let alias = format!("kiln-worker-{tag}");
        let ssh_config = d.join("ssh_config");
        std::fs::write(
            &ssh_config,
            format!(
                "Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {d}/client_key\n\
                 IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n",
                d = d.display()
            ),
        )
        .unwrap();
        // Debian's sshd refuses to start without its privilege separation dir.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let sshd = Spawned::start(
            "the test worker's sshd",
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        let pool = zfs::Pool::create(&format!("kilnssh{}{tag}", std::process::id()));
        let w = SshWorker {
            alias,
            user,
            ssh_config,
            port,
            sshd: Some(sshd),
            pool,
            _account: account,
            dir,
        };
        super::wait_until("the worker's sshd to accept connections", 20, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let out = w.ssh(&[
            "sudo",
            "-n",
            "zpool",
            "list",
            "-H",
            "-o",
            "name",
            &w.pool.name,
        ]);
        assert!(
            out.status.success(),
            "ssh to the test worker: {} (sshd: {})",
            String::from_utf8_lossy(&out.stderr).trim(),
            std::fs::read_to_string(w.dir.path().join("sshd.log"))
                .unwrap_or_default()
                .trim()
        );
        Ok(w)
    }

    /// [`SshWorker::start`], or `None` reported as skipped (its pool needs
    /// zfs-fuse; a tool missing): the test returns.
    pub fn start_or_skip(test: &str, tag: &str) -> Option<SshWorker> {
        if let Some(why) = zfs::unavailable() {
            super::skip(test, &why);
            return None;
        }
        match SshWorker::start(tag) {
            Ok(w) => Some(w),
            Err(why) => {
                super::skip(test, &why);
                None
            }
        }
    }

    /// `ssh <worker> <command…>`, as Kiln reaches it.
    pub fn ssh(&self, command: &[&str]) -> std::process::Output {
        Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .args(["-o", "BatchMode=yes", &self.alias])
            .args(command)
            .output_within(Duration::from_secs(120))
            .unwrap()
    }

    /// The `[[zfs.hosts]]` entry for this worker building `platforms`.
    pub fn host_toml(&self, name: &str, prefix: &str) -> String {
        format!(
            "[[zfs.hosts]]\nname = \"{name}\"\nssh = \"{}\"\nssh_config = \"{}\"\nsudo = true\npool = \"{}\"\nprefix = \"{prefix}\"\nplatforms = [\"macos\"]\narch = \"amd64\"\n",
            self.alias,
            self.ssh_config.display(),
            self.pool.name
        )
    }

    /// What the worker's sshd logged (at DEBUG1: connections, sessions
    /// and the forwarding requests a connection made).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// What sshd logged from byte `from` on, once every connection it
    /// accepted since then has ended (sshd's per-connection processes
    /// write their last lines after the client has gone, so a log read
    /// at once may lack them). Panics after `within`.
    pub fn log_of_ended(&self, from: usize, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let log = self.log();
            let since = log.get(from..).unwrap_or_default();
            let accepted = since.matches("Accepted publickey").count();
            let ended = since.matches("Disconnected from user").count()
                + since.matches("Connection closed by").count()
                + since.matches("Connection reset by").count();
            if ended >= accepted {
                return since.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{accepted} connections accepted, {ended} ended after {within:?}:\n{since}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many ssh connections sshd accepted so far.
    pub fn connections(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }

    /// The pid of the worker's listening sshd: an ancestor of every
    /// command run over a connection to it.
    pub fn sshd_pid(&self) -> u32 {
        self.sshd.as_ref().map(Spawned::id).unwrap_or(0)
    }

    /// The sshd processes serving connections: each connection's monitor
    /// (a child of the listener) and its unprivileged half (the monitor's
    /// child, running as the user). Killing both drops the connection.
    pub fn connection_pids(&self) -> Vec<u32> {
        let Some(sshd) = &self.sshd else {
            return vec![];
        };
        let children = |pid: u32| -> Vec<u32> {
            let out = Command::new("pgrep")
                .args(["-P", &pid.to_string(), "sshd"])
                .output_within(Duration::from_secs(30))
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        };
        let monitors = children(sshd.id());
        let mut all = monitors.clone();
        for m in monitors {
            all.extend(children(m));
        }
        all
    }

    /// Every process of the worker's user (`ps -u`; its failure panics,
    /// so that "none" is never "ps could not say").
    pub fn user_processes(&self) -> String {
        let out = Command::new("ps")
            .args(["-u", &self.user, "-o", "pid=,args="])
            .output_within(Duration::from_secs(30))
            .unwrap();
        // ps exits 1 when it selected nothing, with nothing on stderr.
        assert!(
            out.status.success() || out.stderr.is_empty(),
            "ps -u {}: {}",
            self.user,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for SshWorker {
    fn drop(&mut self) {
        // Its connections first (they run as the user), then sshd.
        let connections = self.connection_pids();
        if let Some(sshd) = self.sshd.take() {
            for pid in connections {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status_within(Duration::from_secs(30));
            }
            drop(sshd);
        }
        // Then the pool, the user (its guard kills what is left of its
        // processes) and the files, in field order.
    }
}

/// An ssh_config in `dir` whose `Host kiln-nowhere` is a loopback port
/// nobody listens on: a host that cannot be reached.
pub fn nowhere(dir: &Path) -> PathBuf {
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host kiln-nowhere\n  HostName 127.0.0.1\n  Port {}\n  ConnectTimeout 5\n",
            super::free_port()
        ),
    )
    .unwrap();
    config
}
