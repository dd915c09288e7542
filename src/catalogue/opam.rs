//! opam package names for a compiler, by the rules of opam-repository as
//! ocurrent/ocaml-version's `Opam.V2.package` and `additional_packages`
//! state them: `ocaml-base-compiler.V`; variants before 4.12 as
//! `ocaml-variants.V+<variant>`; from 4.12 `ocaml-variants.V+options` plus
//! `ocaml-options-only-<options joined by '-'>`; a release under
//! development (status `trunk` or `dev`) as `ocaml-variants.V+trunk`, plus
//! the options package for a variant.
//!
//! One deliberate difference: for the pre-4.00 releases `3.07+1` and
//! `3.07+2` upstream drops the `+N` (its `compiler_variants` strips the
//! extra, taking the patch level for a variant) and answers
//! `ocaml-base-compiler.3.07`; Kiln installs the release it names.

use super::{OcamlVersion, Status};

/// Options packages exist from 4.12 (ocaml-version's `Since.options_packages`).
fn has_options_packages(v: &OcamlVersion) -> bool {
    v.release() >= OcamlVersion::new(4, 12, 0)
}

pub fn packages(v: &OcamlVersion, status: Status, variant: Option<&str>) -> Vec<String> {
    let options_only = |var: &str| format!("ocaml-options-only-{}", var.replace('+', "-"));
    if matches!(status, Status::Trunk | Status::Dev) {
        let trunk = format!("ocaml-variants.{}+trunk", v.with_extra(None));
        return match variant {
            None => vec![trunk],
            Some(var) if has_options_packages(v) => vec![trunk, options_only(var)],
            Some(var) => vec![format!("{trunk}+{var}")],
        };
    }
    match variant {
        None => vec![format!("ocaml-base-compiler.{v}")],
        Some(var) if !has_options_packages(v) => {
            vec![format!("ocaml-variants.{}", v.with_extra(Some(var)))]
        }
        Some(var) => vec![
            format!("ocaml-variants.{}", v.with_extra(Some("options"))),
            options_only(var),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let v = |s: &str| s.parse::<OcamlVersion>().unwrap();
        assert_eq!(
            packages(&v("5.5.0"), Status::Released, None),
            ["ocaml-base-compiler.5.5.0"]
        );
        assert_eq!(
            packages(&v("4.08.1"), Status::Released, Some("flambda")),
            ["ocaml-variants.4.08.1+flambda"]
        );
        assert_eq!(
            packages(&v("4.14.4"), Status::Released, Some("flambda+fp")),
            [
                "ocaml-variants.4.14.4+options",
                "ocaml-options-only-flambda-fp"
            ]
        );
        assert_eq!(
            packages(&v("5.6.0"), Status::Trunk, None),
            ["ocaml-variants.5.6.0+trunk"]
        );
        assert_eq!(
            packages(&v("5.5.0"), Status::Dev, Some("afl")),
            ["ocaml-variants.5.5.0+trunk", "ocaml-options-only-afl"]
        );
        assert_eq!(
            packages(&v("5.5.0~beta1"), Status::Beta, None),
            ["ocaml-base-compiler.5.5.0~beta1"]
        );
        assert_eq!(
            packages(&v("5.5.0~beta1"), Status::Beta, Some("no-flat-float-array")),
            [
                "ocaml-variants.5.5.0~beta1+options",
                "ocaml-options-only-no-flat-float-array"
            ]
        );
        assert_eq!(
            packages(&v("3.07+2"), Status::EndOfLife, None),
            ["ocaml-base-compiler.3.07+2"]
        );
    }
}
