//! The lockfile in the registry: after every run that published, the
//! lockfile is pushed as an OCI artifact (`<namespace>/kiln-lockfile:latest`),
//! so an API replica on another host, or a factory that lost its state
//! dir, can start from the registry alone.

use std::collections::BTreeMap;
use std::path::Path;

use super::PublishError;
use super::lockfile::Lockfile;
use crate::model::repository;
use crate::registry::{Registry, RegistryError, artifact};

pub const LOCKFILE_ARTIFACT: &str = "application/vnd.ocaml.kiln.lockfile.v1";
pub const LOCKFILE_LAYER: &str = "application/vnd.ocaml.kiln.lockfile.v1+json";
const TAG: &str = "latest";

/// Where the lockfile artifact lives in `namespace`.
pub fn lockfile_repository(namespace: &str) -> String {
    repository(namespace, "kiln-lockfile")
}

/// Push the lockfile at `path` and point `latest` at it; returns its digest.
pub async fn push_lockfile(
    reg: &Registry,
    namespace: &str,
    path: &Path,
) -> Result<String, PublishError> {
    let repo = lockfile_repository(namespace);
    let pushed = artifact::push(
        reg,
        &artifact::ArtifactPush {
            repo: &repo,
            file: path,
            artifact_type: LOCKFILE_ARTIFACT,
            layer_media_type: LOCKFILE_LAYER,
            title: "lockfile.json",
            digest: None,
            uncompressed_sha256: None,
            config: serde_json::json!({"os": "any", "architecture": "any"}),
            annotations: BTreeMap::new(),
        },
    )
    .await?;
    let m = reg.get_manifest(&repo, &pushed.digest).await?;
    reg.put_manifest(&repo, TAG, &m.bytes, &m.media_type)
        .await?;
    Ok(pushed.digest)
}

/// The digest `latest` points at, if the lockfile was ever pushed.
pub async fn remote_lockfile_digest(
    reg: &Registry,
    namespace: &str,
) -> Result<Option<String>, PublishError> {
    let repo = lockfile_repository(namespace);
    Ok(reg.head_manifest(&repo, TAG).await?.map(|(d, _)| d))
}

/// Pull the lockfile at `digest` into `dest` (atomically: a reader never
/// sees half of it) after checking that it parses.
pub async fn pull_lockfile(
    reg: &Registry,
    namespace: &str,
    digest: &str,
    dest: &Path,
) -> Result<Lockfile, PublishError> {
    let repo = lockfile_repository(namespace);
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| PublishError::Lock {
        path: dir.display().to_string(),
        source,
    })?;
    let tmp = dir.join(format!(".lockfile.{}.partial", std::process::id()));
    let pulled = artifact::pull(reg, &repo, digest, &tmp).await;
    let parsed = pulled.and_then(|p| {
        if p.artifact_type != LOCKFILE_ARTIFACT {
            return Err(RegistryError::Invalid(format!(
                "{repo}@{digest} is a {}, not a lockfile",
                p.artifact_type
            )));
        }
        let text = std::fs::read_to_string(&tmp).map_err(|source| RegistryError::Io {
            path: tmp.display().to_string(),
            source,
        })?;
        Lockfile::parse(dest, &text).map_err(|e| RegistryError::Invalid(e.to_string()))
    });
    let lock = match parsed {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    std::fs::rename(&tmp, dest).map_err(|source| PublishError::Lock {
        path: dest.display().to_string(),
        source,
    })?;
    Ok(lock)
}
