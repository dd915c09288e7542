//! The template variables that carry docker-base-images' per-compiler and
//! per-arch decisions into the Linux and Windows recipes. The template
//! language has no conditionals, so a decision is a variable: the word
//! `true` or `false` (recipes write `if {{var}}; then …; fi`, which a
//! shell reads as it is written), or a fragment such as the `linux32`
//! personality. Each rule names the upstream function it follows
//! (docker-base-images e18903f `src/pipeline.ml`, ocaml-dockerfile 8.4.0
//! `src-opam/`).

use std::collections::BTreeMap;

use crate::catalogue::{Arch, OcamlVersion, OsRelease, Status};

use super::OPAM_VERSION;

/// The git sources (versions/sources.yaml `git:`) of upstream's extra opam
/// repositories: the beta repository (`maybe_add_beta`) and the GCC 15
/// patches overlay (`maybe_add_gcc15_overlay`).
pub const BETA_REPOSITORY: &str = "ocaml-beta-repository";
pub const GCC15_OVERLAY: &str = "ocaml-patches-overlay";

/// `ocaml_beta_repository_commit` and `ocaml_gcc15_overlay_commit`: the
/// commit each git source is declared at, which the recipes check the
/// cloned bundle against (`undeclared` while it is pending: such a target
/// is refused before it builds).
pub fn add_git_commits(vars: &mut BTreeMap<String, String>, sources: &crate::catalogue::Sources) {
    for (var, name) in [
        ("ocaml_beta_repository_commit", BETA_REPOSITORY),
        ("ocaml_gcc15_overlay_commit", GCC15_OVERLAY),
    ] {
        let commit = sources
            .git
            .iter()
            .find(|g| g.name == name)
            .and_then(|g| g.commit.clone());
        vars.insert(var.into(), commit.unwrap_or_else(|| "undeclared".into()));
    }
}

/// The words a decision renders as.
fn word(b: bool) -> String {
    if b { "true" } else { "false" }.to_string()
}

/// The switch name upstream gives the default compiler:
/// `Ocaml_version.with_just_major_and_minor` (`4.14`, `5.5~beta1`).
pub fn switch_name(v: &OcamlVersion) -> String {
    OcamlVersion {
        patch: None,
        extra: None,
        ..v.clone()
    }
    .to_string()
}

