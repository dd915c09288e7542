//! The disks QEMU keeps on this machine (`qemu.keep_disks`): each
//! target's last verified disk, `<state_dir>/qemu/disks/<name>.qcow2`
//! (`<os>-<arch>-ocaml-<v>-<12 hex>`, the build key's start), and its
//! download-cache disk beside it (`<name>.download-cache.qcow2`). A later
//! run of the same key adopts them instead of booting.
//!
//! For the worker inventory they are listed and judged by the lockfile;
//! `kiln gc` removes a disk (with its cache) that no lockfile entry names
//! once it is older than the retention period.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::builders::inventory::{Held, HeldKind, HostReport, Names};
use crate::catalogue::BuilderKind;
use crate::config::Config;

/// The one QEMU host: this machine.
pub const HOST: &str = "local";
const CACHE_SUFFIX: &str = ".download-cache.qcow2";

/// Where kept disks live.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("qemu/disks")
}

/// One kept file: what it is, its file name, the disk name it belongs to.
struct Kept {
    kind: HeldKind,
    file: String,
    disk: String,
    path: PathBuf,
    bytes: u64,
    modified: Option<SystemTime>,
}

/// Every `.qcow2` under `dir` (none when it does not exist).
fn kept(dir: &Path) -> std::io::Result<Vec<Kept>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        let file = e.file_name().to_string_lossy().to_string();
        let (kind, disk) = if let Some(d) = file.strip_suffix(CACHE_SUFFIX) {
            (HeldKind::DownloadCache, d)
        } else if let Some(d) = file.strip_suffix(".qcow2") {
            (HeldKind::Disk, d)
        } else {
            continue;
        };
        let meta = e.metadata()?;
        out.push(Kept {
            kind,
            disk: disk.to_string(),
            file,
            path: e.path(),
            bytes: meta.len(),
            modified: meta.modified().ok(),
        });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(out)
}

/// This machine as a QEMU host: QEMU there or not, the builds running
/// (work dirs of live Kiln processes), the kept disks.
pub fn report(config: &Config, names: &Names) -> HostReport {
    let mut r = HostReport::new(BuilderKind::Qemu, HOST, "this machine");
    r.arches = vec!["amd64".into()];
    r.slots = 1;
    let missing: Vec<&str> = [&config.qemu.system, &config.qemu.img]
        .into_iter()
        .filter(|p| crate::process::which(p).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        r.health = format!("unhealthy: {} not found", missing.join(", "));
    }
    r.busy = Some(running_builds(&config.work_dir().join("qemu")));
    match kept(&dir(&config.state_dir)) {
        Ok(kept) => {
            r.holds = kept
                .into_iter()
                .map(|k| {
                    let mut h = Held::judged(k.kind, k.file, &k.disk, names);
                    h.bytes = Some(k.bytes);
                    h
                })
                .collect()
        }
        Err(e) => {
            r.health = format!(
                "unhealthy: reading {}: {e}",
                dir(&config.state_dir).display()
            )
        }
    }
    r
}

/// Work dirs (`<pid>-…`) of Kiln processes still running.
fn running_builds(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.split('-').next()?.parse::<i32>().ok()
        })
        .filter(|pid| {
            !crate::process::owner_is_gone(&format!("{}/{pid}", crate::process::hostname()))
        })
        .count()
}

/// What `kiln gc` did with one kept file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub file: String,
    /// `removed`, `would-remove` (dry run) or `kept`.
    pub action: String,
    pub reason: String,
}

/// Remove the kept disks (and their caches) no lockfile entry names, once
/// older than `retention`.
pub fn gc(
    state_dir: &Path,
    names: &Names,
    retention: Duration,
    dry_run: bool,
) -> std::io::Result<Vec<Decision>> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for k in kept(&dir(state_dir))? {
        let mut decide = |action: &str, reason: String| {
            out.push(Decision {
                file: k.file.clone(),
                action: action.into(),
                reason,
            })
        };
        if let Some(n) = names.get(&k.disk) {
            decide("kept", format!("referenced by the lockfile ({})", n.tag));
            continue;
        }
        let age = k
            .modified
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default()
            .as_secs();
        if age < retention.as_secs() {
            decide(
                "kept",
                format!("younger than the retention period ({age} s old)"),
            );
            continue;
        }
        let reason = format!("no lockfile entry names it, {age} s old");
        if dry_run {
            decide("would-remove", reason);
            continue;
        }
        match std::fs::remove_file(&k.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        tracing::info!(disk = %k.path.display(), "removed a kept disk no lockfile entry names");
        decide("removed", reason);
    }
    Ok(out)
}
