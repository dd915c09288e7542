//! The three boots of an OpenBSD image, each with its own timeout and
//! serial log, in the order the real system needs them:
//!
//! 1. **install**: the installer (OpenBSD's `auto_install` over PXE, or the
//!    test guest's) fetches `install.conf` from `http://10.0.2.2/` — port
//!    80 of its DHCP next-server, the only place autoinstall(8) looks —,
//!    then the sets and the site set, runs `install.site`, and ends (QEMU
//!    runs with `-no-reboot`, so the installer's reboot ends the boot).
//!    QEMU's user networking maps the guest's `10.0.2.2:80` to port 80 of
//!    the host's loopback, which parallel builds cannot share, so this
//!    QEMU runs in a private network namespace (`unshare --net`) whose
//!    port 80 `socat` forwards to the build's own server through a Unix
//!    socket. The installer needs nothing else from the network.
//! 2. **first boot**: the installed disk boots with network (the
//!    internet, and the build's server at `@KILN_HTTP_BASE@`); its
//!    `rc.firsttime` installs packages, opam and the compiler and powers
//!    the machine off. Not powering off within its timeout fails the build.
//! 3. **verify**: an overlay of the disk (the published disk stays as the
//!    first boot left it, cleanly shut down) boots without network
//!    (`restrict=on`: only the forwarded ssh port reaches it), in a
//!    namespace of its own whose forwarded port `socat` offers as a Unix
//!    socket in the work dir (no port to find free on a shared host; a
//!    remote host's socket is forwarded here). Kiln logs in as obuilder's
//!    QEMU sandbox does — the image's user with the worker's key — and
//!    runs the smoke test, whose answer must name the catalogue's
//!    compiler. Then this QEMU is killed.
//!
//! The namespaces are user namespaces too (`unshare -r`): a remote host's
//! ssh user needs no privilege.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::build::{Boot, QemuError, QemuSpec};
use super::site::Site;
use crate::process::{Cmd, ProcessError};

/// Which boot, for logs and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Install,
    FirstBoot,
    Verify,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Install => "install boot",
            Stage::FirstBoot => "first boot",
            Stage::Verify => "verify boot",
        }
    }
}

/// The login obuilder's QEMU sandbox uses: a user, the worker's key, a
/// port forwarded to the guest's 22.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: String,
    /// The private key; its `.pub` is what the image authorizes.
    pub key: PathBuf,
    /// The smoke test run over ssh; its output must contain the expected
    /// compiler answer.
    pub command: String,
}

/// QEMU's own arguments for one boot of `disks` (the system disk first,
/// then the download-cache disk: `sd0`, `sd1` to OpenBSD), without the
/// program.
fn qemu_args(spec: &QemuSpec, disks: &[PathBuf], serial: &Path, net: String) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    for s in [
        "-accel",
        &spec.accel,
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.cpus.to_string(),
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-display",
        "none",
        "-netdev",
        &net,
        "-device",
        "virtio-net-pci,netdev=n0",
    ] {
        push(s);
    }
    a.push("-serial".into());
    a.push(format!("file:{}", serial.display()).into());
    for disk in disks {
        a.push("-drive".into());
        a.push(format!("file={},if=virtio,format=qcow2", disk.display()).into());
    }
    a
}

/// Direct kernel boot (the test guest) or the boot order (PXE for the
/// installer, the disk afterwards).
fn boot_args(spec: &QemuSpec, stage: Stage, probe: &str) -> Vec<OsString> {
    let kernel = |k: &super::build::Kernel| -> Vec<OsString> {
        vec![
            "-kernel".into(),
            k.kernel.clone().into(),
            "-initrd".into(),
            k.initrd.clone().into(),
            "-append".into(),
            k.append.replace("{probe}", probe).into(),
        ]
    };
    match &spec.boot {
        Boot::Kernel(k) => kernel(k),
        Boot::Pxe { .. } if stage == Stage::Install => vec!["-boot".into(), "n".into()],
        Boot::Pxe { then: Some(k), .. } => kernel(k),
        Boot::Pxe { .. } => vec!["-boot".into(), "c".into()],
    }
}

