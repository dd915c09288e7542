//! `kiln sources declare-git NAME URL REF`: a git source declared at the
//! commit branch REF of URL names now (`git ls-remote`), run where the
//! network reaches URL. A pending entry of `git:` in versions/sources.yaml
//! (one without `commit`) gets its commit; a declared one is moved to the
//! branch's commit (re-declaring); a new name gets a new entry. The file's
//! text and comments are kept; the result is read back and must be the
//! old declarations with exactly that change, valid, before it replaces
//! the file (temporary file, rename). An entry with the same name but
//! another URL or branch is refused, naming its line.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SourcesError;
use crate::catalogue::CatalogueError;
use crate::catalogue::sources::{self as decls, GitSource, Sources};

#[derive(Debug, thiserror::Error)]
pub enum DeclareGitError {
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Sources(#[from] SourcesError),
    #[error("{path}:{line}: {message}; nothing was declared")]
    Conflict {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}; nothing was declared")]
    Layout { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A new entry.
    Added,
    /// A pending entry declared, or a declared one moved.
    Declared,
    /// Already at that commit: nothing written.
    Unchanged,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
    /// The commit it was declared at before, if any.
    pub previous: Option<String>,
    pub outcome: Outcome,
    pub sources_yaml: PathBuf,
}

/// Declare `name` (`url`, branch `git_ref`) at the commit the branch names
/// now, in `<versions_dir>/sources.yaml`.
pub async fn declare(
    versions_dir: &Path,
    name: &str,
    url: &str,
    git_ref: &str,
) -> Result<Report, DeclareGitError> {
    let path = versions_dir.join("sources.yaml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(CatalogueError::Read { path, source }.into()),
    };
    let old: Sources = parse(&path, &text)?;
    let mut wanted = GitSource {
        name: name.to_string(),
        url: url.to_string(),
        git_ref: git_ref.to_string(),
        commit: None,
    };
    // The request itself must be a valid declaration.
    decls::validate(
        &path,
        &Sources {
            git: vec![wanted.clone()],
            ..Sources::default()
        },
    )?;
    let existing = old.git.iter().find(|g| g.name == name).cloned();
    if let Some(e) = &existing
        && (e.url != url || e.git_ref != git_ref)
    {
        return Err(DeclareGitError::Conflict {
            line: entry_line(&text, name).unwrap_or(1),
            path,
            message: format!(
                "{name} is declared with url {} and ref {}, not {url} {git_ref}",
                e.url, e.git_ref
            ),
        });
    }
    let commit = super::git::remote_commit(&super::git::fetch_url(&wanted, &path), git_ref).await?;
    wanted.commit = Some(commit.clone());
    let previous = existing.as_ref().and_then(|e| e.commit.clone());
    let report = |outcome| Report {
        name: name.to_string(),
        url: url.to_string(),
        git_ref: git_ref.to_string(),
        commit: commit.clone(),
        previous: previous.clone(),
        outcome,
        sources_yaml: path.clone(),
    };
    if previous.as_deref() == Some(commit.as_str()) {
        return Ok(report(Outcome::Unchanged));
    }
    let (new_text, outcome) = match existing {
        Some(_) => (set_commit(&path, &text, name, &commit)?, Outcome::Declared),
        None => (add_entry(&text, &wanted), Outcome::Added),
    };
    // Read back: the old declarations with exactly this change.
    let read = parse(&path, &new_text)?;
    let mut expected = old.clone();
    match expected.git.iter_mut().find(|g| g.name == name) {
        Some(g) => g.commit = Some(commit.clone()),
        None => expected.git.push(wanted.clone()),
    }
    if read != expected {
        return Err(DeclareGitError::Layout {
            path,
            message: "editing its `git:` list would change more than this entry (write it as a block list: `git:` then `  - name: …`)".into(),
        });
    }
    decls::validate(&path, &read)?;
    write_atomically(&path, &new_text)?;
    Ok(report(outcome))
}

fn parse(path: &Path, text: &str) -> Result<Sources, DeclareGitError> {
    if text.trim().is_empty() {
        return Ok(Sources::default());
    }
    serde_norway::from_str(text).map_err(|e| DeclareGitError::Layout {
        path: path.to_path_buf(),
        message: format!("does not parse: {e}"),
    })
}

/// The 1-based line of `- name: <name>` (the entry's first line).
fn entry_line(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim() == format!("- name: {name}"))
        .map(|i| i + 1)
}

fn indent_of(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

/// Set (or add) the `commit:` line of entry `name`.
fn set_commit(
    path: &Path,
    text: &str,
    name: &str,
    commit: &str,
) -> Result<String, DeclareGitError> {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let start = entry_line(text, name).ok_or_else(|| DeclareGitError::Layout {
        path: path.to_path_buf(),
        message: format!("no line `- name: {name}`"),
    })? - 1;
    let item_indent = indent_of(&lines[start]);
    let field_indent = " ".repeat(item_indent + 2);
    // The entry's lines: more indented than its `- `, up to the next item
    // or key.
    let end = (start + 1..lines.len())
        .find(|&i| {
            let l = &lines[i];
            !l.trim().is_empty() && !l.trim_start().starts_with('#') && indent_of(l) <= item_indent
        })
        .unwrap_or(lines.len());
    let field = format!("{field_indent}commit: {commit}");
    match (start + 1..end).find(|&i| lines[i].trim_start().starts_with("commit:")) {
        Some(i) => lines[i] = field,
        None => {
            // After the entry's last field, before trailing comments.
            let last = (start..end)
                .rev()
                .find(|&i| !lines[i].trim().is_empty() && !lines[i].trim_start().starts_with('#'))
                .unwrap_or(start);
            lines.insert(last + 1, field);
        }
    }
    Ok(lines.join("\n") + "\n")
}

/// Add a new entry at the end of the `git:` list (a `git:` list started
/// before `sources:` when there is none, so that `sources:` stays the
/// file's last key, where `declare-openbsd` appends).
fn add_entry(text: &str, g: &GitSource) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let top = |l: &str| !l.is_empty() && !l.starts_with(' ') && !l.starts_with('#');
    let entry = vec![
        format!(
            "  # Declared by `kiln sources declare-git` from {} {}.",
            g.url, g.git_ref
        ),
        format!("  - name: {}", g.name),
        format!("    url: {}", g.url),
        format!("    ref: {}", g.git_ref),
        format!("    commit: {}", g.commit.as_deref().unwrap_or_default()),
    ];
    let at = match lines.iter().position(|l| l.starts_with("git:")) {
        Some(g) => {
            // Before the next top-level key and the comments just above it.
            let mut end = (g + 1..lines.len())
                .find(|&i| top(&lines[i]))
                .unwrap_or(lines.len());
            while end > g + 1 && (lines[end - 1].starts_with('#') || lines[end - 1].is_empty()) {
                end -= 1;
            }
            end
        }
        None => {
            let at = lines
                .iter()
                .position(|l| l.starts_with("sources:"))
                .unwrap_or(lines.len());
            lines.insert(at, "git:".into());
            at + 1
        }
    };
    for (k, l) in entry.into_iter().enumerate() {
        lines.insert(at + k, l);
    }
    lines.join("\n") + "\n"
}

fn write_atomically(path: &Path, text: &str) -> Result<(), DeclareGitError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let werr = |source| DeclareGitError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(werr)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(werr)?;
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# head\ngit:\n  # beta\n  - name: beta\n    url: https://e/beta\n    ref: master\n  # overlay\n  - name: overlay\n    url: https://e/r\n    ref: patches\n    commit: 1111111111111111111111111111111111111111\n# the tarballs\nsources:\n  - name: a\n    url: https://m/a\n    sha256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n";
    const C: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn a_pending_entry_gets_its_commit_and_a_declared_one_moves() {
        let p = Path::new("versions/sources.yaml");
        let out = set_commit(p, FILE, "beta", C).unwrap();
        assert!(out.contains("    ref: master\n    commit: 2222222222222222222222222222222222222222\n  # overlay\n"), "{out}");
        let out = set_commit(p, FILE, "overlay", C).unwrap();
        assert!(out.contains("    ref: patches\n    commit: 2222222222222222222222222222222222222222\n# the tarballs\n"), "{out}");
        assert!(!out.contains("1111"));
        let s: Sources = serde_norway::from_str(&out).unwrap();
        assert_eq!(s.sources.len(), 1);
    }

    #[test]
    fn a_new_entry_goes_at_the_end_of_the_git_list_or_starts_one() {
        let g = GitSource {
            name: "new".into(),
            url: "file:///r".into(),
            git_ref: "main".into(),
            commit: Some(C.into()),
        };
        let out = add_entry(FILE, &g);
        let s: Sources = serde_norway::from_str(&out).unwrap();
        assert_eq!(
            s.git.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            ["beta", "overlay", "new"]
        );
        assert!(out.ends_with(
            "sha256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
        ));
        let bare = "sources:\n  - name: a\n    url: https://m/a\n    sha256: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n";
        let out = add_entry(bare, &g);
        assert!(out.starts_with("git:\n"), "{out}");
        let s: Sources = serde_norway::from_str(&out).unwrap();
        assert_eq!((s.git.len(), s.sources.len()), (1, 1));
    }
}
