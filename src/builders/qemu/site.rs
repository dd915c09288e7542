//! Where one QEMU build runs: this machine, or a Linux host with QEMU
//! reached over ssh (`[[qemu.hosts]]`).
//!
//! A build sees its site through one handle: commands (`qemu-system-*`,
//! `qemu-img`, the namespaced install boot), files it reads back (serial
//! consoles), trees it puts there (the TFTP tree, the guest's kernel), the
//! build's HTTP server made reachable there, the guest's ssh socket made
//! reachable here, and the compacted disks streamed into the registry. On this machine
//! each is the direct operation, so the local path is what it always was.
//!
//! A remote build runs in a work dir of its own on the host, over one ssh
//! connection (a ControlMaster, as ZFS builds use). The dir is held by a
//! *lease*: a session whose stdin Kiln holds open; when it closes (the
//! build ends, Kiln is killed, the connection is cut) the lease kills
//! every process that names the dir and removes it. Each long-running
//! command also runs under a watchdog on its own held stdin, so that a
//! boot killed here (its timeout, a dropped verify boot) dies there too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::builders::zfs::host::{Host, shell_quote};
use crate::config::{QemuHost, ZfsHost};
use crate::process::{Cmd, ProcessError, Streaming};

/// A remote command killed when its session's stdin closes: run in the
/// background, the shell waits for it while a reader of the held stdin
/// kills it on end-of-file.
/// (A background list's stdin is /dev/null unless redirected: the held
/// stdin is passed to the reader as fd 3.)
const WATCHDOG: &str = "exec 3<&0; \"$@\" </dev/null 3<&- & p=$!; \
    { cat <&3 >/dev/null; kill -KILL $p; } >/dev/null 2>&1 & exec 3<&-; wait $p";

/// The host a site runs on, for errors and logs.
#[derive(Debug, thiserror::Error)]
#[error("qemu host {host}: {what}: {message}")]
pub struct SiteError {
    pub host: String,
    pub what: String,
    pub message: String,
}

/// How the ssh machinery (`zfs::host`, shared with ZFS workers and ssh
/// engines) reaches `h`.
fn ssh_target(h: &QemuHost) -> ZfsHost {
    ZfsHost {
        name: h.name.clone(),
        ssh: h.ssh.clone(),
        ssh_config: h.ssh_config.clone(),
        sudo: false,
        pool: String::new(),
        prefix: String::new(),
        platforms: vec![],
        arch: "amd64".into(),
    }
}

/// One build's place on a QEMU host.
pub struct Site {
    pub name: String,
    host: Host,
    /// The build's work dir on the site.
    pub work: PathBuf,
    /// This machine's side: the work dir itself for a local site (removed
    /// on drop), a staging dir for a remote one.
    local: tempfile::TempDir,
    /// A remote site's lease on `work` (see the module doc).
    lease: Option<Streaming>,
}

impl Site {
    /// The implicit host when none is configured: this machine.
    pub fn local_host() -> QemuHost {
        QemuHost {
            name: "local".into(),
            ssh: String::new(),
            ssh_config: String::new(),
            concurrency: 1,
            work_dir: String::new(),
            accel: None,
        }
    }

    /// Open a build's work dir on `cfg` (connecting to a remote host);
    /// `local_root` holds this machine's side, named by our pid so that a
    /// later build can tell a dead process's dir.
    pub async fn open(cfg: &QemuHost, local_root: &Path) -> Result<Site, SiteError> {
        let err = |what: &str, message: String| SiteError {
            host: cfg.name.clone(),
            what: what.into(),
            message,
        };
        std::fs::create_dir_all(local_root)
            .map_err(|e| err("work dir", format!("{}: {e}", local_root.display())))?;
        crate::builders::sweep_dead_work_dirs(local_root);
        let local = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(local_root)
            .map_err(|e| err("work dir", e.to_string()))?;
        let zfs_like = ssh_target(cfg);
        if cfg.ssh.is_empty() {
            return Ok(Site {
                name: cfg.name.clone(),
                host: Host::new(&zfs_like),
                work: local.path().to_path_buf(),
                local,
                lease: None,
            });
        }
        let host = Host::connect(&zfs_like)
            .await
            .map_err(|e| err("unreachable", e.to_string()))?;
        // `<hostname>-<pid>-<n>` of this Kiln: unique across the Kilns that
        // share the host.
        let leaf = local
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let work = PathBuf::from(&cfg.work_dir).join(format!(
            "{}-{leaf}",
            crate::process::hostname().replace(['/', ' '], "_")
        ));
        let lease = lease(&host, &cfg.work_dir, &work)
            .await
            .map_err(|e| err("work dir", e))?;
        Ok(Site {
            name: cfg.name.clone(),
            host,
            work,
            local,
            lease: Some(lease),
        })
    }

