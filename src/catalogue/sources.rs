//! `versions/sources.yaml`: every external input a build fetches that is
//! not a distro package — opam source tarballs, compiler archives a local
//! opam repository names, OS install sets — each pinned by its sha256.
//!
//! A source is fetched once from its `url` into the registry's source
//! mirror (`kiln sources sync`, the `sources` module) and served to builds by
//! Kiln's per-build HTTP server at `{{sources_url}}/<name>`; a build needs
//! no network but the distro's package mirror. The declared sha256 is the
//! content address: it names the blob in the mirror and enters the build
//! key of every recipe that uses the source.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::CatalogueError;

/// The file's shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    #[serde(default)]
    pub sources: Vec<SourceDecl>,
    /// Git repositories at a commit, served as bundles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub git: Vec<GitSource>,
}

/// A git repository pinned at a commit (git's own content address):
/// `kiln sources sync` fetches `ref` from `url` and mirrors a bundle of
/// `commit` as branch `ref` (checked to be that commit), served to builds
/// at `{{sources_url}}/<name>.bundle`. Without `commit` it is *pending*:
/// only a machine that reaches `url` can declare it, with
/// [`GitSource::declare_command`]; a target whose recipes take it is
/// refused, naming that command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    pub name: String,
    /// The remote: `http(s)://…`, `file:///…`, or `file:<path>` relative to
    /// the declaring file.
    pub url: String,
    /// The branch the commit was read from.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// 40 lowercase hex digits, once declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl GitSource {
    /// The file recipes fetch: `<name>.bundle`.
    pub fn served(&self) -> String {
        format!("{}{BUNDLE_SUFFIX}", self.name)
    }

    /// The one command that declares (or re-declares) it, run where the
    /// network reaches its remote.
    pub fn declare_command(&self) -> String {
        format!(
            "kiln sources declare-git {} {} {}",
            self.name, self.url, self.git_ref
        )
    }
}

/// What a git source's served name ends with.
pub const BUNDLE_SUFFIX: &str = ".bundle";

/// One declared source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct SourceDecl {
    /// The file name it is served under (`{{sources_url}}/<name>`).
    pub name: String,
    /// Where `kiln sources sync` fetches it: `http(s)://…`, `file:///…`, or
    /// `file:<path>` relative to the declaring file.
    pub url: String,
    /// Its sha256, 64 lowercase hex digits.
    pub sha256: String,
}

impl SourceDecl {
    /// `sha256:<hex>`, the OCI digest of the source's blob.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.sha256)
    }
}

impl Sources {
    pub fn get(&self, name: &str) -> Option<&SourceDecl> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The git source served as `served` (`<name>.bundle`).
    pub fn git_served(&self, served: &str) -> Option<&GitSource> {
        self.git.iter().find(|g| g.served() == served)
    }

    /// Is `served` a name a recipe may fetch (a declared source, or a git
    /// source, pending or not)?
    pub fn serves(&self, served: &str) -> bool {
        self.get(served).is_some() || self.git_served(served).is_some()
    }
}

/// Whether `s` is a file name a source may be served under: no path
/// separators, no leading dot, URL-safe characters only.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '~'))
}

/// The placeholder recipes reach Kiln's per-build source server by.
pub const PLACEHOLDER: &str = "{{sources_url}}";
/// Served paths that are the mirror's own, not declared sources.
pub const BUNDLE: &str = "opam-repository.bundle";
pub const OPAM_CACHE: &str = "opam-cache";

/// What a recipe takes from the source server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRefs {
    /// Declared sources, by name, in order of first use, with the 1-based
    /// line of that use.
    pub names: Vec<(String, usize)>,
    /// opam's archive mirror (the archives of the packages it installs).
    pub opam_cache: bool,
    /// The opam-repository bundle.
    pub bundle: bool,
}

impl SourceRefs {
    pub fn merge(&mut self, other: SourceRefs) {
        for (n, l) in other.names {
            if !self.names.iter().any(|(m, _)| *m == n) {
                self.names.push((n, l));
            }
        }
        self.opam_cache |= other.opam_cache;
        self.bundle |= other.bundle;
    }
}

/// The `{{placeholder}}/<path>` uses in a recipe's text.
pub fn references(recipe: &str, placeholder: &str) -> SourceRefs {
    let mut out = SourceRefs::default();
    for (i, line) in recipe.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find(placeholder) {
            rest = &rest[at + placeholder.len()..];
            let Some(path) = rest.strip_prefix('/') else {
                continue;
            };
            let name: String = path
                .chars()
                .take_while(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '~')
                })
                .collect();
            match name.as_str() {
                "" => {}
                BUNDLE => out.bundle = true,
                OPAM_CACHE => out.opam_cache = true,
                n => {
                    if !out.names.iter().any(|(m, _)| m == n) {
                        out.names.push((n.to_string(), i + 1));
                    }
                }
            }
        }
    }
    out
}

