//! The steps of one arch's build on an engine: build the image from the
//! rendered Dockerfile (streaming its log), smoke-test it in a container
//! without network, then deliver it: a Linux image exported, made
//! reproducible and pushed by digest with Kiln's registry client; a
//! Windows image pushed by the engine.

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigIsolationEnum};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, LogsOptionsBuilder,
    PushImageOptionsBuilder, TagImageOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::fs::File;
use tokio::io::AsyncWriteExt;

use super::export::{self, LocalImage};
use super::sweep::{Cleanup, OWNER_LABEL, host_hash};
use super::{BuildSpec, DockerError, Engine, context_tar};
use crate::registry::Registry;

/// A built image that passed its smoke test, under its local tag.
pub(super) struct Built {
    pub(super) local: String,
    pub(super) smoke_output: String,
    log: File,
}

/// Build the image under an owner-marked local tag and smoke-test it.
pub(super) async fn build_and_smoke(
    engine: &Engine,
    spec: &BuildSpec,
    cleanup: &mut Cleanup<'_>,
) -> Result<Built, DockerError> {
    let log_err = |source| DockerError::Log {
        target: spec.target.clone(),
        path: spec.log.clone(),
        source,
    };
    if let Some(dir) = spec.log.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(log_err)?;
    }
    let mut log = File::create(&spec.log).await.map_err(log_err)?;
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
    build_image(engine, spec, &local, &mut log, cleanup).await?;
    let smoke_output = smoke(engine, spec, &local, &mut log, cleanup).await?;
    Ok(Built {
        local,
        smoke_output,
        log,
    })
}

/// Push a built image to `reg`; returns its digest.
pub(super) async fn deliver(
    engine: &Engine,
    reg: &Registry,
    spec: &BuildSpec,
    built: &mut Built,
    cleanup: &mut Cleanup<'_>,
) -> Result<String, DockerError> {
    let digest = if spec.os == "linux" {
        let img = export::export(engine, reg, spec, &built.local).await?;
        log_image(built, &img, "made reproducible").await;
        export::push(reg, &spec.repository, &img)
            .await
            .map_err(|source| DockerError::Registry {
                target: spec.target.clone(),
                source,
            })?
    } else {
        let push_ref = format!("{}/{}:{}", reg.host, spec.repository, spec.engine_tag);
        push(engine, spec, &push_ref, &built.local, cleanup).await?
    };
    let _ = built
        .log
        .write_all(format!("# kiln: pushed {}@{digest}\n", spec.repository).as_bytes())
        .await;
    Ok(digest)
}

/// Say in the build log what the image is made of.
pub(super) async fn log_image(built: &mut Built, img: &LocalImage, what: &str) {
    let mut text = format!("# kiln: {what}: {}\n", img.digest);
    for (i, l) in img.layers.iter().enumerate() {
        let from = match (&l.mount_from, i < img.inherited) {
            (Some(repo), _) => format!("parent, mounted from {repo}"),
            (None, true) => "parent".to_string(),
            (None, false) => "normalized".to_string(),
        };
        text.push_str(&format!(
            "# kiln:   layer {i} ({from}): {} {} bytes, diff {}\n",
            l.digest, l.size, l.diff_id
        ));
    }
    let _ = built.log.write_all(text.as_bytes()).await;
}

