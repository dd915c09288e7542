use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use kiln::builders::zfs::{driver::Zfs, gc};
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// Keep unreferenced images younger than this many days (default: zfs.retention_days).
    #[arg(long)]
    retention_days: Option<u64>,
    /// The pool to clean (default: the first configured ZFS host's).
    #[arg(long)]
    pool: Option<String>,
    /// Dataset prefix inside the pool (default: the ZFS host's).
    #[arg(long)]
    prefix: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

/// Remove base images that the lockfile does not reference, nothing is
/// cloned from, and that are past the retention period.
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let lock = kiln::publish::lockfile::Lockfile::load(&config.lockfile_path())?;
    let host = super::zfs_host(&config, args.pool, args.prefix)?;
    let days = args.retention_days.unwrap_or(config.zfs.retention_days);
    let rt = tokio::runtime::Runtime::new()?;
    let decisions = rt.block_on(gc::gc(
        &Zfs::new(&host),
        &lock,
        Duration::from_secs(days * 86_400),
        args.dry_run,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decisions)?);
    } else if decisions.is_empty() {
        println!(
            "no base images under {}/{}/base-image",
            host.pool, host.prefix
        );
    } else {
        for d in &decisions {
            println!("{:<13} {}  ({})", d.action, d.dataset, d.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}
