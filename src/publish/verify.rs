//! `kiln verify` and `kiln rollback`: the lockfile checked against the
//! registry, and a moving tag moved back to an earlier digest.

use crate::catalogue::Arch;
use std::path::Path;

use serde::Serialize;

use super::lockfile::{Entry, HistoryEntry, Lockfile};
use super::{PublishError, lock_lockfile};
use crate::registry::index::{self, Platform};
use crate::registry::{Depth, Registry, RegistryError};

/// One thing wrong with one lockfile entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// `repository:tag`
    pub entry: String,
    pub problem: String,
}

fn arch_of(platform: &str) -> Option<Arch> {
    Platform::parse(platform)?.arch()
}

/// Check every entry cheaply ([`Depth::Cheap`]: every blob present with
/// its size), as `kiln verify`, `kiln release` and recovery do by default.
pub async fn verify(reg: &Registry, lock: &Lockfile, scratch: &Path) -> Vec<Problem> {
    verify_at(reg, lock, scratch, Depth::Cheap).await
}

/// Check every entry: tags point at the recorded digest, the index and each
/// child exist with exactly the recorded arches, and every blob is there
/// (`depth`: by HEAD and size, or its content hashed). Returns every
/// problem found.
pub async fn verify_at(
    reg: &Registry,
    lock: &Lockfile,
    scratch: &Path,
    depth: Depth,
) -> Vec<Problem> {
    let mut problems: Vec<Problem> = super::owners::contested(lock)
        .into_iter()
        .flat_map(|(alias, claimants)| {
            claimants.iter().map(|c| Problem {
                entry: c.clone(),
                problem: format!(
                    "alias {alias} is claimed by {} entries ({}): the registry holds one; `kiln verify --repair` gives it its owner",
                    claimants.len(),
                    claimants.join(", ")
                ),
            }).collect::<Vec<_>>()
        })
        .collect();
    for (key, e) in &lock.entries {
        let mut say = |p: String| {
            problems.push(Problem {
                entry: key.clone(),
                problem: p,
            })
        };
        for tag in std::iter::once(&e.tag)
            .chain(e.aliases.iter())
            .chain(std::iter::once(&e.immutable_tag))
        {
            match reg.head_manifest(&e.repository, tag).await {
                Ok(Some((d, _))) if d == e.digest => {}
                Ok(Some((d, _))) => say(format!(
                    "tag {tag} points at {d}, the lockfile says {}",
                    e.digest
                )),
                Ok(None) => say(format!("tag {tag} is missing from the registry")),
                Err(err) => say(format!("tag {tag}: {err}")),
            }
        }
        let required: Vec<Platform> = e
            .arches
            .keys()
            .map(|a| Platform::for_arch(&e.platform, *a))
            .collect();
        match index::verify(reg, &e.repository, &e.digest, &required).await {
            Ok(children) => {
                for (platform, digest) in &children {
                    let recorded = arch_of(platform).and_then(|a| e.arches.get(&a));
                    if recorded.map(|a| a.digest.as_str()) != Some(digest.as_str()) {
                        say(format!(
                            "{platform}: index holds {digest}, the lockfile says {:?}",
                            recorded.map(|a| &a.digest)
                        ));
                    }
                }
            }
            Err(err) => say(format!("index {}: {err}", e.digest)),
        }
        for (arch, a) in &e.arches {
            let blobs = reg.check_manifest_blobs(&e.repository, &a.digest, depth, scratch);
            if let Err(err) = blobs.await {
                say(format!("{arch} ({}): {err}", a.digest));
            }
        }
    }
    problems
}

/// Move `repository:tag` (and its aliases) back to `to` (default: the
/// previous digest in its history), after checking that digest is complete
/// in the registry, and record it in the lockfile.
pub async fn rollback(
    reg: &Registry,
    lockfile_path: &Path,
    key: &str,
    to: Option<&str>,
    reason: &str,
) -> Result<Entry, PublishError> {
    let _guard = lock_lockfile(lockfile_path).await?;
    let mut lock = Lockfile::load(lockfile_path)?;
    let entry = lock.entries.get(key).cloned().ok_or_else(|| {
        RegistryError::Invalid(format!(
            "no lockfile entry {key}; `kiln status` lists the published tags"
        ))
    })?;
    let target = match to {
        Some(d) => entry
            .history
            .iter()
            .find(|h| h.digest == d)
            .cloned()
            .ok_or_else(|| RegistryError::Invalid(format!("{d} is not in the history of {key}")))?,
        None => entry.history.first().cloned().ok_or_else(|| {
            RegistryError::Invalid(format!("{key} has no earlier digest to roll back to"))
        })?,
    };
    // The old index must still be complete before any tag moves.
    let m = reg.get_manifest(&entry.repository, &target.digest).await?;
    let mut arches = std::collections::BTreeMap::new();
    let v = m.json()?;
    for c in v["manifests"].as_array().into_iter().flatten() {
        let Some(platform) = Platform::from_json(&c["platform"]) else {
            continue;
        };
        if platform.os == "unknown" {
            continue;
        }
        let plat = platform.to_string();
        let d = c["digest"].as_str().unwrap_or("").to_string();
        if reg.head_manifest(&entry.repository, &d).await?.is_none() {
            return Err(RegistryError::Invalid(format!(
                "{key}: {d} ({plat}) of {} is gone from the registry",
                target.digest
            ))
            .into());
        }
        let Some(arch) = platform.arch() else {
            continue;
        };
        arches.insert(
            arch,
            super::lockfile::ArchEntry {
                digest: d,
                build_key: target.build_key.clone(),
                size: None,
            },
        );
    }
    for tag in std::iter::once(&entry.tag).chain(entry.aliases.iter()) {
        reg.put_manifest(&entry.repository, tag, &m.bytes, &m.media_type)
            .await?;
    }
    let mut new = entry.clone();
    new.history = std::iter::once(HistoryEntry {
        digest: entry.digest.clone(),
        build_key: entry.build_key.clone(),
        published_at: entry.published_at,
        replaced_because: format!("rollback: {reason}"),
    })
    .chain(
        entry
            .history
            .iter()
            .filter(|h| h.digest != target.digest)
            .cloned(),
    )
    .collect();
    new.digest = target.digest.clone();
    new.build_key = target.build_key.clone();
    if !arches.is_empty() {
        new.arches = arches;
    }
    new.published_at = chrono::Utc::now();
    new.verified_at = Some(chrono::Utc::now());
    lock.entries.insert(key.to_string(), new.clone());
    lock.save(lockfile_path)?;
    Ok(new)
}
