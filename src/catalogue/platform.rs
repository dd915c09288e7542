//! Platform definitions: `platforms/<os>/platform.yaml` and `policy.yaml`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::OcamlVersion;

/// Which builder makes a platform's outputs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BuilderKind {
    Docker,
    Zfs,
    Qemu,
}

impl BuilderKind {
    /// Every kind; the daemon schedules each, `builders::Builders`
    /// registers one builder per kind.
    pub const ALL: [BuilderKind; 3] = [BuilderKind::Docker, BuilderKind::Zfs, BuilderKind::Qemu];

    pub fn as_str(self) -> &'static str {
        match self {
            BuilderKind::Docker => "docker",
            BuilderKind::Zfs => "zfs",
            BuilderKind::Qemu => "qemu",
        }
    }
}

impl std::fmt::Display for BuilderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BuilderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<BuilderKind, String> {
        BuilderKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown builder kind {s:?}"))
    }
}

/// A range of versions an OS release cannot build (`from` ≤ v < `below`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Exclude {
    pub from: OcamlVersion,
    pub below: OcamlVersion,
    /// Why, shown by `kiln plan`.
    pub reason: String,
}

/// One smoke check of an OS release (`smoke:` in platform.yaml).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Smoke {
    pub run: String,
    pub expect: String,
}

/// One OS release of a platform (`debian-13`, `windows-server-mingw-ltsc2022`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OsRelease {
    /// Used in tags: `debian-13-ocaml-5.5`.
    pub id: String,
    /// Family name used for distro aliases (`debian`).
    pub distro: String,
    /// 1 = must build for a release to be available, 2 = required too but
    /// may lag, 3 = best effort.
    pub tier: u8,
    pub arches: Vec<String>,
    /// Other names this release answers to (`debian`, `ubuntu-lts`).
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub deprecated: bool,
    /// Recipe files, relative to `platforms/<os>/`.
    pub recipes: Vec<String>,
    /// Upstream parent image (`debian:13`), resolved to a digest at plan time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Oldest compiler this OS release builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<OcamlVersion>,
    #[serde(default)]
    pub exclude: Vec<Exclude>,
    /// Extra template variables for the recipes (`port: mingw`).
    #[serde(default)]
    pub vars: std::collections::BTreeMap<String, String>,
    /// Smoke checks on top of the builder's own (`ocaml -version`, `opam
    /// --version`): a shell command run in the built image, and text its
    /// output must contain. Both may use the recipes' `{{variables}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smoke: Vec<Smoke>,
    /// The platform's default OS release (gets the `latest` tag; one per
    /// repository).
    #[serde(default)]
    pub default: bool,
    /// The recipes are deterministic: the same build key built anywhere
    /// gives the same digest (`kiln verify --rebuild` checks it). Docker
    /// on Linux only; false for recipes that read a live mirror.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reproducible: bool,
    /// Windows: the OS version (`major.minor.build`) the image runs on, for
    /// the `os.version` of its index entries; Docker on Windows picks the
    /// entry whose build matches the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// A multi-OS-version index this release's images are also entries of
    /// (`windows-all-mingw`): tagged `<name>-ocaml-<compiler>`, and `<name>`
    /// for the newest release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_os_index: Option<String>,
}

/// Step switches: OS-release variables (`vars` in platform.yaml) that
/// turn one of ocaml-dockerfile's per-distro steps on (`"true"`) or off
/// (`"false"`, what an OS release that does not name one gets); recipes
/// write `RUN if {{switch}}; then …; fi`. Each with the upstream step it
/// stands for.
pub const STEP_SWITCHES: &[(&str, &str)] = &[
    (
        "gnu_coreutils",
        "src-opam/opam.ml `maybe_replace_uutils_coreutils` (Ubuntu 25.10, 26.04)",
    ),
    (
        "crb",
        "src-opam/opam.ml `gen_opam2_distro` `powertools_repo` (CentOS Stream 9, 10)",
    ),
    (
        "cygwin_aslr_off",
        "src-opam/opam.ml `aslr_state`, src-opam/windows.ml `run_peflags` (Windows ltsc2019)",
    ),
];

impl OsRelease {
    /// A step switch set to something other than `true` or `false`: its
    /// name and value.
    pub fn bad_switch(&self) -> Option<(&str, &str)> {
        STEP_SWITCHES.iter().find_map(|(k, _)| {
            let v = self.vars.get(*k)?;
            (v != "true" && v != "false").then_some((*k, v.as_str()))
        })
    }

    /// Why this OS release does not build `v`, if it does not.
    pub fn refuses(&self, v: &OcamlVersion) -> Option<String> {
        if let Some(min) = &self.min_version
            && v.release() < *min
        {
            return Some(format!("{} builds OCaml {min} and later", self.id));
        }
        self.exclude
            .iter()
            .find(|e| v.release() >= e.from && v.release() < e.below)
            .map(|e| e.reason.clone())
    }
}

/// `platforms/<os>/platform.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// linux, windows, macos, freebsd, openbsd.
    pub platform: String,
    pub builder: BuilderKind,
    /// Repository name inside the registry namespace (`opam`).
    pub repository: String,
    /// Whether an OS release's aliases also name its newest compiler alone
    /// (`debian`, `ubuntu-lts`) besides the release's own id (`debian-13`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bare_aliases: bool,
    pub releases: Vec<OsRelease>,
    #[serde(skip, default)]
    pub policy: Policy,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// `platforms/<os>/policy.yaml`: what is built and what is required.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// A set (`recent`, `significant`, `latest`, `all`) or a list of series.
    pub versions: Vec<String>,
    /// Variants built besides the default compiler (where the arch allows).
    #[serde(default)]
    pub variants: Vec<String>,
    /// OS releases of these tiers are required for availability.
    pub required_tiers: Vec<u8>,
    /// Whether variant tags are required too.
    #[serde(default)]
    pub require_variants: bool,
    /// Variants are built only on OS releases of these tiers.
    #[serde(default = "all_tiers")]
    pub variant_tiers: Vec<u8>,
    /// Also build each OS release's compiler-less image, `<os>-opam`: the
    /// `opam` stage of its recipe (opam and the opam-repository, no
    /// switch), docker-base-images' base image. Docker platforms only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opam_image: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn all_tiers() -> Vec<u8> {
    vec![1, 2, 3]
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            versions: vec!["recent".into()],
            variants: vec![],
            required_tiers: vec![1],
            require_variants: false,
            variant_tiers: all_tiers(),
            opam_image: false,
        }
    }
}
