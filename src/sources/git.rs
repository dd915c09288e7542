//! Git sources (`git:` in versions/sources.yaml): a repository pinned at
//! a commit, git's own content address. Declaring reads the commit a
//! branch names at the remote now ([`remote_commit`]); mirroring fetches
//! the branch into a local bare repository (`<state>/git/<name>.git`),
//! checks that the declared commit is there, and writes a bundle holding
//! exactly that commit as the branch, with HEAD on it ([`bundle`]): read
//! back, the bundle must name the commit and nothing else, or nothing is
//! mirrored. Recipes clone the bundle and point what they made at the
//! upstream remote, so the image refreshes from upstream afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SourcesError;
use crate::catalogue::sources::GitSource;
use crate::process::Cmd;

/// The commit `git_ref` (a branch) names at `url`, as `git ls-remote`
/// reads it.
pub async fn remote_commit(url: &str, git_ref: &str) -> Result<String, SourcesError> {
    let out = Cmd::new("git")
        .args([
            "ls-remote",
            "--heads",
            "--",
            url,
            &format!("refs/heads/{git_ref}"),
        ])
        .timeout(Duration::from_secs(300))
        .run()
        .await
        .map_err(|e| SourcesError::GitRepo(format!("{url} {git_ref}: {e}")))?;
    let commits: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, r)| *r == format!("refs/heads/{git_ref}"))
        .map(|(c, _)| c)
        .collect();
    match commits.as_slice() {
        [c] if is_commit(c) => Ok(c.to_string()),
        [] => Err(SourcesError::GitRepo(format!(
            "{url} has no branch {git_ref}"
        ))),
        _ => Err(SourcesError::GitRepo(format!(
            "{url} {git_ref}: unexpected answer {:?}",
            out.stdout
        ))),
    }
}

fn is_commit(c: &str) -> bool {
    c.len() == 40 && c.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// The URL `git` fetches: `file:<relative>` is relative to the directory
/// of the file that declared it (`file:///…` and remote URLs as they are).
pub fn fetch_url(g: &GitSource, declared_in: &Path) -> String {
    match g.url.strip_prefix("file:") {
        Some(rel) if !rel.starts_with('/') => {
            let base = declared_in.parent().unwrap_or(Path::new("."));
            base.join(rel).display().to_string()
        }
        _ => g.url.clone(),
    }
}

fn git(dir: &Path) -> Cmd {
    Cmd::new("git")
        .arg("--git-dir")
        .arg(dir)
        .timeout(Duration::from_secs(1800))
}

fn err(g: &GitSource) -> impl Fn(crate::process::ProcessError) -> SourcesError + '_ {
    move |e| SourcesError::GitRepo(format!("{} ({} {}): {e}", g.name, g.url, g.git_ref))
}

/// Write to `dest` a bundle of `g`'s commit as branch `g.git_ref`, HEAD
/// on it, fetched from `url`; the bundle read back must name exactly that
/// commit.
pub async fn bundle(
    state_dir: &Path,
    g: &GitSource,
    url: &str,
    dest: &Path,
) -> Result<(), SourcesError> {
    let Some(commit) = &g.commit else {
        return Err(SourcesError::Undeclared {
            name: g.served(),
            command: g.declare_command(),
        });
    };
    let dir: PathBuf = state_dir.join("git").join(format!("{}.git", g.name));
    if !dir.join("HEAD").exists() {
        std::fs::create_dir_all(&dir).map_err(SourcesError::io(&dir))?;
        git(&dir)
            .args(["init", "--bare", "--quiet"])
            .run()
            .await
            .map_err(err(g))?;
    }
    let fetched = format!("refs/kiln/fetched/{}", g.git_ref);
    git(&dir)
        .args(["fetch", "--quiet", "--", url])
        .arg(format!("+refs/heads/{}:{fetched}", g.git_ref))
        .run()
        .await
        .map_err(err(g))?;
    // The declared commit must be the branch's or in its history (the
    // branch may have moved on since it was declared).
    git(&dir)
        .args(["merge-base", "--is-ancestor", commit, &fetched])
        .run()
        .await
        .map_err(|_| {
            SourcesError::GitPin(format!(
                "{}: commit {commit} is not on branch {} of {url} (declared in versions/sources.yaml); re-declare it with `{}`",
                g.name,
                g.git_ref,
                g.declare_command()
            ))
        })?;
    let branch = format!("refs/heads/{}", g.git_ref);
    git(&dir)
        .args(["update-ref", &branch, commit])
        .run()
        .await
        .map_err(err(g))?;
    git(&dir)
        .args(["symbolic-ref", "HEAD", &branch])
        .run()
        .await
        .map_err(err(g))?;
    git(&dir)
        .args(["bundle", "create", "--quiet"])
        .arg(dest)
        .args(["HEAD", &branch])
        .run()
        .await
        .map_err(err(g))?;
    // Read back: the bundle names the commit, as the branch and HEAD.
    let heads = git(&dir)
        .args(["bundle", "list-heads"])
        .arg(dest)
        .run()
        .await
        .map_err(err(g))?;
    let named: Vec<(&str, &str)> = heads
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .collect();
    let ok = !named.is_empty()
        && named.iter().all(|(c, _)| c == commit)
        && named.iter().any(|(_, r)| *r == branch);
    if !ok {
        return Err(SourcesError::GitPin(format!(
            "{}: the bundle made of {commit} names {:?}",
            g.name, heads.stdout
        )));
    }
    Ok(())
}
