//! One module per subcommand: argument struct and a `run` function that
//! turns library results into output and an exit code.

pub mod build;
pub mod bump;
pub mod catalogue;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod fetch;
pub mod fixtures;
pub mod gc;
pub mod plan;
pub mod release;
pub mod resolve;
pub mod rollback;
pub mod serve;
pub mod status;
pub mod verify;
