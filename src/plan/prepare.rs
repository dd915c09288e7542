//! Preparing a target for a build: resolving its inputs (the parent image's
//! per-platform digest, the opam-repository commit), rendering every recipe
//! once, and hashing it all into the build key. What a builder receives is
//! exactly what was keyed: builders never render again.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{Target, key, template};
use crate::catalogue::{ImageRef, ReferenceError};
use crate::config::Config;
use crate::model::{Failure, FailureKind};
use crate::registry::index::Platform;
use crate::registry::{Registry, RegistryError};
use crate::state::parents::ParentStore;

/// A target ready to build: its inputs, its build key, and every recipe
/// rendered from them.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub target: Target,
    pub inputs: key::Inputs,
    pub key: String,
    /// Every rendered recipe, as (file name, text), in the order the
    /// platform lists them. The first is the Dockerfile or the script.
    pub recipes: Vec<(String, String)>,
}

impl Prepared {
    /// The first rendered recipe (the Dockerfile, or the provisioning script).
    pub fn main_recipe(&self) -> &str {
        self.recipes.first().map(|(_, t)| t.as_str()).unwrap_or("")
    }

    /// The first 12 hex digits of the build key, used in names.
    pub fn short_key(&self) -> &str {
        let hex = self.key.trim_start_matches("sha256:");
        &hex[..12.min(hex.len())]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("parent {reference}: {source}")]
    Parent {
        reference: String,
        source: RegistryError,
    },
    #[error("parent {reference}: {message}")]
    ParentMissing { reference: String, message: String },
    #[error("parent {reference:?} is not an image reference: {source}")]
    ParentReference {
        reference: String,
        source: ReferenceError,
    },
    #[error("recipe {path}: {message}")]
    Recipe { path: String, message: String },
    #[error("{0}")]
    Template(String),
    #[error(
        "resolving the opam-repository commit (set plan.opam_repository_commit to pin it): {0}"
    )]
    OpamRepository(String),
    #[error(
        "parent {reference}: {host} is unreachable in this run ({cause}) and no digest of it is remembered"
    )]
    Unreachable {
        reference: String,
        host: String,
        cause: String,
    },
}

impl PrepareError {
    /// An unreachable registry or git remote is worth retrying; a missing
    /// parent tag or a broken recipe is not.
    pub fn kind(&self) -> FailureKind {
        match self {
            PrepareError::Parent { source, .. } => source.kind(),
            PrepareError::OpamRepository(_) | PrepareError::Unreachable { .. } => {
                FailureKind::Infra
            }
            PrepareError::ParentMissing { .. }
            | PrepareError::ParentReference { .. }
            | PrepareError::Recipe { .. }
            | PrepareError::Template(_) => FailureKind::Recipe,
        }
    }
}

impl From<PrepareError> for Failure {
    fn from(e: PrepareError) -> Failure {
        Failure::new(e.kind(), e.to_string())
    }
}

/// A parent reference, parsed (the catalogue checked it when it loaded).
fn parse_parent(reference: &str) -> Result<ImageRef, PrepareError> {
    reference
        .parse()
        .map_err(|source| PrepareError::ParentReference {
            reference: reference.to_string(),
            source,
        })
}

/// Where an image lives: (registry host, repository path, tag or digest),
/// Docker Hub's defaults filled in as Docker does.
fn registry_location(r: &ImageRef) -> (String, String, String) {
    let at = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".to_string());
    match &r.host {
        Some(host) => (host.clone(), r.path.clone(), at),
        None if r.path.contains('/') => ("registry-1.docker.io".into(), r.path.clone(), at),
        None => (
            "registry-1.docker.io".into(),
            format!("library/{}", r.path),
            at,
        ),
    }
}

/// `(name without tag, digest)` of an upstream parent reference, for one
/// platform: when the tag names a multi-arch index, the digest is that of
/// the platform's own manifest, so the build key records exactly what the
/// build starts from (and engines never confuse two platforms of one index).
pub async fn resolve_parent(
    config: &Config,
    reference: &str,
    platform: &Platform,
) -> Result<(String, String), PrepareError> {
    let parsed = parse_parent(reference)?;
    let (host, path, tag) = registry_location(&parsed);
    let name = parsed.name();
    let parent_err = |source| PrepareError::Parent {
        reference: reference.to_string(),
        source,
    };
    let missing = |message: String| PrepareError::ParentMissing {
        reference: reference.to_string(),
        message,
    };
    let loopback = host.starts_with("127.") || host.starts_with("localhost");
    let url = format!("{}://{host}", if loopback { "http" } else { "https" });
    let reg = Registry::upstream(&config.registry, &url).map_err(parent_err)?;
    let (digest, media_type) = reg
        .head_manifest(&path, &tag)
        .await
        .map_err(parent_err)?
        .ok_or_else(|| missing(format!("no such tag in {host}")))?;
    if media_type != crate::registry::OCI_INDEX && media_type != crate::registry::DOCKER_LIST {
        return Ok((name, digest));
    }
    let idx = reg
        .get_manifest(&path, &digest)
        .await
        .and_then(|m| m.json())
        .map_err(parent_err)?;
    let child = crate::registry::index::child_for(&idx, platform)
        .ok_or_else(|| missing(format!("has no {platform} image")))?;
    Ok((name, child))
}

