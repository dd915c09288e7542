//! A full round of a plan on the configured fleet, simulated: `kiln plan
//! --estimate` and the schedule benchmark. Every target is one build on
//! one host slot; tags start in [`schedule::order`](super::schedule) and
//! each build takes the slot, among the hosts that can build it, where it
//! would finish first (native hosts beat emulating ones by their speed).
//! The engine's layer cache is modelled: the opam stage of an OS release
//! and arch is paid once per host, the later compilers of that release on
//! that host build their switch only.
//!
//! Durations and sizes are [`Costs`]: documented assumptions, which the
//! schedule benchmark replaces with what it measures. It is an estimate
//! for planning a fleet, not a promise.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::catalogue::{Arch, BuilderKind};
use crate::config::Config;
use crate::plan::Target;

/// What one build costs. Seconds are for native amd64; [`Costs::arch`]
/// scales them per arch and [`Costs::emulation`] when a host emulates it.
#[derive(Debug, Clone, Serialize)]
pub struct Costs {
    /// The opam stage (bootstrap compiler and six opam releases), once per
    /// OS release, arch and host (the layer cache keeps it after).
    pub opam_stage_secs: f64,
    /// One compiler's switch on top of it.
    pub switch_secs: f64,
    /// A macOS or FreeBSD base dataset (ZFS builder), whole.
    pub zfs_secs: f64,
    /// An OpenBSD disk image (QEMU builder): install, boots, compaction.
    pub qemu_secs: f64,
    /// Slowdown of a build under QEMU user emulation.
    pub emulation: f64,
    /// Per-arch slowdown of a native build.
    pub arch: BTreeMap<Arch, f64>,
    /// Bytes a build sends through the Kiln host (its own layers; parent
    /// layers are mounted), per builder kind.
    pub bytes: BTreeMap<BuilderKind, u64>,
    /// Where these numbers come from.
    pub source: String,
}

impl Default for Costs {
    /// Assumptions, not measurements (the schedule benchmark replaces the
    /// Docker durations with its own measured on the machine it runs on):
    /// - durations: the opam stage builds a bootstrap compiler and six opam
    ///   releases from tarballs, taken as about two and a half switches'
    ///   work; a switch is one compiler build with opam's bookkeeping, on
    ///   an 8-core host; the ZFS and QEMU builds install a whole OS layer
    ///   (Homebrew or an OpenBSD install) before their switch;
    /// - arch: riscv64 boards taken as four times slower than amd64
    ///   servers, ppc64le and s390x VMs one and a half;
    /// - emulation: QEMU user-mode emulation taken as five times slower
    ///   than native for compilers;
    /// - bytes: the compressed own layers of an `ocaml/opam` image (the
    ///   opam binaries and one switch), a ZFS send of a macOS base, an
    ///   OpenBSD qcow2.
    fn default() -> Costs {
        Costs {
            opam_stage_secs: 1200.0,
            switch_secs: 480.0,
            zfs_secs: 2400.0,
            qemu_secs: 3000.0,
            emulation: 5.0,
            arch: BTreeMap::from([
                (Arch::Amd64, 1.0),
                (Arch::Arm64, 1.0),
                (Arch::I386, 1.0),
                (Arch::Arm32v7, 2.0),
                (Arch::Ppc64le, 1.5),
                (Arch::S390x, 1.5),
                (Arch::Riscv64, 4.0),
            ]),
            bytes: BTreeMap::from([
                (BuilderKind::Docker, 350 << 20),
                (BuilderKind::Zfs, 1536 << 20),
                (BuilderKind::Qemu, 1024 << 20),
            ]),
            source: "defaults (src/pipeline/simulate.rs Costs::default)".into(),
        }
    }
}

/// One host slot group of the fleet, as the simulation sees it.
#[derive(Debug, Clone)]
struct Host {
    kind: &'static str,
    name: String,
    /// When each slot is free next (seconds from the round's start).
    free: Vec<f64>,
    /// OS releases whose opam stage this host has cached, per arch.
    cached: BTreeSet<(String, Arch)>,
    busy: f64,
}

