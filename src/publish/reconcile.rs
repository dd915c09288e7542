//! Reconciliation: the registry's moving tags and aliases made to agree
//! with the lockfile, and the lockfile's aliases with their owners
//! ([`super::owners`]), on every publishing run.
//!
//! Under the lockfile's lock: the owners are derived; every moving tag and
//! owned alias (or, in [`Scope::Changed`], only the aliases whose owner
//! changed) is read from the registry with HEAD requests, a bounded number
//! at a time; what points anywhere but its owner's digest is moved there
//! and logged (`drift: latest was <digest>, now <digest> (owner …)`) and
//! recorded in the owner's `repairs`; an entry that lost an alias loses it
//! in the same save. Nothing is written when nothing differs, so a no-op
//! run leaves the lockfile byte for byte.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::StreamExt;
use serde::Serialize;

use super::lockfile::{Lockfile, REPAIRS_KEPT, TagRepair};
use super::owners::owners;
use super::{PublishError, lock_lockfile};
use crate::plan::Target;
use crate::registry::{Registry, RegistryError};

/// How many tags are read from the registry at once.
const CONCURRENCY: usize = 16;

/// Which tags are read from the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every moving tag and alias the lockfile names: each `kiln build`,
    /// each daemon round, `kiln verify --repair`.
    Full,
    /// Only the aliases that changed owner: one daemon job, whose round
    /// ends with a full reconciliation.
    Changed,
}

/// One tag moved in the registry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Move {
    /// `repository:tag`
    pub tag: String,
    pub was: Option<String>,
    pub now: String,
    /// The owning entry, `repository:tag`.
    pub owner: String,
    /// `drift` or `owner`.
    pub reason: String,
}

/// What a reconciliation did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Reconciled {
    /// Tags read from the registry.
    pub checked: usize,
    /// Tags moved in the registry.
    pub moved: Vec<Move>,
    /// `repository:alias` that changed owner in the lockfile, with the
    /// previous holder (none when the alias is new) and the new owner.
    pub owners_changed: Vec<(String, Option<String>, String)>,
    /// `repository:alias` that no entry owns any more (dropped from a
    /// holder that lost it to nobody: an alias spelled like a moving tag).
    pub dropped: Vec<String>,
}

impl Reconciled {
    pub fn changed_anything(&self) -> bool {
        !self.moved.is_empty() || !self.owners_changed.is_empty() || !self.dropped.is_empty()
    }
}

/// One tag to read: where it lives and which entry owns it.
struct Check {
    repository: String,
    tag: String,
    owner: String,
    /// Why the owner holds it now, when that changed in this run.
    owner_changed: bool,
}

/// Reconcile the lockfile at `path` and the registry with the whole plan
/// `all`.
pub async fn reconcile(
    reg: &Registry,
    path: &Path,
    all: &[Target],
    namespace: &str,
    scope: Scope,
) -> Result<Reconciled, PublishError> {
    let _guard = lock_lockfile(path).await?;
    let mut lock = Lockfile::load(path)?;
    let owned = owners(&lock, all, namespace);
    let mut out = Reconciled::default();
    let checks = plan_checks(&lock, &owned, scope, &mut out);
    out.checked = checks.len();
    let current = read_tags(reg, &checks).await?;
    let mut manifests: BTreeMap<String, (Vec<u8>, String)> = BTreeMap::new();
    for (check, was) in checks.iter().zip(current) {
        let owner = &lock.entries[&check.owner];
        if was.as_deref() == Some(owner.digest.as_str()) {
            continue;
        }
        let (repo, digest) = (owner.repository.clone(), owner.digest.clone());
        if !manifests.contains_key(&digest) {
            let m = reg.get_manifest(&repo, &digest).await?;
            manifests.insert(digest.clone(), (m.bytes, m.media_type));
        }
        let (bytes, media_type) = &manifests[&digest];
        reg.put_manifest(&repo, &check.tag, bytes, media_type)
            .await?;
        let reason = if check.owner_changed && was.is_some() {
            "owner"
        } else {
            "drift"
        };
        tracing::warn!(
            "{reason}: {tag} was {was}, now {digest} (owner {owner_tag})",
            tag = check.tag,
            was = was.as_deref().unwrap_or("missing"),
            owner_tag = owner.tag,
        );
        out.moved.push(Move {
            tag: format!("{repo}:{}", check.tag),
            was: was.clone(),
            now: digest.clone(),
            owner: check.owner.clone(),
            reason: reason.to_string(),
        });
        let repair = TagRepair {
            tag: check.tag.clone(),
            was,
            at: chrono::Utc::now(),
            reason: reason.to_string(),
        };
        if let Some(e) = lock.entries.get_mut(&check.owner) {
            e.repairs.insert(0, repair);
            e.repairs.truncate(REPAIRS_KEPT);
        }
    }
    for (key, aliases) in owned {
        if let Some(e) = lock.entries.get_mut(&key) {
            e.aliases = aliases;
        }
    }
    if out.changed_anything() {
        lock.save(path)?;
    }
    Ok(out)
}

