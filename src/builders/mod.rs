//! Per-platform builders behind one contract: Docker (Linux, Windows),
//! ZFS datasets (macOS, FreeBSD), QEMU disks (OpenBSD).
//!
//! A [`Builder`] says whether it can build a target, how many builds its
//! hosts take at once, which build-time variables it fills in, builds one
//! arch from a [`Prepared`] target into a pushed artifact (a typed
//! [`BuildOutput`] or a [`Failure`] with its kind), and sweeps what a
//! killed build left. [`Builders`] holds one per [`BuilderKind`]; the
//! registration is the `match` in [`Builders::new`], so adding a kind makes
//! the compiler point at the one line to add. Builders push by digest and
//! never tag: publication is `publish`'s.

pub mod docker;
pub mod gc;
pub mod hosts;
pub mod inventory;
pub mod qemu;
pub mod zfs;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::catalogue::BuilderKind;
use crate::config::Config;
use crate::lockfile::Lockfile;
use crate::model::{ArtifactKind, Failure};
use crate::plan::{Prepared, Target};
use crate::registry::Registry;

/// A boxed future, so that builders can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything one arch's build needs.
pub struct BuildJob<'a> {
    pub registry: &'a Registry,
    /// The target with its inputs, key and rendered recipes.
    pub prepared: &'a Prepared,
    /// Where the output is pushed (`kiln/opam`).
    pub repository: &'a str,
    /// The tag group's immutable tag (the artifact's name carries it).
    pub immutable_tag: &'a str,
    /// The build's log file.
    pub log: &'a Path,
    /// Build every step afresh, taking nothing from a host's cache (a
    /// forced rebuild, `kiln verify --rebuild`: rebuilding proves nothing
    /// if the steps come from the cache).
    pub fresh: bool,
}

/// What a build pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    /// Digest of the pushed per-arch manifest (image or artifact).
    pub digest: String,
    /// Set when the output was not built but taken as it was on the build
    /// host (`host:<name>`): the same key's ZFS tree already there.
    pub adopted: Option<String>,
}

/// One kind of builder.
pub trait Builder: Send + Sync {
    fn kind(&self) -> BuilderKind;

    /// What a published output of this builder is.
    fn artifact_kind(&self) -> ArtifactKind;

    /// Can a configured host of this builder build `t`?
    fn can_build(&self, t: &Target) -> bool;

    /// How many builds of this kind may run at once (every slot of every
    /// host; each host's own limit holds through [`host_permits`]).
    fn capacity(&self) -> usize;

    /// Variables this builder fills in when a build runs; recipes see
    /// placeholders at plan time, so their values never enter the key.
    fn build_vars(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Build, test and push one arch.
    fn build<'a>(&'a self, job: BuildJob<'a>) -> BoxFuture<'a, Result<BuildOutput, Failure>>;

    /// Remove what builds of a killed Kiln left (marked with an owner that
    /// is gone). Failures are logged: sweeping never stops a build.
    fn sweep(&self) -> BoxFuture<'_, ()>;

    /// Every configured host: health, arches, slots, builds running, and
    /// what it holds judged against `lock` (see [`inventory`]). A host
    /// that cannot be reached is a report saying so, never an error.
    fn inventory<'a>(&'a self, lock: &'a Lockfile) -> BoxFuture<'a, Vec<inventory::HostReport>>;
}

/// The builder of each kind: the registration.
fn register(kind: BuilderKind, config: &Config) -> Box<dyn Builder> {
    match kind {
        BuilderKind::Docker => Box::new(docker::DockerBuilder::new(config)),
        BuilderKind::Zfs => Box::new(zfs::ZfsBuilder::new(config)),
        BuilderKind::Qemu => Box::new(qemu::QemuBuilder::new(config)),
    }
}

/// One builder per kind, indexed by `BuilderKind as usize`.
pub struct Builders {
    all: [Box<dyn Builder>; BuilderKind::ALL.len()],
}

impl Builders {
    /// Every kind's builder for `config`. Connects nothing yet.
    pub fn new(config: &Config) -> Builders {
        Builders {
            all: BuilderKind::ALL.map(|k| register(k, config)),
        }
    }

    pub fn get(&self, kind: BuilderKind) -> &dyn Builder {
        self.all[kind as usize].as_ref()
    }

