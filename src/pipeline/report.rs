//! What a run reports: per tag and per arch how it ended, the totals, and
//! progress events for a display.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalogue::Arch;
use crate::model::{Failure, FailureKind, TagId};
use crate::plan::Target;

/// How one tag or arch ended.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    Built {
        digest: String,
    },
    Unchanged {
        digest: String,
    },
    /// A build of the same key was already published (its immutable tag
    /// is in the registry) or on the build host: taken, not rebuilt.
    Adopted {
        digest: String,
        from: String,
    },
    Failed {
        kind: FailureKind,
        error: String,
    },
    NoBuilder {
        reason: String,
    },
    Planned,
}

impl Outcome {
    pub fn failed(f: &Failure) -> Outcome {
        Outcome::Failed {
            kind: f.kind,
            error: f.message.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TagReport {
    pub repository: String,
    pub tag: String,
    /// The compiler version; absent for a compiler-less image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocaml: Option<String>,
    pub platform: String,
    pub os: String,
    pub arches: BTreeMap<Arch, Outcome>,
    pub outcome: Outcome,
    /// Inputs that changed since the published build, when it moved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_inputs: Vec<String>,
}

impl TagReport {
    pub fn new(id: &TagId, first: &Target) -> TagReport {
        TagReport {
            repository: id.repository.clone(),
            tag: id.tag.clone(),
            ocaml: first.version.as_ref().map(ToString::to_string),
            platform: first.platform.clone(),
            os: first.os.clone(),
            arches: BTreeMap::new(),
            outcome: Outcome::Planned,
            changed_inputs: vec![],
        }
    }

    pub fn id(&self) -> TagId {
        TagId::new(&self.repository, &self.tag)
    }

    /// The failure kind of the tag: the first failed arch's, else the
    /// tag's own.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        let of = |o: &Outcome| match o {
            Outcome::Failed { kind, .. } => Some(*kind),
            Outcome::NoBuilder { .. } => Some(FailureKind::NoBuilder),
            _ => None,
        };
        self.arches
            .values()
            .find_map(of)
            .or_else(|| of(&self.outcome))
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub tags: Vec<TagReport>,
    pub built: usize,
    pub unchanged: usize,
    pub adopted: usize,
    pub failed: usize,
    pub no_builder: usize,
    /// Moving tags and aliases the run put back at their owner's digest
    /// in the registry ([`crate::publish::reconcile`]).
    pub repaired: Vec<crate::publish::reconcile::Move>,
    /// Why the run's reconciliation failed, if it did (the next run
    /// reconciles again); the run then exits non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile_error: Option<String>,
}

impl Summary {
    /// Count a tag's outcome and keep its report.
    pub fn add(&mut self, report: TagReport) {
        match report.outcome {
            Outcome::Built { .. } => self.built += 1,
            Outcome::Unchanged { .. } => self.unchanged += 1,
            Outcome::Adopted { .. } => self.adopted += 1,
            Outcome::Failed { .. } => self.failed += 1,
            Outcome::NoBuilder { .. } => self.no_builder += 1,
            Outcome::Planned => {}
        }
        self.tags.push(report);
    }
}

/// Progress events for a display.
#[derive(Debug, Clone)]
pub enum Event {
    Planned {
        arch_builds: usize,
    },
    /// An arch build starts on a builder of this kind.
    Started {
        target: String,
        builder: String,
    },
    Finished {
        target: String,
        outcome: Outcome,
    },
}
