//! The rebuild daemon: durable job queue, schedules, triggers.
