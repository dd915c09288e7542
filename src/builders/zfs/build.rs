//! Building one base dataset tree on its ZFS host: an immutable dataset
//! named with the full compiler version and build id, its children mounted
//! where the platform needs them, the provisioning script run on the host
//! ([`super::provision`]: as the build user, every process it leaves
//! killed, cleaned up by the host itself if the connection drops), a
//! recursive snapshot, and a smoke test through the platform's profile.
//! The send stream is [`super::send`]'s. A failed build destroys its
//! datasets: nothing half-built remains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::artifact::{Layout, LayoutChild};
use super::driver::{Zfs, ZfsError};
use super::host::unreachable;
use super::provision::{EXIT_MARKER, provision_script, smoke_script};
use crate::process::ProcessError;

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
    #[error("{target}: zfs host {host} lost or unreachable during {step}: {source}")]
    HostLost {
        target: String,
        host: String,
        step: &'static str,
        source: ProcessError,
    },
    #[error("{target}: {message}")]
    Io { target: String, message: String },
}

impl ZfsBuildError {
    /// A failing `zfs`, a host that cannot be reached or whose connection
    /// drops, or I/O, is infrastructure; a provisioning script that fails
    /// or times out, or a smoke test, is the recipe's.
    pub fn kind(&self) -> crate::model::FailureKind {
        use crate::model::FailureKind;
        match self {
            ZfsBuildError::Zfs(_) | ZfsBuildError::Io { .. } | ZfsBuildError::HostLost { .. } => {
                FailureKind::Infra
            }
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

/// Where the smoke test runs: on the host as the build user (macOS, and
/// the Linux-runnable recipes), or inside a jail of the tree (FreeBSD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    Host,
    Jail { root: PathBuf, user: String },
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
    /// Build user (`runuser -u` on Linux, `sudo -u` elsewhere); `None`
    /// runs as the ssh user (root through `sudo` when the host says so).
    pub user: Option<String>,
    pub runner: Runner,
    pub timeout: Duration,
    /// Sourced before each smoke command (macOS: `~/.obuilder_profile.sh`,
    /// which obuilder sources before every step).
    pub profile: PathBuf,
    /// (command, expected substring of its output)
    pub smoke: Vec<(String, String)>,
    pub log: PathBuf,
    /// Kiln's scratch directory (incremental streams).
    pub out_dir: PathBuf,
}

/// A complete, smoke-tested tree on the host.
#[derive(Debug, Clone)]
pub struct Built {
    /// `<dataset>@kiln`
    pub snapshot: String,
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

/// Build the tree; on failure destroy it, and when the build is dropped
/// mid-way (a cancelled job) too ([`Unfinished`]).
pub async fn build(zfs: &Zfs, spec: &ZfsSpec) -> Result<Built, ZfsBuildError> {
    sweep_dead(zfs, &spec.dataset).await?;
    let mut unfinished = Unfinished(None);
    let result = build_inner(zfs, spec, &mut unfinished).await;
    unfinished.0 = None;
    if result.is_err() {
        let _ = zfs.destroy_recursive(&spec.dataset).await;
    }
    result
}

/// A tree being built (armed once creating it starts; never an adopted
/// complete tree): destroyed if its build is dropped before it ends.
struct Unfinished(Option<(Zfs, String)>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some((zfs, dataset)) = self.0.take() {
            crate::process::cleanup_later("a half-built ZFS tree", async move {
                if let Err(e) = zfs.destroy_recursive(&dataset).await {
                    tracing::warn!(%dataset, error = %e, "destroying an interrupted build's tree: left to the next sweep");
                }
            });
        }
    }
}

type IoErr<'a> = dyn Fn(String) -> ZfsBuildError + Sync + 'a;

async fn build_inner(
    zfs: &Zfs,
    spec: &ZfsSpec,
    unfinished: &mut Unfinished,
) -> Result<Built, ZfsBuildError> {
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
        return Ok(Built {
            layout: layout(zfs, spec).await?,
            snapshot,
            reused: true,
        });
    }
    unfinished.0 = Some((zfs.clone(), spec.dataset.clone()));
    create_tree(zfs, spec, &io).await?;
    provision(zfs, spec, &io).await?;
    zfs.snapshot_recursive(&snapshot).await?;
    smoke(zfs, spec).await?;
    // Complete and smoke-tested: no longer anyone's work in progress.
    zfs.zfs(&["inherit", OWNER_PROPERTY, &spec.dataset]).await?;
    Ok(Built {
        layout: layout(zfs, spec).await?,
        snapshot,
        reused: false,
    })
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
            zfs.on
                .cmd("chown", &[user, &mp])
                .timeout(Duration::from_secs(60))
                .run()
                .await
                .map_err(|e| io(e.to_string()))?;
        }
    }
    Ok(())
}

