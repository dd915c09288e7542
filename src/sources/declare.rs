//! `kiln sources declare-openbsd`: an OpenBSD release's install sets
//! declared in `versions/sources.yaml` from its signify-verified
//! `SHA256.sig`, in one checked step on a machine that can reach a mirror.
//!
//! The sets are the names an OpenBSD release lists in `vars.sets` of its
//! `platform.yaml`, `openbsd-<release>-<arch>-<file>`. Each is declared with
//! url `<mirror>/<release>/<arch>/<file>` and the sha256 the verified
//! listing gives `<file>`; `…-SHA256` is the listing itself (the signed
//! bytes), so its sha256 is theirs. A set the listing does not have, a name
//! already declared otherwise, a signature that does not verify: refused,
//! naming the file and line, and nothing is written. New declarations are
//! appended as one commented block (the file's text and comments are kept)
//! and written atomically; declarations already there are left alone.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::Digest;

use super::signify::{self, SignifyError};
use crate::catalogue::{self, Arch, CatalogueError, SourceDecl, Sources};
use crate::model::FailureKind;

/// The OpenBSD mirror the sets are fetched from by default.
pub const DEFAULT_MIRROR: &str = "https://cdn.openbsd.org/pub/OpenBSD";

#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Signify(#[from] SignifyError),
    #[error("no platform under {platforms_dir} has an OS release {release}")]
    UnknownRelease {
        release: String,
        platforms_dir: PathBuf,
    },
    #[error("{path}:{line}: {message}; nothing was declared")]
    Platform {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{platform_yaml}:{line}: set {set} is not in the listing {sig} signs (no {file}); nothing was declared"
    )]
    MissingSet {
        platform_yaml: PathBuf,
        line: usize,
        set: String,
        file: String,
        sig: PathBuf,
    },
    #[error(
        "{sources_yaml}:{line}: {name} is already declared with {field} {declared}, but the verified listing gives {verified}; nothing was changed (remove that declaration first if the release was re-rolled)"
    )]
    Conflict {
        sources_yaml: PathBuf,
        line: usize,
        name: String,
        field: &'static str,
        declared: String,
        verified: String,
    },
    #[error("--mirror {0:?}: an http(s):// or file:/// URL of a mirror's pub/OpenBSD directory")]
    Mirror(String),
    #[error("{path}: {message}; nothing was changed")]
    Layout { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl DeclareError {
    /// Files that cannot be read or written may be fine on a retry; every
    /// other refusal needs a person.
    pub fn kind(&self) -> FailureKind {
        match self {
            DeclareError::Write { .. }
            | DeclareError::Signify(SignifyError::Read { .. })
            | DeclareError::Catalogue(CatalogueError::Read { .. }) => FailureKind::Infra,
            _ => FailureKind::Recipe,
        }
    }
}

/// What to declare.
#[derive(Debug, Clone)]
pub struct Request {
    /// `7.9`: the OpenBSD OS release whose `vars.release` is `7.9`.
    pub release: String,
    pub arch: Arch,
    pub sha256_sig: PathBuf,
    pub pubkey: PathBuf,
    /// `https://cdn.openbsd.org/pub/OpenBSD` (a trailing `/` is dropped).
    pub mirror: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Appended to `versions/sources.yaml`.
    Declared,
    /// Already declared with this url and sha256.
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct Declaration {
    pub name: String,
    pub url: String,
    pub sha256: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub release: String,
    pub arch: Arch,
    pub platform_yaml: PathBuf,
    pub sources_yaml: PathBuf,
    /// The signify key number the listing was verified with (hex).
    pub keynum: String,
    pub declarations: Vec<Declaration>,
}

/// One set of the release: its source name, the file it is in the release
/// directory, the line of `platform.yaml` naming it.
struct Set {
    name: String,
    file: String,
    line: usize,
}

/// The release's sets, from `vars.sets` of the OpenBSD OS release whose
/// `vars.release` is the one asked for, built for `arch`
/// (`openbsd-79-amd64`: OS release ids follow obuilder's image names).
fn release_sets(
    cat: &catalogue::Catalogue,
    req: &Request,
) -> Result<(PathBuf, Vec<Set>), DeclareError> {
    let is_release = |r: &catalogue::OsRelease| {
        r.distro == "openbsd" && r.vars.get("release") == Some(&req.release)
    };
    let candidates: Vec<(&catalogue::Platform, &catalogue::OsRelease)> = cat
        .platforms
        .iter()
        .flat_map(|pf| {
            pf.releases
                .iter()
                .filter(|r| is_release(r))
                .map(move |r| (pf, r))
        })
        .collect();
    let Some(&(pf, os)) = candidates
        .iter()
        .find(|(_, r)| r.arches.iter().any(|a| req.arch == a.as_str()))
        .or(candidates.first())
    else {
        return Err(DeclareError::UnknownRelease {
            release: format!("OpenBSD {} (vars.release)", req.release),
            platforms_dir: cat.platforms_dir.clone(),
        });
    };
    let id = os.id.clone();
    let path = pf.dir.join("platform.yaml");
    let text = std::fs::read_to_string(&path).map_err(|source| CatalogueError::Read {
        path: path.clone(),
        source,
    })?;
    let id_line = line_of(&text, |l| {
        let l = l.trim_start();
        let l = l.strip_prefix("- ").unwrap_or(l).trim_start();
        l.strip_prefix("id:")
            .map(|v| v.trim().trim_matches(['"', '\'']))
            == Some(id.as_str())
    })
    .unwrap_or(1);
    let refuse = |line: usize, message: String| DeclareError::Platform {
        path: path.clone(),
        line,
        message,
    };
    if !os.arches.iter().any(|a| req.arch == a.as_str()) {
        return Err(refuse(
            id_line,
            format!(
                "{id} is not built for {} (arches: {})",
                req.arch,
                os.arches.join(", ")
            ),
        ));
    }
    let Some(list) = os.vars.get("sets") else {
        return Err(refuse(id_line, format!("{id} lists no sets (vars.sets)")));
    };
    // Sources are named by release and arch, whatever the OS release's id.
    let prefix = format!("openbsd-{}-{}-", req.release, req.arch);
    let mut sets = Vec::new();
    for name in list.split_whitespace() {
        let line = line_of(&text, |l| {
            l.split_whitespace()
                .any(|w| w.trim_matches(['"', '\'', ',']) == name)
        })
        .unwrap_or(id_line);
        let file = name
            .strip_prefix(&prefix)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| {
                refuse(
                    line,
                    format!(
                        "set {name} of {id} is not named {prefix}<file of the release directory>"
                    ),
                )
            })?;
        sets.push(Set {
            name: name.to_string(),
            file: file.to_string(),
            line,
        });
    }
    if sets.is_empty() {
        return Err(refuse(id_line, format!("{id} lists no sets (vars.sets)")));
    }
    Ok((path, sets))
}

/// The 1-based number of the first line of `text` that `f` accepts.
fn line_of(text: &str, f: impl Fn(&str) -> bool) -> Option<usize> {
    text.lines().position(f).map(|i| i + 1)
}

/// The line of `sources.yaml` that declares `name`.
fn declaration_line(text: &str, name: &str) -> Option<usize> {
    line_of(text, |l| {
        let l = l.trim_start();
        let l = l.strip_prefix("- ").unwrap_or(l).trim_start();
        l.strip_prefix("name:")
            .map(|v| v.trim().trim_matches(['"', '\'']))
            == Some(name)
    })
}

/// Verify, compare with what is declared, append what is new.
pub fn declare(
    versions_dir: &Path,
    platforms_dir: &Path,
    req: &Request,
) -> Result<Report, DeclareError> {
    if !["https://", "http://", "file:///"]
        .iter()
        .any(|s| req.mirror.starts_with(s))
    {
        return Err(DeclareError::Mirror(req.mirror.clone()));
    }
    let cat = catalogue::load(versions_dir, platforms_dir)?;
    let (platform_yaml, sets) = release_sets(&cat, req)?;
    let key = signify::read_public_key(&req.pubkey)?;
    let sig_text = signify::read(&req.sha256_sig)?;
    let verified = signify::verify_embedded(&req.sha256_sig, &sig_text, &req.pubkey, &key)?;
    let listing = signify::parse_listing(&req.sha256_sig, verified.first_line, &verified.message)?;
    let base = format!(
        "{}/{}/{}",
        req.mirror.trim_end_matches('/'),
        req.release,
        req.arch
    );
    let mut wanted = Vec::new();
    for s in &sets {
        let sha256 = if s.file == "SHA256" {
            hex::encode(sha2::Sha256::digest(&verified.message))
        } else if s.file == "SHA256.sig" {
            // The signed file itself, served so that the installer checks
            // the signature too (with the key in its bsd.rd).
            hex::encode(sha2::Sha256::digest(&sig_text))
        } else {
            let Some(h) = listing.sha256(&s.file) else {
                return Err(DeclareError::MissingSet {
                    platform_yaml,
                    line: s.line,
                    set: s.name.clone(),
                    file: s.file.clone(),
                    sig: req.sha256_sig.clone(),
                });
            };
            h.to_string()
        };
        wanted.push(SourceDecl {
            name: s.name.clone(),
            url: format!("{base}/{}", s.file),
            sha256,
        });
    }
    let sources_yaml = versions_dir.join("sources.yaml");
    let existing = read_optional(&sources_yaml)?;
    let declarations = compare(&sources_yaml, &existing, &cat.sources, &wanted)?;
    let new: Vec<&SourceDecl> = wanted
        .iter()
        .zip(&declarations)
        .filter(|(_, d)| d.outcome == Outcome::Declared)
        .map(|(w, _)| w)
        .collect();
    if !new.is_empty() {
        let header = block_header(req, &platform_yaml, &key.keynum_hex());
        let text = append(&sources_yaml, &existing, &cat.sources, &header, &new)?;
        write_atomically(&sources_yaml, &text)?;
        tracing::info!(file = %sources_yaml.display(), declared = new.len(), "OpenBSD sets declared");
    }
    Ok(Report {
        release: format!("openbsd-{}", req.release),
        arch: req.arch,
        platform_yaml,
        sources_yaml,
        keynum: key.keynum_hex(),
        declarations,
    })
}

fn read_optional(path: &Path) -> Result<String, DeclareError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(CatalogueError::Read {
            path: path.to_path_buf(),
            source,
        }
        .into()),
    }
}

