//! The lockfile in the registry: after every run that published, the
//! lockfile is pushed as an OCI artifact (`<namespace>/kiln-lockfile:latest`),
//! so an API replica on another host, or a factory that lost its state
//! dir, can start from the registry alone.
//!
//! Two factories may publish to one namespace. The distribution API has no
//! compare-and-swap, so the published lockfile is kept whole by merging
//! ([`super::merge`]): a factory remembers the digest it last pushed or
//! merged (`<lockfile>.published`, beside the lockfile); when `latest`
//! points elsewhere, another factory wrote since, and its lockfile is
//! merged into this one's before this one runs and again before it
//! pushes. After pushing, it waits [`SETTLE`] and looks again: a writer
//! that pushed in between without this factory's entries is merged and
//! pushed over, so the last writer's lockfile holds both.

use std::collections::BTreeMap;
use std::path::Path;

use super::PublishError;
use super::lockfile::Lockfile;
use super::merge::{self, Merged};
use crate::model::repository;
use crate::registry::{Registry, RegistryError, artifact};

pub const LOCKFILE_ARTIFACT: &str = "application/vnd.ocaml.kiln.lockfile.v1";
pub const LOCKFILE_LAYER: &str = "application/vnd.ocaml.kiln.lockfile.v1+json";
const TAG: &str = "latest";
/// The annotation naming who pushed a lockfile (`<host>:<lockfile path>`).
pub const WRITER_ANNOTATION: &str = "org.ocaml.kiln.writer";
/// How long a push waits before checking that no other writer replaced
/// it without its entries.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);
/// Pushes tried while other writers keep replacing this one's.
const PUSH_ATTEMPTS: usize = 5;

/// This factory, as the lockfile it pushes names it.
fn writer(path: &Path) -> String {
    format!("{}:{}", crate::process::hostname(), path.display())
}

/// The file holding the digest of the published lockfile this factory
/// last pushed or merged.
fn base_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("published")
}

