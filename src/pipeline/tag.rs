//! One tag through the pipeline: prepare its arches, decide, build what
//! changed, publish. Every state change is recorded for the API; a state
//! write that fails is logged, never dropped silently.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Run;
use super::decide::{self, Decision};
use super::report::{Event, Outcome, TagReport};
use crate::builders::{BuildJob, BuildOutput};
use crate::catalogue::Arch;
use crate::lockfile::{Change, Entry};
use crate::model::{ArchState, Failure, FailureKind, TagId};
use crate::plan::{Prepared, Target, prepare};
use crate::publish::TagBuild;

/// What the arches' builds gave, ready to publish.
struct Built {
    digests: BTreeMap<Arch, String>,
    group_key: String,
    immutable: String,
    /// Every arch was adopted from its host (`host:<name>`).
    adopted: Option<String>,
}

impl Run<'_> {
    /// Record one arch's state; a failure to write is logged.
    fn record(&self, id: &TagId, arch: Arch, state: &ArchState) {
        if let Err(e) = self.state.set(id, arch, state) {
            tracing::warn!(target = %id, %arch, error = %e, "recording the build state");
        }
    }

    pub(super) async fn tag(
        &self,
        id: &TagId,
        ts: &[&Target],
        progress: &(dyn Fn(Event) + Sync),
    ) -> TagReport {
        let mut report = TagReport::new(id, ts[0]);
        let prepared = match self.prepare_arches(id, ts, &mut report).await {
            Ok(p) => p,
            Err(outcome) => {
                report.outcome = outcome;
                return report;
            }
        };
        let published = self
            .lock
            .entries
            .get(&id.key())
            .filter(|e| e.ocaml == ts[0].version)
            .cloned();
        let keys = decide::arch_keys(&prepared);
        let decision = if self.force {
            decide::forced(&keys)
        } else {
            decide::decide(published.as_ref(), &keys)
        };
        match decision {
            Decision::Unchanged { digest, arches } => {
                for p in &prepared {
                    progress(Event::Finished {
                        target: p.target.id(),
                        outcome: Outcome::Unchanged {
                            digest: digest.clone(),
                        },
                    });
                }
                report.arches = arches
                    .into_iter()
                    .map(|(a, d)| (a, Outcome::Unchanged { digest: d }))
                    .collect();
                report.outcome = Outcome::Unchanged { digest };
            }
            Decision::Build { .. } if self.dry_run => {
                for p in &prepared {
                    report.arches.insert(p.target.arch, Outcome::Planned);
                }
            }
            Decision::Build {
                group_key,
                reuse,
                build,
            } => {
                for (a, d) in &reuse {
                    report
                        .arches
                        .insert(*a, Outcome::Unchanged { digest: d.clone() });
                }
                let immutable = ts[0].immutable_tag(&group_key);
                if !self.force
                    && self
                        .adopt(
                            id,
                            &prepared,
                            &group_key,
                            &immutable,
                            published.as_ref(),
                            &mut report,
                        )
                        .await
                {
                    return report;
                }
                let built = self
                    .build_arches(id, &prepared, &build, &immutable, &mut report, progress)
                    .await;
                if let Some((mut digests, adopted)) = built {
                    digests.extend(reuse);
                    let built = Built {
                        digests,
                        group_key,
                        immutable,
                        adopted,
                    };
                    self.publish(id, &prepared, &built, published.as_ref(), &mut report)
                        .await;
                    if self.force {
                        forced_outcome(id, published.as_ref(), &mut report);
                    }
                }
            }
        }
        report
    }

    /// Prepare every arch, or say why the tag cannot be built.
    async fn prepare_arches(
        &self,
        id: &TagId,
        ts: &[&Target],
        report: &mut TagReport,
    ) -> Result<Vec<Prepared>, Outcome> {
        let mut prepared = Vec::new();
        let mut failed = None;
        for t in ts {
            let builder = self.builders.get(t.builder);
            if !builder.can_build(t) {
                let reason = format!("no configured {} builder can build {}", t.builder, t.arch);
                report.arches.insert(
                    t.arch,
                    Outcome::NoBuilder {
                        reason: reason.clone(),
                    },
                );
                failed.get_or_insert(Outcome::NoBuilder { reason });
                continue;
            }
            let vars = builder.build_vars();
            // The parent cache is shared by the run's concurrent tags; its
            // lock is fair, so tags prepare in the order they started.
            let mut parents = self.parents.lock().await;
            match prepare::prepare(self.config, t, &self.commit, &vars, &mut parents).await {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    let f = Failure::from(e);
                    report.arches.insert(t.arch, Outcome::failed(&f));
                    self.record(id, t.arch, &ArchState::failed(&f));
                    failed.get_or_insert(Outcome::failed(&f));
                }
            }
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(prepared),
        }
    }

    /// Build `arches` in parallel; their digests, or `None` when any failed
    /// (each failure is in the report and the state store).
    async fn build_arches(
        &self,
        id: &TagId,
        prepared: &[Prepared],
        arches: &[Arch],
        immutable: &str,
        report: &mut TagReport,
        progress: &(dyn Fn(Event) + Sync),
    ) -> Option<(BTreeMap<Arch, String>, Option<String>)> {
        let mut jobs = Vec::new();
        for p in prepared.iter().filter(|p| arches.contains(&p.target.arch)) {
            let log = p.target.log_file(&self.config.log_dir());
            self.record(id, p.target.arch, &ArchState::Building);
            tracing::info!(target_id = %p.target.id(), builder = %p.target.builder, key = %p.key, log = %log.display(), "build started");
            progress(Event::Started {
                target: p.target.id(),
                builder: p.target.builder.to_string(),
            });
            jobs.push(self.build_one(id, p, immutable, log));
        }
        let mut digests = BTreeMap::new();
        let mut ok = true;
        // Set while every arch built so far was adopted from its host.
        let mut adopted: Option<Option<String>> = None;
        for (p, result) in futures_util::future::join_all(jobs).await {
            let outcome = match result {
                Ok(out) => {
                    let digest = out.digest;
                    tracing::info!(target_id = %p.target.id(), %digest, adopted = ?out.adopted, "build succeeded");
                    digests.insert(p.target.arch, digest.clone());
                    adopted = match adopted {
                        None => Some(out.adopted.clone()),
                        Some(a) => Some(a.filter(|_| out.adopted.is_some())),
                    };
                    match out.adopted {
                        Some(from) => Outcome::Adopted { digest, from },
                        None => Outcome::Built { digest },
                    }
                }
                Err(f) => {
                    tracing::warn!(target_id = %p.target.id(), kind = %f.kind, error = %f.message, "build failed");
                    ok = false;
                    self.record(id, p.target.arch, &ArchState::failed(&f));
                    Outcome::failed(&f)
                }
            };
            report.arches.insert(p.target.arch, outcome.clone());
            progress(Event::Finished {
                target: p.target.id(),
                outcome,
            });
        }
        if !ok {
            report.outcome = Outcome::Failed {
                kind: report.failure_kind().unwrap_or(FailureKind::Recipe),
                error: "one or more arches failed: nothing of this tag was published".into(),
            };
            return None;
        }
        Some((digests, adopted.flatten()))
    }

    async fn build_one<'p>(
        &self,
        id: &TagId,
        p: &'p Prepared,
        immutable: &str,
        log: PathBuf,
    ) -> (&'p Prepared, Result<BuildOutput, Failure>) {
        let job = BuildJob {
            registry: &self.registry,
            prepared: p,
            repository: &id.repository,
            immutable_tag: immutable,
            log: &log,
            fresh: self.force,
        };
        let result = self.builders.get(p.target.builder).build(job).await;
        (p, result)
    }

    /// Adopt a build of this very key that is already in the registry
    /// (another factory, a lost state dir, a reverted change). Returns
    /// whether the tag is done (adopted, or failed looking).
    async fn adopt(
        &self,
        id: &TagId,
        prepared: &[Prepared],
        group_key: &str,
        immutable: &str,
        published: Option<&Entry>,
        report: &mut TagReport,
    ) -> bool {
        let inputs = decide::tag_inputs(prepared);
        let (changed, reason) = decide::change_reason(published, &inputs);
        let kind = self.artifact_kind(prepared);
        let none = BTreeMap::new();
        let b = TagBuild {
            id,
            kind,
            prepared,
            digests: &none,
            group_key,
            immutable_tag: immutable,
            opam_repository_commit: &self.commit,
            inputs,
            reason: &reason,
            adopted: Some("registry".into()),
        };
        let lockfile = self.config.lockfile_path();
        let result = match crate::publish::find_published(&self.registry, &b).await {
            Ok(None) => return false,
            Ok(Some((digest, arches))) => {
                crate::publish::adopt_tag(&self.registry, &lockfile, &b, &digest, &arches)
                    .await
                    .map(|_| (digest, arches))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((digest, arches)) => {
                tracing::info!(target = %id, %digest, immutable, "adopted from the registry: same build key, not rebuilt");
                for (a, d) in arches {
                    self.record(id, a, &ArchState::Succeeded);
                    let from = "registry".to_string();
                    report
                        .arches
                        .insert(a, Outcome::Adopted { digest: d, from });
                }
                report.changed_inputs = changed;
                report.outcome = Outcome::Adopted {
                    digest,
                    from: "registry".into(),
                };
            }
            Err(e) => {
                let f = Failure::new(e.kind(), e.to_string());
                for p in prepared {
                    self.record(id, p.target.arch, &ArchState::failed(&f));
                }
                report.outcome = Outcome::failed(&f);
            }
        }
        true
    }

    fn artifact_kind(&self, prepared: &[Prepared]) -> crate::model::ArtifactKind {
        prepared
            .first()
            .map(|p| self.builders.get(p.target.builder).artifact_kind())
            .unwrap_or(crate::model::ArtifactKind::Image)
    }

    async fn publish(
        &self,
        id: &TagId,
        prepared: &[Prepared],
        built: &Built,
        published: Option<&Entry>,
        report: &mut TagReport,
    ) {
        let inputs = decide::tag_inputs(prepared);
        let (changed, reason) = decide::change_reason(published, &inputs);
        let kind = self
            .builders
            .get(prepared[0].target.builder)
            .artifact_kind();
        let b = TagBuild {
            id,
            kind,
            prepared,
            digests: &built.digests,
            group_key: &built.group_key,
            immutable_tag: &built.immutable,
            opam_repository_commit: &self.commit,
            inputs,
            reason: &reason,
            adopted: built.adopted.clone(),
        };
        match crate::publish::publish_tag(&self.registry, &self.config.lockfile_path(), &b).await {
            Ok((digest, change)) => {
                for p in prepared {
                    self.record(id, p.target.arch, &ArchState::Succeeded);
                }
                report.changed_inputs = changed;
                report.outcome = match (change, &built.adopted) {
                    (Change::Unchanged, _) => Outcome::Unchanged { digest },
                    (_, Some(from)) => Outcome::Adopted {
                        digest,
                        from: from.clone(),
                    },
                    _ => Outcome::Built { digest },
                };
            }
            Err(e) => {
                let message = match (&e, self.force) {
                    (
                        crate::publish::PublishError::ImmutableMoved {
                            existing, wanted, ..
                        },
                        true,
                    ) => {
                        format!(
                            "forced rebuild gave {wanted}, not the published {existing}: the recipe is not reproducible; nothing moved (immutable tags never move)"
                        )
                    }
                    _ => e.to_string(),
                };
                let f = Failure::new(e.kind(), message);
                for p in prepared {
                    self.record(id, p.target.arch, &ArchState::failed(&f));
                }
                report.outcome = Outcome::failed(&f);
            }
        }
    }
}

/// What a forced rebuild gave against the published digest: the same
/// digest (a reproducible recipe), or another one, said loudly.
fn forced_outcome(id: &TagId, published: Option<&Entry>, report: &mut TagReport) {
    let digest = match &report.outcome {
        Outcome::Built { digest } | Outcome::Unchanged { digest } => digest.clone(),
        _ => return,
    };
    let note = match published {
        Some(p) if p.digest == digest => {
            "forced rebuild: the published digest again (reproducible)".to_string()
        }
        Some(p) => {
            tracing::warn!(target = %id, was = %p.digest, now = %digest, "forced rebuild gave another digest: the recipe is not reproducible");
            format!(
                "forced rebuild: {digest} differs from the published {} (not reproducible)",
                p.digest
            )
        }
        None => "forced rebuild: nothing was published before".to_string(),
    };
    report.changed_inputs = vec![note];
    report.outcome = Outcome::Built { digest };
}
