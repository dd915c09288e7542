//! Running a plan: for every tag (a group of per-arch targets), resolve the
//! inputs, skip what is unchanged, build what is not, assemble and publish.
//!
//! Per tag:
//! 1. each arch's inputs (rendered recipe, parent digest, compiler, opam,
//!    opam-repository commit, builder, arch) hash into its build key;
//! 2. an arch whose key equals the published one is reused as is; a tag
//!    whose every arch is unchanged is left alone (same digest, no churn);
//! 3. changed arches are built (in parallel, within each host's limit); if
//!    any fails, nothing of the tag is published and the failure is
//!    recorded for the API;
//! 4. the index over every arch is assembled, verified and published, and
//!    the lockfile says which inputs changed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use super::docker::{self, BuildSpec, Engine, SmokeCheck};
use crate::catalogue::{BuilderKind, Catalogue};
use crate::config::Config;
use crate::daemon::state::{State, StateStore};
use crate::plan::{self, Filter, Target, key, template};
use crate::publish::lockfile::{ArchEntry, ArtifactKind, Change, Entry, Lockfile};
use crate::registry::Registry;
use crate::registry::index::{self, Platform};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    State(#[from] crate::daemon::state::StateError),
    #[error(transparent)]
    Lockfile(#[from] crate::publish::lockfile::LockfileError),
    #[error("{0}")]
    Setup(String),
}

/// How one tag or arch ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    Built { digest: String },
    Unchanged { digest: String },
    Failed { error: String },
    NoBuilder { reason: String },
    Planned,
}

#[derive(Debug, Clone, Serialize)]
pub struct TagReport {
    pub repository: String,
    pub tag: String,
    pub ocaml: String,
    pub platform: String,
    pub os: String,
    pub arches: BTreeMap<String, Outcome>,
    pub outcome: Outcome,
    /// Inputs that changed since the published build, when it moved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_inputs: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub tags: Vec<TagReport>,
    pub built: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub no_builder: usize,
}

/// Progress events for a display.
#[derive(Debug, Clone)]
pub enum Event {
    Planned { arch_builds: usize },
    Started { target: String },
    Finished { target: String, outcome: Outcome },
}

pub struct Options {
    pub filter: Filter,
    pub dry_run: bool,
}

/// `(name without tag, digest)` of an upstream parent reference, for one
/// platform: when the tag names a multi-arch index, the digest is that of
/// the platform's own manifest, so the build key records exactly what the
/// build starts from (and engines never confuse two platforms of one index).
pub async fn resolve_parent(
    config: &Config,
    reference: &str,
    platform: &Platform,
) -> Result<(String, String), RunError> {
    let (name, tag) = match reference.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (reference, "latest"),
    };
    let first = name.split('/').next().unwrap_or("");
    let (host, path) = if name.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        (first.to_string(), name[first.len() + 1..].to_string())
    } else if name.contains('/') {
        ("registry-1.docker.io".to_string(), name.to_string())
    } else {
        (
            "registry-1.docker.io".to_string(),
            format!("library/{name}"),
        )
    };
    let loopback = host.starts_with("127.") || host.starts_with("localhost");
    let mut rc = config.registry.clone();
    rc.url = format!("{}://{host}", if loopback { "http" } else { "https" });
    let reg = Registry::new(&rc)?;
    let (digest, media_type) = reg
        .head_manifest(&path, tag)
        .await
        .map_err(|e| RunError::Setup(format!("parent {reference}: {e}")))?
        .ok_or_else(|| RunError::Setup(format!("parent {reference}: no such tag in {host}")))?;
    if media_type != crate::registry::OCI_INDEX && media_type != crate::registry::DOCKER_LIST {
        return Ok((name.to_string(), digest));
    }
    let idx = reg.get_manifest(&path, &digest).await?.json()?;
    let child = idx["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            let p = &m["platform"];
            p["os"] == platform.os.as_str()
                && p["architecture"] == platform.architecture.as_str()
                && (platform.variant.is_none()
                    || p["variant"].as_str() == platform.variant.as_deref())
        })
        .and_then(|m| m["digest"].as_str())
        .ok_or_else(|| RunError::Setup(format!("parent {reference} has no {platform} image")))?;
    Ok((name.to_string(), child.to_string()))
}

