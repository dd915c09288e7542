//! The worker inventory: every host of every builder, its health, what it
//! builds, how much of it is in use and what it holds, each held item
//! judged against the lockfile (referenced or not, with the published
//! digest of what is referenced).
//!
//! Each builder reports its own hosts ([`super::Builder::inventory`]);
//! [`collect`] asks them all at once. A host that cannot be reached is a
//! row saying so (`unreachable: <error>`), never a failed listing, and no
//! host takes longer than [`HOST_LIMIT`] to answer. "Referenced" is the
//! rule `kiln gc` keeps by: a held item is referenced when a current
//! lockfile entry's per-arch build names it ([`zfs_names`], [`qemu_names`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Builders;
use crate::catalogue::BuilderKind;
use crate::lockfile::{ArtifactKind, Lockfile};

/// The longest one host may take to report.
pub const HOST_LIMIT: Duration = Duration::from_secs(60);

/// Every host of every builder, as collected at one moment.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Inventory {
    pub collected_at: DateTime<Utc>,
    pub hosts: Vec<HostReport>,
}

impl Inventory {
    /// The hosts whose health is not `ok`.
    pub fn unhealthy(&self) -> impl Iterator<Item = &HostReport> {
        self.hosts.iter().filter(|h| !h.is_ok())
    }
}

/// One host of one builder.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostReport {
    pub builder: BuilderKind,
    /// The host's configured name.
    pub host: String,
    /// How Kiln reaches it: `this machine`, an ssh target, an engine endpoint.
    pub address: String,
    /// `ok`, or what is wrong: `unreachable: <error>`, `unhealthy: <why>`.
    pub health: String,
    /// The arches it builds (natively or by emulation).
    pub arches: Vec<String>,
    /// Builds it takes at once.
    pub slots: usize,
    /// Builds running on it now, as the host shows them (unknown when it
    /// cannot be asked).
    pub busy: Option<usize>,
    /// A ZFS host's pool: size and free space, as zpool prints them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolUsage>,
    /// A Docker engine's image layers and build cache, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_cache_bytes: Option<u64>,
    /// What it holds for Kiln: base datasets, kept disks and their caches.
    pub holds: Vec<Held>,
}

impl HostReport {
    /// A host known only by its configuration, its health still `ok`.
    pub fn new(builder: BuilderKind, host: &str, address: &str) -> HostReport {
        HostReport {
            builder,
            host: host.to_string(),
            address: address.to_string(),
            health: "ok".into(),
            arches: Vec::new(),
            slots: 1,
            busy: None,
            pool: None,
            engine_cache_bytes: None,
            holds: Vec::new(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.health == "ok"
    }

    /// This report, unreachable for `error`.
    pub fn unreachable(mut self, error: impl std::fmt::Display) -> HostReport {
        self.health = format!("unreachable: {error}");
        self
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolUsage {
    pub name: String,
    pub size: String,
    pub free: String,
}

/// What a held item is.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum HeldKind {
    /// An immutable base dataset tree (`<pool>/<prefix>/base-image/<name>-<12 hex>`).
    Dataset,
    /// obuilder's stable name (`base-image/NAME`), clones of an image.
    StableName,
    /// A stable tree `kiln fetch` replaced, kept while a job clones it.
    Retired,
    /// A kept QEMU disk (`<state_dir>/qemu/disks/<name>.qcow2`).
    Disk,
    /// A kept disk's download-cache disk.
    DownloadCache,
}

impl HeldKind {
    pub const ALL: [HeldKind; 5] = [
        HeldKind::Dataset,
        HeldKind::StableName,
        HeldKind::Retired,
        HeldKind::Disk,
        HeldKind::DownloadCache,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HeldKind::Dataset => "dataset",
            HeldKind::StableName => "stable-name",
            HeldKind::Retired => "retired",
            HeldKind::Disk => "disk",
            HeldKind::DownloadCache => "download-cache",
        }
    }
}

/// One item a host holds.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Held {
    pub kind: HeldKind,
    /// The dataset, or the disk's file name.
    pub name: String,
    pub bytes: Option<u64>,
    /// Named by the lockfile (or in use): `kiln gc` keeps it.
    pub referenced: bool,
    /// Why it is (or is not) referenced.
    pub why: String,
    /// The lockfile entry (`repo:tag`) naming it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The published digest of this build (the arch's manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl Held {
    /// An item judged by the lockfile's names (`name` is the image or disk
    /// name without its dataset path or `.qcow2`).
    pub fn judged(kind: HeldKind, item: String, name: &str, names: &Names) -> Held {
        let r = names.get(name);
        Held {
            kind,
            name: item,
            bytes: None,
            referenced: r.is_some(),
            why: match r {
                Some(r) => format!("referenced by the lockfile ({})", r.tag),
                None => "no lockfile entry names it".into(),
            },
            tag: r.map(|r| r.tag.clone()),
            digest: r.map(|r| r.digest.clone()),
        }
    }
}

/// A lockfile entry's per-arch build, as a worker names what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The entry's key (`repo:tag`).
    pub tag: String,
    /// The arch's published manifest digest.
    pub digest: String,
}

/// Held names → the entry naming them.
pub type Names = BTreeMap<String, Named>;

fn names_of(
    lock: &Lockfile,
    kind: ArtifactKind,
    name: impl Fn(&str, &str, &str) -> String,
) -> Names {
    let mut out = Names::new();
    for (key, e) in &lock.entries {
        if e.kind != kind {
            continue;
        }
        let version = match &e.ocaml {
            Some(v) => format!("ocaml-{v}"),
            None => crate::plan::OPAM_STAGE.to_string(),
        };
        for (arch, a) in &e.arches {
            let hex = a.build_key.trim_start_matches("sha256:");
            if hex.len() < 12 {
                continue;
            }
            let n = name(&e.os, arch.as_str(), &version);
            out.insert(
                format!("{n}-{}", &hex[..12]),
                Named {
                    tag: key.clone(),
                    digest: a.digest.clone(),
                },
            );
        }
    }
    out
}

/// The image leaf names (`<os>-ocaml-<v>-<12 hex>`) the lockfile's ZFS
/// entries point at.
pub fn zfs_names(lock: &Lockfile) -> Names {
    names_of(lock, ArtifactKind::ZfsStream, |os, _, v| {
        format!("{os}-{v}")
    })
}

/// The kept-disk names (`<os>-<arch>-ocaml-<v>-<12 hex>`, as
/// `builders::artifact_name`) the lockfile's qcow2 entries point at.
pub fn qemu_names(lock: &Lockfile) -> Names {
    names_of(lock, ArtifactKind::Qcow2, |os, arch, v| {
        format!("{os}-{arch}-{v}")
    })
}

/// One host's report, or its stub marked unreachable when it does not
/// answer within [`HOST_LIMIT`].
pub async fn within(stub: HostReport, report: impl Future<Output = HostReport>) -> HostReport {
    match tokio::time::timeout(HOST_LIMIT, report).await {
        Ok(r) => r,
        Err(_) => stub.unreachable(format!("no answer within {} s", HOST_LIMIT.as_secs())),
    }
}

/// Every builder's hosts, asked at once.
pub async fn collect(builders: &Builders, lock: &Lockfile) -> Inventory {
    let reports =
        futures_util::future::join_all(BuilderKind::ALL.map(|k| builders.get(k).inventory(lock)))
            .await;
    Inventory {
        collected_at: Utc::now(),
        hosts: reports.into_iter().flatten().collect(),
    }
}

/// `bytes` for people: `24.0 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
