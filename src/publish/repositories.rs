//! Which repositories of a namespace Kiln reads back from the registry:
//! those the catalogue's platforms publish to, and those the published
//! lockfile (`<namespace>/kiln-lockfile:latest`) and the local one name
//! (a platform since dropped from the catalogue still has images there).
//!
//! Never `/v2/_catalog`: Docker Hub and GHCR refuse it, so recovery,
//! verification and retention start from what Kiln itself published.

use std::collections::BTreeSet;

use super::PublishError;
use super::lockfile::Lockfile;
use crate::catalogue::Catalogue;
use crate::model::repository;
use crate::registry::Registry;

/// The repositories under `namespace` Kiln publishes to or published to.
pub async fn known_repositories(
    reg: &Registry,
    cat: &Catalogue,
    namespace: &str,
    local: Option<&Lockfile>,
) -> Result<BTreeSet<String>, PublishError> {
    let mut repos: BTreeSet<String> = cat
        .platforms
        .iter()
        .map(|p| repository(namespace, &p.repository))
        .collect();
    if let Some(l) = local {
        repos.extend(l.entries.values().map(|e| e.repository.clone()));
    }
    if let Some(published) = published_lockfile(reg, namespace).await? {
        repos.extend(published.entries.values().map(|e| e.repository.clone()));
    }
    Ok(repos)
}

/// The lockfile the last publishing run pushed, if any.
pub async fn published_lockfile(
    reg: &Registry,
    namespace: &str,
) -> Result<Option<Lockfile>, PublishError> {
    let Some(digest) = super::remote::remote_lockfile_digest(reg, namespace).await? else {
        return Ok(None);
    };
    let scratch = tempfile::tempdir().map_err(|source| PublishError::Lock {
        path: std::env::temp_dir().display().to_string(),
        source,
    })?;
    let path = scratch.path().join("lockfile.json");
    Ok(Some(
        super::remote::pull_lockfile(reg, namespace, &digest, &path).await?,
    ))
}
