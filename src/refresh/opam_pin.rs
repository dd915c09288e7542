//! The `opam-pin` consumer: what ocaml-ci and opam-repo-ci change when a
//! compiler is out (ocaml-ci's 88f8ccd "Bump opam-repo pin and
//! ocaml-version / dockerfile lower bounds"): the `ocaml-version` lower
//! bound in `dune-project` (`(ocaml-version (>= 4.1.3))`) and in the opam
//! files (`"ocaml-version" {>= "4.1.3"}`), and the opam-repository commit
//! their Dockerfiles reset `~/opam-repository` to (`git reset --hard
//! <commit>`). A bound is only ever raised; nothing else in the file moves.
//!
//! The values come from the release: the opam-repository commit its
//! images were built with (the lockfile's `opam_repository_commit` input),
//! and the newest `ocaml-version` package that commit holds, read from
//! Kiln's mirror of the opam-repository.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::catalogue::OcamlVersion;
use crate::config::Config;
use crate::lockfile::Lockfile;

/// The two values a consumer is bumped to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpamPin {
    /// `ocaml-version`'s version, the new lower bound (`4.1.4`).
    pub ocaml_version: String,
    /// The opam-repository commit (40 hex).
    pub commit: String,
}

/// `a` sorts after `b`, comparing dot-separated numbers (`4.1.10` > `4.1.9`).
fn newer(a: &str, b: &str) -> bool {
    let key = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    key(a) > key(b)
}

/// Replace the version inside `prefix … suffix` on every line holding
/// `prefix`, when the new one is newer; how many bounds were found.
fn raise(old: &str, prefix: &str, suffix: &str, new: &str) -> (String, usize) {
    let mut found = 0;
    let mut out = String::with_capacity(old.len());
    for line in old.split_inclusive('\n') {
        let Some(at) = line.find(prefix) else {
            out.push_str(line);
            continue;
        };
        let start = at + prefix.len();
        let Some(len) = line[start..].find(suffix) else {
            out.push_str(line);
            continue;
        };
        found += 1;
        let current = &line[start..start + len];
        if newer(new, current) {
            out.push_str(&line[..start]);
            out.push_str(new);
            out.push_str(&line[start + len..]);
        } else {
            out.push_str(line);
        }
    }
    (out, found)
}

/// The `git reset --hard <commit>` of every line that works in
/// `opam-repository`, moved to `commit`; how many were found.
fn repin(old: &str, commit: &str) -> (String, usize) {
    let mut found = 0;
    let mut out = String::with_capacity(old.len());
    let head = "git reset --hard ";
    for line in old.split_inclusive('\n') {
        let hex = line.find(head).map(|i| i + head.len()).filter(|&s| {
            line.contains("opam-repository")
                && line[s..].len() >= 40
                && line[s..s + 40].bytes().all(|b| b.is_ascii_hexdigit())
        });
        match hex {
            Some(s) => {
                found += 1;
                out.push_str(&line[..s]);
                out.push_str(commit);
                out.push_str(&line[s + 40..]);
            }
            None => out.push_str(line),
        }
    }
    (out, found)
}

/// The file at `path` with the pin applied; what is missing when the file
/// holds nothing this format changes.
pub fn render(path: &str, old: &str, pin: &OpamPin) -> Result<String, String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let (new, found, what) = if name == "dune-project" {
        let (n, f) = raise(old, "(ocaml-version (>= ", "))", &pin.ocaml_version);
        (n, f, "an `(ocaml-version (>= …))` dependency")
    } else if name.ends_with(".opam") {
        let (n, f) = raise(old, "\"ocaml-version\" {>= \"", "\"", &pin.ocaml_version);
        (n, f, "an `\"ocaml-version\" {>= \"…\"}` dependency")
    } else {
        let (n, f) = repin(old, &pin.commit);
        (n, f, "a `git reset --hard <commit>` of opam-repository")
    };
    if found == 0 {
        return Err(format!("holds no {what}"));
    }
    Ok(new)
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("no opam-repository commit is recorded for {versions} in the lockfile")]
    NoCommit { versions: String },
    #[error("reading ocaml-version's releases at opam-repository {commit}: {message}")]
    Mirror { commit: String, message: String },
    #[error("opam-repository {commit} holds no ocaml-version release")]
    NoOcamlVersion { commit: String },
}

