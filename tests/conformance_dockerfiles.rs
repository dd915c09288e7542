//! Every Dockerfile docker-base-images builds (its `builds.expected` at
//! e18903f, tests/fixtures/upstream/) against Kiln's rendering of the same
//! target, fact by fact (tests/upstream/facts.rs says what a fact is:
//! parent images, every command of every RUN, file contents, `opam repo
//! add` URLs, package-manager subcommands and packages, …).
//!
//! Kiln's recipes for the catalogue at e18903f
//! (tests/fixtures/upstream/catalogue-e18903f/) are rendered as `kiln plan
//! --render` renders them: the opam image through its `opam` stage, a
//! compiler image's compiler stage against upstream's second Dockerfile.
//! The two lists of facts are matched in order; what is left on either
//! side must be a deviation of [`DEVIATIONS`], keyed by the exact fact (the
//! target's own compiler version, switch, variant, OS release and arch
//! written `{version}`, `{switch}`, `{variant}`, `{os}`, `{arch}`), each
//! with its reason and the number of Dockerfiles it is found in. A new
//! difference fails the test, and so does an entry whose count changed:
//! nothing excuses a whole instruction, a family or a Dockerfile.

mod upstream;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln::catalogue::{self, Catalogue};
use kiln::plan::{self, Filter, Target};
use upstream::deviations::{DEVIATIONS, Side};
use upstream::{builds, facts, lcs};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn builds_expected() -> PathBuf {
    root().join("tests/fixtures/upstream/builds.expected")
}

fn e18903f() -> Catalogue {
    let c = root().join("tests/fixtures/upstream/catalogue-e18903f");
    catalogue::load(&c.join("versions"), &c.join("platforms")).unwrap()
}

/// Kiln's target for one upstream Dockerfile.
fn target(cat: &Catalogue, b: &builds::Build) -> Target {
    let (version, variant) = match &b.switch {
        None => (None, None),
        Some(s) => {
            let v: catalogue::OcamlVersion = s.parse().unwrap();
            let variant = v.extra.clone();
            let plain = catalogue::OcamlVersion { extra: None, ..v };
            (
                Some(plain.to_string()),
                Some(variant.unwrap_or_else(|| plan::PLAIN_VARIANT.to_string())),
            )
        }
    };
    let filter = Filter {
        os: Some(b.os.clone()),
        arch: Some(b.arch.parse().unwrap()),
        version: version.clone(),
        variant,
        ..Filter::default()
    };
    let found: Vec<Target> = plan::expand(cat, &filter)
        .unwrap()
        .into_iter()
        .filter(|t| t.is_opam_image() == version.is_none())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "builds.expected:{}: {} Kiln targets for {}",
        b.line,
        found.len(),
        b.id()
    );
    found.into_iter().next().unwrap()
}

/// Kiln's facts for `t`: the opam image whole, a compiler image from its
/// compiler stage (`FROM opam AS compiler`) on, with the file's parser
/// directives.
fn kiln_facts(t: &Target, os: &str) -> Vec<String> {
    let text = plan::render::render(t).unwrap().remove(0).1;
    let all = facts::reduce(&text, os);
    if t.is_opam_image() {
        return all;
    }
    let stage = format!("from {os}-opam");
    let start = all
        .iter()
        .position(|f| *f == stage)
        .unwrap_or_else(|| panic!("{}: no compiler stage", t.id()));
    all.iter()
        .filter(|f| f.starts_with("directive "))
        .chain(&all[start..])
        .cloned()
        .collect()
}

/// A fact with the target's own names written as placeholders.
fn key(fact: &str, t: &Target) -> String {
    let mut subs: Vec<(String, &str)> = Vec::new();
    if let Some(v) = &t.version {
        subs.push((v.to_string(), "{version}"));
        subs.push((plan::recipe_vars::switch_name(v), "{switch}"));
    }
    if let Some(var) = &t.variant {
        subs.push((var.clone(), "{variant}"));
    }
    subs.push((t.os.clone(), "{os}"));
    subs.push((t.arch.to_string(), "{arch}"));
    let mut out = fact.to_string();
    for (from, to) in subs {
        out = out.replace(&from, to);
    }
    out
}

/// What is left of one comparison: (side, key).
fn unmatched(up: &[String], kiln: &[String], t: &Target) -> Vec<(Side, String)> {
    let (mu, mk) = lcs(up, kiln);
    let mut out = Vec::new();
    for (i, f) in up.iter().enumerate().filter(|(i, _)| !mu.contains(i)) {
        let _ = i;
        out.push((Side::Upstream, key(f, t)));
    }
    for (j, f) in kiln.iter().enumerate().filter(|(j, _)| !mk.contains(j)) {
        let _ = j;
        out.push((Side::Kiln, key(f, t)));
    }
    out
}

