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

/// A verified disk on the worker, and its overlay if one was asked for.
#[derive(Debug, Clone)]
pub struct FetchedDisk {
    pub path: PathBuf,
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
    let title = match verified {
        Ok(t) => t,
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
    Ok(FetchedDisk { path, overlay })
}

/// Pull into `tmp` and verify; returns the disk's file name.
async fn pull_verified(
    reg: &Registry,
    img: &Img,
    entry: &Entry,
    digest: &str,
    tmp: &Path,
) -> Result<String, DiskFetchError> {
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
    Ok(title)
}
