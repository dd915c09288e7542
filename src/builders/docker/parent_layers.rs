//! The parent's layers as its registry holds them, so that an image keeps
//! them as they are: the same compressed blobs, mounted from the parent's
//! repository into the image's, never recompressed or uploaded again.
//!
//! Only a parent in Kiln's own registry can be mounted (a registry mounts
//! across its own repositories), and only gzip layers (what an OCI image
//! of Kiln's names); any other parent's layers are compressed by Kiln, as
//! their bytes are fixed by the parent's digest either way.

use serde_json::Value;

use super::BuildSpec;
use crate::registry::index::{Platform, child_for};
use crate::registry::{OCI_LAYER_GZIP, Registry};

/// Docker's media type for the same gzip layer bytes.
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// One layer of the parent: what it holds and the blob it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLayer {
    /// `sha256:` of the uncompressed tar (the config's `diff_ids`).
    pub diff_id: String,
    /// `sha256:` of the blob.
    pub digest: String,
    pub size: u64,
}

/// The parent's repository in Kiln's registry and its layers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLayers {
    pub repo: String,
    pub layers: Vec<ParentLayer>,
}

/// The repository of `parent` (`host/repo[:tag]@sha256:…`) in the
/// registry at `host`, and the digest; `None` for another registry's.
fn in_registry<'a>(host: &str, parent: &'a str) -> Option<(&'a str, &'a str)> {
    let (name, digest) = parent.split_once('@')?;
    let repo = name.strip_prefix(host)?.strip_prefix('/')?;
    // A tag before the digest (`repo:tag@sha256:…`) names nothing more.
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    Some((repo, digest))
}

/// The layers of `spec`'s parent for its platform, when they can be
/// mounted; `None` (logged) otherwise.
pub async fn lookup(reg: &Registry, spec: &BuildSpec) -> Option<ParentLayers> {
    let parent = spec.parent.as_deref()?;
    let (repo, digest) = in_registry(&reg.host, parent)?;
    match read(reg, spec, repo, digest).await {
        Ok(Some(l)) => Some(l),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(target = %spec.target, %parent, error = %e, "the parent's layers are compressed here: its manifest could not be read");
            None
        }
    }
}

async fn read(
    reg: &Registry,
    spec: &BuildSpec,
    repo: &str,
    digest: &str,
) -> Result<Option<ParentLayers>, crate::registry::RegistryError> {
    let mut m = reg.get_manifest(repo, digest).await?.json()?;
    if m["manifests"].is_array() {
        let platform = Platform::for_arch(&spec.os, spec.arch);
        let Some(child) = child_for(&m, &platform) else {
            return Ok(None);
        };
        m = reg.get_manifest(repo, &child).await?.json()?;
    }
    let Some(config) = m["config"]["digest"].as_str() else {
        return Ok(None);
    };
    let config: Value = serde_json::from_slice(&reg.pull_blob(repo, config).await?)
        .map_err(|e| crate::registry::RegistryError::Invalid(format!("parent config: {e}")))?;
    Ok(layers(&m, &config).map(|layers| ParentLayers {
        repo: repo.to_string(),
        layers,
    }))
}

/// Pair a manifest's layers with its config's `diff_ids`; `None` unless
/// every layer is gzip and they pair one to one.
fn layers(manifest: &Value, config: &Value) -> Option<Vec<ParentLayer>> {
    let blobs = manifest["layers"].as_array()?;
    let diff_ids = config["rootfs"]["diff_ids"].as_array()?;
    if blobs.len() != diff_ids.len() {
        return None;
    }
    blobs
        .iter()
        .zip(diff_ids)
        .map(|(l, d)| {
            let media_type = l["mediaType"].as_str()?;
            (media_type == OCI_LAYER_GZIP || media_type == DOCKER_LAYER_GZIP).then_some(())?;
            Some(ParentLayer {
                diff_id: d.as_str()?.to_string(),
                digest: l["digest"].as_str()?.to_string(),
                size: l["size"].as_u64()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_parent_in_this_registry_is_mounted() {
        let d = "sha256:aa";
        assert_eq!(
            in_registry(
                "127.0.0.1:5000",
                &format!("127.0.0.1:5000/kiln-fixtures/busybox@{d}")
            ),
            Some(("kiln-fixtures/busybox", d))
        );
        assert_eq!(
            in_registry("127.0.0.1:5000", &format!("127.0.0.1:5000/a/b:latest@{d}")),
            Some(("a/b", d))
        );
        assert_eq!(in_registry("127.0.0.1:5000", &format!("debian@{d}")), None);
        assert_eq!(
            in_registry("127.0.0.1:5000", &format!("127.0.0.1:50001/x@{d}")),
            None
        );
    }

    #[test]
    fn layers_pair_with_diff_ids_and_must_be_gzip() {
        let m = json!({"layers": [
            {"mediaType": DOCKER_LAYER_GZIP, "digest": "sha256:b1", "size": 10},
            {"mediaType": OCI_LAYER_GZIP, "digest": "sha256:b2", "size": 20}]});
        let c = json!({"rootfs": {"diff_ids": ["sha256:d1", "sha256:d2"]}});
        let l = layers(&m, &c).unwrap();
        assert_eq!(l[1].digest, "sha256:b2");
        assert_eq!(l[1].diff_id, "sha256:d2");
        assert_eq!(l[0].size, 10);
        let zstd = json!({"layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": "sha256:b1", "size": 10}]});
        let one = json!({"rootfs": {"diff_ids": ["sha256:d1"]}});
        assert_eq!(layers(&zstd, &one), None);
        assert_eq!(layers(&m, &one), None, "unpaired");
    }
}
