//! The availability gate: what CI may pin, and what is missing otherwise.
//!
//! A [`Requirement`] is one moving tag the catalogue's policy requires (one
//! platform, OS release, compiler version and variant, with its required
//! arches). It is available when the lockfile holds that tag for exactly
//! that compiler version with every required arch. Otherwise the gate says,
//! per arch, why not: not built, building, failed (with the last error), or
//! no builder can build it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::publish::lockfile::{Entry, Lockfile};

/// One required tag, derived from the catalogue and platform policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Requirement {
    pub platform: String,
    pub os: String,
    /// Full compiler version the tag must hold, e.g. `5.5.0`.
    pub ocaml: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub repository: String,
    pub tag: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Arches that must all be published.
    pub arches: Vec<String>,
    /// Arches no configured builder can build.
    #[serde(default)]
    pub no_builder: Vec<String>,
}

/// What the daemon knows about a target's current build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum JobState {
    Queued,
    Building,
    Failed { error: String },
}

/// Why one arch of a requirement is not there.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Missing {
    pub arch: String,
    /// `not-built`, `building`, `queued`, `failed`, `no-builder`, `stale`.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The gate's verdict on one requirement.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Verdict<'a> {
    Available { entry: &'a Entry },
    Missing { missing: Vec<Missing> },
}

/// Key of a job in [`Jobs`]: `<repository>:<tag>/<arch>`.
pub fn job_key(repository: &str, tag: &str, arch: &str) -> String {
    format!("{repository}:{tag}/{arch}")
}

pub type Jobs = BTreeMap<String, JobState>;

impl Requirement {
    pub fn key(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.tag.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// Judge this requirement against the lockfile and the daemon's jobs.
    pub fn verdict<'a>(&self, lock: &'a Lockfile, jobs: &Jobs) -> Verdict<'a> {
        let entry = lock.entries.get(&self.key());
        let current = entry.filter(|e| e.ocaml == self.ocaml);
        let mut missing = Vec::new();
        for arch in &self.arches {
            if current.is_some_and(|e| e.arches.contains_key(arch)) {
                continue;
            }
            let job = jobs.get(&job_key(&self.repository, &self.tag, arch));
            let (reason, detail) = if self.no_builder.contains(arch) {
                (
                    "no-builder",
                    Some(format!(
                        "no configured {} builder can build {arch}",
                        self.platform
                    )),
                )
            } else {
                match job {
                    Some(JobState::Building) => ("building", None),
                    Some(JobState::Queued) => ("queued", None),
                    Some(JobState::Failed { error }) => ("failed", Some(error.clone())),
                    None => match entry {
                        Some(e) if e.ocaml != self.ocaml => (
                            "stale",
                            Some(format!(
                                "tag holds OCaml {}, {} not built yet",
                                e.ocaml, self.ocaml
                            )),
                        ),
                        _ => ("not-built", None),
                    },
                }
            };
            missing.push(Missing {
                arch: arch.clone(),
                reason: reason.to_string(),
                detail,
            });
        }
        match (current, missing.is_empty()) {
            (Some(entry), true) => Verdict::Available { entry },
            _ => Verdict::Missing { missing },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::lockfile::tests::entry;

    fn req(arches: &[&str]) -> Requirement {
        Requirement {
            platform: "linux".into(),
            os: "debian-13".into(),
            ocaml: "5.5.0".into(),
            variant: None,
            repository: "kiln/opam".into(),
            tag: "debian-13-ocaml-5.5".into(),
            aliases: vec![],
            arches: arches.iter().map(|s| s.to_string()).collect(),
            no_builder: vec![],
        }
    }

    #[test]
    fn available_only_when_every_arch_is_there() {
        let mut lock = Lockfile::default();
        lock.publish(entry("debian-13-ocaml-5.5", 1), "new");
        assert!(matches!(
            req(&["amd64"]).verdict(&lock, &Jobs::new()),
            Verdict::Available { .. }
        ));
        let mut jobs = Jobs::new();
        jobs.insert(
            job_key("kiln/opam", "debian-13-ocaml-5.5", "s390x"),
            JobState::Failed {
                error: "smoke: ocaml -version said 5.4.0".into(),
            },
        );
        let mut r = req(&["amd64", "arm64", "s390x", "riscv64"]);
        r.no_builder = vec!["riscv64".into()];
        jobs.insert(
            job_key("kiln/opam", "debian-13-ocaml-5.5", "arm64"),
            JobState::Building,
        );
        let Verdict::Missing { missing } = r.verdict(&lock, &jobs) else {
            panic!("incomplete set must not be available")
        };
        let reasons: Vec<_> = missing
            .iter()
            .map(|m| (m.arch.as_str(), m.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("arm64", "building"),
                ("s390x", "failed"),
                ("riscv64", "no-builder")
            ]
        );
        assert!(missing[1].detail.as_deref().unwrap().contains("5.4.0"));
    }

    #[test]
    fn a_tag_holding_an_older_patch_release_is_stale() {
        let mut lock = Lockfile::default();
        lock.publish(entry("debian-13-ocaml-5.5", 1), "new");
        let mut r = req(&["amd64"]);
        r.ocaml = "5.5.1".into();
        let Verdict::Missing { missing } = r.verdict(&lock, &Jobs::new()) else {
            panic!()
        };
        assert_eq!(missing[0].reason, "stale");
    }
}
