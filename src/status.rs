//! What is required and what is happening: the catalogue's requirements
//! (one per moving tag, with the arches no configured builder can build)
//! and the per-arch build states, as the digest API, `kiln status`, `kiln
//! resolve` and the daemon see them.

use crate::builders::Builders;
use crate::catalogue::CatalogueError;
use crate::config::Config;
use crate::model::{Jobs, Requirement};
use crate::plan::{self, Filter, PlanError};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Requirements from the catalogue and platform policy, and job states
/// from the state store.
pub fn requirements(config: &Config) -> Result<(Vec<Requirement>, Jobs), StatusError> {
    if !config.versions_dir.exists() {
        return Ok((Vec::new(), Jobs::new()));
    }
    let cat = crate::catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let targets = plan::expand(&cat, &Filter::default())?;
    let builders = Builders::new(config);
    let reqs = plan::requirements(&targets, &config.registry.namespace, |t| {
        builders.can_build(t)
    });
    let jobs = if config.database.path.exists() {
        crate::state::StateStore::open(&config.database.path)?.jobs()?
    } else {
        Jobs::new()
    };
    Ok((reqs, jobs))
}
