//! What the engine needs from registries, with Kiln's credentials: the
//! parent pulled before the build (X-Registry-Auth, the parent registry's
//! own credentials), the build's other pulls (X-Registry-Config), and the
//! engine's push of a Windows image (X-Registry-Auth, Kiln's registry's).
//!
//! Credentials are resolved per registry host exactly as Kiln's own client
//! resolves them (`registry::auth`), so the engine pulls parents from
//! Docker Hub or quay.io as the logged-in operator would (not anonymously,
//! with its lower limits), and each registry gets only its own. The
//! parent is pulled by digest before the build, not by the builder's
//! `FROM`: a refused or rate-limited pull is then the engine's pull
//! failing — infrastructure, naming the registry — not build-stream text
//! read as a failed recipe.

use std::collections::{BTreeMap, HashMap};

use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use super::{BuildSpec, DockerError, Engine};
use crate::config;
use crate::registry::auth::{self, Secret};
use crate::registry::{RegistryError, error_chain};

/// Credentials for the engine, per registry host. Its Debug names the
/// hosts only.
#[derive(Clone, Default)]
pub struct EngineAuth {
    by_host: BTreeMap<String, DockerCredentials>,
}

impl std::fmt::Debug for EngineAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_host.keys()).finish()
    }
}

impl EngineAuth {
    /// The credentials Kiln has for each of `hosts` (none for a host
    /// without any: the engine goes anonymously).
    pub async fn resolve(
        cfg: &config::Registry,
        hosts: impl IntoIterator<Item = String>,
    ) -> Result<EngineAuth, RegistryError> {
        let mut by_host = BTreeMap::new();
        for host in hosts {
            if by_host.contains_key(&host) {
                continue;
            }
            if let Some(c) = auth::credentials_for(cfg, &host).await? {
                let serveraddress = Some(auth::server_address(&host));
                let creds = match c.secret {
                    Secret::Password(p) => DockerCredentials {
                        username: Some(c.username),
                        password: Some(p),
                        serveraddress,
                        ..Default::default()
                    },
                    Secret::IdentityToken(t) => DockerCredentials {
                        identitytoken: Some(t),
                        serveraddress,
                        ..Default::default()
                    },
                };
                by_host.insert(host, creds);
            }
        }
        Ok(EngineAuth { by_host })
    }

    /// X-Registry-Auth for `host`.
    pub fn for_host(&self, host: &str) -> Option<DockerCredentials> {
        self.by_host
            .iter()
            .find(|(h, _)| auth::same_registry(h, host))
            .map(|(_, c)| c.clone())
    }

    /// X-Registry-Config: every registry's, by the server address Docker
    /// keys them with.
    pub fn config(&self) -> Option<HashMap<String, DockerCredentials>> {
        (!self.by_host.is_empty()).then(|| {
            self.by_host
                .iter()
                .map(|(h, c)| (auth::server_address(h), c.clone()))
                .collect()
        })
    }
}

/// The registry host of an image name as Docker reads it: the first path
/// component when it looks like a host, else Docker Hub.
pub fn registry_host(name: &str) -> String {
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "registry-1.docker.io".to_string(),
    }
}

/// Pull the build's parent (`name@digest`) onto the engine unless it is
/// there, with its registry's credentials.
pub(super) async fn pull_parent(engine: &Engine, spec: &BuildSpec) -> Result<(), DockerError> {
    let Some(parent) = &spec.parent else {
        return Ok(());
    };
    if engine.docker.inspect_image(parent).await.is_ok() {
        return Ok(());
    }
    let (name, digest) = parent.split_once('@').unwrap_or((parent.as_str(), ""));
    let registry = registry_host(name);
    let fail = |message: String| DockerError::Pull {
        target: spec.target.clone(),
        parent: parent.clone(),
        registry: registry.clone(),
        message,
    };
    let opts = CreateImageOptionsBuilder::default()
        .from_image(name)
        .tag(digest)
        .platform(&spec.arch.docker_platform(&spec.os))
        .build();
    let mut stream = engine
        .docker
        .create_image(Some(opts), None, spec.auth.for_host(&registry));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| fail(error_chain(&e)))?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(fail(message));
        }
    }
    tracing::info!(target = %spec.target, %parent, %registry, "parent pulled");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_read_as_docker_reads_them() {
        assert_eq!(registry_host("debian"), "registry-1.docker.io");
        assert_eq!(registry_host("ocaml/opam"), "registry-1.docker.io");
        assert_eq!(registry_host("quay.io/centos/centos"), "quay.io");
        assert_eq!(
            registry_host("127.0.0.1:5000/kiln-fixtures/busybox"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_host("localhost/x"), "localhost");
    }

    #[test]
    fn debug_names_hosts_not_secrets() {
        let mut a = EngineAuth::default();
        a.by_host.insert(
            "quay.io".into(),
            DockerCredentials {
                username: Some("u".into()),
                password: Some("hunter2".into()),
                ..Default::default()
            },
        );
        let d = format!("{a:?}");
        assert!(d.contains("quay.io") && !d.contains("hunter2"), "{d}");
        // Docker Hub's credentials answer for any of its names.
        a.by_host
            .insert("registry-1.docker.io".into(), DockerCredentials::default());
        assert!(a.for_host("docker.io").is_some());
        assert!(a.config().unwrap().contains_key(auth::DOCKER_HUB_KEY));
    }
}
