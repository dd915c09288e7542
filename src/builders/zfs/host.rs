//! Where ZFS commands run: this machine, or a worker reached over ssh.
//!
//! A remote host needs sshd, zfs and the recipe's own tools, nothing of
//! Kiln: every step is a command line or a POSIX `sh` script sent on the
//! session's stdin. A build opens one ssh connection (a ControlMaster) and
//! runs all its steps as sessions multiplexed over it; other callers (`kiln
//! gc`, `doctor`) use one connection per command. A local host runs the
//! same command lines and scripts directly, so both go through one path.
//!
//! Scripts get their stdin held open by Kiln for as long as they run
//! ([`Cmd::stdin_held`]): end-of-file on it means Kiln or the connection is
//! gone, which the provisioning script's watchdog acts on.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::ZfsHost;
use crate::process::{Cmd, ProcessError};

/// ssh's own exit status when it could not connect or lost the connection
/// (a remote command's status is passed through otherwise).
pub const SSH_FAILED: &str = "exit status: 255";

/// An open ssh connection (`ssh -M`): sessions run over it until it is
/// dropped, which ends it (and, on the host, every session's stdin).
#[derive(Debug)]
pub struct Connection {
    control: PathBuf,
    master: std::sync::Mutex<Option<tokio::process::Child>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(mut m) = self.master.lock()
            && let Some(mut child) = m.take()
        {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_file(&self.control);
    }
}

/// How commands reach one host.
#[derive(Debug, Clone)]
pub struct Host {
    pub config: ZfsHost,
    conn: Option<Arc<Connection>>,
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Host {
    /// Commands run one ssh connection each (or locally).
    pub fn new(config: &ZfsHost) -> Host {
        Host {
            config: config.clone(),
            conn: None,
        }
    }

    pub fn is_remote(&self) -> bool {
        !self.config.ssh.is_empty()
    }

    /// Open the connection every later command of this handle shares (a
    /// local host needs none). Fails as the host being unreachable.
    pub async fn connect(config: &ZfsHost) -> Result<Host, ProcessError> {
        let mut host = Host::new(config);
        if !host.is_remote() {
            return Ok(host);
        }
        static N: AtomicU64 = AtomicU64::new(0);
        sweep_dead_sockets();
        let control = std::env::temp_dir().join(format!(
            "kiln-ssh-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&control);
        let mut master = tokio::process::Command::new("ssh");
        master
            .args(host.ssh_options())
            .arg("-M")
            .arg("-N")
            .arg("-S")
            .arg(&control)
            .arg(&config.ssh)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl only sets this child's parent-death signal.
        unsafe {
            master.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let command = format!("ssh -M -N {}", config.ssh);
        let mut child = master.spawn().map_err(|source| ProcessError::Spawn {
            command: command.clone(),
            source,
        })?;
        // Up once its control socket answers; gone if ssh exits first.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut err).await;
                }
                return Err(ProcessError::Failed {
                    command,
                    status: status.to_string(),
                    stderr: err.trim().to_string(),
                });
            }
            if control.exists() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(ProcessError::Timeout { command, secs: 30 });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        host.conn = Some(Arc::new(Connection {
            control,
            master: std::sync::Mutex::new(Some(child)),
        }));
        Ok(host)
    }

    fn ssh_options(&self) -> Vec<String> {
        let mut o = Vec::new();
        if !self.config.ssh_config.is_empty() {
            o.extend(["-F".to_string(), self.config.ssh_config.clone()]);
        }
        o.extend(
            [
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=15",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
            ]
            .map(String::from),
        );
        o
    }

    /// The `ssh … host` prefix of a remote command, over the shared
    /// connection when there is one.
    fn ssh(&self) -> Cmd {
        let mut c = Cmd::new("ssh").args(self.ssh_options());
        if let Some(conn) = &self.conn {
            c = c.args(["-o", "ControlMaster=no", "-S"]).arg(&conn.control);
        }
        c.arg(&self.config.ssh)
    }

    fn sudo(&self) -> &'static str {
        if self.config.sudo { "sudo -n " } else { "" }
    }

    /// `program args…` on the host (as root through `sudo -n` when the
    /// host's user needs it).
    pub fn cmd(&self, program: &str, args: &[&str]) -> Cmd {
        if !self.is_remote() {
            return if self.config.sudo {
                Cmd::new("sudo").arg("-n").arg(program).args(args)
            } else {
                Cmd::new(program).args(args)
            };
        }
        let mut line = format!("{}{}", self.sudo(), quote(program));
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        self.ssh().arg(line)
    }

    /// A POSIX `sh` script on the host, read from stdin (held open while
    /// it runs). The script must end by itself (`exit`): it is wrapped in
    /// a brace group so that the shell has read all of it before any of it
    /// runs, and nothing but end-of-file follows.
    pub fn script(&self, script: &str) -> Cmd {
        let text = format!("{{\n{script}\n}}\n").into_bytes();
        if !self.is_remote() {
            let c = if self.config.sudo {
                Cmd::new("sudo").args(["-n", "/bin/sh", "-s"])
            } else {
                Cmd::new("/bin/sh").arg("-s")
            };
            return c.stdin_held(text);
        }
        self.ssh()
            .arg(format!("{}/bin/sh -s", self.sudo()))
            .stdin_held(text)
    }
}

/// A reverse forward over a build's connection: a port on the host's
/// loopback that reaches a listener on this machine (`ssh -O forward -R
/// 0:<local>`, the port allocated by the host's sshd). Cancelled with
/// [`Host::cancel_forward`]; gone anyway when the connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The port on the host's loopback.
    pub remote_port: u16,
    /// `0:<ip>:<port>`, as given to `-R` (a cancel names it again).
    spec: String,
}

