//! Non-container artifacts as OCI 1.1 artifacts: a qcow2 disk or a
//! `zfs send` stream is one layer with its own media type; the manifest
//! carries an `artifactType`, annotations (title, size, uncompressed
//! sha256) and a config blob recording the platform and, for datasets, the
//! layout. Pulling verifies the manifest, config and layer digests.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use super::{OCI_MANIFEST, Registry, RegistryError};

pub const QCOW2_ARTIFACT: &str = "application/vnd.ocaml.kiln.qcow2.v1";
pub const QCOW2_LAYER: &str = "application/vnd.ocaml.kiln.qcow2.v1+zstd";
pub const ZFS_ARTIFACT: &str = "application/vnd.ocaml.kiln.zfs-send.v1";
pub const ZFS_LAYER: &str = "application/vnd.ocaml.kiln.zfs-send.v1+zstd";
/// A tar of `zfs send -i` streams, one per child dataset, zstd-compressed.
pub const ZFS_INCREMENTAL_ARTIFACT: &str = "application/vnd.ocaml.kiln.zfs-send-incremental.v1";
pub const ZFS_INCREMENTAL_LAYER: &str =
    "application/vnd.ocaml.kiln.zfs-send-incremental.v1.tar+zstd";
pub const CONFIG: &str = "application/vnd.ocaml.kiln.config.v1+json";

/// What to push.
#[derive(Debug, Clone)]
pub struct ArtifactPush<'a> {
    pub repo: &'a str,
    pub file: &'a Path,
    pub artifact_type: &'a str,
    pub layer_media_type: &'a str,
    /// The file's name when pulled (`org.opencontainers.image.title`).
    pub title: &'a str,
    /// `sha256:…` of the file, when the builder hashed it as it wrote it:
    /// saves a pass over the file (the upload still checks it).
    pub digest: Option<&'a str>,
    /// sha256 of the uncompressed content, when the file is compressed.
    pub uncompressed_sha256: Option<&'a str>,
    /// Config JSON: must carry `os` and `architecture` so the artifact can
    /// sit in a multi-arch index; may carry a dataset layout.
    pub config: Value,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub layer_digest: String,
    pub size: u64,
}

/// A further file of an artifact (the QEMU builder's download-cache disk
/// beside its system disk), after the main layer.
#[derive(Debug, Clone)]
pub struct ExtraLayer<'a> {
    pub file: &'a Path,
    pub media_type: &'a str,
    /// Its name when pulled, unique within the artifact.
    pub title: &'a str,
    pub digest: &'a str,
}

pub async fn push(reg: &Registry, a: &ArtifactPush<'_>) -> Result<Pushed, RegistryError> {
    push_with(reg, a, &[]).await
}

/// `push`, with further layers: each uploaded first, the manifest last, so
/// a failure leaves no manifest naming a missing blob.
pub async fn push_with(
    reg: &Registry,
    a: &ArtifactPush<'_>,
    extra: &[ExtraLayer<'_>],
) -> Result<Pushed, RegistryError> {
    let mut layers = Vec::new();
    for x in extra {
        let size = std::fs::metadata(x.file)
            .map_err(|source| RegistryError::Io {
                path: x.file.display().to_string(),
                source,
            })?
            .len();
        let r = reg
            .push_blob_file_known(a.repo, x.file, x.digest, size, None)
            .await?;
        layers.push(
            json!({"mediaType": x.media_type, "digest": r.digest, "size": r.size,
            "annotations": {"org.opencontainers.image.title": x.title}}),
        );
    }
    let (layer_digest, size) = upload_main(reg, a).await?;
    put_layers(reg, a, layer_digest, size, layers).await
}

async fn upload_main(reg: &Registry, a: &ArtifactPush<'_>) -> Result<(String, u64), RegistryError> {
    if a.config["os"].as_str().is_none() || a.config["architecture"].as_str().is_none() {
        return Err(RegistryError::Invalid(format!(
            "artifact {}: config must name os and architecture",
            a.title
        )));
    }
    let (layer_digest, size) = match a.digest {
        Some(d) => {
            let size = std::fs::metadata(a.file)
                .map_err(|source| RegistryError::Io {
                    path: a.file.display().to_string(),
                    source,
                })?
                .len();
            let r = reg
                .push_blob_file_known(a.repo, a.file, d, size, None)
                .await?;
            (r.digest, r.size)
        }
        None => reg.push_blob_file(a.repo, a.file, None).await?,
    };
    Ok((layer_digest, size))
}

/// The config and manifest of an artifact whose layer blob is already in
/// `a.repo` (uploaded from a stream; `a.file` is not read).
pub async fn put_artifact(
    reg: &Registry,
    a: &ArtifactPush<'_>,
    layer_digest: String,
    size: u64,
) -> Result<Pushed, RegistryError> {
    put_layers(reg, a, layer_digest, size, Vec::new()).await
}

/// A further blob of an artifact already in its repository (streamed).
#[derive(Debug, Clone)]
pub struct ExtraBlob<'a> {
    pub media_type: &'a str,
    pub title: &'a str,
    pub digest: &'a str,
    pub size: u64,
}

