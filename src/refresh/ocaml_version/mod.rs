//! The change a release makes to ocurrent/ocaml-version: `ocaml_version.ml`
//! (new `vX_Y_Z` values, the series alias moved, `all_patches`, `all`,
//! `recent`, `latest`, `unreleased_betas`, `dev`, and `significant` where
//! the file has it), `ocaml_version.mli` (a `val` and its doc comment per
//! released version and series) and a CHANGES.md entry, computed from
//! Kiln's catalogue.
//!
//! The file's own style is kept by editing it the way its maintainers do:
//! a definition goes after its predecessor in its series block, a list
//! item after its predecessor on the same line, nothing is re-wrapped or
//! re-indented; everything else keeps its bytes. Releases are only ever
//! added: a release the file has and the catalogue lacks stays. The lists
//! that describe state (`recent`, `latest`, `unreleased_betas`, `dev`,
//! `significant`) say exactly what the catalogue says.
//!
//! tests/ocaml_version_history.rs replays upstream's release commits.

mod changes;
mod list;
mod ml;
mod mli;

use std::path::{Path, PathBuf};

use crate::catalogue::{Catalogue, OcamlVersion, Status};

pub use changes::{add_entry, entry};
pub use ml::State;

/// What the catalogue says ocaml-version's `Releases` should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Every release (released or end-of-life), ascending.
    pub released: Vec<OcamlVersion>,
    /// The version under development of each dev or trunk series
    /// (`5.5.0`), ascending: defined in the `.ml` only.
    pub dev: Vec<OcamlVersion>,
    /// The newest alpha, beta or rc of each release not yet released.
    pub unreleased_betas: Vec<OcamlVersion>,
    /// The series of the newest release.
    pub latest: Option<OcamlVersion>,
    /// Series, ascending.
    pub recent: Vec<OcamlVersion>,
    /// Series, ascending; written only where the file has `significant`.
    pub significant: Vec<OcamlVersion>,
}

impl Wanted {
    pub fn from_catalogue(cat: &Catalogue) -> Wanted {
        let mut released: Vec<OcamlVersion> = cat
            .series
            .iter()
            .flat_map(|s| &s.releases)
            .filter(|r| r.status.is_release() && r.version.is_release_name())
            .map(|r| r.version.clone())
            .collect();
        released.sort();
        let with_release = |series: &[OcamlVersion]| -> Vec<OcamlVersion> {
            let mut out: Vec<OcamlVersion> = series
                .iter()
                .filter(|s| released.iter().any(|r| r.series() == **s))
                .cloned()
                .collect();
            out.sort();
            out
        };
        let mut dev = cat.select("dev").unwrap_or_default();
        dev.sort();
        Wanted {
            recent: with_release(&cat.sets.recent),
            significant: with_release(&cat.sets.significant),
            unreleased_betas: cat.select("unreleased_betas").unwrap_or_default(),
            latest: cat.latest().map(|v| v.series()),
            released,
            dev,
        }
    }
}

