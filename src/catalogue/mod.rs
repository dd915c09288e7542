//! The version catalogue (`versions/`) and platform definitions
//! (`platforms/<os>/`): validated data that drives every builder and every
//! CI decision.
//!
//! Formats (all YAML, read with `serde_norway`):
//! - `versions/<series>.yaml` — one OCaml series: its native and
//!   bytecode-only arches and its releases (version, status, date). Written
//!   canonically by `kiln bump` / `kiln catalogue fmt`.
//! - `versions/sets.yaml` — the series CI cares about: `recent`,
//!   `significant`. `latest` is computed: the newest released version;
//!   `dev` and `unreleased_betas` too, from the statuses.
//! - `versions/rules.yaml` — arch support and compiler variants by
//!   ocaml-version's rules ([`rules`]).
//! - `versions/sources.yaml` — external build inputs pinned by sha256
//!   ([`sources`]).
//! - `platforms/<os>/platform.yaml` — the OS releases of one platform: tier,
//!   arches, aliases, deprecation, builder kind, recipe files, upstream
//!   parent (a Docker/OCI image reference, checked by [`reference`]),
//!   per-version constraints.
//! - `platforms/<os>/policy.yaml` — which versions and variants are built,
//!   and which targets are required for a version to be available.

pub mod arch;
mod bump;
mod load;
pub mod opam;
pub mod platform;
pub mod reference;
pub mod rules;
pub mod sources;
pub mod version;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use arch::{Arch, ArchError};
pub use bump::{BumpOutcome, StagedBump, bump, stage_bump};
pub use load::{format_series, load, validate, validate_recipes};
pub use platform::{BuilderKind, OsRelease, Platform, Policy};
pub use reference::{ImageRef, ReferenceError};
pub use rules::{Rules, VariantRule};
pub use sources::{SourceDecl, Sources};
pub use version::{OcamlVersion, VersionError};

