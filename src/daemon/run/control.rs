//! Job control inside the loop: a tag queued as the API asked (forced or
//! not), running jobs cancelled on request or stopped at the drain bound,
//! and what a stopped or panicked job's task means for its job.

use super::{Daemon, Ended, Loop, reconcile_round};
use crate::daemon::DaemonError;
use crate::model::FailureKind;
use crate::pipeline::group_by_tag;
use crate::plan::{Filter, Target};
use crate::state::queue::Finish;

impl Daemon {
    /// Queue one tag (`REPOSITORY:TAG` or `TAG`) as the API asked, forced
    /// when `force` (built although its key is unchanged): its job's id.
    pub(super) fn queue_tag(
        &self,
        tag: &str,
        force: bool,
    ) -> Result<i64, crate::model::rebuild::TagRefused> {
        use crate::model::rebuild::TagRefused;
        let failed = |e: &dyn std::fmt::Display| TagRefused::Failed(e.to_string());
        let (repository, name) = match tag.rsplit_once(':') {
            Some((r, t)) => (Some(r), t),
            None => (None, tag),
        };
        let cat = crate::catalogue::load(&self.config.versions_dir, &self.config.platforms_dir)
            .map_err(|e| failed(&e))?;
        let filter = Filter {
            tag: Some(name.to_string()),
            ..Default::default()
        };
        let targets: Vec<Target> = crate::plan::expand(&cat, &filter)
            .map_err(|e| failed(&e))?
            .into_iter()
            .filter(|t| self.builders.can_build(t))
            .collect();
        let groups = group_by_tag(&targets, &self.config.registry.namespace);
        let Some((id, ts)) = groups.into_iter().find(|(id, _)| {
            repository
                .is_none_or(|r| id.repository == r || id.repository.ends_with(&format!("/{r}")))
        }) else {
            return Err(TagRefused::Unknown(format!(
                "no tag {tag} that a configured builder can build in the plan"
            )));
        };
        let trigger = if force { "api:force" } else { "api:tag" };
        let round = self.rounds.start(trigger).map_err(|e| failed(&e))?;
        let (job, new) = self
            .queue
            .queue_or_join(
                round,
                &id.repository,
                &id.tag,
                &ts[0].platform,
                ts[0].builder,
            )
            .map_err(|e| failed(&e))?;
        if force {
            self.queue.mark_forced(job, "api").map_err(|e| failed(&e))?;
        }
        if new {
            self.mark_queued(&id, ts.iter().map(|t| t.arch));
        }
        // A join leaves the new round empty: close it.
        let _ = self.close_round_if_done(round);
        tracing::info!(job, target = %id, force, "queued through the API");
        Ok(job)
    }
}

impl Loop {
    /// Stop the running jobs someone asked to cancel.
    pub(super) fn cancel_requested(&mut self) -> Result<(), DaemonError> {
        let asked = self.d.queue.cancel_requests()?;
        for (id, who) in asked {
            if let Some((job, handle, asked)) = self
                .tasks
                .values_mut()
                .find(|(j, _, a)| j.id == id && a.is_none())
            {
                tracing::warn!(job = job.id, target = %format!("{}:{}", job.repository, job.tag), by = %who, "cancelling a running job");
                *asked = Some(who);
                handle.abort();
            }
        }
        Ok(())
    }

    /// The drain bound passed: stop every running job; each is queued
    /// again once its cleanups have run.
    pub(super) fn stop_running(&mut self) {
        self.draining = true;
        for (job, handle, _) in self.tasks.values() {
            tracing::warn!(
                job = job.id,
                "stopping a running job at the drain bound: it is queued again"
            );
            handle.abort();
        }
    }

    /// A job's task ended: its result recorded, or, when it was stopped
    /// (cancelled, drained) or panicked, what that means for the job.
    pub(super) async fn task_ended(
        &mut self,
        done: Result<(tokio::task::Id, Ended), tokio::task::JoinError>,
    ) {
        let (id, ended) = match done {
            Ok((id, (job, finish, arches, started))) => (id, Ok((job, finish, arches, started))),
            Err(e) => (e.id(), Err(e)),
        };
        let Some((job, _, who)) = self.tasks.remove(&id) else {
            return;
        };
        let e = match ended {
            Ok((job, finish, arches, started)) => {
                return self.record_done(job, finish, arches, started).await;
            }
            Err(e) => e,
        };
        if e.is_panic() {
            tracing::error!(job = job.id, error = %e, "job task panicked");
            let finish = Finish::Failed {
                kind: FailureKind::Infra,
                error: format!("the job's task panicked: {e}"),
                log: None,
            };
            return self
                .record_done(job, finish, vec![], std::time::Instant::now())
                .await;
        }
        // Stopped: what its build made is removed before the job ends.
        crate::process::cleanups_settled().await;
        if let Some(n) = self.busy.get_mut(&job.builder) {
            *n = n.saturating_sub(1);
        }
        let q = &self.d.queue;
        let recorded = match &who {
            Some(who) if !self.draining => q.end_cancelled(job.id, who),
            _ => q.requeue_interrupted(job.id),
        };
        match recorded {
            Ok(()) if self.draining => {
                tracing::info!(job = job.id, "stopped at the drain bound: queued again")
            }
            Ok(()) => tracing::info!(job = job.id, "job cancelled: nothing of its build is left"),
            // Left `running`: the next start queues it again.
            Err(err) => tracing::error!(job = job.id, error = %err, "recording a stopped job"),
        }
        match self.d.close_round_if_done(job.round) {
            Ok(true) => {
                let d = self.d.clone();
                let round = job.round;
                self.tails
                    .spawn(async move { reconcile_round(&d.config, round).await });
            }
            Ok(false) => {}
            Err(err) => tracing::error!(round = job.round, error = %err, "closing the round"),
        }
    }
}
