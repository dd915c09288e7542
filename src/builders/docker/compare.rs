//! A rebuild against the published image: identical, or where they first
//! differ. Layers are compared in order by digest; in the first layer that
//! differs, both tars are read side by side (both are in path order when
//! Kiln wrote them) up to the first file whose header or content differs.
//! When every layer is the same, the image config's first differing field
//! is named.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::LocalImage;
use super::layer::{LayerBlob, Meta};
use crate::model::FailureKind;
use crate::registry::{Registry, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl CompareError {
    /// The registry's failures say their own kind; a local disk or a
    /// blob that cannot be read is infrastructure.
    pub fn kind(&self) -> FailureKind {
        match self {
            CompareError::Registry(e) => e.kind(),
            CompareError::Io { .. } => FailureKind::Infra,
        }
    }
}

/// Where a rebuild first differs from the published image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    /// The first layer (counted from 0) whose bytes differ; `None` when
    /// every layer is the same and the config or the manifest differs.
    pub layer: Option<usize>,
    /// That layer's digest in the rebuild.
    pub rebuilt_layer: Option<String>,
    /// That layer's digest in the published image.
    pub published_layer: Option<String>,
    /// The first file of that layer whose header or content differs.
    pub file: Option<String>,
    /// What differs: `mtime 1633305600 != 1700000000`, `content differs
    /// from byte 12`, `image config: created: …`.
    pub what: String,
}

/// Compare `img` with the published image `published` of `repo`; `None`
/// when they are the same. Published blobs are fetched under `scratch`.
pub async fn compare(
    reg: &Registry,
    repo: &str,
    published: &str,
    img: &LocalImage,
    scratch: &Path,
) -> Result<Option<Difference>, CompareError> {
    if img.digest == published {
        return Ok(None);
    }
    let m = reg.get_manifest(repo, published).await?.json()?;
    let theirs: Vec<(String, String)> = m["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let field = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (field("digest"), field("mediaType"))
        })
        .collect();
    for i in 0..img.layers.len().max(theirs.len()) {
        let (ours, pubd) = (img.layers.get(i), theirs.get(i));
        if let (Some(a), Some((d, _))) = (ours, pubd)
            && a.digest == *d
        {
            continue;
        }
        return layer_difference(reg, repo, i, ours, pubd, scratch)
            .await
            .map(Some);
    }
    let cfg = m["config"]["digest"].as_str().unwrap_or_default();
    let parse = |what: &str, bytes: &[u8]| {
        serde_json::from_slice::<Value>(bytes)
            .map_err(|e| RegistryError::Invalid(format!("{what} image config: {e}")))
    };
    let theirs_cfg = parse("published", &reg.pull_blob(repo, cfg).await?)?;
    let ours_cfg = parse("rebuilt", &img.config)?;
    let what = match json_difference("", &ours_cfg, &theirs_cfg) {
        Some(d) => format!("image config: {d}"),
        None => "the manifests differ; layers and config are the same".into(),
    };
    Ok(Some(Difference {
        layer: None,
        rebuilt_layer: None,
        published_layer: None,
        file: None,
        what,
    }))
}

/// Layer `i` differs: fetch the published one and find the first file.
async fn layer_difference(
    reg: &Registry,
    repo: &str,
    i: usize,
    ours: Option<&LayerBlob>,
    theirs: Option<&(String, String)>,
    scratch: &Path,
) -> Result<Difference, CompareError> {
    let mut d = Difference {
        layer: Some(i),
        rebuilt_layer: ours.map(|l| l.digest.clone()),
        published_layer: theirs.map(|(digest, _)| digest.clone()),
        file: None,
        what: String::new(),
    };
    let (Some(a), Some((digest, media_type))) = (ours, theirs) else {
        d.what = match ours {
            Some(_) => "only in the rebuilt image",
            None => "only in the published image",
        }
        .into();
        return Ok(d);
    };
    if a.mount_from.is_some() || a.path.as_os_str().is_empty() {
        // The rebuilt image keeps the parent's blob as its registry holds
        // it; an image published before that had it compressed by Kiln.
        d.what = format!(
            "the parent's layer {} (mounted as the parent's registry holds it) against {digest}; the same files, another compression",
            a.digest
        );
        return Ok(d);
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CompareError::Io { path, source }
    };
    std::fs::create_dir_all(scratch).map_err(io_err(scratch))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-", std::process::id()))
        .tempdir_in(scratch)
        .map_err(io_err(scratch))?;
    let theirs_path = dir.path().join("published-layer");
    reg.pull_blob_to_file(repo, digest, &theirs_path).await?;
    let (ours_path, gzip) = (a.path.clone(), media_type.ends_with("gzip"));
    let p = theirs_path.clone();
    let found = tokio::task::spawn_blocking(move || first_file_difference(&ours_path, &p, gzip))
        .await
        .map_err(|e| io_err(&theirs_path)(io::Error::other(e)))?
        .map_err(io_err(&theirs_path))?;
    match found {
        Some((file, what)) => {
            d.file = Some(file);
            d.what = what;
        }
        None => {
            d.what = "the same files and contents, encoded differently (tar headers or compression)"
                .into()
        }
    }
    Ok(d)
}

fn open_layer(p: &Path, gzip: bool) -> io::Result<Box<dyn Read + Send>> {
    let f = BufReader::with_capacity(1 << 20, File::open(p)?);
    Ok(if gzip {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    })
}

type Entry<'a> = tar::Entry<'a, Box<dyn Read + Send>>;

fn next_entry<'a>(
    it: &mut tar::Entries<'a, Box<dyn Read + Send>>,
) -> io::Result<Option<(Meta, Entry<'a>)>> {
    for e in it.by_ref() {
        let mut e = e?;
        if let Some(m) = Meta::read(&mut e)? {
            return Ok(Some((m, e)));
        }
    }
    Ok(None)
}

