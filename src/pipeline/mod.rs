//! `kiln build`: running a plan, its tags (one multi-arch index each)
//! concurrently, critical path first ([`schedule`]), each read top-down:
//!
//! 1. [`prepare`](crate::plan::prepare): each arch's inputs (rendered
//!    recipes, parent digest, compiler, opam, opam-repository commit,
//!    builder, arch) hash into its build key;
//! 2. [`decide`]: a tag whose key equals the published one is unchanged
//!    (same digest, no churn); otherwise the arches whose own key changed
//!    are built and the others reused;
//! 3. [`tag`]: the changed arches are built in parallel through their
//!    [`Builder`](crate::builders::Builder), within each host's limit; if
//!    any fails, nothing of the tag is published and the failure, with its
//!    kind, is recorded for the API and the daemon;
//! 4. [`publish`](crate::publish): the index over every arch is
//!    assembled, verified and published; the lockfile says which inputs
//!    changed. Last, [`reconcile`](crate::publish::reconcile): every
//!    alias goes to its one owner (series-less aliases once a version's
//!    tier-1 set is complete) and every moving tag and alias the
//!    registry holds elsewhere is put back.
//!
//! [`rebuild`] is `kiln verify --rebuild`: one published target through
//! steps 1 and 3 with its published inputs, compared instead of published.

pub mod decide;
pub mod keys;
pub mod rebuild;
pub mod report;
pub mod schedule;
pub mod simulate;
pub mod sources;
mod tag;

use std::collections::{BTreeMap, BTreeSet};

use futures_util::{StreamExt, stream};

pub use keys::{PlanKeys, plan_keys, target_keys};
pub use report::{Event, Outcome, Summary, TagReport};

use crate::builders::Builders;
use crate::catalogue::{BuilderKind, Catalogue};
use crate::config::Config;
use crate::lockfile::Lockfile;
use crate::model::{FailureKind, TagId};
use crate::plan::prepare::{self, ParentCache};
use crate::plan::{self, Filter, Target};
use crate::registry::Registry;
use crate::state::StateStore;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Prepare(#[from] prepare::PrepareError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Lockfile(#[from] crate::lockfile::LockfileError),
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    #[error(transparent)]
    Sources(#[from] crate::sources::SourcesError),
}

impl RunError {
    /// Whether a run that failed as a whole is worth retrying.
    pub fn kind(&self) -> FailureKind {
        match self {
            RunError::Plan(_) => FailureKind::Recipe,
            RunError::Prepare(e) => e.kind(),
            RunError::Registry(e) => e.kind(),
            RunError::Publish(e) => e.kind(),
            RunError::Sources(e) => e.kind(),
            RunError::State(_) | RunError::Lockfile(_) => FailureKind::Infra,
        }
    }
}

pub struct Options {
    pub filter: Filter,
    pub dry_run: bool,
    /// Which moving tags and aliases the run reads back from the registry
    /// after publishing ([`crate::publish::reconcile`]): every one for a
    /// CLI run, only those whose owner changed for a daemon job (its
    /// round reconciles them all when it ends).
    pub reconcile: crate::publish::Scope,
    /// Build the selected tags even when their keys are unchanged (`kiln
    /// build --tag … --force`): every arch, nothing adopted; the result
    /// is published once it verifies, and the report says whether it gave
    /// the published digest again.
    pub force: bool,
}

/// What every tag of one run shares.
struct Run<'a> {
    config: &'a Config,
    registry: Registry,
    /// The lockfile as it was when the run started.
    lock: Lockfile,
    state: StateStore,
    builders: Builders,
    commit: String,
    parents: tokio::sync::Mutex<ParentCache>,
    dry_run: bool,
    force: bool,
}

