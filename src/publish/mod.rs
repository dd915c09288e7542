//! Publication: the order in which tags move, and the digest lockfile.
//!
//! A build's index (or artifact) is already pushed by digest. Publishing
//! it: the immutable tag first (never moved once set); then verification
//! (every child present, platforms exactly the required set); only then do
//! the moving tag and its aliases move; last, the lockfile records it
//! atomically. A set that fails verification is never tagged with a moving
//! tag and never reaches the lockfile.

pub mod merge;
pub mod multi_os;
pub mod owners;
pub mod reconcile;
pub mod recover;
pub mod remote;
pub mod repositories;
pub mod retention;
pub mod tag;
pub mod verify;

/// The lockfile lives low (the API, builders and daemon read it); it is
/// re-exported here, where it is written.
pub use crate::lockfile;
pub use multi_os::publish_multi_os_indexes;
pub use reconcile::{Reconciled, Scope, reconcile};
pub use tag::{TagBuild, adopt_tag, find_published, publish_tag};

use std::path::Path;

use crate::registry::index::{self, Platform};
use crate::registry::{Registry, RegistryError};
use lockfile::{Change, Entry, Lockfile, LockfileError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Lockfile(#[from] LockfileError),
    #[error(
        "immutable tag {repo}:{tag} already points at {existing}, not {wanted}: immutable tags never move"
    )]
    ImmutableMoved {
        repo: String,
        tag: String,
        existing: String,
        wanted: String,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the namespace's published lockfile {digest} (pushed by {writer}) cannot be merged: {error}; nothing was pushed over it"
    )]
    OtherWriter {
        digest: String,
        writer: String,
        error: String,
    },
    #[error("{0}: nothing to publish")]
    Empty(String),
    #[error(
        "{reference} carries build key {found}, not {wanted}: a different build holds this immutable tag"
    )]
    KeyMismatch {
        reference: String,
        found: String,
        wanted: String,
    },
}

impl PublishError {
    /// Registry trouble is the registry's kind; a local lockfile that
    /// cannot be written or locked is infrastructure; an immutable tag
    /// that would move is final.
    pub fn kind(&self) -> crate::model::FailureKind {
        use crate::model::FailureKind;
        match self {
            PublishError::Registry(e) => e.kind(),
            PublishError::Lockfile(_)
            | PublishError::Lock { .. }
            | PublishError::OtherWriter { .. } => FailureKind::Infra,
            PublishError::ImmutableMoved { .. }
            | PublishError::Empty(_)
            | PublishError::KeyMismatch { .. } => FailureKind::Recipe,
        }
    }
}

/// Serialize lockfile writers: across processes (daemon, CLI) with
/// flock, and within this one (concurrent tags of a run) with an async
/// mutex taken first, so that a task waiting for the lock never blocks a
/// runtime thread that the holder needs.
pub struct LockfileGuard {
    _file: std::fs::File,
    _here: tokio::sync::OwnedMutexGuard<()>,
}

static IN_PROCESS: std::sync::LazyLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(Default::default);

pub async fn lock_lockfile(path: &Path) -> Result<LockfileGuard, PublishError> {
    let here = IN_PROCESS.clone().lock_owned().await;
    let lock_path = path.with_extension("lock");
    let err = |source| PublishError::Lock {
        path: lock_path.display().to_string(),
        source,
    };
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(err)?;
    // Another process may hold it for a while: wait off the runtime.
    let file = tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; blocks until granted.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(file)
        }
    })
    .await
    .map_err(|e| err(std::io::Error::other(e)))?
    .map_err(err)?;
    Ok(LockfileGuard {
        _file: file,
        _here: here,
    })
}

/// Tag, verify and record one entry whose digest is already in the registry.
pub async fn publish(
    reg: &Registry,
    lockfile_path: &Path,
    mut entry: Entry,
    required: &[Platform],
    reason: &str,
) -> Result<Change, PublishError> {
    let repo = entry.repository.clone();
    let m = reg.get_manifest(&repo, &entry.digest).await?;
    // 0. Nothing gets a tag until every child is there with exactly the
    //    required platforms.
    index::verify(reg, &repo, &entry.digest, required).await?;
    // 1. The immutable tag: set once, never moved.
    match reg.head_manifest(&repo, &entry.immutable_tag).await? {
        Some((existing, _)) if existing != entry.digest => {
            return Err(PublishError::ImmutableMoved {
                repo,
                tag: entry.immutable_tag.clone(),
                existing,
                wanted: entry.digest.clone(),
            });
        }
        Some(_) => {}
        None => {
            reg.put_manifest(&repo, &entry.immutable_tag, &m.bytes, &m.media_type)
                .await?;
        }
    }
    // 2. Verify what the immutable tag names, through the tag itself.
    let (tagged, _) = reg
        .head_manifest(&repo, &entry.immutable_tag)
        .await?
        .ok_or_else(|| {
            RegistryError::Invalid(format!(
                "{repo}:{} vanished after push",
                entry.immutable_tag
            ))
        })?;
    if tagged != entry.digest {
        return Err(RegistryError::DigestMismatch {
            what: "immutable tag",
            reference: format!("{repo}:{}", entry.immutable_tag),
            expected: entry.digest.clone(),
            actual: tagged,
        }
        .into());
    }
    index::verify(reg, &repo, &entry.digest, required).await?;
    entry.verified_at = Some(chrono::Utc::now());
    // 3. Under the lockfile's lock, so that no reconciliation decides
    //    between the tags moving and the entry being recorded: the moving
    //    tag and aliases. A rebuild of the same compiler keeps the
    //    series-less aliases its tag owned (`latest` already waited for
    //    that compiler's tier-1 set); a new compiler waits again.
    let _guard = lock_lockfile(lockfile_path).await?;
    let mut lock = Lockfile::load(lockfile_path)?;
    if let Some(old) = lock.entries.get(&entry.key())
        && old.ocaml == entry.ocaml
    {
        let kept: Vec<String> = old
            .aliases
            .iter()
            .filter(|a| !owners::is_series_alias(a) && !entry.aliases.contains(a))
            .cloned()
            .collect();
        entry.aliases.extend(kept);
    }
    for tag in std::iter::once(&entry.tag).chain(entry.aliases.iter()) {
        let current = reg.head_manifest(&repo, tag).await?.map(|(d, _)| d);
        if current.as_deref() != Some(entry.digest.as_str()) {
            reg.put_manifest(&repo, tag, &m.bytes, &m.media_type)
                .await?;
        }
    }
    // 4. The lockfile, atomically.
    let change = lock.publish(entry, reason);
    lock.save(lockfile_path)?;
    Ok(change)
}
