//! The mirror in the registry, and the local cache builds read it through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use super::{ARTIFACT, BUNDLE_NAME, Checksum, LAYER, REPOSITORY, SourcesError, Wanted};
use crate::catalogue::sources::GitSource;
use crate::registry::{OCI_MANIFEST, Registry, artifact::CONFIG};

/// A source as the mirror holds it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Present {
    pub name: String,
    pub tag: String,
    /// The artifact manifest's digest.
    pub manifest: String,
    /// The file's blob digest (`sha256:…`).
    pub blob: String,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SyncOutcome {
    /// Already in the mirror: not fetched again.
    Present,
    /// Fetched from its origin, checked and pushed.
    Fetched,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub repository: String,
    pub sources: Vec<(Present, SyncOutcome)>,
}

/// The mirror: `<namespace>/kiln-sources` in a registry, read through a
/// cache directory.
pub struct Mirror<'a> {
    reg: &'a Registry,
    repo: String,
    cache: PathBuf,
}

/// The content-addressed tag of a source (tags are at most 128 characters).
pub fn tag_of(c: &Checksum) -> String {
    let h = c.hex();
    format!("{}-{}", c.kind(), &h[..h.len().min(120)])
}

fn bundle_tag(commit: &str) -> String {
    format!("opam-repository-{commit}")
}

/// The tag of a git source's bundle: `git-<name>-<commit>` (at most 125
/// characters: names are at most 80).
fn git_tag(g: &GitSource, commit: &str) -> String {
    format!("git-{}-{commit}", g.name)
}