    /// Every host of every builder (see [`inventory`]).
    pub async fn inventory(&self, lock: &Lockfile) -> inventory::Inventory {
        inventory::collect(self, lock).await
    }

    /// Can any configured builder build this target?
    pub fn can_build(&self, t: &Target) -> bool {
        self.get(t.builder).can_build(t)
    }
}

/// The build slots of one builder host, shared by every build in this
/// process: the daemon runs several jobs at once, and together they must
/// stay within each host's `concurrency`.
pub fn host_permits(host: &str, concurrency: usize) -> Arc<Semaphore> {
    static HOSTS: std::sync::OnceLock<std::sync::Mutex<BTreeMap<String, Arc<Semaphore>>>> =
        std::sync::OnceLock::new();
    let mut hosts = match HOSTS.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    hosts
        .entry(host.to_string())
        .or_insert_with(|| Arc::new(Semaphore::new(concurrency.max(1))))
        .clone()
}

/// Remove work directories (`<pid>-…`, under `root`) of Kiln processes
/// of this host that are gone.
pub(crate) fn sweep_dead_work_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if crate::process::owner_is_gone(&format!("{}/{pid}", crate::process::hostname())) {
            tracing::info!(dir = %e.path().display(), "removing the work dir of a killed build");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The artifact name of a single-arch build: `<os>-<arch>-ocaml-<v>-<12 hex>`.
pub fn artifact_name(p: &Prepared) -> String {
    let t = &p.target;
    format!("{}-{}-{}-{}", t.os, t.arch, t.ocaml_name(), p.short_key())
}

/// Annotations every artifact manifest carries: the version, build key and
/// immutable tag it was built for.
pub fn artifact_annotations(job: &BuildJob<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "org.opencontainers.image.version".to_string(),
            job.prepared.target.image_version(),
        ),
        (
            "org.ocaml.kiln.build-key".to_string(),
            job.prepared.key.clone(),
        ),
        (
            "org.ocaml.kiln.immutable-tag".to_string(),
            job.immutable_tag.to_string(),
        ),
    ])
}

/// What the target's recipes take from the source mirror
/// (`{{sources_url}}`), laid out by [`crate::sources::target_tree`] for the
/// opam-repository commit this build is keyed on: each source checked
/// present (a missing one named) and read through the digest-checked cache.
pub async fn target_sources(
    config: &Config,
    mirror: &crate::sources::Mirror<'_>,
    p: &Prepared,
) -> Result<crate::sources::serve::Tree, crate::sources::SourcesError> {
    let commit = p
        .inputs
        .get("opam_repository_commit")
        .map(String::as_str)
        .unwrap_or_default();
    crate::sources::target_tree(
        config,
        mirror,
        &p.target.uses,
        &p.target.opam_packages,
        commit,
    )
    .await
}

/// A server on 127.0.0.1 for [`target_sources`]; `None` when the recipes
/// take nothing from the mirror (Docker and ZFS builds; QEMU serves the
/// files from its own installer server).
/// The tree of sources a build's recipes take from the mirror, `None`
/// when they take none.
pub async fn source_tree(
    config: &Config,
    job: &BuildJob<'_>,
) -> Result<Option<crate::sources::Tree>, crate::sources::SourcesError> {
    let p = job.prepared;
    if p.target.uses.is_empty() {
        return Ok(None);
    }
    let mirror =
        crate::sources::Mirror::new(job.registry, &config.registry.namespace, &config.state_dir);
    Ok(Some(target_sources(config, &mirror, p).await?))
}

pub async fn source_server(
    config: &Config,
    job: &BuildJob<'_>,
) -> Result<Option<crate::sources::SourceServer>, crate::sources::SourcesError> {
    let p = job.prepared;
    if p.target.uses.is_empty() {
        return Ok(None);
    }
    let mirror =
        crate::sources::Mirror::new(job.registry, &config.registry.namespace, &config.state_dir);
    let tree = target_sources(config, &mirror, p).await?;
    let bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let server = crate::sources::SourceServer::start(tree, bind).await?;
    tracing::info!(target_id = %p.target.id(), url = %server.url(), "source server");
    Ok(Some(server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_registered_at_its_own_index() {
        let config = Config::defaults(std::path::Path::new("/tmp")).unwrap();
        let builders = Builders::new(&config);
        for kind in BuilderKind::ALL {
            assert_eq!(builders.get(kind).kind(), kind);
        }
    }
}
