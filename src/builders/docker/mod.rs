//! Linux and Windows images built through the Docker Engine API (bollard).
//!
//! One [`BuildSpec`] is one arch of one target: a rendered Dockerfile (its
//! parent pinned by digest), the platform to build for (foreign arches run
//! under binfmt emulation), a smoke test, and the repository to push to.
//! The build streams its log to the target's log file; the smoke test runs
//! the built image and must print what the catalogue says; only then is a
//! Linux image exported, made reproducible (`export`, `layer`: byte-stable
//! layers, every timestamp clamped to the SOURCE_DATE_EPOCH) and pushed by
//! digest with Kiln's registry client. Windows images (foreign base
//! layers) are pushed by the engine. `compare` tells a rebuild from a
//! published image. Whatever happens, the build's containers, local
//! images and work files are removed.
//!
//! Docker 20.10 (API 1.41) is driven with its classic builder: BuildKit
//! through the API needs a gRPC session that bollard only offers behind
//! its `buildkit` feature, and the classic builder gives the same image
//! for these single-stage-per-arch builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::Docker;

use crate::catalogue::Arch;
use crate::config::DockerHost;
use crate::model::FailureKind;

/// The placeholder recipes get for `{{sources_url}}` at plan time: the
/// per-build sources server's URL is filled in when the build runs (as
/// QEMU's `HTTP_BASE`), so its port never enters the build key.
pub const SOURCES_URL: &str = "@KILN_SOURCES_URL@";

pub mod builder;
pub mod cache;
pub mod compare;
mod export;
pub mod layer;
pub mod parent_layers;
pub mod parents;
pub mod pull;
mod steps;
mod sweep;
pub mod tunnel;
pub mod usage;

pub use builder::DockerBuilder;
pub use compare::{CompareError, Difference, compare};
pub use export::LocalImage;
pub use pull::EngineAuth;
pub use sweep::{OWNER_LABEL, sweep_orphans};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker host {host} ({endpoint}): {message}")]
    Connect {
        host: String,
        endpoint: String,
        message: String,
    },
    #[error("{target}: build failed: {message} (log: {log})")]
    Build {
        target: String,
        message: String,
        log: PathBuf,
    },
    #[error(
        "{target}: smoke test failed: `{command}` printed {got:?}, expected it to contain {expected:?} (log: {log})"
    )]
    Smoke {
        target: String,
        command: String,
        got: String,
        expected: String,
        log: PathBuf,
    },
    /// The engine could not pull the build's parent: its registry refused
    /// (credentials, rate limit) or could not be reached.
    #[error(
        "{target}: the engine could not pull the parent {parent} from {registry}: {message}; check that the engine reaches {registry} and that Kiln has credentials for it (`docker login {registry}` where Kiln runs: Kiln hands them to the engine); a rate limit (toomanyrequests) passes at its reset"
    )]
    Pull {
        target: String,
        parent: String,
        registry: String,
        message: String,
    },
    /// A pull inside the build (a `FROM` or `COPY --from` image) was
    /// refused by the registry's rate limit; the engine says so only as
    /// build-stream text.
    #[error(
        "{target}: a pull in the build was rate limited by its registry: {message}; it passes at the registry's reset (log in for a higher limit) (log: {log})"
    )]
    RateLimited {
        target: String,
        message: String,
        log: PathBuf,
    },
    #[error("{target}: push of {reference} failed: {message}")]
    Push {
        target: String,
        reference: String,
        message: String,
    },
    /// The engine failed a build step on its own side: it lost part of
    /// its image store while building (another build's cleanup racing
    /// this one: "failed to get digest … no such file or directory"). The
    /// recipe never ran as written, so a retry can succeed.
    #[error("{target}: build failed in the docker engine: {message} (log: {log})")]
    EngineStore {
        target: String,
        message: String,
        log: PathBuf,
    },
    #[error("{target}: docker engine: {source}")]
    Engine {
        target: String,
        source: bollard::errors::Error,
    },
    #[error("{target}: log file {path}: {source}")]
    Log {
        target: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{target}: exporting the image: {message}")]
    Export { target: String, message: String },
    #[error("{target}: {source}")]
    Layer {
        target: String,
        source: layer::LayerError,
    },
    #[error("{target}: push: {source}")]
    Registry {
        target: String,
        source: crate::registry::RegistryError,
    },
    #[error("{0}")]
    Context(String),
}

