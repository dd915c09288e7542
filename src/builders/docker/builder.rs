//! The Docker builder behind the [`Builder`] contract: routes each arch to
//! a configured engine that runs it natively or under emulation, within
//! that host's concurrency, and builds, smoke-tests and pushes it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

use super::{BuildSpec, Engine, SmokeCheck};
use crate::builders::{BoxFuture, BuildJob, BuildOutput, Builder, host_permits};
use crate::catalogue::BuilderKind;
use crate::config::{Config, DockerHost};
use crate::model::{ArtifactKind, Failure};
use crate::plan::Target;

/// Docker Engine hosts, connected on first use.
pub struct DockerBuilder {
    hosts: Vec<DockerHost>,
    engines: OnceLock<Vec<(DockerHost, Engine, Arc<Semaphore>)>>,
}

impl DockerBuilder {
    pub fn new(config: &Config) -> DockerBuilder {
        DockerBuilder {
            hosts: config.docker.hosts.clone(),
            engines: OnceLock::new(),
        }
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
fn spec(job: &BuildJob<'_>, registry_host: &str) -> BuildSpec {
    let p = job.prepared;
    let t = &p.target;
    BuildSpec {
        target: t.id(),
        dockerfile: p.main_recipe().to_string(),
        context: BTreeMap::new(),
        os: t.platform.clone(),
        arch: t.arch,
        push_ref: format!(
            "{registry_host}/{}:{}-{}",
            job.repository, job.immutable_tag, t.arch
        ),
        smoke: vec![
            SmokeCheck {
                argv: vec!["ocaml".into(), "-version".into()],
                expect: t.expected_ocaml(),
            },
            SmokeCheck {
                argv: vec!["opam".into(), "--version".into()],
                expect: t.vars.get("opam_version").cloned().unwrap_or_default(),
            },
        ],
        log: job.log.to_path_buf(),
        labels: BTreeMap::from([("org.ocaml.kiln.build-key".to_string(), p.key.clone())]),
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

    fn build<'a>(&'a self, job: BuildJob<'a>) -> BoxFuture<'a, Result<BuildOutput, Failure>> {
        Box::pin(async move {
            let t = &job.prepared.target;
            let Some((_, engine, slots)) = self.engines().iter().find(|(h, _, _)| serves(h, t))
            else {
                return Err(Failure::infra(format!(
                    "{}: no docker host for {} {} is reachable",
                    t.id(),
                    t.platform,
                    t.arch
                )));
            };
            let spec = spec(&job, &job.registry.host);
            let _slot = slots.clone().acquire_owned().await;
            super::build(engine, &spec)
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
            for (h, e, _) in self.engines() {
                if let Err(err) = super::sweep_orphans(e).await {
                    tracing::warn!(host = %h.name, error = %err, "sweeping what killed kiln processes left");
                }
            }
        })
    }
}