/// Each wanted declaration: new, or already there with the same url and
/// sha256; one there with another is refused.
fn compare(
    sources_yaml: &Path,
    text: &str,
    declared: &Sources,
    wanted: &[SourceDecl],
) -> Result<Vec<Declaration>, DeclareError> {
    let mut out = Vec::new();
    for w in wanted {
        let outcome = match declared.get(&w.name) {
            None => Outcome::Declared,
            Some(d) if d.sha256 == w.sha256 && d.url == w.url => Outcome::Unchanged,
            Some(d) => {
                let (field, declared, verified) = if d.sha256 != w.sha256 {
                    ("sha256", d.sha256.clone(), w.sha256.clone())
                } else {
                    ("url", d.url.clone(), w.url.clone())
                };
                return Err(DeclareError::Conflict {
                    sources_yaml: sources_yaml.to_path_buf(),
                    line: declaration_line(text, &w.name).unwrap_or(1),
                    name: w.name.clone(),
                    field,
                    declared,
                    verified,
                });
            }
        };
        out.push(Declaration {
            name: w.name.clone(),
            url: w.url.clone(),
            sha256: w.sha256.clone(),
            outcome,
        });
    }
    Ok(out)
}

/// The comment opening the appended block: where the digests come from.
fn block_header(req: &Request, platform_yaml: &Path, keynum: &str) -> String {
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let platform = platform_yaml
        .parent()
        .and_then(Path::file_name)
        .map(|d| format!("platforms/{}/platform.yaml", d.to_string_lossy()))
        .unwrap_or_else(|| "platform.yaml".into());
    format!(
        "OpenBSD {rel} {arch}: the sets of OpenBSD {rel} in {platform},\n\
         declared by `kiln sources declare-openbsd` from {sig}, verified\n\
         with {pubkey} (signify key {keynum}). Each sha256 is the one\n\
         the signed listing gives; SHA256's is that of the listing itself.",
        rel = req.release,
        arch = req.arch,
        sig = file_name(&req.sha256_sig),
        pubkey = file_name(&req.pubkey),
    )
}