/// Run the plan selected by `opts`.
pub async fn run(
    config: &Config,
    cat: &Catalogue,
    opts: &Options,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<Summary, RunError> {
    let targets = plan::expand(cat, &opts.filter)?;
    let registry = Registry::new(&config.registry)?;
    let lock = load_or_recover(config, cat, &registry, opts.dry_run).await?;
    let run = Run {
        config,
        registry,
        lock,
        state: StateStore::open(&config.database.path)?,
        builders: Builders::new(config),
        commit: prepare::opam_repository_commit(config).await?,
        parents: tokio::sync::Mutex::new(ParentCache::new(config)),
        dry_run: opts.dry_run,
        force: opts.force,
    };
    if !opts.dry_run {
        sources::preflight(config, &run.registry, &run.builders, &targets, &run.commit).await?;
        run.sweep(&targets).await;
    }
    let groups = group_by_tag(&targets, &config.registry.namespace);
    progress(Event::Planned {
        arch_builds: groups.values().map(Vec::len).sum(),
    });
    // The plan's parents, each asked once and all at once (a no-op round
    // is then local work and reconciliation's HEADs).
    let pairs = targets.iter().filter_map(|t| {
        let platform = crate::registry::index::Platform::for_arch(&t.platform, t.arch);
        Some((t.parent.clone()?, platform))
    });
    run.parents
        .lock()
        .await
        .resolve_all(config, pairs, config.registry.concurrency)
        .await;
    // Tags run concurrently, critical path first (`schedule`); each
    // host's slots bound the builds, a failed tag holds no other back.
    let slots: usize = targets
        .iter()
        .map(|t| t.builder)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|k| run.builders.get(k).capacity())
        .sum();
    let in_flight = schedule::in_flight(slots, config.registry.concurrency);
    let run = &run;
    let tags: Vec<_> = schedule::order(&groups)
        .into_iter()
        .map(
            |(id, ts)| -> futures_util::future::BoxFuture<'_, TagReport> {
                Box::pin(run.tag(id, ts, progress))
            },
        )
        .collect();
    let mut reports: Vec<TagReport> = stream::iter(tags)
        .buffer_unordered(in_flight)
        .collect()
        .await;
    reports.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
    let mut summary = Summary::default();
    for r in reports {
        summary.add(r);
    }
    if !opts.dry_run {
        let all = plan::expand(cat, &Filter::default())?;
        // A registry that fails here (a rate limit past its ceiling) does
        // not lose the run's report: the failure is in the summary, and
        // the next run reconciles again.
        let reconciled = match crate::publish::reconcile(
            &run.registry,
            &config.lockfile_path(),
            &all,
            &config.registry.namespace,
            opts.reconcile,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reconciling moving tags and aliases");
                summary.reconcile_error = Some(e.to_string());
                Default::default()
            }
        };
        summary.repaired = reconciled.moved.clone();
        let indexes = crate::publish::publish_multi_os_indexes(
            &run.registry,
            &config.lockfile_path(),
            &all,
            &config.registry.namespace,
        )
        .await?;
        if !indexes.is_empty() {
            tracing::info!(tags = %indexes.join(", "), "multi-OS indexes moved");
        }
        if summary.built + summary.adopted > 0 || reconciled.changed_anything() {
            run.push_lockfile().await;
        }
    }
    Ok(summary)
}

/// The lockfile; when it is missing (a lost state dir, a new factory
/// host), rebuilt from the registry first, so that nothing published is
/// built again. A dry run recovers in memory only.
async fn load_or_recover(
    config: &Config,
    cat: &Catalogue,
    registry: &Registry,
    dry_run: bool,
) -> Result<Lockfile, RunError> {
    let path = config.lockfile_path();
    if path.exists() {
        if !dry_run {
            // Another factory may have published to this namespace since
            // this one last did: decide on its entries too. A registry that
            // cannot answer now (rate limited, down) does not stop the run:
            // its tags meet the same registry and fail as infrastructure,
            // and the lockfile's publication at the end syncs again first.
            let ns = &config.registry.namespace;
            if let Err(e) = crate::publish::remote::sync(registry, ns, &path).await {
                tracing::warn!(error = %e, "reading the published lockfile; this run's publication merges it");
            }
        }
        return Ok(Lockfile::load(&path)?);
    }
    let ns = &config.registry.namespace;
    let repos = crate::publish::repositories::known_repositories(registry, cat, ns, None).await?;
    let r = if dry_run {
        crate::publish::recover::recover(registry, ns, &repos).await?
    } else {
        crate::publish::recover::recover_into(
            registry,
            ns,
            &repos,
            &path,
            crate::registry::Depth::Cheap,
        )
        .await?
    };
    if !r.lockfile.entries.is_empty() {
        tracing::info!(
            tags = r.lockfile.entries.len(),
            lockfile = %path.display(),
            "the lockfile was missing: recovered from the registry"
        );
    }
    Ok(r.lockfile)
}

/// Targets grouped by the tag they publish to, in tag order.
pub fn group_by_tag<'a>(
    targets: &'a [Target],
    namespace: &str,
) -> BTreeMap<TagId, Vec<&'a Target>> {
    let mut groups: BTreeMap<TagId, Vec<&Target>> = BTreeMap::new();
    for t in targets {
        groups.entry(t.tag_id(namespace)).or_default().push(t);
    }
    groups
}

impl Run<'_> {
    /// Push the lockfile to the registry for replicas; a failure is logged
    /// (the local lockfile and the registry's tags stay the truth).
    async fn push_lockfile(&self) {
        let path = self.config.lockfile_path();
        let ns = &self.config.registry.namespace;
        match crate::publish::remote::publish_lockfile(&self.registry, ns, &path).await {
            Ok(digest) => tracing::info!(%digest, "lockfile pushed to the registry"),
            Err(e) => tracing::warn!(error = %e, "pushing the lockfile to the registry"),
        }
    }

    /// Sweep what killed builds left, for the builder kinds this run uses.
    async fn sweep(&self, targets: &[Target]) {
        let kinds: BTreeSet<BuilderKind> = targets.iter().map(|t| t.builder).collect();
        for k in kinds {
            self.builders.get(k).sweep().await;
        }
    }
}
