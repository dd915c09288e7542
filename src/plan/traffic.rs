//! How many registry requests a full round of a plan makes, set against
//! the limits configured for them (`registry.pull_limit`, `push_limit`
//! per `limit_window_hours`), for `kiln plan`. Registries such as Docker
//! Hub count a pull per manifest GET and refuse beyond their limit for
//! hours, so a round larger than the limit is worth knowing before it
//! starts.
//!
//! A full round is every target built on engines that hold no parent yet:
//! per distinct (parent, arch), Kiln reads the parent's index to pin the
//! arch (one GET) and the engine pulls the pinned manifest (one GET); per
//! image tag, one manifest PUT per arch, the index, its immutable and its
//! moving tag; one per alias and multi-OS index; and the lockfile artifact
//! (two). HEAD requests, which Docker Hub does not count, are left out.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{PlannedTag, TagKind, Target};
use crate::catalogue::reference::ImageRef;
use crate::config;

/// A full round's registry traffic and the limits it meets.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Traffic {
    /// Manifest GETs per parent registry host.
    pub pulls: BTreeMap<String, u64>,
    pub pulls_total: u64,
    /// Manifest PUTs to Kiln's registry.
    pub pushes: u64,
    /// Per window; 0: none configured.
    pub pull_limit: u64,
    pub push_limit: u64,
    pub window_hours: u64,
    /// What exceeds its limit, in words.
    pub over: Vec<String>,
}

/// The registry host of a parent reference, Docker Hub when it names none.
fn parent_host(parent: &str) -> String {
    parent
        .parse::<ImageRef>()
        .ok()
        .and_then(|r| r.host)
        .unwrap_or_else(|| "registry-1.docker.io".to_string())
}

/// The traffic of a full round of `targets` (publishing `tags`).
pub fn traffic(targets: &[Target], tags: &[PlannedTag], cfg: &config::Registry) -> Traffic {
    let pulled: BTreeSet<(&str, String)> = targets
        .iter()
        .filter_map(|t| Some((t.parent.as_deref()?, t.arch.to_string())))
        .collect();
    let mut t = Traffic {
        pull_limit: cfg.pull_limit,
        push_limit: cfg.push_limit,
        window_hours: cfg.limit_window_hours,
        ..Traffic::default()
    };
    for (parent, _) in &pulled {
        *t.pulls.entry(parent_host(parent)).or_default() += 2;
    }
    t.pulls_total = t.pulls.values().sum();
    t.pushes = 2 + tags
        .iter()
        .map(|tag| match tag.kind {
            TagKind::Image => tag.entries.len() as u64 + 3,
            TagKind::Alias | TagKind::MultiOs => 1,
        })
        .sum::<u64>();
    let window = cfg.limit_window_hours;
    for (host, n) in &t.pulls {
        if cfg.pull_limit > 0 && *n > cfg.pull_limit {
            t.over.push(format!(
                "{n} pulls from {host} exceed registry.pull_limit = {} per {window}h: the round will wait for the limit to reset (log in for a higher limit)",
                cfg.pull_limit
            ));
        }
    }
    if cfg.push_limit > 0 && t.pushes > cfg.push_limit {
        t.over.push(format!(
            "{} pushes exceed registry.push_limit = {} per {window}h",
            t.pushes, cfg.push_limit
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_counted_per_registry_as_docker_reads_them() {
        assert_eq!(parent_host("debian:13"), "registry-1.docker.io");
        assert_eq!(parent_host("ocaml/opam:debian"), "registry-1.docker.io");
        assert_eq!(parent_host("quay.io/centos/centos:stream9"), "quay.io");
        assert_eq!(
            parent_host("127.0.0.1:5000/kiln-fixtures/busybox:latest"),
            "127.0.0.1:5000"
        );
    }
}
