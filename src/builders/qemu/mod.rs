//! OpenBSD qcow2 disk images built unattended under QEMU.

pub mod boots;
pub mod build;
pub mod disks;
pub mod fetch;
pub mod img;
pub mod installer;
mod route;
pub mod site;
pub mod tree;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::builders::hosts;
use crate::builders::{
    BoxFuture, BuildJob, BuildOutput, Builder, artifact_annotations, artifact_name,
};
use crate::catalogue::{Arch, BuilderKind};
use crate::config::{Config, Qemu};
use crate::model::{ArtifactKind, Failure, FailureKind};
use crate::plan::{Prepared, Target};
use crate::registry::artifact as oci;

/// Placeholders rendered into recipes at plan time and replaced by the
/// build's own HTTP server address, so the ephemeral port never enters the
/// build key.
pub const HTTP_BASE: &str = "@KILN_HTTP_BASE@";
pub const HTTP_HOST: &str = "@KILN_HTTP_HOST@";
/// Where the build's server lays out the source mirror
/// (`{{sources_url}}` = `@KILN_HTTP_BASE@/sources`).
pub const SOURCES: &str = "sources";

/// KVM is usable when /dev/kvm opens read-write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// `auto` → KVM when /dev/kvm opens, TCG otherwise.
pub fn accel(qemu: &Qemu) -> String {
    match qemu.accel.as_str() {
        "auto" if kvm_usable() => "kvm".into(),
        "auto" => "tcg".into(),
        other => other.to_string(),
    }
}

impl build::QemuError {
    /// A boot that fails, hangs or never reports success is the recipe's;
    /// QEMU or qemu-img that cannot run, or the host's own setup, is
    /// infrastructure.
    pub fn kind(&self) -> FailureKind {
        use crate::process::ProcessError;
        match self {
            build::QemuError::Setup { .. }
            | build::QemuError::Img(_)
            | build::QemuError::Host { .. } => FailureKind::Infra,
            build::QemuError::Boot { source, .. }
                if matches!(
                    **source,
                    ProcessError::Spawn { .. } | ProcessError::Io { .. }
                ) =>
            {
                FailureKind::Infra
            }
            build::QemuError::Boot { .. }
            | build::QemuError::Console { .. }
            | build::QemuError::Login { .. } => FailureKind::Recipe,
        }
    }
}

/// QEMU on this machine, or on the `[[qemu.hosts]]` (each its own
/// concurrency), routed by [`crate::builders::hosts`].
pub struct QemuBuilder {
    /// For the source mirror the sets come from.
    config: Config,
    qemu: Qemu,
    state_dir: PathBuf,
    work_dir: PathBuf,
}

impl QemuBuilder {
    pub fn new(config: &Config) -> QemuBuilder {
        QemuBuilder {
            config: config.clone(),
            qemu: config.qemu.clone(),
            state_dir: config.state_dir.clone(),
            work_dir: config.work_dir(),
        }
    }
}

impl Builder for QemuBuilder {
    fn kind(&self) -> BuilderKind {
        BuilderKind::Qemu
    }

    fn artifact_kind(&self) -> ArtifactKind {
        ArtifactKind::Qcow2
    }

    fn can_build(&self, t: &Target) -> bool {
        t.arch == Arch::Amd64
            && self
                .hosts()
                .iter()
                .any(|h| !h.ssh.is_empty() || crate::process::which(&self.qemu.system).is_some())
    }

    fn capacity(&self) -> usize {
        self.hosts().iter().map(|h| h.concurrency.max(1)).sum()
    }

    /// The server placeholders, and the login contract: the user and the
    /// public key the image authorizes (keyed through the recipes: another
    /// key is another image). A missing key renders empty and the build
    /// refuses to start (see `login`).
    fn build_vars(&self) -> BTreeMap<String, String> {
        let public = std::fs::read_to_string(self.public_key()).unwrap_or_default();
        BTreeMap::from([
            ("http_base".to_string(), HTTP_BASE.to_string()),
            ("http_host".to_string(), HTTP_HOST.to_string()),
            // The source mirror, from the build's server (first boot).
            ("sources_url".to_string(), format!("{HTTP_BASE}/{SOURCES}")),
            ("ssh_user".to_string(), self.qemu.ssh_user.clone()),
            ("ssh_public_key".to_string(), public.trim().to_string()),
        ])
    }

