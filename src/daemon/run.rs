//! The daemon loop. Triggers queue jobs; workers take them.
//!
//! Triggers: the cron schedules (one per platform, `daemon.schedule` for
//! the rest), a rebuild asked for through the API, and three pollers that
//! run every `daemon.poll_secs`: the catalogue's fingerprint, each Docker
//! parent's digest, and the followed opam-repository ref. A trigger opens
//! a round and queues one job per affected tag, unless that tag already
//! has a job waiting in the queue (when all have, no round opens).
//!
//! Workers: as many jobs of a builder kind run at once as its hosts have
//! slots (Docker: the sum of the hosts' `concurrency`; ZFS: one per host;
//! QEMU: one); a process-wide semaphore per host keeps every host within
//! its own limit across jobs. A job
//! runs `builders::run` for its one tag, which skips it when its build key
//! is unchanged, so a round with no input change builds nothing and moves
//! no digest. An infrastructure failure goes back to the queue with
//! exponential backoff; a recipe failure is final and the API shows it
//! with its log.
//!
//! SIGTERM/SIGINT: no new job starts; running jobs finish (each publishes
//! completely or not at all); then exit. After `kill -9`, the next start
//! puts the interrupted jobs back in the queue under a `resume-interrupted`
//! round.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::lock::DaemonLock;
use super::queue::{FailureKind, Finish, Job, Queue, classify};
use super::rounds::Rounds;
use super::state::{State, StateError, StateStore};
use crate::builders::run::{self, Options, Outcome};
use crate::config::Config;
use crate::plan::{Filter, Target};
use crate::registry::index::Platform;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] super::lock::LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{field} = {schedule:?}: {message}")]
    Schedule {
        field: String,
        schedule: String,
        message: String,
    },
    #[error(transparent)]
    Catalogue(#[from] crate::catalogue::CatalogueError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
}

/// Why a round starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A cron schedule: one platform's, or the default one (`None`).
    Schedule(Option<String>),
    Manual(String),
    Catalogue,
    Parent(String),
    OpamRepository(String),
}

impl Trigger {
    pub fn name(&self) -> String {
        match self {
            Trigger::Schedule(None) => "schedule".into(),
            Trigger::Schedule(Some(p)) => format!("schedule: {p}"),
            Trigger::Manual(who) => format!("manual: {who}"),
            Trigger::Catalogue => "catalogue changed".into(),
            Trigger::Parent(p) => format!("parent changed: {p}"),
            Trigger::OpamRepository(c) => format!("opam-repository moved: {c}"),
        }
    }
}

/// The cron schedules, each with the platforms it covers.
pub struct Schedules {
    entries: Vec<(Option<String>, cron::Schedule)>,
}

impl Schedules {
    pub fn parse(config: &Config) -> Result<Schedules, DaemonError> {
        let parse = |field: String, s: &str| {
            cron::Schedule::from_str(s).map_err(|e| DaemonError::Schedule {
                field,
                schedule: s.to_string(),
                message: e.to_string(),
            })
        };
        let mut entries = vec![(
            None,
            parse("daemon.schedule".into(), &config.daemon.schedule)?,
        )];
        for (p, s) in &config.daemon.schedules {
            entries.push((Some(p.clone()), parse(format!("daemon.schedules.{p}"), s)?));
        }
        Ok(Schedules { entries })
    }

    fn upcoming(&self, after: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.entries
            .iter()
            .map(|(_, s)| {
                s.after(&after)
                    .next()
                    .unwrap_or(after + chrono::Duration::days(365))
            })
            .collect()
    }
}

const BUILDERS: [&str; 3] = ["docker", "zfs", "qemu"];

/// How many jobs of a builder kind may run at once: every slot of every
/// host of that kind (the hosts' own limits hold across jobs, see
/// `builders::run::host_permits`). QEMU builds share this machine's CPUs.
fn capacity(config: &Config, builder: &str) -> usize {
    match builder {
        "docker" => config.docker.hosts.iter().map(|h| h.concurrency).sum(),
        "zfs" => config.zfs.hosts.len(),
        _ => 1,
    }
    .max(1)
}

/// Everything the loop shares with its job tasks.
struct Daemon {
    config: Config,
    rounds: Rounds,
    queue: Queue,
}

