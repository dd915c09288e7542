//! One writer per state dir: a publishing `kiln build` takes the
//! daemon's lease shared ([`super::lock::DaemonLock::acquire_shared`]):
//! builds may run side by side, never beside a daemon.
//! When a daemon holds it, the build is handed to that daemon instead of
//! running beside it: each selected tag is queued in the daemon's queue
//! (or joins the job already waiting for it) under a `cli:build` round,
//! and the command follows those jobs to their end, printing each state
//! change, then reports them as its own run would. The daemon wakes for
//! queued work within [`super::run::QUEUE_POLL`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::DaemonError;
use super::lock::{DaemonLock, LockError};
use crate::builders::Builders;
use crate::catalogue::Catalogue;
use crate::config::Config;
use crate::model::{FailureKind, TagId};
use crate::pipeline::{Outcome, Summary, TagReport, group_by_tag};
use crate::plan::Filter;
use crate::state::queue::{Job, Queue};
use crate::state::rounds::Rounds;

/// Who runs a publishing command's builds.
#[derive(Debug)]
pub enum Lease {
    /// This process: it holds the lease until the value is dropped.
    Own(DaemonLock),
    /// The daemon with this pid holds it: hand the work to it.
    Daemon { pid: String },
}

/// Take the state dir's lease for a publishing command, or name the
/// daemon that holds it. Another command holding it is an error naming it.
pub fn take(config: &Config) -> Result<Lease, LockError> {
    match DaemonLock::acquire_shared(&config.state_dir) {
        Ok(l) => Ok(Lease::Own(l)),
        Err(LockError::Held { pid, holder, .. }) if holder == "daemon" => Ok(Lease::Daemon { pid }),
        Err(e) => Err(e),
    }
}

/// How often a hand-off reads its jobs back.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Queue the tags `filter` selects in the daemon's queue and follow them
/// to their end; `say` gets one line per state change. Tags no configured
/// builder can build are reported as such, never queued.
pub async fn hand_off(
    config: &Config,
    cat: &Catalogue,
    filter: &Filter,
    force: bool,
    daemon_pid: &str,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Summary, DaemonError> {
    let targets = crate::plan::expand(cat, filter)?;
    let builders = Builders::new(config);
    let queue = Queue::open(&config.database.path)?;
    let rounds = Rounds::open(&config.database.path)?;
    let round = rounds.start("cli:build")?;
    let mut summary = Summary::default();
    let mut followed: BTreeMap<i64, TagReport> = BTreeMap::new();
    for (id, ts) in group_by_tag(&targets, &config.registry.namespace) {
        let mut report = TagReport::new(&id, ts[0]);
        if let Some(t) = ts.iter().find(|t| !builders.can_build(t)) {
            report.outcome = Outcome::NoBuilder {
                reason: format!("no configured {} builder can build {}", t.builder, t.arch),
            };
            summary.add(report);
            continue;
        }
        let (job, new) = queue.queue_or_join(
            round,
            &id.repository,
            &id.tag,
            &ts[0].platform,
            ts[0].builder,
        )?;
        if force {
            queue.mark_forced(job, "cli")?;
        }
        say(&format!(
            "kiln: {id} handed to the daemon (pid {daemon_pid}): job #{job}{}",
            if new { "" } else { " (already queued)" }
        ));
        followed.insert(job, report);
    }
    if queue.round_counts(round)?.0 == 0 {
        // Every tag joined a job already waiting: this round has none.
        rounds.finish(round, 0, 0, 0, None)?;
    }
    let mut seen: BTreeMap<i64, (String, i64)> = BTreeMap::new();
    while !followed.is_empty() {
        let mut done = vec![];
        for (&id, report) in &followed {
            let Some(job) = queue.get(id)? else {
                continue;
            };
            let now = (job.state.clone(), job.attempts);
            if seen.get(&id) != Some(&now) {
                say(&format!(
                    "kiln: {}:{} job #{id} {} (attempt {})",
                    job.repository, job.tag, job.state, job.attempts
                ));
                seen.insert(id, now);
            }
            if matches!(job.state.as_str(), "succeeded" | "failed" | "cancelled") {
                done.push((id, outcome(config, &job, report)));
            }
        }
        for (id, outcome) in done {
            if let Some(mut report) = followed.remove(&id) {
                report.outcome = outcome;
                summary.add(report);
            }
        }
        if !followed.is_empty() {
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
    Ok(summary)
}

/// A finished job as its tag's outcome, with the digest the lockfile now
/// records for it.
fn outcome(config: &Config, job: &Job, report: &TagReport) -> Outcome {
    let digest = || {
        crate::lockfile::Lockfile::load(&config.lockfile_path())
            .ok()
            .and_then(|l| {
                l.entries
                    .get(&TagId::new(&report.repository, &report.tag).key())
                    .map(|e| e.digest.clone())
            })
            .unwrap_or_default()
    };
    match (job.state.as_str(), job.outcome.as_deref()) {
        ("succeeded", Some("built")) => Outcome::Built { digest: digest() },
        ("succeeded", Some("adopted")) => Outcome::Adopted {
            digest: digest(),
            from: "registry".into(),
        },
        ("succeeded", _) => Outcome::Unchanged { digest: digest() },
        ("cancelled", _) => Outcome::Failed {
            kind: FailureKind::Infra,
            error: format!(
                "the daemon's job #{} was {}",
                job.id,
                job.error.as_deref().unwrap_or("cancelled")
            ),
        },
        _ => Outcome::Failed {
            kind: job.failure.unwrap_or(FailureKind::Infra),
            error: format!(
                "the daemon's job #{} failed: {}{}",
                job.id,
                job.error.as_deref().unwrap_or("no error recorded"),
                job.log
                    .as_deref()
                    .map(|l| format!(" (log: {l})"))
                    .unwrap_or_default()
            ),
        },
    }
}