/// The opam-repository commit that is a build input now: pinned in the
/// configuration, or the one in use (see [`super::opam_repo`]).
pub async fn opam_repository_commit(config: &Config) -> Result<String, PrepareError> {
    super::opam_repo::commit_in_use(config).await
}

/// How long an upstream host that did not answer is left alone: every
/// parent from it in that time fails at once (or uses its remembered
/// digest) instead of waiting for the network again. A release of several
/// versions is several runs in one process; they share this.
const UNREACHABLE_FOR: Duration = Duration::from_secs(120);

/// Upstream hosts that did not answer, process-wide: when, and why.
fn unreachable_hosts() -> std::sync::MutexGuard<'static, BTreeMap<String, (Instant, String)>> {
    static HOSTS: OnceLock<Mutex<BTreeMap<String, (Instant, String)>>> = OnceLock::new();
    match HOSTS.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Why `host` is not to be asked now, if it is not.
fn unreachable_cause(host: &str) -> Option<String> {
    let mut hosts = unreachable_hosts();
    match hosts.get(host) {
        Some((since, cause)) if since.elapsed() < UNREACHABLE_FOR => Some(cause.clone()),
        Some(_) => {
            hosts.remove(host);
            None
        }
        None => None,
    }
}

/// Ask `reference`'s registry (unless its host is marked unreachable):
/// the host asked, and its answer.
async fn ask(
    config: &Config,
    reference: &str,
    platform: &Platform,
) -> (String, Result<(String, String), PrepareError>) {
    let host = parse_parent(reference)
        .map(|r| registry_location(&r).0)
        .unwrap_or_default();
    let result = match unreachable_cause(&host) {
        Some(cause) => Err(PrepareError::Unreachable {
            reference: reference.to_string(),
            host: host.clone(),
            cause,
        }),
        None => resolve_parent(config, reference, platform).await,
    };
    (host, result)
}

/// Parent resolution for one run: what was resolved, and the remembered
/// digests in the state database to fall back on when an upstream host
/// does not answer.
#[derive(Default)]
pub struct ParentCache {
    resolved: BTreeMap<String, (String, String)>,
    store: Option<ParentStore>,
}

impl ParentCache {
    /// A cache remembering resolutions in `config`'s state database.
    pub fn new(config: &Config) -> ParentCache {
        ParentCache {
            store: ParentStore::open(&config.database.path).ok(),
            ..ParentCache::default()
        }
    }

    /// Resolve `reference` for `platform` to a known `(name, digest)`
    /// without asking its registry: a rebuild of a published target
    /// starts from the parent it was built on.
    pub fn pin(&mut self, reference: &str, platform: &Platform, name: String, digest: String) {
        self.resolved
            .insert(format!("{reference} {platform}"), (name, digest));
    }

    /// `(name, digest)` of `reference` for `platform`.
    async fn resolve(
        &mut self,
        config: &Config,
        reference: &str,
        platform: &Platform,
    ) -> Result<(String, String), PrepareError> {
        let key = format!("{reference} {platform}");
        if let Some(x) = self.resolved.get(&key) {
            return Ok(x.clone());
        }
        let (host, result) = ask(config, reference, platform).await;
        self.settle(key, reference, platform, &host, result)
    }

