//! `kiln fetch` for ZFS base datasets, on a worker: read the artifact's
//! config, pull the incremental stream when the worker holds exactly the
//! snapshots it applies to (the full stream otherwise), receive it under
//! its immutable name and point the name obuilder uses
//! (`<pool>/base-image/NAME`) at it.

use std::path::{Path, PathBuf};

use super::artifact::{IncrementalRef, ZfsArtifactConfig};
use super::build::SNAPSHOT;
use super::driver::{Zfs, ZfsError};
use super::worker::{self, Install, InstallError, Installed};
use crate::config::ZfsHost;
use crate::lockfile::Entry;
use crate::registry::{Registry, RegistryError, artifact as oci};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("{digest} is a {found}, not {wanted}")]
    NotThisArtifact {
        digest: String,
        found: String,
        wanted: &'static str,
    },
    #[error("{digest}: artifact config: {message}")]
    Config { digest: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a fetch did.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub installed: Installed,
    /// The immutable tree.
    pub dataset: String,
    /// `<pool>/base-image/NAME`, the tree obuilder clones from.
    pub stable: String,
    /// `present`, `full`, or `incremental from <leaf>`.
    pub via: String,
    pub bytes: u64,
}

/// Where a fetch puts things on the worker.
pub struct FetchTarget<'a> {
    pub host: &'a ZfsHost,
    /// NAME in `<pool>/base-image/NAME`: the name obuilder specs use (the
    /// tag fetched, e.g. `macos-homebrew-ocaml-5.5`).
    pub name: &'a str,
    /// Mount the children under this directory instead of their
    /// production mountpoints (tests, a second pool on one machine).
    pub mount_root: Option<&'a Path>,
    /// Scratch directory for streams (removed files only).
    pub work: &'a Path,
}

/// Fetch the arch image `digest` of `entry` onto the worker.
pub async fn fetch(
    reg: &Registry,
    entry: &Entry,
    digest: &str,
    to: &FetchTarget<'_>,
) -> Result<Fetched, FetchError> {
    let (manifest, config) = oci::inspect(reg, &entry.repository, digest).await?;
    let found = manifest["artifactType"].as_str().unwrap_or("").to_string();
    if found != oci::ZFS_ARTIFACT {
        return Err(FetchError::NotThisArtifact {
            digest: digest.to_string(),
            found,
            wanted: "a ZFS stream",
        });
    }
    let config: ZfsArtifactConfig =
        serde_json::from_value(config).map_err(|e| FetchError::Config {
            digest: digest.to_string(),
            message: e.to_string(),
        })?;
    let leaf = config.layout.leaf().to_string();
    let mountpoints: Vec<(String, PathBuf)> = config
        .layout
        .children
        .iter()
        .map(|c| {
            let mp = match to.mount_root {
                Some(root) => root.join(&leaf).join(&c.name),
                None => c.mountpoint.clone(),
            };
            (c.name.clone(), mp)
        })
        .collect();
    let base = format!("{}/{}/base-image", to.host.pool, to.host.prefix);
    let place = Place {
        dataset: format!("{base}/{leaf}"),
        stable: format!("{}/base-image/{}", to.host.pool, to.name),
        mountpoints,
    };
    let zfs = Zfs::new(to.host);
    if zfs.exists(&format!("{}@{SNAPSHOT}", place.dataset)).await? {
        let installed = worker::install(&zfs, &place.install(Path::new(""), "", None)).await?;
        return Ok(place.fetched(installed, "present".into(), 0));
    }
    for inc in &config.incremental {
        if worker::has_base(&zfs, &format!("{base}/{}", inc.from), &inc.from_guids).await? {
            return fetch_incremental(reg, entry, inc, &zfs, &place, to.work).await;
        }
    }
    fetch_full(reg, entry, digest, &zfs, &place, to.work).await
}

/// The names and mountpoints of the tree on the worker.
struct Place {
    dataset: String,
    stable: String,
    mountpoints: Vec<(String, PathBuf)>,
}

impl Place {
    fn install<'a>(
        &'a self,
        stream: &'a Path,
        sha256: &'a str,
        uncompressed_sha256: Option<&'a str>,
    ) -> Install<'a> {
        Install {
            stream,
            sha256,
            uncompressed_sha256,
            dataset: &self.dataset,
            stable: &self.stable,
            mountpoints: self.mountpoints.clone(),
        }
    }

    fn fetched(self, installed: Installed, via: String, bytes: u64) -> Fetched {
        Fetched {
            installed,
            dataset: self.dataset,
            stable: self.stable,
            via,
            bytes,
        }
    }
}

/// The hex digest of an artifact's first layer.
fn layer_sha256(manifest: &serde_json::Value) -> String {
    manifest["layers"][0]["digest"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("sha256:")
        .to_string()
}

async fn fetch_incremental(
    reg: &Registry,
    entry: &Entry,
    inc: &IncrementalRef,
    zfs: &Zfs,
    place: &Place,
    work: &Path,
) -> Result<Fetched, FetchError> {
    let file = work.join(format!(
        "{}.incremental.tar.zst",
        inc.digest.trim_start_matches("sha256:")
    ));
    let result = async {
        let pulled = oci::pull(reg, &entry.repository, &inc.digest, &file).await?;
        if pulled.artifact_type != oci::ZFS_INCREMENTAL_ARTIFACT {
            return Err(FetchError::NotThisArtifact {
                digest: inc.digest.clone(),
                found: pulled.artifact_type,
                wanted: "an incremental ZFS stream",
            });
        }
        let layer = layer_sha256(&pulled.manifest);
        let installed =
            worker::install_incremental(zfs, &place.install(&file, &layer, None)).await?;
        Ok((installed, pulled.size))
    }
    .await;
    let _ = std::fs::remove_file(&file);
    let (installed, bytes) = result?;
    Ok(Place {
        dataset: place.dataset.clone(),
        stable: place.stable.clone(),
        mountpoints: vec![],
    }
    .fetched(installed, format!("incremental from {}", inc.from), bytes))
}

async fn fetch_full(
    reg: &Registry,
    entry: &Entry,
    digest: &str,
    zfs: &Zfs,
    place: &Place,
    work: &Path,
) -> Result<Fetched, FetchError> {
    let stream = work.join(format!("{}.zfs.zst", digest.trim_start_matches("sha256:")));
    let result = async {
        let pulled = oci::pull(reg, &entry.repository, digest, &stream).await?;
        let layer = layer_sha256(&pulled.manifest);
        let uncompressed = pulled.manifest["annotations"]["org.ocaml.kiln.uncompressed-sha256"]
            .as_str()
            .map(str::to_string);
        let installed = worker::install(
            zfs,
            &place.install(&stream, &layer, uncompressed.as_deref()),
        )
        .await?;
        Ok::<_, FetchError>((installed, pulled.size))
    }
    .await;
    let _ = std::fs::remove_file(&stream);
    let (installed, bytes) = result?;
    Ok(Place {
        dataset: place.dataset.clone(),
        stable: place.stable.clone(),
        mountpoints: vec![],
    }
    .fetched(installed, "full".into(), bytes))
}
