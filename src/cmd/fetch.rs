use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use kiln::builders::qemu::{
    fetch::{fetch_disk, place_for_obuilder},
    img::Img,
};
use kiln::builders::zfs::fetch::{FetchTarget, fetch};
use kiln::builders::zfs::worker::Installed;
use kiln::catalogue::Arch;
use kiln::config::{Config, Sources};
use kiln::publish::lockfile::{ArtifactKind, Entry, Lockfile};
use kiln::registry::Registry;

#[derive(clap::Args)]
pub struct Args {
    /// The published tag, `repository:tag` (e.g. kiln/macos-base:macos-homebrew-ocaml-5.5).
    name: String,
    /// Which arch to fetch (default: the ZFS host's).
    #[arg(long)]
    arch: Option<Arch>,
    /// Install into this pool (default: the first configured ZFS host's).
    #[arg(long)]
    pool: Option<String>,
    /// Dataset prefix inside the pool (default: the ZFS host's).
    #[arg(long)]
    prefix: Option<String>,
    /// Mount the children under DIR/<dataset>/<child> instead of the paths the build used.
    #[arg(long)]
    mount_root: Option<PathBuf>,
    /// Disk images: where to put the verified qcow2 (default: the state dir's work/fetch).
    #[arg(long)]
    dest: Option<PathBuf>,
    /// Disk images: also create a copy-on-write overlay for one build step.
    #[arg(long)]
    overlay: bool,
    /// Disk images: install into obuilder's QEMU store STORE — the disk as
    /// base-image/<tag>.qcow2, its download-cache disk as the initial
    /// cache/c-<cache>/rootfs/image.qcow2 (kept when that cache exists).
    #[arg(long, value_name = "STORE")]
    obuilder_store: Option<PathBuf>,
    /// The obuilder cache the download-cache disk seeds.
    #[arg(long, default_value = "opam-archives")]
    cache_name: String,
    /// Resolve the name through this digest API (`http://kiln:8080`)
    /// instead of the local lockfile: a worker needs no checkout.
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    #[arg(long)]
    json: bool,
}

/// The published lockfile as the digest API serves it (`GET /v1/lockfile`).
fn lockfile_from_api(api: &str) -> Result<Lockfile> {
    let url = format!("{}/v1/lockfile", api.trim_end_matches('/'));
    let rt = tokio::runtime::Runtime::new()?;
    let text = rt
        .block_on(async {
            let r = reqwest::get(&url).await?.error_for_status()?;
            r.text().await
        })
        .with_context(|| format!("GET {url}"))?;
    Ok(Lockfile::parse(std::path::Path::new(&url), &text)?)
}

/// Worker side: pull a published base dataset by digest, verify it,
/// receive it under its immutable name and point the stable name at it.
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let (lock, from) = match &args.api {
        Some(api) => (lockfile_from_api(api)?, format!("the digest API at {api}")),
        None => (
            Lockfile::load(&config.lockfile_path())?,
            format!("the lockfile {}", config.lockfile_path().display()),
        ),
    };
    let (repo, tag) = args
        .name
        .rsplit_once(':')
        .context("expected repository:tag")?;
    let entry = lock
        .resolve(repo, tag)
        .with_context(|| format!("{} is not published in {from}", args.name))?;
    match entry.kind {
        ArtifactKind::Qcow2 => fetch_qcow2(&config, entry, &args),
        ArtifactKind::ZfsStream => fetch_zfs(&config, entry, args),
        ArtifactKind::Image => bail!(
            "{} is a container image, not a ZFS base dataset or a disk image: pull it by digest",
            args.name
        ),
    }
}

/// The digest of `arch` in `entry`, or an error naming what it has.
fn arch_digest<'a>(entry: &'a Entry, name: &str, arch: Arch) -> Result<&'a str> {
    entry
        .arches
        .get(&arch)
        .map(|a| a.digest.as_str())
        .with_context(|| {
            let has: Vec<&str> = entry.arches.keys().map(|a| a.as_str()).collect();
            format!("{name} has no {arch} image; it has {}", has.join(", "))
        })
}

fn fetch_zfs(config: &Config, entry: &Entry, args: Args) -> Result<ExitCode> {
    let mut host = super::zfs_host(config, args.pool, args.prefix)?;
    // `kiln fetch` runs on the worker it installs on: its pool is local,
    // whatever host the configuration builds on.
    host.ssh.clear();
    host.sudo = false;
    let arch = match args.arch {
        Some(a) => a,
        None => host
            .arch
            .parse()
            .with_context(|| format!("zfs host {}: arch", host.name))?,
    };
    let digest = arch_digest(entry, &args.name, arch)?;
    let reg = Registry::new(&config.registry)?;
    let work = config.work_dir().join("fetch");
    std::fs::create_dir_all(&work)?;
    // NAME in obuilder's `<pool>/base-image/NAME`: the tag asked for.
    let name = args
        .name
        .rsplit_once(':')
        .map_or(args.name.as_str(), |(_, t)| t);
    let to = FetchTarget {
        host: &host,
        name,
        mount_root: args.mount_root.as_deref(),
        work: &work,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let f = rt.block_on(fetch(&reg, entry, digest, &to))?;
    let state = match f.installed {
        Installed::New { .. } => "installed",
        Installed::Present { .. } => "already present",
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"name": args.name, "digest": digest, "dataset": f.dataset, "stable": f.stable, "state": state, "via": f.via, "bytes": f.bytes})
        );
    } else {
        println!(
            "{} ({digest}): {state} as {} ({}, {} bytes fetched); {} points at it",
            args.name, f.dataset, f.via, f.bytes, f.stable
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn fetch_qcow2(config: &Config, entry: &Entry, args: &Args) -> Result<ExitCode> {
    let digest = arch_digest(entry, &args.name, args.arch.unwrap_or(Arch::Amd64))?;
    // Into the store itself when it is obuilder's: the moves are renames.
    let dest_dir = match (&args.dest, &args.obuilder_store) {
        (Some(d), _) => d.clone(),
        (None, Some(store)) => store.join("base-image"),
        (None, None) => config.work_dir().join("fetch"),
    };
    let reg = Registry::new(&config.registry)?;
    let img = Img::new(&config.qemu.img);
    let rt = tokio::runtime::Runtime::new()?;
    let disk = rt.block_on(fetch_disk(
        &reg,
        &img,
        entry,
        digest,
        &dest_dir,
        args.overlay && args.obuilder_store.is_none(),
    ))?;
    if let Some(store) = &args.obuilder_store {
        let tag = args.name.rsplit(':').next().unwrap_or(&args.name);
        let placed = place_for_obuilder(&disk, store, tag, &args.cache_name)?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"name": args.name, "digest": digest, "base_image": placed.base_image,
                    "cache": placed.cache, "cache_kept": placed.cache_kept})
            );
        } else {
            println!(
                "{} ({digest}): verified disk at {}",
                args.name,
                placed.base_image.display()
            );
            if let Some(c) = &placed.cache {
                let how = if placed.cache_kept {
                    "kept (in use)"
                } else {
                    "seeded"
                };
                println!("download cache {}: {how}", c.display());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"name": args.name, "digest": digest, "path": disk.path, "cache": disk.cache, "overlay": disk.overlay})
        );
    } else {
        println!(
            "{} ({digest}): verified disk at {}",
            args.name,
            disk.path.display()
        );
        if let Some(o) = disk.overlay {
            println!("overlay for a build step: {}", o.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