/// `text` with the declarations appended to its `sources:` list, checked
/// by reading it back: exactly the old declarations and then the new ones,
/// and valid.
fn append(
    path: &Path,
    text: &str,
    old: &Sources,
    header: &str,
    new: &[&SourceDecl],
) -> Result<String, DeclareError> {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !text.lines().any(|l| l.starts_with("sources:")) {
        out.push_str("sources:\n");
    }
    // The list's own indentation, as its first item has it.
    let indent: String = text
        .lines()
        .find(|l| l.trim_start().starts_with("- name:"))
        .map(|l| l.chars().take_while(|c| *c == ' ').collect())
        .unwrap_or_else(|| "  ".into());
    for line in header.lines() {
        out.push_str(&format!("{indent}# {line}\n"));
    }
    for d in new {
        out.push_str(&format!(
            "{indent}- name: {}\n{indent}  url: {}\n{indent}  sha256: {}\n",
            d.name, d.url, d.sha256
        ));
    }
    let layout = |message: String| DeclareError::Layout {
        path: path.to_path_buf(),
        message,
    };
    let read: Sources = serde_norway::from_str(&out).map_err(|e| {
        layout(format!(
            "appending to its sources list would not parse ({e}); write the list as a block list (`sources:` then `  - name: …`)"
        ))
    })?;
    let mut expected = old.sources.clone();
    expected.extend(new.iter().map(|d| (*d).clone()));
    if read.sources != expected {
        return Err(layout(
            "appending at its end would not extend its sources list (is `sources:` its last key?)"
                .into(),
        ));
    }
    catalogue::sources::validate(path, &read)?;
    Ok(out)
}

