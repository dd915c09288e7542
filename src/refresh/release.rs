//! `kiln release`: the whole cascade for new compiler versions, safe to
//! rerun at any point — check the GitHub credentials (an authenticated
//! read: nothing is bumped or built with credentials GitHub refuses), bump
//! the catalogue, open ocaml-version's pull
//! request (the `ocaml-version` consumers: the change the catalogue makes
//! to its files), build what the plan calls for (unchanged tags are
//! skipped, so nothing is built twice), verify what is published, and,
//! only once every requested version is available, bump the other
//! consumers' pins (`opam-pin`: the ocaml-version lower bound and the
//! opam-repository commit the images were built with). An open pull
//! request is found, not opened again.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Action, Update};
use crate::api::gate::{Jobs, Requirement, Verdict, verdict};
use crate::catalogue::{self, OcamlVersion};
use crate::config::Config;
use crate::model::PinnedRef;
use crate::pipeline::{self, Options, Summary};
use crate::plan::Filter;
use crate::publish::lockfile::Lockfile;
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
    Lockfile(#[from] crate::publish::lockfile::LockfileError),
    #[error(transparent)]
    Refresh(#[from] super::RefreshError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("the consumers' pins: {0}")]
    Pin(#[from] super::opam_pin::PinError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
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

/// The daemon that holds the state dir's lease (`pid`), to which the
/// release hands its builds, and where the hand-off's lines go.
pub struct HandOff<'a> {
    pub pid: &'a str,
    pub say: &'a (dyn Fn(&str) + Sync),
}

pub async fn release(
    config: &Config,
    versions: &[OcamlVersion],
    dry_run: bool,
    daemon: Option<HandOff<'_>>,
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
    // 0. The GitHub credentials, proved by an authenticated read before
    // anything changes: a missing or refused token is noticed now, not at
    // the first write after hours of builds.
    // The one client of the run: an App's installation token, minted
    // here, is cached in it until it expires.
    let gh = if !dry_run && !config.refresh.consumers.is_empty() {
        Some(
            super::credentials::checked_client(&config.refresh)
                .await
                .map_err(super::RefreshError::from)?,
        )
    } else {
        None
    };
    // 1. Catalogue.
    report.bumped = bump_versions(config, versions, dry_run)?;
    if dry_run && !report.bumped.is_empty() {
        // The dry-run plan below reads the unbumped catalogue: say so.
        tracing::info!("dry run: versions not yet in the catalogue are not planned");
    }
    // 2. ocaml-version learns the versions first, before any image exists.
    if let Some(gh) = &gh {
        open_ocaml_version(gh, config, versions, &mut report).await?;
    }
    // 3. Build every platform's targets for these versions.
    report.builds = build_versions(config, versions, dry_run, daemon).await?;
    if dry_run {
        // What each consumer's file would become with what is published now
        // (reads only; GitHub being unreachable is reported, not fatal).
        if !config.refresh.consumers.is_empty() {
            preview_refresh(config, versions, &mut report).await?;
        }
        return Ok(report);
    }
    // 4. Verify what is published for these versions.
    let lock = Lockfile::load(&config.lockfile_path())?;
    let reg = Registry::new(&config.registry)?;
    report.verify_problems = verify_versions(&reg, &lock, versions).await?;
    // 5. The gate: which versions are available everywhere required.
    let (reqs, jobs) = crate::status::requirements(config)?;
    let update = gate(versions, &lock, &reqs, &jobs, &reg.host, &mut report);
    if !report.missing.is_empty() || !report.verify_problems.is_empty() {
        // CI must not move before every image is there: stop here; a rerun
        // continues once the missing images are built.
        return Ok(report);
    }
    // 6. Bump the consumers' pins, now that the gate is open.
    if config
        .refresh
        .consumers
        .iter()
        .any(|c| !is_ocaml_version(c))
    {
        let mut update = update;
        update.opam_pin = Some(super::opam_pin::pin_for(config, &lock, versions).await?);
        if let Some(gh) = &gh {
            refresh_consumers(gh, config, versions, &update, &mut report).await?;
        }
    }
    report.complete = true;
    Ok(report)
}

fn is_ocaml_version(c: &crate::config::Consumer) -> bool {
    c.format == "ocaml-version"
}

fn branch_and_title(versions: &[OcamlVersion]) -> (String, String) {
    let names: Vec<String> = versions.iter().map(|v| v.to_string()).collect();
    (
        format!("kiln/release-{}", names.join("-")),
        format!("Kiln: OCaml {} base images are available", names.join(", ")),
    )
}

/// The update the `ocaml-version` consumers get: what the catalogue says.
fn ocaml_version_update(
    config: &Config,
    versions: &[OcamlVersion],
) -> Result<Update, ReleaseError> {
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    Ok(Update {
        versions: versions.iter().map(|v| v.to_string()).collect(),
        ocaml_version: Some(super::ocaml_version::Wanted::from_catalogue(&cat)),
        ..Update::default()
    })
}

/// Open (or find) the pull request of each `ocaml-version` consumer.
async fn open_ocaml_version(
    gh: &octocrab::Octocrab,
    config: &Config,
    versions: &[OcamlVersion],
    report: &mut Report,
) -> Result<(), ReleaseError> {
    let consumers: Vec<_> = config
        .refresh
        .consumers
        .iter()
        .filter(|c| is_ocaml_version(c))
        .collect();
    if consumers.is_empty() {
        return Ok(());
    }
    let update = ocaml_version_update(config, versions)?;
    let (branch, _) = branch_and_title(versions);
    let names: Vec<String> = versions.iter().map(|v| v.to_string()).collect();
    let title = format!("Add OCaml {}", names.join(", "));
    for c in consumers {
        let a = super::refresh(gh, c, &update, &branch, &title, false).await?;
        report.refreshed.insert(c.repo.clone(), a);
    }
    Ok(())
}

/// Add each version to the catalogue; the ones that changed it.
fn bump_versions(
    config: &Config,
    versions: &[OcamlVersion],
    dry_run: bool,
) -> Result<Vec<String>, ReleaseError> {
    let mut bumped = vec![];
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
            bumped.push(v.to_string());
        }
    }
    Ok(bumped)
}

