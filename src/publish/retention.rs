//! `kiln gc --registry`: what Kiln published and nothing references any
//! more is deleted from the registry through the distribution API.
//!
//! Referenced, and kept: every entry of the local lockfile and of the
//! published one (`<namespace>/kiln-lockfile:latest`) — its index, every
//! child it lists, its tags and aliases — and every history entry replaced
//! less than the retention ago (what `kiln rollback` may still move back
//! to), with its children; and the manifests a kept artifact's config
//! names (a ZFS image's incremental streams). Everything else a tag of
//! those repositories points at is unreferenced: an immutable tag of a
//! build long replaced, a build that never made it into a lockfile. It is
//! deleted once it has been unreferenced for the retention: a history
//! entry counts from when it was replaced, anything else from when gc
//! first saw it unreferenced (the registry records no age; the state
//! database keeps the sighting). Deleting a manifest by digest also
//! removes its tags; the children only it listed go after it. Where a
//! registry does not delete by digest, its tags are deleted by name.
//!
//! Only tagged manifests are candidates, so nothing pushed by digest and
//! still in flight (a build not yet published) is ever touched; the
//! lockfile's lock is held throughout, so no publication lands between
//! reading the references and deleting. Blobs are freed by the registry's
//! own garbage collection (`registry.garbage_collect`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::PublishError;
use super::lockfile::Lockfile;
use crate::registry::{DOCKER_LIST, Deleted, OCI_INDEX, Registry, RegistryError, artifact};
use crate::state::unreferenced::Unreferenced;

/// One manifest gc removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    pub repository: String,
    pub digest: String,
    /// The tags that pointed at it.
    pub tags: Vec<String>,
    /// Children (and artifacts) deleted with it.
    pub children: Vec<String>,
    /// `history entry replaced 40 days ago`, `unreferenced since …`.
    pub why: String,
}

/// What gc did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub repositories: Vec<String>,
    pub removed: Vec<Removal>,
    /// Unreferenced, but not for long enough yet: `repo@digest (tags)`.
    pub waiting: Vec<String>,
    /// Manifests kept because something references them.
    pub kept: usize,
}

/// What gc is to do.
pub struct Gc<'a> {
    pub reg: &'a Registry,
    /// The local lockfile and the published one.
    pub lockfiles: Vec<&'a Lockfile>,
    pub repositories: &'a BTreeSet<String>,
    pub retention: chrono::Duration,
    pub seen: &'a Unreferenced,
    pub dry_run: bool,
}

/// Digests of `repo` the lockfiles reference now, and the history
/// digests with when they were replaced.
fn references(
    lockfiles: &[&Lockfile],
    repo: &str,
) -> (BTreeSet<String>, BTreeMap<String, DateTime<Utc>>) {
    let mut current = BTreeSet::new();
    let mut replaced: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for e in lockfiles
        .iter()
        .flat_map(|l| l.entries.values())
        .filter(|e| e.repository == repo)
    {
        current.insert(e.digest.clone());
        current.extend(e.arches.values().map(|a| a.digest.clone()));
        // History is newest first: each entry stopped being current when
        // the one before it (or the entry itself) was published.
        let mut until = e.published_at;
        for h in &e.history {
            let at = replaced.entry(h.digest.clone()).or_insert(until);
            *at = (*at).max(until);
            until = h.published_at;
        }
    }
    (current, replaced)
}

/// The children an index lists, and the manifests an artifact's config
/// names (incremental streams); empty for anything else.
async fn named_by(reg: &Registry, repo: &str, digest: &str) -> Result<Vec<String>, RegistryError> {
    let m = reg.get_manifest(repo, digest).await?;
    let v = m.json()?;
    if m.media_type == OCI_INDEX || m.media_type == DOCKER_LIST || v["manifests"].is_array() {
        return Ok(v["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["digest"].as_str().map(str::to_string))
            .collect());
    }
    if v["config"]["mediaType"].as_str() != Some(artifact::CONFIG) {
        return Ok(vec![]);
    }
    let Some(config) = v["config"]["digest"].as_str() else {
        return Ok(vec![]);
    };
    let c: serde_json::Value = serde_json::from_slice(&reg.pull_blob(repo, config).await?)
        .map_err(|e| RegistryError::Invalid(format!("{repo}@{config}: {e}")))?;
    Ok(c["incremental"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["digest"].as_str().map(str::to_string))
        .collect())
}

/// `start` and everything it names, transitively.
async fn closure(
    reg: &Registry,
    repo: &str,
    start: impl IntoIterator<Item = String>,
) -> Result<BTreeSet<String>, RegistryError> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = start.into_iter().collect();
    while let Some(d) = todo.pop() {
        if !out.insert(d.clone()) {
            continue;
        }
        match reg.head_manifest(repo, &d).await? {
            Some(_) => todo.extend(named_by(reg, repo, &d).await?),
            // A referenced manifest already gone is verify's to report.
            None => continue,
        }
    }
    Ok(out)
}

