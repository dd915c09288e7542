//! Incremental streams without rebuilding in place: the `zfs send -i`
//! streams that turn an earlier image of the same series on the build host
//! into the tree just built. The new tree was built from scratch, so it
//! shares no blocks with the earlier one: on the host, its content is laid
//! over a scratch clone of the earlier image with `rsync --inplace`, which
//! rewrites only what differs, and each child's stream is sent from the
//! clone (a clone stream: a worker receives it as a clone of its own copy
//! of the earlier image). The streams come back over the build's
//! connection into a zstd tar in Kiln's scratch directory (they are small).
//! The scratch clone, its mount directory on the host and every local file
//! are removed, whatever happens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::build::{OWNER_PROPERTY, SNAPSHOT, ZfsBuildError, ZfsSpec};
use super::driver::{Zfs, ZfsError};
use super::host::shell_quote;
use crate::process::Cmd;
use crate::registry::sha256_file;

/// An incremental stream from an earlier image of the same series.
#[derive(Debug, Clone)]
pub struct Incremental {
    /// zstd-compressed tar of one `zfs send -i` stream per child
    /// (`<child>.zfs`).
    pub stream: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// The earlier image's leaf name, and the guid of each of its
    /// children's `@kiln` snapshot: a worker applies the stream only on
    /// exactly those snapshots.
    pub from: String,
    pub from_guids: BTreeMap<String, String>,
}

pub async fn incremental(
    zfs: &Zfs,
    spec: &ZfsSpec,
    previous: &str,
) -> Result<Incremental, ZfsBuildError> {
    let leaf = spec.dataset.rsplit('/').next().unwrap_or("dataset");
    let delta = format!("{}-delta", spec.dataset);
    let work = spec.out_dir.join(format!("{leaf}.delta"));
    let io = |message: String| ZfsBuildError::Io {
        target: spec.target.clone(),
        message,
    };
    let mnt = zfs
        .on
        .cmd("mktemp", &["-d", "/tmp/kiln-delta.XXXXXX"])
        .timeout(Duration::from_secs(60))
        .run()
        .await
        .map_err(|e| io(e.to_string()))?
        .stdout
        .trim()
        .to_string();
    let result = incremental_inner(zfs, spec, previous, &delta, &work, &mnt).await;
    let _ = zfs.destroy_recursive(&delta).await;
    let _ = zfs.on.cmd("rm", &["-rf", &mnt]).run().await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(incremental_path(spec)).await;
    }
    result
}

fn incremental_path(spec: &ZfsSpec) -> PathBuf {
    let name = spec.dataset.rsplit('/').next().unwrap_or("dataset");
    spec.out_dir.join(format!("{name}.incremental.tar.zst"))
}

async fn incremental_inner(
    zfs: &Zfs,
    spec: &ZfsSpec,
    previous: &str,
    delta: &str,
    work: &Path,
    mnt: &str,
) -> Result<Incremental, ZfsBuildError> {
    let io = |message: String| ZfsBuildError::Io {
        target: spec.target.clone(),
        message,
    };
    zfs.destroy_recursive(delta).await?;
    let _ = tokio::fs::remove_dir_all(work).await;
    let streams = work.join("streams");
    tokio::fs::create_dir_all(&streams)
        .await
        .map_err(|e| io(format!("{}: {e}", streams.display())))?;
    zfs.create(
        delta,
        &[
            ("mountpoint", "none"),
            (OWNER_PROPERTY, &crate::process::owner()),
        ],
    )
    .await?;
    let mut from_guids = BTreeMap::new();
    for c in &spec.children {
        let origin = format!("{previous}/{}@{SNAPSHOT}", c.name);
        from_guids.insert(c.name.clone(), zfs.get(&origin, "guid").await?);
        let clone = format!("{delta}/{}", c.name);
        let at = format!("{mnt}/{}", c.name);
        zfs.zfs(&["clone", "-o", &format!("mountpoint={at}"), &origin, &clone])
            .await?;
        // Only what differs is written: the clone keeps sharing the rest.
        let src = format!("{}/", c.mountpoint.display());
        let dst = format!("{at}/");
        zfs.on
            .cmd(
                "rsync",
                &[
                    "-a",
                    "-H",
                    "--delete",
                    "--inplace",
                    "--no-whole-file",
                    "--checksum",
                    &src,
                    &dst,
                ],
            )
            .timeout(Duration::from_secs(3600))
            .run()
            .await
            .map_err(|e| io(format!("rsync into {clone} on {}: {e}", zfs.host.name)))?;
        zfs.zfs(&["snapshot", &format!("{clone}@{SNAPSHOT}")])
            .await?;
        let file = streams.join(format!("{}.zfs", c.name));
        let sent = zfs
            .on
            .cmd(
                "zfs",
                &["send", "-i", &origin, &format!("{clone}@{SNAPSHOT}")],
            )
            .timeout(Duration::from_secs(3600));
        to_file(sent, &file)
            .await
            .map_err(|e| io(format!("zfs send -i {origin}: {e}")))?;
        // Unmount before the clone is destroyed.
        let _ = zfs.zfs(&["umount", &clone]).await;
    }
    let out = incremental_path(spec);
    let pack = format!(
        "set -o pipefail; tar -C {} -cf - . | zstd -q -f -T0 -o {}",
        shell_quote(&streams.display().to_string()),
        shell_quote(&out.display().to_string())
    );
    Cmd::new("bash")
        .args(["-c", pack.as_str()])
        .timeout(Duration::from_secs(3600))
        .run()
        .await
        .map_err(|e| io(e.to_string()))?;
    let (sha256, size) = sha256_file(&out)
        .await
        .map_err(|e| io(format!("{}: {e}", out.display())))?;
    Ok(Incremental {
        stream: out,
        sha256,
        size,
        from: previous.rsplit('/').next().unwrap_or("").to_string(),
        from_guids,
    })
}

/// A command's stdout into a local file.
async fn to_file(cmd: Cmd, file: &Path) -> Result<(), String> {
    let mut running = cmd.spawn_stream().map_err(|e| e.to_string())?;
    let mut f = tokio::fs::File::create(file)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let copied = match running.stdout.as_mut() {
        Some(out) => tokio::io::copy(out, &mut f).await,
        None => Ok(0),
    };
    let finished = running.finish().await;
    copied.map_err(|e| format!("{}: {e}", file.display()))?;
    finished.map_err(|e| e.to_string())?;
    Ok(())
}

/// The most recent other image of the same series on this host: a dataset
/// next to `dataset` whose name starts with `series_prefix`, that is an
/// image (ends in a build id) and has its `@kiln` snapshot.
pub async fn previous_image(
    zfs: &Zfs,
    dataset: &str,
    series_prefix: &str,
) -> Result<Option<String>, ZfsError> {
    let Some((base, _)) = dataset.rsplit_once('/') else {
        return Ok(None);
    };
    let mut best: Option<(u64, String)> = None;
    for (name, _) in zfs.list(base).await? {
        let Some(leaf) = name.strip_prefix(&format!("{base}/")) else {
            continue;
        };
        if name == dataset
            || leaf.contains('/')
            || !leaf.starts_with(series_prefix)
            || !super::gc::is_image(leaf)
            || !zfs.exists(&format!("{name}@{SNAPSHOT}")).await?
        {
            continue;
        }
        let created = zfs.get_number(&name, "creation").await?;
        if best.as_ref().is_none_or(|(c, _)| created >= *c) {
            best = Some((created, name));
        }
    }
    Ok(best.map(|(_, n)| n))
}
