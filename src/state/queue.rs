//! The durable job queue in SQLite: one job per tag (the unit that is
//! built and published together), each `queued`, `running`, `succeeded`
//! or `failed`, with attempts, timings, the failure kind and the log path.
//! Every state change is one transaction; WAL lets the API and `kiln
//! status` read while the daemon writes. A `watch` table keeps what the
//! pollers last saw (catalogue fingerprint, parent digests, the
//! opam-repository commit).

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::retry::retry_after;
use super::{Db, StateError};
use crate::catalogue::BuilderKind;

pub use crate::model::FailureKind;

mod control;
pub use control::{Cancel, ControlError};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Job {
    pub id: i64,
    pub round: i64,
    pub repository: String,
    pub tag: String,
    pub platform: String,
    pub builder: BuilderKind,
    pub state: String,
    pub attempts: i64,
    pub failure: Option<FailureKind>,
    pub error: Option<String>,
    pub outcome: Option<String>,
    pub log: Option<String>,
    pub queued_at: String,
    pub next_attempt_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_secs: Option<f64>,
}

/// How a job ended, as the runner saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// `built` or `unchanged`.
    Succeeded { outcome: String },
    Failed {
        kind: FailureKind,
        error: String,
        log: Option<String>,
    },
}

/// Queue metrics for Prometheus.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// state → count
    pub states: Vec<(String, i64)>,
    /// builder → (sum of seconds, count) of finished attempts
    pub durations: Vec<(String, f64, i64)>,
    /// failure kind → failed attempts
    pub failures: Vec<(String, i64)>,
}

pub struct Queue {
    db: Db,
}

fn now() -> String {
    Utc::now().to_rfc3339()
}

/// A column holding a typed name (`BuilderKind`, `FailureKind`).
fn parse_text<T: std::str::FromStr<Err = String>>(col: usize, text: &str) -> rusqlite::Result<T> {
    text.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, e.into())
    })
}

fn parse_column<T: std::str::FromStr<Err = String>>(
    r: &rusqlite::Row<'_>,
    col: usize,
) -> rusqlite::Result<T> {
    parse_text(col, &r.get::<_, String>(col)?)
}

fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        round: r.get(1)?,
        repository: r.get(2)?,
        tag: r.get(3)?,
        platform: r.get(4)?,
        builder: parse_column(r, 5)?,
        state: r.get(6)?,
        attempts: r.get(7)?,
        failure: r
            .get::<_, Option<String>>(8)?
            .map(|f| parse_text(8, &f))
            .transpose()?,
        error: r.get(9)?,
        outcome: r.get(10)?,
        log: r.get(11)?,
        queued_at: r.get(12)?,
        next_attempt_at: r.get(13)?,
        started_at: r.get(14)?,
        finished_at: r.get(15)?,
        duration_secs: r.get(16)?,
    })
}

const COLUMNS: &str = "id, round, repository, tag, platform, builder, state, attempts, failure, error, outcome, log, queued_at, next_attempt_at, started_at, finished_at, duration_secs";