/// Build the image under the local tag, streaming its output to the log.
async fn build_image(
    engine: &Engine,
    spec: &BuildSpec,
    local: &str,
    log: &mut File,
    cleanup: &mut Cleanup<'_>,
) -> Result<(), DockerError> {
    let tar = context_tar(&spec.dockerfile, &spec.context)?;
    let mut labels: std::collections::HashMap<String, String> =
        spec.labels.clone().into_iter().collect();
    labels.insert("org.ocaml.kiln.target".into(), spec.target.clone());
    let platform = spec.arch.docker_platform(&spec.os);
    // Docker's predefined proxy arguments: they reach RUN steps as
    // environment but enter neither the cache key nor the history.
    let proxy: std::collections::HashMap<String, String> = spec
        .proxy
        .iter()
        .flat_map(|p| {
            ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"]
                .map(|k| (k.to_string(), p.clone()))
        })
        .collect();
    let opts = BuildImageOptionsBuilder::default()
        // The engine's default network: never the host's (sources come
        // through the build's proxy).
        .networkmode("default")
        .dockerfile("Dockerfile")
        .t(local)
        .platform(&platform)
        .rm(true)
        .forcerm(true)
        .nocache(spec.no_cache)
        .labels(&labels)
        .buildargs(&proxy)
        .build();
    let _ = log
        .write_all(
            format!(
                "# kiln: building {} for {platform} on docker host {}\n",
                spec.target, spec.host
            )
            .as_bytes(),
        )
        .await;
    let mut stream = engine.docker.build_image(
        opts,
        spec.auth.config(),
        Some(bollard::body_full(tar.into())),
    );
    while let Some(item) = stream.next().await {
        let failure = match item {
            Ok(info) => {
                if let Some(s) = &info.stream {
                    // The step running now: a build dropped mid-step (a
                    // cancelled job) removes its container itself, as the
                    // engine may not notice the client leaving.
                    if let Some(id) = s.trim().strip_prefix("---> Running in ") {
                        cleanup.step = Some(id.trim().to_string());
                    } else if s.trim_start().starts_with("---> ") {
                        cleanup.step = None;
                    }
                    log.write_all(s.as_bytes())
                        .await
                        .map_err(|source| DockerError::Log {
                            target: spec.target.clone(),
                            path: spec.log.clone(),
                            source,
                        })?;
                }
                match info.error_detail.and_then(|d| d.message) {
                    Some(message) => DockerError::build_step(&spec.target, message, &spec.log),
                    None => continue,
                }
            }
            Err(e) => DockerError::from_build_stream(&spec.target, &spec.log, e),
        };
        let _ = log
            .write_all(format!("ERROR: {failure}\n").as_bytes())
            .await;
        return Err(failure);
    }
    Ok(())
}

/// Run each smoke check in the built image; every output must contain
/// what the catalogue expects.
async fn smoke(
    engine: &Engine,
    spec: &BuildSpec,
    local: &str,
    log: &mut File,
    cleanup: &mut Cleanup<'_>,
) -> Result<String, DockerError> {
    let mut smoke_output = String::new();
    for check in &spec.smoke {
        let out = run_in(engine, local, spec, &check.argv, cleanup)
            .await
            .map_err(|source| DockerError::Engine {
                target: spec.target.clone(),
                source,
            })?;
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
    Ok(smoke_output)
}

/// Tag the local image as `push_ref` and push it with the engine (Windows
/// images, whose foreign base layers Kiln does not copy); returns the
/// digest the engine reports.
async fn push(
    engine: &Engine,
    spec: &BuildSpec,
    push_ref: &str,
    local: &str,
    cleanup: &mut Cleanup<'_>,
) -> Result<String, DockerError> {
    let push_err = |message: String| DockerError::Push {
        target: spec.target.clone(),
        reference: push_ref.to_string(),
        message,
    };
    let (repo, tag) = push_ref
        .rsplit_once(':')
        .filter(|(r, _)| !r.ends_with('/') && !r.is_empty())
        .ok_or_else(|| DockerError::Context(format!("push reference {push_ref} has no tag")))?;
    engine
        .docker
        .tag_image(
            local,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(repo)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .map_err(|source| DockerError::Engine {
            target: spec.target.clone(),
            source,
        })?;
    cleanup.images.push(push_ref.to_string());
    let mut digest = None;
    let registry = super::pull::registry_host(repo);
    let mut stream = engine.docker.push_image(
        repo,
        Some(PushImageOptionsBuilder::default().tag(tag).build()),
        spec.auth.for_host(&registry),
    );
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| push_err(e.to_string()))?;
        if let Some(d) = info
            .status
            .as_deref()
            .and_then(|s| s.split("digest: ").nth(1))
            .and_then(|r| r.split_whitespace().next())
        {
            digest = Some(d.to_string());
        }
    }
    digest.ok_or_else(|| push_err("the engine did not report a digest".into()))
}

/// Run `argv` in a fresh container of `image` and return its output.
async fn run_in(
    engine: &Engine,
    image: &str,
    spec: &BuildSpec,
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
                    .platform(&spec.arch.docker_platform(&spec.os))
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(image.to_string()),
                labels: Some([(OWNER_LABEL.to_string(), crate::process::owner())].into()),
                // The image's own entrypoint (`opam exec --` in ocaml/opam
                // images), so the check runs as `docker run IMAGE argv` does.
                entrypoint: None,
                cmd: Some(argv.to_vec()),
                network_disabled: Some(true),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    isolation: spec.isolation.map(|i| match i {
                        crate::config::Isolation::Process => HostConfigIsolationEnum::PROCESS,
                        crate::config::Isolation::Hyperv => HostConfigIsolationEnum::HYPERV,
                    }),
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
