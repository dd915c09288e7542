//! A ZFS worker reachable only by ssh: an `sshd` of its own on a loopback
//! port (its own host key and config), a user of its own allowed to run
//! zfs through `sudo -n`, the test's client key and known-hosts file, and
//! a zfs-fuse pool of its own. Kiln reaches it through an ssh_config file
//! (`ssh_config` in `[[zfs.hosts]]`). Everything is removed on drop: sshd
//! killed by its pid, the user and its sudoers entry deleted, the pool
//! destroyed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::zfs;

pub struct SshWorker {
    /// The ssh_config `Host` Kiln connects to.
    pub alias: String,
    pub user: String,
    pub ssh_config: PathBuf,
    pub port: u16,
    // Dropped in this order: sshd, then the pool, then the files.
    sshd: Option<Child>,
    pub pool: zfs::Pool,
    dir: tempfile::TempDir,
    sudoers: PathBuf,
}

fn run(what: &str, c: &mut Command) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl SshWorker {
    /// Start a worker named `tag`; `Err` says what is missing here (the
    /// caller reports the test skipped).
    pub fn start(tag: &str) -> Result<SshWorker, String> {
        for tool in ["/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/usr/bin/sudo"] {
            if !Path::new(tool).exists() {
                return Err(format!(
                    "{tool} is missing (scripts/services.sh up installs openssh-server and sudo)"
                ));
            }
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        // sshd reads the authorized keys as the user.
        run("chmod", Command::new("chmod").arg("755").arg(d))?;
        for key in ["host_key", "client_key"] {
            run(
                "ssh-keygen",
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", tag, "-f"])
                    .arg(d.join(key)),
            )?;
        }
        let user = format!("kw{}{tag}", std::process::id());
        let _ = Command::new("userdel").args(["-r", &user]).output();
        run(
            "useradd",
            Command::new("useradd").args(["-m", "-s", "/bin/sh", &user]),
        )?;
        // No password, but not locked: sshd refuses locked accounts.
        run("usermod", Command::new("usermod").args(["-p", "*", &user]))?;
        let sudoers = PathBuf::from(format!("/etc/sudoers.d/kiln-test-{user}"));
        std::fs::write(&sudoers, format!("{user} ALL=(ALL) NOPASSWD: ALL\n"))
            .map_err(|e| e.to_string())?;
        run("chmod", Command::new("chmod").arg("440").arg(&sudoers))?;
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))
            .map_err(|e| e.to_string())?;
        let port = super::free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin no\nAllowUsers {user}\n\
                 MaxSessions 50\nMaxStartups 50\nLogLevel INFO\n",
                d = d.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let host_pub =
            std::fs::read_to_string(d.join("host_key.pub")).map_err(|e| e.to_string())?;
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {}", host_pub.trim()),
        )
        .map_err(|e| e.to_string())?;
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
        .map_err(|e| e.to_string())?;
        // Debian's sshd refuses to start without its privilege separation dir.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = std::fs::File::create(d.join("sshd.log")).map_err(|e| e.to_string())?;
        let sshd = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("sshd: {e}"))?;
        let pool = zfs::Pool::create(&format!("kilnssh{}{tag}", std::process::id()));
        let w = SshWorker {
            alias,
            user,
            ssh_config,
            port,
            sshd: Some(sshd),
            pool,
            dir,
            sudoers,
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
        if !out.status.success() {
            return Err(format!(
                "ssh to the test worker: {} (sshd: {})",
                String::from_utf8_lossy(&out.stderr).trim(),
                std::fs::read_to_string(w.dir.path().join("sshd.log"))
                    .unwrap_or_default()
                    .trim()
            ));
        }
        Ok(w)
    }

    /// `ssh <worker> <command…>`, as Kiln reaches it.
    pub fn ssh(&self, command: &[&str]) -> std::process::Output {
        Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .args(["-o", "BatchMode=yes", &self.alias])
            .args(command)
            .output()
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

    /// How many ssh connections sshd accepted so far.
    pub fn connections(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("sshd.log"))
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count()
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
                .output()
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

    /// Every process of the worker's user.
    pub fn user_processes(&self) -> String {
        let out = Command::new("ps")
            .args(["-u", &self.user, "-o", "pid=,args="])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for SshWorker {
    fn drop(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            // Its connections first (they run as the user), then sshd.
            for pid in self.connection_pids() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        let _ = std::fs::remove_file(&self.sudoers);
        super::retry(20, Duration::from_millis(250), || {
            Command::new("userdel")
                .args(["-r", &self.user])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(true)
        });
    }
}