/// One build run per version the catalogue has, every platform; handed
/// to the daemon (`daemon`: its pid) when it holds the state dir's lease.
async fn build_versions(
    config: &Config,
    versions: &[OcamlVersion],
    dry_run: bool,
    daemon: Option<HandOff<'_>>,
) -> Result<Vec<Summary>, ReleaseError> {
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let mut builds = vec![];
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
            reconcile: crate::publish::Scope::Full,
            force: false,
        };
        let summary = match &daemon {
            Some(h) if !dry_run => {
                crate::daemon::handoff::hand_off(config, &cat, &opts.filter, false, h.pid, h.say)
                    .await?
            }
            _ => pipeline::run(config, &cat, &opts, &|_| {}).await?,
        };
        builds.push(summary);
    }
    Ok(builds)
}

/// The dry run's refresh: each consumer's change with what is published
/// now; a consumer that cannot be read is reported in its diff.
async fn preview_refresh(
    config: &Config,
    versions: &[OcamlVersion],
    report: &mut Report,
) -> Result<(), ReleaseError> {
    let lock = Lockfile::load(&config.lockfile_path())?;
    let (reqs, jobs) = crate::status::requirements(config)?;
    let mut update = published_update(config, versions, &lock, &reqs, &jobs);
    update.ocaml_version = ocaml_version_update(config, versions)?.ocaml_version;
    update.opam_pin = super::opam_pin::pin_for(config, &lock, versions).await.ok();
    let gh = super::client(&config.refresh)?;
    for c in &config.refresh.consumers {
        let a = match super::refresh(&gh, c, &update, "kiln/dry-run", "dry run", true).await {
            Ok(a) => a,
            Err(e) => Action::WouldChange {
                diff: format!("(cannot compute: {e})"),
            },
        };
        report.refreshed.insert(c.repo.clone(), a);
    }
    Ok(())
}

/// The update the published tags would make: versions available for every
/// requirement, and the pins of every available tag.
fn published_update(
    config: &Config,
    versions: &[OcamlVersion],
    lock: &Lockfile,
    reqs: &[Requirement],
    jobs: &Jobs,
) -> Update {
    let host = config
        .registry
        .url
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let mut update = Update::default();
    for v in versions {
        let rs: Vec<_> = reqs.iter().filter(|r| r.ocaml == *v).collect();
        if !rs.is_empty()
            && rs
                .iter()
                .all(|r| matches!(verdict(r, lock, jobs), Verdict::Available { .. }))
        {
            update.versions.push(v.to_string());
        }
        for r in rs {
            if let Verdict::Available { entry } = verdict(r, lock, jobs) {
                let name = format!("{}:{}", entry.id().basename(), entry.tag);
                update
                    .pins
                    .insert(name, entry.pin(host, Some(&entry.tag)).reference());
            }
        }
    }
    update
}

/// Verify the published entries of these versions; the problems found.
async fn verify_versions(
    reg: &Registry,
    lock: &Lockfile,
    versions: &[OcamlVersion],
) -> Result<Vec<String>, ReleaseError> {
    let mine = Lockfile {
        schema_version: lock.schema_version,
        entries: lock
            .entries
            .iter()
            .filter(|(_, e)| e.ocaml.as_ref().is_some_and(|v| versions.contains(v)))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect(),
    };
    let scratch =
        tempfile::tempdir().map_err(|e| crate::registry::RegistryError::Invalid(e.to_string()))?;
    Ok(crate::publish::verify::verify(reg, &mine, scratch.path())
        .await
        .into_iter()
        .map(|p| format!("{}: {}", p.entry, p.problem))
        .collect())
}

/// Sort the versions into available (every requirement met) and missing
/// (with what is missing) in `report`; the update for the available ones,
/// with each pin and the one it replaces.
fn gate(
    versions: &[OcamlVersion],
    lock: &Lockfile,
    reqs: &[Requirement],
    jobs: &Jobs,
    host: &str,
    report: &mut Report,
) -> Update {
    let mut update = Update::default();
    for v in versions {
        let vs = v.to_string();
        let mut missing = Vec::new();
        for r in reqs.iter().filter(|r| r.ocaml == *v) {
            match verdict(r, lock, jobs) {
                Verdict::Available { entry } => {
                    let name = format!("{}:{}", entry.id().basename(), entry.tag);
                    let pin = entry.pin(host, Some(&entry.tag));
                    update.pins.insert(name.clone(), pin.reference());
                    if let Some(h) = entry.history.first() {
                        let previous = PinnedRef {
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
    update
}

/// Open (or find) each pin consumer's pull request or issue for the release.
async fn refresh_consumers(
    gh: &octocrab::Octocrab,
    config: &Config,
    versions: &[OcamlVersion],
    update: &Update,
    report: &mut Report,
) -> Result<(), ReleaseError> {
    let (branch, title) = branch_and_title(versions);
    for c in config
        .refresh
        .consumers
        .iter()
        .filter(|c| !is_ocaml_version(c))
    {
        let a = super::refresh(gh, c, update, &branch, &title, false).await?;
        report.refreshed.insert(c.repo.clone(), a);
    }
    Ok(())
}
