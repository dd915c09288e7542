//! The availability gate: what CI may pin, and what is missing otherwise.
//!
//! A [`Requirement`] is one moving tag the catalogue's policy requires (one
//! platform, OS release, compiler version and variant, with its required
//! arches). It is available when the lockfile holds that tag for exactly
//! that compiler version with every required arch. Otherwise the gate says,
//! per arch, why not: not built, building, failed (with the last error), or
//! no builder can build it.

use serde::Serialize;

use crate::catalogue::Arch;
use crate::lockfile::{Entry, Lockfile};
use crate::model::FailureKind;
use crate::model::requirement::job_key;
pub use crate::model::{ArchState, Jobs, Requirement};

/// Why one arch of a requirement is not there.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MissingReason {
    NotBuilt,
    Building,
    Queued,
    Failed,
    NoBuilder,
    /// The tag holds an older compiler of the series.
    Stale,
}

impl MissingReason {
    pub const ALL: [MissingReason; 6] = [
        MissingReason::NotBuilt,
        MissingReason::Building,
        MissingReason::Queued,
        MissingReason::Failed,
        MissingReason::NoBuilder,
        MissingReason::Stale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MissingReason::NotBuilt => "not-built",
            MissingReason::Building => "building",
            MissingReason::Queued => "queued",
            MissingReason::Failed => "failed",
            MissingReason::NoBuilder => "no-builder",
            MissingReason::Stale => "stale",
        }
    }
}

/// Why one arch of a requirement is not there.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Missing {
    pub arch: Arch,
    pub reason: MissingReason,
    /// Why the last build failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<FailureKind>,
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

/// Judge a requirement against the lockfile and the daemon's jobs.
pub fn verdict<'a>(req: &Requirement, lock: &'a Lockfile, jobs: &Jobs) -> Verdict<'a> {
    let entry = lock.entries.get(&req.key());
    let current = entry.filter(|e| e.ocaml.as_ref() == Some(&req.ocaml));
    let mut missing = Vec::new();
    for &arch in &req.arches {
        if current.is_some_and(|e| e.arches.contains_key(&arch)) {
            continue;
        }
        missing.push(missing_arch(req, entry, jobs, arch));
    }
    match (current, missing.is_empty()) {
        (Some(entry), true) => Verdict::Available { entry },
        _ => Verdict::Missing { missing },
    }
}