/// The install boot: QEMU in its own network namespace, whose port 80 is
/// the build's server.
pub async fn install(
    spec: &QemuSpec,
    site: &Site,
    disk: &Path,
    serial: &Path,
    socket: &Path,
    port: u16,
) -> Result<(), QemuError> {
    let net = match &spec.boot {
        Boot::Kernel(_) => "user,id=n0,bootfile=auto_install".to_string(),
        Boot::Pxe { bootfile, .. } => format!(
            "user,id=n0,tftp={},bootfile={bootfile}",
            site.work.join("tftp").display()
        ),
    };
    let mut qemu = qemu_args(spec, &[disk.to_path_buf()], serial, net);
    qemu.extend(boot_args(spec, Stage::Install, &probe_url(port)));
    // In the namespace: loopback up, port 80 forwarded to the server's
    // Unix socket, then QEMU as the namespace's init (so that when it
    // ends, the kernel ends socat too).
    let script = "ip link set lo up && \
        { socat TCP-LISTEN:80,bind=127.0.0.1,reuseaddr,fork UNIX-CONNECT:\"$0\" & } && \
        sleep 0.2 && exec \"$@\"";
    let cmd = site
        .cmd("unshare", namespaced(script, socket, spec, qemu))
        .timeout(spec.timeouts.install);
    let result = cmd.run().await;
    finish(
        spec,
        site,
        Stage::Install,
        serial,
        result,
        spec.install_marker.as_deref(),
    )
    .await
}

/// `unshare` arguments running `script` (with `$0` = `path`, `$@` = QEMU)
/// as the init of new user, network and PID namespaces: no privilege
/// needed on the host, any port free inside, everything gone with QEMU.
fn namespaced(script: &str, path: &Path, spec: &QemuSpec, qemu: Vec<OsString>) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "-r",
        "--net",
        "--pid",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        script,
    ]
    .map(OsString::from)
    .to_vec();
    a.push(path.into());
    a.push(spec.system.clone().into());
    a.extend(qemu);
    a
}

/// The first boot: the installed disk (and the download-cache disk it
/// formats) with network; it must power off.
pub async fn first_boot(
    spec: &QemuSpec,
    site: &Site,
    disks: &[PathBuf],
    serial: &Path,
    port: u16,
) -> Result<(), QemuError> {
    let mut qemu = qemu_args(spec, disks, serial, "user,id=n0".into());
    qemu.extend(boot_args(spec, Stage::FirstBoot, &probe_url(port)));
    let cmd = site
        .cmd(&spec.system, qemu)
        .timeout(spec.timeouts.first_boot);
    let result = cmd.run().await;
    finish(spec, site, Stage::FirstBoot, serial, result, None).await
}

/// The guest's ssh port inside the verify boot's namespace.
const GUEST_SSH: u16 = 2222;

/// The verify boot: an overlay, no network but the forwarded ssh port
/// (in a namespace of its own, reached through a Unix socket in the work
/// dir); log in, run the smoke test, then stop the guest.
pub async fn verify(
    spec: &QemuSpec,
    site: &Site,
    overlays: &[PathBuf],
    serial: &Path,
    port: u16,
) -> Result<String, QemuError> {
    let net = format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{GUEST_SSH}-:22");
    let mut qemu = qemu_args(spec, overlays, serial, net);
    qemu.extend(boot_args(spec, Stage::Verify, &probe_url(port)));
    let sock = site.work.join("ssh.sock");
    let script = format!(
        "ip link set lo up && \
         {{ socat UNIX-LISTEN:\"$0\",fork,unlink-early TCP:127.0.0.1:{GUEST_SSH} & }} && \
         exec \"$@\""
    );
    let here = site.reach_socket(&sock).await?;
    let cmd = site
        .cmd("unshare", namespaced(&script, &sock, spec, qemu))
        .timeout(spec.timeouts.verify);
    let mut guest = Box::pin(cmd.run());
    let checked = tokio::select! {
        ended = &mut guest => {
            // The guest ended (or timed out) before the login succeeded.
            let source = match ended {
                Err(e) => e,
                Ok(_) => ProcessError::Failed {
                    command: spec.system.clone(),
                    status: "powered off".into(),
                    stderr: "the guest powered off before the ssh login".into(),
                },
            };
            Err(boot_error(spec, Stage::Verify, source))
        }
        r = login_and_check(spec, &here) => r,
    };
    // Dropping the QEMU future kills it (and on a remote host its
    // watchdog): the overlay is thrown away.
    drop(guest);
    append_log(&spec.log, Stage::Verify, &site.read(serial).await);
    checked
}

/// A file the server always has, as the first boot reaches it.
fn probe_url(port: u16) -> String {
    format!("http://10.0.2.2:{port}/install.conf")
}

