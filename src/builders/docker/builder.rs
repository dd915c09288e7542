//! The Docker builder behind the [`Builder`] contract: routes each arch to
//! a configured engine that runs it natively or under emulation, within
//! that host's concurrency, and builds, smoke-tests and pushes it; or, for
//! `kiln verify --rebuild`, builds it the same way and keeps it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

use super::{BuildSpec, Engine, LocalImage, SmokeCheck};
use crate::builders::{BoxFuture, BuildJob, BuildOutput, Builder, host_permits};
use crate::catalogue::BuilderKind;
use crate::config::{Config, DockerHost};
use crate::model::{ArtifactKind, Failure};
use crate::plan::Target;

/// Docker Engine hosts, connected on first use.
pub struct DockerBuilder {
    config: Config,
    hosts: Vec<DockerHost>,
    engines: OnceLock<Vec<(DockerHost, Engine, Arc<Semaphore>)>>,
    /// Exports are unpacked and layers written under here (`<pid>-…`).
    work_dir: PathBuf,
}

impl DockerBuilder {
    pub fn new(config: &Config) -> DockerBuilder {
        DockerBuilder {
            config: config.clone(),
            hosts: config.docker.hosts.clone(),
            engines: OnceLock::new(),
            work_dir: config.work_dir().join("docker"),
        }
    }

    /// The engine that builds `t`, with its host's build slots.
    fn route(&self, t: &Target) -> Result<(&Engine, Arc<Semaphore>), Failure> {
        match self.engines().iter().find(|(h, _, _)| serves(h, t)) {
            Some((_, engine, slots)) => Ok((engine, slots.clone())),
            None => Err(Failure::infra(format!(
                "{}: no docker host for {} {} is reachable",
                t.id(),
                t.platform,
                t.arch
            ))),
        }
    }

    /// Build one arch as [`Builder::build`] does (same engine routing,
    /// slots, recipe, smoke test and export) and keep the reproducible
    /// image on disk instead of pushing it.
    pub async fn rebuild(&self, job: BuildJob<'_>) -> Result<LocalImage, Failure> {
        let (engine, slots) = self.route(&job.prepared.target)?;
        let spec = spec(&job, &self.work_dir);
        let _slot = slots.acquire_owned().await;
        super::build_local(engine, &spec)
            .await
            .map_err(|e| Failure::new(e.kind(), e.to_string()).with_log(job.log))
    }

    /// The engines that connected, each with its host's build slots.
    fn engines(&self) -> &[(DockerHost, Engine, Arc<Semaphore>)] {
        self.engines.get_or_init(|| {
            self.hosts
                .iter()
                .filter_map(|h| match super::connect(h) {
                    Ok(e) => Some((
                        h.clone(),
                        e,
                        host_permits(&format!("docker:{}", h.name), h.concurrency),
                    )),
                    Err(e) => {
                        tracing::warn!(error = %e, "docker host unavailable");
                        None
                    }
                })
                .collect()
        })
    }
}

fn serves(h: &DockerHost, t: &Target) -> bool {
    h.os == t.platform && (t.arch == h.arch || h.emulate.iter().any(|e| t.arch == *e))
}

/// The build of one arch, as the engine API takes it.
fn spec(job: &BuildJob<'_>, work_dir: &std::path::Path) -> BuildSpec {
    let p = job.prepared;
    let t = &p.target;
    BuildSpec {
        target: t.id(),
        dockerfile: p.main_recipe().to_string(),
        context: BTreeMap::new(),
        os: t.platform.clone(),
        arch: t.arch,
        repository: job.repository.to_string(),
        engine_tag: format!("{}-{}", job.immutable_tag, t.arch),
        parent: p
            .inputs
            .get("parent")
            .zip(p.inputs.get("parent_digest"))
            .map(|(name, digest)| format!("{name}@{digest}")),
        source_date_epoch: t.source_date_epoch,
        work_dir: work_dir.to_path_buf(),
        // Every image runs its opam; a compiler image also its compiler.
        smoke: t
            .expected_ocaml()
            .map(|expect| SmokeCheck {
                argv: vec!["ocaml".into(), "-version".into()],
                expect,
            })
            .into_iter()
            .chain([SmokeCheck {
                argv: vec!["opam".into(), "--version".into()],
                expect: t.vars.get("opam_version").cloned().unwrap_or_default(),
            }])
            .chain(t.smoke.iter().map(|c| SmokeCheck {
                argv: vec!["sh".into(), "-c".into(), c.run.clone()],
                expect: c.expect.clone(),
            }))
            .collect(),
        log: job.log.to_path_buf(),
        labels: BTreeMap::from([("org.ocaml.kiln.build-key".to_string(), p.key.clone())]),
        host_network: false,
    }
}

impl Builder for DockerBuilder {
    fn kind(&self) -> BuilderKind {
        BuilderKind::Docker
    }

    fn artifact_kind(&self) -> ArtifactKind {
        ArtifactKind::Image
    }

    fn can_build(&self, t: &Target) -> bool {
        self.hosts.iter().any(|h| serves(h, t))
    }

    fn capacity(&self) -> usize {
        self.hosts
            .iter()
            .map(|h| h.concurrency)
            .sum::<usize>()
            .max(1)
    }

    fn build_vars(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("sources_url".to_string(), super::SOURCES_URL.to_string())])
    }

    fn build<'a>(&'a self, job: BuildJob<'a>) -> BoxFuture<'a, Result<BuildOutput, Failure>> {
        Box::pin(async move {
            let (engine, slots) = self.route(&job.prepared.target)?;
            let mut spec = spec(&job, &self.work_dir);
            // The source server lives as long as this build (dropped at the end).
            let server = crate::builders::source_server(&self.config, &job)
                .await
                .map_err(|e| Failure::new(e.kind(), e.to_string()).with_log(job.log))?;
            if let Some(s) = &server {
                spec.dockerfile = spec.dockerfile.replace(super::SOURCES_URL, &s.url());
                spec.host_network = true;
            }
            let _slot = slots.acquire_owned().await;
            super::build(engine, job.registry, &spec)
                .await
                .map(|b| BuildOutput {
                    digest: b.digest,
                    adopted: None,
                })
                .map_err(|e| Failure::new(e.kind(), e.to_string()).with_log(job.log))
        })
    }

    fn sweep(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            crate::builders::sweep_dead_work_dirs(&self.work_dir);
            for (h, e, _) in self.engines() {
                if let Err(err) = super::sweep_orphans(e).await {
                    tracing::warn!(host = %h.name, error = %err, "sweeping what killed kiln processes left");
                }
            }
        })
    }
}
