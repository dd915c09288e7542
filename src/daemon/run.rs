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
//! The state store failing (SQLite busy, locked, I/O) never ends the
//! loop: starting jobs is tried again at the next wake-up, and a finished
//! job's result is written with retries and backoff (a job whose result
//! still cannot be written stays `running` and is queued again at the
//! next start).
//!
//! SIGTERM/SIGINT: no new job starts; running jobs may finish (each
//! publishes completely or not at all) within `daemon.drain_secs`; what
//! still runs then is stopped and queued again; then exit. After `kill
//! -9`, the next start puts the interrupted jobs back in the queue under a
//! `resume-interrupted` round.
//!
//! Job control: a cancel request (`kiln jobs cancel`, the API) for a
//! running job is seen within [`QUEUE_POLL`]; its build is dropped, which
//! kills its processes and hands its containers and datasets to
//! [`crate::process::cleanup_later`]; once those cleanups have run the
//! job ends `cancelled`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::DaemonError;

mod control;
use super::job::run_job;
use super::lock::DaemonLock;
use super::triggers::{Schedules, Trigger, poll};
use crate::builders::Builders;
use crate::catalogue::{Arch, BuilderKind};
use crate::config::Config;
use crate::model::{ArchState, FailureKind, TagId};
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
        // Queued critical path first (`schedule::order`): workers take
        // jobs in queue order.
        let groups = group_by_tag(&targets, &self.config.registry.namespace);
        for (id, ts) in crate::pipeline::schedule::order(&groups) {
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
                self.mark_queued(id, ts.iter().map(|t| t.arch));
            }
        }
        match round {
            Some(r) => {
                // A round whose every enqueue was refused has no job to end it.
                self.close_round_if_done(r)?;
                tracing::info!(round = r, trigger = %trigger.name(), "round opened");
            }
            None => {
                tracing::info!(trigger = %trigger.name(), "nothing to queue: every affected tag is queued already")
            }
        }
        Ok(round)
    }

    /// Close `round` when none of its jobs is pending; returns whether it
    /// closed.
    fn close_round_if_done(&self, round: i64) -> Result<bool, DaemonError> {
        let (pending, built, unchanged, failed) = self.queue.round_counts(round)?;
        let done = pending == 0;
        if done {
            self.rounds.finish(
                round,
                built as usize,
                unchanged as usize,
                failed as usize,
                None,
            )?;
            tracing::info!(round, built, unchanged, failed, "round done");
        }
        Ok(done)
    }
}

/// The end of a round, built or not: every moving tag and alias the
/// lockfile names read back from the registry and put back where it
/// drifted ([`crate::publish::reconcile`]). A failure is logged; the
/// next round tries again.
async fn reconcile_round(config: &Config, round: i64) {
    let result = async {
        let cat = crate::catalogue::load(&config.versions_dir, &config.platforms_dir)?;
        let all = crate::plan::expand(&cat, &Filter::default())?;
        let reg = crate::registry::Registry::new(&config.registry)?;
        // Another factory's publications since the last job count too.
        crate::publish::remote::sync(&reg, &config.registry.namespace, &config.lockfile_path())
            .await?;
        let r = crate::publish::reconcile(
            &reg,
            &config.lockfile_path(),
            &all,
            &config.registry.namespace,
            crate::publish::Scope::Full,
        )
        .await?;
        if r.changed_anything() {
            let ns = &config.registry.namespace;
            crate::publish::remote::publish_lockfile(&reg, ns, &config.lockfile_path()).await?;
        }
        Ok::<_, DaemonError>(r)
    }
    .await;
    match result {
        Ok(r) => tracing::info!(
            round,
            checked = r.checked,
            moved = r.moved.len(),
            "round reconciled"
        ),
        Err(e) => tracing::error!(round, error = %e, "reconciling the round's tags"),
    }
}

/// A finished job: how it ended, its arches, and when it started.
type Ended = (Job, Finish, Vec<Arch>, std::time::Instant);
type Running = JoinSet<Ended>;

