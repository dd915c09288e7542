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
    let host = super::zfs_host(&config, args.pool, args.prefix)?;
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
        let (manifest, config) = artifact::inspect(&reg, &entry.repository, digest).await?;
        if manifest["artifactType"].as_str() != Some(artifact::ZFS_ARTIFACT) {
            bail!(
                "{digest} is a {}, not a ZFS stream",
                manifest["artifactType"]
            );
        }
        let layout = &config["layout"];
        let leaf = layout["dataset"]
            .as_str()
            .and_then(|d| d.rsplit('/').next())
            .context("layout names no dataset")?
            .to_string();
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
        if dataset_exists(&zfs, &dataset).await? {
            // Already here: only the stable name may need to move.
            let installed = worker::install(
                &zfs,
                &worker::Install {
                    stream: &stream,
                    sha256: "",
                    uncompressed_sha256: None,
                    dataset: &dataset,
                    stable: &stable,
                    mountpoints,
                },
            )
            .await?;
            return anyhow::Ok((installed, dataset, stable, "present".to_string(), 0));
        }
        // An incremental stream from an image this worker holds (same
        // snapshot guids) is fetched instead of the full stream.
        for inc in config["incremental"].as_array().into_iter().flatten() {
            let (Some(from), Some(inc_digest)) = (inc["from"].as_str(), inc["digest"].as_str())
            else {
                continue;
            };
            let guids: std::collections::BTreeMap<String, String> =
                serde_json::from_value(inc["from_guids"].clone()).unwrap_or_default();
            if !worker::has_base(&zfs, &format!("{base}/{from}"), &guids).await? {
                continue;
            }
            let file = work.join(format!(
                "{}.incremental.tar.zst",
                inc_digest.trim_start_matches("sha256:")
            ));
            let pulled = artifact::pull(&reg, &entry.repository, inc_digest, &file).await;
            let installed = async {
                let pulled = pulled?;
                if pulled.artifact_type != artifact::ZFS_INCREMENTAL_ARTIFACT {
                    bail!(
                        "{inc_digest} is a {}, not an incremental ZFS stream",
                        pulled.artifact_type
                    );
                }
                let layer = pulled.manifest["layers"][0]["digest"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches("sha256:")
                    .to_string();
                let installed = worker::install_incremental(
                    &zfs,
                    &worker::Install {
                        stream: &file,
                        sha256: &layer,
                        uncompressed_sha256: None,
                        dataset: &dataset,
                        stable: &stable,
                        mountpoints: mountpoints.clone(),
                    },
                )
                .await?;
                anyhow::Ok((installed, pulled.size))
            }
            .await;
            let _ = std::fs::remove_file(&file);
            let (installed, bytes) = installed?;
            return anyhow::Ok((
                installed,
                dataset,
                stable,
                format!("incremental from {from}"),
                bytes,
            ));
        }
        let pulled = artifact::pull(&reg, &entry.repository, digest, &stream).await?;
        let layer_digest = pulled.manifest["layers"][0]["digest"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("sha256:")
            .to_string();
        let uncompressed = pulled.manifest["annotations"]["org.ocaml.kiln.uncompressed-sha256"]
            .as_str()
            .map(str::to_string);
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
        anyhow::Ok((installed, dataset, stable, "full".to_string(), pulled.size))
    });
    let _ = std::fs::remove_file(&stream);
    let (installed, dataset, stable, via, bytes) = result?;
    let state = match installed {
        worker::Installed::New { .. } => "installed",
        worker::Installed::Present { .. } => "already present",
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"name": args.name, "digest": digest, "dataset": dataset, "stable": stable, "state": state, "via": via, "bytes": bytes})
        );
    } else {
        println!(
            "{} ({digest}): {state} as {dataset} ({via}, {bytes} bytes fetched); {stable} points at it",
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

async fn dataset_exists(zfs: &Zfs, dataset: &str) -> Result<bool> {
    Ok(zfs
        .exists(&format!(
            "{dataset}@{}",
            kiln::builders::zfs::build::SNAPSHOT
        ))
        .await?)
}
