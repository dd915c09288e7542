//! What is required and what is happening: the catalogue's requirements
//! (one per moving tag) and the daemon's job states, as the digest API,
//! `kiln status` and `kiln resolve` see them.

use crate::api::gate::{Jobs, Requirement};
use crate::catalogue::{BuilderKind, CatalogueError};
use crate::config::Config;
use crate::plan::{self, Filter, PlanError, Target};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] crate::daemon::state::StateError),
}

/// Can any configured builder build this target?
pub fn can_build(config: &Config, t: &Target) -> bool {
    match t.builder {
        BuilderKind::Docker => config
            .docker
            .hosts
            .iter()
            .any(|h| h.os == t.platform && (h.arch == t.arch || h.emulate.contains(&t.arch))),
        BuilderKind::Zfs => config
            .zfs
            .hosts
            .iter()
            .any(|h| h.platforms.contains(&t.platform) && h.arch == t.arch),
        BuilderKind::Qemu => {
            t.arch == "amd64" && crate::process::which(&config.qemu.system).is_some()
        }
    }
}

/// Requirements from the catalogue and platform policy, and job states
/// from the daemon's queue.
pub fn requirements(config: &Config) -> Result<(Vec<Requirement>, Jobs), StatusError> {
    if !config.versions_dir.exists() {
        return Ok((Vec::new(), Jobs::new()));
    }
    let cat = crate::catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let targets = plan::expand(&cat, &Filter::default())?;
    let reqs = plan::requirements(&targets, &config.registry.namespace, |t| {
        can_build(config, t)
    });
    let jobs = if config.database.path.exists() {
        crate::daemon::state::StateStore::open(&config.database.path)?.jobs()?
    } else {
        Jobs::new()
    };
    Ok((reqs, jobs))
}
