//! The order tags start in, critical path first: compiler-less opam
//! images before the compilers built on them, tags a version's
//! availability waits for (`required`) before the rest, and within a
//! level the longest first, so that the slowest builds do not start last
//! and stretch the round. Tags run concurrently (see [`in_flight`]); the
//! order decides who takes a host's free slot first (the hosts'
//! semaphores and the parent cache's lock are fair, first come first
//! served).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::catalogue::{Arch, BuilderKind};
use crate::model::TagId;
use crate::plan::Target;

/// How long one arch build of `t` takes, relative to a compiler image
/// built natively on amd64 by the Docker builder (= 100). Weights, not
/// measurements: they only order the tags of one run (the schedule
/// simulation in `benches/` measures). Their basis:
/// - riscv64: upstream's riscv64 workers are SBC-class boards, the
///   slowest of its pools (ocurrent/ocluster's pool list, ocaml-ci's
///   riscv64 jobs take the longest), and builds of it on other hosts run
///   under QEMU user emulation;
/// - s390x, ppc64le: shared cloud VMs (IBM), somewhat slower than the
///   amd64 and arm64 pools;
/// - macOS (ZFS) and OpenBSD (QEMU): one build per host at a time, and
///   OpenBSD's disk image is installed and booted twice;
/// - a compiler-less opam image is the opam stage alone: the bootstrap
///   compiler and six opam releases, longer than one switch.
pub fn weight(t: &Target) -> u32 {
    let arch = match t.arch {
        Arch::Amd64 | Arch::Arm64 | Arch::I386 => 100,
        Arch::Ppc64le | Arch::S390x => 150,
        Arch::Arm32v7 => 200,
        Arch::Riscv64 => 400,
    };
    let builder = match t.builder {
        BuilderKind::Docker => 100,
        BuilderKind::Zfs => 150,
        BuilderKind::Qemu => 250,
    };
    let stage = if t.is_opam_image() { 150 } else { 100 };
    arch * builder / 100 * stage / 100
}

/// The level a tag's targets put it on: 0 for compiler-less opam images
/// (the compilers of their OS release build on them), 1 for tags a
/// version's availability waits for, 2 for the rest.
fn level(ts: &[&Target]) -> u8 {
    if ts.iter().any(|t| t.is_opam_image()) {
        0
    } else if ts.iter().any(|t| t.required) {
        1
    } else {
        2
    }
}

/// The tags of `groups` in the order they start: by level, then the
/// longest (its slowest arch) first, then by name.
pub fn order<'a, 't>(
    groups: &'a BTreeMap<TagId, Vec<&'t Target>>,
) -> Vec<(&'a TagId, &'a [&'t Target])> {
    let mut tags: Vec<_> = groups
        .iter()
        .map(|(id, ts)| {
            let longest = ts.iter().map(|t| weight(t)).max().unwrap_or(0);
            ((level(ts), Reverse(longest)), (id, ts.as_slice()))
        })
        .collect();
    tags.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.0.cmp(b.1.0)));
    tags.into_iter().map(|(_, t)| t).collect()
}

/// How many tags a run keeps in flight: enough to fill every slot of the
/// builders it uses, plus as many as the registry takes requests at once,
/// so that unchanged tags are decided while builds hold the slots.
pub fn in_flight(build_slots: usize, registry_concurrency: usize) -> usize {
    (build_slots + registry_concurrency).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Filter, expand};

    fn targets() -> Vec<Target> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let cat = crate::catalogue::load(&root.join("versions"), &root.join("platforms")).unwrap();
        expand(&cat, &Filter::default()).unwrap()
    }

    #[test]
    fn opam_images_start_first_then_required_tags_longest_first() {
        let ts = targets();
        let groups = super::super::group_by_tag(&ts, "kiln");
        let order = order(&groups);
        assert_eq!(order.len(), groups.len());
        let levels: Vec<u8> = order.iter().map(|(_, ts)| level(ts)).collect();
        assert!(levels.is_sorted(), "levels out of order: {levels:?}");
        assert_eq!(levels.first(), Some(&0), "an opam image starts first");
        assert!(levels.contains(&1) && levels.contains(&2), "{levels:?}");
        // Within a level, the longest first.
        for w in order.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if level(a.1) == level(b.1) {
                let long = |ts: &[&Target]| ts.iter().map(|t| weight(t)).max().unwrap();
                assert!(long(a.1) >= long(b.1), "{} before {}", a.0, b.0);
            }
        }
        // A tag with a riscv64 arch starts before a required amd64-only one.
        let first_required = order.iter().find(|(_, ts)| level(ts) == 1).unwrap();
        assert!(
            first_required.1.iter().any(|t| t.arch == Arch::Riscv64),
            "{}",
            first_required.0
        );
    }

    #[test]
    fn weights_rank_emulation_prone_arches_and_single_slot_builders_higher() {
        let ts = targets();
        let find = |f: &dyn Fn(&Target) -> bool| weight(ts.iter().find(|t| f(t)).unwrap());
        let amd64 = find(&|t| {
            t.arch == Arch::Amd64 && t.builder == BuilderKind::Docker && !t.is_opam_image()
        });
        let riscv = find(&|t| t.arch == Arch::Riscv64 && !t.is_opam_image());
        let opam = find(&|t| {
            t.arch == Arch::Amd64 && t.builder == BuilderKind::Docker && t.is_opam_image()
        });
        let openbsd = find(&|t| t.builder == BuilderKind::Qemu && t.arch == Arch::Amd64);
        assert!(
            riscv > amd64 && opam > amd64 && openbsd > amd64,
            "{amd64} {riscv} {opam} {openbsd}"
        );
    }

    #[test]
    fn a_run_keeps_every_slot_busy_and_decides_beside_them() {
        assert_eq!(in_flight(1, 8), 9);
        assert_eq!(in_flight(0, 0), 2);
    }
}
