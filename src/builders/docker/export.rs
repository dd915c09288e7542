//! From a built local image to a reproducible one, and its push.
//!
//! The engine's `docker save` tar (Docker 20.10's layout or the OCI image
//! layout of Docker 25 and later, see [`unpack_tar`]) is streamed and
//! unpacked under the work dir, the parent's layers to be mounted left out. The layers the image
//! shares with its pinned parent keep their bytes (the parent's digest
//! fixes them): taken as the parent's registry holds them and mounted
//! from its repository when it is in Kiln's registry
//! ([`super::parent_layers`]), else only compressed; every other layer is
//! made byte-stable by [`super::layer`]. A fresh image config keeps only what
//! determines the image (platform, the runtime config, history, the new
//! `diff_ids`) and dates everything at the SOURCE_DATE_EPOCH: no
//! `container`, `container_config`, `docker_version` or hostnames. The
//! manifest is OCI's; blobs and manifest go up through Kiln's registry
//! client, by digest. The work directory (`<pid>-…`, so a killed Kiln's is
//! swept) goes when the [`LocalImage`] is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sha2::Digest;

use super::layer::{self, LayerBlob, LayerError};
use super::{BuildSpec, DockerError, Engine};
use crate::registry::{
    OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Registry, RegistryError, sha256_digest,
};

/// A reproducible image on disk, removed when dropped.
pub struct LocalImage {
    _dir: tempfile::TempDir,
    pub layers: Vec<LayerBlob>,
    /// How many leading layers are the parent's, kept byte for byte.
    pub inherited: usize,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    /// `sha256:` of the manifest: the image's digest.
    pub digest: String,
}

/// Fields of the engine's `config` object that determine how a container
/// of the image runs. The rest (hostname, attach flags, the builder's own
/// image id) says how the engine happened to build it.
const RUNTIME_CONFIG: &[&str] = &[
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "ArgsEscaped",
    "Healthcheck",
    "OnBuild",
    "Shell",
];

/// What `docker save` held: the image config and each layer's tar, in
/// order (a repeated layer names the same file).
struct Saved {
    config: Value,
    layers: Vec<PathBuf>,
}

/// Export `local` from the engine and make it reproducible.
pub(super) async fn export(
    engine: &Engine,
    reg: &Registry,
    spec: &BuildSpec,
    local: &str,
) -> Result<LocalImage, DockerError> {
    let err = |message: String| DockerError::Export {
        target: spec.target.clone(),
        message,
    };
    if spec.os != "linux" {
        return Err(DockerError::Context(format!(
            "{}: only Linux images are made reproducible",
            spec.target
        )));
    }
    std::fs::create_dir_all(&spec.work_dir)
        .map_err(|e| err(format!("{}: {e}", spec.work_dir.display())))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-", std::process::id()))
        .tempdir_in(&spec.work_dir)
        .map_err(|e| err(format!("{}: {e}", spec.work_dir.display())))?;
    // The parent's layers as its registry holds them: mounted, so their
    // files in the save are not even written ([`unpack_tar`]'s `skip`).
    let parent = match &spec.parent {
        Some(_) => super::parent_layers::lookup(reg, spec).await,
        None => None,
    };
    let skip: BTreeSet<String> = parent
        .iter()
        .flat_map(|p| &p.layers)
        .flat_map(|l| [l.diff_id.clone(), l.digest.clone()])
        .collect();
    let mut saved = unpack(engine, local, dir.path(), skip)
        .await
        .map_err(|e| err(format!("docker save of {local}: {e}")))?;
    let inherited = inherited(engine, spec, &saved.config).await?;
    let ours: Vec<&str> = saved.config["rootfs"]["diff_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mounted: Vec<LayerBlob> = parent
        .map(|p| {
            p.layers
                .iter()
                .zip(&ours)
                .take(inherited)
                .take_while(|(l, d)| l.diff_id == **d)
                .map(|(l, _)| LayerBlob {
                    path: PathBuf::new(),
                    digest: l.digest.clone(),
                    size: l.size,
                    diff_id: l.diff_id.clone(),
                    mount_from: Some(p.repo.clone()),
                })
                .collect()
        })
        .unwrap_or_default();
    // A layer of the image's own that is a parent layer's twin (an empty
    // RUN) was not written either: save again, writing everything.
    if saved
        .layers
        .iter()
        .skip(mounted.len())
        .any(|p| p.as_os_str().is_empty())
    {
        saved = unpack(engine, local, dir.path(), BTreeSet::new())
            .await
            .map_err(|e| err(format!("docker save of {local}: {e}")))?;
    }
    let raws = std::mem::take(&mut saved.layers);
    let (sde, out) = (spec.source_date_epoch, dir.path().to_path_buf());
    let layers =
        tokio::task::spawn_blocking(move || make_layers(&raws, mounted, inherited, sde, &out))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|source| DockerError::Layer {
                target: spec.target.clone(),
                source,
            })?;
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = image_config(&saved.config, &diff_ids, sde)
        .to_string()
        .into_bytes();
    let manifest = manifest(&config, &layers);
    Ok(LocalImage {
        _dir: dir,
        digest: sha256_digest(&manifest),
        layers,
        inherited,
        config,
        manifest,
    })
}