/// An OS release's `opam_version`, where its recipes build opam from the
/// declared `opam-full-<version>.tar.gz` tarballs, must be one of them: an
/// opam the recipes cannot build is refused, naming the field.
pub fn check_opam_version(
    platform_yaml: &Path,
    field: &str,
    opam_version: Option<&str>,
    refs: &SourceRefs,
    sources: &Sources,
) -> Result<(), CatalogueError> {
    let Some(v) = opam_version else {
        return Ok(());
    };
    let builds: Vec<&str> = refs
        .names
        .iter()
        .filter_map(|(n, _)| n.strip_prefix("opam-full-")?.strip_suffix(".tar.gz"))
        .collect();
    if builds.is_empty() || sources.get(&format!("opam-full-{v}.tar.gz")).is_some() {
        return Ok(());
    }
    Err(CatalogueError::invalid(
        platform_yaml,
        field,
        format!(
            "unknown opam version {v:?}: the recipes build opam {} (declare opam-full-{v}.tar.gz in versions/sources.yaml to add it)",
            builds.join(", ")
        ),
    ))
}

pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// A URL `kiln sources sync` can fetch: `http(s)://`, `file:///` or
/// `file:<path relative to the declaring file>`.
fn fetchable(url: &str) -> bool {
    // `file:<relative path>` is relative to this file's directory (a
    // fixture beside a checkout, wherever the checkout is).
    let relative_file = url
        .strip_prefix("file:")
        .is_some_and(|p| !p.is_empty() && !p.starts_with('/'));
    url.starts_with("https://")
        || url.starts_with("http://")
        || url.starts_with("file:///")
        || relative_file
}

/// A git branch name Kiln accepts (no option-like or path-escaping names).
fn valid_ref(r: &str) -> bool {
    !r.is_empty()
        && !r.starts_with('-')
        && !r.contains("..")
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
}

