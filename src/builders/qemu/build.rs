//! One OpenBSD image: served installer tree, install boot, first boot,
//! verify boot (see `boots`), then compaction.
//!
//! Each build gets a private work directory and its own HTTP server (an
//! ephemeral TCP port and a Unix socket in the work dir, see `tree`), so
//! any number of builds run side by side: no shared ports, no shared paths.
//! Each boot's serial console goes to the work dir and then into the
//! target's log. Any failure publishes nothing and leaves nothing: QEMU is
//! killed (timeouts kill its whole process group; a killed Kiln takes it
//! along), the work directory goes, the output is not written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::boots::{self, Login};
use super::img::{Img, ImgError};
use super::site::Site;
use super::tree::Tree;
use crate::process::ProcessError;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{target}: {message}")]
    Setup { target: String, message: String },
    #[error(transparent)]
    Img(#[from] ImgError),
    #[error("{target}: {stage} failed: {source} (log: {log})")]
    Boot {
        target: String,
        stage: &'static str,
        source: Box<ProcessError>,
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
    /// The QEMU host itself: unreachable, its connection lost, its work
    /// dir or forwards refused. Infrastructure: the build may move on.
    #[error("{message}")]
    Host { host: String, message: String },
    #[error("{target}: verify boot: the ssh login worked but {message} (log: {log})")]
    Login {
        target: String,
        message: String,
        log: PathBuf,
    },
}

impl QemuError {
    /// Did ssh itself fail (exit 255: the connection to a remote QEMU host
    /// lost), rather than the command it ran?
    pub fn lost_connection(&self) -> bool {
        let ssh_failed = |e: &ProcessError| {
            matches!(e, ProcessError::Failed { status, .. }
                if status == crate::builders::zfs::host::SSH_FAILED)
        };
        match self {
            QemuError::Boot { source, .. } => ssh_failed(source),
            QemuError::Img(ImgError::Process(e)) => ssh_failed(e),
            _ => false,
        }
    }
}

/// Direct kernel boot of the test guest (`-kernel/-initrd/-append`): the
/// guest tells an installed disk from an empty one itself. `{probe}` in the
/// command line becomes the server's address as the first boot reaches it.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
}

/// How the guest boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// The test guest, the same kernel for every boot.
    Kernel(Kernel),
    /// OpenBSD: the installer from QEMU's TFTP (`tftp=DIR,bootfile=FILE`),
    /// the disk afterwards. `tftp` is what the boot loader fetches
    /// (`auto_install` = the release's `pxeboot`, `bsd.rd`, `etc/boot.conf`),
    /// laid out in the build's work dir: verified sets and rendered recipes,
    /// nothing placed by hand. `then`: the test guest, whose disk has no
    /// boot loader, boots its kernel after a PXE install.
    Pxe {
        tftp: Tree,
        bootfile: String,
        then: Option<Kernel>,
    },
}

/// The download-cache disk upstream's first boot prepares: a second disk,
/// attached to the first and verify boots, which `rc.firsttime` formats
/// (OpenBSD: one FFS partition, `sd1a`) and hands to the user. obuilder
/// mounts a copy of it over `~/.opam/download-cache` in every job; Kiln
/// publishes it compacted beside the system disk.
#[derive(Debug, Clone)]
pub struct CacheDisk {
    /// Virtual size (`qemu-img create`).
    pub size: String,
    /// Run over ssh in the verify boot, as obuilder's sandbox does before a
    /// job (OpenBSD: `doas fsck -y /dev/sd1a && doas mount /dev/sd1a DIR`).
    pub mount: String,
    /// Where it is mounted: the verify boot checks the user can write there.
    pub dir: String,
}

/// Each boot's own limit.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub install: Duration,
    pub first_boot: Duration,
    pub verify: Duration,
}

#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub target: String,
    pub system: String,
    /// `kvm` or `tcg` (set per host when the build is routed).
    pub accel: String,
    /// The target's own `vars.accel`, which no host overrides.
    pub accel_var: Option<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub disk_size: String,
    pub boot: Boot,
    /// What the build's server offers (see `installer`).
    pub tree: Tree,
    /// Console line the install prints on success (none: power-off is success).
    pub install_marker: Option<String>,
    /// What the smoke test must answer (the catalogue's compiler).
    pub verify_expect: String,
    pub login: Login,
    pub cache: Option<CacheDisk>,
    pub timeouts: Timeouts,
    pub log: PathBuf,
    /// Parent of the private per-build work directory.
    pub work_root: PathBuf,
    /// The compacted disk's final path.
    pub output: PathBuf,
}

