//! `kiln gc` over every worker: each ZFS host's base images
//! ([`super::zfs::gc`]) and the disks QEMU keeps on this machine
//! ([`super::qemu::disks::gc`]), every decision with its builder and host.
//! A host that cannot be cleaned is one `failed` decision naming the
//! error; the others are cleaned all the same.

use std::time::Duration;

use serde::Serialize;

use super::inventory;
use super::qemu::disks;
use super::zfs::{driver::Zfs, gc as zfs_gc};
use crate::catalogue::BuilderKind;
use crate::config::ZfsHost;
use crate::lockfile::Lockfile;

/// What gc did with one item on one host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Collected {
    pub builder: BuilderKind,
    pub host: String,
    /// The dataset or the kept disk's file.
    pub item: String,
    /// `removed`, `would-remove` (dry run), `kept`, or `failed` (the host
    /// could not be cleaned; `item` is what was being cleaned).
    pub action: String,
    pub reason: String,
}

impl Collected {
    pub fn failed(&self) -> bool {
        self.action == "failed"
    }
}

/// What to clean.
pub struct Scope<'a> {
    pub zfs_hosts: &'a [ZfsHost],
    /// The kept QEMU disks under this state dir, if any.
    pub qemu_state_dir: Option<&'a std::path::Path>,
}

/// Clean every host of `scope`.
pub async fn gc(
    scope: &Scope<'_>,
    lock: &Lockfile,
    retention: Duration,
    dry_run: bool,
) -> Vec<Collected> {
    let per_host = futures_util::future::join_all(
        scope
            .zfs_hosts
            .iter()
            .map(|h| zfs_host(h, lock, retention, dry_run)),
    )
    .await;
    let mut out: Vec<Collected> = per_host.into_iter().flatten().collect();
    if let Some(state_dir) = scope.qemu_state_dir {
        let collected = |item: String, action: String, reason: String| Collected {
            builder: BuilderKind::Qemu,
            host: disks::HOST.into(),
            item,
            action,
            reason,
        };
        match disks::gc(state_dir, &inventory::qemu_names(lock), retention, dry_run) {
            Ok(d) => out.extend(d.into_iter().map(|d| collected(d.file, d.action, d.reason))),
            Err(e) => out.push(collected(
                disks::dir(state_dir).display().to_string(),
                "failed".into(),
                e.to_string(),
            )),
        }
    }
    out
}

async fn zfs_host(
    h: &ZfsHost,
    lock: &Lockfile,
    retention: Duration,
    dry_run: bool,
) -> Vec<Collected> {
    let collected = |item: String, action: String, reason: String| Collected {
        builder: BuilderKind::Zfs,
        host: h.name.clone(),
        item,
        action,
        reason,
    };
    let top = format!("{}/{}", h.pool, h.prefix);
    // One ssh connection for every command on the host.
    let zfs = match Zfs::connect(h).await {
        Ok(z) => z,
        Err(e) => {
            tracing::warn!(host = %h.name, error = %e, "gc: zfs host unreachable");
            return vec![collected(top, "failed".into(), format!("unreachable: {e}"))];
        }
    };
    match zfs_gc::gc(&zfs, lock, retention, dry_run).await {
        Ok(d) => d
            .into_iter()
            .map(|d| collected(d.dataset, d.action, d.reason))
            .collect(),
        Err(e) => {
            tracing::warn!(host = %h.name, error = %e, "gc on a zfs host failed");
            vec![collected(top, "failed".into(), e.to_string())]
        }
    }
}