impl Host {
    /// `ssh -S <control> -O <op> <flag> <spec> host`: a request to the
    /// connection's master, which opens or closes a forward (`-R` on the
    /// host, `-L` here).
    fn mux(&self, op: &str, flag: &str, spec: &str) -> Result<Cmd, ProcessError> {
        let Some(conn) = &self.conn else {
            return Err(ProcessError::Io {
                command: format!("ssh -O {op} {flag} {spec} {}", self.config.ssh),
                source: std::io::Error::other("no connection to forward over (a local host)"),
            });
        };
        Ok(Cmd::new("ssh")
            .args(self.ssh_options())
            .arg("-S")
            .arg(&conn.control)
            .args(["-O", op, flag, spec])
            .arg(&self.config.ssh)
            .timeout(Duration::from_secs(30)))
    }

    /// Make the Unix socket `remote` on the host reachable here at the
    /// Unix socket `local`, over this handle's connection (`-L`).
    pub async fn forward_socket(
        &self,
        local: &std::path::Path,
        remote: &str,
    ) -> Result<(), ProcessError> {
        let spec = format!("{}:{remote}", local.display());
        self.mux("forward", "-L", &spec)?.run().await.map(|_| ())
    }

    /// Make the Unix socket `local` (a listener on this machine) reachable
    /// on the host at the Unix socket `remote` (`-R <remote>:<local>`).
    /// Cancelled with the connection (the caller removes `remote`).
    pub async fn reverse_forward_socket(
        &self,
        remote: &str,
        local: &std::path::Path,
    ) -> Result<(), ProcessError> {
        let spec = format!("{remote}:{}", local.display());
        self.mux("forward", "-R", &spec)?.run().await.map(|_| ())
    }

    /// Make `local` (a listener on this machine) reachable from the host at
    /// `127.0.0.1:<remote_port>`, over this handle's connection.
    pub async fn reverse_forward(
        &self,
        local: std::net::SocketAddr,
    ) -> Result<Forward, ProcessError> {
        self.reverse_forward_on(None, local).await
    }