/// A built disk and the site it was built on, still open: deliver the
/// disk, then [`Site::close`] it.
pub struct Built {
    pub out: QemuOutput,
    pub site: Site,
}

/// A verified, compacted disk: on this machine, or (from a remote QEMU
/// host, until delivered) in the build's work dir there, its `sha256` and
/// `size` then known only once it is streamed.
#[derive(Debug, Clone)]
pub struct QemuOutput {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub virtual_size: u64,
    /// The compacted download-cache disk, when the platform has one.
    pub cache: Option<Box<QemuOutput>>,
}

/// Build, verify and compact on `host`; on any failure nothing is left
/// behind, here or there. A Kiln killed outright takes QEMU with it (see
/// `process`, and `site` for a remote host), and the next build removes
/// its work directory.
pub async fn build(
    img: &Img,
    spec: &QemuSpec,
    host: &crate::config::QemuHost,
) -> Result<Built, QemuError> {
    let setup = |message: String| QemuError::Setup {
        target: spec.target.clone(),
        message,
    };
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| setup(format!("{}: {e}", dir.display())))?;
    }
    std::fs::write(
        &spec.log,
        format!("# kiln: {}, on qemu host {}\n", spec.target, host.name),
    )
    .map_err(|e| setup(format!("{}: {e}", spec.log.display())))?;
    let site = Site::open(host, &spec.work_root).await?;
    let img = match site.remote_host() {
        Some(h) => img.on(h),
        None => img.clone(),
    };
    let result = async {
        // The server listens on this machine; the site reaches it.
        let socket = site.local_dir().join("http.sock");
        let server_err = |e: std::io::Error| QemuError::Setup {
            target: spec.target.clone(),
            message: format!("HTTP server: {e}"),
        };
        let (tcp, port) = super::tree::bind().await.map_err(server_err)?;
        let (site_port, site_socket) = site.reach_server(port, &socket).await?;
        let server = super::tree::serve(spec.tree.clone(), tcp, &socket, site_port, site_socket)
            .map_err(server_err)?;
        let r = run(&img, spec, &site, &server).await;
        drop(server);
        r
    }
    .await;
    // A remote boot that failed because its host went away (the
    // connection cut, the host down) is the host's, not the recipe's.
    let result = match result {
        Err(e)
            if site.is_remote()
                && !matches!(e, QemuError::Host { .. })
                && (e.lost_connection() || !site.answers().await) =>
        {
            Err(QemuError::Host {
                host: site.name.clone(),
                message: format!("qemu host {} stopped answering: {e}", site.name),
            })
        }
        r => r,
    };
    match result {
        // Delivered while the site is open (a remote site's disks are
        // streamed from its work dir); the caller closes it.
        Ok(out) => Ok(Built { out, site }),
        Err(e) => {
            site.close().await;
            Err(e)
        }
    }
}

