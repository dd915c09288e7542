//! What the availability gate checks: one [`Requirement`] per moving tag
//! the catalogue's policy requires, and the [`Jobs`] (per-arch states) that
//! explain why something required is not there yet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::ArchState;
use super::tag::TagId;
use crate::catalogue::{Arch, OcamlVersion};

/// One required tag, derived from the catalogue and platform policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Requirement {
    pub platform: String,
    pub os: String,
    /// Full compiler version the tag must hold, e.g. `5.5.0`.
    pub ocaml: OcamlVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub repository: String,
    pub tag: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Arches that must all be published.
    pub arches: Vec<Arch>,
    /// Arches no configured builder can build.
    #[serde(default)]
    pub no_builder: Vec<Arch>,
}

impl Requirement {
    pub fn id(&self) -> TagId {
        TagId::new(&self.repository, &self.tag)
    }

    /// The lockfile key, `<repository>:<tag>`.
    pub fn key(&self) -> String {
        self.id().key()
    }

    /// The tag and its aliases.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.tag.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// Per-arch states of tags being built or failed, by [`job_key`].
pub type Jobs = BTreeMap<String, ArchState>;

/// Key of one arch of one tag in [`Jobs`]: `<repository>:<tag>/<arch>`.
pub fn job_key(id: &TagId, arch: Arch) -> String {
    format!("{id}/{arch}")
}
