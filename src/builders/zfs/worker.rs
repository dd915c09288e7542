//! The worker side: install a published base dataset tree from its send
//! stream, immutably, and point the stable name CI uses at it.
//!
//! 1. the stream's compressed and uncompressed sha256 are checked;
//! 2. it is received under a temporary name (zfs-fuse has no `recv -u`:
//!    children whose mountpoints are busy stay unmounted);
//! 3. children get the worker's mountpoints, and the tree is renamed to its
//!    immutable name in one `zfs rename`;
//! 4. the name obuilder's specs use, `<pool>/base-image/NAME` (e.g.
//!    `macos-homebrew-ocaml-5.5`), is moved to the new tree in obuilder's
//!    layout: a tree whose children are clones of the immutable tree's,
//!    each snapshotted `@snap` (obuilder's fetch lists the children and
//!    clones each `<child>@snap` into the job). The new tree is made in
//!    full under `<pool>/<prefix>/stable-new/`, then two renames swap it
//!    in: the old tree goes to `<pool>/<prefix>/retired/NAME-<time>`, where
//!    it stays as long as a job's clone depends on it, and is destroyed
//!    as soon as nothing does (here or by `kiln gc`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::build::SNAPSHOT;
use super::driver::{Zfs, ZfsError};
use crate::process::Cmd;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error("{path}: {message}")]
    Stream { path: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// Received and renamed into place.
    New { dataset: String },
    /// The immutable tree was already there (same name, same content).
    Present { dataset: String },
}

pub struct Install<'a> {
    pub stream: &'a Path,
    /// sha256 (hex) of the compressed file, and of the raw stream.
    pub sha256: &'a str,
    pub uncompressed_sha256: Option<&'a str>,
    /// `<pool>/<prefix>/base-image/<leaf>`
    pub dataset: &'a str,
    /// `<pool>/<prefix>/base-image/<os>-ocaml-<series>`
    pub stable: &'a str,
    /// child name → worker mountpoint (`home` → /Users/mac1000 …).
    pub mountpoints: Vec<(String, PathBuf)>,
}

