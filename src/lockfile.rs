//! The published lockfile (`manifests/lockfile.json`): for every published
//! tag, the digest it points at, the per-arch digests behind it, the build
//! key and inputs that produced it, and the digests it held before.
//!
//! It is what the digest API serves and what `kiln verify` checks against
//! the registry. Writes are atomic (temp file + rename in the same
//! directory), so a reader never sees half a lockfile.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalogue::{Arch, OcamlVersion};
use crate::model::{PinnedRef, TagId};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LockfileError {
    #[error("cannot read lockfile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lockfile {path}: line {line}, column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "lockfile {path}: schema version {found} is not supported (this kiln reads {SCHEMA_VERSION})"
    )]
    Schema { path: PathBuf, found: u32 },
    #[error("cannot write lockfile {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lockfile entry {key}: {message}")]
    Invalid { key: String, message: String },
}

pub use crate::model::ArtifactKind;

/// One arch's output behind a published tag.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchEntry {
    /// Digest of this arch's manifest (or artifact manifest).
    pub digest: String,
    pub build_key: String,
    /// Size in bytes of the artifact's content, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A digest a tag held before, kept for rollback and for "why did this change".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    pub digest: String,
    pub build_key: String,
    pub published_at: DateTime<Utc>,
    /// Why it was replaced (e.g. "input changed: parent_digest", "rollback").
    pub replaced_because: String,
}

/// A moving tag or alias that pointed elsewhere in the registry and was
/// put back at its owner's digest (`kiln build`, a daemon round or
/// `kiln verify --repair`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagRepair {
    /// The tag or alias that was moved.
    pub tag: String,
    /// What the registry had there; absent when the tag was missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was: Option<String>,
    pub at: DateTime<Utc>,
    /// Why: `drift` (moved by hand or another tool, or an interrupted
    /// run) or `owner` (the alias came to this entry).
    pub reason: String,
}

/// How many repairs an entry keeps, newest first.
pub const REPAIRS_KEPT: usize = 20;

/// One published tag.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub kind: ArtifactKind,
    /// linux, windows, macos, freebsd, openbsd.
    pub platform: String,
    /// OS release id, e.g. `debian-13`, `macos-homebrew`, `openbsd-7.8`.
    pub os: String,
    /// Full compiler version, e.g. `5.5.0`; absent for a compiler-less
    /// image (`debian-13-opam`), which no requirement of the gate names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocaml: Option<OcamlVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Repository inside the registry namespace, e.g. `kiln/opam`.
    pub repository: String,
    /// The moving tag, e.g. `debian-13-ocaml-5.5`.
    pub tag: String,
    /// The immutable tag of this build, e.g. `debian-13-ocaml-5.5.0-b3f9c2a1`.
    pub immutable_tag: String,
    /// Other moving tags that point at the same digest (`debian-ocaml-5.5`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Digest of the index (images) or artifact manifest.
    pub digest: String,
    /// Per-arch digests; for single-arch artifacts one entry.
    pub arches: BTreeMap<Arch, ArchEntry>,
    /// Build key of the whole entry (hash of the per-arch keys).
    pub build_key: String,
    /// The inputs behind the build key (recipe hash, parent digest, versions…).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    pub published_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<DateTime<Utc>>,
    /// Earlier digests of this tag, newest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
    /// Where a build of this key that Kiln did not make in this run came
    /// from: `registry` (its immutable tag was there), `host:<name>` (its
    /// dataset was on the build host), `recovered` (rebuilt from the
    /// registry after the lockfile was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<String>,
    /// Its moving tag and aliases put back at its digest, newest first
    /// (the last [`REPAIRS_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<TagRepair>,
}

/// What every published index carries in its `org.ocaml.kiln.entry`
/// annotation: everything of its lockfile entry that the build determines,
/// so that a lost lockfile can be rebuilt from the registry alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryRecord {
    pub kind: ArtifactKind,
    pub platform: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocaml: Option<OcamlVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub tag: String,
    pub immutable_tag: String,
    /// The series aliases the tag was published with.
    #[serde(default)]
    pub aliases: Vec<String>,
    pub build_key: String,
    pub arch_keys: BTreeMap<Arch, String>,
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

