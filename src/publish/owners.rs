//! Who owns each alias: exactly one lockfile entry per name, derived on
//! every run from the catalogue's whole plan and the published entries,
//! never remembered from an earlier run.
//!
//! A moving tag (`debian-13-ocaml-5.5`) is owned by its own entry. An
//! alias is owned by the entry of the tag the plan gives it to, when that
//! entry may have it:
//! - a series alias (`debian-ocaml-5.5`, any alias naming `-ocaml-`) as
//!   soon as the claiming tag is published;
//! - a series-less alias (`debian-13`, `debian`, `latest`) once every
//!   tier-1 default-compiler target of the claiming tag's version is
//!   published with that version, so CI following `latest` never lands on
//!   a release that is only partly built.
//!
//! Until then, and for an alias no planned tag claims any more (a
//! withdrawn series), the entry that holds it keeps it; when several hold
//! it (a lockfile written before ownership existed), the newest compiler
//! keeps it. An alias spelled like a moving tag is never an alias.
//!
//! [`owners`] is pure: [`super::reconcile`] applies it to the lockfile and
//! the registry.

use std::collections::{BTreeMap, BTreeSet};

use super::lockfile::{Entry, Lockfile};
use crate::catalogue::OcamlVersion;
use crate::model::TagId;
use crate::plan::Target;

/// An alias that names a compiler series moves with its tag; the others
/// (`latest`, `debian`, `debian-13`) wait for the version's tier-1 set.
pub fn is_series_alias(alias: &str) -> bool {
    alias.contains("-ocaml-")
}

/// Is every tier-1 default-compiler target of `version` published with
/// that version?
pub fn tier1_complete(
    lock: &Lockfile,
    all: &[Target],
    version: &OcamlVersion,
    namespace: &str,
) -> bool {
    let mut tier1 = all
        .iter()
        .filter(|t| t.tier == 1 && t.variant.is_none() && t.version.as_ref() == Some(version))
        .peekable();
    tier1.peek().is_some()
        && tier1.all(|t| {
            lock.entries
                .get(&t.tag_id(namespace).key())
                .is_some_and(|e| {
                    e.ocaml.as_ref() == Some(version) && e.arches.contains_key(&t.arch)
                })
        })
}

/// The aliases each entry owns, by entry key (every entry of `lock` is
/// present, most with none). An entry keeps the order of the aliases it
/// already had; aliases it gains follow, sorted.
pub fn owners(lock: &Lockfile, all: &[Target], namespace: &str) -> BTreeMap<String, Vec<String>> {
    let mut owned: BTreeMap<String, BTreeSet<String>> = lock
        .entries
        .keys()
        .map(|k| (k.clone(), BTreeSet::new()))
        .collect();
    let claims = claims(all, namespace);
    let moving: BTreeSet<(String, String)> = lock
        .entries
        .values()
        .map(|e| (e.repository.clone(), e.tag.clone()))
        .chain(all.iter().map(|t| {
            let id = t.tag_id(namespace);
            (id.repository, id.tag)
        }))
        .collect();
    let mut names: BTreeSet<(String, String)> = claims.keys().cloned().collect();
    for e in lock.entries.values() {
        names.extend(e.aliases.iter().map(|a| (e.repository.clone(), a.clone())));
    }
    for (repo, alias) in names {
        if moving.contains(&(repo.clone(), alias.clone())) {
            continue;
        }
        let planned = claims.get(&(repo.clone(), alias.clone()));
        let owner = planned
            .and_then(|c| eligible(lock, all, c, &alias, namespace))
            .or_else(|| holder(lock, &repo, &alias));
        if let Some(key) = owner {
            owned.entry(key).or_default().insert(alias);
        }
    }
    lock.entries
        .iter()
        .map(|(key, e)| {
            let mine = owned.remove(key).unwrap_or_default();
            let mut list: Vec<String> = Vec::new();
            for a in e.aliases.iter().chain(mine.iter()) {
                if mine.contains(a) && !list.contains(a) {
                    list.push(a.clone());
                }
            }
            (key.clone(), list)
        })
        .collect()
}

/// A planned claim on an alias: the tag the plan gives it to, and that
/// tag's compiler.
struct Claim {
    tag: TagId,
    version: Option<OcamlVersion>,
}

/// (repository, alias) → the first planned tag claiming it.
fn claims(all: &[Target], namespace: &str) -> BTreeMap<(String, String), Claim> {
    let mut out: BTreeMap<(String, String), Claim> = BTreeMap::new();
    for t in all {
        let id = t.tag_id(namespace);
        for a in &t.aliases {
            let name = (id.repository.clone(), a.clone());
            if out.get(&name).is_none_or(|c| id < c.tag) {
                let claim = Claim {
                    tag: id.clone(),
                    version: t.version.clone(),
                };
                out.insert(name, claim);
            }
        }
    }
    out
}

/// The claiming entry's key, when it may have the alias now.
fn eligible(
    lock: &Lockfile,
    all: &[Target],
    claim: &Claim,
    alias: &str,
    namespace: &str,
) -> Option<String> {
    let key = claim.tag.key();
    let entry = lock.entries.get(&key)?;
    if is_series_alias(alias) {
        return Some(key);
    }
    let v = claim.version.as_ref()?;
    (entry.ocaml.as_ref() == Some(v) && tier1_complete(lock, all, v, namespace)).then_some(key)
}

/// The entry that holds `alias` today; of several, the newest compiler
/// (then the latest publication, then the key, so the choice is stable).
fn holder(lock: &Lockfile, repo: &str, alias: &str) -> Option<String> {
    lock.entries
        .values()
        .filter(|e| e.repository == repo && e.aliases.iter().any(|a| a == alias))
        .max_by(|a, b| rank(a).cmp(&rank(b)))
        .map(Entry::key)
}

fn rank(e: &Entry) -> (Option<&OcamlVersion>, chrono::DateTime<chrono::Utc>, String) {
    (e.ocaml.as_ref(), e.published_at, e.key())
}

/// Aliases more than one entry claims (`repository:alias` and the
/// claiming entries): what `kiln verify` reports, since the registry can
/// hold only one of them.
pub fn contested(lock: &Lockfile) -> Vec<(String, Vec<String>)> {
    let mut by_alias: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in lock.entries.values() {
        for a in &e.aliases {
            by_alias
                .entry(format!("{}:{a}", e.repository))
                .or_default()
                .insert(e.key());
        }
    }
    by_alias
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(a, v)| (a, v.into_iter().collect()))
        .collect()
}

#[cfg(test)]
#[path = "owners_tests.rs"]
mod tests;
