//! The recipe check of `kiln catalogue validate` (and of `kiln bump` and
//! `kiln catalogue fmt` before they write): every recipe rendered for
//! every target the catalogue can produce — the policy's, and every release
//! of every series on every OS release that builds it, so a recipe that
//! breaks only for an old series is caught too — with obviously fake
//! values for what is known only at build time. Nothing is resolved: no
//! registry, no git, no network.
//!
//! Problems are grouped by the `{{...}}` they are about, so a typo in a
//! recipe shared by 800 targets is one line naming its file, line and
//! column.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{Filter, PlanError, Target, expand, template};
use crate::catalogue::Catalogue;

/// Stand-ins for [`BUILD_TIME_VARS`](super::BUILD_TIME_VARS): syntactically what the real values
/// are (an image name, a digest, a commit, a URL, a host, a user, a key),
/// plainly fake.
pub const PLACEHOLDERS: [(&str, &str); 8] = [
    ("parent", "kiln-validate.invalid/parent"),
    (
        "parent_digest",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ),
    (
        "opam_repository_commit",
        "0000000000000000000000000000000000000000",
    ),
    ("http_base", "http://kiln-validate.invalid:0"),
    ("http_host", "kiln-validate.invalid"),
    ("ssh_user", "kiln-validate"),
    (
        "ssh_public_key",
        "ssh-ed25519 AAAAkiln-validate kiln-validate.invalid",
    ),
    ("sources_url", "http://kiln-validate.invalid:0"),
];

/// One thing wrong with a recipe, for every target that renders it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeProblem {
    /// `os` lists the OS releases the variable is unknown for when others
    /// rendering the same recipe do have it; `known` are the variables
    /// every affected target has.
    #[error(
        "{file}:{line}:{column}: unknown variable {{{{{name}}}}}{} (known: {})",
        for_os(.os), .known.join(", ")
    )]
    Unknown {
        file: String,
        line: usize,
        column: usize,
        name: String,
        os: Vec<String>,
        known: Vec<String>,
    },
    #[error("{file}:{line}:{column}: unclosed '{{{{'")]
    Unclosed {
        file: String,
        line: usize,
        column: usize,
    },
    #[error("cannot read recipe {file}: {message}")]
    Read { file: String, message: String },
    /// A compiler-less image's recipe has no `opam` stage.
    #[error("{file}: {message}")]
    Stage { file: String, message: String },
}

fn for_os(os: &[String]) -> String {
    if os.is_empty() {
        String::new()
    } else {
        format!(" for {}", os.join(", "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("recipes do not render for every target:\n{}", lines(.0))]
    Recipes(Vec<RecipeProblem>),
}

fn lines(problems: &[RecipeProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a clean check covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub targets: usize,
    /// (target, recipe) pairs rendered.
    pub renderings: usize,
}

/// Every target a catalogue can build: the policy's, then every release of
/// every series (an explicit `--version` builds any of them), once each.
pub fn all_targets(cat: &Catalogue) -> Result<Vec<Target>, PlanError> {
    let mut out = expand(cat, &Filter::default())?;
    let mut seen: BTreeSet<String> = out.iter().map(Target::id).collect();
    for s in &cat.series {
        for r in &s.releases {
            let filter = Filter {
                version: Some(r.version.to_string()),
                ..Filter::default()
            };
            for t in expand(cat, &filter)? {
                if seen.insert(t.id()) {
                    out.push(t);
                }
            }
        }
    }
    Ok(out)
}

/// The variables a recipe of `t` sees at build time, placeholders for the
/// build-time ones (`parent` and `parent_digest` only when `t` has a parent,
/// as in `prepare`).
fn render_vars(t: &Target) -> BTreeMap<String, String> {
    let mut vars = t.vars.clone();
    for (name, value) in PLACEHOLDERS {
        if t.parent.is_some() || !matches!(name, "parent" | "parent_digest") {
            vars.insert(name.to_string(), value.to_string());
        }
    }
    vars
}

/// Where a problem is, and what it is about (`""` for an unclosed `{{`).
type Site = (String, usize, usize, String);

/// What is known about one unknown variable across targets.
#[derive(Default)]
struct Seen {
    os: BTreeSet<String>,
    known: Option<BTreeSet<String>>,
}

/// Render every recipe for every target; `Err(Recipes)` lists every
/// problem, once each, in file, line and column order.
pub fn validate(cat: &Catalogue) -> Result<Validation, ValidateError> {
    let targets = all_targets(cat)?;
    let mut texts: BTreeMap<PathBuf, Result<String, String>> = BTreeMap::new();
    // The OS releases that render each recipe file.
    let mut users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sites: BTreeMap<Site, Seen> = BTreeMap::new();
    let mut unreadable = Vec::new();
    let mut renderings = 0;
    for t in &targets {
        let vars = render_vars(t);
        for (i, r) in t.recipes.iter().enumerate() {
            let file = r.display().to_string();
            let text = texts
                .entry(r.clone())
                .or_insert_with(|| std::fs::read_to_string(r).map_err(|e| e.to_string()));
            let text = match text {
                Ok(text) => text,
                Err(message) => {
                    let p = RecipeProblem::Read {
                        file,
                        message: message.clone(),
                    };
                    if !unreadable.contains(&p) {
                        unreadable.push(p);
                    }
                    continue;
                }
            };
            let text = match super::recipe_source(t, i, text) {
                Ok(text) => text,
                Err(message) => {
                    let p = RecipeProblem::Stage { file, message };
                    if !unreadable.contains(&p) {
                        unreadable.push(p);
                    }
                    continue;
                }
            };
            renderings += 1;
            users.entry(file.clone()).or_default().insert(t.os.clone());
            for e in template::problems(&file, text, &vars) {
                let (site, unknown) = match e {
                    template::TemplateError::Unknown {
                        file,
                        line,
                        column,
                        name,
                        ..
                    } => ((file, line, column, name), true),
                    template::TemplateError::Unclosed { file, line, column } => {
                        ((file, line, column, String::new()), false)
                    }
                };
                let seen = sites.entry(site).or_default();
                if unknown {
                    seen.os.insert(t.os.clone());
                    let keys: BTreeSet<String> = vars.keys().cloned().collect();
                    seen.known = Some(match seen.known.take() {
                        Some(k) => k.intersection(&keys).cloned().collect(),
                        None => keys,
                    });
                }
            }
        }
    }
    let mut problems = unreadable;
    problems.extend(sites.into_iter().map(|((file, line, column, name), seen)| {
        let Some(known) = seen.known else {
            return RecipeProblem::Unclosed { file, line, column };
        };
        let all = users.get(&file).is_some_and(|u| *u == seen.os);
        RecipeProblem::Unknown {
            file,
            line,
            column,
            name,
            os: if all {
                vec![]
            } else {
                seen.os.into_iter().collect()
            },
            known: known.into_iter().collect(),
        }
    }));
    if problems.is_empty() {
        Ok(Validation {
            targets: targets.len(),
            renderings,
        })
    } else {
        Err(ValidateError::Recipes(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_cover_the_build_time_vars() {
        let names: Vec<&str> = PLACEHOLDERS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, crate::plan::BUILD_TIME_VARS);
        let (_, parent) = PLACEHOLDERS[0];
        assert!(parent.parse::<crate::catalogue::ImageRef>().is_ok());
    }
}