impl Gc<'_> {
    pub async fn run(&self) -> Result<Report, PublishError> {
        let mut report = Report {
            dry_run: self.dry_run,
            repositories: self.repositories.iter().cloned().collect(),
            ..Report::default()
        };
        for repo in self.repositories {
            self.repository(repo, &mut report).await?;
        }
        Ok(report)
    }

    async fn repository(&self, repo: &str, report: &mut Report) -> Result<(), PublishError> {
        let reg = self.reg;
        let now = Utc::now();
        let (current, replaced) = references(&self.lockfiles, repo);
        let young = replaced
            .iter()
            .filter(|(_, at)| now - **at < self.retention)
            .map(|(d, _)| d.clone());
        let keep = closure(reg, repo, current.iter().cloned().chain(young)).await?;
        report.kept += keep.len();
        // What the tags point at, grouped by digest.
        let mut tagged: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for tag in reg.tags(repo).await? {
            if let Some((d, _)) = reg.head_manifest(repo, &tag).await? {
                tagged.entry(d).or_default().push(tag);
            }
        }
        let mut still_waiting = BTreeSet::new();
        for (digest, tags) in tagged.iter().filter(|(d, _)| !keep.contains(*d)) {
            let why = match replaced.get(digest) {
                Some(at) => format!("history entry replaced at {}", at.to_rfc3339()),
                None => {
                    let first = self
                        .seen
                        .sighted(repo, digest)
                        .map_err(|e| RegistryError::Invalid(format!("gc state: {e}")))?;
                    if now - first < self.retention {
                        still_waiting.insert(digest.clone());
                        report
                            .waiting
                            .push(format!("{repo}@{digest} ({})", tags.join(", ")));
                        continue;
                    }
                    format!("unreferenced since {}", first.to_rfc3339())
                }
            };
            let named = closure(reg, repo, [digest.clone()]).await?;
            let children: Vec<String> = named
                .into_iter()
                .filter(|d| d != digest && !keep.contains(d) && !tagged.contains_key(d))
                .collect();
            if !self.dry_run {
                self.delete(repo, digest, tags).await?;
                for c in &children {
                    self.delete(repo, c, &[]).await?;
                }
            }
            tracing::info!(repository = %repo, %digest, tags = %tags.join(","), children = children.len(), %why, dry_run = self.dry_run, "gc: unreferenced manifest");
            report.removed.push(Removal {
                repository: repo.to_string(),
                digest: digest.clone(),
                tags: tags.clone(),
                children,
                why,
            });
        }
        if !self.dry_run {
            self.seen
                .keep_only(repo, &still_waiting)
                .map_err(|e| RegistryError::Invalid(format!("gc state: {e}")))?;
        }
        Ok(())
    }

    /// Delete `digest` (and so its tags); where the registry does not
    /// delete by digest, each of its `tags` by name.
    async fn delete(&self, repo: &str, digest: &str, tags: &[String]) -> Result<(), PublishError> {
        match self.reg.delete_manifest(repo, digest).await? {
            Deleted::Deleted | Deleted::Absent => return Ok(()),
            Deleted::Unsupported => {}
        }
        let mut any = false;
        for t in tags {
            match self.reg.delete_manifest(repo, t).await? {
                Deleted::Deleted | Deleted::Absent => any = true,
                Deleted::Unsupported => {}
            }
        }
        if any || tags.is_empty() {
            // An untagged child a registry will not delete by digest
            // stays; its index is gone, so nothing names it.
            return Ok(());
        }
        Err(RegistryError::Invalid(format!(
            "registry {}: {repo}@{digest} cannot be deleted, by digest or by tag: enable deletion on the registry (distribution: storage.delete.enabled: true), or delete it with the registry's own tools",
            self.reg.host
        ))
        .into())
    }
}

/// `kiln gc --registry` (and the daemon's scheduled run): gc over every
/// repository Kiln knows for `config`'s namespace, under the lockfile's
/// lock, then `registry.garbage_collect` when something was deleted, so
/// the registry's disk really frees.
pub async fn gc_registry(
    config: &crate::config::Config,
    cat: &crate::catalogue::Catalogue,
    retention_days: u64,
    dry_run: bool,
) -> Result<Report, PublishError> {
    let reg = Registry::new(&config.registry)?;
    let path = config.lockfile_path();
    let _guard = super::lock_lockfile(&path).await?;
    let local = if path.exists() {
        Lockfile::load(&path)?
    } else {
        Lockfile::default()
    };
    let ns = &config.registry.namespace;
    let published = super::repositories::published_lockfile(&reg, ns).await?;
    let repos = super::repositories::known_repositories(&reg, cat, ns, Some(&local)).await?;
    let seen = Unreferenced::open(&config.database.path)
        .map_err(|e| RegistryError::Invalid(format!("gc state: {e}")))?;
    let gc = Gc {
        reg: &reg,
        lockfiles: std::iter::once(&local).chain(published.as_ref()).collect(),
        repositories: &repos,
        retention: chrono::Duration::days(retention_days as i64),
        seen: &seen,
        dry_run,
    };
    let report = gc.run().await?;
    let command = config.registry.garbage_collect.trim();
    if !dry_run && !report.removed.is_empty() && !command.is_empty() {
        tracing::info!(%command, "registry garbage collection");
        crate::process::Cmd::new("sh")
            .args(["-c", command])
            .timeout(std::time::Duration::from_secs(3600))
            .run()
            .await
            .map_err(|e| {
                RegistryError::Invalid(format!(
                    "registry.garbage_collect: {e}; the manifests are deleted, their blobs stay until it runs"
                ))
            })?;
    }
    Ok(report)
}
