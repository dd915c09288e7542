//! The daemon's scheduled `kiln gc --registry` (`daemon.registry_gc_schedule`):
//! when it is due, no new job starts; once the running ones are done it
//! runs (with the registry's garbage collection after it), so it never
//! races a publication or a push whose blobs are not yet referenced.

use std::str::FromStr;

use chrono::{DateTime, Utc};

use super::DaemonError;
use crate::config::Config;

pub(super) struct RegistryGc {
    schedule: Option<cron::Schedule>,
    next: Option<DateTime<Utc>>,
    /// Due: waiting for the running jobs to end.
    pub(super) pending: bool,
}

impl RegistryGc {
    pub(super) fn new(config: &Config) -> Result<RegistryGc, DaemonError> {
        let s = config.daemon.registry_gc_schedule.trim();
        let schedule = if s.is_empty() {
            None
        } else {
            Some(
                cron::Schedule::from_str(s).map_err(|e| DaemonError::Schedule {
                    field: "daemon.registry_gc_schedule".into(),
                    schedule: s.to_string(),
                    message: e.to_string(),
                })?,
            )
        };
        let next = schedule.as_ref().and_then(|s| s.after(&Utc::now()).next());
        Ok(RegistryGc {
            schedule,
            next,
            pending: false,
        })
    }

    /// When it is next due.
    pub(super) fn next(&self) -> Option<DateTime<Utc>> {
        self.next
    }

    /// Mark it pending when its time has come.
    pub(super) fn fire(&mut self, now: DateTime<Utc>) {
        if self.next.is_some_and(|n| n <= now) {
            self.pending = true;
            self.next = self.schedule.as_ref().and_then(|s| s.after(&now).next());
        }
    }

    /// Run it if it is pending and nothing is running.
    pub(super) async fn run_if_idle(&mut self, config: &Config, idle: bool) {
        if !self.pending || !idle {
            return;
        }
        self.pending = false;
        let cat = match crate::catalogue::load(&config.versions_dir, &config.platforms_dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "registry gc not run: the catalogue does not load");
                return;
            }
        };
        let days = config.registry.retention_days;
        match crate::publish::retention::gc_registry(config, &cat, days, false).await {
            Ok(r) => tracing::info!(
                removed = r.removed.len(),
                waiting = r.waiting.len(),
                kept = r.kept,
                "registry gc done"
            ),
            Err(e) => tracing::error!(error = %e, "registry gc failed"),
        }
    }
}
