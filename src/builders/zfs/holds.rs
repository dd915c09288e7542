//! What a ZFS host holds, for the worker inventory: its health (the
//! probe `kiln doctor` runs), its pool's size and free space, the builds
//! running on it, and under `<pool>/<prefix>` the immutable base images
//! (`base-image/<name>-<12 hex>`) and the retired stable trees, and
//! obuilder's stable names (`<pool>/base-image/NAME`, clones of an image,
//! as `kiln fetch` makes them), each judged by the lockfile as `kiln gc`
//! judges it (a stable name as the image it is cloned from).
//!
//! Each tree's properties come from one `zfs get -r`, every command over
//! one ssh connection.

use std::collections::BTreeMap;

use super::driver::{Zfs, ZfsError};
use super::probe::{Probe, probe};
use crate::builders::inventory::{Held, HeldKind, HostReport, Names, PoolUsage};
use crate::catalogue::BuilderKind;
use crate::config::ZfsHost;

/// One dataset's properties, as `zfs get -H -p -r` printed them.
type Props = BTreeMap<String, BTreeMap<String, String>>;

/// How the host is reached, for the report.
pub fn address(h: &ZfsHost) -> String {
    if h.ssh.is_empty() {
        "this machine".into()
    } else {
        format!("ssh {}", h.ssh)
    }
}

/// The report's first lines, known without asking the host.
pub fn stub(h: &ZfsHost) -> HostReport {
    let mut r = HostReport::new(BuilderKind::Zfs, &h.name, &address(h));
    r.arches = vec![h.arch.clone()];
    r.slots = 1;
    r
}

/// Ask the host: health first, then (when usable) what it holds.
pub async fn report(h: &ZfsHost, names: &Names) -> HostReport {
    let mut r = stub(h);
    match probe(h).await {
        Probe::Online { size, free } => {
            r.pool = Some(PoolUsage {
                name: h.pool.clone(),
                size,
                free,
            })
        }
        Probe::Unreachable { detail } => return r.unreachable(detail.trim()),
        other => {
            r.health = match other.problem(h) {
                Some((what, _)) => format!("unhealthy: {what}"),
                None => "unhealthy".into(),
            };
            return r;
        }
    }
    let zfs = match Zfs::connect(h).await {
        Ok(z) => z,
        Err(e) => return r.unreachable(e),
    };
    match holds(&zfs, names).await {
        Ok((holds, busy)) => {
            r.holds = holds;
            r.busy = Some(busy);
        }
        Err(e) => r.health = format!("unhealthy: listing {}/{}: {e}", h.pool, h.prefix),
    }
    r
}

/// `zfs get -H -p -r` of the properties the inventory reads, of the
/// datasets under `top` (snapshots left out; empty when it does not exist).
async fn props_of(zfs: &Zfs, top: &str) -> Result<Props, ZfsError> {
    if !zfs.exists(top).await? {
        return Ok(Props::new());
    }
    let out = zfs
        .zfs(&[
            "get",
            "-H",
            "-p",
            "-r",
            "-o",
            "name,property,value",
            &format!("used,origin,{}", super::build::OWNER_PROPERTY),
            top,
        ])
        .await?;
    let mut props = Props::new();
    for line in out.lines() {
        let mut f = line.splitn(3, '\t');
        if let (Some(name), Some(prop), Some(value)) = (f.next(), f.next(), f.next())
            && !name.contains('@')
        {
            props
                .entry(name.to_string())
                .or_default()
                .insert(prop.to_string(), value.to_string());
        }
    }
    Ok(props)
}

/// The datasets directly under `base` (`base/<leaf>`), with their leaf.
fn tops<'a>(props: &'a Props, base: &str) -> Vec<(&'a str, &'a str)> {
    props
        .keys()
        .filter_map(|n| {
            let leaf = n.strip_prefix(base)?.strip_prefix('/')?;
            (!leaf.contains('/')).then_some((n.as_str(), leaf))
        })
        .collect()
}

fn bytes(props: &Props, name: &str) -> Option<u64> {
    props.get(name)?.get("used")?.parse().ok()
}

/// The image a stable tree's children are cloned from (`<image>/<child>@snap`).
fn cloned_from(props: &Props, stable: &str) -> Option<String> {
    props
        .iter()
        .filter(|(n, _)| n.starts_with(&format!("{stable}/")))
        .filter_map(|(_, p)| p.get("origin"))
        .find(|o| o.as_str() != "-")
        .map(|o| {
            let dataset = o.split('@').next().unwrap_or(o);
            dataset
                .rsplit_once('/')
                .map(|(image, _)| image.to_string())
                .unwrap_or_else(|| dataset.to_string())
        })
}

/// Everything under `<pool>/<prefix>`, and how many images are being built.
async fn holds(zfs: &Zfs, names: &Names) -> Result<(Vec<Held>, usize), ZfsError> {
    let top = format!("{}/{}", zfs.host.pool, zfs.host.prefix);
    let props = props_of(zfs, &top).await?;
    let base = format!("{top}/base-image");
    let mut out = Vec::new();
    let mut busy = 0;
    for (dataset, leaf) in tops(&props, &base) {
        if leaf.starts_with("incoming-") {
            continue;
        }
        let mut held = if super::gc::is_image(leaf) {
            let mut held = Held::judged(HeldKind::Dataset, dataset.to_string(), leaf, names);
            let owner = props
                .get(dataset)
                .and_then(|p| p.get(super::build::OWNER_PROPERTY))
                .map(String::as_str)
                .unwrap_or("-");
            if owner != "-" && !crate::process::owner_is_gone(owner) {
                busy += 1;
                held.referenced = true;
                held.why = format!("being built by {owner}");
            }
            held
        } else {
            stable_name(&props, dataset, names)
        };
        held.bytes = bytes(&props, dataset);
        out.push(held);
    }
    // obuilder's stable names, `<pool>/base-image/NAME`, made by `kiln fetch`.
    let names_top = format!("{}/base-image", zfs.host.pool);
    if names_top != base {
        let stable = props_of(zfs, &names_top).await?;
        for (dataset, _) in tops(&stable, &names_top) {
            let mut held = stable_name(&stable, dataset, names);
            held.bytes = bytes(&stable, dataset);
            out.push(held);
        }
    }
    for (dataset, _) in tops(&props, &format!("{top}/retired")) {
        let clones = zfs.clones_of(dataset).await?;
        out.push(Held {
            kind: HeldKind::Retired,
            name: dataset.to_string(),
            bytes: bytes(&props, dataset),
            referenced: !clones.is_empty(),
            why: if clones.is_empty() {
                "retired stable tree, no job clones it".into()
            } else {
                format!("retired stable tree, cloned by {}", clones.join(", "))
            },
            tag: None,
            digest: None,
        });
    }
    Ok((out, busy))
}

/// obuilder's stable name: referenced as the image its children are
/// cloned from is (gc leaves stable names to `kiln fetch`).
fn stable_name(props: &Props, dataset: &str, names: &Names) -> Held {
    let image = cloned_from(props, dataset);
    let leaf = image
        .as_deref()
        .and_then(|i| i.rsplit('/').next())
        .unwrap_or("");
    let mut held = Held::judged(HeldKind::StableName, dataset.to_string(), leaf, names);
    held.why = match (&image, held.referenced) {
        (Some(i), true) => format!("points at {i}, {}", held.why),
        (Some(i), false) => format!("points at {i}, which no lockfile entry names"),
        (None, _) => "cloned from no image Kiln made".into(),
    };
    held
}
