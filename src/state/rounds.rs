//! Rebuild rounds in the SQLite state store: each round (scheduled, asked
//! for through the API, or resuming an interrupted one) with its trigger,
//! timings, outcome counts and state. One transaction per state change.

use std::path::Path;

use rusqlite::params;
use serde::Serialize;

use super::{Db, StateError};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Round {
    pub id: i64,
    pub trigger: String,
    pub state: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub built: i64,
    pub unchanged: i64,
    pub failed: i64,
    pub error: Option<String>,
}

pub struct Rounds {
    db: Db,
}

impl Rounds {
    pub fn open(path: &Path) -> Result<Rounds, StateError> {
        let db = Db::open(
            path,
            "CREATE TABLE IF NOT EXISTS rounds (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                trigger TEXT NOT NULL,
                state TEXT NOT NULL,
                started_at TEXT NOT NULL,
                finished_at TEXT,
                built INTEGER NOT NULL DEFAULT 0,
                unchanged INTEGER NOT NULL DEFAULT 0,
                failed INTEGER NOT NULL DEFAULT 0,
                error TEXT
            );",
        )?;
        Ok(Rounds { db })
    }

    pub fn start(&self, trigger: &str) -> Result<i64, StateError> {
        let conn = self.db.conn();
        conn.execute(
            "INSERT INTO rounds (trigger, state, started_at) VALUES (?1, 'running', ?2)",
            params![trigger, chrono::Utc::now().to_rfc3339()],
        )
        .map_err(self.db.err())?;
        Ok(conn.last_insert_rowid())
    }

    pub fn finish(
        &self,
        id: i64,
        built: usize,
        unchanged: usize,
        failed: usize,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.db.conn()
            .execute(
                "UPDATE rounds SET state = ?2, finished_at = ?3, built = ?4, unchanged = ?5, failed = ?6, error = ?7 WHERE id = ?1",
                params![
                    id,
                    if error.is_some() { "failed" } else { "done" },
                    chrono::Utc::now().to_rfc3339(),
                    built as i64,
                    unchanged as i64,
                    failed as i64,
                    error
                ],
            )
            .map_err(self.db.err())?;
        Ok(())
    }

    /// Rounds a killed daemon left `running` become `interrupted`; returns
    /// how many (the caller runs a resuming round for them).
    pub fn recover(&self) -> Result<usize, StateError> {
        let n = self
            .db
            .conn()
            .execute(
                "UPDATE rounds SET state = 'interrupted', finished_at = ?1 WHERE state = 'running'",
                params![chrono::Utc::now().to_rfc3339()],
            )
            .map_err(self.db.err())?;
        Ok(n)
    }

    pub fn list(&self, limit: usize) -> Result<Vec<Round>, StateError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare("SELECT id, trigger, state, started_at, finished_at, built, unchanged, failed, error FROM rounds ORDER BY id DESC LIMIT ?1")
            .map_err(self.db.err())?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(Round {
                    id: r.get(0)?,
                    trigger: r.get(1)?,
                    state: r.get(2)?,
                    started_at: r.get(3)?,
                    finished_at: r.get(4)?,
                    built: r.get(5)?,
                    unchanged: r.get(6)?,
                    failed: r.get(7)?,
                    error: r.get(8)?,
                })
            })
            .map_err(self.db.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db.err())
    }

    pub fn last(&self) -> Result<Option<Round>, StateError> {
        Ok(self.list(1)?.into_iter().next())
    }
}