/// The simulated round.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub builds: usize,
    /// Targets no configured host can build (left out).
    pub unroutable: usize,
    pub makespan_secs: f64,
    /// Per host: busy seconds over its slots' capacity for the round.
    pub hosts: BTreeMap<String, HostLoad>,
    /// The host kind whose last build ends the round.
    pub bottleneck: String,
    /// Bytes that cross the Kiln host in the round.
    pub bytes: u64,
    pub costs: Costs,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostLoad {
    pub kind: String,
    pub slots: usize,
    pub busy_secs: f64,
    pub last_end_secs: f64,
}

/// The fleet's hosts that can build `t`: index, and whether natively.
fn candidates(config: &Config, hosts: &[Host], t: &Target) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let native = match (h.kind, t.builder) {
            ("docker", BuilderKind::Docker) => {
                let Some(d) = config.docker.hosts.iter().find(|d| d.name == h.name) else {
                    continue;
                };
                if !crate::builders::docker::builder::serves(d, t) {
                    continue;
                }
                d.arch == t.arch.as_str()
            }
            ("zfs", BuilderKind::Zfs) => {
                let ok = config.zfs.hosts.iter().any(|z| {
                    z.name == h.name
                        && z.platforms.contains(&t.platform)
                        && z.arch == t.arch.as_str()
                });
                if !ok {
                    continue;
                }
                true
            }
            ("qemu", BuilderKind::Qemu) if t.arch == Arch::Amd64 => true,
            _ => continue,
        };
        out.push((i, native));
    }
    out
}

fn fleet(config: &Config) -> Vec<Host> {
    let host = |kind, name: &str, slots: usize| Host {
        kind,
        name: name.to_string(),
        free: vec![0.0; slots.max(1)],
        cached: BTreeSet::new(),
        busy: 0.0,
    };
    let mut hosts: Vec<Host> = config
        .docker
        .hosts
        .iter()
        .map(|h| host("docker", &h.name, h.concurrency))
        .collect();
    hosts.extend(config.zfs.hosts.iter().map(|h| host("zfs", &h.name, 1)));
    if config.qemu.hosts.is_empty() {
        hosts.push(host("qemu", "local", 1));
    }
    hosts.extend(
        config
            .qemu
            .hosts
            .iter()
            .map(|h| host("qemu", &h.name, h.concurrency)),
    );
    hosts
}

