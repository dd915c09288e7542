//! One unattended QEMU install, verified by a second boot.
//!
//! Each build gets a private work directory and its own HTTP server on an
//! ephemeral port (the guest reaches it as 10.0.2.2 through QEMU's user
//! networking), so any number of builds run side by side: no fixed ports,
//! no shared paths. The serial console goes to the target's log. The
//! install must power the guest off within the timeout (else QEMU's whole
//! process group is killed and the build fails); the verify boot must print
//! the smoke test's answer on the console. Then the disk is compacted
//! (`qemu-img convert -O qcow2 -c`), checked and hashed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::img::{Img, ImgError};
use crate::process::{Cmd, ProcessError};

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{target}: {message}")]
    Setup { target: String, message: String },
    #[error(transparent)]
    Img(#[from] ImgError),
    #[error("{target}: {stage} boot failed: {source} (log: {log})")]
    Boot {
        target: String,
        stage: &'static str,
        source: ProcessError,
        log: PathBuf,
    },
    #[error(
        "{target}: {stage} did not report success: expected {expected:?} on the console (log: {log})"
    )]
    Console {
        target: String,
        stage: &'static str,
        expected: String,
        log: PathBuf,
    },
}

/// How the guest boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// Direct kernel boot (`-kernel/-initrd/-append`); `{url}` in the
    /// command lines is replaced by the HTTP server's address.
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        install_append: String,
        verify_append: String,
    },
    /// Network boot from QEMU's TFTP (`tftp=DIR,bootfile=FILE`), as
    /// OpenBSD's auto_install does; verification boots the disk.
    Pxe { tftp_dir: PathBuf, bootfile: String },
}

#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub target: String,
    pub system: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub disk_size: String,
    pub boot: Boot,
    /// Files the HTTP server offers the guest (name → bytes).
    pub files: BTreeMap<String, Vec<u8>>,
    /// Console line the install prints on success (none: power-off is success).
    pub install_marker: Option<String>,
    /// Console text the verify boot must print (the smoke test's answer).
    pub verify_expect: String,
    pub timeout: Duration,
    pub log: PathBuf,
    /// Parent of the private per-build work directory.
    pub work_root: PathBuf,
    /// The compacted disk's final path.
    pub output: PathBuf,
}

#[derive(Debug, Clone)]
pub struct QemuOutput {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub virtual_size: u64,
}

type Files = Arc<BTreeMap<String, Vec<u8>>>;

