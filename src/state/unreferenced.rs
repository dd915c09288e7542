//! When `kiln gc --registry` first saw each registry manifest that nothing
//! references: (repository, digest) → first seen. The registry records no
//! age, so retention counts from the first sighting; a manifest that is
//! referenced again (rolled back to, adopted) is forgotten.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Db, StateError};

pub struct Unreferenced {
    db: Db,
}

impl Unreferenced {
    pub fn open(path: &Path) -> Result<Unreferenced, StateError> {
        let db = Db::open(
            path,
            "CREATE TABLE IF NOT EXISTS unreferenced (
                repository TEXT NOT NULL,
                digest TEXT NOT NULL,
                first_seen TEXT NOT NULL,
                PRIMARY KEY (repository, digest)
            );",
        )?;
        Ok(Unreferenced { db })
    }

    /// Record `digest` of `repository` as unreferenced now, unless it was
    /// already; returns when it was first seen so.
    pub fn sighted(&self, repository: &str, digest: &str) -> Result<DateTime<Utc>, StateError> {
        let conn = self.db.conn();
        conn.execute(
            "INSERT INTO unreferenced (repository, digest, first_seen) VALUES (?1, ?2, ?3)
             ON CONFLICT (repository, digest) DO NOTHING",
            params![repository, digest, Utc::now().to_rfc3339()],
        )
        .map_err(self.db.err())?;
        let at: Option<String> = conn
            .query_row(
                "SELECT first_seen FROM unreferenced WHERE repository = ?1 AND digest = ?2",
                params![repository, digest],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db.err())?;
        Ok(at
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc)))
    }

    /// Forget every sighting in `repository` but `still` (deleted, or
    /// referenced again).
    pub fn keep_only(&self, repository: &str, still: &BTreeSet<String>) -> Result<(), StateError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare("SELECT digest FROM unreferenced WHERE repository = ?1")
            .map_err(self.db.err())?;
        let known: Vec<String> = stmt
            .query_map(params![repository], |r| r.get(0))
            .map_err(self.db.err())?
            .collect::<Result<_, _>>()
            .map_err(self.db.err())?;
        for d in known.iter().filter(|d| !still.contains(*d)) {
            conn.execute(
                "DELETE FROM unreferenced WHERE repository = ?1 AND digest = ?2",
                params![repository, d],
            )
            .map_err(self.db.err())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sighting_is_kept_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let u = Unreferenced::open(&dir.path().join("kiln.db")).unwrap();
        let first = u.sighted("ns/opam", "sha256:a").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(u.sighted("ns/opam", "sha256:a").unwrap(), first);
        u.keep_only("ns/opam", &BTreeSet::new()).unwrap();
        assert!(u.sighted("ns/opam", "sha256:a").unwrap() > first);
    }
}