/// What to read from the registry, and the lockfile's alias changes into
/// `out`.
fn plan_checks(
    lock: &Lockfile,
    owned: &BTreeMap<String, Vec<String>>,
    scope: Scope,
    out: &mut Reconciled,
) -> Vec<Check> {
    let mut checks = Vec::new();
    for (key, aliases) in owned {
        let e = &lock.entries[key];
        if scope == Scope::Full {
            checks.push(Check {
                repository: e.repository.clone(),
                tag: e.tag.clone(),
                owner: key.clone(),
                owner_changed: false,
            });
        }
        for a in aliases {
            let changed = !e.aliases.contains(a);
            if changed {
                let before = lock
                    .entries
                    .values()
                    .find(|o| o.repository == e.repository && o.aliases.contains(a))
                    .map(|o| o.key());
                tracing::info!(
                    alias = %format!("{}:{a}", e.repository),
                    from = before.as_deref().unwrap_or("none"),
                    to = %key,
                    "alias changes owner"
                );
                out.owners_changed
                    .push((format!("{}:{a}", e.repository), before, key.clone()));
            }
            if changed || scope == Scope::Full {
                checks.push(Check {
                    repository: e.repository.clone(),
                    tag: a.clone(),
                    owner: key.clone(),
                    owner_changed: changed,
                });
            }
        }
    }
    let owned_names: std::collections::BTreeSet<(&str, &str)> = owned
        .iter()
        .flat_map(|(k, aliases)| {
            let repo = lock.entries[k].repository.as_str();
            aliases.iter().map(move |a| (repo, a.as_str()))
        })
        .collect();
    for e in lock.entries.values() {
        for a in &e.aliases {
            if !owned_names.contains(&(e.repository.as_str(), a.as_str())) {
                out.dropped.push(format!("{}:{a}", e.repository));
            }
        }
    }
    out.dropped.sort();
    out.dropped.dedup();
    checks
}

/// The digest each checked tag points at (`None`: missing), read
/// `CONCURRENCY` at a time; the first registry error ends it.
async fn read_tags(reg: &Registry, checks: &[Check]) -> Result<Vec<Option<String>>, RegistryError> {
    // Owned names: a stream over borrowed checks is not `Send` enough for
    // the daemon's spawned rounds.
    let names: Vec<(usize, String, String)> = checks
        .iter()
        .enumerate()
        .map(|(i, c)| (i, c.repository.clone(), c.tag.clone()))
        .collect();
    let reads = futures_util::stream::iter(names)
        .map(|(i, repo, tag)| async move {
            let r = reg.head_manifest(&repo, &tag).await;
            (i, r.map(|o| o.map(|(d, _)| d)))
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut out = vec![None; checks.len()];
    for (i, r) in reads {
        out[i] = r?;
    }
    Ok(out)
}
