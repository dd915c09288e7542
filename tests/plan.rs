//! Plans of the real catalogue: targets, tags, aliases, requirements, and
//! every production recipe rendering for every target it serves.

mod common;
use common::Bounded;
use std::path::PathBuf;

use kiln::catalogue::{self, OcamlVersion};
use kiln::plan::{self, BUILD_TIME_VARS, Filter, key, template};

fn cat() -> catalogue::Catalogue {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    catalogue::load(&root.join("versions"), &root.join("platforms")).unwrap()
}

fn filter(version: &str, platform: &str, os: &str) -> Filter {
    Filter {
        version: Some(version.into()),
        platform: Some(platform.into()),
        os: Some(os.into()),
        arch: None,
        tag: None,
        ..Filter::default()
    }
}

#[test]
fn debian_13_for_5_5_1() {
    let c = cat();
    let ts = plan::expand(&c, &filter("5.5.1", "linux", "debian")).unwrap();
    let default: Vec<_> = ts.iter().filter(|t| t.variant.is_none()).collect();
    let arches: Vec<&str> = default.iter().map(|t| t.arch.as_str()).collect();
    // docker-base-images no longer builds i386 and arm32v7.
    assert_eq!(arches, ["amd64", "arm64", "ppc64le", "s390x", "riscv64"]);
    assert!(
        default
            .iter()
            .all(|t| t.tag == "debian-13-ocaml-5.5" && t.required)
    );
    let amd64 = default.iter().find(|t| t.arch == "amd64").unwrap();
    assert_eq!(
        amd64.aliases,
        ["debian-ocaml-5.5", "debian-13", "debian", "latest"]
    );
    for alias in ["debian-ocaml-5.5", "debian-13", "debian", "latest"] {
        assert!(
            amd64.aliases.contains(&alias.to_string()),
            "{alias} not in {:?}",
            amd64.aliases
        );
    }
    assert_eq!(amd64.opam_packages, ["ocaml-base-compiler.5.5.1"]);
    assert_eq!(amd64.id(), "linux/debian-13/5.5.1/amd64");
    let flambda: Vec<_> = ts
        .iter()
        .filter(|t| t.variant.as_deref() == Some("flambda"))
        .collect();
    assert_eq!(flambda.len(), 2);
    assert_eq!(flambda[0].tag, "debian-13-ocaml-5.5-flambda");
    assert!(!flambda[0].required);
    assert_eq!(
        flambda[0].opam_packages,
        ["ocaml-variants.5.5.1+options", "ocaml-options-only-flambda"]
    );
}

#[test]
fn older_series_tags_and_constraints() {
    let c = cat();
    let ts = plan::expand(&c, &filter("4.14", "linux", "debian-13")).unwrap();
    let t = ts
        .iter()
        .find(|t| t.variant.is_none() && t.arch == "amd64")
        .unwrap();
    assert_eq!(t.version.as_ref().unwrap().to_string(), "4.14.4");
    assert_eq!(t.tag, "debian-13-ocaml-4.14");
    assert!(
        !t.aliases.contains(&"latest".to_string()),
        "latest belongs to 5.5"
    );
    assert!(ts.iter().any(|t| t.arch == "riscv64" && t.native));
    // Tier 1: every variant ocaml-version gives for 4.14, on its arches.
    let tags: std::collections::BTreeSet<&str> = ts.iter().map(|t| t.tag.as_str()).collect();
    for tag in [
        "debian-13-ocaml-4.14-afl",
        "debian-13-ocaml-4.14-flambda-fp",
        "debian-13-ocaml-4.14-nnpchecker",
    ] {
        assert!(tags.contains(tag), "{tag}");
    }
    let fp: Vec<&str> = ts
        .iter()
        .filter(|t| t.tag == "debian-13-ocaml-4.14-fp")
        .map(|t| t.arch.as_str())
        .collect();
    assert_eq!(fp, ["amd64"]);
    // Tier 2: the plain compiler only.
    let ts2 = plan::expand(&c, &filter("4.14", "linux", "ubuntu-26.04")).unwrap();
    assert!(ts2.iter().all(|t| t.variant.is_none() && !t.required));
    // 4.08 has a two-digit minor in tags and no riscv64.
    let ts = plan::expand(&c, &filter("4.08", "linux", "debian-13")).unwrap();
    assert!(ts.iter().all(|t| t.tag.starts_with("debian-13-ocaml-4.08")));
    assert!(!ts.iter().any(|t| t.arch == "riscv64"));
    // MSVC has no 5.0–5.2 and mingw no 4.12.
    let ts = plan::expand(
        &c,
        &filter("5.1", "windows", "windows-server-msvc-ltsc2022"),
    )
    .unwrap();
    assert!(ts.is_empty());
    let ts = plan::expand(
        &c,
        &filter("5.5", "windows", "windows-server-msvc-ltsc2022"),
    )
    .unwrap();
    assert_eq!(ts.len(), 1);
    let ts = plan::expand(&c, &filter("4.12", "windows", "windows-mingw")).unwrap();
    assert!(ts.is_empty());
}

