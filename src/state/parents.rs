//! Parent digests as last resolved: (reference, platform) → digest and
//! when. When the upstream registry cannot be reached, planning and builds
//! use the remembered digest, marked stale, instead of failing or waiting.

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Db, StateError};

/// A remembered resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub name: String,
    pub digest: String,
    pub resolved_at: DateTime<Utc>,
}

pub struct ParentStore {
    db: Db,
}

impl ParentStore {
    pub fn open(path: &Path) -> Result<ParentStore, StateError> {
        let db = Db::open(
            path,
            "CREATE TABLE IF NOT EXISTS parent_digests (
                reference TEXT NOT NULL,
                platform TEXT NOT NULL,
                name TEXT NOT NULL,
                digest TEXT NOT NULL,
                resolved_at TEXT NOT NULL,
                PRIMARY KEY (reference, platform)
            );",
        )?;
        Ok(ParentStore { db })
    }

    pub fn remember(
        &self,
        reference: &str,
        platform: &str,
        name: &str,
        digest: &str,
    ) -> Result<(), StateError> {
        self.db
            .conn()
            .execute(
                "INSERT INTO parent_digests (reference, platform, name, digest, resolved_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (reference, platform) DO UPDATE SET
                   name = excluded.name, digest = excluded.digest, resolved_at = excluded.resolved_at",
                params![reference, platform, name, digest, Utc::now().to_rfc3339()],
            )
            .map_err(self.db.err())?;
        Ok(())
    }

    pub fn recall(
        &self,
        reference: &str,
        platform: &str,
    ) -> Result<Option<Remembered>, StateError> {
        let row = self
            .db
            .conn()
            .query_row(
                "SELECT name, digest, resolved_at FROM parent_digests WHERE reference = ?1 AND platform = ?2",
                params![reference, platform],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
            )
            .optional()
            .map_err(self.db.err())?;
        Ok(row.map(|(name, digest, at)| Remembered {
            name,
            digest,
            resolved_at: DateTime::parse_from_rfc3339(&at)
                .map_or_else(|_| Utc::now(), |t| t.with_timezone(&Utc)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolution_is_remembered_per_platform() {
        let dir = tempfile::tempdir().unwrap();
        let s = ParentStore::open(&dir.path().join("kiln.db")).unwrap();
        assert!(s.recall("debian:13", "linux/amd64").unwrap().is_none());
        s.remember("debian:13", "linux/amd64", "debian", "sha256:a")
            .unwrap();
        s.remember("debian:13", "linux/amd64", "debian", "sha256:b")
            .unwrap();
        let r = s.recall("debian:13", "linux/amd64").unwrap().unwrap();
        assert_eq!((r.name.as_str(), r.digest.as_str()), ("debian", "sha256:b"));
        assert!(s.recall("debian:13", "linux/arm64").unwrap().is_none());
    }
}
