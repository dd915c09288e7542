//! Job control: cancel a queued or running job, retry a failed or
//! cancelled one. A queued job is cancelled at once; a running one gets a
//! request in `job_control` that the daemon acts on within its queue poll
//! (it drops the job's build, waits for the build's cleanups, then ends the
//! job `cancelled`). Any process may ask (`kiln jobs`, the API): the
//! request is a row, so it survives whichever process wrote it.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{Queue, now};
use crate::state::StateError;

/// Why a control request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no job #{0} in the queue (`kiln jobs list` shows them)")]
    NoSuchJob(i64),
    #[error("job #{id} is {state}: only a queued or running job can be cancelled")]
    NotCancellable { id: i64, state: String },
    #[error("job #{id} is {state}: only a failed or cancelled job can be retried")]
    NotRetryable { id: i64, state: String },
    #[error("job #{id}'s tag {tag} is queued already as job #{other}")]
    AlreadyQueued { id: i64, tag: String, other: i64 },
    #[error(transparent)]
    State(#[from] StateError),
}

/// What cancelling did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cancel {
    /// It was queued: it is `cancelled` now.
    Cancelled,
    /// It is running: the daemon stops it within its queue poll.
    Requested,
}

impl Queue {
    fn state_of(&self, tx: &rusqlite::Transaction<'_>, id: i64) -> Result<String, ControlError> {
        tx.query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(self.db.err())?
            .ok_or(ControlError::NoSuchJob(id))
    }

