//! The opam-repository commit in use: which commit of the followed ref is
//! a build input now, and since when. It moves on the refresh cadence, or
//! when the packages the images install changed; not on every upstream
//! commit.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Db, StateError};

pub struct OpamRepoStore {
    db: Db,
}

impl OpamRepoStore {
    pub fn open(path: &Path) -> Result<OpamRepoStore, StateError> {
        let db = Db::open(
            path,
            "CREATE TABLE IF NOT EXISTS opam_repository (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                commit_id TEXT NOT NULL,
                since TEXT NOT NULL
            );",
        )?;
        Ok(OpamRepoStore { db })
    }

    /// The commit in use and when it was taken.
    pub fn current(&self) -> Result<Option<(String, DateTime<Utc>)>, StateError> {
        let row = self
            .db
            .conn()
            .query_row(
                "SELECT commit_id, since FROM opam_repository WHERE id = 1",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(self.db.err())?;
        Ok(row.map(|(c, since)| {
            let since = DateTime::parse_from_rfc3339(&since)
                .map_or_else(|_| Utc::now(), |t| t.with_timezone(&Utc));
            (c, since)
        }))
    }

    /// Take `commit` as the one in use from now.
    pub fn take(&self, commit: &str) -> Result<(), StateError> {
        self.db
            .conn()
            .execute(
                "INSERT INTO opam_repository (id, commit_id, since) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET commit_id = excluded.commit_id, since = excluded.since",
                params![commit, Utc::now().to_rfc3339()],
            )
            .map_err(self.db.err())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_in_use_is_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let s = OpamRepoStore::open(&dir.path().join("kiln.db")).unwrap();
        assert!(s.current().unwrap().is_none());
        s.take("a").unwrap();
        s.take("b").unwrap();
        assert_eq!(s.current().unwrap().unwrap().0, "b");
    }
}
