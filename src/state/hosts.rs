//! Build hosts marked down: a host that stopped answering while it built
//! (its engine, its ssh) is recorded here by whichever process saw it, so
//! routing in every process skips it until it answers again, and `kiln
//! doctor` shows it. A host answering again is removed.

use std::path::Path;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Db, StateError};

/// A host marked down.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Down {
    /// `<builder kind>:<host name>` (`docker:arm64-1`).
    pub host: String,
    pub since: String,
    pub error: String,
}

pub struct HostHealth {
    db: Db,
}

impl HostHealth {
    pub fn open(path: &Path) -> Result<HostHealth, StateError> {
        let db = Db::open(
            path,
            "CREATE TABLE IF NOT EXISTS hosts_down (
                host TEXT PRIMARY KEY,
                since TEXT NOT NULL,
                error TEXT NOT NULL
            );",
        )?;
        Ok(HostHealth { db })
    }

    /// Record `host` down (keeping the first `since` of an outage).
    pub fn mark_down(&self, host: &str, error: &str) -> Result<(), StateError> {
        self.db
            .conn()
            .execute(
                "INSERT INTO hosts_down (host, since, error) VALUES (?1, ?2, ?3)
                 ON CONFLICT (host) DO UPDATE SET error = excluded.error",
                params![host, chrono::Utc::now().to_rfc3339(), error],
            )
            .map_err(self.db.err())?;
        Ok(())
    }

    /// `host` answers again. Returns whether it was down.
    pub fn mark_up(&self, host: &str) -> Result<bool, StateError> {
        let n = self
            .db
            .conn()
            .execute("DELETE FROM hosts_down WHERE host = ?1", [host])
            .map_err(self.db.err())?;
        Ok(n > 0)
    }

    pub fn get(&self, host: &str) -> Result<Option<Down>, StateError> {
        self.db
            .conn()
            .query_row(
                "SELECT host, since, error FROM hosts_down WHERE host = ?1",
                [host],
                |r| {
                    Ok(Down {
                        host: r.get(0)?,
                        since: r.get(1)?,
                        error: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(self.db.err())
    }

    /// Every host marked down.
    pub fn all(&self) -> Result<Vec<Down>, StateError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare("SELECT host, since, error FROM hosts_down ORDER BY host")
            .map_err(self.db.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Down {
                    host: r.get(0)?,
                    since: r.get(1)?,
                    error: r.get(2)?,
                })
            })
            .map_err(self.db.err())?;
        rows.collect::<Result<_, _>>().map_err(self.db.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_down_until_it_answers_and_keeps_its_first_since() {
        let dir = tempfile::tempdir().unwrap();
        let h = HostHealth::open(&dir.path().join("kiln.db")).unwrap();
        assert!(h.get("docker:a").unwrap().is_none());
        h.mark_down("docker:a", "connection refused").unwrap();
        let first = h.get("docker:a").unwrap().unwrap();
        h.mark_down("docker:a", "timed out").unwrap();
        let again = h.get("docker:a").unwrap().unwrap();
        assert_eq!(
            (again.since, again.error.as_str()),
            (first.since, "timed out")
        );
        assert_eq!(h.all().unwrap().len(), 1);
        assert!(h.mark_up("docker:a").unwrap());
        assert!(!h.mark_up("docker:a").unwrap());
        assert!(h.all().unwrap().is_empty());
    }
}
