//! One module per subcommand: argument struct and a `run` function that
//! turns library results into output and an exit code.

pub mod build;
pub mod bump;
pub mod catalogue;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod fetch;
pub mod filter;
pub mod fixtures;
pub mod gc;
pub mod lockfile;
pub mod plan;
pub mod release;
pub mod resolve;
pub mod rollback;
pub mod serve;
pub mod sources;
pub mod status;
pub mod verify;

/// Set by `main` when logs are JSON (`--log-format json`).
pub static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line for the operator of a long-running command: plain on stderr, or,
/// when logs are JSON, a log event like every other line.
pub fn say(message: &str) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// The ZFS host a worker-side command acts on: the first configured one,
/// with `--pool` and `--prefix` applied.
pub fn zfs_host(
    config: &kiln::config::Config,
    pool: Option<String>,
    prefix: Option<String>,
) -> anyhow::Result<kiln::config::ZfsHost> {
    use anyhow::Context;
    let mut host = config
        .zfs
        .hosts
        .first()
        .cloned()
        .context("no zfs host configured")?;
    if let Some(p) = pool {
        host.pool = p;
    }
    if let Some(p) = prefix {
        host.prefix = p;
    }
    Ok(host)
}