/// Every arch name Kiln knows (Docker's names, `arm32v7` for 32-bit ARM).
pub const ARCHES: [&str; 7] = [
    Arch::Amd64.as_str(),
    Arch::Arm64.as_str(),
    Arch::I386.as_str(),
    Arch::Arm32v7.as_str(),
    Arch::Ppc64le.as_str(),
    Arch::S390x.as_str(),
    Arch::Riscv64.as_str(),
];

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CatalogueError {
    pub(crate) fn invalid(
        path: &Path,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        CatalogueError::Invalid {
            path: path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The lifecycle of a release.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Trunk,
    Dev,
    Alpha,
    Beta,
    Rc,
    Released,
    EndOfLife,
}

impl Status {
    /// A release users may build on (released or end-of-life).
    pub fn is_release(self) -> bool {
        matches!(self, Status::Released | Status::EndOfLife)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub version: OcamlVersion,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<chrono::NaiveDate>,
    /// Where the status and date come from (the record, named so that it
    /// can be read again: a file at a commit, a tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One series file, `versions/<series>.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub series: OcamlVersion,
    /// Arches with a native-code compiler.
    pub native: Vec<String>,
    /// Arches with a bytecode-only compiler.
    #[serde(default)]
    pub bytecode_only: Vec<String>,
    /// Where the series' arches come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub releases: Vec<Release>,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Series {
    /// The newest release users may build on, if any.
    pub fn latest_release(&self) -> Option<&Release> {
        self.releases.iter().rev().find(|r| r.status.is_release())
    }

    /// The newest entry of any status (trunk, prerelease or release).
    pub fn newest(&self) -> Option<&Release> {
        self.releases.last()
    }

    /// Arches a compiler of this series exists for (native or bytecode).
    pub fn arches(&self) -> impl Iterator<Item = &String> {
        self.native.iter().chain(self.bytecode_only.iter())
    }
}

/// `versions/sets.yaml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sets {
    pub recent: Vec<OcamlVersion>,
    pub significant: Vec<OcamlVersion>,
}

#[derive(Debug, Clone)]
pub struct Catalogue {
    /// Sorted by series.
    pub series: Vec<Series>,
    pub sets: Sets,
    /// `versions/rules.yaml` (empty when the file is absent).
    pub rules: Rules,
    /// `versions/sources.yaml` (empty when the file is absent).
    pub sources: Sources,
    pub platforms: Vec<Platform>,
    pub versions_dir: PathBuf,
    pub platforms_dir: PathBuf,
}

impl Catalogue {
    pub fn series_of(&self, v: &OcamlVersion) -> Option<&Series> {
        self.series.iter().find(|s| s.series == v.series())
    }

    pub fn release(&self, v: &OcamlVersion) -> Option<&Release> {
        self.series_of(v)?.releases.iter().find(|r| r.version == *v)
    }

    /// The newest released version overall (`latest`).
    pub fn latest(&self) -> Option<&OcamlVersion> {
        self.series
            .iter()
            .filter_map(|s| s.latest_release())
            .map(|r| &r.version)
            .max()
    }

    /// Does release `v` have a compiler on `arch` (native or bytecode)? The
    /// series lists its arches; `rules.yaml` says from which release on
    /// (ocaml-version's `Has.arch`).
    pub fn supports(&self, v: &OcamlVersion, arch: Arch) -> bool {
        self.series_of(v)
            .is_some_and(|s| s.arches().any(|a| arch == *a))
            && self.rules.arch_since_allows(v, arch)
    }

    /// The variants of release `v` on `arch` (ocaml-version's
    /// `compiler_variants` without the plain compiler): none where `v` has
    /// no compiler on `arch`.
    pub fn variants(&self, v: &OcamlVersion, arch: Arch) -> Vec<&str> {
        match self.release(v) {
            Some(r) if self.supports(v, arch) => self.rules.variants(v, r.status, arch),
            _ => Vec::new(),
        }
    }

    /// Releases under development: the newest `trunk` or `dev` entry of
    /// each series (ocaml-version's `Releases.dev`).
    fn dev(&self) -> Vec<OcamlVersion> {
        self.series
            .iter()
            .filter_map(|s| {
                s.releases
                    .iter()
                    .rev()
                    .find(|r| matches!(r.status, Status::Trunk | Status::Dev))
            })
            .map(|r| r.version.clone())
            .collect()
    }

    /// The newest alpha, beta or rc of each release not yet released
    /// (ocaml-version's `Releases.unreleased_betas`).
    fn unreleased_betas(&self) -> Vec<OcamlVersion> {
        let mut out: Vec<OcamlVersion> = Vec::new();
        for s in &self.series {
            for r in s.releases.iter().rev() {
                let pre = matches!(r.status, Status::Alpha | Status::Beta | Status::Rc);
                let released = s
                    .releases
                    .iter()
                    .any(|x| x.status.is_release() && x.version.release() == r.version.release());
                if pre && !released && !out.iter().any(|o| o.release() == r.version.release()) {
                    out.push(r.version.clone());
                }
            }
        }
        out.sort();
        out
    }

    /// Resolve a set name (`latest`, `recent`, `significant`, `all`, `dev`,
    /// `unreleased_betas`) or a series (`5.5`) or a version (`5.5.0`) into
    /// release versions.
    pub fn select(&self, name: &str) -> Result<Vec<OcamlVersion>, String> {
        let latest_of = |series: &[OcamlVersion]| -> Vec<OcamlVersion> {
            series
                .iter()
                .filter_map(|s| self.series_of(s)?.latest_release())
                .map(|r| r.version.clone())
                .collect()
        };
        match name {
            "latest" => Ok(self.latest().cloned().into_iter().collect()),
            "recent" => Ok(latest_of(&self.sets.recent)),
            "significant" => Ok(latest_of(&self.sets.significant)),
            "dev" => Ok(self.dev()),
            "unreleased_betas" => Ok(self.unreleased_betas()),
            "all" => Ok(self
                .series
                .iter()
                .filter_map(|s| s.latest_release())
                .map(|r| r.version.clone())
                .collect()),
            other => {
                let v: OcamlVersion = other.parse().map_err(|e: VersionError| e.to_string())?;
                if v.is_series() {
                    let s = self
                        .series_of(&v)
                        .ok_or_else(|| format!("no series {v} in the catalogue"))?;
                    Ok(s.latest_release()
                        .map(|r| r.version.clone())
                        .into_iter()
                        .collect())
                } else if self.release(&v).is_some() {
                    Ok(vec![v])
                } else {
                    Err(format!("no release {v} in the catalogue"))
                }
            }
        }
    }

    pub fn platform(&self, name: &str) -> Option<&Platform> {
        self.platforms.iter().find(|p| p.platform == name)
    }
}
