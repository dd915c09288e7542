//! `kiln gc`: remove old base images nobody uses.
//!
//! Under `<pool>/<prefix>/base-image`, an immutable image is a dataset
//! named `<os>-ocaml-<version>-<12 hex>` (the build id). One is kept when
//! the lockfile references it (a published tag's current build), when any
//! dataset is cloned from it (a stable name or a running job uses it), or
//! when it is younger than the retention period. Everything else is
//! destroyed, deepest first. Stable names and `incoming-*` leftovers of an
//! interrupted fetch are not images and are left to `kiln fetch`.
//!
//! First, the stable trees `kiln fetch` retired (`<prefix>/retired/…`) are
//! removed once no job's clone depends on them any more; until then they
//! keep their image in use.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;

use super::driver::{Zfs, ZfsError};
use crate::lockfile::Lockfile;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub dataset: String,
    /// `removed`, `would-remove` (dry run) or `kept`.
    pub action: String,
    pub reason: String,
}

/// Is `leaf` an immutable image name (ends in `-<12 hex>`)?
pub fn is_image(leaf: &str) -> bool {
    leaf.rsplit_once('-').is_some_and(|(head, id)| {
        !head.is_empty()
            && !leaf.starts_with("incoming-")
            && id.len() == 12
            && id.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// The image leaf names the lockfile's ZFS entries point at (the
/// inventory's rule, [`crate::builders::inventory::zfs_names`]).
pub fn referenced(lock: &Lockfile) -> BTreeSet<String> {
    crate::builders::inventory::zfs_names(lock)
        .into_keys()
        .collect()
}

pub async fn gc(
    zfs: &Zfs,
    lock: &Lockfile,
    retention: Duration,
    dry_run: bool,
) -> Result<Vec<Decision>, ZfsError> {
    let mut out: Vec<Decision> = super::worker::remove_unused_retired(zfs, dry_run)
        .await?
        .into_iter()
        .map(|r| Decision {
            action: match (r.removed, r.clones.is_empty()) {
                (true, _) => "removed",
                (false, true) => "would-remove",
                (false, false) => "kept",
            }
            .into(),
            reason: if r.clones.is_empty() {
                "retired stable tree, no job clones it".into()
            } else {
                format!(
                    "retired stable tree, still cloned by {}",
                    r.clones.join(", ")
                )
            },
            dataset: r.dataset,
        })
        .collect();
    let base = format!("{}/{}/base-image", zfs.host.pool, zfs.host.prefix);
    if !zfs.exists(&base).await? {
        return Ok(out);
    }
    let keep = referenced(lock);
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let images: Vec<String> = zfs
        .list(&base)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| {
            n.strip_prefix(&format!("{base}/"))
                .is_some_and(|leaf| !leaf.contains('/') && is_image(leaf))
        })
        .collect();
    for dataset in images {
        let leaf = dataset.rsplit('/').next().unwrap_or("").to_string();
        let mut decide = |action: &str, reason: String| {
            out.push(Decision {
                dataset: dataset.clone(),
                action: action.into(),
                reason,
            })
        };
        let owner = zfs.get(&dataset, super::build::OWNER_PROPERTY).await?;
        if owner != "-" && !crate::process::owner_is_gone(&owner) {
            decide("kept", format!("being built by {owner}"));
            continue;
        }
        if keep.contains(&leaf) {
            decide("kept", "referenced by the lockfile".into());
            continue;
        }
        let clones = zfs.clones_of(&dataset).await?;
        if !clones.is_empty() {
            decide("kept", format!("in use: cloned by {}", clones.join(", ")));
            continue;
        }
        let created = zfs.get_number(&dataset, "creation").await?;
        let age = now.saturating_sub(created);
        if age < retention.as_secs() {
            decide(
                "kept",
                format!("younger than the retention period ({age} s old)"),
            );
            continue;
        }
        if dry_run {
            decide("would-remove", format!("unreferenced, unused, {age} s old"));
            continue;
        }
        zfs.destroy_recursive(&dataset).await?;
        decide("removed", format!("unreferenced, unused, {age} s old"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert!(is_image("macos-homebrew-ocaml-5.5.0-0123456789ab"));
        assert!(!is_image("macos-homebrew-ocaml-5.5"));
        assert!(!is_image(
            "incoming-macos-homebrew-ocaml-5.5.0-0123456789ab"
        ));
        assert!(!is_image("macos-homebrew-ocaml-5.5-new"));
    }
}
