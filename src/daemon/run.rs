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
//! runs the pipeline for its one tag, which skips it when its build key
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
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::DaemonError;
use super::job::run_job;
use super::lock::DaemonLock;
use super::triggers::{Schedules, Trigger, poll};
use crate::builders::Builders;
use crate::catalogue::{Arch, BuilderKind};
use crate::config::Config;
use crate::model::{ArchState, TagId};
use crate::pipeline::group_by_tag;
use crate::plan::{Filter, Target};
use crate::state::StateStore;
use crate::state::queue::{Finish, Job, Queue};
use crate::state::rounds::Rounds;

/// Everything the loop shares with its job tasks.
pub(super) struct Daemon {
    pub(super) config: Config,
    pub(super) rounds: Rounds,
    pub(super) queue: Queue,
    pub(super) builders: Builders,
}

impl Daemon {
    /// Record queued arches for the API; a failed write is logged.
    fn mark_queued(&self, id: &TagId, arches: impl Iterator<Item = Arch>) {
        let Ok(s) = StateStore::open(&self.config.database.path) else {
            return;
        };
        for a in arches {
            if let Err(e) = s.set(id, a, &ArchState::Queued) {
                tracing::warn!(target = %id, arch = %a, error = %e, "recording the queued state");
            }
        }
    }