fn read_base(path: &Path) -> Option<String> {
    std::fs::read_to_string(base_path(path))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn write_base(path: &Path, digest: &str) -> Result<(), PublishError> {
    let p = base_path(path);
    std::fs::write(&p, format!("{digest}\n")).map_err(|source| PublishError::Lock {
        path: p.display().to_string(),
        source,
    })
}

/// What [`sync`] found in the registry.
#[derive(Debug, Clone, Default)]
pub struct Synced {
    /// The published lockfile's digest, if there is one.
    pub digest: Option<String>,
    /// Who pushed it, when it was not this factory's last push.
    pub writer: Option<String>,
    /// Its lockfile, when it was pulled (another writer's).
    pub theirs: Option<Lockfile>,
    pub merged: Merged,
}

/// Merge the published lockfile into the local one at `path` when
/// another factory pushed it since this one last pushed or merged; the
/// local lockfile is written only when the merge changed it. A local
/// lockfile that does not exist yet is left alone (recovery makes it).
pub async fn sync(reg: &Registry, namespace: &str, path: &Path) -> Result<Synced, PublishError> {
    let Some(digest) = remote_lockfile_digest(reg, namespace).await? else {
        return Ok(Synced::default());
    };
    let mut out = Synced {
        digest: Some(digest.clone()),
        ..Default::default()
    };
    if read_base(path).as_deref() == Some(digest.as_str()) || !path.exists() {
        return Ok(out);
    }
    let scratch = tempfile::tempdir().map_err(|source| PublishError::Lock {
        path: std::env::temp_dir().display().to_string(),
        source,
    })?;
    let writer = reg
        .get_manifest(&lockfile_repository(namespace), &digest)
        .await
        .ok()
        .and_then(|m| m.json().ok())
        .and_then(|m| {
            m["annotations"][WRITER_ANNOTATION]
                .as_str()
                .map(String::from)
        });
    let theirs = pull_lockfile(
        reg,
        namespace,
        &digest,
        &scratch.path().join("lockfile.json"),
    )
    .await
    .map_err(|e| other_writer_error(&digest, writer.as_deref(), e))?;
    let _guard = super::lock_lockfile(path).await?;
    let mut ours = Lockfile::load(path)?;
    out.merged = merge::merge(&mut ours, &theirs);
    if !out.merged.is_empty() {
        ours.save(path)?;
        tracing::info!(
            writer = writer.as_deref().unwrap_or("unknown"),
            added = out.merged.added.len(),
            replaced = out.merged.replaced.len(),
            lockfile = %digest,
            "merged the lockfile another factory published to this namespace"
        );
    }
    write_base(path, &digest)?;
    out.writer = writer;
    out.theirs = Some(theirs);
    Ok(out)
}

/// A published lockfile that cannot be read stops the push: pushing over
/// it would lose the other writer's entries.
fn other_writer_error(digest: &str, writer: Option<&str>, e: PublishError) -> PublishError {
    PublishError::OtherWriter {
        digest: digest.to_string(),
        writer: writer.unwrap_or("another factory").to_string(),
        error: e.to_string(),
    }
}

/// Push the local lockfile at `path` as the namespace's published one,
/// after merging what another factory published since ([`sync`]), and
/// keep it so: returns the digest `latest` points at, which holds this
/// factory's entries (another writer's push may have carried them).
pub async fn publish_lockfile(
    reg: &Registry,
    namespace: &str,
    path: &Path,
) -> Result<String, PublishError> {
    let mut last = None;
    for attempt in 1..=PUSH_ATTEMPTS {
        let synced = sync(reg, namespace, path).await?;
        // Another writer's lockfile that already holds everything of ours
        // (it merged ours): nothing to push.
        if let (Some(d), Some(theirs)) = (&synced.digest, &synced.theirs)
            && merge::covers(theirs, &Lockfile::load(path)?)
        {
            return Ok(d.clone());
        }
        let pushed = push_lockfile(reg, namespace, path).await?;
        write_base(path, &pushed)?;
        tokio::time::sleep(SETTLE).await;
        match remote_lockfile_digest(reg, namespace).await? {
            Some(now) if now == pushed => return Ok(pushed),
            now => {
                tracing::warn!(attempt, pushed = %pushed, now = ?now, "another factory pushed the lockfile over this one's: merging again");
                last = now;
            }
        }
    }
    Err(PublishError::OtherWriter {
        digest: last.unwrap_or_default(),
        writer: "another factory".into(),
        error: format!("it replaced this factory's lockfile {PUSH_ATTEMPTS} times in a row"),
    })
}

/// Where the lockfile artifact lives in `namespace`.
pub fn lockfile_repository(namespace: &str) -> String {
    repository(namespace, "kiln-lockfile")
}

/// Push the lockfile at `path` and point `latest` at it; returns its
/// digest. Overwrites what another factory published: use
/// [`publish_lockfile`].
async fn push_lockfile(
    reg: &Registry,
    namespace: &str,
    path: &Path,
) -> Result<String, PublishError> {
    let repo = lockfile_repository(namespace);
    let pushed = artifact::push(
        reg,
        &artifact::ArtifactPush {
            repo: &repo,
            file: path,
            artifact_type: LOCKFILE_ARTIFACT,
            layer_media_type: LOCKFILE_LAYER,
            title: "lockfile.json",
            digest: None,
            uncompressed_sha256: None,
            config: serde_json::json!({"os": "any", "architecture": "any"}),
            annotations: BTreeMap::from([(WRITER_ANNOTATION.to_string(), writer(path))]),
        },
    )
    .await?;
    let m = reg.get_manifest(&repo, &pushed.digest).await?;
    reg.put_manifest(&repo, TAG, &m.bytes, &m.media_type)
        .await?;
    Ok(pushed.digest)
}

/// The digest `latest` points at, if the lockfile was ever pushed.
pub async fn remote_lockfile_digest(
    reg: &Registry,
    namespace: &str,
) -> Result<Option<String>, PublishError> {
    let repo = lockfile_repository(namespace);
    Ok(reg.head_manifest(&repo, TAG).await?.map(|(d, _)| d))
}

/// Pull the lockfile at `digest` into `dest` (atomically: a reader never
/// sees half of it) after checking that it parses.
pub async fn pull_lockfile(
    reg: &Registry,
    namespace: &str,
    digest: &str,
    dest: &Path,
) -> Result<Lockfile, PublishError> {
    let repo = lockfile_repository(namespace);
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| PublishError::Lock {
        path: dir.display().to_string(),
        source,
    })?;
    let tmp = dir.join(format!(".lockfile.{}.partial", std::process::id()));
    let pulled = artifact::pull(reg, &repo, digest, &tmp).await;
    let parsed = pulled.and_then(|p| {
        if p.artifact_type != LOCKFILE_ARTIFACT {
            return Err(RegistryError::Invalid(format!(
                "{repo}@{digest} is a {}, not a lockfile",
                p.artifact_type
            )));
        }
        let text = std::fs::read_to_string(&tmp).map_err(|source| RegistryError::Io {
            path: tmp.display().to_string(),
            source,
        })?;
        Lockfile::parse(dest, &text).map_err(|e| RegistryError::Invalid(e.to_string()))
    });
    let lock = match parsed {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    std::fs::rename(&tmp, dest).map_err(|source| PublishError::Lock {
        path: dest.display().to_string(),
        source,
    })?;
    Ok(lock)
}