    fn build<'a>(&'a self, job: BuildJob<'a>) -> BoxFuture<'a, Result<BuildOutput, Failure>> {
        Box::pin(async move {
            let img = img::Img::new(&self.qemu.img);
            if !self.qemu.keep_disks || job.fresh {
                // Nothing kept here: nothing to adopt either.
            } else if let Some(out) = self.cached(&img, job.prepared).await {
                let mut pushed = push(&job, &out).await?;
                pushed.adopted = Some("host:local".into());
                return Ok(pushed);
            }
            let spec = self.spec(&job).await?;
            let built = self
                .routed(&img, spec)
                .await
                .map_err(|f| f.with_log(job.log))?;
            // While the build's site is open: a remote host's disks are
            // streamed from there; this machine's are pushed, then kept.
            let (out, site) = (built.out, built.site);
            let pushed = if site.is_remote() {
                push_streamed(&job, &site, &out).await
            } else {
                let pushed = push(&job, &out).await;
                if pushed.is_ok() && self.qemu.keep_disks {
                    self.keep(job.prepared, &out);
                }
                let _ = std::fs::remove_file(&out.path);
                if let Some(c) = &out.cache {
                    let _ = std::fs::remove_file(&c.path);
                }
                pushed
            };
            site.close().await;
            pushed.map_err(|f| f.with_log(job.log))
        })
    }

    fn sweep(&self) -> BoxFuture<'_, ()> {
        let root = self.work_dir.join("qemu");
        Box::pin(async move { crate::builders::sweep_dead_work_dirs(&root) })
    }

    /// Each host: reachable, its tools, builds running; this machine's
    /// kept disks.
    fn inventory<'a>(
        &'a self,
        lock: &'a crate::lockfile::Lockfile,
    ) -> BoxFuture<'a, Vec<crate::builders::inventory::HostReport>> {
        Box::pin(async move {
            let names = crate::builders::inventory::qemu_names(lock);
            let mut reports = Vec::new();
            for h in self.hosts() {
                if h.ssh.is_empty() {
                    // This machine: its tools, builds and kept disks.
                    let mut r = disks::report(&self.config, &names);
                    r.host = h.name.clone();
                    r.slots = h.concurrency.max(1);
                    reports.push(r);
                } else {
                    let report = site::report(&h, &self.qemu);
                    reports.push(crate::builders::inventory::within(site::stub(&h), report).await);
                }
            }
            hosts::show_down(&self.config, "qemu", &mut reports);
            reports
        })
    }
}

impl QemuBuilder {
    /// Where the last verified disk of each target stays on this host,
    /// named by its build key.
    fn disks(&self) -> PathBuf {
        disks::dir(&self.state_dir)
    }

    /// The verified disk of this very key, if this host kept one and it
    /// still checks: adopted instead of installing again.
    async fn cached(&self, img: &img::Img, p: &Prepared) -> Option<build::QemuOutput> {
        let path = self.disks().join(format!("{}.qcow2", artifact_name(p)));
        if !path.exists() {
            return None;
        }
        let cache = match self.cache(&p.target) {
            // A disk kept without its cache is installed again.
            Some(_) => Some(Box::new(self.kept(img, &build::cache_output(&path)).await?)),
            None => None,
        };
        let mut out = self.kept(img, &path).await?;
        out.cache = cache;
        tracing::info!(disk = %path.display(), "the disk of this build key is on the host: adopted, not installed again");
        Some(out)
    }