/// The index annotation holding an [`EntryRecord`].
pub const ENTRY_ANNOTATION: &str = "org.ocaml.kiln.entry";

impl Entry {
    /// What the build determined of this entry.
    pub fn record(&self) -> EntryRecord {
        EntryRecord {
            kind: self.kind,
            platform: self.platform.clone(),
            os: self.os.clone(),
            ocaml: self.ocaml.clone(),
            variant: self.variant.clone(),
            tag: self.tag.clone(),
            immutable_tag: self.immutable_tag.clone(),
            aliases: self.aliases.clone(),
            build_key: self.build_key.clone(),
            arch_keys: self
                .arches
                .iter()
                .map(|(a, e)| (*a, e.build_key.clone()))
                .collect(),
            inputs: self.inputs.clone(),
        }
    }

    /// The entry a record describes, published in `repository` as
    /// `digest` with these per-arch digests.
    pub fn from_record(
        r: EntryRecord,
        repository: &str,
        digest: &str,
        arch_digests: &BTreeMap<Arch, String>,
        published_at: DateTime<Utc>,
    ) -> Entry {
        Entry {
            kind: r.kind,
            platform: r.platform,
            os: r.os,
            ocaml: r.ocaml,
            variant: r.variant,
            repository: repository.to_string(),
            tag: r.tag,
            immutable_tag: r.immutable_tag,
            aliases: r.aliases,
            digest: digest.to_string(),
            arches: r
                .arch_keys
                .into_iter()
                .map(|(a, build_key)| {
                    let digest = arch_digests.get(&a).cloned().unwrap_or_default();
                    let e = ArchEntry {
                        digest,
                        build_key,
                        size: None,
                    };
                    (a, e)
                })
                .collect(),
            build_key: r.build_key,
            inputs: r.inputs,
            published_at,
            verified_at: None,
            history: vec![],
            adopted: None,
            repairs: vec![],
        }
    }

    /// The key this entry is stored under: `<repository>:<tag>`.
    pub fn key(&self) -> String {
        self.id().key()
    }

    /// The tag this entry publishes.
    pub fn id(&self) -> TagId {
        TagId::new(&self.repository, &self.tag)
    }

    /// The pin CI uses: this entry's digest, reached through `tag` (the
    /// moving tag or one of its aliases) when given.
    pub fn pin(&self, registry_host: &str, tag: Option<&str>) -> PinnedRef {
        PinnedRef {
            host: registry_host.to_string(),
            repository: self.repository.clone(),
            tag: tag.map(str::to_string),
            digest: self.digest.clone(),
        }
    }
}

/// The whole lockfile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lockfile {
    pub schema_version: u32,
    /// `<repository>:<tag>` → entry.
    pub entries: BTreeMap<String, Entry>,
}

impl Default for Lockfile {
    fn default() -> Self {
        Lockfile {
            schema_version: SCHEMA_VERSION,
            entries: BTreeMap::new(),
        }
    }
}

/// What `publish` did to a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A tag that did not exist before.
    Added,
    /// Same digest as before: nothing changed (no digest churn).
    Unchanged,
    /// The tag moved; the old digest went into history.
    Moved { from: String },
}

