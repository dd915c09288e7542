//! Ownership of aliases: one owner each, from the plan and the entries.

use super::*;
use crate::catalogue::{Arch, BuilderKind};
use crate::lockfile::ArchEntry;
use crate::lockfile::tests::{digest, entry};

const NS: &str = "kiln";

/// A planned tier-`tier` target of `version` on `os`, amd64, publishing
/// `tag` with `aliases`.
fn target(os: &str, tier: u8, version: &str, tag: &str, aliases: &[&str]) -> Target {
    Target {
        platform: "linux".into(),
        os: os.into(),
        distro: "debian".into(),
        tier,
        version: Some(version.parse().unwrap()),
        status: None,
        variant: None,
        arch: Arch::Amd64,
        native: true,
        builder: BuilderKind::Docker,
        recipes: vec![],
        parent: None,
        vars: Default::default(),
        opam_packages: vec![],
        repository: "opam".into(),
        tag: tag.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        required: true,
        reproducible: false,
        source_date_epoch: 0,
        os_version: None,
        multi_os: None,
        uses: Default::default(),
        smoke: vec![],
    }
}

/// A published entry of `tag` holding `version`, digest `d`, with `aliases`.
fn published(tag: &str, version: &str, d: u8, aliases: &[&str]) -> Entry {
    let mut e = entry(tag, d);
    e.ocaml = Some(version.parse().unwrap());
    e.aliases = aliases.iter().map(|a| a.to_string()).collect();
    e.arches = BTreeMap::from([(
        Arch::Amd64,
        ArchEntry {
            digest: digest(d.wrapping_add(100)),
            build_key: "k".into(),
            size: None,
        },
    )]);
    e
}

fn lock(entries: Vec<Entry>) -> Lockfile {
    let mut l = Lockfile::default();
    for e in entries {
        l.entries.insert(e.key(), e);
    }
    l
}

fn of<'a>(o: &'a BTreeMap<String, Vec<String>>, tag: &str) -> Vec<&'a str> {
    o[&format!("kiln/opam:{tag}")]
        .iter()
        .map(String::as_str)
        .collect()
}

/// The plan of the withdraw-and-restore story: 4.13 and 5.5 on one tier-1
/// release, `latest` and `bb` on the newest.
fn plan_with_55() -> Vec<Target> {
    vec![
        target("bb", 1, "4.13.1", "bb-ocaml-4.13", &["busybox-ocaml-4.13"]),
        target(
            "bb",
            1,
            "5.5.0",
            "bb-ocaml-5.5",
            &["busybox-ocaml-5.5", "latest", "bb"],
        ),
    ]
}

fn plan_without_55() -> Vec<Target> {
    vec![target(
        "bb",
        1,
        "4.13.1",
        "bb-ocaml-4.13",
        &["busybox-ocaml-4.13", "latest", "bb"],
    )]
}

#[test]
fn a_withdrawn_series_loses_the_series_less_aliases_to_the_newest_remaining() {
    let l = lock(vec![
        published("bb-ocaml-4.13", "4.13.1", 1, &["busybox-ocaml-4.13"]),
        published(
            "bb-ocaml-5.5",
            "5.5.0",
            2,
            &["busybox-ocaml-5.5", "latest", "bb"],
        ),
    ]);
    let o = owners(&l, &plan_without_55(), NS);
    assert_eq!(
        of(&o, "bb-ocaml-4.13"),
        ["busybox-ocaml-4.13", "bb", "latest"]
    );
    // The withdrawn tag keeps what no planned tag claims.
    assert_eq!(of(&o, "bb-ocaml-5.5"), ["busybox-ocaml-5.5"]);
}

#[test]
fn a_restored_series_takes_them_back_even_from_a_lockfile_that_drifted() {
    // Both entries claim `latest` and `bb`: what the old code left.
    let l = lock(vec![
        published(
            "bb-ocaml-4.13",
            "4.13.1",
            1,
            &["busybox-ocaml-4.13", "latest", "bb"],
        ),
        published(
            "bb-ocaml-5.5",
            "5.5.0",
            2,
            &["busybox-ocaml-5.5", "latest", "bb"],
        ),
    ]);
    let o = owners(&l, &plan_with_55(), NS);
    assert_eq!(of(&o, "bb-ocaml-4.13"), ["busybox-ocaml-4.13"]);
    assert_eq!(
        of(&o, "bb-ocaml-5.5"),
        ["busybox-ocaml-5.5", "latest", "bb"]
    );
    assert!(contested(&l).len() == 2, "{:?}", contested(&l));
}

