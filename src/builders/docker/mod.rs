//! Linux and Windows images built through the Docker Engine API (bollard).
//!
//! One [`BuildSpec`] is one arch of one target: a rendered Dockerfile (its
//! parent pinned by digest), the platform to build for (foreign arches run
//! under binfmt emulation), a smoke test, and the reference to push to. The
//! build streams its log to the target's log file; the smoke test runs the
//! built image and must print what the catalogue says; only then is the
//! image pushed, by digest. Whatever happens, the build's containers and
//! local images are removed.
//!
//! Docker 20.10 (API 1.41) is driven with its classic builder: BuildKit
//! through the API needs a gRPC session that bollard only offers behind
//! its `buildkit` feature, and the classic builder gives the same image
//! for these single-stage-per-arch builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptions,
    ListImagesOptions, LogsOptionsBuilder, PushImageOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::config::DockerHost;

pub mod parents;

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
    #[error("{target}: push of {reference} failed: {message}")]
    Push {
        target: String,
        reference: String,
        message: String,
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
    #[error("{0}")]
    Context(String),
}

/// A connected engine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub name: String,
    pub docker: Docker,
}

/// Connect to a configured host: unix socket, tcp (TLS with the certificates
/// in `DOCKER_CERT_PATH`, plain otherwise), or ssh.
pub fn connect(host: &DockerHost) -> Result<Engine, DockerError> {
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
        // Runs `docker system dial-stdio` on the remote through the ssh
        // binary (keys from the ssh agent or ~/.ssh, as for `docker -H ssh://`).
        Docker::connect_with_ssh(&host.endpoint, 1800, bollard::API_DEFAULT_VERSION, None)
    } else {
        return Err(err("expected a unix://, tcp:// or ssh:// endpoint".into()));
    };
    Ok(Engine {
        name: host.name.clone(),
        docker: docker.map_err(|e| err(e.to_string()))?,
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
    /// Kiln arch name.
    pub arch: String,
    /// Where to push: `127.0.0.1:5000/kiln/opam:debian-13-ocaml-5.5.0-abc-amd64`.
    pub push_ref: String,
    pub smoke: Vec<SmokeCheck>,
    pub log: PathBuf,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct BuildResult {
    /// Digest of the pushed per-arch manifest.
    pub digest: String,
    pub smoke_output: String,
}

/// Docker's platform string for a Kiln arch.
pub fn platform(os: &str, arch: &str) -> String {
    match arch {
        "i386" => format!("{os}/386"),
        "arm32v7" => format!("{os}/arm/v7"),
        other => format!("{os}/{other}"),
    }
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

struct Cleanup<'a> {
    engine: &'a Engine,
    images: Vec<String>,
    containers: Vec<String>,
}

impl Cleanup<'_> {
    async fn run(&mut self) {
        for c in self.containers.drain(..) {
            let _ = self
                .engine
                .docker
                .remove_container(
                    &c,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
        }
        for i in self.images.drain(..) {
            let _ = self
                .engine
                .docker
                .remove_image(
                    &i,
                    Some(RemoveImageOptionsBuilder::default().force(true).build()),
                    None,
                )
                .await;
        }
    }
}

/// The label naming the Kiln process that made a smoke container:
/// `<hostname>/<pid>`.
pub const OWNER_LABEL: &str = "org.ocaml.kiln.owner";

fn host_hash() -> String {
    crate::registry::sha256_digest(crate::process::hostname().as_bytes())[7..15].to_string()
}

/// The owner of a local build tag `kiln-build/<arch>:<pid>-<host hash>-…`,
/// as an owner label would say it, when it is this host's.
fn tag_owner(tag: &str) -> Option<String> {
    let (_, t) = tag.rsplit_once(':')?;
    let mut parts = t.splitn(3, '-');
    let (pid, host) = (parts.next()?, parts.next()?);
    (host == host_hash()).then(|| format!("{}/{pid}", crate::process::hostname()))
}

/// Remove the smoke containers and local build images a Kiln process on
/// this host left when it was killed before its own cleanup ran. Returns
/// (containers, images) removed.
pub async fn sweep_orphans(engine: &Engine) -> Result<(usize, usize), bollard::errors::Error> {
    let filters: std::collections::HashMap<String, Vec<String>> =
        [("label".to_string(), vec![OWNER_LABEL.to_string()])].into();
    let containers = engine
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await?;
    let mut removed = (0, 0);
    for c in containers {
        let owner = c
            .labels
            .as_ref()
            .and_then(|l| l.get(OWNER_LABEL))
            .cloned()
            .unwrap_or_default();
        if let Some(id) = c.id
            && crate::process::owner_is_gone(&owner)
        {
            let gone = engine
                .docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await;
            if gone.is_ok() {
                removed.0 += 1;
            }
        }
    }
    let images = engine
        .docker
        .list_images(Some(ListImagesOptions {
            filters: Some([("reference".to_string(), vec!["kiln-build/*".to_string()])].into()),
            ..Default::default()
        }))
        .await?;
    for tag in images.iter().flat_map(|i| i.repo_tags.iter()) {
        if tag_owner(tag).is_some_and(|o| crate::process::owner_is_gone(&o)) {
            let gone = engine
                .docker
                .remove_image(
                    tag,
                    Some(RemoveImageOptionsBuilder::default().force(true).build()),
                    None,
                )
                .await;
            if gone.is_ok() {
                removed.1 += 1;
            }
        }
    }
    if removed != (0, 0) {
        tracing::info!(engine = %engine.name, containers = removed.0, images = removed.1, "removed what a killed kiln process left behind");
    }
    Ok(removed)
}

/// Build, smoke-test and push one arch. Nothing is pushed unless the smoke
/// test passes; local images and containers are removed either way.
pub async fn build(engine: &Engine, spec: &BuildSpec) -> Result<BuildResult, DockerError> {
    let mut cleanup = Cleanup {
        engine,
        images: vec![],
        containers: vec![],
    };
    let result = build_inner(engine, spec, &mut cleanup).await;
    cleanup.run().await;
    result
}

async fn build_inner(
    engine: &Engine,
    spec: &BuildSpec,
    cleanup: &mut Cleanup<'_>,
) -> Result<BuildResult, DockerError> {
    let target = spec.target.clone();
    let log_err = |source| DockerError::Log {
        target: target.clone(),
        path: spec.log.clone(),
        source,
    };
    if let Some(dir) = spec.log.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(log_err)?;
    }
    let mut log = tokio::fs::File::create(&spec.log).await.map_err(log_err)?;
    let engine_err = |source| DockerError::Engine {
        target: spec.target.clone(),
        source,
    };
    // The local tag names its owner (`<pid>-<host hash>-…`) so that what a
    // killed process leaves can be swept; nothing of it reaches the
    // pushed image.
    let local = format!(
        "kiln-build/{}:{}-{}-{}",
        spec.arch,
        std::process::id(),
        host_hash(),
        &crate::registry::sha256_digest(
            format!("{}{:?}", spec.target, std::time::SystemTime::now()).as_bytes()
        )[7..19]
    );
    cleanup.images.push(local.clone());
    let tar = context_tar(&spec.dockerfile, &spec.context)?;
    let mut labels: std::collections::HashMap<String, String> =
        spec.labels.clone().into_iter().collect();
    labels.insert("org.ocaml.kiln.target".into(), spec.target.clone());
    let opts = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&local)
        .platform(&platform(&spec.os, &spec.arch))
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .build();
    let _ = log
        .write_all(
            format!(
                "# kiln: building {} for {}\n",
                spec.target,
                platform(&spec.os, &spec.arch)
            )
            .as_bytes(),
        )
        .await;
    let mut stream = engine
        .docker
        .build_image(opts, None, Some(bollard::body_full(tar.into())));
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(s) = &info.stream {
                    log.write_all(s.as_bytes()).await.map_err(log_err)?;
                }
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    let _ = log.write_all(format!("ERROR: {e}\n").as_bytes()).await;
                    return Err(DockerError::Build {
                        target: spec.target.clone(),
                        message: e,
                        log: spec.log.clone(),
                    });
                }
            }
            Err(e) => {
                let _ = log.write_all(format!("ERROR: {e}\n").as_bytes()).await;
                return Err(DockerError::Build {
                    target: spec.target.clone(),
                    message: e.to_string(),
                    log: spec.log.clone(),
                });
            }
        }
    }
    // Smoke test: run the image, compare what it prints with the catalogue.
    let mut smoke_output = String::new();
    for check in &spec.smoke {
        let out = run_in(engine, &local, &spec.arch, &spec.os, &check.argv, cleanup)
            .await
            .map_err(engine_err)?;
        let _ = log
            .write_all(format!("# kiln smoke: {} -> {}", check.argv.join(" "), out).as_bytes())
            .await;
        if !out.contains(&check.expect) {
            return Err(DockerError::Smoke {
                target: spec.target.clone(),
                command: check.argv.join(" "),
                got: out.trim().to_string(),
                expected: check.expect.clone(),
                log: spec.log.clone(),
            });
        }
        smoke_output.push_str(&out);
    }
    // Push by digest.
    let (repo, tag) = spec
        .push_ref
        .rsplit_once(':')
        .filter(|(r, _)| !r.ends_with('/') && !r.is_empty())
        .ok_or_else(|| {
            DockerError::Context(format!("push reference {} has no tag", spec.push_ref))
        })?;
    engine
        .docker
        .tag_image(
            &local,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(repo)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .map_err(engine_err)?;
    cleanup.images.push(spec.push_ref.clone());
    let mut digest = None;
    let mut push = engine.docker.push_image(
        repo,
        Some(PushImageOptionsBuilder::default().tag(tag).build()),
        None,
    );
    while let Some(item) = push.next().await {
        match item {
            Ok(info) => {
                if let Some(d) = info
                    .status
                    .as_deref()
                    .and_then(|s| s.split("digest: ").nth(1))
                    .and_then(|r| r.split_whitespace().next())
                {
                    digest = Some(d.to_string());
                }
            }
            Err(e) => {
                return Err(DockerError::Push {
                    target: spec.target.clone(),
                    reference: spec.push_ref.clone(),
                    message: e.to_string(),
                });
            }
        }
    }
    let digest = digest.ok_or_else(|| DockerError::Push {
        target: spec.target.clone(),
        reference: spec.push_ref.clone(),
        message: "the engine did not report a digest".into(),
    })?;
    let _ = log
        .write_all(format!("# kiln: pushed {}@{digest}\n", spec.push_ref).as_bytes())
        .await;
    Ok(BuildResult {
        digest,
        smoke_output,
    })
}

/// Run `argv` in a fresh container of `image` and return its output.
async fn run_in(
    engine: &Engine,
    image: &str,
    arch: &str,
    os: &str,
    argv: &[String],
    cleanup: &mut Cleanup<'_>,
) -> Result<String, bollard::errors::Error> {
    let name = format!(
        "kiln-smoke-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let created = engine
        .docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&name)
                    .platform(&platform(os, arch))
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(image.to_string()),
                labels: Some([(OWNER_LABEL.to_string(), crate::process::owner())].into()),
                entrypoint: Some(vec![]),
                cmd: Some(argv.to_vec()),
                network_disabled: Some(true),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await?;
    cleanup.containers.push(created.id.clone());
    engine
        .docker
        .start_container(
            &created.id,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await?;
    let mut wait = engine.docker.wait_container(
        &created.id,
        Some(
            WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build(),
        ),
    );
    while let Some(r) = wait.next().await {
        // A non-zero exit is reported as an error; the output still decides.
        if r.is_err() {
            break;
        }
    }
    let mut out = String::new();
    let mut logs = engine.docker.logs(
        &created.id,
        Some(
            LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    while let Some(l) = logs.next().await {
        out.push_str(&l?.to_string());
    }
    Ok(out)
}