/// The first file whose header or content differs between a rebuilt layer
/// (gzipped) and a published one, and what differs.
pub fn first_file_difference(
    rebuilt: &Path,
    published: &Path,
    published_gzip: bool,
) -> io::Result<Option<(String, String)>> {
    let mut ours = tar::Archive::new(open_layer(rebuilt, true)?);
    let mut theirs = tar::Archive::new(open_layer(published, published_gzip)?);
    let (mut a, mut b) = (ours.entries()?, theirs.entries()?);
    let only = |m: &Meta, side: &str| Some((m.name(), format!("only in the {side} layer")));
    loop {
        match (next_entry(&mut a)?, next_entry(&mut b)?) {
            (None, None) => return Ok(None),
            (Some((m, _)), None) => return Ok(only(&m, "rebuilt")),
            (None, Some((m, _))) => return Ok(only(&m, "published")),
            (Some((mx, mut x)), Some((my, mut y))) => {
                if mx.path < my.path {
                    return Ok(only(&mx, "rebuilt"));
                }
                if my.path < mx.path {
                    return Ok(only(&my, "published"));
                }
                if let Some(what) = mx.differs(&my) {
                    return Ok(Some((mx.name(), what)));
                }
                if let Some(at) = first_byte_difference(&mut x, &mut y)? {
                    return Ok(Some((mx.name(), format!("content differs from byte {at}"))));
                }
            }
        }
    }
}

/// The offset of the first byte where two streams differ.
fn first_byte_difference(a: &mut impl Read, b: &mut impl Read) -> io::Result<Option<u64>> {
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut at = 0u64;
    loop {
        let (na, nb) = (read_full(a, &mut ba)?, read_full(b, &mut bb)?);
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(at + i as u64));
        }
        if na != nb {
            return Ok(Some(at + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        at += na as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The first field (in key order, depth first) where two JSON values
/// differ, with both values: `created: "2021-…" != "2026-…"`.
fn json_difference(at: &str, a: &Value, b: &Value) -> Option<String> {
    if a == b {
        return None;
    }
    let child = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (va, vb) = (x.get(k), y.get(k));
                match (va, vb) {
                    (Some(va), Some(vb)) => json_difference(&child(k), va, vb),
                    (Some(_), None) => Some(format!("{} only in the rebuilt config", child(k))),
                    _ => Some(format!("{} only in the published config", child(k))),
                }
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| json_difference(&format!("{at}[{i}]"), va, vb)),
        _ => {
            let short = |v: &Value| v.to_string().chars().take(120).collect::<String>();
            Some(format!("{at}: {} != {}", short(a), short(b)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::layer::{Kind, write_entry};
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Write;

    fn file(path: &str, mtime: u64) -> Meta {
        Meta {
            path: path.as_bytes().to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime,
            link: vec![],
            dev: (0, 0),
            xattrs: BTreeMap::new(),
        }
    }

    /// A gzipped layer of (meta, content) entries.
    fn layer(dir: &Path, name: &str, entries: &[(Meta, &str)]) -> PathBuf {
        let p = dir.join(name);
        let mut gz = flate2::write::GzEncoder::new(File::create(&p).unwrap(), Default::default());
        for (m, data) in entries {
            let m = Meta {
                size: data.len() as u64,
                ..m.clone()
            };
            write_entry(&mut gz, &m, data.as_bytes()).unwrap();
        }
        gz.write_all(&[0; 1024]).unwrap();
        gz.finish().unwrap();
        p
    }

    #[test]
    fn the_first_differing_file_is_named_with_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let base = [(file("a", 5), "same"), (file("stamp", 5), "1700000000\n")];
        let ours = layer(dir.path(), "ours", &base);
        let same = layer(dir.path(), "same", &base);
        assert_eq!(first_file_difference(&ours, &same, true).unwrap(), None);
        let content = layer(
            dir.path(),
            "content",
            &[(file("a", 5), "same"), (file("stamp", 5), "1700000001\n")],
        );
        assert_eq!(
            first_file_difference(&ours, &content, true).unwrap(),
            Some(("stamp".into(), "content differs from byte 9".into()))
        );
        let mtime = layer(
            dir.path(),
            "mtime",
            &[(file("a", 6), "same"), (file("stamp", 5), "x")],
        );
        assert_eq!(
            first_file_difference(&ours, &mtime, true).unwrap(),
            Some(("a".into(), "mtime 5 != 6".into()))
        );
        let extra = layer(
            dir.path(),
            "extra",
            &[
                (file("a", 5), "same"),
                (file("b", 5), ""),
                (file("stamp", 5), "x"),
            ],
        );
        assert_eq!(
            first_file_difference(&ours, &extra, true).unwrap(),
            Some(("b".into(), "only in the published layer".into()))
        );
    }

    #[test]
    fn the_first_differing_config_field_is_named() {
        let a =
            serde_json::json!({"created": "1", "config": {"Env": ["A=1", "B=2"]}, "os": "linux"});
        let b =
            serde_json::json!({"created": "1", "config": {"Env": ["A=1", "B=3"]}, "os": "linux"});
        assert_eq!(
            json_difference("", &a, &b).unwrap(),
            "config.Env[1]: \"B=2\" != \"B=3\""
        );
        let c = serde_json::json!({"created": "1", "config": {"Env": ["A=1", "B=2"]}});
        assert_eq!(
            json_difference("", &a, &c).unwrap(),
            "os only in the rebuilt config"
        );
        assert_eq!(json_difference("", &a, &a), None);
    }
}