    /// A kept disk that still checks.
    async fn kept(&self, img: &img::Img, path: &std::path::Path) -> Option<build::QemuOutput> {
        let path = path.to_path_buf();
        if !path.exists() {
            return None;
        }
        if let Err(e) = img.check(&path).await {
            tracing::warn!(disk = %path.display(), error = %e, "a kept disk does not check: installing again");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let info = img.info(&path).await.ok()?;
        let (sha256, size) = crate::registry::sha256_file(&path).await.ok()?;
        Some(build::QemuOutput {
            path,
            sha256,
            size,
            virtual_size: info.virtual_size,
            cache: None,
        })
    }

    /// Keep a verified, pushed disk for later runs of the same key (moved
    /// there; earlier disks of the same target and version go).
    fn keep(&self, p: &Prepared, out: &build::QemuOutput) {
        let disk = &out.path;
        let dir = self.disks();
        let name = artifact_name(p);
        let series = name
            .strip_suffix(p.short_key())
            .unwrap_or(&name)
            .to_string();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&series) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let to = dir.join(format!("{name}.qcow2"));
        let kept = std::fs::create_dir_all(&dir).and_then(|_| {
            std::fs::rename(disk, &to).or_else(|_| std::fs::copy(disk, &to).map(|_| ()))
        });
        let kept = kept.and_then(|_| match &out.cache {
            Some(c) => {
                let to = build::cache_output(&to);
                std::fs::rename(&c.path, &to).or_else(|_| std::fs::copy(&c.path, &to).map(|_| ()))
            }
            None => Ok(()),
        });
        if let Err(e) = kept {
            tracing::warn!(error = %e, "keeping the disk for later runs of its key");
        }
    }

    /// The worker's private key (see `config::Qemu::ssh_key`).
    fn private_key(&self) -> PathBuf {
        PathBuf::from(&self.qemu.ssh_key)
    }

    fn public_key(&self) -> PathBuf {
        let mut p = self.private_key().into_os_string();
        p.push(".pub");
        PathBuf::from(p)
    }

    /// The login the verify boot checks; refused before any boot when the
    /// key is not there.
    fn login(&self, t: &Target) -> Result<boots::Login, Failure> {
        let (key, public) = (self.private_key(), self.public_key());
        if !key.exists() || !public.exists() {
            return Err(Failure::infra(format!(
                "{}: the ssh key obuilder's workers log in with is missing ({} and its .pub): create it with `ssh-keygen -t ed25519 -N '' -f {}` (qemu.ssh_key)",
                t.id(),
                key.display(),
                key.display()
            )));
        }
        Ok(boots::Login {
            user: self.qemu.ssh_user.clone(),
            key,
            command: "ocaml -version".into(),
        })
    }

    /// How to boot: the test guest's kernel, or OpenBSD's PXE auto_install
    /// (its TFTP files from the verified sets and the rendered boot.conf);
    /// the console marker of a successful install.
    fn boot(
        &self,
        p: &Prepared,
        sets: &installer::Sets,
        verified: &[(String, PathBuf)],
    ) -> Result<(build::Boot, Option<String>), Failure> {
        let t = &p.target;
        let boot = t.vars.get("boot").map(String::as_str).unwrap_or("pxe");
        let fixture = || {
            let dir = self.state_dir.join("fixtures/qemu");
            let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
            if !kernel.exists() || !initrd.exists() {
                return Err(Failure::infra(format!(
                    "{}: guest kernel/initramfs missing in {} (run scripts/qemu-fixture.sh)",
                    t.id(),
                    dir.display()
                )));
            }
            Ok(build::Kernel {
                kernel,
                initrd,
                append: "console=ttyS0 quiet panic=1 kiln.probe={probe}".into(),
            })
        };
        let marker = t.vars.get("install_marker").cloned();
        match boot {
            "kernel" => Ok((
                build::Boot::Kernel(fixture()?),
                Some(marker.unwrap_or_else(|| "KILN-INSTALL: ok".into())),
            )),
            // OpenBSD: PXE boot into auto_install, which fetches
            // install.conf, the sets and the site set from the build's
            // server; `pxe-then-kernel`: the test guest after its install.
            "pxe" | "pxe-then-kernel" => {
                let tftp = installer::tftp(p, sets, verified)
                    .map_err(|e| Failure::new(e.kind(), e.to_string()))?;
                let then = match boot {
                    "pxe" => None,
                    _ => Some(fixture()?),
                };
                let boot = build::Boot::Pxe {
                    tftp,
                    bootfile: installer::BOOTFILE.into(),
                    then,
                };
                Ok((boot, marker))
            }
            other => Err(Failure::new(
                FailureKind::Recipe,
                format!(
                    "{}: vars.boot is {other:?}: pxe (OpenBSD), kernel or pxe-then-kernel (the test guest)",
                    t.id()
                ),
            )),
        }
    }

