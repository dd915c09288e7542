//! The state of one arch of one tag, and why a build failed.
//!
//! [`ArchState`] is the one representation of "what is happening to this
//! arch": the state store keeps it, the gate reads it, the API and `kiln
//! status` show it. [`Failure`] carries a [`FailureKind`] from the builder
//! that failed to the queue (which retries by kind), the state store and
//! the API.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a build failed, which decides whether it is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// Engine, registry or host unreachable, or failing on its side:
    /// retried with exponential backoff.
    Infra,
    /// The recipe or its smoke test failed: final until an input changes
    /// or someone asks.
    Recipe,
    /// No configured builder can build it.
    NoBuilder,
    /// Kiln stopped before the build finished.
    Cancelled,
}

impl FailureKind {
    pub const ALL: [FailureKind; 4] = [
        FailureKind::Infra,
        FailureKind::Recipe,
        FailureKind::NoBuilder,
        FailureKind::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Infra => "infra",
            FailureKind::Recipe => "recipe",
            FailureKind::NoBuilder => "no-builder",
            FailureKind::Cancelled => "cancelled",
        }
    }

    /// Worth trying again without any input changing.
    pub fn is_retryable(self) -> bool {
        matches!(self, FailureKind::Infra | FailureKind::Cancelled)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailureKind {
    type Err = String;
    fn from_str(s: &str) -> Result<FailureKind, String> {
        FailureKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown failure kind {s:?}"))
    }
}

/// A failed build: its kind, the cause (printed once), and its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            log: None,
        }
    }

    pub fn infra(message: impl Into<String>) -> Failure {
        Failure::new(FailureKind::Infra, message)
    }

    pub fn recipe(message: impl Into<String>) -> Failure {
        Failure::new(FailureKind::Recipe, message)
    }

    pub fn with_log(mut self, log: impl Into<PathBuf>) -> Failure {
        self.log = Some(log.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// What is happening to one arch of one tag (published ones are in the
/// lockfile; this is everything else).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ArchState {
    Queued,
    Building,
    Succeeded,
    Failed {
        kind: FailureKind,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log: Option<String>,
    },
}

impl ArchState {
    pub fn failed(f: &Failure) -> ArchState {
        ArchState::Failed {
            kind: f.kind,
            error: f.message.clone(),
            log: f.log.as_ref().map(|l| l.display().to_string()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ArchState::Queued => "queued",
            ArchState::Building => "building",
            ArchState::Succeeded => "succeeded",
            ArchState::Failed { .. } => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_say_whether_to_retry() {
        for k in FailureKind::ALL {
            assert_eq!(k.as_str().parse::<FailureKind>().unwrap(), k);
        }
        assert!(FailureKind::Infra.is_retryable());
        assert!(!FailureKind::Recipe.is_retryable());
        assert!(!FailureKind::NoBuilder.is_retryable());
        let s = ArchState::failed(&Failure::recipe("smoke").with_log("/l"));
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["state"], "failed");
        assert_eq!(j["kind"], "recipe");
        assert_eq!(j["log"], "/l");
    }
}