/// The GCC 15 overlay (`maybe_add_gcc15_overlay`): compilers older than
/// 5.1.0, except 4.14.2, on an OS release whose gcc is 15 or newer.
pub fn needs_gcc15_overlay(v: &OcamlVersion, gcc: Option<&str>) -> bool {
    let plain = OcamlVersion {
        extra: None,
        ..v.clone()
    };
    let old = plain < OcamlVersion::new(5, 1, 0) && plain != OcamlVersion::new(4, 14, 2);
    let major = gcc
        .and_then(|g| g.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    old && major.is_some_and(|m| m >= 15)
}

/// Add the recipe variables of one target to `vars`. `gcc` is the OS
/// release's `gcc` variable (platform.yaml, from ocaml-dockerfile's
/// `Distro.gcc_version`).
pub fn add(
    vars: &mut BTreeMap<String, String>,
    v: &OcamlVersion,
    status: Status,
    arch: Arch,
    opam_packages: &[String],
) {
    let gcc = vars.get("gcc").cloned();
    vars.insert("ocaml_switch".into(), switch_name(v));
    // `opam pin add -k version <name> <version>` of the compiler package
    // (`Ocaml_version.Opam.V2.package`): the first of the packages.
    let (name, version) = opam_packages
        .first()
        .and_then(|p| p.split_once('.'))
        .unwrap_or(("ocaml-base-compiler", ""));
    vars.insert("ocaml_package_name".into(), name.to_string());
    vars.insert("ocaml_package_version".into(), version.to_string());
    // `ocaml_depexts`: zstd for 5.1.0 and later.
    vars.insert(
        "ocaml_needs_zstd".into(),
        word(*v >= OcamlVersion::new(5, 1, 0)),
    );
    // `maybe_add_beta`: dev compilers and unreleased betas.
    let beta = matches!(status, Status::Trunk | Status::Dev) || v.is_prerelease();
    let overlay = needs_gcc15_overlay(v, gcc.as_deref());
    vars.insert("ocaml_beta_repository".into(), word(beta));
    vars.insert("ocaml_gcc15_overlay".into(), word(overlay));
    // The sources those steps fetch, named only where a step runs, so that
    // only the targets that need a source require it (an unused step's URL
    // renders with no name and asks for nothing).
    let source = |needed: bool, name: &str| {
        if needed {
            name.to_string()
        } else {
            String::new()
        }
    };
    vars.insert(
        "ocaml_beta_repository_source".into(),
        source(beta, &format!("{BETA_REPOSITORY}.bundle")),
    );
    vars.insert(
        "ocaml_gcc15_overlay_source".into(),
        source(overlay, &format!("{GCC15_OVERLAY}.bundle")),
    );
    // `maybe_install_secondary_compiler`: below 4.08 dune has no native
    // support (Linux only; Windows recipes do not use it).
    vars.insert(
        "ocaml_secondary_compiler".into(),
        word(*v < OcamlVersion::new(4, 8, 0)),
    );
    add_arch(vars, arch);
}

/// The variables that depend on the arch alone, which the `opam` stage of
/// a recipe (the compiler-less image) may use too.
pub fn add_arch(vars: &mut BTreeMap<String, String>, arch: Arch) {
    // `Distro.personality`: 32-bit arches run every step, and the
    // entrypoint, under `linux32`.
    let bits32 = matches!(arch, Arch::I386 | Arch::Arm32v7);
    vars.insert(
        "personality_shell".into(),
        if bits32 {
            r#"["/usr/bin/linux32", "/bin/sh", "-c"]"#
        } else {
            r#"["/bin/sh", "-c"]"#
        }
        .into(),
    );
    vars.insert(
        "personality_entrypoint".into(),
        if bits32 {
            r#""/usr/bin/linux32", "#
        } else {
            ""
        }
        .into(),
    );
}

/// The template variables of one target (recipes may use any of them).
pub(super) fn target_vars(
    os: &OsRelease,
    v: &OcamlVersion,
    status: Status,
    variant: Option<&str>,
    arch: Arch,
    opam_packages: &[String],
) -> BTreeMap<String, String> {
    let mut vars = base_vars(os, arch);
    vars.insert("ocaml_version".into(), v.to_string());
    vars.insert("ocaml_series".into(), v.series_tag());
    vars.insert("variant".into(), variant.unwrap_or_default().to_string());
    vars.insert("opam_packages".into(), opam_packages.join(","));
    add(&mut vars, v, status, arch, opam_packages);
    vars
}

/// The variables of every target of an OS release and arch, compiler or
/// none (the `opam` stage of a recipe may use only these).
pub(super) fn base_vars(os: &OsRelease, arch: Arch) -> BTreeMap<String, String> {
    let mut vars = os.vars.clone();
    // A per-distro step the OS release does not switch on is off.
    for (switch, _) in crate::catalogue::platform::STEP_SWITCHES {
        vars.entry((*switch).into())
            .or_insert_with(|| "false".into());
    }
    vars.insert("os".into(), os.id.clone());
    vars.insert("distro".into(), os.distro.clone());
    vars.insert("arch".into(), arch.to_string());
    vars.entry("opam_version".into())
        .or_insert_with(|| OPAM_VERSION.into());
    vars.insert("opam_arch".into(), arch.opam().into());
    vars.insert("brew_prefix".into(), arch.brew_prefix().into());
    if let Some(r) = os.vars.get("release") {
        vars.insert("release_nodot".into(), r.replace('.', ""));
    }
    add_arch(&mut vars, arch);
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> OcamlVersion {
        s.parse().unwrap()
    }

    #[test]
    fn switch_names_follow_upstream() {
        assert_eq!(switch_name(&v("4.14.3")), "4.14");
        assert_eq!(switch_name(&v("5.5.0~beta1")), "5.5~beta1");
        assert_eq!(switch_name(&v("4.11.2+flambda")), "4.11");
    }

    #[test]
    fn the_gcc15_overlay_is_for_old_compilers_on_new_gcc() {
        assert!(needs_gcc15_overlay(&v("4.14.3"), Some("15.2")));
        assert!(needs_gcc15_overlay(&v("4.11.2+afl"), Some("15.2")));
        assert!(!needs_gcc15_overlay(&v("4.14.2"), Some("15.2")));
        assert!(!needs_gcc15_overlay(&v("5.1.0"), Some("16.1")));
        assert!(!needs_gcc15_overlay(&v("4.14.3"), Some("14.2")));
        assert!(!needs_gcc15_overlay(&v("4.14.3"), None));
    }

    #[test]
    fn decisions_render_as_shell_words() {
        let mut vars = BTreeMap::from([("gcc".to_string(), "15.2".to_string())]);
        let pkgs = vec!["ocaml-variants.4.07.1+flambda".to_string()];
        add(&mut vars, &v("4.07.1"), Status::Released, Arch::I386, &pkgs);
        assert_eq!(vars["ocaml_package_name"], "ocaml-variants");
        assert_eq!(vars["ocaml_package_version"], "4.07.1+flambda");
        assert_eq!(vars["ocaml_needs_zstd"], "false");
        assert_eq!(vars["ocaml_secondary_compiler"], "true");
        assert_eq!(vars["ocaml_gcc15_overlay"], "true");
        assert_eq!(vars["ocaml_beta_repository"], "false");
        assert!(vars["personality_shell"].contains("linux32"));
        let mut vars = BTreeMap::new();
        add(&mut vars, &v("5.6.0"), Status::Trunk, Arch::Amd64, &[]);
        assert_eq!(vars["ocaml_beta_repository"], "true");
        assert_eq!(vars["ocaml_needs_zstd"], "true");
        assert_eq!(vars["personality_entrypoint"], "");
    }
}