impl Daemon {
    fn state(&self) -> Option<StateStore> {
        StateStore::open(&self.config.database.path).ok()
    }

    /// Open a round for `trigger` and queue the tags `pick` selects that
    /// some configured builder can build. Returns the round, if one opened.
    fn trigger(
        &self,
        trigger: &Trigger,
        pick: &dyn Fn(&Target) -> bool,
    ) -> Result<Option<i64>, DaemonError> {
        let cat = crate::catalogue::load(&self.config.versions_dir, &self.config.platforms_dir)?;
        let targets = crate::plan::expand(&cat, &Filter::default())?;
        let mut groups: BTreeMap<(String, String), Vec<&Target>> = BTreeMap::new();
        for t in &targets {
            if crate::status::can_build(&self.config, t) {
                groups
                    .entry((
                        format!("{}/{}", self.config.registry.namespace, t.repository),
                        t.tag.clone(),
                    ))
                    .or_default()
                    .push(t);
            }
        }
        let state = self.state();
        let mut round = None;
        for ((repository, tag), ts) in groups {
            if !ts.iter().any(|t| pick(t)) || self.queue.is_queued(&repository, &tag)? {
                continue;
            }
            let id = match round {
                Some(id) => id,
                None => {
                    let id = self.rounds.start(&trigger.name())?;
                    round = Some(id);
                    id
                }
            };
            let first = ts[0];
            if self.queue.enqueue(
                id,
                &repository,
                &tag,
                &first.platform,
                first.builder.as_str(),
            )? {
                tracing::info!(round = id, target = %format!("{repository}:{tag}"), trigger = %trigger.name(), "queued");
                if let Some(s) = &state {
                    for t in &ts {
                        let _ = s.set(&repository, &tag, &t.arch, &State::Queued, None);
                    }
                }
            }
        }
        match round {
            Some(id) => {
                self.close_round_if_done(id)?;
                tracing::info!(round = id, trigger = %trigger.name(), "round opened");
            }
            None => {
                tracing::info!(trigger = %trigger.name(), "nothing to queue: every affected tag is queued already")
            }
        }
        Ok(round)
    }

    fn close_round_if_done(&self, round: i64) -> Result<(), DaemonError> {
        let (pending, built, unchanged, failed) = self.queue.round_counts(round)?;
        if pending == 0 {
            self.rounds.finish(
                round,
                built as usize,
                unchanged as usize,
                failed as usize,
                None,
            )?;
            tracing::info!(round, built, unchanged, failed, "round done");
        }
        Ok(())
    }
}

/// Run one job: `builders::run` for its tag.
async fn run_job(config: &Config, job: &Job) -> (Finish, Vec<String>) {
    let cat = match crate::catalogue::load(&config.versions_dir, &config.platforms_dir) {
        Ok(c) => c,
        Err(e) => {
            return (
                Finish::Failed {
                    kind: FailureKind::Recipe,
                    error: e.to_string(),
                    log: None,
                },
                vec![],
            );
        }
    };
    let opts = Options {
        filter: Filter {
            platform: Some(job.platform.clone()),
            tag: Some(job.tag.clone()),
            ..Default::default()
        },
        dry_run: false,
    };
    let summary = match run::run(config, &cat, &opts, &|_| {}).await {
        Ok(s) => s,
        Err(e) => {
            let error = e.to_string();
            return (
                Finish::Failed {
                    kind: classify(&error),
                    error,
                    log: None,
                },
                vec![],
            );
        }
    };
    let Some(report) = summary
        .tags
        .iter()
        .find(|r| r.repository == job.repository && r.tag == job.tag)
    else {
        // The tag left the catalogue since it was queued.
        return (
            Finish::Succeeded {
                outcome: "unchanged".into(),
            },
            vec![],
        );
    };
    let arches: Vec<String> = report.arches.keys().cloned().collect();
    let finish = match &report.outcome {
        Outcome::Built { .. } => Finish::Succeeded {
            outcome: "built".into(),
        },
        Outcome::Unchanged { .. } | Outcome::Planned => Finish::Succeeded {
            outcome: "unchanged".into(),
        },
        Outcome::NoBuilder { reason } => Finish::Failed {
            kind: FailureKind::NoBuilder,
            error: reason.clone(),
            log: None,
        },
        Outcome::Failed { error } => {
            let mut errors: Vec<String> = report
                .arches
                .iter()
                .filter_map(|(a, o)| match o {
                    Outcome::Failed { error } => Some(format!("{a}: {error}")),
                    _ => None,
                })
                .collect();
            if errors.is_empty() {
                errors.push(error.clone());
            }
            let error = errors.join("; ");
            let failed: BTreeSet<&String> = report
                .arches
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Failed { .. }))
                .map(|(a, _)| a)
                .collect();
            let log = crate::plan::expand(&cat, &opts.filter)
                .unwrap_or_default()
                .iter()
                .find(|t| failed.contains(&t.arch))
                .map(|t| run::log_path(config, t))
                .filter(|p| p.exists())
                .map(|p| p.display().to_string());
            Finish::Failed {
                kind: classify(&error),
                error,
                log,
            }
        }
    };
    (finish, arches)
}