impl<'a> Mirror<'a> {
    pub fn new(reg: &'a Registry, namespace: &str, state_dir: &Path) -> Mirror<'a> {
        Mirror {
            reg,
            repo: crate::model::repository(namespace, REPOSITORY),
            cache: state_dir.join("sources"),
        }
    }

    pub fn repository(&self) -> &str {
        &self.repo
    }

    async fn present_tag(&self, name: &str, tag: &str) -> Result<Option<Present>, SourcesError> {
        let Some((manifest, _)) = self.reg.head_manifest(&self.repo, tag).await? else {
            return Ok(None);
        };
        let m = self.reg.get_manifest(&self.repo, &manifest).await?.json()?;
        let layer = &m["layers"][0];
        let (Some(blob), Some(size)) = (layer["digest"].as_str(), layer["size"].as_u64()) else {
            return Err(SourcesError::Registry(
                crate::registry::RegistryError::Invalid(format!(
                    "{}:{tag}: not a source artifact (no layer)",
                    self.repo
                )),
            ));
        };
        Ok(Some(Present {
            name: name.to_string(),
            tag: tag.to_string(),
            manifest,
            blob: blob.to_string(),
            size,
        }))
    }

    /// The mirror's copy of `w`, if it has one.
    pub async fn present(&self, w: &Wanted) -> Result<Option<Present>, SourcesError> {
        self.present_tag(&w.name, &tag_of(&w.checksum)).await
    }

    /// The mirror's bundle of the opam-repository at `commit`, if any.
    pub async fn bundle_present(&self, commit: &str) -> Result<Option<Present>, SourcesError> {
        self.present_tag(BUNDLE_NAME, &bundle_tag(commit)).await
    }

    /// The bundle of `commit`, or the error naming it as missing.
    pub async fn require_bundle(&self, commit: &str) -> Result<Present, SourcesError> {
        self.bundle_present(commit)
            .await?
            .ok_or_else(|| SourcesError::Missing {
                name: format!("{BUNDLE_NAME} at {commit}"),
                declared_in: "plan.opam_repository".into(),
                repository: self.repo.clone(),
            })
    }

    /// The mirror's bundle of git source `g` at its declared commit, if any
    /// (never, for a source not declared at a commit).
    pub async fn git_present(&self, g: &GitSource) -> Result<Option<Present>, SourcesError> {
        match &g.commit {
            Some(c) => self.present_tag(&g.served(), &git_tag(g, c)).await,
            None => Ok(None),
        }
    }

    /// The bundle of `g`, or the error naming it as undeclared (with the
    /// command that declares it) or as missing.
    pub async fn require_git(&self, g: &GitSource) -> Result<Present, SourcesError> {
        let Some(commit) = &g.commit else {
            return Err(SourcesError::Undeclared {
                name: g.served(),
                command: g.declare_command(),
            });
        };
        self.git_present(g)
            .await?
            .ok_or_else(|| SourcesError::Missing {
                name: format!("{} at {commit}", g.served()),
                declared_in: "versions/sources.yaml (git)".into(),
                repository: self.repo.clone(),
            })
    }

    /// Git source `g` at its commit as a bundle in the mirror, fetched
    /// from `url` (see [`super::git::bundle`]).
    pub async fn sync_git(
        &self,
        state_dir: &Path,
        g: &GitSource,
        url: &str,
    ) -> Result<(Present, SyncOutcome), SourcesError> {
        if let Some(p) = self.git_present(g).await? {
            return Ok((p, SyncOutcome::Present));
        }
        let commit = g.commit.clone().unwrap_or_default();
        tracing::info!(source = %g.name, %url, %commit, "bundling into the source mirror");
        let tmp = self.tmp()?;
        super::git::bundle(state_dir, g, url, tmp.path()).await?;
        let (sha, size) = crate::registry::sha256_file(tmp.path())
            .await
            .map_err(SourcesError::io(tmp.path()))?;
        let cfg = json!({"name": g.served(), "url": g.url, "ref": g.git_ref, "commit": commit});
        let p = self
            .push(tmp.path(), &sha, size, &git_tag(g, &commit), cfg)
            .await?;
        Ok((p, SyncOutcome::Fetched))
    }

    /// Every wanted source in the mirror, or the first missing one named.
    pub async fn check(&self, wanted: &[Wanted]) -> Result<Vec<Present>, SourcesError> {
        let mut out = Vec::new();
        for w in wanted {
            match self.present(w).await? {
                Some(p) => out.push(p),
                None => {
                    return Err(SourcesError::Missing {
                        name: w.name.clone(),
                        declared_in: w.declared_in.clone(),
                        repository: self.repo.clone(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn tmp(&self) -> Result<tempfile::NamedTempFile, SourcesError> {
        std::fs::create_dir_all(&self.cache).map_err(SourcesError::io(&self.cache))?;
        tempfile::Builder::new()
            .prefix(&format!(".fetch-{}-", std::process::id()))
            .tempfile_in(&self.cache)
            .map_err(SourcesError::io(&self.cache))
    }

    /// Push a checked file as a source artifact under `tag`.
    async fn push(
        &self,
        file: &Path,
        sha256: &str,
        size: u64,
        tag: &str,
        config: serde_json::Value,
    ) -> Result<Present, SourcesError> {
        let name = config["name"].as_str().unwrap_or_default().to_string();
        let blob = format!("sha256:{sha256}");
        self.reg
            .push_blob_file_known(&self.repo, file, &blob, size, None)
            .await?;
        let cfg = serde_json::to_vec(&config).map_err(|e| SourcesError::Git(e.to_string()))?;
        let (cfg_digest, cfg_size) = self.reg.push_blob(&self.repo, cfg.into()).await?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT,
            "config": {"mediaType": CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": [{"mediaType": LAYER, "digest": blob, "size": size,
                        "annotations": {"org.opencontainers.image.title": name}}],
            "annotations": {"org.opencontainers.image.title": name,
                            "org.opencontainers.image.source": config["url"]},
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| SourcesError::Git(e.to_string()))?;
        let digest = crate::registry::sha256_digest(&bytes);
        self.reg
            .put_manifest(&self.repo, tag, &bytes, OCI_MANIFEST)
            .await?;
        Ok(Present {
            name,
            tag: tag.to_string(),
            manifest: digest,
            blob,
            size,
        })
    }

    /// Fetch every wanted source the mirror lacks, check it, push it. A
    /// source whose checksum does not match is refused and nothing of it
    /// is pushed; the others are still mirrored, and the first error is
    /// returned after them.
    pub async fn sync(&self, wanted: &[Wanted]) -> Result<SyncReport, SourcesError> {
        let mut report = SyncReport {
            repository: self.repo.clone(),
            sources: Vec::new(),
        };
        let mut first_error = None;
        for w in wanted {
            match self.sync_one(w).await {
                Ok(r) => report.sources.push(r),
                Err(e) => {
                    tracing::error!(source = %w.name, error = %e, "source not mirrored");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    async fn sync_one(&self, w: &Wanted) -> Result<(Present, SyncOutcome), SourcesError> {
        if let Some(p) = self.present(w).await? {
            return Ok((p, SyncOutcome::Present));
        }
        tracing::info!(source = %w.name, url = %w.url, "fetching into the source mirror");
        let tmp = self.tmp()?;
        let f = super::fetch::fetch(w, tmp.path()).await?;
        let config = json!({"name": w.name, "url": w.url, "checksum": w.checksum.opam(),
                            "declared_in": w.declared_in});
        let p = self
            .push(tmp.path(), &f.sha256, f.size, &tag_of(&w.checksum), config)
            .await?;
        Ok((p, SyncOutcome::Fetched))
    }

    /// The opam-repository at `commit` as a bundle in the mirror.
    pub async fn sync_bundle(
        &self,
        config: &crate::config::Config,
        commit: &str,
    ) -> Result<(Present, SyncOutcome), SourcesError> {
        if let Some(p) = self.bundle_present(commit).await? {
            return Ok((p, SyncOutcome::Present));
        }
        let tmp = self.tmp()?;
        super::opam::bundle(config, commit, tmp.path()).await?;
        let (sha, size) = crate::registry::sha256_file(tmp.path())
            .await
            .map_err(SourcesError::io(tmp.path()))?;
        let cfg = json!({"name": BUNDLE_NAME, "url": format!("{}#{commit}", config.plan.opam_repository),
                         "commit": commit});
        let p = self
            .push(tmp.path(), &sha, size, &bundle_tag(commit), cfg)
            .await?;
        Ok((p, SyncOutcome::Fetched))
    }

    /// A local, checked copy of a present source (pulled once into the
    /// cache, named by its blob digest).
    pub async fn materialize(&self, p: &Present) -> Result<PathBuf, SourcesError> {
        let hex = p.blob.trim_start_matches("sha256:");
        let path = self.cache.join(hex);
        if path.exists() {
            return Ok(path);
        }
        let tmp = self.tmp()?;
        self.reg
            .pull_blob_to_file(&self.repo, &p.blob, tmp.path())
            .await?;
        tmp.persist(&path)
            .map_err(|e| SourcesError::io(&path)(e.error))?;
        Ok(path)
    }

    /// Local copies of every present source, by name.
    pub async fn materialize_all(
        &self,
        present: &[Present],
    ) -> Result<BTreeMap<String, PathBuf>, SourcesError> {
        let mut out = BTreeMap::new();
        for p in present {
            out.insert(p.name.clone(), self.materialize(p).await?);
        }
        Ok(out)
    }
}
