//! `kiln verify --rebuild`: one published target built again through the
//! code path of `kiln build` — the inputs it was published with (its
//! parent digest and opam-repository commit), the same engine routing,
//! recipe, smoke test and export — pushed nowhere, and compared with the
//! published per-arch image: identical, or the first layer and file that
//! differ. Nothing in the registry or the lockfile changes.

use serde::Serialize;

use crate::builders::docker::{CompareError, Difference, DockerBuilder, compare};
use crate::builders::{BuildJob, Builders};
use crate::catalogue::{self, Arch, BuilderKind, CatalogueError};
use crate::config::Config;
use crate::lockfile::{Entry, Lockfile, LockfileError};
use crate::model::{Failure, FailureKind};
use crate::plan::prepare::{self, ParentCache, PrepareError};
use crate::plan::{self, Filter, PlanError, Prepared, Target, key};
use crate::registry::index::Platform;
use crate::registry::{Registry, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{reference}: {message}")]
    Reference { reference: String, message: String },
    #[error(transparent)]
    Lockfile(#[from] LockfileError),
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("rebuild failed: {0}")]
    Build(Failure),
    #[error(transparent)]
    Compare(#[from] CompareError),
}

impl RebuildError {
    /// A reference that names nothing rebuildable, or a catalogue that no
    /// longer has the target, is the asker's or the recipe's; the rest
    /// say their own kind.
    pub fn kind(&self) -> FailureKind {
        match self {
            RebuildError::Reference { .. } | RebuildError::Catalogue(_) | RebuildError::Plan(_) => {
                FailureKind::Recipe
            }
            RebuildError::Lockfile(_) => FailureKind::Infra,
            RebuildError::Prepare(e) => e.kind(),
            RebuildError::Registry(e) => e.kind(),
            RebuildError::Build(f) => f.kind,
            RebuildError::Compare(e) => e.kind(),
        }
    }
}

/// What the rebuild showed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The rebuild has the published digest.
    Identical,
    /// The rebuild differs; where first.
    Different { difference: Difference },
    /// The target's inputs are no longer those it was published with
    /// (recipe or catalogue edited): a rebuild would not be of the same
    /// thing, so nothing was built.
    InputsChanged { inputs: Vec<String> },
}

/// One target rebuilt and compared.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    /// The lockfile entry: `kiln/opam:busybox-ocaml-5.5`.
    pub reference: String,
    pub target: String,
    pub arch: Arch,
    /// The OS release declares its recipes reproducible.
    pub reproducible: bool,
    pub build_key: String,
    /// The published per-arch digest.
    pub published: String,
    /// The rebuild's digest, when it was built.
    pub rebuilt: Option<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Rebuild the `arch` image of the published tag `reference`
/// (`REPO:TAG`, the tag moving, immutable or an alias) and compare.
pub async fn rebuild(
    config: &Config,
    reference: &str,
    arch: Option<Arch>,
) -> Result<RebuildReport, RebuildError> {
    let lock = Lockfile::load(&config.lockfile_path())?;
    let entry = find_entry(&lock, reference)?;
    let arch = pick_arch(entry, arch, reference)?;
    let published = entry.arches[&arch].clone();
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let target = find_target(&cat, entry, arch, reference)?;
    if target.builder != BuilderKind::Docker {
        return Err(RebuildError::Reference {
            reference: reference.to_string(),
            message: format!(
                "built by the {} builder; only Docker images are rebuilt and compared",
                target.builder
            ),
        });
    }
    let prepared = prepare_as_published(config, &target, entry, arch).await?;
    let mut report = RebuildReport {
        reference: format!("{}:{}", entry.repository, entry.tag),
        target: target.id(),
        arch,
        reproducible: target.reproducible,
        build_key: prepared.key.clone(),
        published: published.digest.clone(),
        rebuilt: None,
        verdict: Verdict::Identical,
    };
    if prepared.key != published.build_key {
        report.verdict = Verdict::InputsChanged {
            inputs: key::changed(&arch_inputs(entry, arch), &prepared.inputs),
        };
        return Ok(report);
    }
    let reg = Registry::new(&config.registry)?;
    let log = target
        .log_file(&config.log_dir())
        .with_extension("rebuild.log");
    tracing::info!(target_id = %target.id(), log = %log.display(), "rebuilding without publishing");
    let job = BuildJob {
        registry: &reg,
        prepared: &prepared,
        repository: &entry.repository,
        immutable_tag: &entry.immutable_tag,
        log: &log,
        fresh: true,
    };
    let img = DockerBuilder::new(config)
        .rebuild(job)
        .await
        .map_err(RebuildError::Build)?;
    report.rebuilt = Some(img.digest.clone());
    let scratch = config.work_dir().join("docker");
    if let Some(difference) =
        compare(&reg, &entry.repository, &published.digest, &img, &scratch).await?
    {
        report.verdict = Verdict::Different { difference };
    }
    Ok(report)
}

