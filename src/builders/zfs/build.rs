//! Building one base dataset tree: an immutable dataset named with the full
//! compiler version and build id, its children mounted where the platform
//! needs them, the provisioning script run as the build user with a
//! timeout, every process it leaves behind killed, a recursive snapshot, a
//! smoke test through the platform's profile, and a zstd-compressed
//! `zfs send -R` stream with a layout record. A failed build destroys its
//! datasets and removes its files: nothing half-built remains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::artifact::{Layout, LayoutChild};
use super::driver::{Zfs, ZfsError};
use crate::process::{Cmd, ProcessError};
use crate::registry::sha256_file;

pub const SNAPSHOT: &str = "kiln";

#[derive(Debug, thiserror::Error)]
pub enum ZfsBuildError {
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error("{target}: provisioning failed: {source} (log: {log})")]
    Provision {
        target: String,
        source: ProcessError,
        log: PathBuf,
    },
    #[error(
        "{target}: smoke test failed: `{command}` printed {got:?}, expected it to contain {expected:?} (log: {log})"
    )]
    Smoke {
        target: String,
        command: String,
        got: String,
        expected: String,
        log: PathBuf,
    },
    #[error("{target}: {message}")]
    Io { target: String, message: String },
}

impl ZfsBuildError {
    /// A failing `zfs` or I/O is infrastructure; a provisioning script
    /// that fails or times out, or a smoke test, is the recipe's.
    pub fn kind(&self) -> crate::model::FailureKind {
        use crate::model::FailureKind;
        match self {
            ZfsBuildError::Zfs(_) | ZfsBuildError::Io { .. } => FailureKind::Infra,
            ZfsBuildError::Provision { .. } | ZfsBuildError::Smoke { .. } => FailureKind::Recipe,
        }
    }
}

