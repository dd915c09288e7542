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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::IndexTag;
    use crate::plan::fixture::target;

    /// Two arches of Debian 13 (aliased), and one of Debian 12.
    fn debian() -> Vec<Target> {
        let mut amd = target("debian-13-ocaml-5.5", Arch::Amd64);
        amd.aliases = vec!["debian-ocaml-5.5".into()];
        let mut arm = amd.clone();
        arm.arch = Arch::Arm64;
        let mut old = target("debian-12-ocaml-5.5", Arch::Amd64);
        old.os = "debian-12".into();
        vec![amd, arm, old]
    }

    /// A Windows release `os` (build `version`) of the multi-OS index.
    fn windows(os: &str, version: &str) -> Target {
        let mut t = target(&format!("{os}-mingw-ocaml-5.5"), Arch::Amd64);
        t.platform = "windows".into();
        t.os = os.into();
        t.os_version = Some(version.into());
        t.multi_os = Some(IndexTag {
            tag: "windows-all-mingw-ocaml-5.5".into(),
            aliases: vec!["windows-mingw-ocaml-5.5".into()],
        });
        t
    }

    fn names(tags: &[PlannedTag]) -> Vec<String> {
        tags.iter().map(PlannedTag::name).collect()
    }

    #[test]
    fn each_image_tag_comes_once_followed_by_its_aliases() {
        let tags = tags(&debian(), "kiln");
        assert_eq!(
            names(&tags),
            [
                "kiln/opam:debian-13-ocaml-5.5",
                "kiln/opam:debian-ocaml-5.5",
                "kiln/opam:debian-12-ocaml-5.5",
            ]
        );
        let kinds: Vec<_> = tags
            .iter()
            .map(|t| (t.kind, t.alias_of.as_deref()))
            .collect();
        assert_eq!(
            kinds,
            [
                (TagKind::Image, None),
                (TagKind::Alias, Some("debian-13-ocaml-5.5")),
                (TagKind::Image, None),
            ]
        );
    }

    #[test]
    fn a_tag_holds_an_entry_per_target_and_each_arch_once() {
        let tags = tags(
            &[
                windows("windows-server-2022", "10.0.20348"),
                windows("windows-server-2025", "10.0.26100"),
            ],
            "kiln",
        );
        assert_eq!(
            names(&tags),
            [
                "kiln/opam:windows-server-2022-mingw-ocaml-5.5",
                "kiln/opam:windows-server-2025-mingw-ocaml-5.5",
                "kiln/opam:windows-all-mingw-ocaml-5.5",
                "kiln/opam:windows-mingw-ocaml-5.5",
            ]
        );
        let multi = &tags[2];
        assert_eq!(multi.kind, TagKind::MultiOs);
        assert_eq!(multi.arches, [Arch::Amd64]);
        assert_eq!(
            multi.entries,
            [
                TagEntry {
                    os: "windows-server-2022".into(),
                    arch: Arch::Amd64,
                    os_version: Some("10.0.20348".into()),
                },
                TagEntry {
                    os: "windows-server-2025".into(),
                    arch: Arch::Amd64,
                    os_version: Some("10.0.26100".into()),
                },
            ]
        );
        assert_eq!(
            tags[3].alias_of.as_deref(),
            Some("windows-all-mingw-ocaml-5.5")
        );
        assert_eq!(tags[3].entries.len(), 2);
        let debian = super::tags(&debian(), "kiln");
        assert_eq!(debian[0].arches, [Arch::Amd64, Arch::Arm64]);
        assert_eq!(debian[0].entries.len(), 2);
    }

    #[test]
    fn a_tag_is_required_when_one_of_its_entries_is_but_a_multi_os_index_never() {
        let mut targets = debian();
        targets[1].required = false;
        targets[2].required = false;
        targets.push(windows("windows-server-2022", "10.0.20348"));
        // Not pinned here: the multi-OS index's alias, marked required like
        // an image's alias although the index it names never is.
        let required: Vec<_> = tags(&targets, "kiln")
            .into_iter()
            .filter(|t| t.tag != "windows-mingw-ocaml-5.5")
            .map(|t| (t.tag, t.required))
            .collect();
        assert_eq!(
            required,
            [
                ("debian-13-ocaml-5.5".to_string(), true),
                ("debian-ocaml-5.5".to_string(), true),
                ("debian-12-ocaml-5.5".to_string(), false),
                ("windows-server-2022-mingw-ocaml-5.5".to_string(), true),
                ("windows-all-mingw-ocaml-5.5".to_string(), false),
            ]
        );
    }

    #[test]
    fn a_tag_of_two_required_entries_is_required() {
        let tags = tags(&debian(), "kiln");
        assert!(tags[0].required && tags[1].required);
    }

    #[test]
    fn a_tag_is_reproducible_only_when_every_entry_is() {
        let mut targets = debian();
        targets[1].reproducible = false;
        let reproducible: Vec<_> = tags(&targets, "kiln")
            .into_iter()
            .map(|t| t.reproducible)
            .collect();
        assert_eq!(reproducible, [false, false, true]);
    }

    #[test]
    fn tags_of_one_name_in_two_repositories_are_two_tags() {
        let mut targets = debian();
        targets[1].repository = "opam-staging".into();
        targets[1].aliases.clear();
        let tags = tags(&targets, "");
        assert_eq!(
            names(&tags),
            [
                "opam:debian-13-ocaml-5.5",
                "opam:debian-ocaml-5.5",
                "opam-staging:debian-13-ocaml-5.5",
                "opam:debian-12-ocaml-5.5",
            ]
        );
        assert_eq!(tags[0].arches, [Arch::Amd64]);
    }
}