/// sha256 over every file of the catalogue and platform definitions.
pub fn catalogue_fingerprint(config: &Config) -> String {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(&config.versions_dir, &mut files);
    walk(&config.platforms_dir, &mut files);
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.display().to_string().as_bytes());
        h.update([0]);
        h.update(std::fs::read(&f).unwrap_or_default());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// One poll: record what is seen; a change from what was recorded before
/// fires a trigger. The first sighting only records.
async fn poll(d: &Daemon) -> Vec<Trigger> {
    let mut fired = Vec::new();
    let seen = |key: &str, value: &str| -> bool {
        let before = d.queue.watch_get(key).ok().flatten();
        if before.as_deref() != Some(value) {
            let _ = d.queue.watch_set(key, value);
        }
        before.is_some_and(|b| b != value)
    };
    if seen("catalogue", &catalogue_fingerprint(&d.config)) {
        fired.push(Trigger::Catalogue);
    }
    if d.config.plan.opam_repository_commit.is_empty() {
        match run::opam_repository_commit(&d.config).await {
            Ok(commit) => {
                if seen("opam-repository", &commit) {
                    fired.push(Trigger::OpamRepository(commit));
                }
            }
            Err(e) => tracing::warn!(error = %e, "polling the opam-repository ref"),
        }
    }
    let parents: BTreeSet<(String, String, String)> =
        match crate::catalogue::load(&d.config.versions_dir, &d.config.platforms_dir) {
            Ok(cat) => crate::plan::expand(&cat, &Filter::default())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| crate::status::can_build(&d.config, t))
                .filter_map(|t| {
                    t.parent
                        .clone()
                        .map(|p| (p, t.platform.clone(), t.arch.clone()))
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "catalogue unreadable while polling parents");
                BTreeSet::new()
            }
        };
    for (parent, platform, arch) in parents {
        let p = Platform::for_arch(&platform, &arch);
        match run::resolve_parent(&d.config, &parent, &p).await {
            Ok((_, digest)) => {
                if seen(&format!("parent {parent} {platform}/{arch}"), &digest) {
                    let t = Trigger::Parent(parent.clone());
                    if !fired.contains(&t) {
                        fired.push(t);
                    }
                }
            }
            Err(e) => tracing::warn!(parent, error = %e, "polling a parent image"),
        }
    }
    fired
}