/// The opam-repository commit: configured, or `git ls-remote` of HEAD.
pub async fn opam_repository_commit(config: &Config) -> Result<String, RunError> {
    if !config.plan.opam_repository_commit.is_empty() {
        return Ok(config.plan.opam_repository_commit.clone());
    }
    let out = crate::process::Cmd::new("git")
        .args([
            "ls-remote",
            &config.plan.opam_repository,
            &config.plan.opam_repository_ref,
        ])
        .timeout(std::time::Duration::from_secs(30))
        .run()
        .await
        .map_err(|e| RunError::Setup(format!("resolving the opam-repository commit (set plan.opam_repository_commit to pin it): {e}")))?;
    out.stdout
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| {
            RunError::Setup(format!(
                "git ls-remote {} {}: no such ref",
                config.plan.opam_repository, config.plan.opam_repository_ref
            ))
        })
}

pub(crate) struct Prepared {
    pub(crate) target: Target,
    pub(crate) inputs: key::Inputs,
    pub(crate) key: String,
    /// The first rendered recipe (the Dockerfile, or the provisioning script).
    pub(crate) dockerfile: String,
}

async fn prepare(
    config: &Config,
    t: &Target,
    commit: &str,
    parents: &mut BTreeMap<String, (String, String)>,
) -> Result<Prepared, String> {
    let mut vars = t.vars.clone();
    let mut inputs = key::Inputs::new();
    if let Some(p) = &t.parent {
        let cache_key = format!("{p} {}", t.arch);
        let (name, digest) = match parents.get(&cache_key) {
            Some(x) => x.clone(),
            None => {
                let platform = Platform::for_arch(&t.platform, &t.arch);
                let x = resolve_parent(config, p, &platform)
                    .await
                    .map_err(|e| e.to_string())?;
                parents.insert(cache_key, x.clone());
                x
            }
        };
        vars.insert("parent".into(), name.clone());
        vars.insert("parent_digest".into(), digest.clone());
        inputs.insert("parent".into(), name);
        inputs.insert("parent_digest".into(), digest);
    }
    vars.insert("opam_repository_commit".into(), commit.to_string());
    // The QEMU builder's HTTP address is only known at build time.
    vars.insert("http_base".into(), super::qemu::HTTP_BASE.into());
    vars.insert("http_host".into(), super::qemu::HTTP_HOST.into());
    let mut dockerfile = String::new();
    for r in &t.recipes {
        let text =
            std::fs::read_to_string(r).map_err(|e| format!("recipe {}: {e}", r.display()))?;
        let rendered =
            template::render(&r.display().to_string(), &text, &vars).map_err(|e| e.to_string())?;
        let name = r.file_name().and_then(|n| n.to_str()).unwrap_or("recipe");
        inputs.insert(
            format!("recipe:{name}"),
            key::sha256_hex(rendered.as_bytes()),
        );
        if dockerfile.is_empty() {
            dockerfile = rendered;
        }
    }
    inputs.insert("ocaml".into(), t.version.to_string());
    inputs.insert("variant".into(), t.variant.clone().unwrap_or_default());
    inputs.insert("opam_packages".into(), t.opam_packages.join(","));
    inputs.insert("opam_version".into(), plan::OPAM_VERSION.into());
    inputs.insert("opam_repository_commit".into(), commit.to_string());
    inputs.insert("builder".into(), t.builder.as_str().into());
    inputs.insert("arch".into(), t.arch.clone());
    inputs.insert("os".into(), t.os.clone());
    let key = key::build_key(&inputs);
    Ok(Prepared {
        target: t.clone(),
        inputs,
        key,
        dockerfile,
    })
}