    /// Resolve every `(reference, platform)` not known yet, `concurrency`
    /// at a time: a run's many targets share few parents, each asked once
    /// and all at once, before any target prepares. What fails here is
    /// not kept: the target that names it fails with it when it prepares
    /// (at once, for a host just marked unreachable).
    pub async fn resolve_all(
        &mut self,
        config: &Config,
        pairs: impl IntoIterator<Item = (String, Platform)>,
        concurrency: usize,
    ) {
        let todo: BTreeMap<String, (String, Platform)> = pairs
            .into_iter()
            .map(|(r, p)| (format!("{r} {p}"), (r, p)))
            .filter(|(k, _)| !self.resolved.contains_key(k))
            .collect();
        let asks: Vec<futures_util::future::BoxFuture<'_, _>> = todo
            .into_iter()
            .map(|(key, (r, p))| -> futures_util::future::BoxFuture<'_, _> {
                Box::pin(async move {
                    let (host, result) = ask(config, &r, &p).await;
                    (key, r, p, host, result)
                })
            })
            .collect();
        let answers: Vec<_> =
            futures_util::StreamExt::collect(futures_util::StreamExt::buffer_unordered(
                futures_util::stream::iter(asks),
                concurrency.max(1),
            ))
            .await;
        for (key, r, p, host, result) in answers {
            if let Err(e) = self.settle(key, &r, &p, &host, result) {
                tracing::debug!(parent = %r, platform = %p, error = %e, "resolving a parent ahead of its targets");
            }
        }
    }

    /// Keep what the upstream answered (remembered in the state database),
    /// or fall back to the remembered digest when it did not answer.
    fn settle(
        &mut self,
        key: String,
        reference: &str,
        platform: &Platform,
        host: &str,
        result: Result<(String, String), PrepareError>,
    ) -> Result<(String, String), PrepareError> {
        let x = match result {
            Ok(x) => {
                if let Some(s) = &self.store
                    && let Err(e) = s.remember(reference, &platform.to_string(), &x.0, &x.1)
                {
                    tracing::warn!(error = %e, "remembering a parent digest");
                }
                x
            }
            Err(e) if e.kind() == FailureKind::Infra => {
                self.fall_back(reference, platform, host, e)?
            }
            Err(e) => return Err(e),
        };
        self.resolved.insert(key, x.clone());
        Ok(x)
    }

    /// The upstream did not answer: mark its host for the rest of the run
    /// and use the remembered digest, if any.
    fn fall_back(
        &mut self,
        reference: &str,
        platform: &Platform,
        host: &str,
        e: PrepareError,
    ) -> Result<(String, String), PrepareError> {
        // Said once per host, though several parents asked at once (see
        // `resolve_all`) may all find it unreachable.
        if !matches!(e, PrepareError::Unreachable { .. }) && unreachable_cause(host).is_none() {
            tracing::warn!(%host, error = %e, "upstream registry unreachable: not asked again for {}s; parents from it use their last known digest", UNREACHABLE_FOR.as_secs());
            let cause = match &e {
                PrepareError::Parent { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            unreachable_hosts().insert(host.to_string(), (Instant::now(), cause));
        }
        let remembered = self
            .store
            .as_ref()
            .and_then(|s| s.recall(reference, &platform.to_string()).ok().flatten());
        match remembered {
            Some(r) => {
                tracing::warn!(parent = %reference, %platform, digest = %r.digest, resolved_at = %r.resolved_at, "using a stale parent digest");
                Ok((r.name, r.digest))
            }
            None => Err(e),
        }
    }
}

/// Resolve a target's inputs, render its recipes and compute its key.
/// `build_vars` are the builder's own build-time variables (placeholders
/// filled in when the build runs, so they never change the key).
pub async fn prepare(
    config: &Config,
    t: &Target,
    commit: &str,
    build_vars: &BTreeMap<String, String>,
    parents: &mut ParentCache,
) -> Result<Prepared, PrepareError> {
    // A git source only a networked machine can declare refuses the
    // target here, naming the command, before anything is resolved.
    if let Some(g) = t.uses.undeclared() {
        return Err(PrepareError::Recipe {
            path: "versions/sources.yaml".into(),
            message: format!(
                "{} (taken by {}) is not declared at a commit; on a machine that reaches {}, run `{}`",
                g.served(),
                t.id(),
                g.url,
                g.declare_command()
            ),
        });
    }
    let mut vars = t.vars.clone();
    let mut inputs = key::Inputs::new();
    if let Some(p) = &t.parent {
        let platform = Platform::for_arch(&t.platform, t.arch);
        let (name, digest) = parents.resolve(config, p, &platform).await?;
        vars.insert("parent".into(), name.clone());
        vars.insert("parent_digest".into(), digest.clone());
        inputs.insert("parent".into(), name);
        inputs.insert("parent_digest".into(), digest);
    }
    vars.insert("opam_repository_commit".into(), commit.to_string());
    vars.extend(build_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    let recipes = render_recipes(t, &vars)?;
    if let Some(url) = build_vars.get("sources_url") {
        check_sources(t, &recipes, url)?;
    }
    for (name, text) in &recipes {
        inputs.insert(format!("recipe:{name}"), key::sha256_hex(text.as_bytes()));
    }
    // A compiler-less image has no compiler input; its recipe (the opam
    // stage alone) differs from every compiler image's anyway.
    if let Some(v) = &t.version {
        inputs.insert("ocaml".into(), v.to_string());
    }
    inputs.insert("variant".into(), t.variant.clone().unwrap_or_default());
    inputs.insert("opam_packages".into(), t.opam_packages.join(","));
    inputs.insert("opam_version".into(), super::OPAM_VERSION.into());
    inputs.insert("opam_repository_commit".into(), commit.to_string());
    inputs.insert("builder".into(), t.builder.as_str().into());
    inputs.insert("arch".into(), t.arch.to_string());
    inputs.insert("os".into(), t.os.clone());
    // Declared sources are keyed by their sha256; opam archives and the
    // bundle are pinned by the opam-repository commit, keyed above.
    for d in &t.uses.sources {
        inputs.insert(format!("source:{}", d.name), d.sha256.clone());
    }
    // Git sources are keyed by their commit.
    for g in &t.uses.git {
        inputs.insert(
            format!("source:{}", g.served()),
            g.commit.clone().unwrap_or_default(),
        );
    }
    // A reproducible recipe's output is a function of its key, so the
    // date every timestamp is clamped to is keyed. Other recipes' outputs
    // are not determined by their inputs anyway, and keying it there would
    // only rebuild every published image once for nothing.
    if t.reproducible {
        inputs.insert("source_date_epoch".into(), t.source_date_epoch.to_string());
    }
    let key = key::build_key(&inputs);
    Ok(Prepared {
        target: t.clone(),
        inputs,
        key,
        recipes,
    })
}

/// Every source a rendered recipe takes from the source server (`url`, the
/// builder's placeholder) is declared: a step that a variable turns on for
/// this target only (the beta repository) names its source only here.
fn check_sources(t: &Target, recipes: &[(String, String)], url: &str) -> Result<(), PrepareError> {
    for (name, text) in recipes {
        let refs = crate::catalogue::sources::references(text, url);
        if let Some((source, line)) = refs.names.iter().find(|(n, _)| {
            !t.uses.sources.iter().any(|d| d.name == *n)
                && !t.uses.git.iter().any(|g| g.served() == *n)
        }) {
            return Err(PrepareError::Recipe {
                path: format!("{name} (rendered for {}), line {line}", t.id()),
                message: format!(
                    "{{{{sources_url}}}}/{source} is not a declared source (declare it with its sha256 in versions/sources.yaml)"
                ),
            });
        }
    }
    Ok(())
}

/// Every recipe of a target, rendered with `vars`.
pub(super) fn render_recipes(
    t: &Target,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, PrepareError> {
    let mut out = Vec::new();
    for (i, r) in t.recipes.iter().enumerate() {
        let path = r.display().to_string();
        let text = std::fs::read_to_string(r).map_err(|e| PrepareError::Recipe {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let text = super::recipe_source(t, i, &text).map_err(|message| PrepareError::Recipe {
            path: path.clone(),
            message,
        })?;
        let rendered = template::render(&path, text, vars)
            .map_err(|e| PrepareError::Template(e.to_string()))?;
        let name = r.file_name().and_then(|n| n.to_str()).unwrap_or("recipe");
        out.push((name.to_string(), rendered));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_like_docker() {
        let split = |r: &str| registry_location(&parse_parent(r).unwrap());
        assert_eq!(
            split("debian:13"),
            (
                "registry-1.docker.io".into(),
                "library/debian".into(),
                "13".into()
            )
        );
        assert_eq!(
            split("127.0.0.1:5000/kiln-fixtures/busybox:1"),
            (
                "127.0.0.1:5000".into(),
                "kiln-fixtures/busybox".into(),
                "1".into()
            )
        );
        assert_eq!(
            split("ocaml/opam"),
            (
                "registry-1.docker.io".into(),
                "ocaml/opam".into(),
                "latest".into()
            )
        );
        // A digest-pinned parent is fetched by its digest.
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            split(&format!("quay.io/centos/centos:stream10@{digest}")),
            ("quay.io".into(), "centos/centos".into(), digest)
        );
        assert!(matches!(
            parse_parent("debian:13 ; rm -rf /"),
            Err(PrepareError::ParentReference { .. })
        ));
    }
}
