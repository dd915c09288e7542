//! The opam side of the mirror: the archives an opam package fetches,
//! read from its opam file at the opam-repository commit in use (opam's own
//! `url { src checksum }` and `extra-source` sections pin them), and the
//! repository itself as a git bundle of that commit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

use super::SourcesError;
use crate::config::Config;
use crate::process::Cmd;

/// A checksum as opam writes it (`sha256=<hex>`). Kiln mirrors only what a
/// strong hash pins: sha256 or sha512.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Checksum {
    Sha256(String),
    Sha512(String),
}

impl Checksum {
    /// opam's cache directory name for the hash kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Sha512(_) => "sha512",
        }
    }

    pub fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Sha512(h) => h,
        }
    }

    /// Where opam looks for the archive in an archive mirror.
    pub fn cache_path(&self) -> String {
        let h = self.hex();
        format!("{}/{}/{h}", self.kind(), &h[..2])
    }

    /// `kind=hex`, as opam writes it.
    pub fn opam(&self) -> String {
        format!("{}={}", self.kind(), self.hex())
    }

    /// The strongest usable checksum of an opam `checksum:` list.
    pub fn best(list: &[String]) -> Option<Checksum> {
        let find = |kind: &str, len: usize| {
            list.iter().find_map(|c| {
                let (k, h) = c.split_once('=')?;
                let ok = k == kind && h.len() == len && h.chars().all(|c| c.is_ascii_hexdigit());
                ok.then(|| h.to_ascii_lowercase())
            })
        };
        find("sha256", 64)
            .map(Checksum::Sha256)
            .or_else(|| find("sha512", 128).map(Checksum::Sha512))
    }

    /// A running hash of this checksum's kind.
    pub fn hasher(&self) -> Hasher {
        match self {
            Checksum::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Checksum::Sha512(_) => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    pub fn hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// One archive an opam package fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// `name.version`, plus `/<extra-source name>` for extra sources.
    pub package: String,
    pub url: String,
    pub checksum: Checksum,
}

/// The `url` and `extra-source` sections of an opam file: (section name,
/// src, checksums). Only what Kiln needs of opam's syntax: sections are
/// `url {` or `extra-source "<name>" {`, fields `src:` and `checksum:`
/// (a string or a list of strings).
pub fn url_sections(text: &str) -> Vec<(String, Option<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let url_at = find_word(rest, "url");
        let extra_at = find_word(rest, "extra-source");
        let (at, extra) = match (url_at, extra_at) {
            (Some(u), Some(e)) if e < u => (e, true),
            (Some(u), _) => (u, false),
            (None, Some(e)) => (e, true),
            (None, None) => break,
        };
        let after = &rest[at..];
        let Some(open) = after.find('{') else { break };
        let head = &after[..open];
        let Some(close) = after[open..].find('}') else {
            break;
        };
        let body = &after[open + 1..open + close];
        let name = if extra {
            strings(head).into_iter().next().unwrap_or_default()
        } else {
            String::new()
        };
        let src = field(body, "src:").and_then(|v| strings(v).into_iter().next());
        let checksum = field(body, "checksum:").map(strings).unwrap_or_default();
        out.push((name, src, checksum));
        rest = &after[open + close + 1..];
    }
    out
}

/// `word` at the start of a line (opam sections are top-level).
fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let at = from + i;
        let line_start = at == 0 || text[..at].ends_with('\n');
        let next = text[at + word.len()..].chars().next();
        if line_start && matches!(next, Some(' ' | '{' | '\t')) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The value text of `name` in a section body, up to the next field.
fn field<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let i = body.find(name)?;
    let v = &body[i + name.len()..];
    let end = v
        .trim_start()
        .strip_prefix('[')
        .map(|inner| v.len() - inner.len() + inner.find(']').unwrap_or(inner.len()))
        .unwrap_or_else(|| v.find('\n').unwrap_or(v.len()));
    Some(&v[..end])
}

/// The double-quoted strings of `s`.
fn strings(s: &str) -> Vec<String> {
    s.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, x)| x.to_string())
        .collect()
}

/// The local bare mirror of the opam-repository (`<state>/opam-repository.git`),
/// shared by the source mirror (archives and bundles at a commit) and
/// `plan::opam_repo` (which packages changed between two commits).
pub fn mirror_dir(config: &Config) -> PathBuf {
    config.state_dir.join("opam-repository.git")
}

/// `git` on the mirror.
pub fn git(dir: &Path) -> Cmd {
    Cmd::new("git")
        .arg("--git-dir")
        .arg(dir)
        .timeout(Duration::from_secs(1800))
}

fn git_err(e: crate::process::ProcessError) -> SourcesError {
    SourcesError::Git(e.to_string())
}

/// The mirror, created empty the first time.
async fn open_mirror(config: &Config) -> Result<PathBuf, SourcesError> {
    let dir = mirror_dir(config);
    if !dir.join("HEAD").exists() {
        Cmd::new("git")
            .args(["init", "--bare", "--quiet"])
            .arg(&dir)
            .run()
            .await
            .map_err(git_err)?;
    }
    Ok(dir)
}