/// Each target's build key (resolving parents and the opam-repository
/// commit as a build would), or why it cannot be computed.
pub async fn target_keys(
    config: &Config,
    targets: &[Target],
) -> Vec<(String, Result<(String, key::Inputs), String>)> {
    let commit = match opam_repository_commit(config).await {
        Ok(c) => c,
        Err(e) => {
            return targets
                .iter()
                .map(|t| (t.id(), Err(e.to_string())))
                .collect();
        }
    };
    let mut parents = BTreeMap::new();
    let mut out = Vec::new();
    for t in targets {
        let k = prepare(config, t, &commit, &mut parents)
            .await
            .map(|p| (p.key, p.inputs));
        out.push((t.id(), k));
    }
    out
}

/// The expected first line of `ocaml -version` for a target.
pub fn expected_ocaml(t: &Target) -> String {
    format!("version {}", t.version.release())
}

/// Run the plan selected by `opts`.
pub async fn run(
    config: &Config,
    cat: &Catalogue,
    opts: &Options,
    progress: &(dyn Fn(Event) + Sync),
) -> Result<Summary, RunError> {
    let targets = plan::expand(cat, &opts.filter)?;
    let namespace = &config.registry.namespace;
    let reg = Registry::new(&config.registry)?;
    let lockfile_path = config.lockfile_path();
    let lock = Lockfile::load(&lockfile_path)?;
    let state = StateStore::open(&config.database.path)?;
    let commit = opam_repository_commit(config).await?;
    // Engines and their concurrency limits.
    let mut engines: Vec<(crate::config::DockerHost, Engine, Arc<Semaphore>)> = Vec::new();
    for h in &config.docker.hosts {
        match docker::connect(h) {
            Ok(e) => {
                if !opts.dry_run
                    && let Err(err) = docker::sweep_orphans(&e).await
                {
                    tracing::warn!(host = %h.name, error = %err, "sweeping what killed kiln processes left");
                }
                engines.push((
                    h.clone(),
                    e,
                    host_permits(&format!("docker:{}", h.name), h.concurrency),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "docker host unavailable"),
        }
    }
    let mut groups: BTreeMap<(String, String), Vec<Target>> = BTreeMap::new();
    for t in targets {
        groups
            .entry((format!("{namespace}/{}", t.repository), t.tag.clone()))
            .or_default()
            .push(t);
    }
    progress(Event::Planned {
        arch_builds: groups.values().map(Vec::len).sum(),
    });
    let mut parents = BTreeMap::new();
    let mut summary = Summary::default();
    for ((repository, tag), ts) in groups {
        let first = ts[0].clone();
        let mut report = TagReport {
            repository: repository.clone(),
            tag: tag.clone(),
            ocaml: first.version.to_string(),
            platform: first.platform.clone(),
            os: first.os.clone(),
            arches: BTreeMap::new(),
            outcome: Outcome::Planned,
            changed_inputs: vec![],
        };
        let published = lock
            .entries
            .get(&format!("{repository}:{tag}"))
            .filter(|e| e.ocaml == report.ocaml);
        // Prepare every arch.
        let mut prepared = Vec::new();
        let mut failed = None;
        for t in &ts {
            if !crate::status::can_build(config, t)
                || (t.builder == BuilderKind::Docker && engines.is_empty())
            {
                let reason = format!(
                    "no configured {} builder can build {}",
                    t.builder.as_str(),
                    t.arch
                );
                report.arches.insert(
                    t.arch.clone(),
                    Outcome::NoBuilder {
                        reason: reason.clone(),
                    },
                );
                failed.get_or_insert(Outcome::NoBuilder { reason });
                continue;
            }
            match prepare(config, t, &commit, &mut parents).await {
                Ok(p) => prepared.push(p),
                Err(error) => {
                    report.arches.insert(
                        t.arch.clone(),
                        Outcome::Failed {
                            error: error.clone(),
                        },
                    );
                    let _ = state.set(
                        &repository,
                        &tag,
                        &t.arch,
                        &State::Failed(error.clone()),
                        None,
                    );
                    failed.get_or_insert(Outcome::Failed { error });
                }
            }
        }
        if let Some(f) = failed {
            match &f {
                Outcome::NoBuilder { .. } => summary.no_builder += 1,
                _ => summary.failed += 1,
            }
            report.outcome = f;
            summary.tags.push(report);
            continue;
        }
        let arch_keys: BTreeMap<String, String> = prepared
            .iter()
            .map(|p| (p.target.arch.clone(), p.key.clone()))
            .collect();
        let group_key = key::group_key(&arch_keys);
        if let Some(e) = published
            && e.build_key == group_key
        {
            for p in &prepared {
                let d = e
                    .arches
                    .get(&p.target.arch)
                    .map(|a| a.digest.clone())
                    .unwrap_or_default();
                report
                    .arches
                    .insert(p.target.arch.clone(), Outcome::Unchanged { digest: d });
                progress(Event::Finished {
                    target: p.target.id(),
                    outcome: Outcome::Unchanged {
                        digest: e.digest.clone(),
                    },
                });
            }
            report.outcome = Outcome::Unchanged {
                digest: e.digest.clone(),
            };
            summary.unchanged += 1;
            summary.tags.push(report);
            continue;
        }
        if opts.dry_run {
            for p in &prepared {
                report
                    .arches
                    .insert(p.target.arch.clone(), Outcome::Planned);
            }
            summary.tags.push(report);
            continue;
        }
        let immutable = first.immutable_tag(&group_key);
        // Build the changed arches in parallel, within each host's limit.
        let mut jobs = Vec::new();
        for p in &prepared {
            let reuse = published
                .and_then(|e| e.arches.get(&p.target.arch))
                .filter(|a| a.build_key == p.key)
                .map(|a| a.digest.clone());
            if let Some(d) = reuse {
                report.arches.insert(
                    p.target.arch.clone(),
                    Outcome::Unchanged { digest: d.clone() },
                );
                continue;
            }
            let log = log_path(config, &p.target);
            let _ = state.set(
                &repository,
                &tag,
                &p.target.arch,
                &State::Building,
                Some(&log),
            );
            tracing::info!(target_id = %p.target.id(), builder = p.target.builder.as_str(), key = %p.key, log = %log.display(), "build started");
            progress(Event::Started {
                target: p.target.id(),
            });
            let arch = p.target.arch.clone();
            match p.target.builder {
                BuilderKind::Docker => {
                    let Some((_, engine, sem)) = engines.iter().find(|(h, _, _)| {
                        h.os == p.target.platform
                            && (h.arch == p.target.arch || h.emulate.contains(&p.target.arch))
                    }) else {
                        continue;
                    };
                    let spec = BuildSpec {
                        target: p.target.id(),
                        dockerfile: p.dockerfile.clone(),
                        context: BTreeMap::new(),
                        os: p.target.platform.clone(),
                        arch: p.target.arch.clone(),
                        push_ref: format!(
                            "{}/{repository}:{immutable}-{}",
                            reg.host, p.target.arch
                        ),
                        smoke: vec![
                            SmokeCheck {
                                argv: vec!["ocaml".into(), "-version".into()],
                                expect: expected_ocaml(&p.target),
                            },
                            SmokeCheck {
                                argv: vec!["opam".into(), "--version".into()],
                                expect: p
                                    .target
                                    .vars
                                    .get("opam_version")
                                    .cloned()
                                    .unwrap_or_default(),
                            },
                        ],
                        log: log.clone(),
                        labels: BTreeMap::from([(
                            "org.ocaml.kiln.build-key".to_string(),
                            p.key.clone(),
                        )]),
                    };
                    let engine = engine.clone();
                    let sem = sem.clone();
                    jobs.push(Box::pin(async move {
                        let _permit = sem.acquire_owned().await;
                        let r = docker::build(&engine, &spec)
                            .await
                            .map(|b| b.digest)
                            .map_err(|e| e.to_string());
                        (arch, log, r)
                    })
                        as std::pin::Pin<
                            Box<
                                dyn std::future::Future<
                                        Output = (String, PathBuf, Result<String, String>),
                                    > + Send
                                    + '_,
                            >,
                        >);
                }
                BuilderKind::Qemu => {
                    let reg = &reg;
                    let repository = repository.clone();
                    let immutable = immutable.clone();
                    jobs.push(Box::pin(async move {
                        let r = super::qemu::artifact_build(
                            config,
                            reg,
                            p,
                            &repository,
                            &immutable,
                            &log,
                        )
                        .await;
                        (arch, log, r)
                    }));
                }
                BuilderKind::Zfs => {
                    let reg = &reg;
                    let repository = repository.clone();
                    let immutable = immutable.clone();
                    jobs.push(Box::pin(async move {
                        let r = super::zfs::artifact_build(
                            config,
                            reg,
                            p,
                            &repository,
                            &immutable,
                            &log,
                        )
                        .await;
                        (arch, log, r)
                    }));
                }
            }
        }
        let results = futures_util::future::join_all(jobs).await;
        let mut ok = true;
        let mut arch_digests: BTreeMap<String, String> = BTreeMap::new();
        for (arch, log, r) in results {
            let id = format!("{}/{}/{}/{arch}", first.platform, first.os, first.version);
            match r {
                Ok(digest) => {
                    tracing::info!(target_id = %id, %digest, "build succeeded");
                    report.arches.insert(
                        arch.clone(),
                        Outcome::Built {
                            digest: digest.clone(),
                        },
                    );
                    progress(Event::Finished {
                        target: id,
                        outcome: Outcome::Built {
                            digest: digest.clone(),
                        },
                    });
                    arch_digests.insert(arch, digest);
                }
                Err(e) => {
                    tracing::warn!(target_id = %id, error = %e, log = %log.display(), "build failed");
                    ok = false;
                    let _ = state.set(
                        &repository,
                        &tag,
                        &arch,
                        &State::Failed(e.to_string()),
                        Some(&log),
                    );
                    report.arches.insert(
                        arch.clone(),
                        Outcome::Failed {
                            error: e.to_string(),
                        },
                    );
                    progress(Event::Finished {
                        target: id,
                        outcome: Outcome::Failed {
                            error: e.to_string(),
                        },
                    });
                }
            }
        }
        for (arch, o) in &report.arches {
            if let Outcome::Unchanged { digest } = o {
                arch_digests.insert(arch.clone(), digest.clone());
            }
        }
        if !ok {
            report.outcome = Outcome::Failed {
                error: "one or more arches failed: nothing of this tag was published".into(),
            };
            summary.failed += 1;
            summary.tags.push(report);
            continue;
        }
        // Assemble, verify and publish.
        let required: Vec<Platform> = prepared
            .iter()
            .map(|p| Platform::for_arch(&p.target.platform, &p.target.arch))
            .collect();
        let mut ann = BTreeMap::new();
        ann.insert(
            "org.opencontainers.image.version".to_string(),
            first.version.to_string(),
        );
        ann.insert(
            "org.opencontainers.image.created".to_string(),
            chrono::Utc::now().to_rfc3339(),
        );
        ann.insert(
            "org.opencontainers.image.revision".to_string(),
            commit.clone(),
        );
        ann.insert(
            "org.opencontainers.image.source".to_string(),
            "https://github.com/ocaml/opam-repository".to_string(),
        );
        ann.insert("org.ocaml.kiln.build-key".to_string(), group_key.clone());
        let sources: Vec<String> = arch_digests.values().cloned().collect();
        let publish_result = async {
            let idx = index::assemble(&reg, &repository, &sources, &required, &ann).await?;
            let mut inputs = BTreeMap::new();
            for p in &prepared {
                for (k, v) in &p.inputs {
                    inputs.insert(format!("{}.{k}", p.target.arch), v.clone());
                }
            }
            let changed = published
                .map(|e| key::changed(&e.inputs, &inputs))
                .unwrap_or_default();
            let reason = if changed.is_empty() {
                "new".to_string()
            } else {
                format!("inputs changed: {}", changed.join(", "))
            };
            let entry = Entry {
                kind: match first.builder {
                    BuilderKind::Docker => ArtifactKind::Image,
                    BuilderKind::Zfs => ArtifactKind::ZfsStream,
                    BuilderKind::Qemu => ArtifactKind::Qcow2,
                },
                platform: first.platform.clone(),
                os: first.os.clone(),
                ocaml: first.version.to_string(),
                variant: first.variant.clone(),
                repository: repository.clone(),
                tag: tag.clone(),
                immutable_tag: immutable.clone(),
                // Series-less aliases (`debian-13`, `debian`, `latest`) wait
                // for the whole tier-1 set: see `promote_newest_aliases`.
                aliases: first
                    .aliases
                    .iter()
                    .filter(|a| a.contains("-ocaml-"))
                    .cloned()
                    .collect(),
                digest: idx.digest.clone(),
                arches: prepared
                    .iter()
                    .map(|p| {
                        (
                            p.target.arch.clone(),
                            ArchEntry {
                                digest: arch_digests
                                    .get(&p.target.arch)
                                    .cloned()
                                    .unwrap_or_default(),
                                build_key: p.key.clone(),
                                size: None,
                            },
                        )
                    })
                    .collect(),
                build_key: group_key.clone(),
                inputs,
                published_at: chrono::Utc::now(),
                verified_at: None,
                history: vec![],
            };
            let change =
                crate::publish::publish(&reg, &lockfile_path, entry, &required, &reason).await?;
            Ok::<_, crate::publish::PublishError>((idx.digest, change, changed))
        }
        .await;
        match publish_result {
            Ok((digest, change, changed)) => {
                for p in &prepared {
                    let _ = state.set(&repository, &tag, &p.target.arch, &State::Succeeded, None);
                }
                report.changed_inputs = changed;
                report.outcome = match change {
                    Change::Unchanged => Outcome::Unchanged { digest },
                    _ => Outcome::Built { digest },
                };
                summary.built += usize::from(matches!(report.outcome, Outcome::Built { .. }));
                summary.unchanged +=
                    usize::from(matches!(report.outcome, Outcome::Unchanged { .. }));
            }
            Err(e) => {
                for p in &prepared {
                    let _ = state.set(
                        &repository,
                        &tag,
                        &p.target.arch,
                        &State::Failed(e.to_string()),
                        None,
                    );
                }
                report.outcome = Outcome::Failed {
                    error: e.to_string(),
                };
                summary.failed += 1;
            }
        }
        summary.tags.push(report);
    }
    if !opts.dry_run {
        promote_newest_aliases(config, cat, &reg).await?;
    }
    Ok(summary)
}

/// Aliases that name no compiler series (`debian-13`, `debian`, `latest`)
/// mean "the newest compiler". They move to a version only once every
/// tier-1 target of that version is published, so CI following `latest`
/// never lands on a release that is only partly built. Returns the aliases
/// moved.
pub async fn promote_newest_aliases(
    config: &Config,
    cat: &Catalogue,
    reg: &Registry,
) -> Result<Vec<String>, RunError> {
    let all = plan::expand(cat, &Filter::default())?;
    let ns = &config.registry.namespace;
    let path = config.lockfile_path();
    let _guard =
        crate::publish::lock_lockfile(&path).map_err(|e| RunError::Setup(e.to_string()))?;
    let mut lock = Lockfile::load(&path)?;
    let mut moved = Vec::new();
    let versions: std::collections::BTreeSet<String> =
        all.iter().map(|t| t.version.to_string()).collect();
    for v in versions {
        let mine: Vec<&Target> = all
            .iter()
            .filter(|t| t.version.to_string() == v && t.variant.is_none())
            .collect();
        let tier1: Vec<&&Target> = mine.iter().filter(|t| t.tier == 1).collect();
        if tier1.is_empty() {
            continue;
        }
        let complete = tier1.iter().all(|t| {
            lock.entries
                .get(&format!("{ns}/{}:{}", t.repository, t.tag))
                .is_some_and(|e| e.ocaml == v && e.arches.contains_key(&t.arch))
        });
        if !complete {
            continue;
        }
        for t in &mine {
            let Some(e) = lock
                .entries
                .get_mut(&format!("{ns}/{}:{}", t.repository, t.tag))
            else {
                continue;
            };
            if e.ocaml != v {
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
        lock.save(&path)?;
    }
    Ok(moved)
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

/// Where a target's log goes.
pub fn log_path(config: &Config, t: &Target) -> PathBuf {
    config
        .log_dir()
        .join(format!("{}.log", t.id().replace('/', "_")))
}
