//! The catalogue: the real data validates, the version type behaves, bad
//! input is refused with the file and field named, bump is canonical and
//! idempotent.

mod common;
use common::Bounded;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::catalogue::{self, BumpOutcome, OcamlVersion, Status};
use proptest::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn real() -> catalogue::Catalogue {
    catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap()
}

#[test]
fn real_catalogue_covers_3_07_to_5_5_and_the_matrix() {
    let cat = real();
    let v = |s: &str| s.parse::<OcamlVersion>().unwrap();
    assert_eq!(cat.series.first().unwrap().series, v("3.07"));
    for r in ["4.14.4", "5.5.0", "5.5.1", "4.02.3", "3.12.1", "5.0.0"] {
        assert!(cat.release(&v(r)).is_some(), "{r} missing");
    }
    assert_eq!(cat.latest(), Some(&v("5.5.1")));
    assert_eq!(cat.release(&v("5.6.0")).unwrap().status, Status::Trunk);
    let s55 = cat.series_of(&v("5.5.0")).unwrap();
    assert!(
        s55.bytecode_only.contains(&"i386".to_string()),
        "5.x drops native 32-bit"
    );
    assert!(
        cat.series_of(&v("4.14.4"))
            .unwrap()
            .native
            .contains(&"i386".to_string())
    );
    let recent = cat.select("recent").unwrap();
    assert!(recent.contains(&v("4.14.4")) && recent.contains(&v("5.5.1")));
    let names: Vec<&str> = cat.platforms.iter().map(|p| p.platform.as_str()).collect();
    assert_eq!(names, ["freebsd", "linux", "macos", "openbsd", "windows"]);
    let linux = cat.platform("linux").unwrap();
    for distro in [
        "debian",
        "ubuntu",
        "alpine",
        "fedora",
        "opensuse",
        "oraclelinux",
        "centos",
        "archlinux",
    ] {
        assert!(
            linux.releases.iter().any(|r| r.distro == distro),
            "{distro}"
        );
    }
    let win = cat.platform("windows").unwrap();
    let msvc = win
        .releases
        .iter()
        .find(|r| r.id == "windows-server-msvc-ltsc2022")
        .unwrap();
    assert!(msvc.refuses(&v("5.1.0")).is_some() && msvc.refuses(&v("5.3.0")).is_none());
    assert!(
        win.releases
            .iter()
            .find(|r| r.id == "windows-server-mingw-ltsc2025")
            .unwrap()
            .refuses(&v("4.12.1"))
            .is_some()
    );
}

#[test]
fn every_recipe_the_platforms_name_exists() {
    catalogue::validate_recipes(&real()).unwrap();
}

proptest! {
    #[test]
    fn version_round_trips(major in 3u32..7, minor in 0u32..30, patch in proptest::option::of(0u32..10),
                           pre in proptest::option::of((0u8..3, 0u32..5)), extra in proptest::option::of("[a-z]{1,8}(\\+[a-z]{1,5})?")) {
        let mut s = if major < 5 { format!("{major}.{minor:02}") } else { format!("{major}.{minor}") };
        if let Some(p) = patch {
            s.push_str(&format!(".{p}"));
            if let Some((k, n)) = pre {
                s.push_str(&format!("~{}{n}", ["alpha", "beta", "rc"][k as usize]));
            }
            if let Some(e) = &extra {
                s.push_str(&format!("+{e}"));
            }
        }
        let v: OcamlVersion = s.parse().unwrap();
        prop_assert_eq!(v.to_string(), s.clone());
        prop_assert_eq!(v.to_string().parse::<OcamlVersion>().unwrap(), v);
    }

    #[test]
    fn prerelease_sorts_before_release(major in 4u32..7, minor in 0u32..20, patch in 0u32..5, n in 0u32..9, k in 0usize..3) {
        let rel: OcamlVersion = format!("{major}.{minor}.{patch}").parse().unwrap();
        let pre: OcamlVersion = format!("{major}.{minor}.{patch}~{}{n}", ["alpha", "beta", "rc"][k]).parse().unwrap();
        let prev: OcamlVersion = format!("{major}.{minor}.{patch}").parse::<OcamlVersion>().map(|mut v| { v.patch = v.patch.map(|p| p.saturating_sub(1)); v }).unwrap();
        prop_assert!(pre < rel);
        if patch > 0 { prop_assert!(prev < pre); }
        prop_assert!(pre.series() == rel.series());
    }
}