/// Fetch the followed ref (`plan.opam_repository_ref` of
/// `plan.opam_repository`) into the mirror as `refs/kiln/followed`;
/// returns the mirror.
pub async fn fetch_followed(config: &Config) -> Result<PathBuf, SourcesError> {
    let dir = open_mirror(config).await?;
    git(&dir)
        .args(["fetch", "--quiet", &config.plan.opam_repository])
        .arg(format!(
            "+{}:refs/kiln/followed",
            config.plan.opam_repository_ref
        ))
        .run()
        .await
        .map_err(git_err)?;
    Ok(dir)
}

/// Make sure the mirror holds `commit`, fetching the followed ref if it
/// does not.
pub async fn ensure_commit(config: &Config, commit: &str) -> Result<PathBuf, SourcesError> {
    let has = |dir: PathBuf| async move {
        git(&dir)
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .run()
            .await
            .is_ok()
    };
    let dir = open_mirror(config).await?;
    if has(dir.clone()).await {
        return Ok(dir);
    }
    let dir = fetch_followed(config).await?;
    if !has(dir.clone()).await {
        return Err(SourcesError::Git(format!(
            "commit {commit} is not in {} (followed ref {})",
            config.plan.opam_repository, config.plan.opam_repository_ref
        )));
    }
    Ok(dir)
}

/// The archives of `packages` (`name.version`) at `commit`. A package
/// whose opam file has no `url` is a virtual package and fetches nothing;
/// one whose archive no sha256/sha512 pins is refused, naming the file.
pub async fn archives(
    config: &Config,
    commit: &str,
    packages: &[String],
) -> Result<Vec<Archive>, SourcesError> {
    let dir = ensure_commit(config, commit).await?;
    let mut out = Vec::new();
    for p in packages {
        // An unversioned name (`ocaml-options-only-flambda`) is a
        // configuration package: opam picks its version, and it fetches
        // nothing.
        let Some((name, _)) = p.split_once('.') else {
            tracing::debug!(package = %p, "unversioned package: no archive");
            continue;
        };
        let path = format!("packages/{name}/{p}/opam");
        let shown = git(&dir)
            .args(["show", &format!("{commit}:{path}")])
            .run()
            .await
            .map_err(|e| SourcesError::Opam {
                path: format!("{path} at {commit}"),
                message: format!("no such package in the opam-repository: {e}"),
            })?;
        for (extra, src, sums) in url_sections(&shown.stdout) {
            let Some(url) = src else { continue };
            let checksum = Checksum::best(&sums).ok_or_else(|| SourcesError::Opam {
                path: format!("{path} at {commit}"),
                message: format!(
                    "{}: {url} has no sha256 or sha512 checksum, so Kiln cannot pin it",
                    if extra.is_empty() {
                        "url".to_string()
                    } else {
                        format!("extra-source {extra:?}")
                    }
                ),
            })?;
            let package = if extra.is_empty() {
                p.clone()
            } else {
                format!("{p}/{extra}")
            };
            out.push(Archive {
                package,
                url,
                checksum,
            });
        }
    }
    Ok(out)
}

/// Write a git bundle of `commit` as `refs/heads/master` into `dest`.
pub async fn bundle(config: &Config, commit: &str, dest: &Path) -> Result<(), SourcesError> {
    let dir = ensure_commit(config, commit).await?;
    let gerr = |e: crate::process::ProcessError| SourcesError::Git(e.to_string());
    git(&dir)
        .args(["update-ref", "refs/heads/master", commit])
        .run()
        .await
        .map_err(gerr)?;
    git(&dir)
        .args(["bundle", "create", "--quiet"])
        .arg(dest)
        .arg("master")
        .run()
        .await
        .map_err(gerr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_and_extra_sources_are_read_from_an_opam_file() {
        let text = r#"opam-version: "2.0"
synopsis: "x"
build: [make "url"]
url {
  src: "https://example.org/ocaml-4.13.1.tar.gz"
  checksum: [
    "md5=a55ca12a4e6edf83cb4777abdb7b2f4d"
    "sha256=66a5353c5e7b33a8981446e857657aad45a3b82080ea5c67d4baa434eacfcf5f"
  ]
}
extra-source "fix.patch" {
  src: "https://example.org/fix.patch"
  checksum: "sha512=00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
}
"#;
        let s = url_sections(text);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(
            s[0].1.as_deref(),
            Some("https://example.org/ocaml-4.13.1.tar.gz")
        );
        let c = Checksum::best(&s[0].2).unwrap();
        assert_eq!(c.kind(), "sha256");
        assert_eq!(
            c.cache_path(),
            "sha256/66/66a5353c5e7b33a8981446e857657aad45a3b82080ea5c67d4baa434eacfcf5f"
        );
        assert_eq!(s[1].0, "fix.patch");
        assert_eq!(Checksum::best(&s[1].2).unwrap().kind(), "sha512");
        let md5_only = vec!["md5=a55ca12a4e6edf83cb4777abdb7b2f4d".to_string()];
        assert!(Checksum::best(&md5_only).is_none());
    }
}