fn validate_git(path: &Path, s: &Sources) -> Result<(), CatalogueError> {
    let mut seen = BTreeSet::new();
    for (i, g) in s.git.iter().enumerate() {
        let field = |f: &str| format!("git[{i}].{f}");
        let bad = |f: &str, m: String| Err(CatalogueError::invalid(path, field(f), m));
        if !valid_name(&g.name) || g.name.len() > 80 {
            return bad(
                "name",
                format!("{:?}: up to 80 letters, digits and . - _ + ~", g.name),
            );
        }
        if s.get(&g.served()).is_some() || !seen.insert(g.name.as_str()) {
            return bad("name", format!("{} declared twice", g.served()));
        }
        if !fetchable(&g.url) {
            return bad(
                "url",
                format!(
                    "{:?}: an http(s)://, file:/// or file:<path relative to this file> URL",
                    g.url
                ),
            );
        }
        if !valid_ref(&g.git_ref) {
            return bad("ref", format!("{:?}: a branch name", g.git_ref));
        }
        if let Some(c) = &g.commit
            && !(c.len() == 40 && c.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
        {
            return bad("commit", format!("{c:?}: 40 lowercase hex digits"));
        }
    }
    Ok(())
}

/// Names unique and safe, URLs with a scheme Kiln can fetch, sha256 well
/// formed; errors name the file and the field.
pub fn validate(path: &Path, s: &Sources) -> Result<(), CatalogueError> {
    validate_git(path, s)?;
    let mut seen = BTreeSet::new();
    for (i, d) in s.sources.iter().enumerate() {
        let field = |f: &str| format!("sources[{i}].{f}");
        if !valid_name(&d.name) {
            return Err(CatalogueError::invalid(
                path,
                field("name"),
                format!(
                    "{:?}: a file name of letters, digits and . - _ + ~ (it is served as {{{{sources_url}}}}/<name>)",
                    d.name
                ),
            ));
        }
        if d.name == BUNDLE || d.name == OPAM_CACHE {
            return Err(CatalogueError::invalid(
                path,
                field("name"),
                format!(
                    "{} is the mirror's own (the opam-repository bundle, opam's archive cache)",
                    d.name
                ),
            ));
        }
        if !seen.insert(d.name.as_str()) {
            return Err(CatalogueError::invalid(
                path,
                field("name"),
                format!("{} declared twice", d.name),
            ));
        }
        if !fetchable(&d.url) {
            return Err(CatalogueError::invalid(
                path,
                field("url"),
                format!(
                    "{:?}: an http(s)://, file:/// or file:<path relative to this file> URL",
                    d.url
                ),
            ));
        }
        if !valid_sha256(&d.sha256) {
            return Err(CatalogueError::invalid(
                path,
                field("sha256"),
                format!("{:?}: 64 lowercase hex digits", d.sha256),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, url: &str, sha: &str) -> SourceDecl {
        SourceDecl {
            name: name.into(),
            url: url.into(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn a_recipe_names_its_sources_by_url() {
        let r = "RUN curl -fsSL {{sources_url}}/opam-full-2.5.0.tar.gz -o x\n\
                 RUN git clone {{sources_url}}/opam-repository.bundle r\n\
                 RUN opam option archive-mirrors={{sources_url}}/opam-cache && curl {{sources_url}}/opam-full-2.5.0.tar.gz\n\
                 RUN curl \"{{sources_url}}/ocaml_4.13.1.orig.tar.gz\"";
        let refs = references(r, PLACEHOLDER);
        assert_eq!(
            refs.names,
            vec![
                ("opam-full-2.5.0.tar.gz".to_string(), 1),
                ("ocaml_4.13.1.orig.tar.gz".to_string(), 4)
            ]
        );
        assert!(refs.bundle && refs.opam_cache);
    }

    #[test]
    fn bad_declarations_name_the_field() {
        let p = Path::new("versions/sources.yaml");
        let ok = "a".repeat(64);
        let cases = [
            (decl("../x", "https://e/x", &ok), "sources[0].name"),
            (decl("x.tgz", "ftp://e/x", &ok), "sources[0].url"),
            (decl("x.tgz", "https://e/x", "ABC"), "sources[0].sha256"),
        ];
        for (d, field) in cases {
            let e = validate(
                p,
                &Sources {
                    sources: vec![d],
                    ..Sources::default()
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
        let twice = Sources {
            git: vec![],
            sources: vec![
                decl("x.tgz", "https://e/x", &ok),
                decl("x.tgz", "https://e/y", &ok),
            ],
        };
        let e = validate(p, &twice).unwrap_err().to_string();
        assert!(e.contains("sources[1].name") && e.contains("twice"), "{e}");
        let good = Sources {
            sources: vec![decl("opam-full-2.5.0.tar.gz", "https://e/x", &ok)],
            ..Sources::default()
        };
        validate(p, &good).unwrap();
    }

    #[test]
    fn a_file_url_may_be_relative_to_the_declaring_file() {
        let p = Path::new("versions/sources.yaml");
        let ok = "a".repeat(64);
        let one = |url: &str| Sources {
            sources: vec![decl("SHA256", url, &ok)],
            ..Sources::default()
        };
        validate(p, &one("file:../fixtures/sets/SHA256")).unwrap();
        validate(p, &one("file:///abs/SHA256")).unwrap();
        for bad in ["file:", "file://host/x"] {
            let e = validate(p, &one(bad)).unwrap_err().to_string();
            assert!(e.contains("sources[0].url"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_git_source_names_its_remote_branch_and_commit() {
        let p = Path::new("versions/sources.yaml");
        let g = |name: &str, url: &str, r: &str, commit: Option<&str>| Sources {
            git: vec![GitSource {
                name: name.into(),
                url: url.into(),
                git_ref: r.into(),
                commit: commit.map(String::from),
            }],
            ..Sources::default()
        };
        let c = "0123456789abcdef0123456789abcdef01234567";
        let ok = g(
            "beta",
            "https://github.com/ocaml/ocaml-beta-repository",
            "master",
            Some(c),
        );
        validate(p, &ok).unwrap();
        assert!(ok.serves("beta.bundle") && !ok.serves("beta"));
        assert_eq!(
            ok.git[0].declare_command(),
            "kiln sources declare-git beta https://github.com/ocaml/ocaml-beta-repository master"
        );
        validate(p, &g("beta", "https://e/r", "master", None)).unwrap();
        for (bad, field) in [
            (g("beta", "git@e:r", "master", None), "git[0].url"),
            (
                g("beta", "https://e/r", "--upload-pack=x", None),
                "git[0].ref",
            ),
            (
                g("beta", "https://e/r", "master", Some("HEAD")),
                "git[0].commit",
            ),
            (g("../b", "https://e/r", "master", None), "git[0].name"),
        ] {
            let e = validate(p, &bad).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
