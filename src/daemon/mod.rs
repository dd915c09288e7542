//! The rebuild daemon: durable job queue, schedules, triggers, and the
//! per-target build states the API reports.

pub mod state;