    /// Cancel job `id`, as `who` asked.
    pub fn cancel(&self, id: i64, who: &str) -> Result<Cancel, ControlError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db.err())?;
        let state = self.state_of(&tx, id)?;
        let t = now();
        let done = match state.as_str() {
            "queued" => {
                tx.execute(
                    "UPDATE jobs SET state = 'cancelled', error = ?2, finished_at = ?3 WHERE id = ?1",
                    params![id, format!("cancelled by {who} before it started"), t],
                )
                .map_err(self.db.err())?;
                Cancel::Cancelled
            }
            "running" => {
                tx.execute(
                    "INSERT INTO job_control (job, action, asked_by, asked_at) VALUES (?1, 'cancel', ?2, ?3)
                     ON CONFLICT (job) DO UPDATE SET action = 'cancel', asked_by = excluded.asked_by, asked_at = excluded.asked_at",
                    params![id, who, t],
                )
                .map_err(self.db.err())?;
                Cancel::Requested
            }
            _ => return Err(ControlError::NotCancellable { id, state }),
        };
        tx.commit().map_err(self.db.err())?;
        Ok(done)
    }

    /// Mark job `id` a forced rebuild (`kiln build --tag … --force` handed
    /// to the daemon): it builds although its key is unchanged.
    pub fn mark_forced(&self, id: i64, who: &str) -> Result<(), StateError> {
        self.db
            .conn()
            .execute(
                "INSERT INTO job_control (job, action, asked_by, asked_at) VALUES (?1, 'force', ?2, ?3)
                 ON CONFLICT (job) DO NOTHING",
                params![id, who, now()],
            )
            .map_err(self.db.err())?;
        Ok(())
    }

    /// Is job `id` a forced rebuild?
    pub fn is_forced(&self, id: i64) -> Result<bool, StateError> {
        let n: i64 = self
            .db
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM job_control WHERE job = ?1 AND action = 'force'",
                [id],
                |r| r.get(0),
            )
            .map_err(self.db.err())?;
        Ok(n > 0)
    }

    /// Running jobs someone asked to cancel, with who asked.
    pub fn cancel_requests(&self) -> Result<Vec<(i64, String)>, StateError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare(
                "SELECT c.job, c.asked_by FROM job_control c JOIN jobs j ON j.id = c.job
                 WHERE c.action = 'cancel' AND j.state = 'running' ORDER BY c.job",
            )
            .map_err(self.db.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.db.err())?;
        rows.collect::<Result<_, _>>().map_err(self.db.err())
    }

    /// A running job the daemon stopped on request: `cancelled`, the
    /// attempt recorded (failure `cancelled`), the request consumed.
    pub fn end_cancelled(&self, id: i64, who: &str) -> Result<(), StateError> {
        self.end_running(id, &format!("cancelled by {who} while running"), true)
    }

    /// A running job the daemon stopped while draining at SIGTERM: back
    /// in the queue, due now, the interrupted attempt not counted.
    pub fn requeue_interrupted(&self, id: i64) -> Result<(), StateError> {
        self.end_running(id, "", false)
    }

    fn end_running(&self, id: i64, error: &str, cancelled: bool) -> Result<(), StateError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db.err())?;
        let row: Option<(String, Option<String>)> = tx
            .query_row(
                "SELECT builder, started_at FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db.err())?;
        let Some((builder, started)) = row else {
            return Ok(());
        };
        let t = Utc::now();
        let duration = started
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|s| (t - s.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(0.0);
        if cancelled {
            tx.execute(
                "UPDATE jobs SET state = 'cancelled', error = ?2, finished_at = ?3, duration_secs = ?4 WHERE id = ?1",
                params![id, error, t.to_rfc3339(), duration],
            )
            .map_err(self.db.err())?;
        } else {
            tx.execute(
                "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), started_at = NULL, next_attempt_at = ?2 WHERE id = ?1",
                params![id, t.to_rfc3339()],
            )
            .map_err(self.db.err())?;
        }
        tx.execute(
            "INSERT INTO attempts (job, builder, started_at, duration_secs, failure) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                id,
                builder,
                started.unwrap_or_default(),
                duration,
                if cancelled { "cancelled" } else { "interrupted" }
            ],
        )
        .map_err(self.db.err())?;
        tx.execute("DELETE FROM job_control WHERE job = ?1", [id])
            .map_err(self.db.err())?;
        tx.commit().map_err(self.db.err())
    }

    /// Queue a failed or cancelled job again, in a new round `round()`
    /// opens: its attempts start over, due now. Returns the round.
    pub fn retry(
        &self,
        id: i64,
        round: impl Fn() -> Result<i64, StateError>,
    ) -> Result<i64, ControlError> {
        {
            let mut conn = self.db.conn();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.db.err())?;
            let state = self.state_of(&tx, id)?;
            if state != "failed" && state != "cancelled" {
                return Err(ControlError::NotRetryable { id, state });
            }
            let (repository, tag): (String, String) = tx
                .query_row(
                    "SELECT repository, tag FROM jobs WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(self.db.err())?;
            let other: Option<i64> = tx
                .query_row(
                    "SELECT id FROM jobs WHERE repository = ?1 AND tag = ?2 AND state = 'queued'",
                    params![repository, tag],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.db.err())?;
            if let Some(other) = other {
                return Err(ControlError::AlreadyQueued {
                    id,
                    tag: format!("{repository}:{tag}"),
                    other,
                });
            }
        }
        // The round opens outside the check's transaction (its own
        // connection); the update below checks the state again.
        let round = round()?;
        let n = self
            .db
            .conn()
            .execute(
                "UPDATE jobs SET state = 'queued', round = ?2, attempts = 0, next_attempt_at = ?3, started_at = NULL, finished_at = NULL
                 WHERE id = ?1 AND state IN ('failed', 'cancelled')",
                params![id, round, now()],
            )
            .map_err(self.db.err())?;
        if n == 0 {
            let state = self
                .get(id)?
                .map(|j| j.state)
                .unwrap_or_else(|| "gone".into());
            return Err(ControlError::NotRetryable { id, state });
        }
        Ok(round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::BuilderKind;
    use crate::state::queue::FailureKind;
    use crate::state::queue::Finish;

    fn queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("kiln.db")).unwrap();
        (dir, q)
    }

    #[test]
    fn a_queued_job_is_cancelled_at_once_and_never_taken() {
        let (_d, q) = queue();
        q.enqueue(1, "r", "t", "linux", BuilderKind::Docker)
            .unwrap();
        assert_eq!(q.cancel(1, "cli").unwrap(), Cancel::Cancelled);
        assert_eq!(q.get(1).unwrap().unwrap().state, "cancelled");
        assert!(q.take(BuilderKind::Docker, Utc::now()).unwrap().is_none());
        assert_eq!(q.round_counts(1).unwrap().0, 0, "the round can close");
        assert!(matches!(
            q.cancel(1, "cli"),
            Err(ControlError::NotCancellable { .. })
        ));
        assert!(matches!(
            q.cancel(9, "cli"),
            Err(ControlError::NoSuchJob(9))
        ));
    }

    #[test]
    fn a_running_job_is_asked_then_ended_cancelled() {
        let (_d, q) = queue();
        q.enqueue(1, "r", "t", "linux", BuilderKind::Docker)
            .unwrap();
        let job = q.take(BuilderKind::Docker, Utc::now()).unwrap().unwrap();
        assert!(q.cancel_requests().unwrap().is_empty());
        assert_eq!(q.cancel(job.id, "api").unwrap(), Cancel::Requested);
        assert_eq!(q.cancel_requests().unwrap(), vec![(job.id, "api".into())]);
        q.end_cancelled(job.id, "api").unwrap();
        let j = q.get(job.id).unwrap().unwrap();
        assert_eq!(j.state, "cancelled");
        assert!(j.error.unwrap().contains("cancelled by api"));
        assert!(q.cancel_requests().unwrap().is_empty(), "consumed");
    }

    #[test]
    fn an_interrupted_job_goes_back_without_spending_an_attempt() {
        let (_d, q) = queue();
        q.enqueue(1, "r", "t", "linux", BuilderKind::Docker)
            .unwrap();
        let job = q.take(BuilderKind::Docker, Utc::now()).unwrap().unwrap();
        q.requeue_interrupted(job.id).unwrap();
        let j = q.get(job.id).unwrap().unwrap();
        assert_eq!((j.state.as_str(), j.attempts), ("queued", 0));
        assert!(q.take(BuilderKind::Docker, Utc::now()).unwrap().is_some());
    }

    #[test]
    fn only_a_failed_or_cancelled_job_is_retried_and_never_twice_queued() {
        let (_d, q) = queue();
        q.enqueue(1, "r", "t", "linux", BuilderKind::Docker)
            .unwrap();
        assert!(matches!(
            q.retry(1, || Ok(2)),
            Err(ControlError::NotRetryable { .. })
        ));
        let job = q.take(BuilderKind::Docker, Utc::now()).unwrap().unwrap();
        let failed = Finish::Failed {
            kind: FailureKind::Recipe,
            error: "boom".into(),
            log: None,
        };
        q.finish(&job, &failed, 3, std::time::Duration::from_secs(1))
            .unwrap();
        assert_eq!(q.get(1).unwrap().unwrap().state, "failed");
        // Another job of the tag waiting: the retry would queue it twice.
        q.enqueue(1, "r", "t", "linux", BuilderKind::Docker)
            .unwrap();
        assert!(matches!(
            q.retry(1, || Ok(2)),
            Err(ControlError::AlreadyQueued { other: 2, .. })
        ));
        q.cancel(2, "cli").unwrap();
        assert_eq!(q.retry(1, || Ok(7)).unwrap(), 7);
        let j = q.get(1).unwrap().unwrap();
        assert_eq!((j.state.as_str(), j.attempts, j.round), ("queued", 0, 7));
    }
}