impl DockerError {
    /// An engine that cannot be reached or fails on its side, an export
    /// or a push that fails, is infrastructure; a failed build step, smoke
    /// test or build context, or a layer entry that cannot be made
    /// reproducible, is the recipe's.
    pub fn kind(&self) -> FailureKind {
        match self {
            DockerError::Connect { .. }
            | DockerError::Pull { .. }
            | DockerError::RateLimited { .. }
            | DockerError::Push { .. }
            | DockerError::Engine { .. }
            | DockerError::EngineStore { .. }
            | DockerError::Log { .. }
            | DockerError::Export { .. } => FailureKind::Infra,
            DockerError::Layer { source, .. } => source.kind(),
            DockerError::Registry { source, .. } => source.kind(),
            DockerError::Build { .. } | DockerError::Smoke { .. } | DockerError::Context(_) => {
                FailureKind::Recipe
            }
        }
    }

    /// The engine's report of a failed build step: the recipe's, unless
    /// the engine says it lost its own image store (a file of
    /// `image/*/imagedb` gone under it) or a registry refused a pull for
    /// its rate limit (`toomanyrequests`, distribution's error code), both
    /// the infrastructure's. The engine reports these only as text, so
    /// these phrases are matched here, where the report arrives, and
    /// nowhere else.
    fn build_step(target: &str, message: String, log: &Path) -> DockerError {
        let (target, log) = (target.to_string(), log.to_path_buf());
        if message.contains("toomanyrequests") {
            return DockerError::RateLimited {
                target,
                message,
                log,
            };
        }
        if message.contains("failed to get digest") && message.contains("no such file") {
            DockerError::EngineStore {
                target,
                message,
                log,
            }
        } else {
            DockerError::Build {
                target,
                message,
                log,
            }
        }
    }

    /// An error from the build stream: the engine's own report of a failed
    /// step is the recipe's (see [`DockerError::build_step`]); losing the
    /// engine is infrastructure.
    fn from_build_stream(target: &str, log: &Path, e: bollard::errors::Error) -> DockerError {
        use bollard::errors::Error as E;
        match e {
            E::DockerStreamError { error } => DockerError::build_step(target, error, log),
            E::DockerResponseServerError {
                status_code,
                message,
            } if (400..500).contains(&status_code) => DockerError::build_step(target, message, log),
            source => DockerError::Engine {
                target: target.to_string(),
                source,
            },
        }
    }
}

/// A connected engine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub name: String,
    pub docker: Docker,
    /// An `ssh://` engine's connection (its socket forwarded here).
    pub tunnel: Option<std::sync::Arc<tunnel::Tunnel>>,
}