/// Every Dockerfile compared; per (side, key), the Dockerfiles it is left
/// over in.
fn compare(
    cat: &Catalogue,
    only_os: Option<&str>,
) -> (usize, BTreeMap<(Side, String), Vec<String>>) {
    let (all, skipped) = builds::read(&builds_expected());
    assert_eq!(skipped, 1, "the archive image");
    let mut left: BTreeMap<(Side, String), Vec<String>> = BTreeMap::new();
    let mut n = 0;
    for b in all.iter().filter(|b| only_os.is_none_or(|o| b.os == o)) {
        let t = target(cat, b);
        let up = facts::reduce(&b.text, &b.os);
        let ours = kiln_facts(&t, &b.os);
        let mut seen = std::collections::BTreeSet::new();
        for k in unmatched(&up, &ours, &t) {
            if seen.insert(k.clone()) {
                left.entry(k).or_default().push(b.id());
            }
        }
        n += 1;
    }
    (n, left)
}

/// The problems of a comparison against the deviation table: unlisted
/// facts (as entries ready to be reviewed) and entries whose count is not
/// what is found.
fn problems(left: &BTreeMap<(Side, String), Vec<String>>, whole: bool) -> Vec<String> {
    let mut out = Vec::new();
    for ((side, fact), where_) in left {
        let listed = DEVIATIONS
            .iter()
            .find(|d| d.side == *side && d.fact == fact);
        match listed {
            None => out.push(format!(
                "unlisted: ({side:?}, {fact:?}) in {} Dockerfiles, e.g. {}",
                where_.len(),
                where_[0]
            )),
            Some(d) if whole && d.dockerfiles != where_.len() => out.push(format!(
                "count: ({side:?}, {fact:?}) is in {} Dockerfiles, the table says {}",
                where_.len(),
                d.dockerfiles
            )),
            Some(_) => {}
        }
    }
    if whole {
        for d in DEVIATIONS {
            if !left.contains_key(&(d.side, d.fact.to_string())) {
                out.push(format!(
                    "stale: ({:?}, {:?}) is found in no Dockerfile",
                    d.side, d.fact
                ));
            }
        }
    }
    out
}

#[test]
fn every_upstream_dockerfile_matches_kilns_rendering_but_the_listed_deviations() {
    let (n, left) = compare(&e18903f(), None);
    assert_eq!(
        n, 608,
        "every Dockerfile of builds.expected but the archive image"
    );
    let p = problems(&left, true);
    assert!(p.is_empty(), "{} problems:\n{}", p.len(), p.join("\n"));
    for d in DEVIATIONS {
        assert!(!d.reason.trim().is_empty(), "{:?}: no reason", d.fact);
    }
}

/// A recipe changed in a way no deviation covers fails the comparison:
/// a package dropped from the apt image, and a command added to it.
#[test]
fn a_new_difference_fails_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = root().join("tests/fixtures/upstream/catalogue-e18903f");
    let ok = std::process::Command::new("cp")
        .args(["-rL"])
        .arg(&fixture)
        .arg(dir.path().join("c"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let apt = dir.path().join("c/platforms/linux/apt.Dockerfile");
    let text = std::fs::read_to_string(&apt).unwrap();
    let mutated = text
        .replacen(" libx11-dev bubblewrap\n", " libx11-dev\n", 1)
        .replacen(
            "RUN passwd -l opam\n",
            "RUN passwd -l opam\nRUN touch /etc/kiln\n",
            1,
        );
    assert_ne!(text, mutated);
    std::fs::write(&apt, mutated).unwrap();
    let c = dir.path().join("c");
    let cat = catalogue::load(&c.join("versions"), &c.join("platforms")).unwrap();
    let (_, left) = compare(&cat, Some("debian-13"));
    let p = problems(&left, false);
    assert!(
        p.iter()
            .any(|l| l.contains("(Upstream, \"package apt-get bubblewrap\")")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|l| l.contains("(Kiln, \"run touch /etc/kiln\")")),
        "{p:?}"
    );
}

/// Every deliberate difference a reason names is commented where it is,
/// in a recipe (`# difference(<name>)`), and each reason is used.
#[test]
fn every_difference_a_reason_names_is_in_a_recipe() {
    let mut named = std::collections::BTreeSet::new();
    for dir in ["platforms/linux", "platforms/windows"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            for l in text.lines() {
                if let Some((n, _)) = l
                    .trim()
                    .strip_prefix("# difference(")
                    .and_then(|r| r.split_once(')'))
                {
                    named.insert(n.to_string());
                }
            }
        }
    }
    for d in DEVIATIONS {
        if let Some((n, _)) = d
            .reason
            .strip_prefix("difference(")
            .and_then(|r| r.split_once(')'))
        {
            assert!(
                named.contains(n),
                "{:?}: difference({n}) is in no recipe",
                d.fact
            );
        }
    }
}