    /// A remote site's connection, for tools run there directly.
    pub fn remote_host(&self) -> Option<Host> {
        self.is_remote().then(|| self.host.clone())
    }

    pub fn is_remote(&self) -> bool {
        self.lease.is_some()
    }

    /// This machine's side of the build (the work dir itself when local).
    pub fn local_dir(&self) -> &Path {
        self.local.path()
    }

    /// `program args…` on the site; a remote one dies with its session.
    pub fn cmd(&self, program: &str, args: Vec<OsString>) -> Cmd {
        if !self.is_remote() {
            return Cmd::new(program).args(args);
        }
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut all = vec!["-c", WATCHDOG, "sh", program];
        all.extend(args.iter().map(String::as_str));
        self.host.cmd("sh", &all).stdin_held(Vec::new())
    }

    /// A file on the site as text (empty when it cannot be read).
    pub async fn read(&self, path: &Path) -> String {
        if !self.is_remote() {
            return std::fs::read_to_string(path).unwrap_or_default();
        }
        let path = path.display().to_string();
        match self
            .host
            .cmd("cat", &[&path])
            .timeout(Duration::from_secs(60))
            .run()
            .await
        {
            Ok(o) => o.stdout,
            Err(e) => {
                tracing::warn!(host = %self.name, %path, error = %e, "reading a file of the build");
                String::new()
            }
        }
    }