async fn sha256_of(path: &Path) -> Result<String, InstallError> {
    let out = Cmd::new("sha256sum")
        .arg(path)
        .timeout(Duration::from_secs(3600))
        .run()
        .await
        .map_err(|e| InstallError::Stream {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    Ok(out
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

/// Shared start of both installs: an image already here only needs the
/// stable name pointed at it (`Some`); otherwise the stream's sha256 must
/// match before anything is received (`None`: go on).
async fn present_or_verified(
    zfs: &Zfs,
    i: &Install<'_>,
) -> Result<Option<Installed>, InstallError> {
    if zfs.exists(&format!("{}@{SNAPSHOT}", i.dataset)).await? {
        point_stable(zfs, i).await?;
        return Ok(Some(Installed::Present {
            dataset: i.dataset.to_string(),
        }));
    }
    let got = sha256_of(i.stream).await?;
    if got != i.sha256 {
        return Err(InstallError::Stream {
            path: i.stream.display().to_string(),
            message: format!("sha256 {got}, expected {}", i.sha256),
        });
    }
    Ok(None)
}

pub async fn install(zfs: &Zfs, i: &Install<'_>) -> Result<Installed, InstallError> {
    let stream_err = |message: String| InstallError::Stream {
        path: i.stream.display().to_string(),
        message,
    };
    if let Some(present) = present_or_verified(zfs, i).await? {
        return Ok(present);
    }
    let raw = i.stream.with_extension("raw");
    Cmd::new("zstd")
        .args(["-q", "-d", "-f", "-o"])
        .arg(&raw)
        .arg(i.stream)
        .timeout(Duration::from_secs(3600))
        .run()
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    let result = async {
        if let Some(u) = i.uncompressed_sha256 {
            let got = sha256_of(&raw).await?;
            if got != u {
                return Err(stream_err(format!(
                    "uncompressed sha256 {got}, expected {u}"
                )));
            }
        }
        let (parent, leaf) = i
            .dataset
            .rsplit_once('/')
            .ok_or_else(|| stream_err(format!("bad dataset name {}", i.dataset)))?;
        let incoming = format!("{parent}/incoming-{leaf}");
        zfs.destroy_recursive(&incoming).await?;
        zfs.create(parent, &[]).await.or_else(|e| match e {
            ZfsError::Process(crate::process::ProcessError::Failed { ref stderr, .. })
                if stderr.contains("exists") =>
            {
                Ok(())
            }
            other => Err(other),
        })?;
        let recv = format!(
            "zfs receive {incoming} < '{}'",
            raw.display().to_string().replace('\'', "'\\''")
        );
        let received = Cmd::new("sh")
            .args(["-c", recv.as_str()])
            .timeout(Duration::from_secs(3600))
            .run()
            .await;
        if let Err(e) = received {
            let _ = zfs.destroy_recursive(&incoming).await;
            return Err(stream_err(format!("zfs receive: {e}")));
        }
        let setup = async {
            for (child, mp) in &i.mountpoints {
                let mp = mp.display().to_string();
                zfs.zfs(&[
                    "set",
                    &format!("mountpoint={mp}"),
                    &format!("{incoming}/{child}"),
                ])
                .await?;
            }
            zfs.rename(&incoming, i.dataset).await?;
            Ok::<_, ZfsError>(())
        };
        if let Err(e) = setup.await {
            let _ = zfs.destroy_recursive(&incoming).await;
            return Err(e.into());
        }
        Ok(())
    }
    .await;
    let _ = tokio::fs::remove_file(&raw).await;
    result?;
    point_stable(zfs, i).await?;
    Ok(Installed::New {
        dataset: i.dataset.to_string(),
    })
}

/// obuilder's snapshot name on the stable tree's children.
pub const OBUILDER_SNAPSHOT: &str = "snap";

/// Point `stable` (`<pool>/base-image/NAME`) at `dataset`, in obuilder's
/// layout, retiring the tree it pointed at before.
async fn point_stable(zfs: &Zfs, i: &Install<'_>) -> Result<(), InstallError> {
    if points_at(zfs, i).await? {
        return Ok(());
    }
    let name = i.stable.rsplit('/').next().unwrap_or(i.stable);
    let own = format!("{}/{}", zfs.host.pool, zfs.host.prefix);
    let new = format!("{own}/stable-new/{name}");
    zfs.destroy_recursive(&new).await?;
    zfs.create(&new, &[("mountpoint", "none")]).await?;
    for (child, _) in &i.mountpoints {
        zfs.zfs(&[
            "clone",
            "-o",
            "mountpoint=none",
            &format!("{}/{child}@{SNAPSHOT}", i.dataset),
            &format!("{new}/{child}"),
        ])
        .await?;
    }
    zfs.snapshot_recursive(&format!("{new}@{OBUILDER_SNAPSHOT}"))
        .await?;
    if let Some((parent, _)) = i.stable.rsplit_once('/')
        && !zfs.exists(parent).await?
    {
        zfs.create(parent, &[]).await?;
    }
    let retired_base = format!("{own}/retired");
    if !zfs.exists(&retired_base).await? {
        zfs.create(&retired_base, &[("mountpoint", "none")]).await?;
    }
    if zfs.exists(i.stable).await? {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.9fZ");
        zfs.rename(i.stable, &format!("{retired_base}/{name}-{stamp}"))
            .await?;
    }
    zfs.rename(&new, i.stable).await?;
    remove_unused_retired(zfs, false).await?;
    Ok(())
}

/// Does `stable` already point at `dataset`, every child with its `@snap`?
async fn points_at(zfs: &Zfs, i: &Install<'_>) -> Result<bool, ZfsError> {
    if i.mountpoints.is_empty() || !zfs.exists(i.stable).await? {
        return Ok(false);
    }
    for (child, _) in &i.mountpoints {
        let ours = format!("{}/{child}", i.stable);
        let snap = format!("{ours}@{OBUILDER_SNAPSHOT}");
        if !zfs.exists(&snap).await?
            || zfs.get(&ours, "origin").await? != format!("{}/{child}@{SNAPSHOT}", i.dataset)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A retired stable tree and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    pub dataset: String,
    /// Jobs' clones that still depend on it (it is kept while any do).
    pub clones: Vec<String>,
    pub removed: bool,
}

/// Destroy the retired stable trees nothing is cloned from any more (all
/// of them listed; with `dry_run`, none destroyed).
pub async fn remove_unused_retired(zfs: &Zfs, dry_run: bool) -> Result<Vec<Retired>, ZfsError> {
    let base = format!("{}/{}/retired", zfs.host.pool, zfs.host.prefix);
    if !zfs.exists(&base).await? {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for (dataset, _) in zfs.list(&base).await? {
        let top = dataset
            .strip_prefix(&format!("{base}/"))
            .is_some_and(|leaf| !leaf.contains('/'));
        if !top {
            continue;
        }
        let clones = zfs.clones_of(&dataset).await?;
        let removed = clones.is_empty() && !dry_run;
        if removed {
            zfs.destroy_recursive(&dataset).await?;
        }
        out.push(Retired {
            dataset,
            clones,
            removed,
        });
    }
    Ok(out)
}

/// Does this worker hold exactly the snapshots an incremental stream was
/// made from (same guid for every child's `@kiln`)?
pub async fn has_base(
    zfs: &Zfs,
    from: &str,
    guids: &BTreeMap<String, String>,
) -> Result<bool, ZfsError> {
    if guids.is_empty() {
        return Ok(false);
    }
    for (child, guid) in guids {
        let snap = format!("{from}/{child}@{SNAPSHOT}");
        if !zfs.exists(&snap).await? || zfs.get(&snap, "guid").await? != *guid {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Install an incremental stream (a zstd tar of per-child `zfs send -i`
/// clone streams) on top of an earlier image this worker holds: each child
/// is received as a clone of the earlier image's child, under a temporary
/// name, then the tree is renamed into its immutable name and the stable
/// name pointed at it, as [`install`] does. `uncompressed_sha256` is not
/// used (the tar has no single raw stream).
pub async fn install_incremental(zfs: &Zfs, i: &Install<'_>) -> Result<Installed, InstallError> {
    let stream_err = |message: String| InstallError::Stream {
        path: i.stream.display().to_string(),
        message,
    };
    if let Some(present) = present_or_verified(zfs, i).await? {
        return Ok(present);
    }
    let unpacked = i.stream.with_extension("d");
    let _ = tokio::fs::remove_dir_all(&unpacked).await;
    tokio::fs::create_dir_all(&unpacked)
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    let result = async {
        let unpack = format!(
            "set -o pipefail; zstd -q -d -c '{}' | tar -C '{}' -xf -",
            i.stream.display().to_string().replace('\'', "'\\''"),
            unpacked.display().to_string().replace('\'', "'\\''")
        );
        Cmd::new("bash")
            .args(["-c", unpack.as_str()])
            .timeout(Duration::from_secs(3600))
            .run()
            .await
            .map_err(|e| stream_err(format!("unpacking: {e}")))?;
        let (parent, leaf) = i
            .dataset
            .rsplit_once('/')
            .ok_or_else(|| stream_err(format!("bad dataset name {}", i.dataset)))?;
        let incoming = format!("{parent}/incoming-{leaf}");
        zfs.destroy_recursive(&incoming).await?;
        zfs.create(&incoming, &[("mountpoint", "none")]).await?;
        let received = async {
            for (child, mp) in &i.mountpoints {
                let file = unpacked.join(format!("{child}.zfs"));
                let recv = format!(
                    "zfs receive {incoming}/{child} < '{}'",
                    file.display().to_string().replace('\'', "'\\''")
                );
                Cmd::new("sh")
                    .args(["-c", recv.as_str()])
                    .timeout(Duration::from_secs(3600))
                    .run()
                    .await
                    .map_err(|e| stream_err(format!("zfs receive {child}: {e}")))?;
                let mp = mp.display().to_string();
                zfs.zfs(&[
                    "set",
                    &format!("mountpoint={mp}"),
                    &format!("{incoming}/{child}"),
                ])
                .await?;
            }
            zfs.zfs(&["snapshot", &format!("{incoming}@{SNAPSHOT}")])
                .await?;
            zfs.rename(&incoming, i.dataset).await?;
            Ok::<_, InstallError>(())
        }
        .await;
        if received.is_err() {
            let _ = zfs.destroy_recursive(&incoming).await;
        }
        received
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&unpacked).await;
    result?;
    point_stable(zfs, i).await?;
    Ok(Installed::New {
        dataset: i.dataset.to_string(),
    })
}
