//! Aliases that name no compiler series (`debian-13`, `debian`, `latest`)
//! mean "the newest compiler". They move to a version only once every
//! tier-1 target of that version is published, so CI following `latest`
//! never lands on a release that is only partly built.

use std::collections::BTreeSet;
use std::path::Path;

use super::lockfile::Lockfile;
use super::{PublishError, lock_lockfile};
use crate::catalogue::OcamlVersion;
use crate::plan::Target;
use crate::registry::Registry;

/// Is every tier-1 default-compiler target of `v` in the lockfile?
fn tier1_complete(lock: &Lockfile, targets: &[&Target], namespace: &str) -> bool {
    let tier1: Vec<&&Target> = targets.iter().filter(|t| t.tier == 1).collect();
    !tier1.is_empty()
        && tier1.iter().all(|t| {
            lock.entries
                .get(&t.tag_id(namespace).key())
                .is_some_and(|e| e.ocaml == t.version && e.arches.contains_key(&t.arch))
        })
}

/// Move the series-less aliases of every version whose tier-1 set is
/// complete (`all` is the whole plan). Returns the aliases moved, as
/// `repository:alias`.
pub async fn promote_newest_aliases(
    reg: &Registry,
    lockfile_path: &Path,
    all: &[Target],
    namespace: &str,
) -> Result<Vec<String>, PublishError> {
    let _guard = lock_lockfile(lockfile_path)?;
    let mut lock = Lockfile::load(lockfile_path)?;
    let mut moved = Vec::new();
    // Compiler-less images have no version and no aliases.
    let versions: BTreeSet<&OcamlVersion> = all.iter().filter_map(|t| t.version.as_ref()).collect();
    for v in versions {
        let mine: Vec<&Target> = all
            .iter()
            .filter(|t| t.version.as_ref() == Some(v) && t.variant.is_none())
            .collect();
        if !tier1_complete(&lock, &mine, namespace) {
            continue;
        }
        for t in &mine {
            let Some(e) = lock.entries.get_mut(&t.tag_id(namespace).key()) else {
                continue;
            };
            if e.ocaml.as_ref() != Some(v) {
                continue;
            }
            for a in t.aliases.iter().filter(|a| !a.contains("-ocaml-")) {
                if e.aliases.contains(a) {
                    continue;
                }
                let m = reg.get_manifest(&e.repository, &e.digest).await?;
                reg.put_manifest(&e.repository, a, &m.bytes, &m.media_type)
                    .await?;
                e.aliases.push(a.clone());
                moved.push(format!("{}:{a}", e.repository));
            }
        }
    }
    if !moved.is_empty() {
        lock.save(lockfile_path)?;
    }
    Ok(moved)
}
