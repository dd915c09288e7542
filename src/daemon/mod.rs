//! The rebuild daemon: triggers (schedules, pollers, API requests) that
//! open rounds and queue jobs in the durable queue (`state::queue`), the
//! scheduler that runs them through the pipeline, and the
//! single-instance lock.

pub mod handoff;
mod job;
pub mod lock;
mod registry_gc;
pub mod run;
pub mod triggers;

pub use run::scheduler;
pub use triggers::{Trigger, catalogue_fingerprint};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{field} = {schedule:?}: {message}")]
    Schedule {
        field: String,
        schedule: String,
        message: String,
    },
    #[error(transparent)]
    Catalogue(#[from] crate::catalogue::CatalogueError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
}
