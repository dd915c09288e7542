//! `kiln plan --render`: a target's recipes as its build renders them,
//! with what only a build knows left as its `{{placeholder}}`: the source
//! server's address (`{{sources_url}}`), the parent's digest, the
//! opam-repository commit in use, the QEMU server and guest user. The
//! parent is named as the catalogue names it. Nothing is resolved and no
//! network is needed, so anyone can diff Kiln's recipes with upstream's
//! (tests/conformance_dockerfiles.rs does, for every Dockerfile of
//! docker-base-images).

use std::collections::BTreeMap;

use super::prepare::{PrepareError, render_recipes};
use super::{BUILD_TIME_VARS, Target};

/// The variables a rendering for reading uses: the target's own, every
/// build-time variable as its own `{{name}}`, and the parent's name.
pub fn placeholder_vars(t: &Target) -> BTreeMap<String, String> {
    let mut vars = t.vars.clone();
    for name in BUILD_TIME_VARS {
        vars.insert((*name).to_string(), format!("{{{{{name}}}}}"));
    }
    if let Some(parent) = &t.parent {
        vars.insert("parent".into(), parent.clone());
    }
    vars
}

/// Every recipe of `t` as (file name, text), rendered as [`placeholder_vars`]
/// says: a compiler-less image's Dockerfile through its `opam` stage, as
/// its build takes it.
pub fn render(t: &Target) -> Result<Vec<(String, String)>, PrepareError> {
    render_recipes(t, &placeholder_vars(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue;
    use crate::plan::{Filter, expand};

    fn shipped() -> catalogue::Catalogue {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        catalogue::load(&root.join("versions"), &root.join("platforms")).unwrap()
    }

    #[test]
    fn build_time_values_stay_placeholders_and_the_parent_is_named() {
        let cat = shipped();
        let filter = Filter {
            os: Some("debian-13".into()),
            version: Some("5.4".into()),
            arch: Some(crate::catalogue::Arch::Amd64),
            ..Filter::default()
        };
        let t = expand(&cat, &filter).unwrap().remove(0);
        let files = render(&t).unwrap();
        let (name, text) = &files[0];
        assert_eq!(name, "apt.Dockerfile");
        assert!(
            text.contains("FROM debian:13@{{parent_digest}} AS opam"),
            "{text}"
        );
        assert!(text.contains("{{sources_url}}/opam-full-2.5.2.tar.gz"));
        assert!(text.contains("= \"{{opam_repository_commit}}\""));
        assert!(text.contains("opam switch create 5.4 --packages=ocaml-base-compiler.5.4.1"));
        assert!(
            !text.contains("{{ocaml_"),
            "every target variable is filled in"
        );
    }
}