/// Push every blob, then the manifest by digest; returns the digest.
pub(super) async fn push(
    reg: &Registry,
    repo: &str,
    img: &LocalImage,
) -> Result<String, RegistryError> {
    for l in &img.layers {
        if let Some(from) = &l.mount_from {
            mount_parent_layer(reg, repo, from, l, img._dir.path()).await?;
            continue;
        }
        let p = reg
            .push_blob_file_known(repo, &l.path, &l.digest, l.size, None)
            .await?;
        tracing::debug!(%repo, digest = %l.digest, how = ?p.how, bytes = p.bytes_sent, "layer pushed");
    }
    reg.push_blob(repo, bytes::Bytes::from(img.config.clone()))
        .await?;
    reg.put_manifest(repo, &img.digest, &img.manifest, OCI_MANIFEST)
        .await
}

/// A parent's layer into `repo`: there already, or mounted from the
/// parent's repository; copied through `scratch` only if the registry
/// will not mount it.
async fn mount_parent_layer(
    reg: &Registry,
    repo: &str,
    from: &str,
    l: &LayerBlob,
    scratch: &Path,
) -> Result<(), RegistryError> {
    if reg.blob_size(repo, &l.digest).await?.is_some()
        || reg.mount_blob(repo, &l.digest, from).await?
    {
        tracing::debug!(%repo, %from, digest = %l.digest, "parent layer mounted");
        return Ok(());
    }
    let tmp = scratch.join(l.digest.replace(':', "-"));
    reg.pull_blob_to_file(from, &l.digest, &tmp).await?;
    let pushed = reg
        .push_blob_file_known(repo, &tmp, &l.digest, l.size, None)
        .await;
    let _ = std::fs::remove_file(&tmp);
    pushed.map(|_| ())
}

