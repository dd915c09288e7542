//! What to do with one tag, decided from the published lockfile entry and
//! the freshly computed build keys alone: pure functions, unit-tested
//! without an engine or a registry.

use std::collections::BTreeMap;

use crate::catalogue::Arch;
use crate::lockfile::Entry;
use crate::plan::{Prepared, key};

/// The decision for one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The tag's key equals the published one: nothing to build, the
    /// digest stays.
    Unchanged {
        digest: String,
        /// Each arch's published digest.
        arches: BTreeMap<Arch, String>,
    },
    /// Build `build`; reuse the published digest of the arches in `reuse`
    /// (their own keys did not change).
    Build {
        group_key: String,
        reuse: BTreeMap<Arch, String>,
        build: Vec<Arch>,
    },
}

/// A forced rebuild: every arch built, none reused, whatever the keys.
pub fn forced(arch_keys: &BTreeMap<Arch, String>) -> Decision {
    Decision::Build {
        group_key: group_key(arch_keys),
        reuse: BTreeMap::new(),
        build: arch_keys.keys().copied().collect(),
    }
}

/// Each arch's build key.
pub fn arch_keys(prepared: &[Prepared]) -> BTreeMap<Arch, String> {
    prepared
        .iter()
        .map(|p| (p.target.arch, p.key.clone()))
        .collect()
}

/// The tag's key: the hash of its arches' keys.
pub fn group_key(arch_keys: &BTreeMap<Arch, String>) -> String {
    let by_name: BTreeMap<String, String> = arch_keys
        .iter()
        .map(|(a, k)| (a.to_string(), k.clone()))
        .collect();
    key::group_key(&by_name)
}

/// Decide from the published entry (holding this tag's compiler version,
/// if any) and the arches' keys.
pub fn decide(published: Option<&Entry>, arch_keys: &BTreeMap<Arch, String>) -> Decision {
    let group_key = group_key(arch_keys);
    if let Some(e) = published
        && e.build_key == group_key
    {
        return Decision::Unchanged {
            digest: e.digest.clone(),
            arches: arch_keys
                .keys()
                .map(|a| {
                    let d = e.arches.get(a).map(|x| x.digest.clone());
                    (*a, d.unwrap_or_default())
                })
                .collect(),
        };
    }
    let mut reuse = BTreeMap::new();
    let mut build = Vec::new();
    for (arch, k) in arch_keys {
        match published
            .and_then(|e| e.arches.get(arch))
            .filter(|a| a.build_key == *k)
        {
            Some(a) => {
                reuse.insert(*arch, a.digest.clone());
            }
            None => build.push(*arch),
        }
    }
    Decision::Build {
        group_key,
        reuse,
        build,
    }
}

/// The tag's inputs as the lockfile records them: `<arch>.<input>`.
pub fn tag_inputs(prepared: &[Prepared]) -> key::Inputs {
    let mut inputs = key::Inputs::new();
    for p in prepared {
        for (k, v) in &p.inputs {
            inputs.insert(format!("{}.{k}", p.target.arch), v.clone());
        }
    }
    inputs
}

/// Which inputs changed since the published build, and the history reason
/// the lockfile records for the move.
pub fn change_reason(published: Option<&Entry>, inputs: &key::Inputs) -> (Vec<String>, String) {
    let changed = published
        .map(|e| key::changed(&e.inputs, inputs))
        .unwrap_or_default();
    let reason = if changed.is_empty() {
        "new".to_string()
    } else {
        format!("inputs changed: {}", changed.join(", "))
    };
    (changed, reason)
}

/// Where one arch of a target stands against the published lockfile, for
/// `kiln plan --keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchStanding {
    /// Nothing of this tag, or of this arch, is published.
    Missing,
    /// The tag holds another compiler of the series.
    StaleVersion(String),
    /// Published with this very key.
    Current,
    /// Published with another key; these inputs changed.
    StaleInputs(Vec<String>),
}

impl std::fmt::Display for ArchStanding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchStanding::Missing => f.write_str("missing"),
            ArchStanding::StaleVersion(v) => write!(f, "stale: the tag holds OCaml {v}"),
            ArchStanding::Current => f.write_str("published, current"),
            ArchStanding::StaleInputs(c) => write!(f, "stale: {} changed", c.join(", ")),
        }
    }
}

