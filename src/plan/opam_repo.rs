//! Which opam-repository commit is a build input, and when it moves.
//!
//! The repository moves many times a day; if every commit entered every
//! build key, every image would be rebuilt (and change digest) all the
//! time. docker-base-images refreshes it weekly. Kiln keeps one commit *in
//! use* (in the state database) and moves it to the followed ref's newest
//! commit only
//! - when `plan.opam_repository_refresh_days` have passed since it was
//!   taken, or
//! - when, between the commit in use and the new one, the opam files of a
//!   package the images install changed (`packages/<name>/<name>.<version>/`,
//!   read from a local mirror of the repository).
//!
//! A commit pinned in `plan.opam_repository_commit` overrides all of it.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;

use super::prepare::PrepareError;
use crate::config::Config;
use crate::process::Cmd;
use crate::state::opam_repo::OpamRepoStore;

fn git_err(e: impl std::fmt::Display) -> PrepareError {
    PrepareError::OpamRepository(e.to_string())
}

/// The newest commit of the followed ref (`git ls-remote`).
pub async fn upstream_commit(config: &Config) -> Result<String, PrepareError> {
    let out = Cmd::new("git")
        .args([
            "ls-remote",
            &config.plan.opam_repository,
            &config.plan.opam_repository_ref,
        ])
        .timeout(Duration::from_secs(30))
        .run()
        .await
        .map_err(git_err)?;
    out.stdout
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| {
            git_err(format!(
                "git ls-remote {} {}: no such ref",
                config.plan.opam_repository, config.plan.opam_repository_ref
            ))
        })
}

/// The commit that is a build input now: pinned, or in use; the first
/// time, the followed ref's newest commit, which is then in use.
pub async fn commit_in_use(config: &Config) -> Result<String, PrepareError> {
    if !config.plan.opam_repository_commit.is_empty() {
        return Ok(config.plan.opam_repository_commit.clone());
    }
    let store = OpamRepoStore::open(&config.database.path).map_err(git_err)?;
    if let Some((c, _)) = store.current().map_err(git_err)? {
        return Ok(c);
    }
    let c = upstream_commit(config).await?;
    store.take(&c).map_err(git_err)?;
    Ok(c)
}

/// What a new upstream commit means for the builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Nothing in use yet: `commit` is taken, nothing to rebuild.
    First { commit: String },
    /// The commit in use is the newest.
    Current,
    /// The refresh period passed: `commit` is taken, everything rebuilds.
    Refresh { commit: String },
    /// Packages the images install changed: `commit` is taken; the images
    /// installing these packages (`name.version`) rebuild.
    Packages {
        commit: String,
        packages: BTreeSet<String>,
    },
    /// Nothing the images install changed: the commit in use stays.
    Unrelated { commit: String },
}

/// The packages (`name.version`) whose opam files decide a target's image:
/// its compiler packages and the `ocaml` package of its release. A
/// compiler-less image installs none: it moves with the refresh cadence.
pub fn installed_packages(t: &super::Target) -> BTreeSet<String> {
    let mut p: BTreeSet<String> = t.opam_packages.iter().cloned().collect();
    if let Some(v) = &t.version {
        p.insert(format!("ocaml.{}", v.release()));
    }
    p
}

/// Decide whether the commit in use moves to the followed ref's newest,
/// given the packages (`name.version`) the images install; take it if so.
pub async fn poll(config: &Config, installed: &BTreeSet<String>) -> Result<Move, PrepareError> {
    let store = OpamRepoStore::open(&config.database.path).map_err(git_err)?;
    let upstream = upstream_commit(config).await?;
    let Some((current, since)) = store.current().map_err(git_err)? else {
        store.take(&upstream).map_err(git_err)?;
        return Ok(Move::First { commit: upstream });
    };
    if current == upstream {
        return Ok(Move::Current);
    }
    let period = chrono::Duration::days(config.plan.opam_repository_refresh_days as i64);
    let m = if Utc::now() - since >= period {
        Move::Refresh {
            commit: upstream.clone(),
        }
    } else {
        let packages = changed_packages(config, &current, &upstream, installed).await?;
        if packages.is_empty() {
            return Ok(Move::Unrelated { commit: upstream });
        }
        Move::Packages {
            commit: upstream.clone(),
            packages,
        }
    };
    store.take(&upstream).map_err(git_err)?;
    Ok(m)
}

/// The installed packages (`name.version`) whose opam files differ between
/// `from` and `to`. A commit the mirror cannot find counts as a change to
/// every package: better one rebuild too many than a stale image.
pub async fn changed_packages(
    config: &Config,
    from: &str,
    to: &str,
    installed: &BTreeSet<String>,
) -> Result<BTreeSet<String>, PrepareError> {
    // The source mirror's local copy of the repository: one mirror and one
    // fetch of the followed ref serve both.
    let dir = crate::sources::opam::fetch_followed(config)
        .await
        .map_err(|e| match e {
            crate::sources::SourcesError::Git(message) => git_err(message),
            e => git_err(e),
        })?;
    let diff = crate::sources::opam::git(&dir)
        .args(["diff", "--name-only", from, to, "--", "packages/"])
        .run()
        .await;
    let Ok(diff) = diff else {
        return Ok(installed.clone());
    };
    Ok(affected(&diff.stdout, installed))
}

/// The installed packages whose directory a changed path is in.
fn affected(changed_paths: &str, installed: &BTreeSet<String>) -> BTreeSet<String> {
    installed
        .iter()
        .filter(|pkg| {
            let dir = match pkg.split_once('.') {
                Some((name, _)) => format!("packages/{name}/{pkg}/"),
                // Unversioned (`ocaml-options-only-flambda`): any version.
                None => format!("packages/{pkg}/"),
            };
            changed_paths.lines().any(|p| p.starts_with(&dir))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_installed_packages_own_files_count() {
        let installed: BTreeSet<String> = ["ocaml-base-compiler.5.5.0", "ocaml.5.5.0"]
            .map(String::from)
            .into();
        let paths = "packages/dune/dune.3.20.0/opam\npackages/ocaml-base-compiler/ocaml-base-compiler.5.4.1/opam\n";
        assert!(affected(paths, &installed).is_empty());
        let paths = "packages/ocaml/ocaml.5.5.0/opam\n";
        assert_eq!(
            affected(paths, &installed),
            ["ocaml.5.5.0".to_string()].into()
        );
        let options: BTreeSet<String> = ["ocaml-options-only-flambda".to_string()].into();
        let paths = "packages/ocaml-options-only-flambda/ocaml-options-only-flambda.1/opam\n";
        assert_eq!(affected(paths, &options), options);
    }
}