    /// Copy the directory `from` (on this machine, symlinks followed) to
    /// `to` on a remote site; a local site's `from` is in its work dir
    /// already (its local dir is the work dir).
    pub async fn put_tree(&self, from: &Path, to: &Path) -> Result<(), SiteError> {
        let err = |message: String| SiteError {
            host: self.name.clone(),
            what: format!("copying {} to {}", from.display(), to.display()),
            message,
        };
        if !self.is_remote() {
            // The tree was laid out in the work dir itself.
            return Ok(());
        }
        let to = to.display().to_string();
        let script = format!("mkdir -p {0} && exec tar -xf - -C {0}", shell_quote(&to));
        let mut remote = self
            .host
            .cmd("sh", &["-c", &script])
            .stdin_piped()
            .spawn_stream()
            .map_err(|e| err(e.to_string()))?;
        let mut tar = tokio::process::Command::new("tar")
            .arg("-chf")
            .arg("-")
            .arg("-C")
            .arg(from)
            .arg(".")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(format!("tar: {e}")))?;
        let copied = match (tar.stdout.take(), remote.stdin.take()) {
            (Some(mut out), Some(mut inp)) => {
                let r = tokio::io::copy(&mut out, &mut inp).await;
                let _ = inp.shutdown().await;
                r.map(|_| ())
            }
            _ => Err(std::io::Error::other("no pipe")),
        };
        let local = tar.wait().await;
        let remote = remote.finish().await;
        copied.map_err(|e| err(e.to_string()))?;
        match local {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(err(format!("tar here: {s}"))),
            Err(e) => return Err(err(format!("tar here: {e}"))),
        }
        remote.map(|_| ()).map_err(|e| err(e.to_string()))
    }

    /// Move this machine's site's file `from` to `to` (a remote site's
    /// files are streamed from there instead, see [`Site::stream_into`]).
    pub async fn fetch(&self, from: &Path, to: &Path) -> Result<(), SiteError> {
        let err = |message: String| SiteError {
            host: self.name.clone(),
            what: format!("moving {} to {}", from.display(), to.display()),
            message,
        };
        if self.is_remote() {
            return Err(err("a remote site's files are streamed, not fetched".into()));
        }
        if let Some(dir) = to.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::rename(from, to)
            .or_else(|_| std::fs::copy(from, to).map(|_| ()))
            .map_err(|e| err(e.to_string()))
    }

    /// Rename a file on the site.
    pub async fn rename(&self, from: &Path, to: &Path) -> Result<(), SiteError> {
        let (f, t) = (from.display().to_string(), to.display().to_string());
        let c = if self.is_remote() {
            self.host.cmd("mv", &[&f, &t])
        } else {
            Cmd::new("mv").args([&f, &t])
        };
        c.timeout(Duration::from_secs(60))
            .run()
            .await
            .map(|_| ())
            .map_err(|e| SiteError {
                host: self.name.clone(),
                what: format!("renaming {f}"),
                message: e.to_string(),
            })
    }

    /// Stream the site's file `path` into a blob of `repo`, never landing
    /// on this machine's disk (`cat` over the connection, hashed on the
    /// way, as ZFS sends are): the upload is finished only if the whole
    /// file came, else cancelled.
    pub async fn stream_into(
        &self,
        path: &Path,
        reg: &crate::registry::Registry,
        repo: &str,
    ) -> Result<(String, u64), SiteError> {
        let err = |message: String| SiteError {
            host: self.name.clone(),
            what: format!("streaming {} into {repo}", path.display()),
            message,
        };
        let shown = path.display().to_string();
        let mut cat = self
            .host
            .cmd("cat", &[&shown])
            .spawn_stream()
            .map_err(|e| err(e.to_string()))?;
        let Some(out) = cat.stdout.take() else {
            return Err(err("no stdout".into()));
        };
        let uploaded = reg.upload_stream(repo, out).await;
        let finished = cat.finish().await;
        match (uploaded, finished) {
            (Ok(blob), Ok(_)) => {
                reg.finish_stream(&blob)
                    .await
                    .map_err(|e| err(e.to_string()))?;
                Ok((blob.digest.clone(), blob.size))
            }
            (Ok(blob), Err(e)) => {
                reg.cancel_stream(blob).await;
                Err(err(e.to_string()))
            }
            (Err(e), _) => Err(err(e.to_string())),
        }
    }

    /// The build's HTTP server as the site reaches it: its TCP port on the
    /// site's loopback and its Unix socket's path there.
    pub async fn reach_server(
        &self,
        port: u16,
        socket: &Path,
    ) -> Result<(u16, PathBuf), SiteError> {
        if !self.is_remote() {
            return Ok((port, socket.to_path_buf()));
        }
        let err = |message: String| SiteError {
            host: self.name.clone(),
            what: "forwarding the build's server".into(),
            message,
        };
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let f = self
            .host
            .reverse_forward(local)
            .await
            .map_err(|e| err(e.to_string()))?;
        let remote = self.work.join("http.sock");
        self.host
            .reverse_forward_socket(&remote.display().to_string(), socket)
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok((f.remote_port, remote))
    }

    /// The site's Unix socket `remote` as this machine reaches it.
    pub async fn reach_socket(&self, remote: &Path) -> Result<PathBuf, SiteError> {
        if !self.is_remote() {
            return Ok(remote.to_path_buf());
        }
        let local = self.local.path().join(
            remote
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "socket".into()),
        );
        let _ = std::fs::remove_file(&local);
        self.host
            .forward_socket(&local, &remote.display().to_string())
            .await
            .map_err(|e| SiteError {
                host: self.name.clone(),
                what: format!("forwarding {}", remote.display()),
                message: e.to_string(),
            })?;
        Ok(local)
    }

    /// Does the site still answer (after a failure: was it the host)?
    pub async fn answers(&self) -> bool {
        !self.is_remote()
            || self
                .host
                .cmd("true", &[])
                .timeout(Duration::from_secs(20))
                .run()
                .await
                .is_ok()
    }

    /// End the build there: every process naming the work dir killed, the
    /// dir removed, then the lease and the connection closed.
    pub async fn close(mut self) {
        if let Some(mut lease) = self.lease.take() {
            let work = shell_quote(&self.work.display().to_string());
            let script = format!("pkill -KILL -f {work}; rm -rf {work}; exit 0");
            if let Err(e) = self
                .host
                .script(&script)
                .timeout(Duration::from_secs(60))
                .run()
                .await
            {
                tracing::warn!(host = %self.name, error = %e, "removing the build's work dir (its lease removes it when its connection ends)");
            }
            lease.kill();
        }
    }
}

/// Start the lease on `work` under `root` (see the module doc); ready once
/// the dir exists. It first removes dirs under `root` whose lease is gone
/// (a host that rebooted, a lease killed outright).
async fn lease(host: &Host, root: &str, work: &Path) -> Result<Streaming, String> {
    let (root, work) = (shell_quote(root), shell_quote(&work.display().to_string()));
    let script = format!(
        "mkdir -p {root} || exit 1\n\
         for d in {root}/*/; do\n\
           [ -f \"$d/lease\" ] || continue\n\
           kill -0 \"$(cat \"$d/lease\")\" 2>/dev/null || rm -rf \"$d\"\n\
         done\n\
         mkdir {work} && echo $$ > {work}/lease || exit 1\n\
         echo ready\n\
         cat >/dev/null\n\
         pkill -KILL -f {work}\n\
         rm -rf {work}\n\
         exit 0"
    );
    let mut s = host
        .script(&script)
        .spawn_stream()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    if let Some(out) = s.stdout.as_mut() {
        let mut r = tokio::io::BufReader::new(out);
        let read = tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(_))) {
            line.clear();
        }
    }
    if line.trim() != "ready" {
        s.kill();
        let e = s.finish().await.err().map(|e| e.to_string());
        return Err(e.unwrap_or_else(|| "the work dir lease did not start".into()));
    }
    Ok(s)
}