/// Judge one arch (`p`'s target, key and inputs) against the entry
/// published under its tag.
pub fn standing(published: Option<&Entry>, p: &Prepared) -> ArchStanding {
    let t = &p.target;
    let Some(e) = published else {
        return ArchStanding::Missing;
    };
    if e.ocaml != t.version {
        let held = e.ocaml.as_ref().map_or("none".into(), ToString::to_string);
        return ArchStanding::StaleVersion(held);
    }
    match e.arches.get(&t.arch) {
        None => ArchStanding::Missing,
        Some(a) if a.build_key == p.key => ArchStanding::Current,
        Some(_) => {
            let prefix = format!("{}.", t.arch);
            let old: key::Inputs = e
                .inputs
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
                .collect();
            ArchStanding::StaleInputs(key::changed(&old, &p.inputs))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockfile::ArchEntry;
    use crate::lockfile::tests::entry;

    fn keys(pairs: &[(Arch, &str)]) -> BTreeMap<Arch, String> {
        pairs.iter().map(|(a, k)| (*a, k.to_string())).collect()
    }

    fn published(pairs: &[(Arch, &str)]) -> Entry {
        let mut e = entry("debian-13-ocaml-5.5", 1);
        e.arches = pairs
            .iter()
            .map(|(a, k)| {
                let arch = ArchEntry {
                    digest: format!("sha256:{a}"),
                    build_key: k.to_string(),
                    size: None,
                };
                (*a, arch)
            })
            .collect();
        e.build_key = group_key(&keys(pairs));
        e
    }

    #[test]
    fn nothing_published_builds_every_arch() {
        let k = keys(&[(Arch::Amd64, "a"), (Arch::Arm64, "b")]);
        let Decision::Build { reuse, build, .. } = decide(None, &k) else {
            panic!("must build")
        };
        assert!(reuse.is_empty());
        assert_eq!(build, [Arch::Amd64, Arch::Arm64]);
    }

    #[test]
    fn same_keys_change_nothing() {
        let e = published(&[(Arch::Amd64, "a"), (Arch::Arm64, "b")]);
        let k = keys(&[(Arch::Amd64, "a"), (Arch::Arm64, "b")]);
        assert_eq!(
            decide(Some(&e), &k),
            Decision::Unchanged {
                digest: e.digest.clone(),
                arches: BTreeMap::from([
                    (Arch::Amd64, "sha256:amd64".to_string()),
                    (Arch::Arm64, "sha256:arm64".to_string())
                ]),
            }
        );
    }

    #[test]
    fn one_changed_arch_is_rebuilt_and_the_other_reused() {
        let e = published(&[(Arch::Amd64, "a"), (Arch::Arm64, "b")]);
        let k = keys(&[(Arch::Amd64, "a"), (Arch::Arm64, "b2")]);
        let Decision::Build {
            reuse,
            build,
            group_key: g,
        } = decide(Some(&e), &k)
        else {
            panic!("must build")
        };
        assert_eq!(
            reuse,
            BTreeMap::from([(Arch::Amd64, "sha256:amd64".into())])
        );
        assert_eq!(build, [Arch::Arm64]);
        assert_ne!(g, e.build_key);
    }

    #[test]
    fn an_added_arch_changes_the_tag_key() {
        let e = published(&[(Arch::Amd64, "a")]);
        let k = keys(&[(Arch::Amd64, "a"), (Arch::S390x, "c")]);
        let Decision::Build { reuse, build, .. } = decide(Some(&e), &k) else {
            panic!("must build")
        };
        assert_eq!(reuse.len(), 1);
        assert_eq!(build, [Arch::S390x]);
    }

    /// `arch`'s prepared target of the tag, with `key` and `inputs`.
    fn prepared(arch: Arch, key: &str, inputs: &[(&str, &str)]) -> Prepared {
        Prepared {
            target: crate::plan::fixture::target("debian-13-ocaml-5.5", arch),
            inputs: inputs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            key: key.to_string(),
            recipes: vec![],
        }
    }

    #[test]
    fn each_arch_is_judged_by_its_own_key() {
        let p = [
            prepared(Arch::Amd64, "a", &[]),
            prepared(Arch::Arm64, "b", &[]),
        ];
        assert_eq!(
            arch_keys(&p),
            keys(&[(Arch::Amd64, "a"), (Arch::Arm64, "b")])
        );
    }

    #[test]
    fn the_tag_key_is_the_group_key_of_its_arch_names_and_keys() {
        let k = keys(&[(Arch::Amd64, "a"), (Arch::Arm64, "b")]);
        let by_name = BTreeMap::from([
            ("amd64".to_string(), "a".to_string()),
            ("arm64".to_string(), "b".to_string()),
        ]);
        assert_eq!(group_key(&k), key::group_key(&by_name));
        let swapped = keys(&[(Arch::Amd64, "b"), (Arch::Arm64, "a")]);
        assert_ne!(group_key(&k), group_key(&swapped));
    }

    #[test]
    fn the_tag_records_each_input_under_its_arch() {
        let p = [
            prepared(Arch::Amd64, "a", &[("ocaml", "5.5.0")]),
            prepared(Arch::Arm64, "b", &[("ocaml", "5.5.0"), ("parent", "p")]),
        ];
        let names: Vec<_> = tag_inputs(&p).into_iter().collect();
        assert_eq!(
            names,
            [
                ("amd64.ocaml".to_string(), "5.5.0".to_string()),
                ("arm64.ocaml".to_string(), "5.5.0".to_string()),
                ("arm64.parent".to_string(), "p".to_string()),
            ]
        );
    }

    #[test]
    fn an_arch_of_an_unpublished_tag_is_missing() {
        let p = prepared(Arch::Amd64, "a", &[]);
        assert_eq!(standing(None, &p), ArchStanding::Missing);
    }

    #[test]
    fn an_arch_the_published_tag_lacks_is_missing() {
        let e = published(&[(Arch::Amd64, "a")]);
        let p = prepared(Arch::Arm64, "b", &[]);
        assert_eq!(standing(Some(&e), &p), ArchStanding::Missing);
    }

    #[test]
    fn an_arch_published_with_its_key_is_current() {
        let e = published(&[(Arch::Amd64, "a"), (Arch::Arm64, "b")]);
        let p = prepared(Arch::Arm64, "b", &[]);
        assert_eq!(standing(Some(&e), &p), ArchStanding::Current);
    }

    #[test]
    fn a_tag_holding_another_compiler_is_stale_whatever_the_keys() {
        let mut e = published(&[(Arch::Amd64, "a")]);
        e.ocaml = Some("5.5.1".parse().unwrap());
        let p = prepared(Arch::Amd64, "a", &[]);
        assert_eq!(
            standing(Some(&e), &p),
            ArchStanding::StaleVersion("5.5.1".into())
        );
        e.ocaml = None;
        assert_eq!(
            standing(Some(&e), &p),
            ArchStanding::StaleVersion("none".into())
        );
    }

    #[test]
    fn an_arch_published_with_another_key_names_only_its_own_changed_inputs() {
        let mut e = published(&[(Arch::Amd64, "a"), (Arch::Arm64, "b")]);
        e.inputs = BTreeMap::from([
            ("amd64.ocaml".to_string(), "5.5.0".to_string()),
            ("amd64.parent".to_string(), "old".to_string()),
            ("arm64.parent".to_string(), "other".to_string()),
        ]);
        let p = prepared(Arch::Amd64, "a2", &[("ocaml", "5.5.0"), ("parent", "new")]);
        assert_eq!(
            standing(Some(&e), &p),
            ArchStanding::StaleInputs(vec!["parent".into()])
        );
    }

    #[test]
    fn each_standing_reads_as_plan_keys_prints_it() {
        let shown = [
            ArchStanding::Missing,
            ArchStanding::StaleVersion("5.4.1".into()),
            ArchStanding::Current,
            ArchStanding::StaleInputs(vec!["parent".into(), "recipe:Dockerfile".into()]),
        ]
        .map(|s| s.to_string());
        assert_eq!(
            shown,
            [
                "missing",
                "stale: the tag holds OCaml 5.4.1",
                "published, current",
                "stale: parent, recipe:Dockerfile changed",
            ]
        );
    }

    #[test]
    fn the_reason_names_changed_inputs() {
        let mut e = entry("t", 1);
        e.inputs = BTreeMap::from([("amd64.parent_digest".to_string(), "x".to_string())]);
        let now = BTreeMap::from([("amd64.parent_digest".to_string(), "y".to_string())]);
        let (changed, reason) = change_reason(Some(&e), &now);
        assert_eq!(changed, ["amd64.parent_digest"]);
        assert_eq!(reason, "inputs changed: amd64.parent_digest");
        assert_eq!(change_reason(None, &now).1, "new");
    }
}
