//! What starts a round: the cron schedules (one per platform,
//! `daemon.schedule` for the rest), a rebuild asked for through the API,
//! and the pollers, run every `daemon.poll_secs`, that watch the
//! catalogue's fingerprint, each parent's digest and the followed
//! opam-repository ref. The first sighting only records, so a restart does
//! not rebuild everything.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::DaemonError;
use super::run::Daemon;
use crate::builders::Builders;
use crate::catalogue::Arch;
use crate::config::Config;
use crate::plan::opam_repo::{self, Move};
use crate::plan::{Filter, prepare};
use crate::registry::index::Platform;

/// Why a round starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A cron schedule: one platform's, or the default one (`None`).
    Schedule(Option<String>),
    Manual(String),
    Catalogue,
    Parent(String),
    /// The opam-repository commit in use moved: everything rebuilds
    /// (`packages` is `None`, the refresh cadence) or the images installing
    /// these packages do.
    OpamRepository {
        commit: String,
        packages: Option<BTreeSet<String>>,
    },
}

impl Trigger {
    pub fn name(&self) -> String {
        match self {
            Trigger::Schedule(None) => "schedule".into(),
            Trigger::Schedule(Some(p)) => format!("schedule: {p}"),
            Trigger::Manual(who) => format!("manual: {who}"),
            Trigger::Catalogue => "catalogue changed".into(),
            Trigger::Parent(p) => format!("parent changed: {p}"),
            Trigger::OpamRepository {
                commit,
                packages: None,
            } => format!("opam-repository moved: {commit} (refresh)"),
            Trigger::OpamRepository {
                commit,
                packages: Some(p),
            } => format!(
                "opam-repository moved: {commit} ({} changed)",
                p.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The cron schedules, each with the platforms it covers.
pub struct Schedules {
    pub(super) entries: Vec<(Option<String>, cron::Schedule)>,
}

impl Schedules {
    pub fn parse(config: &Config) -> Result<Schedules, DaemonError> {
        let parse = |field: String, s: &str| {
            cron::Schedule::from_str(s).map_err(|e| DaemonError::Schedule {
                field,
                schedule: s.to_string(),
                message: e.to_string(),
            })
        };
        let mut entries = vec![(
            None,
            parse("daemon.schedule".into(), &config.daemon.schedule)?,
        )];
        for (p, s) in &config.daemon.schedules {
            entries.push((Some(p.clone()), parse(format!("daemon.schedules.{p}"), s)?));
        }
        Ok(Schedules { entries })
    }

    pub(super) fn upcoming(&self, after: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.entries
            .iter()
            .map(|(_, s)| {
                s.after(&after)
                    .next()
                    .unwrap_or(after + chrono::Duration::days(365))
            })
            .collect()
    }
}

/// sha256 over every file of the catalogue and platform definitions.
pub fn catalogue_fingerprint(config: &Config) -> String {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut files = Vec::new();
    walk(&config.versions_dir, &mut files);
    walk(&config.platforms_dir, &mut files);
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.display().to_string().as_bytes());
        h.update([0]);
        h.update(std::fs::read(&f).unwrap_or_default());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Whether the opam-repository commit in use moves (see `plan::opam_repo`).
async fn poll_opam_repository(d: &Daemon, builders: &Builders) -> Option<Trigger> {
    let installed: BTreeSet<String> =
        match crate::catalogue::load(&d.config.versions_dir, &d.config.platforms_dir) {
            Ok(cat) => crate::plan::expand(&cat, &Filter::default())
                .unwrap_or_default()
                .iter()
                .filter(|t| builders.can_build(t))
                .flat_map(opam_repo::installed_packages)
                .collect(),
            Err(_) => BTreeSet::new(),
        };
    match opam_repo::poll(&d.config, &installed).await {
        Ok(Move::Refresh { commit }) => Some(Trigger::OpamRepository {
            commit,
            packages: None,
        }),
        Ok(Move::Packages { commit, packages }) => Some(Trigger::OpamRepository {
            commit,
            packages: Some(packages),
        }),
        Ok(Move::Unrelated { commit }) => {
            tracing::info!(%commit, "new opam-repository commit changes no package the images install: not a build input until the next refresh");
            None
        }
        Ok(Move::First { .. } | Move::Current) => None,
        Err(e) => {
            tracing::warn!(error = %e, "polling the opam-repository ref");
            None
        }
    }
}

/// One poll: record what is seen; a change from what was recorded before
/// fires a trigger. The first sighting only records.
pub(super) async fn poll(d: &Daemon) -> Vec<Trigger> {
    let mut fired = Vec::new();
    let seen = |key: &str, value: &str| -> bool {
        let before = d.queue.watch_get(key).ok().flatten();
        if before.as_deref() != Some(value) {
            let _ = d.queue.watch_set(key, value);
        }
        before.is_some_and(|b| b != value)
    };
    if seen("catalogue", &catalogue_fingerprint(&d.config)) {
        fired.push(Trigger::Catalogue);
    }
    let builders = Builders::new(&d.config);
    if d.config.plan.opam_repository_commit.is_empty() {
        fired.extend(poll_opam_repository(d, &builders).await);
    }
    let parents: BTreeSet<(String, String, Arch)> =
        match crate::catalogue::load(&d.config.versions_dir, &d.config.platforms_dir) {
            Ok(cat) => crate::plan::expand(&cat, &Filter::default())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| builders.can_build(t))
                .filter_map(|t| t.parent.clone().map(|p| (p, t.platform.clone(), t.arch)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "catalogue unreadable while polling parents");
                BTreeSet::new()
            }
        };
    for (parent, platform, arch) in parents {
        let p = Platform::for_arch(&platform, arch);
        match prepare::resolve_parent(&d.config, &parent, &p).await {
            Ok((_, digest)) => {
                if seen(&format!("parent {parent} {platform}/{arch}"), &digest) {
                    let t = Trigger::Parent(parent.clone());
                    if !fired.contains(&t) {
                        fired.push(t);
                    }
                }
            }
            Err(e) => tracing::warn!(parent, error = %e, "polling a parent image"),
        }
    }
    fired
}
