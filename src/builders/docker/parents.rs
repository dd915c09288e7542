//! Local parent images for the demo profile and the tests, built through
//! the same engine code as any target and pushed by digest:
//! - `kiln-fixtures/busybox:latest`, a two-arch (amd64, arm64) index of
//!   static busybox rootfs images (binaries prepared by scripts/services.sh);
//! - `kiln-fixtures/debian:bookworm`, a minimal Debian rootfs made by
//!   `debootstrap`, which can install Debian's own OCaml.
//!
//! No Docker Hub is reachable here, so these stand in for `debian:13` and
//! friends; the production recipes name the real parents.

use crate::catalogue::Arch;
use std::collections::BTreeMap;

use super::{BuildSpec, DockerError, Engine, SmokeCheck, build};
use crate::config::Config;
use crate::registry::index::{self, Platform};
use crate::registry::{Registry, RegistryError};

pub const BUSYBOX_REPO: &str = "kiln-fixtures/busybox";
pub const DEBIAN_REPO: &str = "kiln-fixtures/debian";

#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Missing(String),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
}

/// Build and push the busybox parent index unless it is already there.
/// Returns the index digest.
pub async fn ensure_busybox(
    config: &Config,
    engine: &Engine,
    reg: &Registry,
) -> Result<String, ParentError> {
    if let Some((d, _)) = reg.head_manifest(BUSYBOX_REPO, "latest").await? {
        return Ok(d);
    }
    let mut digests = Vec::new();
    for arch in [Arch::Amd64, Arch::Arm64] {
        let bin = config
            .state_dir
            .join("fixtures")
            .join(format!("busybox-{arch}"));
        let data = std::fs::read(&bin).map_err(|e| {
            ParentError::Missing(format!(
                "{}: {e} (run `bash scripts/services.sh up`)",
                bin.display()
            ))
        })?;
        let spec = BuildSpec {
            target: format!("fixtures/busybox/{arch}"),
            dockerfile: "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n".into(),
            context: BTreeMap::from([("busybox".to_string(), data)]),
            os: "linux".into(),
            arch,
            repository: BUSYBOX_REPO.into(),
            engine_tag: arch.to_string(),
            parent: None,
            source_date_epoch: 0,
            work_dir: config.work_dir().join("docker"),
            smoke: vec![SmokeCheck {
                argv: vec!["/bin/sh".into(), "-c".into(), "uname -m".into()],
                expect: arch.uname().into(),
            }],
            log: config.log_dir().join(format!("fixtures_busybox_{arch}.log")),
            labels: BTreeMap::new(),
            host_network: false,
        };
        digests.push(build(engine, reg, &spec).await?.digest);
    }
    let required: Vec<Platform> = [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .map(|a| Platform::for_arch("linux", a))
        .collect();
    let idx = index::assemble(reg, BUSYBOX_REPO, &digests, &required, &BTreeMap::new()).await?;
    reg.put_manifest(
        BUSYBOX_REPO,
        "latest",
        &idx.bytes,
        crate::registry::OCI_INDEX,
    )
    .await?;
    Ok(idx.digest)
}

/// Build and push the Debian bookworm parent (debootstrap, cached as a
/// tarball under the state dir) unless it is already there.
pub async fn ensure_debian(
    config: &Config,
    engine: &Engine,
    reg: &Registry,
) -> Result<String, ParentError> {
    if let Some((d, _)) = reg.head_manifest(DEBIAN_REPO, "bookworm").await? {
        return Ok(d);
    }
    let dir = config.state_dir.join("fixtures");
    let tarball = dir.join("debian-bookworm-rootfs.tar");
    if !tarball.exists() {
        let root = tempfile::tempdir_in(&dir)
            .map_err(|e| ParentError::Missing(format!("{}: {e}", dir.display())))?;
        crate::process::Cmd::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(root.path())
            .arg("http://deb.debian.org/debian")
            .timeout(std::time::Duration::from_secs(1200))
            .run()
            .await?;
        let partial = tarball.with_extension("partial");
        crate::process::Cmd::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["--numeric-owner", "-cf"])
            .arg(&partial)
            .arg(".")
            .run()
            .await?;
        std::fs::rename(&partial, &tarball)
            .map_err(|e| ParentError::Missing(format!("{}: {e}", tarball.display())))?;
    }
    let data = std::fs::read(&tarball)
        .map_err(|e| ParentError::Missing(format!("{}: {e}", tarball.display())))?;
    let spec = BuildSpec {
        target: "fixtures/debian/amd64".into(),
        dockerfile: "FROM scratch\nADD rootfs.tar /\nCMD [\"bash\"]\n".into(),
        context: BTreeMap::from([("rootfs.tar".to_string(), data)]),
        os: "linux".into(),
        arch: Arch::Amd64,
        repository: DEBIAN_REPO.into(),
        engine_tag: "bookworm".into(),
        parent: None,
        source_date_epoch: 0,
        work_dir: config.work_dir().join("docker"),
        smoke: vec![SmokeCheck {
            argv: vec!["cat".into(), "/etc/debian_version".into()],
            expect: "12.".into(),
        }],
        log: config.log_dir().join("fixtures_debian_amd64.log"),
        labels: BTreeMap::new(),
        host_network: false,
    };
    let digest = build(engine, reg, &spec).await?.digest;
    // Pushed by digest: the parent's tag is this fixture's to set.
    let m = reg.get_manifest(DEBIAN_REPO, &digest).await?;
    reg.put_manifest(DEBIAN_REPO, "bookworm", &m.bytes, &m.media_type)
        .await?;
    Ok(digest)
}