impl Queue {
    pub fn open(path: &Path) -> Result<Queue, StateError> {
        let db = Db::open(
            path,
            "CREATE TABLE IF NOT EXISTS jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                round INTEGER NOT NULL,
                repository TEXT NOT NULL,
                tag TEXT NOT NULL,
                platform TEXT NOT NULL,
                builder TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                failure TEXT,
                error TEXT,
                outcome TEXT,
                log TEXT,
                queued_at TEXT NOT NULL,
                next_attempt_at TEXT NOT NULL,
                started_at TEXT,
                finished_at TEXT,
                duration_secs REAL
            );
            CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, next_attempt_at);
            CREATE TABLE IF NOT EXISTS attempts (
                job INTEGER NOT NULL,
                builder TEXT NOT NULL,
                started_at TEXT NOT NULL,
                duration_secs REAL NOT NULL,
                failure TEXT
            );
            CREATE TABLE IF NOT EXISTS job_control (
                job INTEGER PRIMARY KEY,
                action TEXT NOT NULL,
                asked_by TEXT NOT NULL,
                asked_at TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS watch (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                updated_at TEXT NOT NULL
            );",
        )?;
        Ok(Queue { db })
    }

    /// Queue a tag for `round` unless it is already queued (a queued job
    /// reads its inputs when it starts, so one is enough). A running job
    /// does not count: it may have read its inputs before the change that
    /// triggered this. Returns whether a job was added.
    pub fn enqueue(
        &self,
        round: i64,
        repository: &str,
        tag: &str,
        platform: &str,
        builder: BuilderKind,
    ) -> Result<bool, StateError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db.err())?;
        let pending: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE repository = ?1 AND tag = ?2 AND state = 'queued'",
                params![repository, tag],
                |r| r.get(0),
            )
            .map_err(self.db.err())?;
        if pending > 0 {
            return Ok(false);
        }
        let t = now();
        tx.execute(
            "INSERT INTO jobs (round, repository, tag, platform, builder, state, queued_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6)",
            params![round, repository, tag, platform, builder.as_str(), t],
        )
        .map_err(self.db.err())?;
        tx.commit().map_err(self.db.err())?;
        Ok(true)
    }

    /// The job that will build this tag next: the one already waiting in
    /// the queue, or a new one in `round`. Returns its id and whether it
    /// is new (a hand-off from `kiln build` follows it either way).
    pub fn queue_or_join(
        &self,
        round: i64,
        repository: &str,
        tag: &str,
        platform: &str,
        builder: BuilderKind,
    ) -> Result<(i64, bool), StateError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db.err())?;
        let waiting: Option<i64> = tx
            .query_row(
                "SELECT id FROM jobs WHERE repository = ?1 AND tag = ?2 AND state = 'queued' ORDER BY id LIMIT 1",
                params![repository, tag],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db.err())?;
        if let Some(id) = waiting {
            return Ok((id, false));
        }
        let t = now();
        tx.execute(
            "INSERT INTO jobs (round, repository, tag, platform, builder, state, queued_at, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6)",
            params![round, repository, tag, platform, builder.as_str(), t],
        )
        .map_err(self.db.err())?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(self.db.err())?;
        Ok((id, true))
    }

    /// One job by id.
    pub fn get(&self, id: i64) -> Result<Option<Job>, StateError> {
        self.db
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                row_to_job,
            )
            .optional()
            .map_err(self.db.err())
    }

    /// Is a job for this tag waiting in the queue?
    pub fn is_queued(&self, repository: &str, tag: &str) -> Result<bool, StateError> {
        let n: i64 = self
            .db
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE repository = ?1 AND tag = ?2 AND state = 'queued'",
                params![repository, tag],
                |r| r.get(0),
            )
            .map_err(self.db.err())?;
        Ok(n > 0)
    }

    /// Take the oldest due job of `builder` whose tag is not being built
    /// already (two builds of one tag could publish out of order) and mark
    /// it running.
    pub fn take(&self, builder: BuilderKind, at: DateTime<Utc>) -> Result<Option<Job>, StateError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db.err())?;
        let job = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs q WHERE state = 'queued' AND builder = ?1 AND next_attempt_at <= ?2
                   AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.state = 'running' AND r.repository = q.repository AND r.tag = q.tag)
                 ORDER BY next_attempt_at, id LIMIT 1"),
                params![builder.as_str(), at.to_rfc3339()],
                row_to_job,
            )
            .optional()
            .map_err(self.db.err())?;
        let Some(mut job) = job else {
            return Ok(None);
        };
        let t = now();
        tx.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?2 WHERE id = ?1",
            params![job.id, t],
        )
        .map_err(self.db.err())?;
        tx.commit().map_err(self.db.err())?;
        job.state = "running".into();
        job.attempts += 1;
        job.started_at = Some(t);
        Ok(Some(job))
    }

    /// Record the end of a running job. A failure the retry policy
    /// ([`retry_after`]) tries again goes back to the queue, due after its
    /// backoff.
    /// Returns the job's new state.
    pub fn finish(
        &self,
        job: &Job,
        finish: &Finish,
        max_attempts: u32,
        retry_base: Duration,
    ) -> Result<String, StateError> {
        let t = Utc::now();
        let duration = job
            .started_at
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|s| (t - s.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(0.0);
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db.err())?;
        let (state, failure) = match finish {
            Finish::Succeeded { outcome } => {
                tx.execute(
                    "UPDATE jobs SET state = 'succeeded', outcome = ?2, error = NULL, failure = NULL, finished_at = ?3, duration_secs = ?4 WHERE id = ?1",
                    params![job.id, outcome, t.to_rfc3339(), duration],
                )
                .map_err(self.db.err())?;
                ("succeeded".to_string(), None)
            }
            Finish::Failed { kind, error, log } => {
                if let Some(wait) =
                    retry_after(*kind, job.attempts as u32, max_attempts, retry_base)
                {
                    let next = t + chrono::Duration::from_std(wait).unwrap_or_default();
                    tx.execute(
                        "UPDATE jobs SET state = 'queued', failure = ?2, error = ?3, log = ?4, next_attempt_at = ?5, duration_secs = ?6 WHERE id = ?1",
                        params![job.id, kind.as_str(), error, log, next.to_rfc3339(), duration],
                    )
                    .map_err(self.db.err())?;
                    ("queued".to_string(), Some(kind.as_str()))
                } else {
                    tx.execute(
                        "UPDATE jobs SET state = 'failed', failure = ?2, error = ?3, log = ?4, finished_at = ?5, duration_secs = ?6 WHERE id = ?1",
                        params![job.id, kind.as_str(), error, log, t.to_rfc3339(), duration],
                    )
                    .map_err(self.db.err())?;
                    ("failed".to_string(), Some(kind.as_str()))
                }
            }
        };
        tx.execute(
            "INSERT INTO attempts (job, builder, started_at, duration_secs, failure) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job.id, job.builder.as_str(), job.started_at.clone().unwrap_or_default(), duration, failure],
        )
        .map_err(self.db.err())?;
        tx.commit().map_err(self.db.err())?;
        Ok(state)
    }

    /// A running job that failed while a registry held Kiln off (its rate
    /// limit) goes back to the queue until `until`, the limit's reset; the
    /// attempt is recorded (infra) but not counted against
    /// `max_attempts`: waiting for a registry is not the job failing.
    pub fn park(
        &self,
        job: &Job,
        until: DateTime<Utc>,
        error: &str,
        log: Option<&str>,
    ) -> Result<(), StateError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db.err())?;
        tx.execute(
            "UPDATE jobs SET state = 'queued', failure = 'infra', error = ?2, log = ?3, next_attempt_at = ?4, attempts = MAX(attempts - 1, 0) WHERE id = ?1",
            params![job.id, error, log, until.to_rfc3339()],
        )
        .map_err(self.db.err())?;
        tx.execute(
            "INSERT INTO attempts (job, builder, started_at, duration_secs, failure) VALUES (?1, ?2, ?3, 0, 'infra')",
            params![job.id, job.builder.as_str(), job.started_at.clone().unwrap_or_default()],
        )
        .map_err(self.db.err())?;
        tx.commit().map_err(self.db.err())
    }

    /// Jobs a killed daemon left running go back to the queue (the
    /// interrupted attempt is not counted); they and the jobs still queued
    /// move to a new `round`. Returns how many were running.
    pub fn recover(
        &self,
        round: impl Fn() -> Result<i64, StateError>,
    ) -> Result<usize, StateError> {
        let running: i64 = self
            .db
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE state = 'running'",
                [],
                |r| r.get(0),
            )
            .map_err(self.db.err())?;
        if running == 0 {
            return Ok(0);
        }
        let round = round()?;
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db.err())?;
        // A job someone asked to cancel before the daemon died stays
        // cancelled.
        tx.execute(
            "UPDATE jobs SET state = 'cancelled', error = 'cancelled (asked while it ran; the daemon stopped first)', finished_at = ?1
             WHERE state = 'running' AND id IN (SELECT job FROM job_control WHERE action = 'cancel')",
            params![now()],
        )
        .map_err(self.db.err())?;
        tx.execute("DELETE FROM job_control WHERE action = 'cancel'", [])
            .map_err(self.db.err())?;
        let n = tx
            .execute(
                "UPDATE jobs SET state = 'queued', round = ?1, attempts = MAX(attempts - 1, 0), started_at = NULL, next_attempt_at = ?2 WHERE state = 'running'",
                params![round, now()],
            )
            .map_err(self.db.err())?;
        tx.execute(
            "UPDATE jobs SET round = ?1 WHERE state = 'queued'",
            params![round],
        )
        .map_err(self.db.err())?;
        tx.commit().map_err(self.db.err())?;
        Ok(n)
    }

    /// The time the next queued job becomes due, if any.
    pub fn next_due(&self) -> Result<Option<DateTime<Utc>>, StateError> {
        let s: Option<String> = self
            .db
            .conn()
            .query_row(
                "SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'queued'",
                [],
                |r| r.get(0),
            )
            .map_err(self.db.err())?;
        Ok(s.and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|d| d.with_timezone(&Utc)))
    }

    /// Counts of a round's jobs: (pending, built, unchanged, failed).
    pub fn round_counts(&self, round: i64) -> Result<(i64, i64, i64, i64), StateError> {
        self.db
            .conn()
            .query_row(
                "SELECT
                    COALESCE(SUM(state IN ('queued', 'running')), 0),
                    COALESCE(SUM(state = 'succeeded' AND outcome = 'built'), 0),
                    COALESCE(SUM(state = 'succeeded' AND outcome IN ('unchanged', 'adopted')), 0),
                    COALESCE(SUM(state = 'failed'), 0)
                 FROM jobs WHERE round = ?1",
                [round],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(self.db.err())
    }

    pub fn list(&self, limit: usize) -> Result<Vec<Job>, StateError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(self.db.err())?;
        let rows = stmt
            .query_map([limit as i64], row_to_job)
            .map_err(self.db.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db.err())
    }

    pub fn stats(&self) -> Result<QueueStats, StateError> {
        let conn = self.db.conn();
        let mut out = QueueStats::default();
        let mut stmt = conn
            .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
            .map_err(self.db.err())?;
        out.states = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.db.err())?
            .collect::<Result<_, _>>()
            .map_err(self.db.err())?;
        let mut stmt = conn
            .prepare("SELECT builder, SUM(duration_secs), COUNT(*) FROM attempts GROUP BY builder ORDER BY builder")
            .map_err(self.db.err())?;
        out.durations = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.db.err())?
            .collect::<Result<_, _>>()
            .map_err(self.db.err())?;
        let mut stmt = conn
            .prepare("SELECT failure, COUNT(*) FROM attempts WHERE failure IS NOT NULL GROUP BY failure ORDER BY failure")
            .map_err(self.db.err())?;
        out.failures = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.db.err())?
            .collect::<Result<_, _>>()
            .map_err(self.db.err())?;
        Ok(out)
    }

    pub fn watch_get(&self, key: &str) -> Result<Option<String>, StateError> {
        self.db
            .conn()
            .query_row("SELECT value FROM watch WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.db.err())
    }

    pub fn watch_set(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.db.conn()
            .execute(
                "INSERT INTO watch (key, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![key, value, now()],
            )
            .map_err(self.db.err())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