/// The three files, as read from (or written to) a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub ml: String,
    pub mli: Option<String>,
    pub changes: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct PatchError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl PatchError {
    fn at(file: &str, text: &str, offset: usize, message: impl Into<String>) -> Self {
        PatchError {
            file: file.to_string(),
            line: text[..offset.min(text.len())].matches('\n').count() + 1,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Patch(#[from] PatchError),
}

pub const ML: &str = "ocaml_version.ml";
pub const MLI: &str = "ocaml_version.mli";
pub const CHANGES: &str = "CHANGES.md";

/// The files after the release, and the CHANGES.md entry written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patched {
    pub files: Files,
    /// The entry's lines (`Add OCaml 5.5.1`), `None` when the patch adds
    /// no release, prerelease or trunk.
    pub entry: Option<String>,
}

/// Bring the `.ml` to `wanted`, declare the releases it adds in the
/// `.mli`; the CHANGES.md entry names what the patch adds (releases,
/// prereleases, a new trunk).
pub fn patch(files: &Files, wanted: &Wanted) -> Result<Patched, PatchError> {
    let added = added(&files.ml, wanted)?;
    let entry = entry(&added);
    // The .mli exposes what this release adds; a release an earlier change
    // left out of it is not this release's business.
    let exposed: Vec<OcamlVersion> = added
        .iter()
        .filter(|(_, s)| *s == Status::Released)
        .map(|(v, _)| v.clone())
        .collect();
    Ok(Patched {
        files: Files {
            ml: ml::patch(&files.ml, wanted)?,
            mli: files
                .mli
                .as_deref()
                .map(|m| mli::patch(m, &exposed))
                .transpose()?,
            changes: match (&files.changes, &entry) {
                (Some(c), Some(e)) => Some(add_entry(c, e)),
                (c, _) => c.clone(),
            },
        },
        entry,
    })
}

/// The files of a checkout of ocaml-version, from its `ocaml_version.ml`:
/// the `.mli` and CHANGES.md beside it when they exist.
pub fn read(ml_path: &Path) -> Result<Files, ExportError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| ExportError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let optional = |p: PathBuf| {
        if p.exists() {
            read(&p).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(Files {
        ml: read(ml_path)?,
        mli: optional(ml_path.with_extension("mli"))?,
        changes: optional(ml_path.with_file_name(CHANGES))?,
    })
}

/// Write the files into `dir` under their own names.
pub fn write(dir: &Path, files: &Files) -> Result<(), ExportError> {
    for (name, text) in files.named() {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| ExportError::Write { path, source })?;
    }
    Ok(())
}

impl Files {
    /// `(file name, text)` of the files present.
    pub fn named(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![(ML, self.ml.as_str())];
        if let Some(m) = &self.mli {
            out.push((MLI, m));
        }
        if let Some(c) = &self.changes {
            out.push((CHANGES, c));
        }
        out
    }
}

/// A unified diff (`git apply` reads it) from `old` to `new`.
pub fn diff(old: &Files, new: &Files) -> String {
    let mut out = String::new();
    for ((name, a), (_, b)) in old.named().into_iter().zip(new.named()) {
        if a != b {
            let d = similar::TextDiff::from_lines(a, b);
            out.push_str(
                &d.unified_diff()
                    .context_radius(3)
                    .header(&format!("a/{name}"), &format!("b/{name}"))
                    .to_string(),
            );
        }
    }
    out
}

/// What `wanted` adds to the file: releases not in `all_patches`,
/// prereleases not in `unreleased_betas`, trunks of series it does not
/// define; with the status they are added in.
pub fn added(ml_text: &str, wanted: &Wanted) -> Result<Vec<(OcamlVersion, Status)>, PatchError> {
    let state = ml::state(ml_text)?;
    let mut out: Vec<(OcamlVersion, Status)> = wanted
        .released
        .iter()
        .filter(|v| !state.released.contains(v))
        .map(|v| (v.clone(), Status::Released))
        .collect();
    for b in &wanted.unreleased_betas {
        if !state.betas.contains(b) {
            out.push((b.clone(), Status::Rc));
        }
    }
    for d in wanted
        .dev
        .iter()
        .filter(|d| !state.defined.contains(&ident(d)))
    {
        out.push((d.clone(), Status::Trunk));
    }
    Ok(out)
}

/// What `ocaml_version.ml` states (see [`State`]).
pub fn state(ml_text: &str) -> Result<State, PatchError> {
    ml::state(ml_text)
}

/// The releases `ocaml_version.ml` lists in `all_patches`.
pub fn released_in(ml_text: &str) -> Result<Vec<OcamlVersion>, PatchError> {
    Ok(ml::state(ml_text)?.released)
}

/// The name ocaml-version gives a release: `v4_14_3`, `v5_4_0`, and
/// before 4.00 `v3_07_0` for `3.07`, `v3_07_2` for `3.07+2`.
pub fn ident(v: &OcamlVersion) -> String {
    let patch = v
        .patch
        .or_else(|| v.extra.as_deref().and_then(|e| e.parse().ok()))
        .unwrap_or(0);
    format!("{}_{patch}", series_ident(v))
}

/// The name of a series alias: `v4_14`, `v5_4`.
pub fn series_ident(v: &OcamlVersion) -> String {
    format!("v{}", v.series_tag().replace('.', "_"))
}

/// `(major, minor, patch)` of a name `vM_N[_P]`, for ordering.
fn ident_key(name: &str) -> Option<(u32, u32, Option<u32>)> {
    let mut parts = name.strip_prefix('v')?.split('_');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = match parts.next() {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    parts.next().is_none().then_some((major, minor, patch))
}

fn version_key(v: &OcamlVersion) -> (u32, u32, Option<u32>) {
    ident_key(&ident(v)).unwrap_or((v.major, v.minor, v.patch))
}

#[cfg(test)]
mod tests;