/// The scheduler: holds the daemon lock, recovers, then loops until a
/// signal arrives. `manual` carries rebuild requests from the API.
pub async fn scheduler(
    config: Config,
    _lock: DaemonLock,
    mut manual: mpsc::Receiver<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let schedules = Schedules::parse(&config)?;
    let d = Arc::new(Daemon {
        rounds: Rounds::open(&config.database.path)?,
        queue: Queue::open(&config.database.path)?,
        config,
    });
    d.rounds.recover()?;
    let resumed = d.queue.recover(|| d.rounds.start("resume-interrupted"))?;
    if resumed > 0 {
        tracing::info!(jobs = resumed, "interrupted jobs queued again");
    }
    let poll_every = Duration::from_secs(d.config.daemon.poll_secs);
    let mut next_poll = (d.config.daemon.poll_secs > 0).then(Utc::now);
    let mut next_fire = schedules.upcoming(Utc::now());
    let mut running: JoinSet<(Job, Finish, Vec<String>)> = JoinSet::new();
    let mut busy: BTreeMap<String, usize> = BTreeMap::new();
    let mut stopping = *stop.borrow();
    loop {
        // Start what is due, up to each builder kind's capacity.
        if !stopping {
            for b in BUILDERS {
                while busy.get(b).copied().unwrap_or(0) < capacity(&d.config, b) {
                    let Some(job) = d.queue.take(b, Utc::now())? else {
                        break;
                    };
                    *busy.entry(b.to_string()).or_default() += 1;
                    let d = d.clone();
                    let span = tracing::info_span!("job", job = job.id, target = %format!("{}:{}", job.repository, job.tag), attempt = job.attempts);
                    running.spawn(
                        async move {
                            tracing::info!("job started");
                            let (finish, arches) = run_job(&d.config, &job).await;
                            (job, finish, arches)
                        }
                        .instrument(span),
                    );
                }
            }
        }
        if stopping && running.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let mut wake = next_fire
            .iter()
            .min()
            .copied()
            .unwrap_or(now + chrono::Duration::hours(1));
        if let Some(p) = next_poll {
            wake = wake.min(p);
        }
        if let Some(due) = d.queue.next_due()? {
            wake = wake.min(due.max(now + chrono::Duration::milliseconds(200)));
        }
        let wait = (wake - now)
            .to_std()
            .unwrap_or_default()
            .min(Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                if stopping {
                    continue;
                }
                let now = Utc::now();
                let due: Vec<usize> = (0..next_fire.len()).filter(|&i| next_fire[i] <= now).collect();
                if !due.is_empty() {
                    let own: BTreeSet<String> = d.config.daemon.schedules.keys().cloned().collect();
                    for i in due {
                        let platform = schedules.entries[i].0.clone();
                        let pick: Box<dyn Fn(&Target) -> bool> = match &platform {
                            Some(p) => { let p = p.clone(); Box::new(move |t: &Target| t.platform == p) }
                            None => { let own = own.clone(); Box::new(move |t: &Target| !own.contains(&t.platform)) }
                        };
                        if let Err(e) = d.trigger(&Trigger::Schedule(platform), &*pick) {
                            tracing::error!(error = %e, "scheduled round not opened");
                        }
                    }
                    next_fire = schedules.upcoming(now);
                }
                if next_poll.is_some_and(|p| p <= now) {
                    for trigger in poll(&d).await {
                        let pick: Box<dyn Fn(&Target) -> bool> = match &trigger {
                            Trigger::Parent(p) => { let p = p.clone(); Box::new(move |t: &Target| t.parent.as_deref() == Some(p.as_str())) }
                            _ => Box::new(|_: &Target| true),
                        };
                        tracing::info!(trigger = %trigger.name(), "input changed");
                        if let Err(e) = d.trigger(&trigger, &*pick) {
                            tracing::error!(error = %e, trigger = %trigger.name(), "round not opened");
                        }
                    }
                    next_poll = Some(Utc::now() + chrono::Duration::from_std(poll_every).unwrap_or_default());
                }
            }
            Some(who) = manual.recv(), if !stopping => {
                if let Err(e) = d.trigger(&Trigger::Manual(who), &|_| true) {
                    tracing::error!(error = %e, "requested round not opened");
                }
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                let (job, finish, arches) = match done {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::error!(error = %e, "job task failed");
                        continue;
                    }
                };
                if let Some(n) = busy.get_mut(&job.builder) {
                    *n = n.saturating_sub(1);
                }
                let new_state = d.queue.finish(
                    &job,
                    &finish,
                    d.config.daemon.max_attempts,
                    Duration::from_secs(d.config.daemon.retry_base_secs),
                )?;
                match &finish {
                    Finish::Succeeded { outcome } => tracing::info!(job = job.id, target = %format!("{}:{}", job.repository, job.tag), outcome, "job succeeded"),
                    Finish::Failed { kind, error, .. } => tracing::warn!(job = job.id, target = %format!("{}:{}", job.repository, job.tag), kind = kind.as_str(), attempt = job.attempts, next = %new_state, error, "job failed"),
                }
                if new_state == "queued"
                    && let Some(s) = d.state()
                {
                    for a in &arches {
                        let _ = s.set(&job.repository, &job.tag, a, &State::Queued, None);
                    }
                }
                d.close_round_if_done(job.round)?;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                tracing::info!(running = running.len(), "stopping: no new jobs; running ones finish");
            }
        }
    }
}
