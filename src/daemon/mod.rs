//! The rebuild daemon: triggers (schedules, pollers, API requests), the
//! durable job queue, rounds, the single-instance lock, and the per-target
//! build states the API reports.

pub mod lock;
pub mod queue;
pub mod rounds;
pub mod run;
pub mod state;