impl Lockfile {
    /// Load from `path`; a missing file is an empty lockfile.
    pub fn load(path: &Path) -> Result<Lockfile, LockfileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lockfile::default()),
            Err(source) => {
                return Err(LockfileError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Lockfile, LockfileError> {
        let lock: Lockfile = serde_json::from_str(text).map_err(|e| LockfileError::Parse {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        if lock.schema_version != SCHEMA_VERSION {
            return Err(LockfileError::Schema {
                path: path.to_path_buf(),
                found: lock.schema_version,
            });
        }
        lock.validate()?;
        Ok(lock)
    }

    /// Keys match entries, digests look like digests.
    pub fn validate(&self) -> Result<(), LockfileError> {
        for (key, e) in &self.entries {
            let bad = |message: String| LockfileError::Invalid {
                key: key.clone(),
                message,
            };
            if *key != e.key() {
                return Err(bad(format!("stored under {key} but names {}", e.key())));
            }
            if !is_digest(&e.digest) {
                return Err(bad(format!("digest {:?} is not sha256:<64 hex>", e.digest)));
            }
            if e.arches.is_empty() {
                return Err(bad("no arches".into()));
            }
            for (arch, a) in &e.arches {
                if !is_digest(&a.digest) {
                    return Err(bad(format!(
                        "arch {arch}: digest {:?} is not sha256:<64 hex>",
                        a.digest
                    )));
                }
            }
        }
        Ok(())
    }

    /// Write atomically: a temp file in the same directory, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<(), LockfileError> {
        let werr = |source| LockfileError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(werr)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(werr)?;
        let mut text =
            serde_json::to_string_pretty(self).map_err(|e| werr(std::io::Error::other(e)))?;
        text.push('\n');
        tmp.write_all(text.as_bytes()).map_err(werr)?;
        tmp.as_file().sync_all().map_err(werr)?;
        tmp.persist(path).map_err(|e| werr(e.error))?;
        Ok(())
    }

    /// Record a verified publication of `entry`. The previous digest of the
    /// same tag (if different) moves into history with `reason`.
    pub fn publish(&mut self, mut entry: Entry, reason: &str) -> Change {
        let key = entry.key();
        match self.entries.get(&key) {
            None => {
                self.entries.insert(key, entry);
                Change::Added
            }
            Some(old) if old.digest == entry.digest => {
                // Keep the original publication time: nothing changed.
                entry.published_at = old.published_at;
                entry.history = old.history.clone();
                entry.repairs = old.repairs.clone();
                self.entries.insert(key, entry);
                Change::Unchanged
            }
            Some(old) => {
                let from = old.digest.clone();
                let mut history = vec![HistoryEntry {
                    digest: old.digest.clone(),
                    build_key: old.build_key.clone(),
                    published_at: old.published_at,
                    replaced_because: reason.to_string(),
                }];
                history.extend(old.history.iter().cloned());
                entry.history = history;
                entry.repairs = old.repairs.clone();
                self.entries.insert(key, entry);
                Change::Moved { from }
            }
        }
    }

    /// Find an entry by repository and tag or alias.
    pub fn resolve(&self, repository: &str, tag: &str) -> Option<&Entry> {
        if let Some(e) = self.entries.get(&format!("{repository}:{tag}")) {
            return Some(e);
        }
        self.entries
            .values()
            .find(|e| e.repository == repository && e.aliases.iter().any(|a| a == tag))
    }

    /// Entries for one compiler version (full, e.g. `5.5.0`).
    pub fn for_version<'a>(
        &'a self,
        ocaml: &'a OcamlVersion,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .values()
            .filter(move |e| e.ocaml.as_ref() == Some(ocaml))
    }
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    pub fn entry(tag: &str, d: u8) -> Entry {
        let mut arches = BTreeMap::new();
        arches.insert(
            Arch::Amd64,
            ArchEntry {
                digest: digest(d.wrapping_add(100)),
                build_key: "k".into(),
                size: Some(10),
            },
        );
        Entry {
            kind: ArtifactKind::Image,
            platform: "linux".into(),
            os: "debian-13".into(),
            ocaml: Some("5.5.0".parse().unwrap()),
            variant: None,
            repository: "kiln/opam".into(),
            tag: tag.into(),
            immutable_tag: format!("{tag}.0-x"),
            aliases: vec!["debian-ocaml-5.5".into()],
            digest: digest(d),
            arches,
            build_key: format!("key{d}"),
            inputs: BTreeMap::new(),
            published_at: Utc::now(),
            verified_at: None,
            history: vec![],
            adopted: None,
            repairs: vec![],
        }
    }

    #[test]
    fn an_entry_survives_its_record() {
        let mut e = entry("debian-13-ocaml-5.5", 1);
        e.inputs.insert("amd64.ocaml".into(), "5.5.0".into());
        // Sizes are the registry's to say, not the record's.
        e.arches.values_mut().for_each(|a| a.size = None);
        let digests = e
            .arches
            .iter()
            .map(|(a, x)| (*a, x.digest.clone()))
            .collect();
        let text = serde_json::to_string(&e.record()).unwrap();
        let back = Entry::from_record(
            serde_json::from_str(&text).unwrap(),
            &e.repository,
            &e.digest,
            &digests,
            e.published_at,
        );
        assert_eq!(back, e);
    }

    #[test]
    fn publish_tracks_history_and_no_churn() {
        let mut l = Lockfile::default();
        assert_eq!(
            l.publish(entry("debian-13-ocaml-5.5", 1), "new"),
            Change::Added
        );
        let first = l.entries["kiln/opam:debian-13-ocaml-5.5"].published_at;
        assert_eq!(
            l.publish(entry("debian-13-ocaml-5.5", 1), "weekly"),
            Change::Unchanged
        );
        assert_eq!(
            l.entries["kiln/opam:debian-13-ocaml-5.5"].published_at,
            first
        );
        assert_eq!(
            l.publish(entry("debian-13-ocaml-5.5", 2), "input changed: parent"),
            Change::Moved { from: digest(1) }
        );
        let e = &l.entries["kiln/opam:debian-13-ocaml-5.5"];
        assert_eq!(e.history.len(), 1);
        assert_eq!(e.history[0].digest, digest(1));
        assert_eq!(e.history[0].replaced_because, "input changed: parent");
        assert_eq!(
            l.resolve("kiln/opam", "debian-ocaml-5.5")
                .map(|e| &e.digest),
            Some(&digest(2))
        );
    }

    #[test]
    fn save_load_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m/lockfile.json");
        assert_eq!(Lockfile::load(&p).unwrap(), Lockfile::default());
        let mut l = Lockfile::default();
        l.publish(entry("debian-13-ocaml-5.5", 1), "new");
        l.save(&p).unwrap();
        assert_eq!(Lockfile::load(&p).unwrap(), l);
        std::fs::write(&p, "{\n  \"schema_version\": 1,\n  \"entries\": [}\n").unwrap();
        let e = Lockfile::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        std::fs::write(&p, "{\"schema_version\": 9, \"entries\": {}}").unwrap();
        let e = Lockfile::load(&p).unwrap_err().to_string();
        assert!(e.contains("schema version 9"), "{e}");
        let mut bad = Lockfile::default();
        let mut e1 = entry("t", 1);
        e1.digest = "sha256:nothex".into();
        bad.entries.insert(e1.key(), e1);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("kiln/opam:t")
        );
    }
}

#[cfg(test)]
mod schema_sync {
    use super::tests::entry;

    /// The committed JSON schema names exactly the fields the code writes.
    #[test]
    fn schema_matches_the_serialized_entry() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../manifests/lockfile.schema.json")).unwrap();
        let props = schema["$defs"]["entry"]["properties"].as_object().unwrap();
        let mut e = entry("t", 1);
        e.variant = Some("flambda".into());
        e.verified_at = Some(chrono::Utc::now());
        e.adopted = Some("registry".into());
        e.repairs = vec![super::TagRepair {
            tag: "latest".into(),
            was: None,
            at: chrono::Utc::now(),
            reason: "drift".into(),
        }];
        let v = serde_json::to_value(&e).unwrap();
        let mut written: Vec<&String> = v.as_object().unwrap().keys().collect();
        let mut documented: Vec<&String> = props.keys().collect();
        written.sort();
        documented.sort();
        assert_eq!(written, documented);
        for r in schema["$defs"]["entry"]["required"].as_array().unwrap() {
            assert!(v.get(r.as_str().unwrap()).is_some(), "{r}");
        }
    }
}