    /// The download-cache disk, unless the platform says `cache_size: none`.
    fn cache(&self, t: &Target) -> Option<build::CacheDisk> {
        let size = t.vars.get("cache_size").cloned().unwrap_or("20G".into());
        if size == "none" {
            return None;
        }
        let dir = format!("/home/{}/.opam/download-cache", self.qemu.ssh_user);
        let mount = t
            .vars
            .get("cache_mount")
            .cloned()
            .unwrap_or_else(|| format!("doas fsck -y /dev/sd1a && doas mount /dev/sd1a {dir}"));
        Some(build::CacheDisk { size, mount, dir })
    }

    /// Everything one build needs, checked before any boot: the boot
    /// files, the login key, the declared sets against their pins.
    async fn spec(&self, job: &BuildJob<'_>) -> Result<build::QemuSpec, Failure> {
        let p = job.prepared;
        let t = &p.target;
        let var = |k: &str| t.vars.get(k).cloned();
        // Sets not declared, not in the mirror, or disagreeing with SHA256.
        let refused = |e: installer::SetsError| Failure::new(e.kind(), e.to_string());
        let sets = installer::Sets::declared(t).map_err(refused)?;
        let login = self.login(t)?;
        let mirror = crate::sources::Mirror::new(
            job.registry,
            &self.config.registry.namespace,
            &self.state_dir,
        );
        let verified = sets
            .verified(&self.config, &mirror)
            .await
            .map_err(refused)?;
        let (boot, marker) = self.boot(p, &sets, &verified)?;
        // The recipes' sources (`{{sources_url}}`), served under `sources/`.
        let sources = crate::builders::target_sources(&self.config, &mirror, p)
            .await
            .map_err(|e| Failure::new(e.kind(), e.to_string()))?;
        let mut tree = installer::tree(p, &sets, verified);
        for (path, file) in sources.files() {
            tree.insert(format!("{SOURCES}/{path}"), tree::Entry::File(file.clone()));
        }
        let name = artifact_name(p);
        let secs = Duration::from_secs;
        Ok(build::QemuSpec {
            target: t.id(),
            system: self.qemu.system.clone(),
            accel: var("accel").unwrap_or_else(|| accel(&self.qemu)),
            accel_var: var("accel"),
            memory_mib: var("memory_mib")
                .and_then(|m| m.parse().ok())
                .unwrap_or(1024),
            cpus: var("cpus").and_then(|m| m.parse().ok()).unwrap_or(2),
            disk_size: var("disk_size").unwrap_or_else(|| "12G".into()),
            boot,
            tree,
            install_marker: marker,
            // The catalogue refuses compiler-less images outside Docker.
            verify_expect: t.expected_ocaml().unwrap_or_default(),
            login,
            cache: self.cache(t),
            timeouts: build::Timeouts {
                install: secs(self.qemu.boot_timeout_secs),
                first_boot: secs(self.qemu.first_boot_timeout_secs),
                verify: secs(self.qemu.verify_timeout_secs),
            },
            log: job.log.to_path_buf(),
            work_root: self.work_dir.join("qemu"),
            // Unique per build: parallel builds of the same target never share a path.
            output: self.work_dir.join("qemu-out").join(format!(
                "{name}-{}-{}.qcow2",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            )),
        })
    }
}

/// The title of the download-cache layer beside `title` (`….qcow2`).
pub fn cache_title(title: &str) -> String {
    format!("{}.download-cache.qcow2", title.trim_end_matches(".qcow2"))
}