/// One child dataset and where it is mounted.
#[derive(Debug, Clone)]
pub struct Child {
    pub name: String,
    pub mountpoint: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ZfsSpec {
    pub target: String,
    pub platform: String,
    pub arch: crate::catalogue::Arch,
    /// Full dataset name: `<pool>/<prefix>/base-image/macos-homebrew-ocaml-5.5.0-<id>`.
    pub dataset: String,
    pub children: Vec<Child>,
    /// The rendered provisioning script.
    pub script: String,
    /// Environment for the script (HOME, ROOTFS, PATH, …).
    pub env: BTreeMap<String, String>,
    /// Build user (`runuser -u USER`); `None` runs as Kiln's user.
    pub user: Option<String>,
    pub timeout: Duration,
    /// Sourced before each smoke command (macOS: `~/.obuilder_profile.sh`,
    /// which obuilder sources before every step).
    pub profile: PathBuf,
    /// (command, expected substring of its output)
    pub smoke: Vec<(String, String)>,
    pub log: PathBuf,
    /// Where the compressed stream is written.
    pub out_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ZfsOutput {
    pub snapshot: String,
    pub stream: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub uncompressed_sha256: String,
    pub layout: Layout,
    /// The complete tree of this key was already on the host and was sent
    /// as it was, not provisioned again.
    pub reused: bool,
}

/// A user property on every tree a build creates: who is building it
/// (`process::owner`). Cleared once the tree is complete.
pub const OWNER_PROPERTY: &str = "org.ocaml.kiln:owner";

/// Destroy the trees next to `dataset` that a killed Kiln left half-built:
/// still marked with an owner that is gone.
pub async fn sweep_dead(zfs: &Zfs, dataset: &str) -> Result<(), ZfsError> {
    let Some((base, _)) = dataset.rsplit_once('/') else {
        return Ok(());
    };
    if !zfs.exists(base).await? {
        return Ok(());
    }
    for (name, _) in zfs.list(base).await? {
        let top = name
            .strip_prefix(&format!("{base}/"))
            .is_some_and(|leaf| !leaf.contains('/'));
        if !top {
            continue;
        }
        let owner = zfs.get(&name, OWNER_PROPERTY).await?;
        if crate::process::owner_is_gone(&owner) {
            tracing::info!(dataset = %name, %owner, "destroying a tree a killed build left");
            zfs.destroy_recursive(&name).await?;
        }
    }
    Ok(())
}

/// Remove the provisioning scripts (`<leaf>.<pid>.provision.sh`) and
/// stream files that Kiln processes of this host left when they were killed.
pub fn sweep_dead_scripts(out_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(out_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_suffix(".provision.sh")
            .and_then(|rest| rest.rsplit_once('.'))
            .map(|(_, pid)| pid.to_string())
        else {
            continue;
        };
        let owner = format!("{}/{pid}", crate::process::hostname());
        if crate::process::owner_is_gone(&owner) {
            tracing::info!(file = %e.path().display(), "removing a script a killed build left");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Build the tree; on failure destroy it and remove partial files.
pub async fn build(zfs: &Zfs, spec: &ZfsSpec) -> Result<ZfsOutput, ZfsBuildError> {
    sweep_dead(zfs, &spec.dataset).await?;
    let result = build_inner(zfs, spec).await;
    if result.is_err() {
        let _ = zfs.destroy_recursive(&spec.dataset).await;
        let _ = tokio::fs::remove_file(stream_path(spec)).await;
        let _ = tokio::fs::remove_file(stream_path(spec).with_extension("raw")).await;
    }
    result
}

fn stream_path(spec: &ZfsSpec) -> PathBuf {
    let name = spec.dataset.rsplit('/').next().unwrap_or("dataset");
    spec.out_dir.join(format!("{name}.zfs.zst"))
}

type IoErr<'a> = dyn Fn(String) -> ZfsBuildError + Sync + 'a;

async fn build_inner(zfs: &Zfs, spec: &ZfsSpec) -> Result<ZfsOutput, ZfsBuildError> {
    let target = spec.target.clone();
    let io = |message: String| ZfsBuildError::Io {
        target: target.clone(),
        message,
    };
    // Immutable, content-addressed names: a complete tree (with its
    // snapshot) of the same build key is reused, never rebuilt in place; a
    // leftover of an interrupted build is removed and rebuilt.
    let snapshot = format!("{}@{SNAPSHOT}", spec.dataset);
    if zfs.exists(&snapshot).await? && zfs.get(&spec.dataset, OWNER_PROPERTY).await? == "-" {
        tracing::info!(dataset = %spec.dataset, "the tree of this build key is on the host: adopted, not provisioned again");
        let mut out = send(zfs, spec, snapshot, &io).await?;
        out.reused = true;
        return Ok(out);
    }
    create_tree(zfs, spec, &io).await?;
    provision(zfs, spec, &io).await?;
    zfs.snapshot_recursive(&snapshot).await?;
    smoke(spec).await?;
    // Complete and smoke-tested: no longer anyone's work in progress.
    zfs.zfs(&["inherit", OWNER_PROPERTY, &spec.dataset]).await?;
    send(zfs, spec, snapshot, &io).await
}

/// A fresh tree marked with its owner, each child at its mountpoint and
/// owned by the build user.
async fn create_tree(zfs: &Zfs, spec: &ZfsSpec, io: &IoErr<'_>) -> Result<(), ZfsBuildError> {
    zfs.destroy_recursive(&spec.dataset).await?;
    zfs.create(
        &spec.dataset,
        &[
            ("mountpoint", "none"),
            (OWNER_PROPERTY, &crate::process::owner()),
        ],
    )
    .await?;
    for c in &spec.children {
        let mp = c.mountpoint.display().to_string();
        zfs.create(
            &format!("{}/{}", spec.dataset, c.name),
            &[("mountpoint", mp.as_str()), ("compression", "on")],
        )
        .await?;
        if let Some(user) = &spec.user {
            Cmd::new("chown")
                .arg(user)
                .arg(&c.mountpoint)
                .run()
                .await
                .map_err(|e| io(e.to_string()))?;
        }
    }
    Ok(())
}

/// Run the provisioning script: in a fresh PID namespace where available
/// (its init exiting kills everything the script left behind, even daemons
/// that setsid), otherwise in its own process group (killed as a whole
/// after the run). No new mount namespace: a copy of zfs-fuse's FUSE
/// mounts held by another namespace has been seen to wedge zfs-fuse.
async fn provision(zfs: &Zfs, spec: &ZfsSpec, io: &IoErr<'_>) -> Result<(), ZfsBuildError> {
    if let Some(dir) = spec.log.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io(format!("{}: {e}", dir.display())))?;
    }
    // Named by its owner (`<leaf>.<pid>.provision.sh`), so a killed Kiln's
    // script is found and removed by the next build (`sweep_dead_scripts`).
    let script_path = spec.out_dir.join(format!(
        "{}.{}.provision.sh",
        spec.dataset.rsplit('/').next().unwrap_or("x"),
        std::process::id()
    ));
    tokio::fs::create_dir_all(&spec.out_dir)
        .await
        .map_err(|e| io(format!("{}: {e}", spec.out_dir.display())))?;
    tokio::fs::write(&script_path, &spec.script)
        .await
        .map_err(|e| io(format!("{}: {e}", script_path.display())))?;
    let mut cmd = if crate::process::which("unshare").is_some() && zfs.host.ssh.is_empty() {
        Cmd::new("unshare").args(["--pid", "--fork", "--kill-child"])
    } else {
        Cmd::new("env")
    };
    if let Some(user) = &spec.user {
        cmd = cmd.args(["runuser", "-u", user.as_str(), "--"]);
    }
    cmd = cmd.arg("sh").arg(&script_path).timeout(spec.timeout);
    for (k, v) in &spec.env {
        cmd = cmd.env(k, v);
    }
    let run = cmd.run().await;
    let _ = tokio::fs::remove_file(&script_path).await;
    let log_text = match &run {
        Ok(o) => format!("{}{}", o.stdout, o.stderr),
        Err(e) => e.to_string(),
    };
    tokio::fs::write(
        &spec.log,
        format!("# kiln: provisioning {}\n{log_text}", spec.target),
    )
    .await
    .map_err(|e| io(format!("{}: {e}", spec.log.display())))?;
    run.map(|_| ()).map_err(|source| ZfsBuildError::Provision {
        target: spec.target.clone(),
        source,
        log: spec.log.clone(),
    })
}

/// The smoke test, through the profile each job sources.
async fn smoke(spec: &ZfsSpec) -> Result<(), ZfsBuildError> {
    let mut smoke_log = String::new();
    for (command, expected) in &spec.smoke {
        let line = format!(". {}; {command}", spec.profile.display());
        let mut c = Cmd::new("sh")
            .args(["-c", line.as_str()])
            .timeout(Duration::from_secs(120));
        for (k, v) in &spec.env {
            c = c.env(k, v);
        }
        let got = match c.run().await {
            Ok(o) => format!("{}{}", o.stdout, o.stderr),
            Err(e) => e.to_string(),
        };
        smoke_log.push_str(&format!("# kiln smoke: {command} -> {got}"));
        if !got.contains(expected.as_str()) {
            let _ = append(&spec.log, &smoke_log).await;
            return Err(ZfsBuildError::Smoke {
                target: spec.target.clone(),
                command: command.clone(),
                got: got.trim().to_string(),
                expected: expected.clone(),
                log: spec.log.clone(),
            });
        }
    }
    let _ = append(&spec.log, &smoke_log).await;
    Ok(())
}

/// The stream: raw `zfs send -R` (hashed), then zstd, plus the layout.
async fn send(
    zfs: &Zfs,
    spec: &ZfsSpec,
    snapshot: String,
    io: &IoErr<'_>,
) -> Result<ZfsOutput, ZfsBuildError> {
    let out = stream_path(spec);
    let raw = out.with_extension("raw");
    // A tree reused from an earlier run reaches here without provisioning,
    // which is where the work directory is otherwise made.
    tokio::fs::create_dir_all(&spec.out_dir)
        .await
        .map_err(|e| io(format!("{}: {e}", spec.out_dir.display())))?;
    let send = format!(
        "zfs send -R {snapshot} > {}",
        shell_quote(&raw.display().to_string())
    );
    pipeline(&send).run().await.map_err(|e| io(e.to_string()))?;
    let (uncompressed_sha256, _) = sha256_file(&raw)
        .await
        .map_err(|e| io(format!("{}: {e}", raw.display())))?;
    Cmd::new("zstd")
        .args(["-q", "-f", "-T0", "--rm", "-o"])
        .arg(&out)
        .arg(&raw)
        .timeout(Duration::from_secs(3600))
        .run()
        .await
        .map_err(|e| io(e.to_string()))?;
    let (sha256, size) = sha256_file(&out)
        .await
        .map_err(|e| io(format!("{}: {e}", out.display())))?;
    let mut children = Vec::new();
    for c in &spec.children {
        let name = format!("{}/{}", spec.dataset, c.name);
        children.push(LayoutChild {
            name: c.name.clone(),
            mountpoint: c.mountpoint.clone(),
            compression: zfs.get(&name, "compression").await?,
            referenced: zfs.get_number(&name, "referenced").await?,
        });
    }
    let layout = Layout {
        dataset: spec.dataset.clone(),
        snapshot: SNAPSHOT.to_string(),
        children,
        profile: spec.profile.clone(),
        user: spec.user.clone(),
    };
    Ok(ZfsOutput {
        snapshot,
        stream: out,
        sha256,
        size,
        uncompressed_sha256,
        layout,
        reused: false,
    })
}

async fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .await?;
    f.write_all(text.as_bytes()).await
}

/// A shell pipeline (`set -o pipefail`: any stage failing fails it), for
/// streams too large to pass through Kiln's memory.
fn pipeline(script: &str) -> Cmd {
    Cmd::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; {script}"))
        .timeout(Duration::from_secs(3600))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

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

/// The `zfs send -i` streams that turn `previous` (an earlier image of the
/// same series on this host) into the tree just built. The new tree was
/// built from scratch, so it shares no blocks with `previous`: its content
/// is laid over a scratch clone of `previous` with `rsync --inplace`, which
/// rewrites only what differs, and the streams are sent from the clone
/// (a clone stream: a worker receives it as a clone of its own copy of
/// `previous`). The scratch clone and every temporary file are removed,
/// whatever happens.
pub async fn incremental(
    zfs: &Zfs,
    spec: &ZfsSpec,
    previous: &str,
) -> Result<Incremental, ZfsBuildError> {
    let leaf = spec.dataset.rsplit('/').next().unwrap_or("dataset");
    let delta = format!("{}-delta", spec.dataset);
    let work = spec.out_dir.join(format!("{leaf}.delta"));
    let result = incremental_inner(zfs, spec, previous, &delta, &work).await;
    let _ = zfs.destroy_recursive(&delta).await;
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
        let mnt = work.join("mnt").join(&c.name);
        tokio::fs::create_dir_all(&mnt)
            .await
            .map_err(|e| io(format!("{}: {e}", mnt.display())))?;
        let clone = format!("{delta}/{}", c.name);
        zfs.zfs(&[
            "clone",
            "-o",
            &format!("mountpoint={}", mnt.display()),
            &origin,
            &clone,
        ])
        .await?;
        // Only what differs is written: the clone keeps sharing the rest.
        Cmd::new("rsync")
            .args([
                "-a",
                "-H",
                "--delete",
                "--inplace",
                "--no-whole-file",
                "--checksum",
            ])
            .arg(format!("{}/", c.mountpoint.display()))
            .arg(format!("{}/", mnt.display()))
            .timeout(Duration::from_secs(3600))
            .run()
            .await
            .map_err(|e| io(format!("rsync into {clone}: {e}")))?;
        zfs.zfs(&["snapshot", &format!("{clone}@{SNAPSHOT}")])
            .await?;
        let send = format!(
            "zfs send -i {origin} {clone}@{SNAPSHOT} > {}",
            shell_quote(
                &streams
                    .join(format!("{}.zfs", c.name))
                    .display()
                    .to_string()
            )
        );
        pipeline(&send).run().await.map_err(|e| io(e.to_string()))?;
        // Unmount before the clone is destroyed.
        let _ = zfs.zfs(&["umount", &clone]).await;
    }
    let out = incremental_path(spec);
    let pack = format!(
        "tar -C {} -cf - . | zstd -q -f -T0 -o {}",
        shell_quote(&streams.display().to_string()),
        shell_quote(&out.display().to_string())
    );
    pipeline(&pack).run().await.map_err(|e| io(e.to_string()))?;
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