    /// Open a round for `trigger` and queue the tags `pick` selects that
    /// some configured builder can build. Returns the round, if one opened.
    fn trigger(
        &self,
        trigger: &Trigger,
        pick: &dyn Fn(&Target) -> bool,
    ) -> Result<Option<i64>, DaemonError> {
        let cat = crate::catalogue::load(&self.config.versions_dir, &self.config.platforms_dir)?;
        let targets: Vec<Target> = crate::plan::expand(&cat, &Filter::default())?
            .into_iter()
            .filter(|t| self.builders.can_build(t))
            .collect();
        let mut round = None;
        for (id, ts) in group_by_tag(&targets, &self.config.registry.namespace) {
            if !ts.iter().any(|t| pick(t)) || self.queue.is_queued(&id.repository, &id.tag)? {
                continue;
            }
            let r = match round {
                Some(r) => r,
                None => *round.insert(self.rounds.start(&trigger.name())?),
            };
            if self
                .queue
                .enqueue(r, &id.repository, &id.tag, &ts[0].platform, ts[0].builder)?
            {
                tracing::info!(round = r, target = %id, trigger = %trigger.name(), "queued");
                self.mark_queued(&id, ts.iter().map(|t| t.arch));
            }
        }
        match round {
            Some(r) => {
                self.close_round_if_done(r)?;
                tracing::info!(round = r, trigger = %trigger.name(), "round opened");
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

type Running = JoinSet<(Job, Finish, Vec<Arch>)>;

/// The loop's own state between wake-ups.
struct Loop {
    d: Arc<Daemon>,
    schedules: Schedules,
    poll_every: Duration,
    next_poll: Option<DateTime<Utc>>,
    next_fire: Vec<DateTime<Utc>>,
    running: Running,
    busy: BTreeMap<BuilderKind, usize>,
}

impl Loop {
    /// Start what is due, up to each builder kind's capacity.
    fn start_due(&mut self) -> Result<(), DaemonError> {
        for kind in BuilderKind::ALL {
            let capacity = self.d.builders.get(kind).capacity();
            while self.busy.get(&kind).copied().unwrap_or(0) < capacity {
                let Some(job) = self.d.queue.take(kind, Utc::now())? else {
                    break;
                };
                *self.busy.entry(kind).or_default() += 1;
                let d = self.d.clone();
                let span = tracing::info_span!("job", job = job.id, target = %format!("{}:{}", job.repository, job.tag), attempt = job.attempts);
                self.running.spawn(
                    async move {
                        tracing::info!("job started");
                        let (finish, arches) = run_job(&d.config, &job).await;
                        (job, finish, arches)
                    }
                    .instrument(span),
                );
            }
        }
        Ok(())
    }

    /// How long to sleep: until the next schedule, poll or due retry.
    fn wait(&self) -> Result<Duration, DaemonError> {
        let now = Utc::now();
        let mut wake = self
            .next_fire
            .iter()
            .min()
            .copied()
            .unwrap_or(now + chrono::Duration::hours(1));
        if let Some(p) = self.next_poll {
            wake = wake.min(p);
        }
        if let Some(due) = self.d.queue.next_due()? {
            wake = wake.min(due.max(now + chrono::Duration::milliseconds(200)));
        }
        Ok((wake - now)
            .to_std()
            .unwrap_or_default()
            .min(Duration::from_secs(3600)))
    }

    /// Fire the schedules that are due.
    fn fire_schedules(&mut self, now: DateTime<Utc>) {
        let due: Vec<usize> = (0..self.next_fire.len())
            .filter(|&i| self.next_fire[i] <= now)
            .collect();
        if due.is_empty() {
            return;
        }
        let own: BTreeSet<String> = self.d.config.daemon.schedules.keys().cloned().collect();
        for i in due {
            let platform = self.schedules.entries[i].0.clone();
            let pick = |t: &Target| match &platform {
                Some(p) => t.platform == *p,
                None => !own.contains(&t.platform),
            };
            if let Err(e) = self.d.trigger(&Trigger::Schedule(platform.clone()), &pick) {
                tracing::error!(error = %e, "scheduled round not opened");
            }
        }
        self.next_fire = self.schedules.upcoming(now);
    }

    /// Poll the inputs when due; each change opens a round.
    async fn poll_inputs(&mut self, now: DateTime<Utc>) {
        if self.next_poll.is_none_or(|p| p > now) {
            return;
        }
        for trigger in poll(&self.d).await {
            let pick = |t: &Target| match &trigger {
                Trigger::Parent(p) => t.parent.as_deref() == Some(p.as_str()),
                Trigger::OpamRepository {
                    packages: Some(changed),
                    ..
                } => !crate::plan::opam_repo::installed_packages(t).is_disjoint(changed),
                _ => true,
            };
            tracing::info!(trigger = %trigger.name(), "input changed");
            if let Err(e) = self.d.trigger(&trigger, &pick) {
                tracing::error!(error = %e, trigger = %trigger.name(), "round not opened");
            }
        }
        self.next_poll =
            Some(Utc::now() + chrono::Duration::from_std(self.poll_every).unwrap_or_default());
    }

    /// Record a finished job; an infrastructure failure is queued again.
    fn job_done(&mut self, job: Job, finish: Finish, arches: Vec<Arch>) -> Result<(), DaemonError> {
        if let Some(n) = self.busy.get_mut(&job.builder) {
            *n = n.saturating_sub(1);
        }
        let d = &self.d;
        let new_state = d.queue.finish(
            &job,
            &finish,
            d.config.daemon.max_attempts,
            Duration::from_secs(d.config.daemon.retry_base_secs),
        )?;
        let id = TagId::new(&job.repository, &job.tag);
        match &finish {
            Finish::Succeeded { outcome } => {
                tracing::info!(job = job.id, target = %id, outcome, "job succeeded")
            }
            Finish::Failed { kind, error, .. } => {
                tracing::warn!(job = job.id, target = %id, kind = kind.as_str(), attempt = job.attempts, next = %new_state, error, "job failed")
            }
        }
        if new_state == "queued" {
            d.mark_queued(&id, arches.into_iter());
        }
        d.close_round_if_done(job.round)
    }
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
        builders: Builders::new(&config),
        config,
    });
    d.rounds.recover()?;
    let resumed = d.queue.recover(|| d.rounds.start("resume-interrupted"))?;
    if resumed > 0 {
        tracing::info!(jobs = resumed, "interrupted jobs queued again");
    }
    let mut l = Loop {
        poll_every: Duration::from_secs(d.config.daemon.poll_secs),
        next_poll: (d.config.daemon.poll_secs > 0).then(Utc::now),
        next_fire: schedules.upcoming(Utc::now()),
        schedules,
        d,
        running: JoinSet::new(),
        busy: BTreeMap::new(),
    };
    let mut stopping = *stop.borrow();
    loop {
        if !stopping {
            l.start_due()?;
        }
        if stopping && l.running.is_empty() {
            return Ok(());
        }
        let wait = l.wait()?;
        tokio::select! {
            _ = tokio::time::sleep(wait), if !stopping => {
                let now = Utc::now();
                l.fire_schedules(now);
                l.poll_inputs(now).await;
            }
            Some(who) = manual.recv(), if !stopping => {
                if let Err(e) = l.d.trigger(&Trigger::Manual(who), &|_| true) {
                    tracing::error!(error = %e, "requested round not opened");
                }
            }
            Some(done) = l.running.join_next(), if !l.running.is_empty() => {
                match done {
                    Ok((job, finish, arches)) => l.job_done(job, finish, arches)?,
                    Err(e) => tracing::error!(error = %e, "job task failed"),
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                tracing::info!(running = l.running.len(), "stopping: no new jobs; running ones finish");
            }
        }
    }
}
