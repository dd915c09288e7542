//! Conformance with upstream, against the reference data in
//! tests/fixtures/upstream/ (see its README.md for provenance):
//!
//! - the `ocaml/opam` tag set docker-base-images publishes at e18903f, with
//!   each tag's arch set, aliases, compiler and opam packages, against `kiln
//!   plan --json` of the catalogue at that state (catalogue-e18903f/);
//! - the shipped catalogue against the same set carried forward to its own
//!   state (5.5.1 released, so the beta goes and the newest-compiler names
//!   move to 5.5, which Windows now builds too);
//! - what ocurrent/ocaml-version answers per release and arch (arch
//!   support, compiler variants, opam packages) against Kiln's answers;
//! - `kiln plan`'s text and JSON list the same tags; `kiln bump` of a
//!   prerelease adds its own tags and leaves every other tag alone.
//!
//! The deliberate differences are listed here and in docs/decisions/008-deliberate-differences-from-upstream.md
//! ("Conformance with docker-base-images"), each with its reason.

mod common;
use common::Bounded;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::catalogue::{self, Arch, OcamlVersion, Status};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn upstream() -> PathBuf {
    root().join("tests/fixtures/upstream")
}

fn fixture_catalogue() -> PathBuf {
    upstream().join("catalogue-e18903f")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Upstream tags Kiln does not plan, by `kind` in opam-tags.json, and why
/// (docs/decisions/008-deliberate-differences-from-upstream.md gives the whole reason).
const NOT_PLANNED: [(&str, &str); 1] = [(
    "archive",
    "the opam source archive cache behind opam.ocaml.org: files on alpine, no opam and no \
     compiler, built from its own previous tag and every package's upstream URL, so no build \
     key can say what it holds",
)];

/// One tag as both sides describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tag {
    arches: BTreeSet<String>,
    alias_of: Option<String>,
    /// Switch as ocaml-version prints it (`4.14.3+flambda+fp`); `None` for
    /// a compiler-less `<distro>-opam` image.
    ocaml: Option<String>,
    opam_packages: Vec<String>,
    /// Windows: the releases (`ltsc2019`, …) of its entries.
    windows_releases: BTreeSet<String>,
}