/// The pin a release makes: the opam-repository commit its images of
/// `versions` were built with, and the newest ocaml-version at that commit.
/// Images of one release are normally built at one commit; when they were
/// not, any of them holds the compiler's packages, and the last by name is
/// taken (logged).
pub async fn pin_for(
    config: &Config,
    lock: &Lockfile,
    versions: &[OcamlVersion],
) -> Result<OpamPin, PinError> {
    let commits: BTreeSet<&str> = lock
        .entries
        .values()
        .filter(|e| e.ocaml.as_ref().is_some_and(|v| versions.contains(v)))
        .flat_map(|e| e.inputs.iter())
        .filter(|(k, _)| k.ends_with("opam_repository_commit"))
        .map(|(_, v)| v.as_str())
        .collect();
    let names = || {
        versions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if commits.len() > 1 {
        tracing::warn!(
            ?commits,
            "the release's images were built at several opam-repository commits"
        );
    }
    let Some(commit) = commits.iter().next_back().map(|c| c.to_string()) else {
        return Err(PinError::NoCommit { versions: names() });
    };
    let mirror_err = |message: String| PinError::Mirror {
        commit: commit.clone(),
        message,
    };
    let dir = crate::sources::opam::ensure_commit(config, &commit)
        .await
        .map_err(|e| mirror_err(e.to_string()))?;
    let out = crate::sources::opam::git(&dir)
        .args(["ls-tree", "--name-only", &commit, "packages/ocaml-version/"])
        .run()
        .await
        .map_err(|e| mirror_err(e.to_string()))?;
    let newest = out
        .stdout
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_prefix("ocaml-version."))
        .fold(None::<&str>, |best, v| match best {
            Some(b) if !newer(v, b) => Some(b),
            _ => Some(v),
        })
        .ok_or_else(|| PinError::NoOcamlVersion {
            commit: commit.clone(),
        })?;
    Ok(OpamPin {
        ocaml_version: newest.to_string(),
        commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> OpamPin {
        OpamPin {
            ocaml_version: "4.1.4".into(),
            commit: "c".repeat(40),
        }
    }

    #[test]
    fn the_bounds_and_the_pin_move_and_nothing_else() {
        let dune = "  (bos (>= 0.2.1))\n  (ocaml-version (>= 4.1.3))\n  (omigrate (>= 0.3.2))\n";
        assert_eq!(
            render("dune-project", dune, &pin()).unwrap(),
            dune.replace("4.1.3", "4.1.4")
        );
        let opam = "  \"logs\" {>= \"0.7.0\"}\n  \"ocaml-version\" {>= \"4.1.3\"}\n";
        assert_eq!(
            render("ocaml-ci.opam", opam, &pin()).unwrap(),
            opam.replace("4.1.3", "4.1.4")
        );
        let docker = format!(
            "FROM x\nRUN cd ~/opam-repository && git fetch -q origin master && git reset --hard {} && opam update\nRUN git reset --hard {}\n",
            "a".repeat(40),
            "b".repeat(40)
        );
        assert_eq!(
            render("Dockerfile.web", &docker, &pin()).unwrap(),
            docker.replacen(&"a".repeat(40), &"c".repeat(40), 1),
            "only the opam-repository line"
        );
    }

    #[test]
    fn a_bound_is_never_lowered() {
        let opam = "  \"ocaml-version\" {>= \"4.1.10\"}\n";
        assert_eq!(render("x.opam", opam, &pin()).unwrap(), opam);
    }

    #[test]
    fn a_file_without_what_the_format_changes_is_named() {
        let e = render("opam-repo-ci-web.opam", "  \"ocaml-version\"\n", &pin()).unwrap_err();
        assert!(e.contains("ocaml-version"), "{e}");
        let e = render("Dockerfile", "FROM x\n", &pin()).unwrap_err();
        assert!(e.contains("git reset --hard"), "{e}");
    }
}