/// Stream `docker save` of `local` into `dir`.
async fn unpack(
    engine: &Engine,
    local: &str,
    dir: &Path,
    skip: BTreeSet<String>,
) -> io::Result<Saved> {
    use futures_util::TryStreamExt;
    let stream = Box::pin(engine.docker.export_image(local).map_err(io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || unpack_tar(reader, &dir, &skip))
        .await
        .map_err(io::Error::other)?
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Unpack a `docker save` tar, in either layout an engine writes: Docker
/// 20.10's (`manifest.json`, `<id>.json`, `<id>/layer.tar`, a repeated
/// layer as a symlink) or the OCI image layout of Docker 25 and later,
/// classic or containerd image store (`index.json`, `oci-layout`, every
/// blob under `blobs/sha256/`, and the same `manifest.json` naming the
/// config and layers by their paths there). The JSON files at the top are
/// kept in memory, every other file goes to a file of its own, and
/// `manifest.json` says which are the config and the layers. A layer the
/// engine stored compressed (the containerd store keeps pulled layers
/// gzipped) is decompressed: Kiln compresses every layer itself.
///
/// A file whose digest is in `skip` (a parent layer that will be mounted,
/// as its uncompressed tar or its compressed blob) is not kept: not even
/// written when its name says its digest (`blobs/sha256/<hex>`), removed
/// as soon as it is written otherwise. Its layer is an empty path. So the
/// disk holds the image's own layers, never the parent's.
fn unpack_tar(r: impl Read, dir: &Path, skip: &BTreeSet<String>) -> io::Result<Saved> {
    let mut ar = tar::Archive::new(r);
    let mut jsons: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    for (i, e) in ar.entries()?.enumerate() {
        let mut e = e?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let kind = e.header().entry_type();
        if !name.contains('/') && name.ends_with(".json") {
            let mut v = Vec::new();
            e.read_to_end(&mut v)?;
            jsons.insert(name, v);
        } else if kind.is_symlink() {
            let target = e.link_name_bytes().unwrap_or_default();
            links.insert(
                name.clone(),
                resolve(&name, &String::from_utf8_lossy(&target)),
            );
        } else if kind.is_file() {
            let named = name
                .strip_prefix("blobs/sha256/")
                .map(|hex| format!("sha256:{hex}"));
            if named.as_ref().is_some_and(|d| skip.contains(d)) {
                io::copy(&mut e, &mut io::sink())?;
                files.insert(name, PathBuf::new());
                continue;
            }
            let p = dir.join(format!("raw-{i}"));
            let mut w = layer::Hashing::new(BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(&p)?,
            ));
            io::copy(&mut e, &mut w)?;
            w.inner.flush()?;
            let digest = format!("sha256:{}", hex::encode(w.hash.finalize()));
            if skip.contains(&digest) {
                std::fs::remove_file(&p)?;
                files.insert(name, PathBuf::new());
            } else {
                files.insert(name, p);
            }
        }
    }
    let json = |name: &str| -> io::Result<Value> {
        let bytes = match jsons.get(name) {
            Some(b) => b.clone(),
            None => std::fs::read(
                files
                    .get(links.get(name).map(String::as_str).unwrap_or(name))
                    .ok_or_else(|| invalid(format!("no {name} in the saved image")))?,
            )?,
        };
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{name}: {e}")))
    };
    let manifest = json("manifest.json")?;
    let image = &manifest[0];
    let config = json(image["Config"].as_str().unwrap_or("(no Config)"))?;
    let mut layers: Vec<PathBuf> = Vec::new();
    let mut plain: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for l in image["Layers"].as_array().into_iter().flatten() {
        let name = l.as_str().unwrap_or_default();
        let name = links.get(name).map(String::as_str).unwrap_or(name);
        let p = files.get(name).ok_or_else(|| {
            invalid(format!(
                "manifest.json names {name}, which is not in the tar"
            ))
        })?;
        let tar = match plain.get(p) {
            Some(t) => t.clone(),
            // Not kept (see `skip`).
            None if p.as_os_str().is_empty() => PathBuf::new(),
            None => {
                let t = uncompressed(p, name)?;
                plain.insert(p.clone(), t.clone());
                t
            }
        };
        layers.push(tar);
    }
    // Files that are not layers (the config blob, manifests, `<id>/json`).
    for p in files.values() {
        if !layers.contains(p) && !p.as_os_str().is_empty() {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(Saved { config, layers })
}

/// The layer file `p` as a plain tar: itself, or its gzip stream
/// decompressed beside it (and the compressed file removed).
fn uncompressed(p: &Path, name: &str) -> io::Result<PathBuf> {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(p)?.read(&mut magic)?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => {
            let out = p.with_extension("tar");
            let mut r = flate2::read::GzDecoder::new(io::BufReader::new(std::fs::File::open(p)?));
            let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
            io::copy(&mut r, &mut w).map_err(|e| {
                invalid(format!(
                    "{name}: a gzip layer that does not decompress: {e}"
                ))
            })?;
            w.flush()?;
            std::fs::remove_file(p)?;
            Ok(out)
        }
        [0x28, 0xb5, 0x2f, 0xfd] => Err(invalid(format!(
            "{name}: a zstd-compressed layer; Kiln reads plain and gzip layers (build on the engine's classic image store, or with gzip layers)"
        ))),
        _ => Ok(p.to_path_buf()),
    }
}

/// The path a symlink at `name` to `target` names (`a/layer.tar` →
/// `../b/layer.tar` is `b/layer.tar`).
fn resolve(name: &str, target: &str) -> String {
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    for p in target.split('/') {
        match p {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// How many leading layers of the image are its parent's, as the engine
/// holds the parent.
async fn inherited(
    engine: &Engine,
    spec: &BuildSpec,
    config: &Value,
) -> Result<usize, DockerError> {
    let Some(parent) = &spec.parent else {
        return Ok(0);
    };
    let info = match engine.docker.inspect_image(parent).await {
        Ok(i) => i,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Err(DockerError::Context(format!(
                "{}: the parent {parent} is not on the engine after the build (recipes build FROM {{{{parent}}}}@{{{{parent_digest}}}})",
                spec.target
            )));
        }
        Err(source) => {
            return Err(DockerError::Engine {
                target: spec.target.clone(),
                source,
            });
        }
    };
    let theirs = info.root_fs.and_then(|r| r.layers).unwrap_or_default();
    let ours = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(ours
        .iter()
        .zip(&theirs)
        .take_while(|(a, b)| a.as_str() == Some(b.as_str()))
        .count())
}

/// Take the parent's layers `mounted` as its registry holds them (the
/// leading ones), compress the rest of the parent's as they are and
/// normalize the others; each raw tar is removed once no later layer
/// names it.
fn make_layers(
    raws: &[PathBuf],
    mounted: Vec<LayerBlob>,
    inherited: usize,
    sde: u64,
    dir: &Path,
) -> Result<Vec<LayerBlob>, LayerError> {
    let mut out = Vec::new();
    let mut mounted = mounted.into_iter();
    for (i, raw) in raws.iter().enumerate() {
        let dest = dir.join(format!("layer-{i}.tar.gz"));
        out.push(match mounted.next() {
            Some(m) => m,
            None if i < inherited => layer::compress(raw, &dest)?,
            None => layer::normalize(raw, &dest, sde)?,
        });
        if !raws[i + 1..].contains(raw) {
            let _ = std::fs::remove_file(raw);
        }
    }
    Ok(out)
}

/// The image config Kiln publishes: the engine's platform, runtime config
/// and history, every time the SOURCE_DATE_EPOCH, and `diff_ids`.
fn image_config(saved: &Value, diff_ids: &[String], sde: u64) -> Value {
    let created = crate::plan::epoch_rfc3339(sde);
    let present = |v: &&Value| !v.is_null() && v.as_str() != Some("");
    let mut config = Map::new();
    for k in RUNTIME_CONFIG {
        if let Some(v) = saved["config"].get(*k).filter(present) {
            config.insert((*k).to_string(), v.clone());
        }
    }
    let history: Vec<Value> = saved["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            let mut e = Map::new();
            e.insert("created".into(), json!(created));
            for k in ["created_by", "author", "comment", "empty_layer"] {
                if let Some(v) = h.get(k).filter(present) {
                    e.insert(k.into(), v.clone());
                }
            }
            Value::Object(e)
        })
        .collect();
    let mut out = json!({
        "architecture": saved["architecture"],
        "os": saved["os"],
        "created": created,
        "config": config,
        "history": history,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    for k in ["variant", "author"] {
        if let Some(v) = saved.get(k).filter(present) {
            out[k] = v.clone();
        }
    }
    out
}

/// The OCI manifest of a config and its layers.
fn manifest(config: &[u8], layers: &[LayerBlob]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|l| json!({"mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": l.size}))
        .collect();
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": config.len()},
        "layers": layers,
    });
    // A `Value` writes its keys in order: the same image, the same bytes.
    m.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> Value {
        json!({
            "architecture": "arm64", "variant": "v8", "os": "linux",
            "created": "2026-01-01T10:11:12.123456Z",
            "container": "0123abcd", "docker_version": "20.10.24",
            "container_config": {"Hostname": "0123abcd", "Cmd": ["/bin/sh", "-c", "#(nop) LABEL x"]},
            "config": {"Hostname": "", "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Entrypoint": null,
                       "User": "", "Labels": {"org.ocaml.kiln.target": "t"}, "Image": "sha256:beef"},
            "history": [
                {"created": "2020-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) COPY file:ab in /bin"},
                {"created": "2026-01-01T10:11:12Z", "created_by": "/bin/sh -c #(nop) LABEL x", "empty_layer": true},
            ],
            "rootfs": {"type": "layers", "diff_ids": ["sha256:old"]},
        })
    }

    #[test]
    fn the_config_keeps_what_runs_and_dates_everything_at_the_epoch() {
        let c = image_config(&saved(), &["sha256:new".into()], 1_633_305_600);
        assert_eq!(c["created"], "2021-10-04T00:00:00Z");
        assert_eq!(
            (&c["architecture"], &c["variant"], &c["os"]),
            (&json!("arm64"), &json!("v8"), &json!("linux"))
        );
        for gone in ["container", "container_config", "docker_version"] {
            assert!(c.get(gone).is_none(), "{gone}");
        }
        let keys: Vec<&String> = c["config"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["Cmd", "Env", "Labels"]);
        let h = c["history"].as_array().unwrap();
        assert!(h.iter().all(|e| e["created"] == "2021-10-04T00:00:00Z"));
        assert_eq!(h[1]["empty_layer"], true);
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:new"]));
    }

    #[test]
    fn the_manifest_is_oci_and_stable() {
        let l = LayerBlob {
            path: "x".into(),
            digest: "sha256:l".into(),
            size: 3,
            diff_id: "sha256:d".into(),
            mount_from: None,
        };
        let a = manifest(b"{}", std::slice::from_ref(&l));
        assert_eq!(a, manifest(b"{}", &[l]));
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["mediaType"], OCI_MANIFEST);
        assert_eq!(v["config"]["digest"], sha256_digest(b"{}"));
        assert_eq!(v["layers"][0]["mediaType"], OCI_LAYER_GZIP);
    }

    #[test]
    fn a_repeated_layer_is_a_symlink_to_the_first() {
        assert_eq!(resolve("b/layer.tar", "../a/layer.tar"), "a/layer.tar");
        assert_eq!(resolve("b/layer.tar", "./c/layer.tar"), "b/c/layer.tar");
    }

    /// A tar of `entries`: `(path, Ok(bytes))` a file, `(path,
    /// Err(target))` a symlink.
    fn tar_of(entries: &[(&str, Result<Vec<u8>, &str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, what) in entries {
            let mut h = tar::Header::new_gnu();
            match what {
                Ok(bytes) => {
                    h.set_size(bytes.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, bytes.as_slice()).unwrap();
                }
                Err(target) => {
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, path, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn layer_tar(file: &str, body: &[u8]) -> Vec<u8> {
        tar_of(&[(file, Ok(body.to_vec()))])
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// The layers' bytes and the config, from a save tar.
    fn read(save: &[u8]) -> (Value, Vec<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let s = unpack_tar(save, dir.path(), &BTreeSet::new()).unwrap();
        let layers = s.layers.iter().map(|p| std::fs::read(p).unwrap()).collect();
        (s.config, layers)
    }

    #[test]
    fn both_save_layouts_give_the_same_config_and_layers() {
        let config = serde_json::to_vec(&saved()).unwrap();
        let (a, b) = (layer_tar("a", b"parent"), layer_tar("b", b"ours"));
        // Docker 20.10: `<id>/layer.tar`, a repeated layer as a symlink.
        let legacy = tar_of(&[
            ("cfg0.json", Ok(config.clone())),
            ("l1/VERSION", Ok(b"1.0".to_vec())),
            ("l1/layer.tar", Ok(a.clone())),
            ("l2/layer.tar", Ok(b.clone())),
            ("l3/layer.tar", Err("../l1/layer.tar")),
            (
                "manifest.json",
                Ok(br#"[{"Config":"cfg0.json","Layers":["l1/layer.tar","l2/layer.tar","l3/layer.tar"]}]"#.to_vec()),
            ),
        ]);
        // Docker 25+: the OCI layout, blobs by digest, one of them gzipped
        // as the containerd store keeps a pulled layer; manifest.json last.
        let oci = tar_of(&[
            ("blobs/sha256/c0", Ok(config.clone())),
            ("blobs/sha256/aa", Ok(gzip(&a))),
            ("blobs/sha256/bb", Ok(b.clone())),
            ("blobs/sha256/11", Ok(b"{\"schemaVersion\":2}".to_vec())),
            ("index.json", Ok(b"{\"schemaVersion\":2,\"manifests\":[]}".to_vec())),
            ("oci-layout", Ok(b"{\"imageLayoutVersion\":\"1.0.0\"}".to_vec())),
            (
                "manifest.json",
                Ok(br#"[{"Config":"blobs/sha256/c0","Layers":["blobs/sha256/aa","blobs/sha256/bb","blobs/sha256/aa"]}]"#.to_vec()),
            ),
        ]);
        let (c1, l1) = read(&legacy);
        let (c2, l2) = read(&oci);
        assert_eq!(c1, saved());
        assert_eq!(c2, saved());
        assert_eq!(l1, vec![a.clone(), b.clone(), a.clone()]);
        assert_eq!(l2, l1);
    }

    #[test]
    fn a_parent_layer_to_mount_is_never_kept_on_disk() {
        let config = serde_json::to_vec(&saved()).unwrap();
        let (a, b) = (layer_tar("a", b"parent"), layer_tar("b", b"ours"));
        let skip: BTreeSet<String> = [sha256_digest(&a)].into();
        // By its content (20.10: named by a layer id), and by its name
        // (the OCI layout: named by digest, never written).
        let legacy = tar_of(&[
            ("cfg0.json", Ok(config.clone())),
            ("l1/layer.tar", Ok(a.clone())),
            ("l2/layer.tar", Ok(b.clone())),
            (
                "manifest.json",
                Ok(
                    br#"[{"Config":"cfg0.json","Layers":["l1/layer.tar","l2/layer.tar"]}]"#
                        .to_vec(),
                ),
            ),
        ]);
        let hex = sha256_digest(&a)[7..].to_string();
        let oci = tar_of(&[
            ("blobs/sha256/c0", Ok(config)),
            (&format!("blobs/sha256/{hex}"), Ok(a.clone())),
            ("blobs/sha256/bb", Ok(b.clone())),
            (
                "manifest.json",
                Ok(format!(r#"[{{"Config":"blobs/sha256/c0","Layers":["blobs/sha256/{hex}","blobs/sha256/bb"]}}]"#).into_bytes()),
            ),
        ]);
        for save in [legacy, oci] {
            let dir = tempfile::tempdir().unwrap();
            let s = unpack_tar(save.as_slice(), dir.path(), &skip).unwrap();
            assert_eq!(s.layers[0], PathBuf::new(), "the parent's layer: not kept");
            assert_eq!(std::fs::read(&s.layers[1]).unwrap(), b);
            let on_disk: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(on_disk.len(), 1, "only the image's own layer on disk");
        }
    }

    #[test]
    fn a_save_naming_what_it_lacks_or_a_zstd_layer_is_refused_by_name() {
        let missing = tar_of(&[(
            "manifest.json",
            Ok(br#"[{"Config":"blobs/sha256/c0","Layers":[]}]"#.to_vec()),
        )]);
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_tar(missing.as_slice(), dir.path(), &BTreeSet::new())
            .err()
            .unwrap();
        assert!(e.to_string().contains("no blobs/sha256/c0"), "{e}");
        let zstd = tar_of(&[
            ("blobs/sha256/c0", Ok(serde_json::to_vec(&saved()).unwrap())),
            ("blobs/sha256/zz", Ok(vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0])),
            (
                "manifest.json",
                Ok(br#"[{"Config":"blobs/sha256/c0","Layers":["blobs/sha256/zz"]}]"#.to_vec()),
            ),
        ]);
        let e = unpack_tar(zstd.as_slice(), dir.path(), &BTreeSet::new())
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("blobs/sha256/zz: a zstd-compressed layer"),
            "{e}"
        );
    }
}
