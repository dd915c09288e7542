//! Rebuilding a lost lockfile from the registry, the source of truth.
//!
//! Every index Kiln publishes carries its entry's record
//! (`org.ocaml.kiln.entry`). Recovery lists the tags of the namespace's
//! repositories (those the catalogue and the published lockfile name,
//! `repositories`: never `_catalog`, which Docker Hub and GHCR refuse),
//! reads the record of every index a tag points at, and
//! rebuilds: each moving tag's current entry (the index its tag points
//! at, with the other tags pointing there as aliases) and its history (the
//! other builds of that tag still under their immutable tags, newest
//! first). It only reads the registry: nothing there is deleted or moved.
//! The lockfile it writes is then verified like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};

use super::PublishError;
use super::lockfile::{ENTRY_ANNOTATION, Entry, EntryRecord, HistoryEntry, Lockfile};
use crate::catalogue::Arch;
use crate::registry::index::{self, Platform};
use crate::registry::{Depth, OCI_INDEX, Registry};

/// What recovery found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Recovery {
    pub lockfile: Lockfile,
    /// Indexes read (distinct digests carrying a record).
    pub builds: usize,
    /// Tags that point at something Kiln did not publish, or that failed
    /// to read: `repository:tag: why`.
    pub skipped: Vec<String>,
}

/// One published build found in the registry.
struct Found {
    record: EntryRecord,
    created: DateTime<Utc>,
    /// Every tag pointing at it.
    tags: Vec<String>,
}

/// Rebuild the lockfile of `repositories` (see
/// [`super::repositories::known_repositories`]) from the registry's tags
/// and index annotations.
pub async fn recover(
    reg: &Registry,
    namespace: &str,
    repositories: &BTreeSet<String>,
) -> Result<Recovery, PublishError> {
    let mut out = Recovery::default();
    for repo in repositories {
        if *repo == super::remote::lockfile_repository(namespace) {
            continue;
        }
        let found = read_repository(reg, repo, &mut out.skipped).await?;
        out.builds += found.len();
        for e in entries(reg, repo, found, &mut out.skipped).await? {
            out.lockfile.entries.insert(e.key(), e);
        }
    }
    Ok(out)
}

/// Every Kiln build of `repo`, by index digest.
async fn read_repository(
    reg: &Registry,
    repo: &str,
    skipped: &mut Vec<String>,
) -> Result<BTreeMap<String, Found>, PublishError> {
    let mut by_digest: BTreeMap<String, Found> = BTreeMap::new();
    let mut others: BTreeMap<String, String> = BTreeMap::new();
    for tag in reg.tags(repo).await? {
        let Some((digest, media_type)) = reg.head_manifest(repo, &tag).await? else {
            continue;
        };
        if let Some(f) = by_digest.get_mut(&digest) {
            f.tags.push(tag);
            continue;
        }
        if media_type != OCI_INDEX {
            others.insert(tag, "not an index".into());
            continue;
        }
        let index = reg.get_manifest(repo, &digest).await?.json()?;
        let ann = &index["annotations"];
        let Some(text) = ann[ENTRY_ANNOTATION].as_str() else {
            others.insert(tag, "an index without Kiln's entry record".into());
            continue;
        };
        let record: EntryRecord = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                others.insert(tag, format!("unreadable entry record: {e}"));
                continue;
            }
        };
        let created = ann["org.opencontainers.image.created"]
            .as_str()
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .map_or_else(Utc::now, |c| c.with_timezone(&Utc));
        by_digest.insert(
            digest,
            Found {
                record,
                created,
                tags: vec![tag],
            },
        );
    }
    // Per-arch build tags (`…-amd64`) and artifacts are children of the
    // indexes; only a tag that is nobody's child is worth a word.
    skipped.extend(
        others
            .into_iter()
            .filter(|(t, _)| {
                !by_digest
                    .values()
                    .any(|f| t.starts_with(&f.record.immutable_tag))
            })
            .map(|(t, why)| format!("{repo}:{t}: {why}")),
    );
    Ok(by_digest)
}

/// The entries of one repository: one per moving tag that points at a
/// build, with the other builds of that tag as its history.
async fn entries(
    reg: &Registry,
    repo: &str,
    found: BTreeMap<String, Found>,
    skipped: &mut Vec<String>,
) -> Result<Vec<Entry>, PublishError> {
    let mut out = Vec::new();
    for (digest, f) in &found {
        if !f.tags.contains(&f.record.tag) {
            continue; // an earlier build of its tag: history below
        }
        let required: Vec<Platform> = f
            .record
            .arch_keys
            .keys()
            .map(|a| Platform::for_arch(&f.record.platform, *a))
            .collect();
        let children = match index::verify(reg, repo, digest, &required).await {
            Ok(c) => c,
            Err(e) => {
                skipped.push(format!("{repo}:{}: {e}", f.record.tag));
                continue;
            }
        };
        let arches: BTreeMap<Arch, String> = children
            .into_iter()
            .filter_map(|(p, d)| Some((Platform::parse(&p)?.arch()?, d)))
            .collect();
        let mut e = Entry::from_record(f.record.clone(), repo, digest, &arches, f.created);
        e.aliases = f
            .tags
            .iter()
            .filter(|t| **t != f.record.tag && **t != f.record.immutable_tag)
            .cloned()
            .collect();
        e.adopted = Some("recovered".into());
        e.history = history(&found, digest, &f.record.tag);
        out.push(e);
    }
    Ok(out)
}

/// The other builds of `tag` still under their immutable tags, newest first.
fn history(found: &BTreeMap<String, Found>, current: &str, tag: &str) -> Vec<HistoryEntry> {
    let mut h: Vec<HistoryEntry> = found
        .iter()
        .filter(|(d, f)| {
            *d != current && f.record.tag == tag && f.tags.contains(&f.record.immutable_tag)
        })
        .map(|(d, f)| HistoryEntry {
            digest: d.clone(),
            build_key: f.record.build_key.clone(),
            published_at: f.created,
            replaced_because: "recovered from the registry".into(),
        })
        .collect();
    h.sort_by_key(|e| std::cmp::Reverse(e.published_at));
    h
}

/// Recover, verify at `depth`, and write the lockfile to `path`. Entries
/// that fail verification are reported and left out.
pub async fn recover_into(
    reg: &Registry,
    namespace: &str,
    repositories: &BTreeSet<String>,
    path: &Path,
    depth: Depth,
) -> Result<Recovery, PublishError> {
    let mut r = recover(reg, namespace, repositories).await?;
    let scratch = tempfile::tempdir().map_err(|source| PublishError::Lock {
        path: std::env::temp_dir().display().to_string(),
        source,
    })?;
    for p in super::verify::verify_at(reg, &r.lockfile, scratch.path(), depth).await {
        if r.lockfile.entries.remove(&p.entry).is_some() {
            r.skipped.push(format!("{}: {}", p.entry, p.problem));
        }
    }
    let now = Utc::now();
    for e in r.lockfile.entries.values_mut() {
        e.verified_at = Some(now);
    }
    let _guard = super::lock_lockfile(path).await?;
    r.lockfile.save(path)?;
    Ok(r)
}