/// Connect to a configured host: unix socket, tcp (TLS with the certificates
/// in `DOCKER_CERT_PATH`, plain otherwise), or ssh.
pub async fn connect(host: &DockerHost) -> Result<Engine, DockerError> {
    let err = |message: String| DockerError::Connect {
        host: host.name.clone(),
        endpoint: host.endpoint.clone(),
        message,
    };
    let docker = if let Some(path) = host.endpoint.strip_prefix("unix://") {
        Docker::connect_with_unix(path, 1800, bollard::API_DEFAULT_VERSION)
    } else if host.endpoint.starts_with("tcp://") {
        match std::env::var("DOCKER_CERT_PATH") {
            Ok(dir) => {
                // bollard's TLS takes rustls' process-wide provider, which
                // two providers linked in (ring, aws-lc-rs) leave unset:
                // choose aws-lc-rs (octocrab's) once; a second call is a
                // no-op.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let d = Path::new(&dir);
                Docker::connect_with_ssl(
                    &host.endpoint,
                    &d.join("key.pem"),
                    &d.join("cert.pem"),
                    &d.join("ca.pem"),
                    1800,
                    bollard::API_DEFAULT_VERSION,
                )
            }
            Err(_) => Docker::connect_with_http(&host.endpoint, 1800, bollard::API_DEFAULT_VERSION),
        }
    } else if host.endpoint.starts_with("ssh://") {
        // Kiln's own ssh connection, the host's socket forwarded here: it
        // also carries the builds' source forwards ([`tunnel`]).
        let t = tunnel::Tunnel::open(host)
            .await
            .map_err(|e| err(e.to_string()))?;
        let docker = Docker::connect_with_unix(
            &t.socket.display().to_string(),
            1800,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| err(e.to_string()))?;
        return Ok(Engine {
            name: host.name.clone(),
            docker,
            tunnel: Some(std::sync::Arc::new(t)),
        });
    } else {
        return Err(err("expected a unix://, tcp:// or ssh:// endpoint".into()));
    };
    Ok(Engine {
        name: host.name.clone(),
        docker: docker.map_err(|e| err(e.to_string()))?,
        tunnel: None,
    })
}

/// One command the smoke test runs, and what its output must contain.
#[derive(Debug, Clone)]
pub struct SmokeCheck {
    pub argv: Vec<String>,
    pub expect: String,
}

/// One arch of one target.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// For messages and labels: `linux/debian-13/5.5.0/amd64`.
    pub target: String,
    /// The rendered Dockerfile.
    pub dockerfile: String,
    /// Extra files for the build context (path in context → bytes).
    pub context: BTreeMap<String, Vec<u8>>,
    /// `linux` or `windows`.
    pub os: String,
    pub arch: Arch,
    /// The repository in Kiln's registry to push to (`kiln/opam`).
    pub repository: String,
    /// Windows images only: the tag the engine pushes them under
    /// (`debian-13-ocaml-5.5.0-abc-amd64`); Linux images go up by digest.
    pub engine_tag: String,
    /// The pinned parent (`name@sha256:…`), whose layers the image keeps
    /// byte for byte; `None` for `FROM scratch`.
    pub parent: Option<String>,
    /// Every timestamp of the image is clamped to this.
    pub source_date_epoch: u64,
    /// Where the export is unpacked and the layers written.
    pub work_dir: PathBuf,
    pub smoke: Vec<SmokeCheck>,
    pub log: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Credentials the engine pulls the parent and pushes (Windows) with,
    /// per registry.
    pub auth: EngineAuth,
    /// The configured host building it, for the log.
    pub host: String,
    /// The build's source proxy (`http://kiln:<token>@addr:port`), given
    /// as Docker's predefined proxy arguments: outside the cache key.
    pub proxy: Option<String>,
    /// A Windows host's isolation, given to its smoke-test containers
    /// (its builds take the engine's default, which `kiln doctor` checks
    /// is the same: the build API has no isolation field in bollard).
    pub isolation: Option<crate::config::Isolation>,
    /// Build every step afresh ([`crate::builders::BuildJob::fresh`]).
    pub no_cache: bool,
}

#[derive(Debug, Clone)]
pub struct BuildResult {
    /// Digest of the pushed per-arch manifest.
    pub digest: String,
    pub smoke_output: String,
}

/// A tar of the context: the Dockerfile plus extra files.
pub fn context_tar(
    dockerfile: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<u8>, DockerError> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, data)
            .map_err(|e| DockerError::Context(format!("build context {name}: {e}")))
    };
    add("Dockerfile", dockerfile.as_bytes(), 0o644)?;
    for (name, data) in files {
        add(name, data, 0o755)?;
    }
    b.into_inner()
        .map_err(|e| DockerError::Context(format!("build context: {e}")))
}