/// A failure of the site's own machinery is the host's, never the
/// recipe's.
impl From<SiteError> for super::build::QemuError {
    fn from(e: SiteError) -> Self {
        super::build::QemuError::Host {
            host: e.host.clone(),
            message: e.to_string(),
        }
    }
}

/// `ProcessError` from a site's command, as a site error.
pub fn process(host: &str, what: &str, e: ProcessError) -> SiteError {
    SiteError {
        host: host.into(),
        what: what.into(),
        message: e.to_string(),
    }
}

/// What a QEMU host says of itself (`kiln doctor`, the inventory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// `qemu-system-* --version`'s first line.
    pub version: String,
    /// Can the ssh user open /dev/kvm?
    pub kvm: bool,
    /// Free space where builds keep their work dirs, in KiB.
    pub free_kib: u64,
    /// Builds' work dirs there now.
    pub busy: usize,
}

/// Ask a remote QEMU host (one ssh connection) whether it can build:
/// reachable, its tools there, its work dir writable. `Err` is the
/// problem and its fix.
pub async fn probe(
    h: &QemuHost,
    qemu: &crate::config::Qemu,
) -> Result<HostState, (String, String)> {
    let q = |s: &str| shell_quote(s);
    let script = format!(
        "for t in {sys} {img} socat unshare tar pkill; do \
           command -v \"$t\" >/dev/null || {{ echo \"missing: $t\"; exit 3; }}; done\n\
         mkdir -p {work} 2>/dev/null || {{ echo \"cannot create {work}\"; exit 4; }}\n\
         v=$({sys} --version | head -n 1)\n\
         kvm=no; [ -r /dev/kvm ] && [ -w /dev/kvm ] && kvm=yes\n\
         free=$(df -Pk {work} | awk 'NR==2 {{print $4}}')\n\
         busy=$(ls -1 {work} | wc -l)\n\
         echo \"$v|$kvm|$free|$busy\"; exit 0",
        sys = q(&qemu.system),
        img = q(&qemu.img),
        work = q(&h.work_dir),
    );
    let host = Host::new(&ssh_target(h));
    let out = host
        .script(&script)
        .timeout(Duration::from_secs(30))
        .run_any()
        .await;
    let (status, out) = match out {
        Ok(o) => o,
        Err(e) => return Err((format!("unreachable: {e}"), ssh_fix(h))),
    };
    let line = out.stdout.trim().to_string();
    match status.code() {
        Some(0) => {}
        Some(3) => {
            return Err((
                format!("unhealthy: {line}"),
                format!(
                    "install QEMU and the build's tools on {} (Debian: apt-get install qemu-system-x86 qemu-utils socat util-linux tar procps)",
                    h.ssh
                ),
            ));
        }
        Some(4) => {
            return Err((
                format!("unhealthy: {line}"),
                format!(
                    "make {} writable by the ssh user, or set work_dir",
                    h.work_dir
                ),
            ));
        }
        _ => {
            return Err((format!("unreachable: {}", out.stderr.trim()), ssh_fix(h)));
        }
    }
    let f: Vec<&str> = line.split('|').collect();
    match f.as_slice() {
        [v, kvm, free, busy] => Ok(HostState {
            version: v.to_string(),
            kvm: *kvm == "yes",
            free_kib: free.trim().parse().unwrap_or(0),
            busy: busy.trim().parse().unwrap_or(0),
        }),
        _ => Err((format!("unhealthy: unexpected answer {line:?}"), ssh_fix(h))),
    }
}

fn ssh_fix(h: &QemuHost) -> String {
    let f = if h.ssh_config.is_empty() {
        String::new()
    } else {
        format!(" -F {}", h.ssh_config)
    };
    format!(
        "check that `ssh{f} {} true` works without a password",
        h.ssh
    )
}

/// The inventory row of a remote QEMU host.
pub async fn report(
    h: &QemuHost,
    qemu: &crate::config::Qemu,
) -> crate::builders::inventory::HostReport {
    let mut r = stub(h);
    match probe(h, qemu).await {
        Ok(s) => r.busy = Some(s.busy),
        Err((problem, _)) => r.health = problem,
    }
    r
}

/// A remote QEMU host's row before it answers (see `inventory::within`).
pub fn stub(h: &QemuHost) -> crate::builders::inventory::HostReport {
    let mut r = crate::builders::inventory::HostReport::new(
        crate::catalogue::BuilderKind::Qemu,
        &h.name,
        &h.ssh,
    );
    r.arches = vec!["amd64".into()];
    r.slots = h.concurrency.max(1);
    r
}
