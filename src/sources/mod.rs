//! The source mirror: every external input of a build, fetched once into
//! the registry and served to builds by Kiln, so that a build needs no
//! GitHub and no network but the distro's package mirror.
//!
//! What is mirrored:
//! - the sources declared in `versions/sources.yaml` (opam source
//!   tarballs, OS install sets, …), each pinned by sha256;
//! - the archives of the opam packages a target installs (the compiler),
//!   pinned by their opam file's own `url { checksum }` at the
//!   opam-repository commit in use ([`opam`]);
//! - the opam-repository itself at that commit, as a git bundle (pinned by
//!   the commit: git's own content address);
//! - the git sources of `versions/sources.yaml` (`git:`: a remote, a branch
//!   and the commit it was declared at), each a bundle of that commit
//!   ([`git`]), served as `{{sources_url}}/<name>.bundle`.
//!
//! In the registry, repository `<namespace>/kiln-sources`, each source is
//! an OCI artifact of one layer (the file, byte for byte) tagged
//! `sha256-<hex>` (`opam-repository-<commit>`, `git-<name>-<commit>` for
//! bundles): content
//! addressed, so a tag is never moved. Builds get them through a local
//! cache (`<state>/sources/`, every file checked against its digest) and a
//! per-build HTTP server ([`serve`]) that lays them out as
//! `{{sources_url}}/<name>`, `{{sources_url}}/opam-repository.bundle` and
//! `{{sources_url}}/opam-cache/<kind>/<xx>/<hex>` (opam's archive-mirror
//! layout, so `opam switch create` finds archives by checksum).
//!
//! Declaring: an OpenBSD release's sets are declared from its
//! signify-verified `SHA256.sig` ([`declare`], [`signify`]); a git source
//! at the commit its branch names now ([`declare_git`]).

pub mod declare;
pub mod declare_git;
pub mod fetch;
pub mod git;
mod mirror;
pub mod opam;
pub mod proxy;
pub mod serve;
pub mod signify;

use std::path::PathBuf;

use crate::model::FailureKind;
use crate::registry::RegistryError;

pub use mirror::{Mirror, Present, SyncOutcome, SyncReport};
pub use opam::{Archive, Checksum};
pub use proxy::SourceProxy;
pub use serve::{SourceServer, Tree};

/// The registry repository under the namespace that holds the mirror.
pub const REPOSITORY: &str = "kiln-sources";
/// The artifact type of a mirrored source.
pub const ARTIFACT: &str = "application/vnd.ocaml.kiln.source.v1";
/// The layer media type: the file as it was fetched.
pub const LAYER: &str = "application/octet-stream";
/// Where recipes find the opam-repository bundle and opam's archive mirror.
pub use crate::catalogue::sources::{BUNDLE as BUNDLE_NAME, OPAM_CACHE};

/// The source-mirror inputs of a target's recipes: declared sources (their
/// sha256 are build inputs), opam's archive cache (the archives of the
/// target's opam packages, pinned by their opam files at the keyed commit)
/// and the opam-repository bundle (pinned by that commit). `plan` reads
/// them from the recipes; builders serve them.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct Uses {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::catalogue::SourceDecl>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub opam_cache: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bundle: bool,
    /// Git sources (their commits are build inputs; one not declared at a
    /// commit refuses the target, naming the command that declares it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub git: Vec<crate::catalogue::sources::GitSource>,
}

impl Uses {
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && !self.opam_cache && !self.bundle && self.git.is_empty()
    }

    /// The first git source not declared at a commit, if any.
    pub fn undeclared(&self) -> Option<&crate::catalogue::sources::GitSource> {
        self.git.iter().find(|g| g.commit.is_none())
    }
}