/// A writable copy of the real catalogue.
fn copy() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let copy_dir = |from: &Path, to: &Path| {
        Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
    };
    copy_dir(&root().join("versions"), &dir.path().join("versions"));
    copy_dir(&root().join("platforms"), &dir.path().join("platforms"));
    let (v, p) = (dir.path().join("versions"), dir.path().join("platforms"));
    (dir, v, p)
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn bump_adds_canonically_and_is_idempotent() {
    let (_d, vd, pd) = copy();
    let v: OcamlVersion = "5.5.2".parse().unwrap();
    let date = chrono::NaiveDate::from_ymd_opt(2026, 11, 20);
    let out = catalogue::bump(&vd, &pd, &v, None, date, false).unwrap();
    assert_eq!(
        out,
        BumpOutcome::Added {
            file: vd.join("5.5.yaml")
        }
    );
    let before = snapshot(&vd);
    assert_eq!(
        catalogue::bump(&vd, &pd, &v, None, date, false).unwrap(),
        BumpOutcome::Unchanged
    );
    assert_eq!(snapshot(&vd), before, "a second bump must change nothing");
    let cat = catalogue::load(&vd, &pd).unwrap();
    assert_eq!(cat.latest().unwrap().to_string(), "5.5.2");
    // The file is in canonical form.
    let s = cat.series_of(&v).unwrap();
    assert_eq!(
        std::fs::read_to_string(vd.join("5.5.yaml")).unwrap(),
        catalogue::format_series(s).unwrap()
    );
    // A new series inherits its arches from the newest one.
    let v57: OcamlVersion = "5.7.0~alpha1".parse().unwrap();
    catalogue::bump(&vd, &pd, &v57, None, None, false).unwrap();
    let cat = catalogue::load(&vd, &pd).unwrap();
    let s57 = cat.series_of(&v57).unwrap();
    assert_eq!(s57.releases[0].status, Status::Alpha);
    assert_eq!(
        s57.native,
        cat.series_of(&"5.5".parse().unwrap()).unwrap().native
    );
    // Dry run writes nothing.
    let before = snapshot(&vd);
    catalogue::bump(&vd, &pd, &"5.5.2".parse().unwrap(), None, None, true).unwrap();
    assert_eq!(snapshot(&vd), before);
}

