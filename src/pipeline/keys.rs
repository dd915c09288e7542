//! Build keys without building: what `kiln plan --keys` shows, computed
//! exactly as a build computes them (same parents, same commit, the same
//! builder variables), with each target's immutable tag and its standing
//! against the published lockfile.

use std::collections::BTreeMap;

use serde::Serialize;

use super::decide::{self, standing};
use crate::builders::Builders;
use crate::config::Config;
use crate::lockfile::Lockfile;
use crate::plan::prepare::{self, ParentCache};
use crate::plan::{Prepared, Target};

/// Each target's build key and inputs, or why it cannot be computed.
pub async fn target_keys(
    config: &Config,
    targets: &[Target],
) -> Vec<(String, Result<Prepared, String>)> {
    let commit = match prepare::opam_repository_commit(config).await {
        Ok(c) => c,
        Err(e) => {
            return targets
                .iter()
                .map(|t| (t.id(), Err(e.to_string())))
                .collect();
        }
    };
    let builders = Builders::new(config);
    let mut parents = ParentCache::new(config);
    let mut out = Vec::new();
    for t in targets {
        let vars = builders.get(t.builder).build_vars();
        let p = prepare::prepare(config, t, &commit, &vars, &mut parents)
            .await
            .map_err(|e| e.to_string());
        out.push((t.id(), p));
    }
    out
}

/// Per target id: its build key (or why there is none), immutable tag and
/// standing against the lockfile.
#[derive(Debug, Default, Serialize)]
pub struct PlanKeys {
    pub build_keys: BTreeMap<String, String>,
    pub immutable_tags: BTreeMap<String, String>,
    pub states: BTreeMap<String, String>,
}

/// Keys, immutable tags and standings of `targets`.
pub async fn plan_keys(config: &Config, targets: &[Target], lock: &Lockfile) -> PlanKeys {
    let ns = &config.registry.namespace;
    let mut out = PlanKeys::default();
    let mut by_tag: BTreeMap<String, Vec<Prepared>> = BTreeMap::new();
    for (id, p) in target_keys(config, targets).await {
        match p {
            Ok(p) => {
                let tag = p.target.tag_id(ns).key();
                let published = lock.entries.get(&tag);
                out.states
                    .insert(id.clone(), standing(published, &p).to_string());
                out.build_keys.insert(id, p.key.clone());
                by_tag.entry(tag).or_default().push(p);
            }
            Err(e) => {
                out.build_keys.insert(id, format!("(no key: {e})"));
            }
        }
    }
    for ps in by_tag.values() {
        let group = decide::group_key(&decide::arch_keys(ps));
        for p in ps {
            out.immutable_tags
                .insert(p.target.id(), p.target.immutable_tag(&group));
        }
    }
    out
}
