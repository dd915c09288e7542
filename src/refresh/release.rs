//! `kiln release`: the whole cascade for new compiler versions, safe to
//! rerun at any point — bump the catalogue, build what the plan calls for
//! (unchanged tags are skipped, so nothing is built twice), verify what is
//! published, and, only once every requested version is available, refresh
//! the CI systems (an open pull request is found, not opened again).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Action, Update};
use crate::api::gate::{Verdict, verdict};
use crate::catalogue::{self, OcamlVersion};
use crate::config::Config;
use crate::lockfile::Lockfile;
use crate::pipeline::{self, Options, Summary};
use crate::plan::Filter;
use crate::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Catalogue(#[from] catalogue::CatalogueError),
    #[error(transparent)]
    Run(#[from] pipeline::RunError),
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
    #[error(transparent)]
    Lockfile(#[from] crate::lockfile::LockfileError),
    #[error(transparent)]
    Refresh(#[from] super::RefreshError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub bumped: Vec<String>,
    pub builds: Vec<Summary>,
    pub verify_problems: Vec<String>,
    pub available: Vec<String>,
    /// version → what is still missing (tags), when not available.
    pub missing: BTreeMap<String, Vec<String>>,
    /// consumer repo → what refreshing it did.
    pub refreshed: BTreeMap<String, Action>,
    pub complete: bool,
}

pub async fn release(
    config: &Config,
    versions: &[OcamlVersion],
    dry_run: bool,
) -> Result<Report, ReleaseError> {
    let mut report = Report {
        bumped: vec![],
        builds: vec![],
        verify_problems: vec![],
        available: vec![],
        missing: BTreeMap::new(),
        refreshed: BTreeMap::new(),
        complete: false,
    };
    // 1. Catalogue.
    for v in versions {
        let out = catalogue::bump(
            &config.versions_dir,
            &config.platforms_dir,
            v,
            None,
            None,
            dry_run,
        )?;
        if out != catalogue::BumpOutcome::Unchanged {
            report.bumped.push(v.to_string());
        }
    }
    if dry_run && !report.bumped.is_empty() {
        // The dry-run plan below reads the unbumped catalogue: say so.
        tracing::info!("dry run: versions not yet in the catalogue are not planned");
    }
    // 2–3. Build every platform's targets for these versions.
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    for v in versions {
        if cat.release(v).is_none() {
            continue;
        }
        let opts = Options {
            filter: Filter {
                version: Some(v.to_string()),
                ..Default::default()
            },
            dry_run,
        };
        report
            .builds
            .push(pipeline::run(config, &cat, &opts, &|_| {}).await?);
    }
    if dry_run {
        // What each consumer's file would become with what is published now
        // (reads only; GitHub being unreachable is reported, not fatal).
        if !config.refresh.consumers.is_empty() {
            let lock = Lockfile::load(&config.lockfile_path())?;
            let (reqs, jobs) = crate::status::requirements(config)?;
            let mut update = Update::default();
            for v in versions {
                let rs: Vec<_> = reqs.iter().filter(|r| r.ocaml == *v).collect();
                if !rs.is_empty()
                    && rs
                        .iter()
                        .all(|r| matches!(verdict(r, &lock, &jobs), Verdict::Available { .. }))
                {
                    update.versions.push(v.to_string());
                }
                let host = config
                    .registry
                    .url
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                for r in rs {
                    if let Verdict::Available { entry } = verdict(r, &lock, &jobs) {
                        let name = format!("{}:{}", entry.id().basename(), entry.tag);
                        update
                            .pins
                            .insert(name, entry.pin(host, Some(&entry.tag)).reference());
                    }
                }
            }
            let gh = super::client(&config.refresh)?;
            for c in &config.refresh.consumers {
                let a = match super::refresh(&gh, c, &update, "kiln/dry-run", "dry run", true).await
                {
                    Ok(a) => a,
                    Err(e) => Action::WouldChange {
                        diff: format!("(cannot compute: {e})"),
                    },
                };
                report.refreshed.insert(c.repo.clone(), a);
            }
        }
        return Ok(report);
    }
    // 4. Verify what is published for these versions.
    let lock = Lockfile::load(&config.lockfile_path())?;
    let mine = Lockfile {
        schema_version: lock.schema_version,
        entries: lock
            .entries
            .iter()
            .filter(|(_, e)| versions.contains(&e.ocaml))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect(),
    };
    let reg = Registry::new(&config.registry)?;
    let scratch =
        tempfile::tempdir().map_err(|e| crate::registry::RegistryError::Invalid(e.to_string()))?;
    report.verify_problems = crate::publish::verify::verify(&reg, &mine, scratch.path())
        .await
        .into_iter()
        .map(|p| format!("{}: {}", p.entry, p.problem))
        .collect();
    // 5. The gate: which versions are available everywhere required.
    let (reqs, jobs) = crate::status::requirements(config)?;
    let mut update = Update::default();
    for v in versions {
        let vs = v.to_string();
        let mut missing = Vec::new();
        for r in reqs.iter().filter(|r| r.ocaml == *v) {
            match verdict(r, &lock, &jobs) {
                Verdict::Available { entry } => {
                    let name = format!("{}:{}", entry.id().basename(), entry.tag);
                    let pin = entry.pin(&reg.host, Some(&entry.tag));
                    update.pins.insert(name.clone(), pin.reference());
                    if let Some(h) = entry.history.first() {
                        let previous = crate::model::PinnedRef {
                            digest: h.digest.clone(),
                            ..pin
                        };
                        update.previous.insert(name, previous.reference());
                    }
                }
                Verdict::Missing { missing: m } => {
                    missing.push(format!(
                        "{}:{} ({})",
                        r.repository,
                        r.tag,
                        m.iter()
                            .map(|x| format!("{} {}", x.arch, x.reason.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        if missing.is_empty() {
            report.available.push(vs.clone());
            update.versions.push(vs);
        } else {
            report.missing.insert(vs, missing);
        }
    }
    if !report.missing.is_empty() || !report.verify_problems.is_empty() {
        // CI must not move before every image is there: stop here; a rerun
        // continues once the missing images are built.
        return Ok(report);
    }
    // 6. Refresh the CI systems.
    if !config.refresh.consumers.is_empty() {
        let gh = super::client(&config.refresh)?;
        let names: Vec<String> = versions.iter().map(|v| v.to_string()).collect();
        let branch = format!("kiln/release-{}", names.join("-"));
        let title = format!("Kiln: OCaml {} base images are available", names.join(", "));
        for c in &config.refresh.consumers {
            let a = super::refresh(&gh, c, &update, &branch, &title, false).await?;
            report.refreshed.insert(c.repo.clone(), a);
        }
    }
    report.complete = true;
    Ok(report)
}