/// Push the compacted disk as an OCI artifact, its download-cache disk as a
/// second layer; their digests are known.
async fn push(job: &BuildJob<'_>, out: &build::QemuOutput) -> Result<BuildOutput, Failure> {
    let a = Artifact::of(job, out);
    let digest = format!("sha256:{}", out.sha256);
    let mut extra = Vec::new();
    if let (Some(c), Some(d)) = (&out.cache, &a.cache_digest) {
        extra.push(oci::ExtraLayer {
            file: &c.path,
            media_type: oci::QCOW2_LAYER,
            title: &a.cache_title,
            digest: d,
        });
    }
    let pushed = oci::push_with(job.registry, &a.push(job, &out.path, Some(&digest)), &extra)
        .await
        .map_err(|e| Failure::new(e.kind(), e.to_string()))?;
    Ok(BuildOutput {
        digest: pushed.digest,
        adopted: None,
    })
}

/// Push a remote site's disks as [`push`] does, each streamed from the
/// site into the registry (nothing lands on this machine's disk).
async fn push_streamed(
    job: &BuildJob<'_>,
    site: &site::Site,
    out: &build::QemuOutput,
) -> Result<BuildOutput, Failure> {
    let failed = |e: site::SiteError| Failure::infra(e.to_string());
    let mut out = out.clone();
    let (digest, size) = site
        .stream_into(&out.path, job.registry, job.repository)
        .await
        .map_err(failed)?;
    out.sha256 = digest.trim_start_matches("sha256:").to_string();
    out.size = size;
    if let Some(c) = out.cache.as_mut() {
        let (d, n) = site
            .stream_into(&c.path, job.registry, job.repository)
            .await
            .map_err(failed)?;
        c.sha256 = d.trim_start_matches("sha256:").to_string();
        c.size = n;
    }
    let a = Artifact::of(job, &out);
    let extra: Vec<oci::ExtraBlob> = match (&out.cache, &a.cache_digest) {
        (Some(c), Some(d)) => vec![oci::ExtraBlob {
            media_type: oci::QCOW2_LAYER,
            title: &a.cache_title,
            digest: d,
            size: c.size,
        }],
        _ => vec![],
    };
    let pushed = oci::put_artifact_with(
        job.registry,
        &a.push(job, &out.path, Some(&digest)),
        digest.clone(),
        size,
        &extra,
    )
    .await
    .map_err(|e| Failure::new(e.kind(), e.to_string()))?;
    Ok(BuildOutput {
        digest: pushed.digest,
        adopted: None,
    })
}

/// What a disk artifact says of itself: its title, config (the disks'
/// sizes and digests) and annotations.
struct Artifact {
    title: String,
    cache_title: String,
    cache_digest: Option<String>,
    config: serde_json::Value,
    annotations: BTreeMap<String, String>,
}

impl Artifact {
    fn of(job: &BuildJob<'_>, out: &build::QemuOutput) -> Artifact {
        let t = &job.prepared.target;
        let mut annotations = artifact_annotations(job);
        annotations.insert("org.ocaml.kiln.sha256".to_string(), out.sha256.clone());
        let title = format!("{}.qcow2", artifact_name(job.prepared));
        let mut config = serde_json::json!({"os": t.platform, "architecture": t.arch,
            "disk": {"format": "qcow2", "virtual_size": out.virtual_size, "sha256": out.sha256}});
        let cache_title = cache_title(&title);
        let cache_digest = out.cache.as_ref().map(|c| format!("sha256:{}", c.sha256));
        if let Some(c) = &out.cache {
            config["download_cache"] = serde_json::json!({"format": "qcow2", "title": cache_title,
                "virtual_size": c.virtual_size, "sha256": c.sha256});
        }
        Artifact {
            title,
            cache_title,
            cache_digest,
            config,
            annotations,
        }
    }

    fn push<'a>(
        &'a self,
        job: &'a BuildJob<'_>,
        file: &'a std::path::Path,
        digest: Option<&'a str>,
    ) -> oci::ArtifactPush<'a> {
        oci::ArtifactPush {
            repo: job.repository,
            file,
            artifact_type: oci::QCOW2_ARTIFACT,
            layer_media_type: oci::QCOW2_LAYER,
            title: &self.title,
            digest,
            uncompressed_sha256: None,
            config: self.config.clone(),
            annotations: self.annotations.clone(),
        }
    }
}
