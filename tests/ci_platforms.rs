//! The base images ocaml-ci and opam-repo-ci ask for, by name and arch,
//! against the tags `kiln plan` plans for the shipped catalogue.
//!
//! `tests/fixtures/upstream/ci-platforms.json` (README.md beside it gives
//! the provenance) lists each CI's platforms at its commit, each compiler
//! with its role in the CI's rule (`latest`, `4.14`, `significant`,
//! `beta`). They are carried to the shipped catalogue's state as the CI
//! would compute them with an ocaml-version that knows it: `latest` is the
//! catalogue's newest release, a `significant` series stays while the
//! catalogue's `significant` set has it, a beta goes once its release is
//! out. Every name that is left must be a tag Kiln plans, on that arch, or
//! a difference of [`CI_DIFFERENCES`]; what the carrying drops is exactly
//! [`DROPPED`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln::catalogue::{self, Catalogue, OcamlVersion};
use kiln::plan::{self, Filter};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Names a CI asks for that Kiln does not plan, on purpose: (consumer,
/// name, why).
const CI_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "opam-repo-ci",
        "opensuse-15.6-ocaml-4.14",
        "openSUSE Leap 15.6 is end-of-life and its repositories are gone; dockerfile-opam 8.3.8 \
         deprecated it and docker-base-images e18903f builds no image of it, so CI gets only the \
         stale images pushed before",
    ),
    (
        "opam-repo-ci",
        "opensuse-15.6-ocaml-5.5",
        "the same: no opensuse-15.6 image is built upstream or by Kiln",
    ),
];

/// What carrying the lists to the shipped state drops: (consumer, name at
/// the CI's commit, why).
const DROPPED: &[(&str, &str, &str)] = &[
    (
        "opam-repo-ci",
        "debian-13-ocaml-4.08",
        "4.08 was significant in ocaml-version 4.1.0 (opam-repo-ci's list), not since 4.1.1 \
         (docker-base-images e18903f no longer builds it)",
    ),
    (
        "opam-repo-ci",
        "debian-13-ocaml-5.5-beta1",
        "5.5.0 is released: no unreleased beta",
    ),
];

