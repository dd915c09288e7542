//! Domain types shared across layers: what a tag is called, the state of
//! one arch of a tag, why a build failed, and what the gate requires. The
//! API, the daemon, the pipeline and the CLI all speak these types, so
//! they live low (above `catalogue`, below everything that acts).

pub mod rebuild;
pub mod requirement;
pub mod state;
pub mod tag;

pub use requirement::{Jobs, Requirement};
pub use state::{ArchState, Failure, FailureKind};
pub use tag::{PinnedRef, TagId, repository};

use serde::{Deserialize, Serialize};

/// What kind of artifact a tag names (one per builder kind).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A container image index (Linux, Windows).
    Image,
    /// A `zfs send` stream of a base dataset tree (macOS, FreeBSD).
    ZfsStream,
    /// A compacted qcow2 disk (OpenBSD).
    Qcow2,
}