#[test]
fn series_less_aliases_wait_for_the_whole_tier1_set() {
    let mut plan = plan_with_55();
    plan.push(target("stable", 1, "5.5.0", "stable-ocaml-5.5", &[]));
    plan.push(target("stable", 1, "4.13.1", "stable-ocaml-4.13", &[]));
    let l = lock(vec![
        published(
            "bb-ocaml-4.13",
            "4.13.1",
            1,
            &["busybox-ocaml-4.13", "latest", "bb"],
        ),
        published("bb-ocaml-5.5", "5.5.0", 2, &[]),
        published("stable-ocaml-4.13", "4.13.1", 3, &[]),
    ]);
    let o = owners(&l, &plan, NS);
    // stable-ocaml-5.5 is not published: 4.13 keeps `latest`, while the
    // series alias moves with its tag at once.
    assert_eq!(
        of(&o, "bb-ocaml-4.13"),
        ["busybox-ocaml-4.13", "latest", "bb"]
    );
    assert_eq!(of(&o, "bb-ocaml-5.5"), ["busybox-ocaml-5.5"]);
    // Once it is, `latest` and `bb` move.
    let mut l = l;
    let e = published("stable-ocaml-5.5", "5.5.0", 4, &[]);
    l.entries.insert(e.key(), e);
    let o = owners(&l, &plan, NS);
    assert_eq!(of(&o, "bb-ocaml-4.13"), ["busybox-ocaml-4.13"]);
    assert_eq!(
        of(&o, "bb-ocaml-5.5"),
        ["bb", "busybox-ocaml-5.5", "latest"]
    );
}

#[test]
fn a_tier1_target_still_holding_the_previous_compiler_is_not_complete() {
    let plan = vec![
        target("bb", 1, "5.5.1", "bb-ocaml-5.5", &["latest"]),
        target("stable", 1, "5.5.1", "stable-ocaml-5.5", &[]),
        target("old", 2, "5.5.1", "old-ocaml-5.5", &[]),
    ];
    let l = lock(vec![
        published("bb-ocaml-5.5", "5.5.1", 1, &[]),
        // Published, but still 5.5.0: not the plan's compiler.
        published("stable-ocaml-5.5", "5.5.0", 2, &["latest"]),
    ]);
    assert!(!tier1_complete(&l, &plan, &"5.5.1".parse().unwrap(), NS));
    let o = owners(&l, &plan, NS);
    assert_eq!(of(&o, "stable-ocaml-5.5"), ["latest"]);
    assert!(of(&o, "bb-ocaml-5.5").is_empty());
    // Tier 2 never holds anything back.
    let l = lock(vec![
        published("bb-ocaml-5.5", "5.5.1", 1, &[]),
        published("stable-ocaml-5.5", "5.5.1", 2, &[]),
    ]);
    assert!(tier1_complete(&l, &plan, &"5.5.1".parse().unwrap(), NS));
    assert_eq!(of(&owners(&l, &plan, NS), "bb-ocaml-5.5"), ["latest"]);
}

#[test]
fn a_missing_arch_keeps_the_tier1_set_incomplete() {
    let mut arm = target("bb", 1, "5.5.0", "bb-ocaml-5.5", &["latest"]);
    arm.arch = Arch::Arm64;
    let plan = vec![target("bb", 1, "5.5.0", "bb-ocaml-5.5", &["latest"]), arm];
    let l = lock(vec![published("bb-ocaml-5.5", "5.5.0", 1, &[])]);
    assert!(!tier1_complete(&l, &plan, &"5.5.0".parse().unwrap(), NS));
    assert!(of(&owners(&l, &plan, NS), "bb-ocaml-5.5").is_empty());
}

#[test]
fn a_version_with_no_tier1_target_is_never_complete() {
    let plan = vec![target("old", 2, "5.5.0", "old-ocaml-5.5", &["latest"])];
    let l = lock(vec![published("old-ocaml-5.5", "5.5.0", 1, &[])]);
    assert!(!tier1_complete(&l, &plan, &"5.5.0".parse().unwrap(), NS));
    assert!(of(&owners(&l, &plan, NS), "old-ocaml-5.5").is_empty());
}

#[test]
fn a_variant_target_does_not_count_towards_tier1() {
    let mut flambda = target("stable", 1, "5.5.0", "stable-ocaml-5.5-flambda", &[]);
    flambda.variant = Some("flambda".into());
    let plan = vec![
        target("bb", 1, "5.5.0", "bb-ocaml-5.5", &["latest"]),
        flambda,
    ];
    let l = lock(vec![published("bb-ocaml-5.5", "5.5.0", 1, &[])]);
    assert!(tier1_complete(&l, &plan, &"5.5.0".parse().unwrap(), NS));
}

