use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use kiln::builders::zfs::{driver::Zfs, worker};
use kiln::config::{Config, Sources};
use kiln::publish::lockfile::{ArtifactKind, Lockfile};
use kiln::registry::{Registry, artifact};

#[derive(clap::Args)]
pub struct Args {
    /// The published tag, `repository:tag` (e.g. kiln/macos-base:macos-homebrew-ocaml-5.5).
    name: String,
    /// Which arch to fetch (default: the ZFS host's).
    #[arg(long)]
    arch: Option<String>,
    /// Install into this pool (default: the first configured ZFS host's).
    #[arg(long)]
    pool: Option<String>,
    /// Dataset prefix inside the pool (default: the ZFS host's).
    #[arg(long)]
    prefix: Option<String>,
    /// Mount the children under DIR/<dataset>/<child> instead of the paths the build used.
    #[arg(long)]
    mount_root: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// Worker side: pull a published base dataset by digest, verify it,
/// receive it under its immutable name and point the stable name at it.
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let lock = Lockfile::load(&config.lockfile_path())?;
    let (repo, tag) = args
        .name
        .rsplit_once(':')
        .context("expected repository:tag")?;
    let entry = lock.resolve(repo, tag).with_context(|| {
        format!(
            "{} is not in the lockfile {}",
            args.name,
            config.lockfile_path().display()
        )
    })?;
    if entry.kind != ArtifactKind::ZfsStream {
        bail!(
            "{} is a {:?}, not a ZFS base dataset",
            args.name,
            entry.kind
        );
    }
    let mut host = config
        .zfs
        .hosts
        .first()
        .cloned()
        .context("no zfs host configured")?;
    if let Some(p) = args.pool {
        host.pool = p;
    }
    if let Some(p) = args.prefix {
        host.prefix = p;
    }
    let arch = args.arch.unwrap_or_else(|| host.arch.clone());
    let digest = &entry
        .arches
        .get(&arch)
        .with_context(|| {
            format!(
                "{} has no {arch} image; it has {:?}",
                args.name,
                entry.arches.keys().collect::<Vec<_>>()
            )
        })?
        .digest;
    let reg = Registry::new(&config.registry)?;
    let work = config.work_dir().join("fetch");
    std::fs::create_dir_all(&work)?;
    let stream = work.join(format!("{}.zfs.zst", digest.trim_start_matches("sha256:")));
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let pulled = artifact::pull(&reg, &entry.repository, digest, &stream).await?;
        if pulled.artifact_type != artifact::ZFS_ARTIFACT {
            bail!("{digest} is a {}, not a ZFS stream", pulled.artifact_type);
        }
        let layout = &pulled.config["layout"];
        let leaf = layout["dataset"]
            .as_str()
            .and_then(|d| d.rsplit('/').next())
            .context("layout names no dataset")?
            .to_string();
        let layer_digest = pulled.manifest["layers"][0]["digest"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("sha256:")
            .to_string();
        let uncompressed = pulled.manifest["annotations"]["org.ocaml.kiln.uncompressed-sha256"]
            .as_str()
            .map(str::to_string);
        let mountpoints: Vec<(String, PathBuf)> = layout["children"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let name = c["name"].as_str()?.to_string();
                let mp = match &args.mount_root {
                    Some(root) => root.join(&leaf).join(&name),
                    None => PathBuf::from(c["mountpoint"].as_str()?),
                };
                Some((name, mp))
            })
            .collect();
        let base = format!("{}/{}/base-image", host.pool, host.prefix);
        let dataset = format!("{base}/{leaf}");
        let stable = format!("{base}/{}", entry.tag);
        let zfs = Zfs::new(&host);
        let installed = worker::install(
            &zfs,
            &worker::Install {
                stream: &stream,
                sha256: &layer_digest,
                uncompressed_sha256: uncompressed.as_deref(),
                dataset: &dataset,
                stable: &stable,
                mountpoints,
            },
        )
        .await?;
        anyhow::Ok((installed, dataset, stable))
    });
    let _ = std::fs::remove_file(&stream);
    let (installed, dataset, stable) = result?;
    let state = match installed {
        worker::Installed::New { .. } => "installed",
        worker::Installed::Present { .. } => "already present",
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"name": args.name, "digest": digest, "dataset": dataset, "stable": stable, "state": state})
        );
    } else {
        println!(
            "{} ({digest}): {state} as {dataset}; {stable} points at it",
            args.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
