//! `kiln fetch` for qcow2 disks: pull by digest, check the disk's sha256
//! against the artifact config and with `qemu-img check`, move it into
//! place, and optionally lay a build overlay over it.

use std::path::{Path, PathBuf};

use super::img::{Img, ImgError};
use crate::lockfile::Entry;
use crate::registry::{Registry, RegistryError, artifact as oci};

#[derive(Debug, thiserror::Error)]
pub enum DiskFetchError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Img(#[from] ImgError),
    #[error("{digest} is a {found}, not a qcow2 disk")]
    NotADisk { digest: String, found: String },
    #[error("{digest}: disk sha256 {got}, the artifact records {want}")]
    Checksum {
        digest: String,
        got: String,
        want: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A verified disk on the worker, its download-cache disk when the image
/// has one, and its overlay if one was asked for.
#[derive(Debug, Clone)]
pub struct FetchedDisk {
    pub path: PathBuf,
    pub cache: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
}

/// Pull, verify and install the disk `digest` of `entry` into `dest_dir`.
pub async fn fetch_disk(
    reg: &Registry,
    img: &Img,
    entry: &Entry,
    digest: &str,
    dest_dir: &Path,
    overlay: bool,
) -> Result<FetchedDisk, DiskFetchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskFetchError::Io { path, source }
    };
    std::fs::create_dir_all(dest_dir).map_err(io(dest_dir))?;
    let tmp = dest_dir.join(format!(".{}.partial", digest.trim_start_matches("sha256:")));
    let verified = pull_verified(reg, img, entry, digest, &tmp).await;
    let (title, manifest, config) = match verified {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let cache = match pull_cache(reg, img, entry, digest, &manifest, &config, dest_dir).await {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let path = dest_dir.join(&title);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    let overlay = if overlay {
        let o = dest_dir.join(format!(
            "{}.overlay.qcow2",
            title.trim_end_matches(".qcow2")
        ));
        let _ = std::fs::remove_file(&o);
        img.overlay(&path, &o).await?;
        Some(o)
    } else {
        None
    };
    Ok(FetchedDisk {
        path,
        cache,
        overlay,
    })
}

/// The download-cache layer, when the config names one: pulled, checked
/// against the config's sha256 and by `qemu-img check`, put beside the disk.
async fn pull_cache(
    reg: &Registry,
    img: &Img,
    entry: &Entry,
    digest: &str,
    manifest: &serde_json::Value,
    config: &serde_json::Value,
    dest_dir: &Path,
) -> Result<Option<PathBuf>, DiskFetchError> {
    let Some(title) = config["download_cache"]["title"].as_str() else {
        return Ok(None);
    };
    let want = config["download_cache"]["sha256"].as_str().unwrap_or("");
    let tmp = dest_dir.join(format!(".{title}.partial"));
    let checked = async {
        oci::pull_layer(reg, &entry.repository, manifest, title, &tmp)
            .await?
            .ok_or_else(|| {
                RegistryError::Invalid(format!(
                    "{digest}: no layer {title}, which its config names"
                ))
            })?;
        let (got, _) =
            crate::registry::sha256_file(&tmp)
                .await
                .map_err(|source| DiskFetchError::Io {
                    path: tmp.clone(),
                    source,
                })?;
        if got != want {
            return Err(DiskFetchError::Checksum {
                digest: format!("{digest} ({title})"),
                got,
                want: want.to_string(),
            });
        }
        img.check(&tmp).await?;
        Ok(())
    }
    .await;
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let path = dest_dir.join(title);
    std::fs::rename(&tmp, &path).map_err(|source| DiskFetchError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Some(path))
}

/// Where obuilder's QEMU store looks: the base image as
/// `STORE/base-image/<name>.qcow2` (what a spec's `(from <name>)` opens),
/// and the download cache as the initial `STORE/cache/c-<cache>/rootfs/
/// image.qcow2` — only when that cache does not exist yet: a cache in use
/// holds the jobs' downloads and is never replaced.
#[derive(Debug, Clone)]
pub struct ObuilderPlaced {
    pub base_image: PathBuf,
    pub cache: Option<PathBuf>,
    pub cache_kept: bool,
}

pub fn place_for_obuilder(
    fetched: &FetchedDisk,
    store: &Path,
    name: &str,
    cache_name: &str,
) -> Result<ObuilderPlaced, DiskFetchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DiskFetchError::Io { path, source }
    };
    let dir = store.join("base-image");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let base_image = dir.join(format!("{name}.qcow2"));
    std::fs::rename(&fetched.path, &base_image).map_err(io(&base_image))?;
    let Some(c) = &fetched.cache else {
        return Ok(ObuilderPlaced {
            base_image,
            cache: None,
            cache_kept: false,
        });
    };
    let rootfs = store
        .join("cache")
        .join(format!("c-{cache_name}"))
        .join("rootfs");
    let image = rootfs.join("image.qcow2");
    let cache_kept = image.exists();
    if cache_kept {
        let _ = std::fs::remove_file(c);
    } else {
        std::fs::create_dir_all(&rootfs).map_err(io(&rootfs))?;
        std::fs::rename(c, &image).map_err(io(&image))?;
    }
    Ok(ObuilderPlaced {
        base_image,
        cache: Some(image),
        cache_kept,
    })
}

/// Pull into `tmp` and verify; returns the disk's file name, the manifest
/// and the config.
async fn pull_verified(
    reg: &Registry,
    img: &Img,
    entry: &Entry,
    digest: &str,
    tmp: &Path,
) -> Result<(String, serde_json::Value, serde_json::Value), DiskFetchError> {
    let pulled = oci::pull(reg, &entry.repository, digest, tmp).await?;
    if pulled.artifact_type != oci::QCOW2_ARTIFACT {
        return Err(DiskFetchError::NotADisk {
            digest: digest.to_string(),
            found: pulled.artifact_type,
        });
    }
    let title = pulled.manifest["annotations"]["org.opencontainers.image.title"]
        .as_str()
        .unwrap_or("disk.qcow2")
        .to_string();
    let want = pulled.config["disk"]["sha256"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (got, _) =
        crate::registry::sha256_file(tmp)
            .await
            .map_err(|source| DiskFetchError::Io {
                path: tmp.to_path_buf(),
                source,
            })?;
    if got != want {
        return Err(DiskFetchError::Checksum {
            digest: digest.to_string(),
            got,
            want,
        });
    }
    img.check(tmp).await?;
    Ok((title, pulled.manifest, pulled.config))
}
