//! What a build leaves on an engine, and sweeping it: the smoke
//! containers and local images of one build ([`Cleanup`], run whatever
//! happens), and what a killed Kiln left (owner-marked, swept by the next
//! build on this host).

use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};

use super::Engine;

/// The containers and images one build made, removed when it ends.
pub(super) struct Cleanup<'a> {
    pub(super) engine: &'a Engine,
    pub(super) images: Vec<String>,
    pub(super) containers: Vec<String>,
    /// The container of the build step running now (the engine removes
    /// it when the step ends; only a dropped build removes it here).
    pub(super) step: Option<String>,
}

impl Drop for Cleanup<'_> {
    /// A build dropped mid-way (a cancelled job) still removes what it
    /// made: the removal runs on the runtime ([`crate::process::cleanup_later`]).
    fn drop(&mut self) {
        if self.containers.is_empty() && self.images.is_empty() && self.step.is_none() {
            return;
        }
        let docker = self.engine.docker.clone();
        let mut containers = std::mem::take(&mut self.containers);
        containers.extend(self.step.take());
        let images = std::mem::take(&mut self.images);
        crate::process::cleanup_later("smoke containers and local build images", async move {
            remove(&docker, containers, images).await;
        });
    }
}

/// Force-remove containers, then images: their tags, never their
/// untagged parents. Those are build steps, possibly shared: another
/// build may have just taken one from the cache and be about to run its
/// next step on it, so removing it under that build fails the build
/// ("failed to get digest"). The layer cache's budget prunes them, old
/// ones only (`cache.rs`).
async fn remove(docker: &bollard::Docker, containers: Vec<String>, images: Vec<String>) {
    for c in containers {
        let _ = docker
            .remove_container(
                &c,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
    }
    for i in images {
        let _ = docker
            .remove_image(
                &i,
                Some(
                    RemoveImageOptionsBuilder::default()
                        .force(true)
                        .noprune(true)
                        .build(),
                ),
                None,
            )
            .await;
    }
}

impl<'a> Cleanup<'a> {
    /// Nothing to remove yet.
    pub(super) fn new(engine: &'a Engine) -> Cleanup<'a> {
        Cleanup {
            engine,
            images: vec![],
            containers: vec![],
            step: None,
        }
    }

    pub(super) async fn run(&mut self) {
        let containers = std::mem::take(&mut self.containers);
        let images = std::mem::take(&mut self.images);
        self.step = None;
        remove(&self.engine.docker, containers, images).await;
    }
}

/// The label naming the Kiln process that made a smoke container:
/// `<hostname>/<pid>`.
pub const OWNER_LABEL: &str = "org.ocaml.kiln.owner";

pub(super) fn host_hash() -> String {
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
            // A container the killed process was still starting or stopping
            // can refuse removal for a moment ("removal in progress", a
            // busy engine): try again before leaving it to the next sweep.
            for attempt in 1..=3 {
                let gone = engine
                    .docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                    )
                    .await;
                match gone {
                    Ok(()) => {
                        removed.0 += 1;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(container = %id, %owner, attempt, error = %e, "removing a killed build's container");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
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
                    Some(
                        RemoveImageOptionsBuilder::default()
                            .force(true)
                            .noprune(true)
                            .build(),
                    ),
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
