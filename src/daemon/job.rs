//! Running one job: the pipeline for its one tag, and how it ended as the
//! queue records it, with the failure kind the builders reported (retries
//! decide by kind, never by the words of an error).

use crate::catalogue::Arch;
use crate::config::Config;
use crate::model::FailureKind;
use crate::pipeline::{self, Options, Outcome, TagReport};
use crate::plan::Filter;
use crate::state::queue::{Finish, Job};

/// Run `job`; returns how it ended and the arches of its tag.
pub(super) async fn run_job(config: &Config, job: &Job) -> (Finish, Vec<Arch>) {
    let failed = |kind: FailureKind, error: String| Finish::Failed {
        kind,
        error,
        log: None,
    };
    let cat = match crate::catalogue::load(&config.versions_dir, &config.platforms_dir) {
        Ok(c) => c,
        Err(e) => return (failed(FailureKind::Recipe, e.to_string()), vec![]),
    };
    let opts = Options {
        filter: Filter {
            platform: Some(job.platform.clone()),
            tag: Some(job.tag.clone()),
            ..Default::default()
        },
        dry_run: false,
        // The round reconciles every tag once when it ends.
        reconcile: crate::publish::Scope::Changed,
        force: crate::state::queue::Queue::open(&config.database.path)
            .and_then(|q| q.is_forced(job.id))
            .unwrap_or(false),
    };
    let summary = match pipeline::run(config, &cat, &opts, &|_| {}).await {
        Ok(s) => s,
        Err(e) => return (failed(e.kind(), e.to_string()), vec![]),
    };
    let Some(report) = summary
        .tags
        .iter()
        .find(|r| r.repository == job.repository && r.tag == job.tag)
    else {
        // The tag left the catalogue since it was queued.
        let done = Finish::Succeeded {
            outcome: "unchanged".into(),
        };
        return (done, vec![]);
    };
    let arches = report.arches.keys().copied().collect();
    (finish(config, report), arches)
}

/// How a tag's report ends its job.
fn finish(config: &Config, report: &TagReport) -> Finish {
    match &report.outcome {
        Outcome::Built { .. } => Finish::Succeeded {
            outcome: "built".into(),
        },
        Outcome::Unchanged { .. } | Outcome::Planned => Finish::Succeeded {
            outcome: "unchanged".into(),
        },
        Outcome::Adopted { .. } => Finish::Succeeded {
            outcome: "adopted".into(),
        },
        Outcome::NoBuilder { reason } => Finish::Failed {
            kind: FailureKind::NoBuilder,
            error: reason.clone(),
            log: None,
        },
        Outcome::Failed { kind, error } => {
            // Each failed arch's own cause, once; the tag's summary only
            // when no arch failed (publication did).
            let mut errors: Vec<String> = report
                .arches
                .iter()
                .filter_map(|(a, o)| match o {
                    Outcome::Failed { error, .. } => Some(format!("{a}: {error}")),
                    _ => None,
                })
                .collect();
            if errors.is_empty() {
                errors.push(error.clone());
            }
            Finish::Failed {
                kind: report.failure_kind().unwrap_or(*kind),
                error: errors.join("; "),
                log: failed_log(config, report),
            }
        }
    }
}

/// The log of the first failed arch, if it was written.
fn failed_log(config: &Config, report: &TagReport) -> Option<String> {
    let arch = report
        .arches
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Failed { .. }))
        .map(|(a, _)| *a)?;
    let cat = crate::catalogue::load(&config.versions_dir, &config.platforms_dir).ok()?;
    let filter = Filter {
        platform: Some(report.platform.clone()),
        tag: Some(report.tag.clone()),
        arch: Some(arch),
        ..Default::default()
    };
    crate::plan::expand(&cat, &filter)
        .ok()?
        .first()
        .map(|t| t.log_file(&config.log_dir()))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
}
