//! The engine's layer cache within its host's budget
//! (`[[docker.hosts]] cache_budget_gib`).
//!
//! A published build leaves its steps on the engine (untagged images, each
//! the parent of the next; decision 098), and the next build whose steps
//! render the same reuses them. After each build on a host, what those
//! steps hold is summed (each image's own bytes: its size less its
//! parent's) and, while it is over the budget, the oldest step that
//! nothing builds on is removed, one at a time: a removed step's parent
//! may become the next candidate. Never removed:
//! - a step another image builds on (a later step, a tagged image);
//! - a step a container runs from (a build running now: its earlier steps
//!   are the parents of that one);
//! - a step younger than `docker.cache_min_age_secs`, so that the step a
//!   build in flight (of any Kiln process) committed a moment ago, before
//!   its next container starts, stays.
//!
//! With the containerd image store the engine lists no intermediate
//! images: nothing is found to prune there, and `kiln doctor` shows the
//! engine's own cache figure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, RemoveImageOptionsBuilder,
};
use serde::Serialize;

use super::Engine;

/// One cached step.
#[derive(Debug, Clone)]
struct Step {
    parent: String,
    created: i64,
    /// Its own bytes (its size less its parent's).
    own: u64,
}

/// What the cache holds on one engine, and what a prune removed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CacheUse {
    pub steps: usize,
    pub bytes: u64,
    /// Steps removed, and their bytes.
    pub removed: usize,
    pub freed: u64,
}

/// Every image of the engine, intermediate ones included.
async fn all_images(
    engine: &Engine,
) -> Result<Vec<bollard::models::ImageSummary>, bollard::errors::Error> {
    engine
        .docker
        .list_images(Some(ListImagesOptions {
            all: true,
            ..Default::default()
        }))
        .await
}

/// The untagged images among `all` (the build steps), by id.
fn steps(all: &[bollard::models::ImageSummary]) -> BTreeMap<String, Step> {
    let sizes: BTreeMap<&str, i64> = all.iter().map(|i| (i.id.as_str(), i.size)).collect();
    let untagged = |i: &bollard::models::ImageSummary| {
        i.repo_tags.iter().all(|t| t == "<none>:<none>")
            && i.repo_digests.iter().all(|d| d == "<none>@<none>")
    };
    all.iter()
        .filter(|i| untagged(i))
        .map(|i| {
            let parent = sizes.get(i.parent_id.as_str()).copied().unwrap_or(0);
            let step = Step {
                parent: i.parent_id.clone(),
                created: i.created,
                own: u64::try_from(i.size - parent).unwrap_or(0),
            };
            (i.id.clone(), step)
        })
        .collect()
}

/// What the cache holds now.
pub async fn usage(engine: &Engine) -> Result<CacheUse, bollard::errors::Error> {
    let s = steps(&all_images(engine).await?);
    Ok(CacheUse {
        steps: s.len(),
        bytes: s.values().map(|x| x.own).sum(),
        ..CacheUse::default()
    })
}

/// One prune at a time per host (two builds ending together would
/// otherwise count the same bytes twice).
fn host_lock(host: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    let mut m = match LOCKS.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    m.entry(host.to_string()).or_default().clone()
}

/// Prune `engine`'s cache to `budget` bytes, oldest step first, keeping
/// every step younger than `min_age_secs` or under a container or another
/// image.
pub async fn keep_within(
    engine: &Engine,
    budget: u64,
    min_age_secs: u64,
) -> Result<CacheUse, bollard::errors::Error> {
    let lock = host_lock(&engine.name);
    let _one = lock.lock().await;
    let all = all_images(engine).await?;
    let mut steps = steps(&all);
    let mut bytes: u64 = steps.values().map(|s| s.own).sum();
    let mut out = CacheUse {
        steps: steps.len(),
        bytes,
        ..CacheUse::default()
    };
    if bytes <= budget {
        return Ok(out);
    }
    // Images something builds on: any image's parent (tagged ones too).
    let mut children: BTreeMap<String, usize> = BTreeMap::new();
    for i in &all {
        *children.entry(i.parent_id.clone()).or_default() += 1;
    }
    let in_use: BTreeSet<String> = engine
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..Default::default()
        }))
        .await?
        .into_iter()
        .filter_map(|c| c.image_id)
        .collect();
    let now = chrono::Utc::now().timestamp();
    let mut stuck = 0;
    let young = |s: &Step| now - s.created < i64::try_from(min_age_secs).unwrap_or(i64::MAX);
    while bytes > budget {
        let next = steps
            .iter()
            .filter(|(id, s)| {
                children.get(*id).copied().unwrap_or(0) == 0 && !in_use.contains(*id) && !young(s)
            })
            .min_by_key(|(id, s)| (s.created, (*id).clone()))
            .map(|(id, _)| id.clone());
        let Some(id) = next else {
            tracing::info!(engine = %engine.name, bytes, budget, "layer cache over its budget, but every step left is young, in use or built on");
            break;
        };
        let Some(step) = steps.remove(&id) else {
            break;
        };
        let removed = engine
            .docker
            .remove_image(
                &id,
                Some(RemoveImageOptionsBuilder::default().noprune(true).build()),
                None,
            )
            .await;
        match removed {
            Ok(_) => {
                bytes = bytes.saturating_sub(step.own);
                out.removed += 1;
                out.freed += step.own;
                if let Some(n) = children.get_mut(&step.parent) {
                    *n = n.saturating_sub(1);
                }
            }
            // Taken by a build since the listing (a new child, a new
            // container): it stays, the next oldest goes.
            Err(e) => {
                stuck += 1;
                tracing::debug!(engine = %engine.name, step = %id, error = %e, "keeping a cached step");
            }
        }
    }
    out.steps = steps.len() + stuck;
    out.bytes = bytes;
    if out.removed > 0 {
        tracing::info!(engine = %engine.name, removed = out.removed, freed = out.freed, left = out.bytes, budget, "layer cache pruned to its budget, oldest steps first");
    }
    Ok(out)
}