#[test]
fn bad_input_names_file_and_field_and_changes_nothing() {
    let (_d, vd, pd) = copy();
    let before = snapshot(&vd);
    // A release whose status contradicts its version is refused by bump.
    let e = catalogue::bump(
        &vd,
        &pd,
        &"5.5.3".parse().unwrap(),
        Some(Status::Beta),
        None,
        false,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("5.5.yaml") && e.to_string().contains("status"),
        "{e}"
    );
    assert_eq!(snapshot(&vd), before);

    // Syntax errors carry the line.
    std::fs::write(
        vd.join("5.5.yaml"),
        "series: '5.5'\nnative: [amd64\nreleases: []\n",
    )
    .unwrap();
    let e = catalogue::load(&vd, &pd).unwrap_err().to_string();
    assert!(e.contains("5.5.yaml:"), "{e}");
    // Unknown fields, arches, misplaced releases: file and field named.
    let cases = [
        (
            "series: '5.5'\nnative: [amd64]\nreleases: [{version: '5.5.0', status: released}]\ncolour: red\n",
            "colour",
        ),
        (
            "series: '5.5'\nnative: [amd65]\nreleases: [{version: '5.5.0', status: released}]\n",
            "native[0]",
        ),
        (
            "series: '5.5'\nnative: [amd64]\nreleases: [{version: '5.4.0', status: released}]\n",
            "releases[0].version",
        ),
        (
            "series: '5.5'\nnative: [amd64]\nreleases: [{version: '5.5.1', status: released}, {version: '5.5.0', status: released}]\n",
            "releases[1].version",
        ),
        (
            "series: '5.5'\nnative: [amd64]\nreleases: [{version: '5.5.0+flambda', status: released}]\n",
            "releases[0].version",
        ),
    ];
    for (text, field) in cases {
        std::fs::write(vd.join("5.5.yaml"), text).unwrap();
        let e = catalogue::load(&vd, &pd).unwrap_err().to_string();
        assert!(e.contains("5.5.yaml") && e.contains(field), "{field}: {e}");
    }
    std::fs::write(
        vd.join("5.5.yaml"),
        &before
            .iter()
            .find(|(p, _)| p.ends_with("5.5.yaml"))
            .unwrap()
            .1,
    )
    .unwrap();
    // rules.yaml: the entry named.
    let rules = std::fs::read_to_string(vd.join("rules.yaml")).unwrap();
    std::fs::write(
        vd.join("rules.yaml"),
        rules.replace("{ name: nnp, from: '4.12'", "{ name: nnp, from: '4.12.1'"),
    )
    .unwrap();
    let e = catalogue::load(&vd, &pd).unwrap_err().to_string();
    assert!(
        e.contains("rules.yaml") && e.contains("variants[7].from"),
        "{e}"
    );
    std::fs::write(vd.join("rules.yaml"), rules).unwrap();
    // Platform errors too.
    let lp = pd.join("linux/platform.yaml");
    let orig = std::fs::read_to_string(&lp).unwrap();
    std::fs::write(
        &lp,
        orig.replace("tier: 1\n    default: true", "tier: 7\n    default: true"),
    )
    .unwrap();
    let e = catalogue::load(&vd, &pd).unwrap_err().to_string();
    assert!(
        e.contains("linux/platform.yaml") && e.contains("releases[0].tier"),
        "{e}"
    );
    std::fs::write(&lp, orig.replace("aliases: [alpine]", "aliases: [debian]")).unwrap();
    let e = catalogue::load(&vd, &pd).unwrap_err().to_string();
    assert!(e.contains("debian already names"), "{e}");
    std::fs::write(&lp, &orig).unwrap();
    // Only Linux images from the docker builder are made reproducible.
    let mp = pd.join("macos/platform.yaml");
    let mac = std::fs::read_to_string(&mp).unwrap();
    let (head, rest) = mac.split_once("\n  - id: ").unwrap();
    std::fs::write(
        &mp,
        format!("{head}\n  - reproducible: true\n    id: {rest}"),
    )
    .unwrap();
    let e = catalogue::load(&vd, &pd).unwrap_err().to_string();
    assert!(
        e.contains("macos/platform.yaml") && e.contains("releases[0].reproducible"),
        "{e}"
    );
}

#[test]
fn cli_bump_and_validate() {
    let (d, _vd, _pd) = copy();
    let config = d.path().join("kiln.toml");
    std::fs::write(&config, "").unwrap();
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output_within(common::LIMIT)
            .unwrap()
    };
    let out = kiln(&["bump", "5.5.2", "4.14.5", "--date", "2026-11-20", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["change"], "added");
    assert_eq!(v[1]["change"], "added");
    let out = kiln(&["bump", "5.5.2", "--date", "2026-11-20"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));
    // One bad version in the list: nothing is written.
    let before = snapshot(&d.path().join("versions"));
    let out = kiln(&["bump", "5.5.3", "5.x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"5.x\""));
    assert_eq!(snapshot(&d.path().join("versions")), before);
}

/// Set the catalogue back to 5.5.0 / 4.14.3, bump 5.5.1 and 4.14.4 with
/// their dates and sources, and get exactly the shipped files back.
#[test]
fn bump_reproduces_the_5_5_1_and_4_14_4_releases() {
    let (d, vd, pd) = copy();
    let config = d.path().join("kiln.toml");
    std::fs::write(&config, "").unwrap();
    for (file, version) in [("5.5.yaml", "5.5.1"), ("4.14.yaml", "4.14.4")] {
        let shipped = std::fs::read_to_string(vd.join(file)).unwrap();
        let mut s: kiln::catalogue::Series = serde_norway::from_str(&shipped).unwrap();
        let r = s
            .releases
            .iter()
            .find(|r| r.version.to_string() == version)
            .cloned()
            .unwrap();
        s.releases.retain(|r| r.version.to_string() != version);
        s.file = vd.join(file);
        std::fs::write(vd.join(file), catalogue::format_series(&s).unwrap()).unwrap();
        // The release manager's command, with the record the date comes from.
        let date = r.date.unwrap().to_string();
        let source = r.source.clone().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&config)
            .args(["bump", version, "--date", &date, "--source", &source])
            .output_within(common::LIMIT)
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(vd.join(file)).unwrap(), shipped);
    }
    let cat = catalogue::load(&vd, &pd).unwrap();
    assert_eq!(cat.latest().unwrap().to_string(), "5.5.1");
}

