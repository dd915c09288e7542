//! An immutable view of everything the API serves, swapped atomically.
//!
//! A snapshot is built off to the side (lockfile parsed and validated,
//! requirements and job states loaded, the lockfile body pre-serialized and
//! pre-compressed with its ETag) and then replaces the old one in a single
//! pointer swap, so a reader sees either the old state or the new one,
//! never half an update. A lockfile that fails to parse leaves the old
//! snapshot in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::catalogue::OcamlVersion;
use crate::lockfile::{Entry, Lockfile, LockfileError};
use crate::model::{Jobs, Requirement};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Lockfile(#[from] LockfileError),
    #[error("loading requirements: {0}")]
    Requirements(String),
}

/// Loads what a snapshot needs besides the lockfile: the catalogue's
/// requirements and the daemon's job states.
pub type RequirementsLoader =
    Arc<dyn Fn() -> Result<(Vec<Requirement>, Jobs), String> + Send + Sync>;

pub struct Snapshot {
    pub lockfile: Lockfile,
    pub lockfile_json: Vec<u8>,
    pub lockfile_gzip: Vec<u8>,
    pub etag: String,
    pub requirements: Vec<Requirement>,
    pub jobs: Jobs,
    /// `host:port` of the registry, for pinned references.
    pub registry_host: String,
    /// (repository basename, tag or alias) → index into `requirements`.
    by_name: HashMap<(String, String), usize>,
    /// (repository basename, tag or alias) → lockfile key, for published
    /// tags no requirement names (e.g. a deprecated OS release).
    published: HashMap<(String, String), String>,
    /// Every known `basename:tag` name, for suggestions.
    pub names: Vec<String>,
    pub loaded_at: chrono::DateTime<chrono::Utc>,
}

pub use crate::model::tag::basename;

impl Snapshot {
    pub fn build(
        lockfile: Lockfile,
        requirements: Vec<Requirement>,
        jobs: Jobs,
        registry_host: String,
    ) -> Snapshot {
        let mut lockfile_json = serde_json::to_vec_pretty(&lockfile).unwrap_or_default();
        lockfile_json.push(b'\n');
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let lockfile_gzip = gz
            .write_all(&lockfile_json)
            .and_then(|_| gz.finish())
            .unwrap_or_default();
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&lockfile_json))[..32]);
        let mut by_name = HashMap::new();
        let mut names = BTreeSet::new();
        for (i, r) in requirements.iter().enumerate() {
            let base = basename(&r.repository).to_string();
            for n in r.names() {
                by_name.entry((base.clone(), n.to_string())).or_insert(i);
                names.insert(format!("{base}:{n}"));
            }
        }
        let mut published = HashMap::new();
        for (key, e) in &lockfile.entries {
            let base = basename(&e.repository).to_string();
            for n in std::iter::once(&e.tag).chain(e.aliases.iter()) {
                published
                    .entry((base.clone(), n.clone()))
                    .or_insert_with(|| key.clone());
                names.insert(format!("{base}:{n}"));
            }
        }
        Snapshot {
            lockfile,
            lockfile_json,
            lockfile_gzip,
            etag,
            requirements,
            jobs,
            registry_host,
            by_name,
            published,
            names: names.into_iter().collect(),
            loaded_at: chrono::Utc::now(),
        }
    }

    pub fn requirement(&self, repository: &str, tag: &str) -> Option<&Requirement> {
        self.by_name
            .get(&(basename(repository).to_string(), tag.to_string()))
            .map(|&i| &self.requirements[i])
    }

    pub fn published(&self, repository: &str, tag: &str) -> Option<&Entry> {
        self.published
            .get(&(basename(repository).to_string(), tag.to_string()))
            .and_then(|k| self.lockfile.entries.get(k))
    }

    /// Distinct compiler versions the catalogue requires, newest first.
    pub fn versions(&self) -> Vec<OcamlVersion> {
        let set: BTreeSet<&OcamlVersion> = self.requirements.iter().map(|r| &r.ocaml).collect();
        set.into_iter().rev().cloned().collect()
    }

    /// platform → OS releases, as required by the catalogue.
    pub fn platforms(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in &self.requirements {
            m.entry(r.platform.clone())
                .or_default()
                .insert(r.os.clone());
        }
        m
    }
}

/// Where snapshots come from, and the current one.
pub struct Store {
    current: RwLock<Arc<Snapshot>>,
    lockfile_path: PathBuf,
    registry_host: String,
    loader: RequirementsLoader,
    /// (mtime, len) of the lockfile behind the current snapshot.
    seen: RwLock<Option<(SystemTime, u64)>>,
}

impl Store {
    pub fn open(
        lockfile_path: PathBuf,
        registry_host: String,
        loader: RequirementsLoader,
    ) -> Result<Store, SnapshotError> {
        let store = Store {
            current: RwLock::new(Arc::new(Snapshot::build(
                Lockfile::default(),
                vec![],
                Jobs::new(),
                registry_host.clone(),
            ))),
            lockfile_path,
            registry_host,
            loader,
            seen: RwLock::new(None),
        };
        store.reload()?;
        Ok(store)
    }

    pub fn current(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(&self.lockfile_path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Rebuild the snapshot; on error the old one stays.
    pub fn reload(&self) -> Result<(), SnapshotError> {
        let stamp = self.stamp();
        let lockfile = Lockfile::load(&self.lockfile_path)?;
        let (requirements, jobs) = (self.loader)().map_err(SnapshotError::Requirements)?;
        let snap = Snapshot::build(lockfile, requirements, jobs, self.registry_host.clone());
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(snap),
            Err(p) => *p.into_inner() = Arc::new(snap),
        }
        if let Ok(mut s) = self.seen.write() {
            *s = stamp;
        }
        Ok(())
    }

    /// Reload if the lockfile changed on disk since the last load.
    pub fn reload_if_changed(&self) -> Result<bool, SnapshotError> {
        let now = self.stamp();
        let seen = self.seen.read().map(|s| *s).unwrap_or(None);
        if now == seen {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }
}