#[test]
fn whole_matrix_and_requirements() {
    let c = cat();
    let ts = plan::expand(&c, &Filter::default()).unwrap();
    let totals = plan::totals(&ts);
    assert!(totals.targets > 450, "{}", totals.targets);
    for p in ["linux", "windows", "macos", "freebsd", "openbsd"] {
        assert!(totals.by_platform.contains_key(p), "{p}");
    }
    let reqs = plan::requirements(&ts, "kiln", |t| t.platform == "linux");
    let deb = reqs
        .iter()
        .find(|r| r.tag == "debian-13-ocaml-5.5")
        .unwrap();
    assert_eq!(deb.repository, "kiln/opam");
    assert_eq!(deb.arches.len(), 5);
    assert!(deb.no_builder.is_empty());
    let mac = reqs
        .iter()
        .find(|r| r.platform == "macos" && r.ocaml.to_string() == "5.5.1")
        .unwrap();
    assert_eq!(mac.no_builder, mac.arches);
    // Optional tiers are not required.
    assert!(!reqs.iter().any(|r| r.os == "archlinux"));
    // Target ids are unique.
    let mut ids: Vec<String> = ts.iter().map(|t| t.id()).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn every_production_recipe_renders_for_every_target() {
    let c = cat();
    let ts = plan::expand(
        &c,
        &Filter {
            version: Some("all".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut rendered = 0;
    for t in &ts {
        let mut vars = t.vars.clone();
        for v in BUILD_TIME_VARS {
            vars.insert(v.to_string(), format!("<{v}>"));
        }
        for r in &t.recipes {
            let text = std::fs::read_to_string(r).unwrap();
            let out = template::render(&r.display().to_string(), &text, &vars)
                .unwrap_or_else(|e| panic!("{}: {e}", t.id()));
            assert!(!out.contains("{{"), "{}", r.display());
            if r.extension().is_some_and(|x| x == "Dockerfile") {
                assert!(
                    out.contains("@<parent_digest>"),
                    "parent must be pinned by digest in {}",
                    r.display()
                );
            }
            rendered += 1;
        }
    }
    assert!(rendered > 1000);
}

#[test]
fn build_keys_change_with_inputs_only() {
    let c = cat();
    let ts = plan::expand(&c, &filter("5.5.0", "linux", "debian-13")).unwrap();
    let t = &ts[0];
    let recipe = std::fs::read_to_string(&t.recipes[0]).unwrap();
    let inputs = |parent: &str| {
        let mut vars = t.vars.clone();
        vars.insert("parent".into(), "debian".into());
        vars.insert("parent_digest".into(), parent.into());
        vars.insert("opam_repository_commit".into(), "abc".into());
        vars.insert("sources_url".into(), "http://sources.invalid".into());
        let rendered = template::render("apt", &recipe, &vars).unwrap();
        let mut i = key::Inputs::new();
        i.insert("recipe".into(), key::sha256_hex(rendered.as_bytes()));
        i.insert("parent_digest".into(), parent.into());
        i.insert("ocaml".into(), t.version.as_ref().unwrap().to_string());
        i
    };
    assert_eq!(
        key::build_key(&inputs("sha256:1")),
        key::build_key(&inputs("sha256:1"))
    );
    assert_ne!(
        key::build_key(&inputs("sha256:1")),
        key::build_key(&inputs("sha256:2"))
    );
    assert_eq!(
        key::changed(&inputs("sha256:1"), &inputs("sha256:2")),
        ["parent_digest", "recipe"]
    );
    let k = key::build_key(&inputs("sha256:1"));
    assert!(t.immutable_tag(&k).starts_with("debian-13-ocaml-5.5.0-"));
    let v: OcamlVersion = "5.5.0".parse().unwrap();
    assert_eq!(
        plan::moving_tag("alpine-3.23", &v, Some("flambda+fp")),
        "alpine-3.23-ocaml-5.5-flambda-fp"
    );
    let beta: OcamlVersion = "5.6.0~beta1".parse().unwrap();
    assert_eq!(
        plan::moving_tag("debian-13", &beta, Some("no-flat-float-array")),
        "debian-13-ocaml-5.6-beta1-no-flat-float-array"
    );
}

#[test]
fn plan_shows_openbsd_targets_with_build_keys() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(&root)
            .args([
                "--set",
                "plan.opam_repository_commit=0123abc",
                "plan",
                "--platform",
                "openbsd",
                "--version",
                "5.5.0",
                "--targets",
                "--keys",
                "--json",
            ])
            .output_within(common::LIMIT)
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = run();
    let keys = v["build_keys"].as_object().unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for (id, k) in keys {
        assert!(id.starts_with("openbsd/openbsd-7"), "{id}");
        assert!(
            k.as_str().unwrap().starts_with("sha256:") && k.as_str().unwrap().len() == 71,
            "{k}"
        );
    }
    assert_eq!(
        run()["build_keys"],
        v["build_keys"],
        "build keys must be deterministic"
    );
}

/// The shell recipes (macOS and FreeBSD provisioning, which cannot run on
/// this machine, and the demo's Linux stand-in) are shellcheck-clean as
/// rendered for every target, with build-time values in place.
#[test]
fn shell_recipes_are_shellcheck_clean() {
    let mut cats = vec![cat()];
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo");
    cats.push(kiln::catalogue::load(&demo.join("versions"), &demo.join("platforms")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut files = Vec::new();
    for c in &cats {
        let ts = plan::expand(
            c,
            &Filter {
                version: Some("all".into()),
                ..Default::default()
            },
        )
        .unwrap();
        for t in ts
            .iter()
            .filter(|t| t.platform == "macos" || t.platform == "freebsd")
        {
            let mut vars = t.vars.clone();
            vars.insert("opam_repository_commit".into(), "0123456789abcdef".into());
            vars.insert("sources_url".into(), "http://127.0.0.1:40000".into());
            for r in &t.recipes {
                let text = std::fs::read_to_string(r).unwrap();
                let out = template::render(&r.display().to_string(), &text, &vars).unwrap();
                // One file per distinct rendering.
                if seen.insert(out.clone()) {
                    let f = dir
                        .path()
                        .join(format!("{}-{}.sh", files.len(), t.platform));
                    std::fs::write(&f, &out).unwrap();
                    files.push((f, format!("{} for {}", r.display(), t.id())));
                }
            }
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    for chunk in files.chunks(50) {
        let out = std::process::Command::new("shellcheck")
            .args(["--shell=sh", "--severity=style", "--format=gcc"])
            .args(chunk.iter().map(|(f, _)| f))
            .output_within(common::LIMIT)
            .expect("shellcheck (scripts/services.sh up installs it)");
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "shellcheck:\n{report}\nfiles: {:?}",
            chunk
                .iter()
                .map(|(f, w)| format!("{} = {w}", f.display()))
                .collect::<Vec<_>>()
        );
    }
}

/// The production ZFS recipes (macOS, FreeBSD) take opam's release
/// tarballs, the opam-repository bundle and the compiler's archives from
/// the source mirror, and download nothing of opam's from GitHub: only
/// Homebrew's own clone and the OS's package mirrors stay outside.
#[test]
fn zfs_production_recipes_take_their_sources_from_the_mirror() {
    let ts = plan::expand(
        &cat(),
        &Filter {
            version: Some("all".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let zfs: Vec<_> = ts
        .iter()
        .filter(|t| t.platform == "macos" || t.platform == "freebsd")
        .collect();
    assert!(zfs.iter().any(|t| t.platform == "macos"));
    assert!(zfs.iter().any(|t| t.platform == "freebsd"));
    for t in zfs {
        assert!(
            t.uses.bundle && t.uses.opam_cache,
            "{}: {:?}",
            t.id(),
            t.uses
        );
        let names: Vec<&str> = t.uses.sources.iter().map(|d| d.name.as_str()).collect();
        for v in ["2.1.6", "2.2.1", "2.3.0", "2.4.1", "2.5.2", "2.6.1"] {
            let want = format!("opam-full-{v}.tar.gz");
            assert!(names.contains(&want.as_str()), "{}: {names:?}", t.id());
        }
        for r in &t.recipes {
            let text = std::fs::read_to_string(r).unwrap();
            for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
                assert!(
                    !line.contains("github.com/ocaml/opam/releases")
                        && !line.contains("git clone https://github.com/ocaml"),
                    "{}: {line}",
                    r.display()
                );
            }
        }
    }
}

/// `kiln catalogue validate`'s targets: the policy's and every release of
/// every series (not only the newest of each), and the shipped recipes
/// render for all of them.
#[test]
fn validate_renders_the_policy_and_every_release() {
    let c = cat();
    let all = plan::validate::all_targets(&c).unwrap();
    let ids: std::collections::BTreeSet<String> = all.iter().map(|t| t.id()).collect();
    assert_eq!(ids.len(), all.len(), "each target once");
    for t in plan::expand(&c, &Filter::default()).unwrap() {
        assert!(ids.contains(&t.id()), "{}", t.id());
    }
    for old in [
        "linux/debian-13/4.14.0/amd64",
        "linux/debian-13/5.0.0/amd64",
    ] {
        assert!(ids.contains(old), "{old}");
    }
    let v = plan::validate(&c).unwrap();
    assert_eq!(v.targets, all.len());
    assert!(v.renderings >= v.targets);
}

/// Reproducibility is data: the busybox machinery fixture declares it, the
/// demo's Debian releases (apt against a live mirror) do not; an alias is
/// what its image is; the production catalogue declares none. Each
/// target's SOURCE_DATE_EPOCH is its compiler's catalogue date.
#[test]
fn plan_says_which_tags_are_reproducible() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let demo = root.join("scripts/demo");
    let fixture = catalogue::load(
        &demo.join("versions"),
        &root.join("tests/fixtures/machinery"),
    )
    .unwrap();
    let ts = plan::expand(&fixture, &filter("4.13", "linux", "busybox")).unwrap();
    assert!(!ts.is_empty() && ts.iter().all(|t| t.reproducible));
    assert!(ts.iter().all(|t| t.source_date_epoch == 1_633_305_600));
    let c = catalogue::load(&demo.join("versions"), &demo.join("platforms")).unwrap();
    let mut all = plan::expand(&c, &Filter::default()).unwrap();
    all.extend(plan::expand(&fixture, &Filter::default()).unwrap());
    for t in plan::tags(&all, "kiln") {
        let busybox = t.entries.iter().all(|e| e.os == "busybox");
        assert_eq!(t.reproducible, busybox, "{}", t.name());
    }
    assert!(
        plan::expand(&cat(), &Filter::default())
            .unwrap()
            .iter()
            .all(|t| !t.reproducible)
    );
}

/// `kiln plan`, `kiln build` and `kiln sources sync|list` take the same plan
/// filter flags (one shared clap struct), with the help each had; `plan`
/// says more about `--version` and `--os`.
#[test]
fn the_plan_filter_flags_are_the_same_on_every_command_that_plans() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .arg("--help")
            .output_within(common::LIMIT)
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let line = |text: &str, flag: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing from\n{text}"))
            .split_once('>')
            .map(|(_, h)| h.trim().to_string())
            .unwrap_or_default()
    };
    for cmd in [&["build"][..], &["sources", "sync"], &["sources", "list"]] {
        let text = help(cmd);
        assert_eq!(
            line(&text, "--version <VERSION>"),
            "A version (5.5.0), series (5.5) or set (recent, latest, all)",
            "{cmd:?}"
        );
        assert_eq!(
            line(&text, "--os <OS>"),
            "OS release id or alias",
            "{cmd:?}"
        );
        assert_eq!(line(&text, "--platform <PLATFORM>"), "", "{cmd:?}");
        assert_eq!(line(&text, "--arch <ARCH>"), "", "{cmd:?}");
    }
    let text = help(&["plan"]);
    assert_eq!(
        line(&text, "--version <VERSION>"),
        "A version (5.5.0), series (5.5) or set (recent, significant, latest, all)"
    );
    assert_eq!(
        line(&text, "--os <OS>"),
        "OS release id or alias (debian-13, ubuntu-lts)"
    );
    assert_eq!(line(&text, "--arch <ARCH>"), "");
}

/// The demo's last step fetches from the namespace the demo published
/// under, read from its config (kiln.toml, or KILN_REGISTRY_NAMESPACE),
/// not a hard-coded `kiln-demo/`.
#[test]
fn the_demo_fetches_from_the_namespace_its_config_names() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = std::fs::read_to_string(root.join("scripts/demo.sh")).unwrap();
    let line = script
        .lines()
        .find(|l| l.starts_with("NAMESPACE="))
        .expect("demo.sh reads the namespace from the config");
    let fetch = script
        .lines()
        .find(|l| l.starts_with("\"$KILN\"") && l.contains(" fetch "))
        .expect("demo.sh runs kiln fetch");
    assert!(fetch.contains("\"$NAMESPACE/macos-base:"), "{fetch}");
    let namespace = |env: Option<&str>| {
        let mut c = std::process::Command::new("bash");
        c.arg("-c")
            .arg(format!(
                "set -euo pipefail\nKILN={}\nDEMO=(--config {})\n{line}\necho \"$NAMESPACE\"",
                env!("CARGO_BIN_EXE_kiln"),
                root.join("scripts/demo/kiln.toml").display()
            ))
            .env_remove("KILN_REGISTRY_NAMESPACE");
        if let Some(ns) = env {
            c.env("KILN_REGISTRY_NAMESPACE", ns);
        }
        let out = c.output_within(common::LIMIT).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(namespace(None), "kiln-demo");
    assert_eq!(
        namespace(Some("kiln-demo-elsewhere")),
        "kiln-demo-elsewhere"
    );
}

/// `kiln plan --render` prints the selected targets' recipes with the
/// usual filters, the source server's URL and the other build-time values
/// as placeholders, and needs no network: it runs in a network namespace
/// of its own (no interface but a down loopback).
#[test]
fn plan_render_prints_recipes_without_the_network() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        std::process::Command::new("unshare")
            .arg("--net")
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(root)
            .args(["plan", "--render"])
            .args(args)
            .output_within(common::LIMIT)
            .unwrap()
    };
    let out = run(&[
        "--os",
        "debian-13",
        "--version",
        "5.5",
        "--arch",
        "arm64",
        "--variant",
        "flambda",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with("==> ")).collect();
    assert_eq!(
        headers,
        [
            "==> linux/debian-13/5.5.1+flambda/arm64 (debian-13-ocaml-5.5-flambda): apt.Dockerfile <=="
        ]
    );
    assert!(text.contains("FROM debian:13@{{parent_digest}} AS opam-builder"));
    assert!(text.contains("{{sources_url}}/opam-full-2.5.2.tar.gz"));
    assert!(text.contains("--packages=ocaml-variants.5.5.1+options,ocaml-options-only-flambda"));
    // The plain compiler only, every arch; JSON lists the same.
    let out = run(&[
        "--os",
        "alpine-3.23",
        "--version",
        "5.5",
        "--variant",
        "none",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let targets: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            "linux/alpine-3.23/5.5.1/amd64",
            "linux/alpine-3.23/5.5.1/arm64"
        ]
    );
    assert!(
        v[0]["recipes"][0]["text"]
            .as_str()
            .unwrap()
            .contains("apk add")
    );
    // A ZFS recipe too (its provisioning script).
    let out = run(&[
        "--platform",
        "macos",
        "--version",
        "4.14",
        "--arch",
        "arm64",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("==> macos/macos-homebrew/4.14.4/arm64"),
        "{text}"
    );
    assert!(text.contains("{{sources_url}}/opam-repository.bundle"));
}
