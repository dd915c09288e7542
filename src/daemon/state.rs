//! Per-target build states in the SQLite state store: what is building,
//! what failed and why, where its log is. The digest API reads them to say
//! "building" or "failed: …" in a refusal instead of "not built".

use std::path::Path;

use rusqlite::{Connection, params};

use crate::api::gate::{JobState, Jobs, job_key};

#[derive(Debug, thiserror::Error)]
#[error("state database {path}: {source}")]
pub struct StateError {
    pub path: String,
    pub source: rusqlite::Error,
}

pub struct StateStore {
    conn: Connection,
    path: String,
}

/// What happened to one arch of one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Queued,
    Building,
    Succeeded,
    Failed(String),
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
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.execute_batch(schema).map_err(err)?;
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

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        let p = path.display().to_string();
        let conn = open_db(
            path,
            "CREATE TABLE IF NOT EXISTS target_state (
                repository TEXT NOT NULL,
                tag TEXT NOT NULL,
                arch TEXT NOT NULL,
                state TEXT NOT NULL,
                error TEXT,
                log TEXT,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (repository, tag, arch)
            );",
        )?;
        Ok(StateStore { conn, path: p })
    }

    pub fn set(
        &self,
        repository: &str,
        tag: &str,
        arch: &str,
        state: &State,
        log: Option<&Path>,
    ) -> Result<(), StateError> {
        let (name, error) = match state {
            State::Queued => ("queued", None),
            State::Building => ("building", None),
            State::Succeeded => ("succeeded", None),
            State::Failed(e) => ("failed", Some(e.as_str())),
        };
        self.conn
            .execute(
                "INSERT INTO target_state (repository, tag, arch, state, error, log, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (repository, tag, arch) DO UPDATE SET
                   state = excluded.state, error = excluded.error, log = excluded.log, updated_at = excluded.updated_at",
                params![repository, tag, arch, name, error, log.map(|l| l.display().to_string()), chrono::Utc::now().to_rfc3339()],
            )
            .map_err(|source| StateError { path: self.path.clone(), source })?;
        Ok(())
    }

    /// Jobs the gate should know about (succeeded ones are in the lockfile).
    pub fn jobs(&self) -> Result<Jobs, StateError> {
        let err = |source| StateError {
            path: self.path.clone(),
            source,
        };
        let mut stmt = self
            .conn
            .prepare("SELECT repository, tag, arch, state, error, log FROM target_state WHERE state != 'succeeded'")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(err)?;
        let mut jobs = Jobs::new();
        for row in rows {
            let (repo, tag, arch, state, error, log) = row.map_err(err)?;
            let js = match state.as_str() {
                "queued" => JobState::Queued,
                "building" => JobState::Building,
                _ => JobState::Failed {
                    error: match log {
                        Some(l) => format!("{} (log: {l})", error.unwrap_or_default()),
                        None => error.unwrap_or_default(),
                    },
                },
            };
            jobs.insert(job_key(&repo, &tag, &arch), js);
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
        s.set("kiln/opam", "t", "amd64", &State::Building, None)
            .unwrap();
        s.set(
            "kiln/opam",
            "t",
            "arm64",
            &State::Failed("smoke".into()),
            Some(Path::new("/l")),
        )
        .unwrap();
        s.set("kiln/opam", "u", "amd64", &State::Succeeded, None)
            .unwrap();
        let jobs = s.jobs().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            jobs[&job_key("kiln/opam", "t", "amd64")],
            JobState::Building
        );
        assert_eq!(
            jobs[&job_key("kiln/opam", "t", "arm64")],
            JobState::Failed {
                error: "smoke (log: /l)".into()
            }
        );
        s.set("kiln/opam", "t", "amd64", &State::Succeeded, None)
            .unwrap();
        assert_eq!(
            StateStore::open(&dir.path().join("kiln.db"))
                .unwrap()
                .jobs()
                .unwrap()
                .len(),
            1
        );
    }
}