/// The loop's own state between wake-ups.
struct Loop {
    d: Arc<Daemon>,
    schedules: Schedules,
    poll_every: Duration,
    next_poll: Option<DateTime<Utc>>,
    next_fire: Vec<DateTime<Utc>>,
    running: Running,
    /// Each running job's task: the job, and who asked to cancel it.
    tasks: HashMap<tokio::task::Id, (Job, tokio::task::AbortHandle, Option<String>)>,
    /// Stopping: jobs stopped now are queued again, not cancelled.
    draining: bool,
    /// Reconciliations of rounds that ended.
    tails: JoinSet<()>,
    busy: BTreeMap<BuilderKind, usize>,
    registry_gc: super::registry_gc::RegistryGc,
}

impl Loop {
    /// Start what is due, up to each builder kind's capacity.
    fn start_due(&mut self) -> Result<(), DaemonError> {
        if self.registry_gc.pending {
            return Ok(()); // the registry's gc waits for an idle moment
        }
        for kind in BuilderKind::ALL {
            let capacity = self.d.builders.get(kind).capacity();
            while self.busy.get(&kind).copied().unwrap_or(0) < capacity {
                let Some(job) = self.d.queue.take(kind, Utc::now())? else {
                    break;
                };
                *self.busy.entry(kind).or_default() += 1;
                let d = self.d.clone();
                let span = tracing::info_span!("job", job = job.id, target = %format!("{}:{}", job.repository, job.tag), attempt = job.attempts);
                let it = job.clone();
                let handle = self.running.spawn(
                    async move {
                        tracing::info!("job started");
                        let started = std::time::Instant::now();
                        let (finish, arches) = run_job(&d.config, &job).await;
                        (job, finish, arches, started)
                    }
                    .instrument(span),
                );
                self.tasks.insert(handle.id(), (it, handle, None));
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
        if let Some(g) = self.registry_gc.next() {
            wake = wake.min(g);
        }
        if let Some(due) = self.d.queue.next_due()? {
            wake = wake.min(due.max(now + chrono::Duration::milliseconds(200)));
        }
        Ok((wake - now).to_std().unwrap_or_default().min(QUEUE_POLL))
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

    /// Record a finished job; an infrastructure failure is queued again,
    /// and one that failed while a registry's rate limit held Kiln off
    /// (since `started`) is parked until the limit resets.
    fn job_done(
        &mut self,
        job: Job,
        finish: Finish,
        arches: Vec<Arch>,
        started: std::time::Instant,
    ) -> Result<(), DaemonError> {
        let d = &self.d;
        if let Finish::Failed {
            kind: FailureKind::Infra,
            error,
            log,
        } = &finish
            && let Some((registry, until)) = crate::registry::limits::held_since(started)
        {
            d.queue.park(&job, until, error, log.as_deref())?;
            let id = TagId::new(&job.repository, &job.tag);
            tracing::warn!(job = job.id, target = %id, %registry, until = %until.to_rfc3339(), error, "registry rate limit: job parked until it resets");
            d.mark_queued(&id, arches.into_iter());
            // The parked job is still queued: its round stays open.
            return Ok(());
        }
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
        if d.close_round_if_done(job.round)? {
            let d = self.d.clone();
            let round = job.round;
            self.tails
                .spawn(async move { reconcile_round(&d.config, round).await });
        }
        Ok(())
    }
}

impl Loop {
    /// [`Loop::job_done`], retried with backoff while the state store is
    /// busy, locked or failing: a finished job's result is never dropped
    /// and never ends the daemon. After the last attempt the job stays
    /// `running` in the queue, and the next start queues it again.
    async fn record_done(
        &mut self,
        job: Job,
        finish: Finish,
        arches: Vec<Arch>,
        started: std::time::Instant,
    ) {
        if let Some(n) = self.busy.get_mut(&job.builder) {
            *n = n.saturating_sub(1);
        }
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=STATE_ATTEMPTS {
            match self.job_done(job.clone(), finish.clone(), arches.clone(), started) {
                Ok(()) => return,
                Err(e) if attempt < STATE_ATTEMPTS => {
                    tracing::warn!(job = job.id, attempt, error = %e, "recording a finished job: the state store failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(job = job.id, error = %e, "recording a finished job failed {STATE_ATTEMPTS} times: it is queued again at the next start")
                }
            }
        }
    }
}

/// The longest the loop sleeps: work another process queued (a `kiln
/// build` handed to this daemon) starts within it.
pub const QUEUE_POLL: Duration = Duration::from_secs(2);

/// How often a state-store write is tried before the daemon moves on.
const STATE_ATTEMPTS: u32 = 8;

/// The scheduler: holds the daemon lock, recovers, then loops until a
/// signal arrives. `manual` carries rebuild requests from the API.
pub async fn scheduler(
    config: Config,
    _lock: DaemonLock,
    mut manual: mpsc::Receiver<crate::model::rebuild::Rebuild>,
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
    let registry_gc = super::registry_gc::RegistryGc::new(&d.config)?;
    let mut l = Loop {
        poll_every: Duration::from_secs(d.config.daemon.poll_secs),
        next_poll: (d.config.daemon.poll_secs > 0).then(Utc::now),
        next_fire: schedules.upcoming(Utc::now()),
        schedules,
        d,
        running: JoinSet::new(),
        tasks: HashMap::new(),
        draining: false,
        tails: JoinSet::new(),
        busy: BTreeMap::new(),
        registry_gc,
    };
    let mut stopping = *stop.borrow();
    let drain = Duration::from_secs(l.d.config.daemon.drain_secs);
    let mut drain_until = tokio::time::Instant::now() + drain;
    loop {
        if let Err(e) = l.cancel_requested() {
            tracing::error!(error = %e, "reading cancel requests: the state store failed; retrying shortly");
        }
        if !stopping {
            let idle = l.running.is_empty();
            l.registry_gc.run_if_idle(&l.d.config, idle).await;
            // A state store that is busy, locked or failing now is tried
            // again at the next wake-up, never the end of the daemon.
            if let Err(e) = l.start_due() {
                tracing::error!(error = %e, "starting due jobs: the state store failed; retrying shortly");
            }
        }
        if stopping && l.running.is_empty() && l.tails.is_empty() {
            return Ok(());
        }
        let wait = l.wait().unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the queue: the state store failed; retrying in 1 s");
            Duration::from_secs(1)
        });
        tokio::select! {
            _ = tokio::time::sleep(wait), if !stopping => {
                let now = Utc::now();
                l.fire_schedules(now);
                l.registry_gc.fire(now);
                l.poll_inputs(now).await;
            }
            Some(request) = manual.recv(), if !stopping => {
                match request {
                    crate::model::rebuild::Rebuild::Round { who } => {
                        if let Err(e) = l.d.trigger(&Trigger::Manual(who), &|_| true) {
                            tracing::error!(error = %e, "requested round not opened");
                        }
                    }
                    crate::model::rebuild::Rebuild::Tag { tag, force, reply } => {
                        let _ = reply.send(l.d.queue_tag(&tag, force));
                    }
                }
            }
            Some(_) = l.tails.join_next(), if !l.tails.is_empty() => {}
            Some(done) = l.running.join_next_with_id(), if !l.running.is_empty() => {
                l.task_ended(done).await;
            }
            // Cancel requests are read at the top of the loop.
            _ = tokio::time::sleep(QUEUE_POLL), if stopping && !l.running.is_empty() => {}
            _ = tokio::time::sleep_until(drain_until), if stopping && !l.draining && !l.running.is_empty() => {
                l.stop_running();
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                drain_until = tokio::time::Instant::now() + drain;
                tracing::info!(running = l.running.len(), drain_secs = drain.as_secs(), "stopping: no new jobs; running ones finish");
            }
        }
    }
}