/// Why `arch` of `req` is not published.
fn missing_arch(req: &Requirement, entry: Option<&Entry>, jobs: &Jobs, arch: Arch) -> Missing {
    let mut kind = None;
    let (reason, detail) = if req.no_builder.contains(&arch) {
        kind = Some(FailureKind::NoBuilder);
        (
            MissingReason::NoBuilder,
            Some(format!(
                "no configured {} builder can build {arch}",
                req.platform
            )),
        )
    } else {
        match jobs.get(&job_key(&req.id(), arch)) {
            Some(ArchState::Building) => (MissingReason::Building, None),
            Some(ArchState::Queued) => (MissingReason::Queued, None),
            Some(ArchState::Failed {
                kind: k,
                error,
                log,
            }) => {
                kind = Some(*k);
                let detail = match log {
                    Some(l) => format!("{error} (log: {l})"),
                    None => error.clone(),
                };
                (MissingReason::Failed, Some(detail))
            }
            Some(ArchState::Succeeded) | None => match entry {
                Some(e) if e.ocaml.as_ref() != Some(&req.ocaml) => (
                    MissingReason::Stale,
                    Some(format!(
                        "tag holds OCaml {}, {} not built yet",
                        e.ocaml.as_ref().map_or("none".into(), ToString::to_string),
                        req.ocaml
                    )),
                ),
                _ => (MissingReason::NotBuilt, None),
            },
        }
    };
    Missing {
        arch,
        reason,
        kind,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockfile::tests::entry;
    use crate::model::TagId;

    fn req(arches: &[Arch]) -> Requirement {
        Requirement {
            platform: "linux".into(),
            os: "debian-13".into(),
            ocaml: "5.5.0".parse().unwrap(),
            variant: None,
            repository: "kiln/opam".into(),
            tag: "debian-13-ocaml-5.5".into(),
            aliases: vec![],
            arches: arches.to_vec(),
            no_builder: vec![],
        }
    }

    fn key(arch: Arch) -> String {
        job_key(&TagId::new("kiln/opam", "debian-13-ocaml-5.5"), arch)
    }

    #[test]
    fn available_only_when_every_arch_is_there() {
        let mut lock = Lockfile::default();
        lock.publish(entry("debian-13-ocaml-5.5", 1), "new");
        assert!(matches!(
            verdict(&req(&[Arch::Amd64]), &lock, &Jobs::new()),
            Verdict::Available { .. }
        ));
        let mut jobs = Jobs::new();
        jobs.insert(
            key(Arch::S390x),
            ArchState::Failed {
                kind: FailureKind::Recipe,
                error: "smoke: ocaml -version said 5.4.0".into(),
                log: None,
            },
        );
        let mut r = req(&[Arch::Amd64, Arch::Arm64, Arch::S390x, Arch::Riscv64]);
        r.no_builder = vec![Arch::Riscv64];
        jobs.insert(key(Arch::Arm64), ArchState::Building);
        let Verdict::Missing { missing } = verdict(&r, &lock, &jobs) else {
            panic!("incomplete set must not be available")
        };
        let reasons: Vec<_> = missing.iter().map(|m| (m.arch, m.reason)).collect();
        assert_eq!(
            reasons,
            [
                (Arch::Arm64, MissingReason::Building),
                (Arch::S390x, MissingReason::Failed),
                (Arch::Riscv64, MissingReason::NoBuilder)
            ]
        );
        assert!(missing[1].detail.as_deref().unwrap().contains("5.4.0"));
        assert_eq!(missing[1].kind, Some(FailureKind::Recipe));
        assert_eq!(missing[2].kind, Some(FailureKind::NoBuilder));
    }

    /// The one missing arch of `r`'s verdict.
    fn only_missing(r: &Requirement, lock: &Lockfile, jobs: &Jobs) -> Missing {
        let Verdict::Missing { missing } = verdict(r, lock, jobs) else {
            panic!("must not be available")
        };
        assert_eq!(missing.len(), 1, "{missing:?}");
        missing[0].clone()
    }

    #[test]
    fn reasons_are_named_as_the_api_serves_them() {
        let names = MissingReason::ALL.map(MissingReason::as_str);
        assert_eq!(
            names,
            [
                "not-built",
                "building",
                "queued",
                "failed",
                "no-builder",
                "stale"
            ]
        );
        for r in MissingReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn an_arch_the_current_tag_lacks_is_not_built() {
        let mut lock = Lockfile::default();
        lock.publish(entry("debian-13-ocaml-5.5", 1), "new");
        let m = only_missing(&req(&[Arch::Amd64, Arch::Arm64]), &lock, &Jobs::new());
        assert_eq!(
            m,
            Missing {
                arch: Arch::Arm64,
                reason: MissingReason::NotBuilt,
                kind: None,
                detail: None,
            }
        );
    }

    #[test]
    fn an_arch_whose_build_succeeded_but_is_not_published_is_not_built() {
        let mut jobs = Jobs::new();
        jobs.insert(key(Arch::Amd64), ArchState::Succeeded);
        let m = only_missing(&req(&[Arch::Amd64]), &Lockfile::default(), &jobs);
        assert_eq!((m.reason, m.detail), (MissingReason::NotBuilt, None));
    }

    #[test]
    fn a_queued_arch_is_queued() {
        let mut jobs = Jobs::new();
        jobs.insert(key(Arch::Amd64), ArchState::Queued);
        let m = only_missing(&req(&[Arch::Amd64]), &Lockfile::default(), &jobs);
        assert_eq!((m.reason, m.kind), (MissingReason::Queued, None));
    }

    #[test]
    fn a_failed_arch_points_at_its_log() {
        let mut jobs = Jobs::new();
        jobs.insert(
            key(Arch::Amd64),
            ArchState::Failed {
                kind: FailureKind::Infra,
                error: "engine unreachable".into(),
                log: Some("/var/log/kiln/a.log".into()),
            },
        );
        let m = only_missing(&req(&[Arch::Amd64]), &Lockfile::default(), &jobs);
        assert_eq!(m.reason, MissingReason::Failed);
        assert_eq!(m.kind, Some(FailureKind::Infra));
        assert_eq!(
            m.detail.as_deref(),
            Some("engine unreachable (log: /var/log/kiln/a.log)")
        );
    }

    #[test]
    fn an_arch_no_builder_can_build_says_so_whatever_its_job() {
        let mut r = req(&[Arch::Riscv64]);
        r.no_builder = vec![Arch::Riscv64];
        let mut jobs = Jobs::new();
        jobs.insert(key(Arch::Riscv64), ArchState::Building);
        let m = only_missing(&r, &Lockfile::default(), &jobs);
        assert_eq!(m.reason, MissingReason::NoBuilder);
        assert_eq!(
            m.detail.as_deref(),
            Some("no configured linux builder can build riscv64")
        );
    }

    #[test]
    fn a_stale_tag_says_which_compiler_it_holds_and_which_is_wanted() {
        let mut lock = Lockfile::default();
        lock.publish(entry("debian-13-ocaml-5.5", 1), "new");
        let mut r = req(&[Arch::Amd64]);
        r.ocaml = "5.5.1".parse().unwrap();
        let m = only_missing(&r, &lock, &Jobs::new());
        assert_eq!(
            m.detail.as_deref(),
            Some("tag holds OCaml 5.5.0, 5.5.1 not built yet")
        );
    }

    #[test]
    fn a_tag_holding_an_older_patch_release_is_stale() {
        let mut lock = Lockfile::default();
        lock.publish(entry("debian-13-ocaml-5.5", 1), "new");
        let mut r = req(&[Arch::Amd64]);
        r.ocaml = "5.5.1".parse().unwrap();
        let Verdict::Missing { missing } = verdict(&r, &lock, &Jobs::new()) else {
            panic!()
        };
        assert_eq!(missing[0].reason, MissingReason::Stale);
    }

    #[test]
    fn prerelease_versions_compare_as_versions() {
        let mut lock = Lockfile::default();
        let mut e = entry("debian-13-ocaml-5.5", 1);
        e.ocaml = Some("5.5.0~beta10".parse().unwrap());
        lock.publish(e, "new");
        let mut r = req(&[Arch::Amd64]);
        r.ocaml = "5.5.0~beta10".parse().unwrap();
        assert!(matches!(
            verdict(&r, &lock, &Jobs::new()),
            Verdict::Available { .. }
        ));
        r.ocaml = "5.5.0~beta2".parse().unwrap();
        assert!(matches!(
            verdict(&r, &lock, &Jobs::new()),
            Verdict::Missing { .. }
        ));
    }
}