/// [`put_artifact`] with further layers, every blob already in `a.repo`.
pub async fn put_artifact_with(
    reg: &Registry,
    a: &ArtifactPush<'_>,
    layer_digest: String,
    size: u64,
    extra: &[ExtraBlob<'_>],
) -> Result<Pushed, RegistryError> {
    let layers = extra
        .iter()
        .map(|x| {
            json!({"mediaType": x.media_type, "digest": x.digest, "size": x.size,
            "annotations": {"org.opencontainers.image.title": x.title}})
        })
        .collect();
    put_layers(reg, a, layer_digest, size, layers).await
}

async fn put_layers(
    reg: &Registry,
    a: &ArtifactPush<'_>,
    layer_digest: String,
    size: u64,
    extra: Vec<Value>,
) -> Result<Pushed, RegistryError> {
    if a.config["os"].as_str().is_none() || a.config["architecture"].as_str().is_none() {
        return Err(RegistryError::Invalid(format!(
            "artifact {}: config must name os and architecture",
            a.title
        )));
    }
    let cfg_bytes =
        serde_json::to_vec(&a.config).map_err(|e| RegistryError::Invalid(e.to_string()))?;
    let (cfg_digest, cfg_size) = reg.push_blob(a.repo, cfg_bytes.into()).await?;
    let mut layer_ann = BTreeMap::new();
    layer_ann.insert(
        "org.opencontainers.image.title".to_string(),
        a.title.to_string(),
    );
    let mut ann = a.annotations.clone();
    ann.insert("org.opencontainers.image.title".into(), a.title.to_string());
    ann.insert("org.ocaml.kiln.size".into(), size.to_string());
    if let Some(u) = a.uncompressed_sha256 {
        ann.insert("org.ocaml.kiln.uncompressed-sha256".into(), u.to_string());
    }
    let mut layers = vec![
        json!({"mediaType": a.layer_media_type, "digest": layer_digest, "size": size, "annotations": layer_ann}),
    ];
    layers.extend(extra);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": a.artifact_type,
        "config": {"mediaType": CONFIG, "digest": cfg_digest, "size": cfg_size},
        "layers": layers,
        "annotations": ann,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| RegistryError::Invalid(e.to_string()))?;
    let digest = super::sha256_digest(&bytes);
    reg.put_manifest(a.repo, &digest, &bytes, OCI_MANIFEST)
        .await?;
    Ok(Pushed {
        digest,
        layer_digest,
        size,
    })
}

/// A pulled artifact: where its file went, and its manifest and config.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub artifact_type: String,
    pub manifest: Value,
    pub config: Value,
    pub size: u64,
}

/// An artifact's manifest and config, verified, without its layer.
pub async fn inspect(
    reg: &Registry,
    repo: &str,
    digest: &str,
) -> Result<(Value, Value), RegistryError> {
    let v = reg.get_manifest(repo, digest).await?.json()?;
    let cfg_digest = v["config"]["digest"].as_str().unwrap_or("");
    let config: Value = serde_json::from_slice(&reg.pull_blob(repo, cfg_digest).await?)
        .map_err(|e| RegistryError::Invalid(format!("config of {repo}@{digest}: {e}")))?;
    Ok((v, config))
}

/// Pull `repo@digest` (an artifact manifest) into `dest`, verifying every digest.
pub async fn pull(
    reg: &Registry,
    repo: &str,
    digest: &str,
    dest: &Path,
) -> Result<Pulled, RegistryError> {
    let m = reg.get_manifest(repo, digest).await?;
    let v = m.json()?;
    let artifact_type = v["artifactType"]
        .as_str()
        .ok_or_else(|| {
            RegistryError::Invalid(format!(
                "{repo}@{digest} is not an artifact (no artifactType)"
            ))
        })?
        .to_string();
    let layers = v["layers"].as_array().cloned().unwrap_or_default();
    // The first layer is the artifact's file; further ones (a disk's
    // download cache) are pulled by title with `pull_layer`.
    let Some(layer) = layers.first() else {
        return Err(RegistryError::Invalid(format!(
            "{repo}@{digest}: an artifact without layers"
        )));
    };
    let cfg_digest = v["config"]["digest"].as_str().unwrap_or("");
    let config: Value = serde_json::from_slice(&reg.pull_blob(repo, cfg_digest).await?)
        .map_err(|e| RegistryError::Invalid(format!("config of {repo}@{digest}: {e}")))?;
    let size = pull_layer_file(reg, repo, layer, dest, &format!("{repo}@{digest}")).await?;
    Ok(Pulled {
        artifact_type,
        manifest: v,
        config,
        size,
    })
}

/// The further layer titled `title` of an artifact pulled with `pull`, into
/// `dest` (digest-checked as it is written); `None` when there is none.
pub async fn pull_layer(
    reg: &Registry,
    repo: &str,
    manifest: &Value,
    title: &str,
    dest: &Path,
) -> Result<Option<u64>, RegistryError> {
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let Some(layer) = layers
        .iter()
        .skip(1)
        .find(|l| l["annotations"]["org.opencontainers.image.title"].as_str() == Some(title))
    else {
        return Ok(None);
    };
    let size = pull_layer_file(reg, repo, layer, dest, &format!("{repo}: {title}")).await?;
    Ok(Some(size))
}

/// One layer into `dest` (its digest checked as it is written), whose size
/// must be the manifest's; `what` names it in the error.
async fn pull_layer_file(
    reg: &Registry,
    repo: &str,
    layer: &Value,
    dest: &Path,
    what: &str,
) -> Result<u64, RegistryError> {
    let ld = layer["digest"].as_str().unwrap_or("");
    let size = reg.pull_blob_to_file(repo, ld, dest).await?;
    if Some(size) != layer["size"].as_u64() {
        let _ = std::fs::remove_file(dest);
        return Err(RegistryError::Invalid(format!(
            "{what}: layer size {size} differs from the manifest"
        )));
    }
    Ok(size)
}
