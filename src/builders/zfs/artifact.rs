//! The config of a ZFS stream artifact: what the builder writes and what
//! `kiln fetch` reads, one serde type for both. It records the tree's
//! layout (dataset, snapshot, children with their mountpoints) and the
//! incremental streams published beside the full one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::catalogue::Arch;

/// The artifact config (`application/vnd.ocaml.kiln.config.v1+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZfsArtifactConfig {
    pub os: String,
    pub architecture: Arch,
    pub layout: Layout,
    /// Incremental streams from earlier images of the same series.
    #[serde(default)]
    pub incremental: Vec<IncrementalRef>,
}

/// How the tree is laid out on the build host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// `<pool>/<prefix>/base-image/<leaf>`.
    pub dataset: String,
    pub snapshot: String,
    pub children: Vec<LayoutChild>,
    /// The profile the smoke test sourced.
    pub profile: PathBuf,
    #[serde(default)]
    pub user: Option<String>,
}

impl Layout {
    /// The tree's own name under `base-image`.
    pub fn leaf(&self) -> &str {
        self.dataset.rsplit('/').next().unwrap_or(&self.dataset)
    }
}

/// One child dataset of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutChild {
    pub name: String,
    pub mountpoint: PathBuf,
    #[serde(default)]
    pub compression: String,
    #[serde(default)]
    pub referenced: u64,
}

/// An incremental stream artifact and the image it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalRef {
    /// The earlier image's leaf name.
    pub from: String,
    pub digest: String,
    pub size: u64,
    /// Guid of each child's snapshot of the earlier image: a worker
    /// applies the stream only on exactly those snapshots.
    pub from_guids: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_reads_older_configs() {
        let c = ZfsArtifactConfig {
            os: "macos".into(),
            architecture: Arch::Arm64,
            layout: Layout {
                dataset: "kiln/kiln/base-image/macos-homebrew-ocaml-5.5.0-abc".into(),
                snapshot: "kiln".into(),
                children: vec![LayoutChild {
                    name: "home".into(),
                    mountpoint: "/Users/mac1000".into(),
                    compression: "lz4".into(),
                    referenced: 10,
                }],
                profile: "/Users/mac1000/.obuilder_profile.sh".into(),
                user: Some("mac1000".into()),
            },
            incremental: vec![],
        };
        let j = serde_json::to_value(&c).unwrap();
        assert_eq!(j["layout"]["children"][0]["mountpoint"], "/Users/mac1000");
        assert_eq!(serde_json::from_value::<ZfsArtifactConfig>(j).unwrap(), c);
        assert_eq!(c.layout.leaf(), "macos-homebrew-ocaml-5.5.0-abc");
    }
}