#[test]
fn a_series_alias_moves_to_its_planned_tag_once_published() {
    // The catalogue moved `debian-ocaml-5.5` from debian-12 to debian-13.
    let plan = vec![
        target("debian-12", 2, "5.5.0", "debian-12-ocaml-5.5", &[]),
        target(
            "debian-13",
            2,
            "5.5.0",
            "debian-13-ocaml-5.5",
            &["debian-ocaml-5.5"],
        ),
    ];
    let old = published("debian-12-ocaml-5.5", "5.5.0", 1, &["debian-ocaml-5.5"]);
    let l = lock(vec![old.clone()]);
    // Not published yet: the holder keeps it.
    assert_eq!(
        of(&owners(&l, &plan, NS), "debian-12-ocaml-5.5"),
        ["debian-ocaml-5.5"]
    );
    let l = lock(vec![old, published("debian-13-ocaml-5.5", "5.5.0", 2, &[])]);
    let o = owners(&l, &plan, NS);
    assert!(of(&o, "debian-12-ocaml-5.5").is_empty());
    assert_eq!(of(&o, "debian-13-ocaml-5.5"), ["debian-ocaml-5.5"]);
}

#[test]
fn of_several_holders_the_newest_compiler_keeps_an_unplanned_alias() {
    let l = lock(vec![
        published("a-ocaml-5.4", "5.4.1", 1, &["gone"]),
        published("b-ocaml-5.5", "5.5.0", 2, &["gone"]),
        published("c-ocaml-4.14", "4.14.4", 3, &["gone"]),
    ]);
    let o = owners(&l, &[], NS);
    assert_eq!(of(&o, "b-ocaml-5.5"), ["gone"]);
    assert!(of(&o, "a-ocaml-5.4").is_empty());
    assert!(of(&o, "c-ocaml-4.14").is_empty());
}

#[test]
fn of_holders_with_one_compiler_the_latest_publication_keeps_it() {
    let mut early = published("a-ocaml-5.5", "5.5.0", 1, &["gone"]);
    early.published_at = chrono::Utc::now() - chrono::Duration::days(1);
    let l = lock(vec![early, published("b-ocaml-5.5", "5.5.0", 2, &["gone"])]);
    let o = owners(&l, &[], NS);
    assert_eq!(of(&o, "b-ocaml-5.5"), ["gone"]);
    assert!(of(&o, "a-ocaml-5.5").is_empty());
}

#[test]
fn an_alias_spelled_like_a_moving_tag_is_dropped() {
    let plan = vec![target("bb", 1, "5.5.0", "bb-ocaml-5.5", &["bb-ocaml-4.13"])];
    let l = lock(vec![
        published("bb-ocaml-5.5", "5.5.0", 1, &["bb-ocaml-4.13"]),
        published("bb-ocaml-4.13", "4.13.1", 2, &[]),
    ]);
    assert!(of(&owners(&l, &plan, NS), "bb-ocaml-5.5").is_empty());
}

#[test]
fn the_first_planned_tag_claims_an_alias_named_twice() {
    let plan = vec![
        target("z", 2, "5.5.0", "z-ocaml-5.5", &["x-ocaml-5.5-alias"]),
        target("a", 2, "5.5.0", "a-ocaml-5.5", &["x-ocaml-5.5-alias"]),
    ];
    let l = lock(vec![
        published("z-ocaml-5.5", "5.5.0", 1, &[]),
        published("a-ocaml-5.5", "5.5.0", 2, &[]),
    ]);
    let o = owners(&l, &plan, NS);
    assert_eq!(of(&o, "a-ocaml-5.5"), ["x-ocaml-5.5-alias"]);
    assert!(of(&o, "z-ocaml-5.5").is_empty());
}

#[test]
fn aliases_of_other_repositories_are_their_own() {
    let mut other = published("bb-ocaml-5.5", "5.5.0", 2, &["latest"]);
    other.repository = "kiln/other".into();
    let l = lock(vec![published("bb-ocaml-5.5", "5.5.0", 1, &[]), other]);
    let o = owners(&l, &plan_with_55(), NS);
    assert_eq!(o["kiln/other:bb-ocaml-5.5"], ["latest"]);
    assert!(contested(&l).is_empty());
}

#[test]
fn a_duplicate_alias_in_one_entry_is_kept_once() {
    let l = lock(vec![published(
        "bb-ocaml-5.5",
        "5.5.0",
        1,
        &["busybox-ocaml-5.5", "busybox-ocaml-5.5"],
    )]);
    let o = owners(&l, &plan_with_55(), NS);
    assert_eq!(
        of(&o, "bb-ocaml-5.5"),
        ["busybox-ocaml-5.5", "bb", "latest"]
    );
    assert!(contested(&l).is_empty());
}

#[test]
fn series_aliases_are_those_naming_a_compiler() {
    assert!(is_series_alias("debian-ocaml-5.5"));
    assert!(!is_series_alias("debian-13"));
    assert!(!is_series_alias("latest"));
}