/// Upstream's compiler tags (`kind: compiler`) and compiler-less images
/// (`kind: opam`); panics on a kind the deliberate differences do not name.
fn upstream_tags() -> BTreeMap<String, Tag> {
    let v = read_json(&upstream().join("opam-tags.json"));
    let mut out = BTreeMap::new();
    for (name, t) in v["tags"].as_object().unwrap() {
        let kind = t["kind"].as_str().unwrap();
        if kind != "compiler" && kind != "opam" {
            assert!(
                NOT_PLANNED.iter().any(|(k, _)| *k == kind),
                "{name}: kind {kind}"
            );
            continue;
        }
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        let windows_releases = t["platforms"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| p["windows_release"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.insert(
            name.clone(),
            Tag {
                arches: strings(&t["arches"]).into_iter().collect(),
                alias_of: t["alias_of"].as_str().map(str::to_string),
                ocaml: t["ocaml"].as_str().map(str::to_string),
                opam_packages: strings(&t["opam_packages"]),
                windows_releases,
            },
        );
    }
    out
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root())
        .args(args)
        .output_within(common::LIMIT)
        .unwrap()
}

/// `kiln plan` of a catalogue with namespace `ocaml`: stdout.
fn plan_output(versions: &Path, platforms: &Path, json: bool) -> Vec<u8> {
    let (v, p) = (
        format!("versions_dir={}", versions.display()),
        format!("platforms_dir={}", platforms.display()),
    );
    let mut args = vec![
        "--set",
        &v,
        "--set",
        &p,
        "--set",
        "registry.namespace=ocaml",
        "plan",
    ];
    if json {
        args.extend(["--json", "--targets"]);
    }
    let out = kiln(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The `ocaml/opam` tags of `kiln plan --json --targets`, described as
/// upstream describes its own.
fn kiln_tags(versions: &Path, platforms: &Path) -> BTreeMap<String, Tag> {
    let v: Value = serde_json::from_slice(&plan_output(versions, platforms, true)).unwrap();
    let mut packages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in v["targets"].as_array().unwrap() {
        let p: Vec<String> = serde_json::from_value(t["opam_packages"].clone()).unwrap();
        packages.insert(t["tag"].as_str().unwrap().to_string(), p);
    }
    let mut out = BTreeMap::new();
    for t in v["tags"].as_array().unwrap() {
        if t["repository"] != "ocaml/opam" {
            continue;
        }
        let name = t["tag"].as_str().unwrap().to_string();
        let entries = t["entries"].as_array().unwrap();
        let windows_releases = entries
            .iter()
            .filter(|e| e["os_version"].is_string())
            .map(|e| {
                let os = e["os"].as_str().unwrap();
                os.rsplit('-').next().unwrap().to_string()
            })
            .collect();
        let ocaml: Option<OcamlVersion> = serde_json::from_value(t["ocaml"].clone()).unwrap();
        let variant = t["variant"].as_str();
        // An alias's image, or a multi-OS index's first entry, has the packages.
        let image = t["alias_of"].as_str().unwrap_or(&name).to_string();
        let first_entry_tag = packages
            .get(&image)
            .cloned()
            .or_else(|| {
                let os = entries.first()?["os"].as_str()?;
                packages
                    .get(&kiln::plan::moving_tag(os, ocaml.as_ref()?, variant))
                    .cloned()
            })
            .unwrap_or_default();
        let prev = out.insert(
            name.clone(),
            Tag {
                arches: t["arches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
                alias_of: t["alias_of"].as_str().map(str::to_string),
                ocaml: ocaml.map(|v| v.with_extra(variant).to_string()),
                opam_packages: first_entry_tag,
                windows_releases,
            },
        );
        assert!(prev.is_none(), "{name} is planned twice");
    }
    out
}

/// Compare two tag sets; every difference, one per line.
fn differences(want: &BTreeMap<String, Tag>, got: &BTreeMap<String, Tag>) -> Vec<String> {
    let mut out = Vec::new();
    for (name, w) in want {
        match got.get(name) {
            None => out.push(format!("missing {name} ({:?})", w.ocaml)),
            Some(g) if g != w => out.push(format!("{name}:\n  upstream {w:?}\n  kiln     {g:?}")),
            Some(_) => {}
        }
    }
    for name in got.keys().filter(|n| !want.contains_key(*n)) {
        out.push(format!("extra {name}"));
    }
    out
}

#[test]
fn plan_of_the_e18903f_catalogue_is_upstreams_tag_set() {
    let c = fixture_catalogue();
    let got = kiln_tags(&c.join("versions"), &c.join("platforms"));
    let want = upstream_tags();
    let diff = differences(&want, &got);
    assert!(
        diff.is_empty(),
        "{} differences:\n{}",
        diff.len(),
        diff.join("\n")
    );
    assert_eq!(got.len(), 431, "432 upstream tags less archive");
    let opam: Vec<&String> = got.keys().filter(|n| n.ends_with("-opam")).collect();
    assert_eq!(opam.len(), 25, "{opam:?}");
    assert!(opam.iter().all(|n| got[*n].ocaml.is_none()));
}

/// Upstream's set carried to the shipped state (4.14.4, 5.5.1 released,
/// trunk 5.6): the 5.5 beta is no longer an unreleased beta; the 5.5
/// branch upstream built as `ocaml-variants.5.5.0+trunk` is the release
/// 5.5.1; the names of the newest compiler (`debian`, `latest`,
/// `windows-all-mingw`, …) name 5.5; Windows builds the newly significant
/// 5.5 like 5.4.
fn upstream_tags_at_the_shipped_state() -> BTreeMap<String, Tag> {
    const NEWEST: &str = "5.5.1";
    let newest_packages = || vec![format!("ocaml-base-compiler.{NEWEST}")];
    let mut out = BTreeMap::new();
    let to55 = |s: &str| s.replace("-ocaml-5.4", "-ocaml-5.5");
    for (name, mut t) in upstream_tags() {
        if name.contains("-5.5-beta1") {
            continue;
        }
        // Compiler-less images do not depend on the compilers.
        let Some(ocaml) = t.ocaml.clone() else {
            out.insert(name, t);
            continue;
        };
        let windows = !t.windows_releases.is_empty();
        let newest_alias = t.alias_of.is_some() && !name.contains("-ocaml-");
        if ocaml == "4.14.3" || ocaml.starts_with("4.14.3+") {
            t.ocaml = Some(ocaml.replace("4.14.3", "4.14.4"));
            t.opam_packages = t
                .opam_packages
                .iter()
                .map(|p| p.replace("4.14.3", "4.14.4"))
                .collect();
        }
        if ocaml == "5.5.0" || ocaml.starts_with("5.5.0+") {
            // Released: the base compiler and options packages, not +trunk.
            let variant = ocaml.strip_prefix("5.5.0+");
            t.ocaml = Some(ocaml.replace("5.5.0", NEWEST));
            t.opam_packages = kiln::catalogue::opam::packages(
                &NEWEST.parse().unwrap(),
                Status::Released,
                variant,
            );
        }
        if newest_alias {
            t.alias_of = t.alias_of.as_deref().map(to55);
            if !windows {
                t.ocaml = Some(NEWEST.into());
                t.opam_packages = newest_packages();
            }
        }
        if windows && ocaml == "5.4.1" {
            let mut t55 = t.clone();
            t55.ocaml = Some(NEWEST.into());
            t55.opam_packages = newest_packages();
            if newest_alias {
                out.insert(name.clone(), t55);
                continue;
            }
            t55.alias_of = t.alias_of.as_deref().map(to55);
            out.insert(to55(&name), t55);
        }
        out.insert(name, t);
    }
    out
}

#[test]
fn plan_of_the_shipped_catalogue_is_upstreams_tag_set_at_its_state() {
    let got = kiln_tags(&root().join("versions"), &root().join("platforms"));
    let want = upstream_tags_at_the_shipped_state();
    let diff = differences(&want, &got);
    assert!(
        diff.is_empty(),
        "{} differences:\n{}",
        diff.len(),
        diff.join("\n")
    );
}

/// Rows of ocaml-version-table.json where Kiln answers otherwise, on
/// purpose: (version, what, why).
const TABLE_DIFFERENCES: [(&str, &str, &str); 1] = [(
    "3.07+2",
    "packages",
    "upstream's compiler_variants drops the extra of a pre-4.00 version, taking the patch \
     level 3.07+2 for a variant, and names ocaml-base-compiler.3.07; Kiln installs 3.07+2",
)];

/// Every row of the ocaml-version table against `cat`; `skip_status_change`
/// skips the packages of releases whose status moved on since the table
/// (5.5.0 was under development then, is released in the shipped catalogue).
fn check_table(cat: &catalogue::Catalogue, skip_status_change: bool) -> Vec<String> {
    let table = read_json(&upstream().join("ocaml-version-table.json"));
    let versions: BTreeMap<String, &Value> = table["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_str().unwrap().to_string(), v))
        .collect();
    let mut wrong = Vec::new();
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 189);
    for row in rows {
        let vs = row["version"].as_str().unwrap();
        let v: OcamlVersion = vs.parse().unwrap();
        let arch: Arch = row["arch"].as_str().unwrap().parse().unwrap();
        let info = versions[vs];
        let release = cat
            .release(&v)
            .unwrap_or_else(|| panic!("{vs} not in the catalogue"));
        // Is this arch supported?
        let supported = row["arch_is_supported"].as_bool().unwrap();
        if cat.supports(&v, arch) != supported {
            wrong.push(format!("{vs}/{arch}: supported: upstream {supported}"));
        }
        // Which variants? Kiln's rules for the release, as trunk when
        // upstream takes it for the trunk.
        let status = if info["is_trunk"] == true {
            Status::Trunk
        } else {
            release.status
        };
        let mut kiln_variants: BTreeSet<Option<String>> = BTreeSet::from([None]);
        kiln_variants.extend(
            cat.rules
                .variants(&v, status, arch)
                .into_iter()
                .map(|s| Some(s.to_string())),
        );
        let up_variants: BTreeSet<Option<String>> =
            serde_json::from_value(row["compiler_variants"].clone()).unwrap();
        if kiln_variants != up_variants {
            wrong.push(format!(
                "{vs}/{arch}: variants: upstream {up_variants:?}, kiln {kiln_variants:?}"
            ));
        }
        // Where there is a compiler, the plan builds exactly those.
        let planned: BTreeSet<Option<String>> = std::iter::once(None)
            .chain(
                cat.variants(&v, arch)
                    .into_iter()
                    .map(|s| Some(s.to_string())),
            )
            .collect();
        if supported && planned != kiln_variants {
            wrong.push(format!("{vs}/{arch}: planned variants {planned:?}"));
        }
        // Which opam packages?
        let upstream_dev = info["is_dev"] == true;
        let kiln_dev = matches!(release.status, Status::Trunk | Status::Dev);
        if skip_status_change && upstream_dev != kiln_dev {
            continue;
        }
        for var in row["variants"].as_array().unwrap() {
            let mut up = vec![format!(
                "{}.{}",
                var["package"]["name"].as_str().unwrap(),
                var["package"]["version"].as_str().unwrap()
            )];
            up.extend(
                var["additional_packages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap().to_string()),
            );
            let ours = catalogue::opam::packages(&v, release.status, var["variant"].as_str());
            let excused = TABLE_DIFFERENCES
                .iter()
                .any(|(dv, what, _)| *dv == vs && *what == "packages");
            if ours != up && !excused {
                wrong.push(format!(
                    "{vs}/{arch}: packages: upstream {up:?}, kiln {ours:?}"
                ));
            }
        }
    }
    wrong
}

#[test]
fn kiln_answers_what_ocaml_version_answers() {
    let c = fixture_catalogue();
    let at_e18903f = catalogue::load(&c.join("versions"), &c.join("platforms")).unwrap();
    let wrong = check_table(&at_e18903f, false);
    assert!(wrong.is_empty(), "e18903f catalogue:\n{}", wrong.join("\n"));
    let shipped = catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap();
    let wrong = check_table(&shipped, true);
    assert!(wrong.is_empty(), "shipped catalogue:\n{}", wrong.join("\n"));
    // The excused difference is real: upstream does name 3.07.
    let v: OcamlVersion = "3.07+2".parse().unwrap();
    assert_eq!(
        catalogue::opam::packages(&v, Status::EndOfLife, None),
        ["ocaml-base-compiler.3.07+2"]
    );
}

/// Parse the `== tags` section of `kiln plan`'s text: name → (arches, alias_of).
fn text_tags(text: &str) -> BTreeMap<String, (Vec<String>, Option<String>)> {
    let mut out = BTreeMap::new();
    let section = text
        .split("\n\n")
        .find(|s| s.starts_with("== tags"))
        .expect("a tags section");
    for line in section.lines().skip(1) {
        let (name, rest) = line.split_once("  [").unwrap();
        let (arches, rest) = rest.split_once(']').unwrap();
        let alias_of = rest
            .split("  ")
            .find_map(|p| p.strip_prefix("= "))
            .map(str::to_string);
        let arches = arches.split(", ").map(str::to_string).collect();
        out.insert(name.to_string(), (arches, alias_of));
    }
    out
}

#[test]
fn plan_text_and_json_list_the_same_tags() {
    let (v, p) = (root().join("versions"), root().join("platforms"));
    let text = String::from_utf8(plan_output(&v, &p, false)).unwrap();
    let json: Value = serde_json::from_slice(&plan_output(&v, &p, true)).unwrap();
    let from_json: BTreeMap<String, (Vec<String>, Option<String>)> = json["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let arches = serde_json::from_value(t["arches"].clone()).unwrap();
            (
                format!(
                    "{}:{}",
                    t["repository"].as_str().unwrap(),
                    t["tag"].as_str().unwrap()
                ),
                (arches, t["alias_of"].as_str().map(str::to_string)),
            )
        })
        .collect();
    let from_text = text_tags(&text);
    assert_eq!(from_text.len(), json["tags"].as_array().unwrap().len());
    assert_eq!(from_text, from_json);
    // Required tags are the gate's: every requirement's tag, and no other image.
    let required: BTreeSet<String> = json["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["required"] == true && t["kind"] == "image")
        .map(|t| {
            format!(
                "{}:{}",
                t["repository"].as_str().unwrap(),
                t["tag"].as_str().unwrap()
            )
        })
        .collect();
    let gate: BTreeSet<String> = json["requirements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["repository"].as_str().unwrap(),
                r["tag"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(required, gate);
    assert!(gate.contains("ocaml/opam:debian-13-ocaml-5.5"));
    assert!(gate.contains("ocaml/opam:alpine-3.23-ocaml-5.5"));
    assert!(gate.contains("ocaml/opam:windows-server-mingw-ltsc2025-ocaml-5.5"));
    assert!(
        !gate.contains("ocaml/opam:ubuntu-26.04-ocaml-5.5"),
        "tier 2"
    );
}

#[test]
fn bumping_a_prerelease_adds_its_tags_and_leaves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["versions", "platforms"] {
        let ok = Command::new("cp")
            .arg("-r")
            .arg(root().join(sub))
            .arg(dir.path().join(sub))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    let (v, p) = (dir.path().join("versions"), dir.path().join("platforms"));
    let before = kiln_tags(&v, &p);
    let alpha: OcamlVersion = "5.6.0~alpha1".parse().unwrap();
    catalogue::bump(&v, &p, &alpha, None, None, false).unwrap();
    let cat = catalogue::load(&v, &p).unwrap();
    assert_eq!(
        cat.release(&"5.6.0".parse().unwrap()).unwrap().status,
        Status::Trunk,
        "the trunk stays"
    );
    let after = kiln_tags(&v, &p);
    for (name, t) in &before {
        assert_eq!(after.get(name), Some(t), "{name} changed");
    }
    let added: Vec<&String> = after.keys().filter(|n| !before.contains_key(*n)).collect();
    assert!(!added.is_empty());
    for name in &added {
        assert!(name.contains("-ocaml-5.6-alpha1"), "{name}");
        let ocaml = after[*name].ocaml.as_deref().unwrap_or_default();
        assert!(ocaml.starts_with("5.6.0~alpha1"), "{name}");
    }
    for name in [
        "debian-13-ocaml-5.6-alpha1",
        "debian-ocaml-5.6-alpha1",
        "alpine-3.23-ocaml-5.6-alpha1-flambda",
        "ubuntu-lts-ocaml-5.6-alpha1",
    ] {
        assert!(after.contains_key(name), "{name}");
    }
    assert_eq!(
        after["debian-13-ocaml-5.6-alpha1"].opam_packages,
        ["ocaml-base-compiler.5.6.0~alpha1"]
    );
    assert!(
        !added.iter().any(|n| n.starts_with("windows")),
        "Windows builds no prereleases"
    );
}

/// The shipped catalogue is current and says where each fact comes from:
/// every series names the record of its arches, every release that is
/// out has its date, and every release names the record of its date (or,
/// for the trunk, of its status). 5.5.1 (ocaml.org, opam-repository) is
/// the newest release.
#[test]
fn every_release_of_the_shipped_catalogue_has_its_date_and_source() {
    let cat = catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap();
    let mut missing = Vec::new();
    for s in &cat.series {
        let file = s.file.display();
        if s.source.as_deref().is_none_or(str::is_empty) {
            missing.push(format!("{file}: series {}: source", s.series));
        }
        for r in &s.releases {
            if r.status.is_release() && r.date.is_none() {
                missing.push(format!("{file}: {}: date", r.version));
            }
            if r.source.as_deref().is_none_or(str::is_empty) {
                missing.push(format!("{file}: {}: source", r.version));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    let newest: OcamlVersion = "5.5.1".parse().unwrap();
    assert_eq!(cat.latest(), Some(&newest));
    assert_eq!(
        cat.release(&newest).unwrap().date,
        chrono::NaiveDate::from_ymd_opt(2026, 9, 5)
    );
}
