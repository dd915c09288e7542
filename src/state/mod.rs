//! Per-arch build states in the SQLite state store: what is building,
//! what failed, with which kind and why, where its log is. The digest API
//! reads them to say "building" or "failed: …" in a refusal instead of
//! "not built". Beside it, the daemon's durable job queue ([`queue`],
//! retried by the policy in [`retry`]) and rounds ([`rounds`]), sharing
//! one SQLite opener: the API reads them too, so they live below both.

pub mod hosts;
pub mod opam_repo;
pub mod parents;
pub mod queue;
pub mod retry;
pub mod rounds;
pub mod unreferenced;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::catalogue::Arch;
use crate::model::requirement::job_key;
use crate::model::{ArchState, FailureKind, Jobs, TagId};

#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {source}")]
pub struct StateError {
    pub path: String,
    pub source: rusqlite::Error,
}

pub struct StateStore {
    db: Db,
}

/// Open the state database (WAL, so readers never wait for the daemon)
/// and create `schema` if missing.
pub(crate) fn open_db(path: &Path, schema: &str) -> Result<Connection, StateError> {
    let err = |source| StateError {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path).map_err(&err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(&err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&err)?;
    conn.execute_batch(schema).map_err(&err)?;
    Ok(conn)
}

/// A state-database connection shared by one component's methods, with the
/// path its errors name.
pub(crate) struct Db {
    conn: std::sync::Mutex<Connection>,
    path: String,
}

impl Db {
    pub(crate) fn open(path: &Path, schema: &str) -> Result<Db, StateError> {
        Ok(Db {
            conn: std::sync::Mutex::new(open_db(path, schema)?),
            path: path.display().to_string(),
        })
    }

    pub(crate) fn err(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        |source| StateError {
            path: self.path.clone(),
            source,
        }
    }

    /// Add `column` (`name TYPE`) to `table` when a database from an
    /// earlier Kiln lacks it.
    pub(crate) fn migrate_add_column(&self, table: &str, column: &str) -> Result<(), StateError> {
        let name = column.split_whitespace().next().unwrap_or(column);
        let conn = self.conn();
        let present: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
                params![table, name],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        if present == 0 {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column};"))
                .map_err(self.err())?;
        }
        Ok(())
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// One arch's build record: when it started, when its state last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    pub started: chrono::DateTime<chrono::Utc>,
    pub updated: chrono::DateTime<chrono::Utc>,
    pub state: String,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        let db = Db::open(
            path,
            "CREATE TABLE IF NOT EXISTS target_state (
                repository TEXT NOT NULL,
                tag TEXT NOT NULL,
                arch TEXT NOT NULL,
                state TEXT NOT NULL,
                error TEXT,
                log TEXT,
                updated_at TEXT NOT NULL,
                kind TEXT,
                started_at TEXT,
                PRIMARY KEY (repository, tag, arch)
            );",
        )?;
        db.migrate_add_column("target_state", "kind TEXT")?;
        db.migrate_add_column("target_state", "started_at TEXT")?;
        Ok(StateStore { db })
    }

    pub fn set(&self, id: &TagId, arch: Arch, state: &ArchState) -> Result<(), StateError> {
        let (kind, error, log) = match state {
            ArchState::Failed { kind, error, log } => {
                (Some(kind.as_str()), Some(error.as_str()), log.as_deref())
            }
            _ => (None, None, None),
        };
        self.db
            .conn()
            .execute(
                // `started_at`: when the arch last started building; kept
                // by the states after it, so that a finished build's
                // record spans its run (`started_at` to `updated_at`).
                "INSERT INTO target_state (repository, tag, arch, state, error, log, updated_at, kind, started_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE WHEN ?4 = 'building' THEN ?7 END)
                 ON CONFLICT (repository, tag, arch) DO UPDATE SET
                   state = excluded.state, error = excluded.error, log = excluded.log,
                   updated_at = excluded.updated_at, kind = excluded.kind,
                   started_at = CASE WHEN excluded.state = 'building' THEN excluded.updated_at
                                     WHEN excluded.state = 'queued' THEN NULL
                                     ELSE target_state.started_at END",
                params![id.repository, id.tag, arch.as_str(), state.name(), error, log, chrono::Utc::now().to_rfc3339(), kind],
            )
            .map_err(self.db.err())?;
        Ok(())
    }

    /// When `arch` of `id` last started building and when its state last
    /// changed (its end, once it succeeded or failed), with that state.
    pub fn span(&self, id: &TagId, arch: Arch) -> Result<Option<Span>, StateError> {
        let err = self.db.err();
        let row = self
            .db
            .conn()
            .query_row(
                "SELECT started_at, updated_at, state FROM target_state
                 WHERE repository = ?1 AND tag = ?2 AND arch = ?3",
                params![id.repository, id.tag, arch.as_str()],
                |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(&err)?;
        let time = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.to_utc())
        };
        Ok(row.and_then(|(started, updated, state)| {
            Some(Span {
                started: time(started.as_deref()?)?,
                updated: time(&updated)?,
                state,
            })
        }))
    }

    /// States the gate should know about (succeeded ones are in the lockfile).
    pub fn jobs(&self) -> Result<Jobs, StateError> {
        let err = self.db.err();
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare("SELECT repository, tag, arch, state, error, log, kind FROM target_state WHERE state != 'succeeded'")
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    TagId::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })
            .map_err(&err)?;
        let mut jobs = Jobs::new();
        for row in rows {
            let (id, arch, state, error, log, kind) = row.map_err(&err)?;
            let Ok(arch) = arch.parse::<Arch>() else {
                continue;
            };
            let js = match state.as_str() {
                "queued" => ArchState::Queued,
                "building" => ArchState::Building,
                _ => ArchState::Failed {
                    kind: kind
                        .and_then(|k| k.parse().ok())
                        .unwrap_or(FailureKind::Recipe),
                    error: error.unwrap_or_default(),
                    log,
                },
            };
            jobs.insert(job_key(&id, arch), js);
        }
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(&dir.path().join("kiln.db")).unwrap();
        let t = TagId::new("kiln/opam", "t");
        s.set(&t, Arch::Amd64, &ArchState::Building).unwrap();
        let failed = ArchState::Failed {
            kind: FailureKind::Recipe,
            error: "smoke".into(),
            log: Some("/l".into()),
        };
        s.set(&t, Arch::Arm64, &failed).unwrap();
        s.set(
            &TagId::new("kiln/opam", "u"),
            Arch::Amd64,
            &ArchState::Succeeded,
        )
        .unwrap();
        let jobs = s.jobs().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[&job_key(&t, Arch::Amd64)], ArchState::Building);
        assert_eq!(jobs[&job_key(&t, Arch::Arm64)], failed);
        s.set(&t, Arch::Amd64, &ArchState::Succeeded).unwrap();
        assert_eq!(
            StateStore::open(&dir.path().join("kiln.db"))
                .unwrap()
                .jobs()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_finished_build_keeps_when_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(&dir.path().join("kiln.db")).unwrap();
        let t = TagId::new("kiln/opam", "t");
        s.set(&t, Arch::Amd64, &ArchState::Queued).unwrap();
        assert_eq!(
            s.span(&t, Arch::Amd64).unwrap(),
            None,
            "queued: not started"
        );
        s.set(&t, Arch::Amd64, &ArchState::Building).unwrap();
        let building = s.span(&t, Arch::Amd64).unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.set(&t, Arch::Amd64, &ArchState::Succeeded).unwrap();
        let done = s.span(&t, Arch::Amd64).unwrap().unwrap();
        assert_eq!(done.started, building.started);
        assert!(done.updated > done.started, "{done:?}");
        assert_eq!(done.state, "succeeded");
        s.set(&t, Arch::Amd64, &ArchState::Queued).unwrap();
        assert_eq!(s.span(&t, Arch::Amd64).unwrap(), None, "queued again");
    }

    #[test]
    fn an_old_database_gains_the_kind_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE target_state (repository TEXT NOT NULL, tag TEXT NOT NULL,
                 arch TEXT NOT NULL, state TEXT NOT NULL, error TEXT, log TEXT,
                 updated_at TEXT NOT NULL, PRIMARY KEY (repository, tag, arch));",
            )
            .unwrap();
        let s = StateStore::open(&path).unwrap();
        let f = ArchState::Failed {
            kind: FailureKind::Infra,
            error: "gone".into(),
            log: None,
        };
        s.set(&TagId::new("r", "t"), Arch::Amd64, &f).unwrap();
        assert_eq!(s.jobs().unwrap().into_values().next().unwrap(), f);
    }
}
