//! Every tag a plan publishes: each image's own tag (one multi-arch
//! index), the aliases pushed with it, and the multi-OS-version indexes
//! (`windows-all-mingw-ocaml-5.5`) whose entries are images of several OS
//! releases. `kiln plan` prints this list as text and as JSON, so the two
//! agree by construction.

use serde::Serialize;

use super::Target;
use crate::catalogue::{Arch, OcamlVersion};
use crate::model::repository;

/// What a tag names.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TagKind {
    /// An image's own tag: one multi-arch index of one OS release.
    Image,
    /// Another name of an image's index (`debian-ocaml-5.5`, `latest`).
    Alias,
    /// An index of the images of several OS releases (Windows
    /// `windows-all-<port>`), told apart by `os.version`.
    MultiOs,
}

/// One entry of a tag's index.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TagEntry {
    pub os: String,
    pub arch: Arch,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

/// One tag of the plan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlannedTag {
    /// `<namespace>/<repository>`.
    pub repository: String,
    pub tag: String,
    pub kind: TagKind,
    /// For an alias, the tag it is another name of.
    pub alias_of: Option<String>,
    pub platform: String,
    /// The compiler; `null` for a compiler-less image (`debian-13-opam`).
    pub ocaml: Option<OcamlVersion>,
    pub variant: Option<String>,
    /// The arches of its entries, each once.
    pub arches: Vec<Arch>,
    /// Required by the availability gate (an alias: its image is).
    pub required: bool,
    /// Every entry's recipe is declared reproducible: the same key built
    /// anywhere gives the same digest. The others keep their published
    /// digests by adoption of their build key.
    pub reproducible: bool,
    pub entries: Vec<TagEntry>,
}

impl PlannedTag {
    /// `repository:tag`.
    pub fn name(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

fn entry(t: &Target) -> TagEntry {
    TagEntry {
        os: t.os.clone(),
        arch: t.arch,
        os_version: t.os_version.clone(),
    }
}

/// A tag of `t`'s compiler with no entries yet.
fn fresh(t: &Target, repo: &str, tag: &str, kind: TagKind, alias_of: Option<&str>) -> PlannedTag {
    PlannedTag {
        repository: repo.to_string(),
        tag: tag.to_string(),
        kind,
        alias_of: alias_of.map(str::to_string),
        platform: t.platform.clone(),
        ocaml: t.version.clone(),
        variant: t.variant.clone(),
        arches: vec![],
        required: false,
        reproducible: true,
        entries: vec![],
    }
}

/// Add `t` to the tag named `tag` (creating it from `make`), in plan order.
fn add(
    out: &mut Vec<PlannedTag>,
    repo: &str,
    tag: &str,
    t: &Target,
    make: impl Fn() -> PlannedTag,
) {
    let i = match out
        .iter()
        .position(|p| p.repository == repo && p.tag == tag)
    {
        Some(i) => i,
        None => {
            out.push(make());
            out.len() - 1
        }
    };
    let p = &mut out[i];
    if !p.arches.contains(&t.arch) {
        p.arches.push(t.arch);
    }
    p.required |= t.required && p.kind != TagKind::MultiOs;
    p.reproducible &= t.reproducible;
    p.entries.push(entry(t));
}

/// Every tag of `targets` in `namespace`: each image's tag followed by its
/// aliases, then each multi-OS index followed by its aliases, in plan
/// order. A name planned twice appears twice (a catalogue error the
/// conformance tests look for).
pub fn tags(targets: &[Target], namespace: &str) -> Vec<PlannedTag> {
    let mut images: Vec<PlannedTag> = Vec::new();
    let mut multi: Vec<PlannedTag> = Vec::new();
    for t in targets {
        let repo = repository(namespace, &t.repository);
        let r = repo.as_str();
        add(&mut images, r, &t.tag, t, || {
            fresh(t, r, &t.tag, TagKind::Image, None)
        });
        for a in &t.aliases {
            add(&mut images, r, a, t, || {
                fresh(t, r, a, TagKind::Alias, Some(&t.tag))
            });
        }
        if let Some(m) = &t.multi_os {
            add(&mut multi, r, &m.tag, t, || {
                fresh(t, r, &m.tag, TagKind::MultiOs, None)
            });
            for a in &m.aliases {
                add(&mut multi, r, a, t, || {
                    fresh(t, r, a, TagKind::Alias, Some(&m.tag))
                });
            }
        }
    }
    images.extend(multi);
    images
}
