//! What a target's recipes take from the source mirror.

use std::path::PathBuf;

use crate::catalogue::Catalogue;

pub use crate::sources::Uses;

impl Uses {
    /// Read from the recipe files; undeclared names are left out here
    /// (`kiln catalogue validate` and `prepare` refuse them).
    /// `vars` are the target's variables: a declared source whose name a
    /// variable holds (`{{sources_url}}/{{ocaml_beta_repository_source}}`)
    /// is used too, as is each of a list a variable holds (`vars.sets`, an
    /// OpenBSD release's install sets).
    pub(super) fn of_recipes(
        cat: &Catalogue,
        recipes: &[PathBuf],
        vars: &std::collections::BTreeMap<String, String>,
    ) -> Uses {
        let mut refs = crate::catalogue::sources::SourceRefs::default();
        for r in recipes {
            if let Ok(text) = std::fs::read_to_string(r) {
                refs.merge(crate::catalogue::sources::references(
                    &text,
                    crate::catalogue::sources::PLACEHOLDER,
                ));
            }
        }
        let by_var = cat
            .sources
            .sources
            .iter()
            .filter(|d| {
                vars.values()
                    .any(|v| v.split_whitespace().any(|w| w == d.name))
            })
            .filter(|d| !refs.names.iter().any(|(n, _)| *n == d.name));
        let named_by_var = |served: &str| {
            vars.values()
                .any(|v| v.split_whitespace().any(|w| w == served))
        };
        let git = cat
            .sources
            .git
            .iter()
            .filter(|g| {
                refs.names.iter().any(|(n, _)| *n == g.served()) || named_by_var(&g.served())
            })
            .cloned()
            .collect();
        Uses {
            sources: refs
                .names
                .iter()
                .filter_map(|(n, _)| cat.sources.get(n))
                .chain(by_var)
                .cloned()
                .collect(),
            opam_cache: refs.opam_cache,
            bundle: refs.bundle,
            git,
        }
    }
}