/// Build, smoke-test and push one arch to `reg`. Nothing is pushed unless
/// the smoke test passes; local images, containers and work files are
/// removed either way.
pub async fn build(
    engine: &Engine,
    reg: &crate::registry::Registry,
    spec: &BuildSpec,
) -> Result<BuildResult, DockerError> {
    let mut cleanup = sweep::Cleanup::new(engine);
    let result = async {
        pull::pull_parent(engine, spec).await?;
        let mut built = steps::build_and_smoke(engine, spec, &mut cleanup).await?;
        let digest = steps::deliver(engine, reg, spec, &mut built, &mut cleanup).await?;
        Ok(BuildResult {
            digest,
            smoke_output: built.smoke_output,
        })
    }
    .await;
    // The build's steps stay as the engine's layer cache (its parents
    // are not pruned with its tag): the next build sharing them reuses
    // them, and the host's cache budget bounds them (`cache.rs`).
    cleanup.run().await;
    result
}

/// Build and smoke-test one arch exactly as [`build`] does, but keep the
/// reproducible image on disk instead of pushing it (`kiln verify
/// --rebuild`). Linux only.
pub async fn build_local(
    engine: &Engine,
    reg: &crate::registry::Registry,
    spec: &BuildSpec,
) -> Result<LocalImage, DockerError> {
    let mut cleanup = sweep::Cleanup::new(engine);
    let result = async {
        pull::pull_parent(engine, spec).await?;
        let mut built = steps::build_and_smoke(engine, spec, &mut cleanup).await?;
        let img = export::export(engine, reg, spec, &built.local).await?;
        steps::log_image(&mut built, &img, "kept").await;
        Ok(img)
    }
    .await;
    cleanup.run().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "/tmp/kiln-test.log";

    fn kind_of(e: bollard::errors::Error) -> FailureKind {
        DockerError::from_build_stream("t", Path::new(LOG), e).kind()
    }

    #[test]
    fn the_engine_losing_its_image_store_is_infrastructure() {
        // As dockerd 20.10 words it when another build's sweep removed an
        // image under this build.
        let lost = "failed to get digest sha256:4c1d1f7a8f6b3e0e5a4a7c9f3d2b1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d: \
                    open /var/lib/docker/image/overlay2/imagedb/content/sha256/4c1d1f7a8f6b3e0e5a4a7c9f3d2b1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d: \
                    no such file or directory";
        let stream = bollard::errors::Error::DockerStreamError {
            error: lost.to_string(),
        };
        assert_eq!(kind_of(stream), FailureKind::Infra);
        let response = bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message: lost.to_string(),
        };
        assert_eq!(kind_of(response), FailureKind::Infra);
        let step = DockerError::build_step("t", lost.to_string(), Path::new(LOG));
        assert!(matches!(step, DockerError::EngineStore { .. }), "{step:?}");
        assert!(step.to_string().contains("failed to get digest"), "{step}");
    }

    #[test]
    fn a_rate_limited_pull_in_the_build_is_infrastructure() {
        // As dockerd words a Docker Hub refusal inside `FROM`.
        let said = "toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit";
        let e = bollard::errors::Error::DockerStreamError {
            error: said.to_string(),
        };
        assert_eq!(kind_of(e), FailureKind::Infra);
        let step = DockerError::build_step("t", said.to_string(), Path::new(LOG));
        assert!(matches!(step, DockerError::RateLimited { .. }), "{step:?}");
    }

    #[test]
    fn a_failed_step_is_still_the_recipes() {
        for message in [
            "The command '/bin/sh -c false' returned a non-zero code: 1",
            // A recipe's own missing file names neither the engine's store
            // nor a digest.
            "COPY failed: file not found in build context or excluded by .dockerignore: stat x: file does not exist",
            "failed to get digest of the recipe's download",
        ] {
            let e = bollard::errors::Error::DockerStreamError {
                error: message.to_string(),
            };
            assert_eq!(kind_of(e), FailureKind::Recipe, "{message}");
        }
        let e = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "internal".into(),
        };
        assert_eq!(kind_of(e), FailureKind::Infra);
    }
}