#[test]
fn catalogue_show_and_list() {
    let kiln = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root())
            .args(args)
            .output_within(common::LIMIT)
            .unwrap()
    };
    let out = kiln(&["catalogue", "show", "5.5.1", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "released");
    assert_eq!(v["latest"], true);
    assert!(
        v["source"]
            .as_str()
            .unwrap()
            .contains("data/releases/5.5.1.md")
    );
    assert_eq!(
        v["opam_packages"]["default"][0],
        "ocaml-base-compiler.5.5.1"
    );
    assert_eq!(
        v["opam_packages"]["flambda"][1],
        "ocaml-options-only-flambda"
    );
    let msvc = v["os_releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["os"] == "windows-server-msvc-ltsc2022")
        .unwrap();
    assert_eq!(msvc["builds"], true);
    let out = kiln(&["catalogue", "show", "5.1.1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let msvc = v["os_releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["os"] == "windows-server-msvc-ltsc2022")
        .unwrap();
    assert_eq!(msvc["builds"], false);
    assert!(msvc["why_not"].as_str().unwrap().contains("MSVC"));
    assert_eq!(kiln(&["catalogue", "show", "5.9.9"]).status.code(), Some(2));
    let out = kiln(&["catalogue", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n: usize = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["releases"].as_array().unwrap().len())
        .sum();
    assert!(n > 60, "{n} releases");
    assert_eq!(v["latest"], "5.5.1");
    let out = kiln(&["catalogue", "validate", "--json"]);
    assert!(out.status.success());
}

/// `kiln --config <dir>/kiln.toml <args>` against a temp catalogue.
fn kiln_in(dir: &Path, args: &[&str]) -> std::process::Output {
    let config = dir.join("kiln.toml");
    if !config.exists() {
        std::fs::write(&config, "").unwrap();
    }
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .output_within(common::LIMIT)
        .unwrap()
}

/// Every file of a catalogue copy (versions and platforms), to show that a
/// refused command wrote nothing.
fn snapshot_all(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = snapshot(&dir.join("versions"));
    for e in std::fs::read_dir(dir.join("platforms")).unwrap() {
        out.extend(snapshot(&e.unwrap().path()));
    }
    out
}

/// (line, column) of the first `needle` in `text` (ASCII), 1-based.
fn line_column(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).unwrap();
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (text[..at].matches('\n').count() + 1, at - line_start + 1)
}

#[test]
fn validate_names_the_file_line_and_variable_of_an_unknown_template_variable() {
    let (d, _vd, pd) = copy();
    let apt = pd.join("linux/apt.Dockerfile");
    let text = std::fs::read_to_string(&apt).unwrap();
    let (line, column) = line_column(&text, "{{ocaml_switch}}");
    std::fs::write(
        &apt,
        text.replacen("{{ocaml_switch}}", "{{ocaml_switchz}}", 1),
    )
    .unwrap();
    let before = snapshot_all(d.path());
    let out = kiln_in(d.path(), &["catalogue", "validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "platforms/linux/apt.Dockerfile:{line}:{column}: unknown variable {{{{ocaml_switchz}}}} (known: "
    );
    assert!(stderr.contains(&expected), "{expected}\nnot in\n{stderr}");
    assert!(
        stderr.contains("ocaml_switch,"),
        "known variables listed: {stderr}"
    );
    // Hundreds of targets render apt.Dockerfile: one line says it.
    assert_eq!(stderr.matches("ocaml_switchz").count(), 1, "{stderr}");
    let out = kiln_in(d.path(), &["catalogue", "validate", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 1, "{v}");
    // bump and fmt refuse to write a catalogue whose recipes do not render.
    let out = kiln_in(d.path(), &["bump", "5.5.1", "4.14.5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ocaml_switchz"));
    std::fs::write(
        d.path().join("versions/5.4.yaml"),
        std::fs::read_to_string(d.path().join("versions/5.4.yaml")).unwrap() + "\n",
    )
    .unwrap();
    let before_fmt = snapshot_all(d.path());
    let out = kiln_in(d.path(), &["catalogue", "fmt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ocaml_switchz"));
    assert_eq!(snapshot_all(d.path()), before_fmt, "fmt wrote a file");
    std::fs::write(
        d.path().join("versions/5.4.yaml"),
        &before
            .iter()
            .find(|(p, _)| p.ends_with("5.4.yaml"))
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(
        snapshot_all(d.path()),
        before,
        "validate or bump wrote a file"
    );
}

/// An OS release that builds only series the policy does not select: its
/// recipe is still rendered, for every release it builds.
#[test]
fn validate_renders_recipes_of_series_the_policy_does_not_build() {
    let (d, vd, pd) = copy();
    let fp = pd.join("freebsd/platform.yaml");
    let text = std::fs::read_to_string(&fp).unwrap();
    std::fs::write(
        &fp,
        format!(
            "{text}  - id: freebsd-12.4\n    distro: freebsd\n    tier: 3\n    arches: [amd64]\n    \
             recipes: [old.sh]\n    vars: {{ release: \"12.4\" }}\n    exclude:\n      \
             - {{ from: \"4.03.0\", below: \"99.0.0\", reason: \"only 4.02 and older\" }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        pd.join("freebsd/old.sh"),
        "#!/bin/sh\necho {{ocaml_version}} {{release}}\n  echo {{ ocaml_seriez }}\n",
    )
    .unwrap();
    let cat = catalogue::load(&vd, &pd).unwrap();
    let planned = kiln::plan::expand(&cat, &kiln::plan::Filter::default()).unwrap();
    assert!(
        !planned.iter().any(|t| t.os == "freebsd-12.4"),
        "the policy builds no release of freebsd-12.4"
    );
    let out = kiln_in(d.path(), &["catalogue", "validate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("platforms/freebsd/old.sh:3:8: unknown variable {{ocaml_seriez}} (known: "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_parent_that_is_not_an_image_reference_is_refused() {
    let (d, vd, pd) = copy();
    let lp = pd.join("linux/platform.yaml");
    let orig = std::fs::read_to_string(&lp).unwrap();
    assert!(orig.contains("    parent: debian:13\n"));
    std::fs::write(
        &lp,
        orig.replace(
            "    parent: debian:13\n",
            "    parent: \"debian:13 ; rm -rf /\"\n",
        ),
    )
    .unwrap();
    let e = catalogue::load(&vd, &pd).unwrap_err().to_string();
    let expected = "platforms/linux/platform.yaml: releases[0].parent: \"debian:13 ; rm -rf /\" is not an image reference: ";
    assert!(e.contains(expected), "{e}");
    let before = snapshot_all(d.path());
    for args in [
        &["catalogue", "validate"][..],
        &["build", "--version", "5.5.0", "--os", "debian-13"],
        &["bump", "5.5.1"],
        &["catalogue", "fmt"],
    ] {
        let out = kiln_in(d.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted it");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(snapshot_all(d.path()), before);
    // Other reference errors say why; the registry-path field is checked too.
    for (parent, why) in [
        ("Debian:13", "path component \"Debian\""),
        ("debian:13@sha256:abc", "digest \"sha256:abc\""),
        ("debian:-13", "tag \"-13\""),
        ("-x.io/debian:13", "host \"-x.io\""),
    ] {
        std::fs::write(
            &lp,
            orig.replace(
                "    parent: debian:13\n",
                &format!("    parent: \"{parent}\"\n"),
            ),
        )
        .unwrap();
        let e = catalogue::load(&vd, &pd).unwrap_err().to_string();
        assert!(e.contains("releases[0].parent") && e.contains(why), "{e}");
    }
    std::fs::write(
        &lp,
        orig.replace("repository: opam\n", "repository: Opam\n"),
    )
    .unwrap();
    let e = catalogue::load(&vd, &pd).unwrap_err().to_string();
    assert!(
        e.contains("linux/platform.yaml: repository: \"Opam\" is not a repository path"),
        "{e}"
    );
}

#[test]
fn shipped_and_demo_catalogues_validate_clean() {
    for config in [None, Some("scripts/demo/kiln.toml")] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.current_dir(root());
        if let Some(c) = config {
            cmd.args(["--config", c]);
        }
        let out = cmd
            .args(["catalogue", "validate"])
            .output_within(common::LIMIT)
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{config:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("catalogue ok") && stdout.contains("every recipe renders"),
            "{stdout}"
        );
    }
}