/// The one lockfile entry `REPO:TAG` names (the repository with or
/// without its registry and namespace; the moving tag, an alias or the
/// immutable tag).
fn find_entry<'a>(lock: &'a Lockfile, reference: &str) -> Result<&'a Entry, RebuildError> {
    let err = |message: String| RebuildError::Reference {
        reference: reference.to_string(),
        message,
    };
    let Some((repo, tag)) = reference
        .rsplit_once(':')
        .filter(|(r, t)| !r.is_empty() && !t.contains('/'))
    else {
        return Err(err("expected REPO:TAG".into()));
    };
    let base = |r: &str| r.rsplit('/').next().unwrap_or(r).to_string();
    let found: Vec<&Entry> = lock
        .entries
        .values()
        .filter(|e| e.repository == repo || base(&e.repository) == base(repo))
        .filter(|e| e.tag == tag || e.immutable_tag == tag || e.aliases.iter().any(|a| a == tag))
        .collect();
    match found.as_slice() {
        [e] => Ok(e),
        [] => Err(err(
            "no such published tag in the lockfile (`kiln status` lists them)".into(),
        )),
        many => Err(err(format!(
            "names several published tags: {}",
            many.iter()
                .map(|e| format!("{}:{}", e.repository, e.tag))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The arch asked for, or the tag's only one.
fn pick_arch(entry: &Entry, arch: Option<Arch>, reference: &str) -> Result<Arch, RebuildError> {
    let have: Vec<String> = entry.arches.keys().map(|a| a.to_string()).collect();
    let err = |message: String| RebuildError::Reference {
        reference: reference.to_string(),
        message,
    };
    match arch {
        Some(a) if entry.arches.contains_key(&a) => Ok(a),
        Some(a) => Err(err(format!(
            "has no {a} image (it has {})",
            have.join(", ")
        ))),
        None => match entry.arches.keys().next() {
            Some(a) if entry.arches.len() == 1 => Ok(*a),
            _ => Err(err(format!(
                "has {} images: choose one with --arch",
                have.join(", ")
            ))),
        },
    }
}

/// The catalogue's target behind an entry's arch.
fn find_target(
    cat: &catalogue::Catalogue,
    entry: &Entry,
    arch: Arch,
    reference: &str,
) -> Result<Target, RebuildError> {
    let filter = Filter {
        version: entry.ocaml.as_ref().map(ToString::to_string),
        platform: Some(entry.platform.clone()),
        os: Some(entry.os.clone()),
        arch: Some(arch),
        tag: Some(entry.tag.clone()),
        ..Filter::default()
    };
    plan::expand(cat, &filter)?
        .into_iter()
        .find(|t| t.variant == entry.variant)
        .ok_or_else(|| RebuildError::Reference {
            reference: reference.to_string(),
            message: format!(
                "{} {arch} is no longer in the catalogue: there is no recipe to rebuild it with",
                entry.tag
            ),
        })
}

/// An entry's inputs for one arch (the lockfile keeps `<arch>.<input>`).
fn arch_inputs(entry: &Entry, arch: Arch) -> key::Inputs {
    let prefix = format!("{arch}.");
    entry
        .inputs
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.clone())))
        .collect()
}

/// Prepare `t` from the parent digest and opam-repository commit it was
/// published with, not today's.
async fn prepare_as_published(
    config: &Config,
    t: &Target,
    entry: &Entry,
    arch: Arch,
) -> Result<Prepared, RebuildError> {
    let inputs = arch_inputs(entry, arch);
    let commit = match inputs.get("opam_repository_commit") {
        Some(c) => c.clone(),
        None => prepare::opam_repository_commit(config).await?,
    };
    let mut parents = ParentCache::default();
    if let (Some(reference), Some(name), Some(digest)) =
        (&t.parent, inputs.get("parent"), inputs.get("parent_digest"))
    {
        let platform = Platform::for_arch(&t.platform, arch);
        parents.pin(reference, &platform, name.clone(), digest.clone());
    }
    let vars = Builders::new(config).get(t.builder).build_vars();
    Ok(prepare::prepare(config, t, &commit, &vars, &mut parents).await?)
}