async fn serve_file(
    State(files): State<Files>,
    UrlPath(name): UrlPath<String>,
) -> axum::response::Response {
    match files.get(&name) {
        Some(b) => b.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn qemu_cmd(spec: &QemuSpec, disk: &Path, serial: &Path) -> Cmd {
    Cmd::new(&spec.system)
        .args(["-accel", spec.accel.as_str()])
        .args([
            "-m",
            &spec.memory_mib.to_string(),
            "-smp",
            &spec.cpus.to_string(),
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-display",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
        .timeout(spec.timeout)
}

/// Build, verify and compact; on any failure nothing is left behind (the
/// work directory goes, QEMU is killed, the output is not written).
/// A Kiln killed outright takes QEMU with it (see `process`), and the next
/// build removes its work directory.
pub async fn build(img: &Img, spec: &QemuSpec) -> Result<QemuOutput, QemuError> {
    let setup = |message: String| QemuError::Setup {
        target: spec.target.clone(),
        message,
    };
    std::fs::create_dir_all(&spec.work_root)
        .map_err(|e| setup(format!("{}: {e}", spec.work_root.display())))?;
    crate::builders::sweep_dead_work_dirs(&spec.work_root);
    // Named by our pid, so that a later build can tell a dead process's dir.
    let work = tempfile::Builder::new()
        .prefix(&format!("{}-", std::process::id()))
        .tempdir_in(&spec.work_root)
        .map_err(|e| setup(format!("work dir: {e}")))?;
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| setup(format!("{}: {e}", dir.display())))?;
    }
    // The HTTP server, on an ephemeral port, for this build only.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| setup(format!("HTTP server: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| setup(e.to_string()))?
        .port();
    // Recipes carry placeholders for this server's address (see
    // `qemu::HTTP_BASE`): fill them in now that the port is known.
    let (base, host) = (
        format!("http://10.0.2.2:{port}"),
        format!("10.0.2.2:{port}"),
    );
    let files: Files = Arc::new(
        spec.files
            .iter()
            .map(|(k, v)| {
                let v = match String::from_utf8(v.clone()) {
                    Ok(s) => s
                        .replace(super::HTTP_BASE, &base)
                        .replace(super::HTTP_HOST, &host)
                        .into_bytes(),
                    Err(e) => e.into_bytes(),
                };
                (k.clone(), v)
            })
            .collect(),
    );
    let app = axum::Router::new()
        .route("/{name}", axum::routing::get(serve_file))
        .with_state(files);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let result = run(img, spec, work.path(), port).await;
    server.abort();
    result
}

async fn run(img: &Img, spec: &QemuSpec, work: &Path, port: u16) -> Result<QemuOutput, QemuError> {
    let url = format!("http://10.0.2.2:{port}");
    let disk = work.join("disk.qcow2");
    img.create(&disk, &spec.disk_size).await?;
    install_boot(spec, &disk, &work.join("install.serial"), &url).await?;
    verify_boot(spec, &disk, &work.join("verify.serial"), &url).await?;
    compact(img, spec, &disk, work).await
}

/// Run one boot; its console goes to the log, and `expect` must be on it.
async fn boot(
    spec: &QemuSpec,
    cmd: Cmd,
    stage: &'static str,
    serial: &Path,
    expect: Option<&str>,
) -> Result<(), QemuError> {
    let result = cmd.run().await;
    append_log(&spec.log, stage, serial, stage == "install");
    if let Err(source) = result {
        return Err(QemuError::Boot {
            target: spec.target.clone(),
            stage,
            source,
            log: spec.log.clone(),
        });
    }
    let console = std::fs::read_to_string(serial).unwrap_or_default();
    match expect {
        Some(marker) if !console.contains(marker) => Err(QemuError::Console {
            target: spec.target.clone(),
            stage,
            expected: marker.to_string(),
            log: spec.log.clone(),
        }),
        _ => Ok(()),
    }
}

/// The install boot: the guest fetches its recipe from our HTTP server
/// (kernel boot) or boots auto_install over TFTP (PXE), installs onto the
/// disk and powers off.
async fn install_boot(
    spec: &QemuSpec,
    disk: &Path,
    serial: &Path,
    url: &str,
) -> Result<(), QemuError> {
    let mut cmd = qemu_cmd(spec, disk, serial);
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            install_append,
            ..
        } => {
            cmd = cmd
                .arg("-kernel")
                .arg(kernel)
                .arg("-initrd")
                .arg(initrd)
                .arg("-append")
                .arg(install_append.replace("{url}", url))
                .args([
                    "-netdev",
                    "user,id=n0",
                    "-device",
                    "virtio-net-pci,netdev=n0",
                ]);
        }
        Boot::Pxe { tftp_dir, bootfile } => {
            cmd = cmd
                .args(["-boot", "n", "-netdev"])
                .arg(format!(
                    "user,id=n0,tftp={},bootfile={bootfile}",
                    tftp_dir.display()
                ))
                .args(["-device", "virtio-net-pci,netdev=n0"]);
        }
    }
    boot(spec, cmd, "install", serial, spec.install_marker.as_deref()).await
}

/// The verify boot: the installed disk once more, without network; its
/// console must show the smoke test's answer.
async fn verify_boot(
    spec: &QemuSpec,
    disk: &Path,
    serial: &Path,
    url: &str,
) -> Result<(), QemuError> {
    let mut cmd = qemu_cmd(spec, disk, serial).args(["-nic", "none"]);
    if let Boot::Kernel {
        kernel,
        initrd,
        verify_append,
        ..
    } = &spec.boot
    {
        cmd = cmd
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(verify_append.replace("{url}", url));
    }
    boot(spec, cmd, "verify", serial, Some(&spec.verify_expect)).await
}

/// Compact, check, hash; only then does the output exist.
async fn compact(
    img: &Img,
    spec: &QemuSpec,
    disk: &Path,
    work: &Path,
) -> Result<QemuOutput, QemuError> {
    let setup = |message: String| QemuError::Setup {
        target: spec.target.clone(),
        message,
    };
    let compact = work.join("compact.qcow2");
    img.compact(disk, &compact).await?;
    img.check(&compact).await?;
    let info = img.info(&compact).await?;
    let (sha256, size) = crate::registry::sha256_file(&compact)
        .await
        .map_err(|e| setup(format!("{}: {e}", compact.display())))?;
    if let Some(dir) = spec.output.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::rename(&compact, &spec.output)
        .or_else(|_| std::fs::copy(&compact, &spec.output).map(|_| ()))
        .map_err(|e| setup(format!("{}: {e}", spec.output.display())))?;
    Ok(QemuOutput {
        path: spec.output.clone(),
        sha256,
        size,
        virtual_size: info.virtual_size,
    })
}

fn append_log(log: &Path, stage: &str, serial: &Path, truncate: bool) {
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    let entry = format!("# kiln: {stage} boot, serial console:\n{text}\n");
    let r = if truncate {
        std::fs::write(log, entry)
    } else {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .and_then(|mut f| f.write_all(entry.as_bytes()))
    };
    if let Err(e) = r {
        tracing::warn!(log = %log.display(), error = %e, "cannot write the build log");
    }
}