/// ssh to the guest as obuilder's sandbox logs in (the user, the
/// worker's key), through the verify boot's socket.
fn ssh(login: &Login, socket: &Path) -> Cmd {
    Cmd::new("ssh")
        .arg(format!("{}@localhost", login.user))
        .arg("-o")
        .arg(format!(
            "ProxyCommand=socat - UNIX-CONNECT:{}",
            socket.display()
        ))
        .args(["-o", "StrictHostKeyChecking=no"])
        .arg("-i")
        .arg(&login.key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
        ])
        .timeout(Duration::from_secs(60))
}

/// Poll the login as obuilder does (`ssh … exit`, once a second), then
/// run the smoke test; its output must contain the expected answer.
async fn login_and_check(spec: &QemuSpec, socket: &Path) -> Result<String, QemuError> {
    let login = &spec.login;
    while let Err(e) = ssh(login, socket).arg("exit").run().await {
        tracing::debug!(target = %spec.target, error = %e, "waiting for the guest's ssh");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let out = ssh(login, socket)
        .arg(&login.command)
        .run()
        .await
        .map_err(|e| QemuError::Login {
            target: spec.target.clone(),
            message: format!("{}: {e}", login.command),
            log: spec.log.clone(),
        })?;
    let answer = out.stdout.trim().to_string();
    let entry = format!(
        "# kiln: verify boot, over ssh as {}@localhost: (the guest's port 22): {}\n{answer}\n",
        login.user, login.command
    );
    append_text(&spec.log, &entry);
    if !answer.contains(&spec.verify_expect) {
        return Err(QemuError::Console {
            target: spec.target.clone(),
            stage: Stage::Verify.as_str(),
            expected: spec.verify_expect.clone(),
            log: spec.log.clone(),
        });
    }
    if let Some(cache) = &spec.cache {
        check_cache(spec, cache, socket).await?;
    }
    Ok(answer)
}

/// The download-cache disk as obuilder uses it: mounted by the platform's
/// command, writable by the user, unmounted cleanly.
async fn check_cache(
    spec: &QemuSpec,
    cache: &super::build::CacheDisk,
    socket: &Path,
) -> Result<(), QemuError> {
    let probe = format!("{}/.kiln-verify", cache.dir);
    let script = format!(
        "{} && touch {probe} && rm {probe} && doas umount {}",
        cache.mount, cache.dir
    );
    let out = ssh(&spec.login, socket).arg(&script).run().await;
    let entry = format!(
        "# kiln: verify boot, the download-cache disk over ssh: {script}\n{}\n",
        match &out {
            Ok(o) => format!("{}{}", o.stdout, o.stderr),
            Err(e) => e.to_string(),
        }
    );
    append_text(&spec.log, &entry);
    out.map(|_| ()).map_err(|e| QemuError::Login {
        target: spec.target.clone(),
        message: format!("the download-cache disk does not mount and take the user's files: {e}"),
        log: spec.log.clone(),
    })
}

fn boot_error(spec: &QemuSpec, stage: Stage, source: ProcessError) -> QemuError {
    QemuError::Boot {
        target: spec.target.clone(),
        stage: stage.as_str(),
        source: Box::new(source),
        log: spec.log.clone(),
    }
}

/// A boot that ran to its end: its console goes to the log, and `expect`
/// must be on it.
async fn finish(
    spec: &QemuSpec,
    site: &Site,
    stage: Stage,
    serial: &Path,
    result: Result<crate::process::Output, ProcessError>,
    expect: Option<&str>,
) -> Result<(), QemuError> {
    let console = site.read(serial).await;
    append_log(&spec.log, stage, &console);
    result.map_err(|source| boot_error(spec, stage, source))?;
    match expect {
        Some(marker) if !console.contains(marker) => Err(QemuError::Console {
            target: spec.target.clone(),
            stage: stage.as_str(),
            expected: marker.to_string(),
            log: spec.log.clone(),
        }),
        _ => Ok(()),
    }
}

fn append_log(log: &Path, stage: Stage, console: &str) {
    append_text(
        log,
        &format!("# kiln: {}, serial console:\n{console}\n", stage.as_str()),
    );
}

fn append_text(log: &Path, entry: &str) {
    use std::io::Write;
    let r = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .and_then(|mut f| f.write_all(entry.as_bytes()));
    if let Err(e) = r {
        tracing::warn!(log = %log.display(), error = %e, "cannot write the build log");
    }
}
