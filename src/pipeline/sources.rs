//! Before anything builds: every source the run's targets take from the
//! mirror is there, or the run stops naming the first that is not.

use std::collections::BTreeSet;

use crate::builders::Builders;
use crate::catalogue::sources::GitSource;
use crate::config::Config;
use crate::plan::Target;
use crate::registry::Registry;
use crate::sources::{self, Mirror, SourcesError, Wanted};

/// What the buildable targets want from the mirror: sources (each once),
/// whether the opam-repository bundle is wanted, and the git sources.
pub async fn wanted(
    config: &Config,
    builders: &Builders,
    targets: &[Target],
    commit: &str,
) -> Result<(Vec<Wanted>, bool, Vec<GitSource>), SourcesError> {
    let mut out: Vec<Wanted> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut bundle = false;
    let mut git: Vec<GitSource> = Vec::new();
    let mut packages_seen = BTreeSet::new();
    for t in targets {
        if t.uses.is_empty() || !builders.get(t.builder).can_build(t) {
            continue;
        }
        bundle |= t.uses.bundle;
        for g in &t.uses.git {
            if !git.contains(g) {
                git.push(g.clone());
            }
        }
        // Archives depend only on the package set: read each set once.
        let opam_cache = t.uses.opam_cache && packages_seen.insert(t.opam_packages.clone());
        let ws = sources::wanted(
            config,
            &t.uses.sources,
            opam_cache,
            &t.opam_packages,
            commit,
        )
        .await?;
        for w in ws {
            if seen.insert((w.name.clone(), w.checksum.clone())) {
                out.push(w);
            }
        }
    }
    Ok((out, bundle, git))
}

/// Refuse the run, naming the first missing source.
pub async fn preflight(
    config: &Config,
    registry: &Registry,
    builders: &Builders,
    targets: &[Target],
    commit: &str,
) -> Result<(), SourcesError> {
    let (wanted, bundle, git) = wanted(config, builders, targets, commit).await?;
    if wanted.is_empty() && !bundle && git.is_empty() {
        return Ok(());
    }
    let mirror = Mirror::new(registry, &config.registry.namespace, &config.state_dir);
    mirror.check(&wanted).await?;
    if bundle {
        mirror.require_bundle(commit).await?;
    }
    for g in &git {
        mirror.require_git(g).await?;
    }
    Ok(())
}

/// `kiln sources sync`: mirror everything the plan's buildable targets
/// want (all targets when `all`), then the bundle.
pub async fn sync(
    config: &Config,
    registry: &Registry,
    targets: &[Target],
    commit: &str,
) -> Result<sources::SyncReport, SourcesError> {
    let builders = Builders::new(config);
    let (wanted, bundle, git) = wanted(config, &builders, targets, commit).await?;
    let mirror = Mirror::new(registry, &config.registry.namespace, &config.state_dir);
    let mut report = mirror.sync(&wanted).await?;
    // Git sources: bundles of their declared commits, each checked. One
    // not declared at a commit is refused, naming the command.
    let sources_yaml = config.versions_dir.join("sources.yaml");
    for g in &git {
        let url = sources::git::fetch_url(g, &sources_yaml);
        report
            .sources
            .push(mirror.sync_git(&config.state_dir, g, &url).await?);
    }
    if bundle {
        report
            .sources
            .push(mirror.sync_bundle(config, commit).await?);
    }
    Ok(report)
}