/// A temporary file beside `path`, renamed over it: readers see the old
/// file or the new one, never a part.
fn write_atomically(path: &Path, text: &str) -> Result<(), DeclareError> {
    let err = |source| DeclareError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".sources.yaml.")
        .tempfile_in(dir)
        .map_err(err)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file()
            .set_permissions(meta.permissions())
            .map_err(err)?;
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, sha: char) -> SourceDecl {
        SourceDecl {
            name: name.into(),
            url: format!("https://m/{name}"),
            sha256: sha.to_string().repeat(64),
        }
    }

    const FILE: &str = "# head comment\nsources:\n  # a comment\n  - name: a\n    url: https://m/a\n    sha256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n  # trailing comment\n";

    fn old() -> Sources {
        serde_norway::from_str(FILE).unwrap()
    }

    #[test]
    fn appending_keeps_the_text_and_adds_a_commented_block() {
        let p = Path::new("versions/sources.yaml");
        let b = decl("b", 'b');
        let out = append(p, FILE, &old(), "why\nand how", &[&b]).unwrap();
        assert!(out.starts_with(FILE), "{out}");
        assert!(out.ends_with(&format!(
            "  # why\n  # and how\n  - name: b\n    url: https://m/b\n    sha256: {}\n",
            "b".repeat(64)
        )));
        // No file yet: one is started.
        let out = append(p, "", &Sources::default(), "x", &[&b]).unwrap();
        assert!(out.starts_with("sources:\n  # x\n  - name: b\n"), "{out}");
    }

    #[test]
    fn a_list_that_cannot_be_appended_to_is_refused() {
        let p = Path::new("versions/sources.yaml");
        let b = decl("b", 'b');
        let e = append(p, "sources: []\n", &Sources::default(), "x", &[&b]).unwrap_err();
        assert!(matches!(e, DeclareError::Layout { .. }), "{e}");
        assert!(e.to_string().contains("versions/sources.yaml"), "{e}");
    }

    #[test]
    fn a_different_declaration_is_refused_with_its_line() {
        let p = Path::new("versions/sources.yaml");
        let same = compare(p, FILE, &old(), &[decl("a", 'a')]).unwrap();
        assert_eq!(same[0].outcome, Outcome::Unchanged);
        let e = compare(p, FILE, &old(), &[decl("a", 'c')])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("versions/sources.yaml:4: a is already declared with sha256"),
            "{e}"
        );
        let mut moved = decl("a", 'a');
        moved.url = "https://elsewhere/a".into();
        let e = compare(p, FILE, &old(), &[moved]).unwrap_err().to_string();
        assert!(e.contains(":4: a is already declared with url"), "{e}");
    }
}