async fn run(
    img: &Img,
    spec: &QemuSpec,
    site: &Site,
    server: &super::tree::Server,
) -> Result<QemuOutput, QemuError> {
    let work = &site.work;
    let disk = work.join("disk.qcow2");
    img.create(&disk, &spec.disk_size).await?;
    let cache = match &spec.cache {
        Some(c) => {
            let path = work.join("download-cache.qcow2");
            img.create(&path, &c.size).await?;
            Some(path)
        }
        None => None,
    };
    let mut spec = spec.clone();
    if let Boot::Pxe { tftp, .. } = &spec.boot {
        let staged = site.local_dir().join("tftp");
        super::tree::lay_out(tftp, &staged).map_err(|e| QemuError::Setup {
            target: spec.target.clone(),
            message: format!("TFTP tree in {}: {e}", staged.display()),
        })?;
        site.put_tree(&staged, &work.join("tftp")).await?;
    }
    stage_kernels(&mut spec, site).await?;
    let spec = &spec;
    let serial = |stage: &str| work.join(format!("{stage}.serial"));
    let disks = |root: &Path, cache: Option<&PathBuf>| {
        let mut v = vec![root.to_path_buf()];
        v.extend(cache.cloned());
        v
    };
    boots::install(
        spec,
        site,
        &disk,
        &serial("install"),
        &server.site_socket,
        server.site_port,
    )
    .await?;
    let first = disks(&disk, cache.as_ref());
    boots::first_boot(spec, site, &first, &serial("firstboot"), server.site_port).await?;
    // The published disks stay as the first boot left them.
    let overlay = work.join("verify.qcow2");
    img.overlay(&disk, &overlay).await?;
    let cache_overlay = match &cache {
        Some(c) => {
            let o = work.join("verify-cache.qcow2");
            img.overlay(c, &o).await?;
            Some(o)
        }
        None => None,
    };
    let verify = disks(&overlay, cache_overlay.as_ref());
    let answer = boots::verify(spec, site, &verify, &serial("verify"), server.site_port).await?;
    tracing::info!(target = %spec.target, host = %site.name, %answer, "verify boot: smoke test over ssh");
    let mut out = compact(img, spec, site, &disk, &spec.output).await?;
    if let Some(c) = &cache {
        let dest = cache_output(&spec.output);
        let cached = compact(img, spec, site, c, &dest).await;
        match cached {
            Ok(c) => out.cache = Some(Box::new(c)),
            Err(e) => {
                let _ = std::fs::remove_file(&out.path);
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// The test guest's kernel and initramfs, put beside the build on a
/// remote site (the paths QEMU opens are the site's).
async fn stage_kernels(spec: &mut QemuSpec, site: &Site) -> Result<(), QemuError> {
    if !site.is_remote() {
        return Ok(());
    }
    let kernel = match &mut spec.boot {
        Boot::Kernel(k) => Some(k),
        Boot::Pxe { then, .. } => then.as_mut(),
    };
    let Some(k) = kernel else {
        return Ok(());
    };
    let staged = site.local_dir().join("boot");
    std::fs::create_dir_all(&staged).map_err(|e| QemuError::Setup {
        target: spec.target.clone(),
        message: format!("{}: {e}", staged.display()),
    })?;
    for (from, name) in [(&k.kernel, "kernel"), (&k.initrd, "initrd")] {
        let to = staged.join(name);
        std::fs::hard_link(from, &to)
            .or_else(|_| std::fs::copy(from, &to).map(|_| ()))
            .map_err(|e| QemuError::Setup {
                target: spec.target.clone(),
                message: format!("{}: {e}", from.display()),
            })?;
    }
    let there = site.work.join("boot");
    site.put_tree(&staged, &there).await?;
    k.kernel = there.join("kernel");
    k.initrd = there.join("initrd");
    Ok(())
}

/// Where the compacted download-cache disk goes, beside the system disk.
pub fn cache_output(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".qcow2").to_string())
        .unwrap_or_default();
    output.with_file_name(format!("{name}.download-cache.qcow2"))
}

/// Compact and check on the site, bring the result here and hash it; only
/// then does the output exist.
async fn compact(
    img: &Img,
    spec: &QemuSpec,
    site: &Site,
    disk: &Path,
    output: &Path,
) -> Result<QemuOutput, QemuError> {
    let setup = |message: String| QemuError::Setup {
        target: spec.target.clone(),
        message,
    };
    let compact = site.work.join("compact.qcow2");
    img.compact(disk, &compact).await?;
    img.check(&compact).await?;
    let info = img.info(&compact).await?;
    if site.is_remote() {
        // Stays there, named for its role: streamed into the registry
        // from the site when delivered (its digest known then).
        let there = site.work.join(
            output
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "disk.qcow2".into()),
        );
        site.rename(&compact, &there).await?;
        return Ok(QemuOutput {
            path: there,
            sha256: String::new(),
            size: 0,
            virtual_size: info.virtual_size,
            cache: None,
        });
    }
    site.fetch(&compact, output).await?;
    let (sha256, size) = crate::registry::sha256_file(output)
        .await
        .map_err(|e| setup(format!("{}: {e}", output.display())))?;
    Ok(QemuOutput {
        path: output.to_path_buf(),
        sha256,
        size,
        virtual_size: info.virtual_size,
        cache: None,
    })
}
