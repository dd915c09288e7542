use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use kiln::builders::gc::{self, Scope};
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// Clean the registry instead of a ZFS pool: delete the manifests and
    /// immutable tags nothing references (registry.retention_days).
    #[arg(long, conflicts_with_all = ["pool", "prefix"])]
    registry: bool,
    /// Keep unreferenced images and disks younger than this many days
    /// (default: zfs.retention_days, or registry.retention_days with
    /// --registry).
    #[arg(long)]
    retention_days: Option<u64>,
    /// Clean only this pool, on the first configured ZFS host (default:
    /// every ZFS host's pool, and the kept QEMU disks).
    #[arg(long)]
    pool: Option<String>,
    /// With --pool: the dataset prefix inside it (default: the first ZFS
    /// host's).
    #[arg(long)]
    prefix: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

/// Remove base images and kept disks that the lockfile does not
/// reference, nothing is cloned from, and that are past the retention
/// period: on every ZFS host and this machine's QEMU disks, or (with
/// `--pool`/`--prefix`) on one pool. Non-zero when a host could not be
/// cleaned (the others are cleaned all the same).
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    if args.registry {
        return registry(&config, &args);
    }
    let lock = kiln::publish::lockfile::Lockfile::load(&config.lockfile_path())?;
    let one = if args.pool.is_some() || args.prefix.is_some() {
        Some(super::zfs_host(
            &config,
            args.pool.clone(),
            args.prefix.clone(),
        )?)
    } else {
        None
    };
    let scope = match &one {
        Some(h) => Scope {
            zfs_hosts: std::slice::from_ref(h),
            qemu_state_dir: None,
        },
        None => Scope {
            zfs_hosts: &config.zfs.hosts,
            qemu_state_dir: Some(&config.state_dir),
        },
    };
    let days = args.retention_days.unwrap_or(config.zfs.retention_days);
    let rt = tokio::runtime::Runtime::new()?;
    let decisions = rt.block_on(gc::gc(
        &scope,
        &lock,
        Duration::from_secs(days * 86_400),
        args.dry_run,
    ));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decisions)?);
    } else if decisions.is_empty() {
        println!("no base images or kept disks on any host");
    } else {
        for d in &decisions {
            println!(
                "{:<13} {}/{}  {}  ({})",
                d.action, d.builder, d.host, d.item, d.reason
            );
        }
    }
    let failed = decisions.iter().filter(|d| d.failed()).count();
    if failed > 0 {
        eprintln!("kiln gc: {failed} host(s) could not be cleaned (see `failed` above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--registry`: gc in the registry, then its garbage collection.
fn registry(config: &Config, args: &Args) -> Result<ExitCode> {
    let cat = kiln::catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let days = args
        .retention_days
        .unwrap_or(config.registry.retention_days);
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(kiln::publish::retention::gc_registry(
        config,
        &cat,
        days,
        args.dry_run,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for r in &report.removed {
        println!(
            "{verb} {}@{} (tags: {}; {} children) — {}",
            r.repository,
            r.digest,
            r.tags.join(", "),
            r.children.len(),
            r.why
        );
    }
    for w in &report.waiting {
        println!("waiting {w}: unreferenced for less than {days} days");
    }
    println!(
        "{} repositories: {} manifests referenced and kept, {} unreferenced {verb}, {} waiting",
        report.repositories.len(),
        report.kept,
        report.removed.len(),
        report.waiting.len()
    );
    Ok(ExitCode::SUCCESS)
}
