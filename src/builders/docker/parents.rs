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
            host: String::new(),
            proxy: None,
            isolation: None,
            no_cache: false,
            auth: Default::default(),
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

/// The arches of the Debian parent (arm64 is debootstrapped and built by
/// emulation).
pub const DEBIAN_ARCHES: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

/// Build and push the Debian bookworm parent, a two-arch index of
/// debootstrapped rootfs images (each cached as a tarball under the state
/// dir), unless the registry has it with both arches.
pub async fn ensure_debian(
    config: &Config,
    engine: &Engine,
    reg: &Registry,
) -> Result<String, ParentError> {
    if let Some((d, _)) = reg.head_manifest(DEBIAN_REPO, "bookworm").await? {
        let m = reg.get_manifest(DEBIAN_REPO, &d).await?.json()?;
        let has = |a: Arch| index::child_for(&m, &Platform::for_arch("linux", a)).is_some();
        if DEBIAN_ARCHES.into_iter().all(has) {
            return Ok(d);
        }
    }
    // The rootfs of each arch at the same time (mostly downloads, and the
    // foreign arch's second stage under emulation).
    let (a, b) = tokio::join!(
        debootstrap(config, DEBIAN_ARCHES[0]),
        debootstrap(config, DEBIAN_ARCHES[1])
    );
    let tarballs = [a?, b?];
    let mut digests = Vec::new();
    for (arch, tarball) in DEBIAN_ARCHES.into_iter().zip(tarballs) {
        let data = std::fs::read(&tarball)
            .map_err(|e| ParentError::Missing(format!("{}: {e}", tarball.display())))?;
        let spec = BuildSpec {
            target: format!("fixtures/debian/{arch}"),
            dockerfile: "FROM scratch\nADD rootfs.tar /\nCMD [\"bash\"]\n".into(),
            context: BTreeMap::from([("rootfs.tar".to_string(), data)]),
            os: "linux".into(),
            arch,
            repository: DEBIAN_REPO.into(),
            engine_tag: format!("bookworm-{arch}"),
            parent: None,
            source_date_epoch: 0,
            work_dir: config.work_dir().join("docker"),
            smoke: vec![SmokeCheck {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /etc/debian_version; uname -m".into(),
                ],
                expect: arch.uname().into(),
            }],
            log: config.log_dir().join(format!("fixtures_debian_{arch}.log")),
            labels: BTreeMap::new(),
            host: String::new(),
            proxy: None,
            isolation: None,
            no_cache: false,
            auth: Default::default(),
        };
        digests.push(build(engine, reg, &spec).await?.digest);
    }
    let required: Vec<Platform> = DEBIAN_ARCHES
        .into_iter()
        .map(|a| Platform::for_arch("linux", a))
        .collect();
    let idx = index::assemble(reg, DEBIAN_REPO, &digests, &required, &BTreeMap::new()).await?;
    // Pushed by digest: the parent's tag is this fixture's to set.
    reg.put_manifest(
        DEBIAN_REPO,
        "bookworm",
        &idx.bytes,
        crate::registry::OCI_INDEX,
    )
    .await?;
    Ok(idx.digest)
}

/// A minimal Debian 12 rootfs of `arch` by debootstrap (a foreign arch
/// runs its second stage under binfmt emulation), as a tarball cached in
/// the state dir.
async fn debootstrap(config: &Config, arch: Arch) -> Result<std::path::PathBuf, ParentError> {
    let dir = config.state_dir.join("fixtures");
    let tarball = dir.join(format!("debian-bookworm-{arch}-rootfs.tar"));
    if tarball.exists() {
        return Ok(tarball);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| ParentError::Missing(format!("{}: {e}", dir.display())))?;
    let root = tempfile::tempdir_in(&dir)
        .map_err(|e| ParentError::Missing(format!("{}: {e}", dir.display())))?;
    crate::process::Cmd::new("debootstrap")
        .args(["--variant=minbase", &format!("--arch={}", arch.debian())])
        .arg("bookworm")
        .arg(root.path())
        .arg("http://deb.debian.org/debian")
        .timeout(std::time::Duration::from_secs(1800))
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
    Ok(tarball)
}