/// Simulate one round of `targets` on `config`'s fleet at `costs`.
/// `shared_opam_stage`: whether a host's cached opam stage serves its
/// later compilers (false: every compiler pays it, as before the layer
/// cache worked).
pub fn simulate(
    config: &Config,
    targets: &[Target],
    costs: &Costs,
    shared_opam_stage: bool,
) -> Estimate {
    let mut hosts = fleet(config);
    let groups = super::group_by_tag(targets, &config.registry.namespace);
    let (mut builds, mut unroutable, mut bytes) = (0, 0, 0u64);
    for (_, ts) in super::schedule::order(&groups) {
        for t in ts {
            let arch = costs.arch.get(&t.arch).copied().unwrap_or(1.0);
            let mut best: Option<(f64, usize, usize, f64, bool)> = None;
            for (i, native) in candidates(config, &hosts, t) {
                let speed = if !native {
                    arch * costs.emulation
                } else {
                    arch
                };
                let h = &hosts[i];
                let stage = !t.is_opam_image()
                    && shared_opam_stage
                    && h.cached.contains(&(t.os.clone(), t.arch));
                let secs = speed
                    * match t.builder {
                        BuilderKind::Zfs => costs.zfs_secs,
                        BuilderKind::Qemu => costs.qemu_secs,
                        BuilderKind::Docker if t.is_opam_image() => costs.opam_stage_secs,
                        BuilderKind::Docker if stage => costs.switch_secs,
                        BuilderKind::Docker => costs.opam_stage_secs + costs.switch_secs,
                    };
                let (slot, at) = h
                    .free
                    .iter()
                    .copied()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap_or((0, 0.0));
                if best.is_none_or(|b| at + secs < b.0) {
                    best = Some((at + secs, i, slot, secs, t.builder == BuilderKind::Docker));
                }
            }
            let Some((end, i, slot, secs, docker)) = best else {
                unroutable += 1;
                continue;
            };
            let h = &mut hosts[i];
            h.free[slot] = end;
            h.busy += secs;
            if docker {
                h.cached.insert((t.os.clone(), t.arch));
            }
            builds += 1;
            bytes += costs.bytes.get(&t.builder).copied().unwrap_or(0);
        }
    }
    let mut loads = BTreeMap::new();
    let mut end = (0.0f64, String::new());
    for h in &hosts {
        let last = h.free.iter().copied().fold(0.0, f64::max);
        if last > end.0 {
            end = (last, h.kind.to_string());
        }
        loads.insert(
            h.name.clone(),
            HostLoad {
                kind: h.kind.to_string(),
                slots: h.free.len(),
                busy_secs: h.busy,
                last_end_secs: last,
            },
        );
    }
    Estimate {
        builds,
        unroutable,
        makespan_secs: end.0,
        hosts: loads,
        bottleneck: end.1,
        bytes,
        costs: costs.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Filter, expand};

    fn fleet_config() -> Config {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut c = Config::load(&crate::config::Sources {
            file: Some(root.join("kiln.fleet.toml")),
            env: vec![],
            sets: vec![],
        })
        .unwrap();
        c.versions_dir = root.join("versions");
        c.platforms_dir = root.join("platforms");
        c
    }

    fn production(c: &Config) -> Vec<Target> {
        let cat = crate::catalogue::load(&c.versions_dir, &c.platforms_dir).unwrap();
        expand(&cat, &Filter::default()).unwrap()
    }

    #[test]
    fn the_fleet_builds_the_production_round_within_a_day_with_the_shared_opam_stage() {
        let c = fleet_config();
        let ts = production(&c);
        let shared = simulate(&c, &ts, &Costs::default(), true);
        let not = simulate(&c, &ts, &Costs::default(), false);
        assert_eq!(shared.builds + shared.unroutable, ts.len());
        assert_eq!(
            shared.unroutable, 0,
            "the fleet example builds every target"
        );
        assert!(shared.makespan_secs < 24.0 * 3600.0, "{shared:#?}");
        assert!(
            not.makespan_secs > shared.makespan_secs * 1.5,
            "{} vs {}",
            not.makespan_secs,
            shared.makespan_secs
        );
        // Every slot of a host is used at most for the whole round.
        for (name, h) in &shared.hosts {
            assert!(
                h.busy_secs <= h.slots as f64 * shared.makespan_secs + 1e-6,
                "{name}: {h:?}"
            );
        }
        assert!(["docker", "zfs", "qemu"].contains(&shared.bottleneck.as_str()));
        assert_eq!(shared.bytes, shared_bytes(&ts));
    }

    fn shared_bytes(ts: &[Target]) -> u64 {
        let c = Costs::default();
        ts.iter().map(|t| c.bytes[&t.builder]).sum()
    }

    #[test]
    fn a_host_more_shortens_the_round_its_kind_bounds() {
        let mut c = fleet_config();
        let ts = production(&c);
        let before = simulate(&c, &ts, &Costs::default(), true);
        let kind = before.bottleneck.clone();
        let slowest = before
            .hosts
            .iter()
            .filter(|(_, h)| h.kind == kind)
            .max_by(|a, b| a.1.last_end_secs.total_cmp(&b.1.last_end_secs))
            .map(|(n, _)| n.clone())
            .unwrap();
        fn twin<T: Clone>(hosts: &mut Vec<T>, name: fn(&mut T) -> &mut String, of: &str) {
            let mut found = None;
            for h in hosts.iter_mut() {
                if name(h) == of {
                    found = Some(h.clone());
                }
            }
            let mut h = found.unwrap();
            name(&mut h).push_str("-twin");
            hosts.push(h);
        }
        match kind.as_str() {
            "docker" => twin(&mut c.docker.hosts, |h| &mut h.name, &slowest),
            "zfs" => twin(&mut c.zfs.hosts, |h| &mut h.name, &slowest),
            _ => twin(&mut c.qemu.hosts, |h| &mut h.name, &slowest),
        }
        let after = simulate(&c, &ts, &Costs::default(), true);
        assert!(
            after.makespan_secs < before.makespan_secs,
            "{kind} {slowest}: {} then {}",
            before.makespan_secs,
            after.makespan_secs
        );
    }
}
