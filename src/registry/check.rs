//! Is what a manifest names in the registry? Cheaply: the manifest is read
//! (its digest checked) and every blob it names is asked for by HEAD, which
//! must answer with the size the manifest records. Deeply: every blob is
//! downloaded and hashed. `kiln verify` (and `kiln release`, and recovery)
//! check cheaply: a registry keeps blobs content-addressed, so presence
//! with the right size is what publication can lose; `kiln verify --deep`
//! reads every byte, for a registry whose storage is suspect.

use std::path::Path;

use super::{Registry, RegistryError};

/// How much of a blob is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Depth {
    /// HEAD: present, with the recorded size.
    #[default]
    Cheap,
    /// GET: every byte, hashed against the digest.
    Deep,
}

/// Layers that are never in the registry (Windows base layers, named by
/// URL): the manifest may name them, no registry holds them.
fn foreign(layer: &serde_json::Value) -> bool {
    layer["urls"].as_array().is_some_and(|u| !u.is_empty())
        || layer["mediaType"]
            .as_str()
            .is_some_and(|m| m.contains("foreign") || m.contains("nondistributable"))
}

impl Registry {
    /// Every blob (config and layers) the manifest `digest` of `repo`
    /// names is there: by HEAD and size ([`Depth::Cheap`]), or downloaded
    /// into `scratch` and hashed ([`Depth::Deep`]).
    pub async fn check_manifest_blobs(
        &self,
        repo: &str,
        digest: &str,
        depth: Depth,
        scratch: &Path,
    ) -> Result<(), RegistryError> {
        let v = self.get_manifest(repo, digest).await?.json()?;
        let layers = v["layers"].as_array().into_iter().flatten();
        let blobs: Vec<(String, Option<u64>)> = layers
            .filter(|l| !foreign(l))
            .chain(std::iter::once(&v["config"]))
            .filter_map(|d| Some((d["digest"].as_str()?.to_string(), d["size"].as_u64())))
            .collect();
        for (blob, size) in blobs {
            match depth {
                Depth::Cheap => match self.blob_size(repo, &blob).await? {
                    None => {
                        return Err(RegistryError::Invalid(format!(
                            "blob {blob} is missing from {}/{repo}",
                            self.host
                        )));
                    }
                    Some(got) if size.is_some_and(|want| want != got) => {
                        return Err(RegistryError::Invalid(format!(
                            "blob {blob} in {}/{repo} is {got} bytes, the manifest says {}",
                            self.host,
                            size.unwrap_or_default()
                        )));
                    }
                    Some(_) => {}
                },
                Depth::Deep => {
                    let tmp = scratch.join(blob.replace(':', "-"));
                    let r = self.pull_blob_to_file(repo, &blob, &tmp).await;
                    let _ = std::fs::remove_file(&tmp);
                    r.map_err(|e| RegistryError::Invalid(format!("blob {blob}: {e}")))?;
                }
            }
        }
        Ok(())
    }
}
