//! The worker inventory as the API serves it (`/v1/workers`, the status
//! page's workers table): collected from every builder's hosts
//! ([`crate::builders::inventory`]) against the served lockfile, at most
//! one collection at a time, and reused while younger than `max_age`, so
//! that requests never make a worker answer more often than that. The
//! server collects once at start and then every `max_age` in the
//! background; the status page shows the latest collection and never
//! waits for one.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::builders::Builders;
use crate::builders::inventory::Inventory;
use crate::config::Config;
use crate::lockfile::Lockfile;

/// How long a collection is reused, and how often the server collects.
pub const MAX_AGE: Duration = Duration::from_secs(60);

pub struct Workers {
    builders: Builders,
    max_age: Duration,
    latest: RwLock<Option<(Instant, Arc<Inventory>)>>,
    /// Held while collecting: a second caller waits for that collection.
    collecting: tokio::sync::Mutex<()>,
}

impl Workers {
    pub fn of(config: &Config, max_age: Duration) -> Workers {
        Workers {
            builders: Builders::new(config),
            max_age,
            latest: RwLock::new(None),
            collecting: tokio::sync::Mutex::new(()),
        }
    }

    /// How often the background collection runs.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The latest collection, however old (none before the first).
    pub fn latest(&self) -> Option<Arc<Inventory>> {
        let guard = match self.latest.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.as_ref().map(|(_, inv)| inv.clone())
    }

    fn fresh(&self) -> Option<Arc<Inventory>> {
        let guard = match self.latest.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.max_age)
            .map(|(_, inv)| inv.clone())
    }

    /// An inventory younger than `max_age`, collected now if there is none.
    pub async fn within_max_age(&self, lock: &Lockfile) -> Arc<Inventory> {
        if let Some(inv) = self.fresh() {
            return inv;
        }
        let _collecting = self.collecting.lock().await;
        // Collected by the caller this one waited for.
        if let Some(inv) = self.fresh() {
            return inv;
        }
        self.collect(lock).await
    }

    /// Collect now, whatever the age of the latest (after the collection
    /// under way, if any): the background refresh.
    pub async fn refresh(&self, lock: &Lockfile) -> Arc<Inventory> {
        let _collecting = self.collecting.lock().await;
        self.collect(lock).await
    }

    async fn collect(&self, lock: &Lockfile) -> Arc<Inventory> {
        let inv = Arc::new(self.builders.inventory(lock).await);
        for h in inv.unhealthy() {
            tracing::warn!(builder = %h.builder, host = %h.host, health = %h.health, "worker not ok");
        }
        let mut guard = match self.latest.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = Some((Instant::now(), inv.clone()));
        inv
    }
}