fn fixture() -> Value {
    let p = root().join("tests/fixtures/upstream/ci-platforms.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Every tag Kiln plans (images, aliases), with its arches.
fn kiln_names(cat: &Catalogue) -> BTreeMap<String, BTreeSet<String>> {
    let targets = plan::expand(cat, &Filter::default()).unwrap();
    plan::tags(&targets, "ocaml")
        .into_iter()
        .map(|t| {
            (
                t.tag.clone(),
                t.arches.iter().map(|a| a.to_string()).collect(),
            )
        })
        .collect()
}

/// A CI's name: `<os>-ocaml-<series>[-<prerelease>][-<variant>]`.
fn name(os: &str, series: &str, prerelease: Option<&str>, variant: Option<&str>) -> String {
    let mut n = format!("{os}-ocaml-{series}");
    for part in [prerelease, variant].into_iter().flatten() {
        n.push('-');
        n.push_str(&part.replace('+', "-"));
    }
    n
}

/// One consumer's (name, arch) at the shipped state, and what it drops.
fn carried(cat: &Catalogue, consumer: &Value) -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let latest = cat.latest().unwrap().series_tag();
    let significant: BTreeSet<String> = cat
        .sets
        .significant
        .iter()
        .map(OcamlVersion::series_tag)
        .collect();
    let betas: BTreeSet<String> = cat
        .select("unreleased_betas")
        .unwrap()
        .iter()
        .map(|v| v.series_tag())
        .collect();
    let (mut keep, mut dropped) = (BTreeSet::new(), BTreeSet::new());
    for p in consumer["platforms"].as_array().unwrap() {
        let s = |k: &str| p[k].as_str();
        let (os, series) = (s("os").unwrap(), s("series").unwrap());
        let series = match s("role").unwrap() {
            "latest" => Some(latest.clone()),
            "4.14" => Some("4.14".to_string()),
            "significant" => significant.contains(series).then(|| series.to_string()),
            "beta" => betas.contains(series).then(|| series.to_string()),
            r => panic!("unknown role {r}"),
        };
        match series {
            Some(series) => {
                keep.insert((
                    name(os, &series, s("prerelease"), s("variant")),
                    s("arch").unwrap().to_string(),
                ));
            }
            None => {
                dropped.insert(s("name").unwrap().to_string());
            }
        }
    }
    (keep, dropped)
}

#[test]
fn every_name_ci_asks_for_is_planned() {
    let cat = catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap();
    let ours = kiln_names(&cat);
    let doc = fixture();
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    let mut dropped_all = BTreeSet::new();
    for consumer in doc["consumers"].as_array().unwrap() {
        let who = consumer["name"].as_str().unwrap();
        let (keep, dropped) = carried(&cat, consumer);
        assert!(keep.len() > 20, "{who}: {} platforms", keep.len());
        dropped_all.extend(dropped.into_iter().map(|n| (who.to_string(), n)));
        for (n, arch) in keep {
            let excused = CI_DIFFERENCES.iter().find(|(c, d, _)| *c == who && *d == n);
            match (ours.get(&n), excused) {
                (Some(arches), None) if arches.contains(&arch) => {}
                (Some(arches), None) => {
                    wrong.push(format!("{who}: {n} on {arch}: Kiln plans {arches:?}"))
                }
                (None, None) => wrong.push(format!("{who}: {n} ({arch}) is not planned")),
                (Some(_), Some(_)) => {
                    wrong.push(format!("{who}: {n} is planned, the difference is stale"))
                }
                (None, Some(_)) => {
                    used.insert((who.to_string(), n));
                }
            }
        }
    }
    for (c, n, _) in CI_DIFFERENCES {
        if !used.contains(&(c.to_string(), n.to_string())) {
            wrong.push(format!("CI_DIFFERENCES: {c} {n} is not asked for"));
        }
    }
    let want: BTreeSet<(String, String)> = DROPPED
        .iter()
        .map(|(c, n, _)| (c.to_string(), n.to_string()))
        .collect();
    assert_eq!(dropped_all, want, "what the shipped state drops");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The names that changed for CI: OpenBSD by release without its dot and
/// arch, FreeBSD 15.1, and the old names still resolving as aliases.
#[test]
fn openbsd_and_freebsd_are_named_as_ci_asks_and_old_names_stay() {
    let cat = catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap();
    let targets = plan::expand(&cat, &Filter::default()).unwrap();
    let tags = plan::tags(&targets, "ocaml");
    let find = |n: &str| tags.iter().find(|t| t.tag == n);
    let img = find("openbsd-79-amd64-ocaml-5.5").expect("the image");
    assert!(img.alias_of.is_none());
    let old = find("openbsd-7.9-ocaml-5.5").expect("the old name");
    assert_eq!(old.alias_of.as_deref(), Some("openbsd-79-amd64-ocaml-5.5"));
    assert!(find("freebsd-15.1-ocaml-5.5").is_some_and(|t| t.alias_of.is_none()));
    assert_eq!(
        find("freebsd-ocaml-5.5")
            .and_then(|t| t.alias_of.clone())
            .as_deref(),
        Some("freebsd-15.1-ocaml-5.5")
    );
    assert!(find("macos-homebrew-ocaml-4.14").is_some());
}

/// OS release names of the earlier catalogue that no longer name anything,
/// on purpose: (name, why). Never an alias to another release: a pin on
/// `freebsd-14.3-ocaml-5.5` must not silently get FreeBSD 15.
const WITHDRAWN: &[(&str, &str)] = &[
    (
        "freebsd-14.3",
        "FreeBSD 14.3 reached its end of life on 2026-06-30 and neither freebsd-infra (c2349fd \
         builds 15.1) nor ocaml-ci or opam-repo-ci builds or asks for a 14.x image; its last \
         published images keep their tags (the lockfile keeps the entries no planned tag claims, \
         decision 082, and gc keeps what the lockfile references), they are only not rebuilt",
    ),
    (
        "freebsd-14",
        "the alias of freebsd-14.3: no 14.x release is built, and pointing it at 15.x would \
         change a pinned major version; it stays on 14.3's last images as above",
    ),
];

/// OS release names of the earlier catalogue now aliases of a renamed
/// release: (earlier name, the OS release it names now).
const RENAMED: &[(&str, &str)] = &[
    ("openbsd-7.9", "openbsd-79-amd64"),
    ("openbsd-7.8", "openbsd-78-amd64"),
];

fn earlier_os_names() -> Vec<String> {
    let p = root().join("tests/fixtures/earlier-os-names.txt");
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

/// The problems with the earlier names against `cat`: each earlier OS
/// name still names an OS release (the one [`RENAMED`] says, if listed)
/// and every compiler tag of that release under the earlier name is a
/// planned tag, resolving to the same image; or it is [`WITHDRAWN`], and
/// then names nothing.
fn earlier_name_problems(cat: &Catalogue) -> Vec<String> {
    let targets = plan::expand(cat, &Filter::default()).unwrap();
    let tags = plan::tags(&targets, "ocaml");
    let by_name: BTreeMap<&str, &plan::PlannedTag> =
        tags.iter().map(|t| (t.tag.as_str(), t)).collect();
    let image_of = |t: &plan::PlannedTag| t.alias_of.clone().unwrap_or_else(|| t.tag.clone());
    let earlier = earlier_os_names();
    let mut wrong = Vec::new();
    for name in &earlier {
        let release = cat
            .platforms
            .iter()
            .flat_map(|p| &p.releases)
            .find(|r| r.id == *name || r.aliases.contains(name));
        let withdrawn = WITHDRAWN.iter().any(|(n, _)| n == name);
        let Some(release) = release else {
            if !withdrawn {
                wrong.push(format!(
                    "{name}: names no OS release (withdrawn without a reason)"
                ));
            }
            continue;
        };
        if withdrawn {
            wrong.push(format!("{name}: withdrawn, but names {}", release.id));
            continue;
        }
        if let Some((_, now)) = RENAMED.iter().find(|(n, _)| n == name)
            && release.id != *now
        {
            wrong.push(format!("{name}: names {}, not {now}", release.id));
        }
        let prefix = format!("{}-ocaml-", release.id);
        let mut seen = 0;
        for t in tags.iter().filter(|t| t.tag.starts_with(&prefix)) {
            let old = format!("{name}-ocaml-{}", &t.tag[prefix.len()..]);
            match by_name.get(old.as_str()) {
                Some(o) if image_of(o) == image_of(t) => seen += 1,
                Some(o) => wrong.push(format!(
                    "{old} resolves to {}, {} to {}",
                    image_of(o),
                    t.tag,
                    image_of(t)
                )),
                None => wrong.push(format!("{old} is not planned ({} is)", t.tag)),
            }
        }
        if seen == 0 {
            wrong.push(format!("{name}: no compiler tag under it"));
        }
    }
    for (n, _) in WITHDRAWN {
        if !earlier.iter().any(|e| e == n) {
            wrong.push(format!("WITHDRAWN: {n} is not an earlier name"));
        }
    }
    for (n, _) in RENAMED {
        if !earlier.iter().any(|e| e == n) {
            wrong.push(format!("RENAMED: {n} is not an earlier name"));
        }
    }
    wrong
}

/// Whoever pinned a name of the earlier catalogue keeps it: every earlier
/// OS release name still resolves, under every compiler tag, to the same
/// image as the release's own name, or is withdrawn with its reason.
#[test]
fn every_earlier_os_name_resolves_or_is_withdrawn_with_its_reason() {
    let cat = catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap();
    let wrong = earlier_name_problems(&cat);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The check fails when an alias a user may pin is dropped, or when an
/// earlier name is made to name another OS release.
#[test]
fn a_dropped_or_moved_earlier_name_fails_the_check() {
    fn release<'a>(cat: &'a mut Catalogue, id: &str) -> &'a mut catalogue::OsRelease {
        cat.platforms
            .iter_mut()
            .flat_map(|p| p.releases.iter_mut())
            .find(|r| r.id == id)
            .unwrap()
    }
    let mut cat = catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap();
    release(&mut cat, "openbsd-79-amd64")
        .aliases
        .retain(|a| a != "openbsd-7.9");
    let wrong = earlier_name_problems(&cat);
    assert!(
        wrong
            .iter()
            .any(|w| w == "openbsd-7.9: names no OS release (withdrawn without a reason)"),
        "{wrong:?}"
    );
    // openbsd-7.8 moved onto 7.9.
    release(&mut cat, "openbsd-78-amd64")
        .aliases
        .retain(|a| a != "openbsd-7.8");
    let r = release(&mut cat, "openbsd-79-amd64");
    r.aliases.push("openbsd-7.9".into());
    r.aliases.push("openbsd-7.8".into());
    let wrong = earlier_name_problems(&cat);
    assert!(
        wrong
            .iter()
            .any(|w| w == "openbsd-7.8: names openbsd-79-amd64, not openbsd-78-amd64"),
        "{wrong:?}"
    );
}
