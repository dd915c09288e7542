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
    /// Disk images: where to put the verified qcow2 (default: the state dir's work/fetch).
    #[arg(long)]
    dest: Option<PathBuf>,
    /// Disk images: also create a copy-on-write overlay for one build step.
    #[arg(long)]
    overlay: bool,
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
    if entry.kind == ArtifactKind::Qcow2 {
        return fetch_qcow2(&config, entry, &args);
    }
    if entry.kind != ArtifactKind::ZfsStream {
        bail!(
            "{} is a {:?}, not a ZFS base dataset or a disk image",
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

/// Worker side for disk images: pull by digest (verified), check the
/// recorded sha256 and `qemu-img check`, optionally make a build overlay.
fn fetch_qcow2(
    config: &Config,
    entry: &kiln::publish::lockfile::Entry,
    args: &Args,
) -> Result<ExitCode> {
    let arch = args.arch.clone().unwrap_or_else(|| "amd64".into());
    let digest = &entry
        .arches
        .get(&arch)
        .with_context(|| format!("{} has no {arch} image", args.name))?
        .digest;
    let dest_dir = args
        .dest
        .clone()
        .unwrap_or_else(|| config.work_dir().join("fetch"));
    std::fs::create_dir_all(&dest_dir)?;
    let reg = Registry::new(&config.registry)?;
    let img = kiln::builders::qemu::img::Img::new(&config.qemu.img);
    let rt = tokio::runtime::Runtime::new()?;
    let (path, overlay) = rt.block_on(async {
        let tmp = dest_dir.join(format!(".{}.partial", digest.trim_start_matches("sha256:")));
        let pulled = artifact::pull(&reg, &entry.repository, digest, &tmp).await?;
        if pulled.artifact_type != artifact::QCOW2_ARTIFACT {
            let _ = std::fs::remove_file(&tmp);
            bail!("{digest} is a {}, not a qcow2 disk", pulled.artifact_type);
        }
        let title = pulled.manifest["annotations"]["org.opencontainers.image.title"]
            .as_str()
            .unwrap_or("disk.qcow2")
            .to_string();
        let want = pulled.config["disk"]["sha256"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let got = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(&tmp)?))
        };
        if got != want {
            let _ = std::fs::remove_file(&tmp);
            bail!("{digest}: disk sha256 {got}, the artifact records {want}");
        }
        if let Err(e) = img.check(&tmp).await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        let path = dest_dir.join(&title);
        std::fs::rename(&tmp, &path)?;
        let overlay = if args.overlay {
            let o = dest_dir.join(format!(
                "{}.overlay.qcow2",
                title.trim_end_matches(".qcow2")
            ));
            let _ = std::fs::remove_file(&o);
            img.overlay(&path, &o).await?;
            Some(o)
        } else {
            None
        };
        anyhow::Ok((path, overlay))
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"name": args.name, "digest": digest, "path": path, "overlay": overlay})
        );
    } else {
        println!(
            "{} ({digest}): verified disk at {}",
            args.name,
            path.display()
        );
        if let Some(o) = overlay {
            println!("overlay for a build step: {}", o.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
