//! The rebuild daemon: schedules, rebuild rounds, the single-instance lock,
//! and the per-target build states the API reports.

pub mod lock;
pub mod rounds;
pub mod run;
pub mod state;