/// One thing to have in the mirror: a name it is served under, where it
/// comes from, and the checksum that pins it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Wanted {
    pub name: String,
    pub url: String,
    pub checksum: Checksum,
    /// Where it was declared (`versions/sources.yaml`, an opam file).
    pub declared_in: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error(
        "source {name} (declared in {declared_in}) is not in the source mirror {repository}; run `kiln sources sync`"
    )]
    Missing {
        name: String,
        declared_in: String,
        repository: String,
    },
    #[error(
        "source {name} (declared in {declared_in}): checksum mismatch for {url}: declared {expected}, got {actual}; nothing was mirrored"
    )]
    Checksum {
        name: String,
        declared_in: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("source {name} (declared in {declared_in}): fetching {url}: {message}")]
    Fetch {
        name: String,
        declared_in: String,
        url: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Opam { path: String, message: String },
    #[error("opam-repository: {0}")]
    Git(String),
    /// Fetching or bundling a git source (retried).
    #[error("git source {0}")]
    GitRepo(String),
    /// A git source's declared commit is not what its remote holds.
    #[error("git source {0}")]
    GitPin(String),
    #[error(
        "source {name} is not declared at a commit (versions/sources.yaml, git); on a machine that reaches its remote, run `{command}`"
    )]
    Undeclared { name: String, command: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl SourcesError {
    pub fn kind(&self) -> FailureKind {
        match self {
            // Fetching from an upstream or talking to the registry can
            // succeed on a retry; a declaration cannot fix itself.
            SourcesError::Fetch { .. }
            | SourcesError::Io { .. }
            | SourcesError::Git(_)
            | SourcesError::GitRepo(_) => FailureKind::Infra,
            SourcesError::Registry(e) => e.kind(),
            SourcesError::Missing { .. }
            | SourcesError::Checksum { .. }
            | SourcesError::Undeclared { .. }
            | SourcesError::GitPin(_)
            | SourcesError::Opam { .. } => FailureKind::Recipe,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SourcesError {
        let path = path.into();
        move |source| SourcesError::Io { path, source }
    }
}

/// Everything a build with these uses needs from the mirror: the declared
/// sources, and with `opam_cache` the archives of `packages` at `commit`.
/// The bundle is asked for apart ([`Mirror::bundle_present`]).
pub async fn wanted(
    config: &crate::config::Config,
    declared: &[crate::catalogue::SourceDecl],
    opam_cache: bool,
    packages: &[String],
    commit: &str,
) -> Result<Vec<Wanted>, SourcesError> {
    let sources_yaml = config.versions_dir.join("sources.yaml");
    let mut out: Vec<Wanted> = declared
        .iter()
        .map(|d| Wanted {
            name: d.name.clone(),
            url: d.url.clone(),
            checksum: Checksum::Sha256(d.sha256.clone()),
            declared_in: sources_yaml.display().to_string(),
        })
        .collect();
    if opam_cache {
        for a in opam::archives(config, commit, packages).await? {
            let file = a.url.rsplit('/').next().unwrap_or("archive").to_string();
            out.push(Wanted {
                name: format!("opam/{}/{file}", a.package),
                declared_in: {
                    let pkg = a.package.split('/').next().unwrap_or_default();
                    let name = pkg.split_once('.').map(|(n, _)| n).unwrap_or(pkg);
                    format!("packages/{name}/{pkg}/opam at {commit}")
                },
                url: a.url,
                checksum: a.checksum,
            });
        }
    }
    Ok(out)
}

/// The tree one build is served: everything a target with these `uses`
/// takes from the mirror (its declared sources, with opam's cache the
/// archives of `packages` at `commit`, and the bundle of `commit`), each
/// checked present (the first missing one named, the bundle as
/// [`Mirror::require_bundle`] names it) and read through the local cache,
/// digest-checked. The Docker, QEMU and ZFS builders all serve this.
pub async fn target_tree(
    config: &crate::config::Config,
    mirror: &Mirror<'_>,
    uses: &Uses,
    packages: &[String],
    commit: &str,
) -> Result<Tree, SourcesError> {
    let wanted = wanted(config, &uses.sources, uses.opam_cache, packages, commit).await?;
    let present = mirror.check(&wanted).await?;
    let bundle = match uses.bundle {
        true => Some(mirror.require_bundle(commit).await?),
        false => None,
    };
    let mut tree = serve::tree_for(mirror, &wanted, &present, bundle.as_ref()).await?;
    for g in &uses.git {
        let p = mirror.require_git(g).await?;
        tree.insert(g.served(), mirror.materialize(&p).await?);
    }
    Ok(tree)
}