/// Run the provisioning script on the host (see [`super::provision`]) and
/// keep what it printed in the target's log. A run that ends without the
/// exit marker lost its host, which is infrastructure's doing.
async fn provision(zfs: &Zfs, spec: &ZfsSpec, io: &IoErr<'_>) -> Result<(), ZfsBuildError> {
    if let Some(dir) = spec.log.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io(format!("{}: {e}", dir.display())))?;
    }
    let run = zfs
        .on
        .script(&provision_script(spec))
        .timeout(spec.timeout)
        .run()
        .await;
    let log_text = match &run {
        Ok(o) => format!("{}{}", o.stdout, o.stderr),
        Err(e) => e.to_string(),
    };
    tokio::fs::write(
        &spec.log,
        format!(
            "# kiln: provisioning {} on {}\n{log_text}",
            spec.target, zfs.host.name
        ),
    )
    .await
    .map_err(|e| io(format!("{}: {e}", spec.log.display())))?;
    match run {
        Ok(_) => Ok(()),
        Err(ProcessError::Failed { ref stderr, .. }) if stderr.contains(EXIT_MARKER) => {
            Err(provision_failed(spec, run.err()))
        }
        Err(e @ ProcessError::Timeout { .. }) => Err(provision_failed(spec, Some(e))),
        Err(source) => Err(ZfsBuildError::HostLost {
            target: spec.target.clone(),
            host: zfs.host.name.clone(),
            step: "provisioning",
            source,
        }),
    }
}

fn provision_failed(spec: &ZfsSpec, source: Option<ProcessError>) -> ZfsBuildError {
    ZfsBuildError::Provision {
        target: spec.target.clone(),
        source: source.unwrap_or_else(|| ProcessError::Io {
            command: "provision".into(),
            source: std::io::Error::other("no error"),
        }),
        log: spec.log.clone(),
    }
}

/// The smoke test, on the host, through the profile each job sources.
async fn smoke(zfs: &Zfs, spec: &ZfsSpec) -> Result<(), ZfsBuildError> {
    let mut smoke_log = String::new();
    for (command, expected) in &spec.smoke {
        let run = zfs
            .on
            .script(&smoke_script(spec, command))
            .timeout(Duration::from_secs(120))
            .run()
            .await;
        let got = match run {
            Ok(o) => format!("{}{}", o.stdout, o.stderr),
            Err(e) if unreachable(&zfs.on, &e) => {
                return Err(ZfsBuildError::HostLost {
                    target: spec.target.clone(),
                    host: zfs.host.name.clone(),
                    step: "the smoke test",
                    source: e,
                });
            }
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

/// The tree's layout record, read from the host.
async fn layout(zfs: &Zfs, spec: &ZfsSpec) -> Result<Layout, ZfsError> {
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
    Ok(Layout {
        dataset: spec.dataset.clone(),
        snapshot: SNAPSHOT.to_string(),
        children,
        profile: spec.profile.clone(),
        user: spec.user.clone(),
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