    /// [`Host::reverse_forward`] listening on the host's address `bind`
    /// (its sshd must allow it: `GatewayPorts clientspecified`) instead
    /// of its loopback.
    pub async fn reverse_forward_on(
        &self,
        bind: Option<std::net::IpAddr>,
        local: std::net::SocketAddr,
    ) -> Result<Forward, ProcessError> {
        let spec = match bind {
            Some(b) => format!("{b}:0:{}:{}", local.ip(), local.port()),
            None => format!("0:{}:{}", local.ip(), local.port()),
        };
        let cmd = self.mux("forward", "-R", &spec)?;
        let out = cmd.run().await?;
        // With a listen port of 0, ssh prints the port the host allocated.
        let remote_port = out
            .stdout
            .trim()
            .parse::<u16>()
            .map_err(|_| ProcessError::Failed {
                command: cmd.display(),
                status: "no allocated port".into(),
                stderr: format!(
                    "stdout {:?}, stderr {:?}",
                    out.stdout.trim(),
                    out.stderr.trim()
                ),
            })?;
        Ok(Forward { remote_port, spec })
    }

    /// Close a forward: the host stops listening on its port.
    pub async fn cancel_forward(&self, f: &Forward) -> Result<(), ProcessError> {
        self.mux("cancel", "-R", &f.spec)?.run().await.map(|_| ())
    }
}

/// Remove the control sockets (`kiln-ssh-<pid>-<n>`) of Kiln processes of
/// this machine that were killed before they could.
fn sweep_dead_sockets() {
    sweep_dead_temp("kiln-ssh-");
}

/// Remove what killed Kiln processes of this machine left in the temp dir
/// under `<prefix><pid>-…` (a file or a directory).
pub(crate) fn sweep_dead_temp(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid.to_string())
        else {
            continue;
        };
        let owner = format!("{}/{pid}", crate::process::hostname());
        if crate::process::owner_is_gone(&owner) {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Did this command fail because the host could not be reached (or the
/// connection to it was lost), rather than by the command's own doing?
pub fn unreachable(host: &Host, e: &ProcessError) -> bool {
    match e {
        ProcessError::Spawn { .. } => true,
        ProcessError::Failed { status, .. } => host.is_remote() && status == SSH_FAILED,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(ssh: &str, sudo: bool) -> Host {
        Host::new(&ZfsHost {
            name: "w".into(),
            ssh: ssh.into(),
            ssh_config: String::new(),
            sudo,
            pool: "tank".into(),
            prefix: "kiln".into(),
            platforms: vec![],
            arch: "amd64".into(),
        })
    }

    #[test]
    fn remote_commands_are_one_quoted_line() {
        let c = host("w1", true).cmd("zfs", &["list", "-o", "name,origin", "a b's"]);
        let d = c.display();
        assert!(
            d.ends_with("w1 sudo -n zfs list -o name,origin 'a b'\\''s'"),
            "{d}"
        );
        assert!(d.contains("BatchMode=yes"), "{d}");
    }

    #[tokio::test]
    async fn a_host_without_a_connection_has_nothing_to_forward_over() {
        let local: std::net::SocketAddr = "127.0.0.1:8".parse().unwrap();
        let e = host("", false).reverse_forward(local).await.unwrap_err();
        assert!(e.to_string().contains("-R 0:127.0.0.1:8"), "{e}");
        // A remote host's handle that never connected: no master to ask.
        let e = host("w1", false).reverse_forward(local).await.unwrap_err();
        assert!(e.to_string().contains("no connection"), "{e}");
    }

    #[tokio::test]
    async fn a_local_script_runs_with_its_stdin_held() {
        // EOF on stdin only once the script ended by itself.
        let o = host("", false)
            .script("read -r x || echo eof-too-early; echo done; exit 0")
            .timeout(Duration::from_secs(2))
            .run()
            .await;
        let o = o.map(|o| o.stdout);
        assert!(matches!(o, Err(ProcessError::Timeout { .. })), "{o:?}");
        let o = host("", false)
            .script("echo ran; exit 0")
            .run()
            .await
            .unwrap();
        assert_eq!(o.stdout, "ran\n");
    }
}
