//! The daemon loop: rebuild rounds on the cron schedule, on request
//! (`POST /v1/rebuild`), and once at start-up when a killed daemon left a
//! round unfinished. A round runs the whole plan through
//! `builders::run`, which skips every tag whose build key is unchanged, so
//! a round with no input change builds nothing and moves no digest.
//!
//! SIGTERM/SIGINT: no new round starts; a running round finishes (every
//! tag it publishes is published completely or not at all); then exit.

use std::str::FromStr;

use tokio::sync::mpsc;

use super::lock::DaemonLock;
use super::rounds::Rounds;
use crate::builders::run::{self, Options};
use crate::config::Config;
use crate::plan::Filter;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] super::lock::LockError),
    #[error(transparent)]
    State(#[from] super::state::StateError),
    #[error("daemon.schedule = {schedule:?}: {message}")]
    Schedule { schedule: String, message: String },
    #[error(transparent)]
    Catalogue(#[from] crate::catalogue::CatalogueError),
}

/// Why a round starts.
#[derive(Debug, Clone)]
pub enum Trigger {
    Schedule,
    Manual(String),
    Resume,
}

impl Trigger {
    fn name(&self) -> String {
        match self {
            Trigger::Schedule => "schedule".into(),
            Trigger::Manual(who) => format!("manual: {who}"),
            Trigger::Resume => "resume-interrupted".into(),
        }
    }
}

/// Run one round now.
pub async fn round(config: &Config, rounds: &Rounds, trigger: &Trigger) -> Result<(), DaemonError> {
    let id = rounds.start(&trigger.name())?;
    tracing::info!(round = id, trigger = %trigger.name(), "rebuild round starting");
    let result = async {
        let cat = crate::catalogue::load(&config.versions_dir, &config.platforms_dir)
            .map_err(|e| e.to_string())?;
        run::run(
            config,
            &cat,
            &Options {
                filter: Filter::default(),
                dry_run: false,
            },
            &|_| {},
        )
        .await
        .map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(s) => {
            tracing::info!(
                round = id,
                built = s.built,
                unchanged = s.unchanged,
                failed = s.failed,
                "rebuild round done"
            );
            rounds.finish(id, s.built, s.unchanged, s.failed, None)?;
        }
        Err(e) => {
            tracing::warn!(round = id, error = %e, "rebuild round failed");
            rounds.finish(id, 0, 0, 0, Some(&e))?;
        }
    }
    Ok(())
}

/// The scheduler: holds the daemon lock, recovers, then loops until a
/// signal arrives. `manual` carries rebuild requests from the API.
pub async fn scheduler(
    config: Config,
    _lock: DaemonLock,
    mut manual: mpsc::Receiver<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let schedule =
        cron::Schedule::from_str(&config.daemon.schedule).map_err(|e| DaemonError::Schedule {
            schedule: config.daemon.schedule.clone(),
            message: e.to_string(),
        })?;
    let rounds = Rounds::open(&config.database.path)?;
    if rounds.recover()? > 0 {
        round(&config, &rounds, &Trigger::Resume).await?;
    }
    loop {
        let next = schedule.upcoming(chrono::Utc).next();
        let wait = next
            .map(|n| (n - chrono::Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(std::time::Duration::from_secs(3600));
        let trigger = tokio::select! {
            _ = tokio::time::sleep(wait) => Trigger::Schedule,
            Some(who) = manual.recv() => Trigger::Manual(who),
            _ = stop.changed() => return Ok(()),
        };
        if *stop.borrow() {
            return Ok(());
        }
        // The round runs to completion even if a stop arrives meanwhile.
        round(&config, &rounds, &trigger).await?;
        if *stop.borrow() {
            return Ok(());
        }
    }
}
