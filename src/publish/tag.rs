//! Publishing one built tag: assemble the index over its arches (built or
//! reused), annotate it, and record it through [`super::publish`] with the
//! inputs behind it and why it moved.

use std::collections::BTreeMap;
use std::path::Path;

use super::lockfile::{ArchEntry, Change, Entry};
use super::{PublishError, publish};
use crate::catalogue::Arch;
use crate::model::{ArtifactKind, TagId};
use crate::plan::{Prepared, key};
use crate::registry::Registry;
use crate::registry::index::{self, Platform};

/// A tag whose every arch is pushed, ready to publish.
pub struct TagBuild<'a> {
    pub id: &'a TagId,
    pub kind: ArtifactKind,
    /// Every arch of the tag, prepared (the first names the target).
    pub prepared: &'a [Prepared],
    /// Each arch's pushed manifest digest.
    pub digests: &'a BTreeMap<Arch, String>,
    pub group_key: &'a str,
    pub immutable_tag: &'a str,
    pub opam_repository_commit: &'a str,
    /// The inputs behind the key, as `<arch>.<input>`.
    pub inputs: key::Inputs,
    /// Why the tag moves (the lockfile history's reason).
    pub reason: &'a str,
}

/// The platforms the index must carry: exactly the tag's arches.
pub fn required_platforms(prepared: &[Prepared]) -> Vec<Platform> {
    prepared
        .iter()
        .map(|p| Platform::for_arch(&p.target.platform, p.target.arch))
        .collect()
}

/// The index's annotations: version, time, opam-repository commit and the
/// tag's build key.
fn annotations(b: &TagBuild<'_>, first: &Prepared) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "org.opencontainers.image.version".to_string(),
            first.target.version.to_string(),
        ),
        (
            "org.opencontainers.image.created".to_string(),
            chrono::Utc::now().to_rfc3339(),
        ),
        (
            "org.opencontainers.image.revision".to_string(),
            b.opam_repository_commit.to_string(),
        ),
        (
            "org.opencontainers.image.source".to_string(),
            "https://github.com/ocaml/opam-repository".to_string(),
        ),
        (
            "org.ocaml.kiln.build-key".to_string(),
            b.group_key.to_string(),
        ),
    ])
}

/// The lockfile entry of a tag build whose index is `digest`.
fn entry(b: &TagBuild<'_>, first: &Prepared, digest: String) -> Entry {
    let t = &first.target;
    Entry {
        kind: b.kind,
        platform: t.platform.clone(),
        os: t.os.clone(),
        ocaml: t.version.clone(),
        variant: t.variant.clone(),
        repository: b.id.repository.clone(),
        tag: b.id.tag.clone(),
        immutable_tag: b.immutable_tag.to_string(),
        // Series-less aliases (`debian-13`, `debian`, `latest`) wait for
        // the whole tier-1 set: see `promote_newest_aliases`.
        aliases: t
            .aliases
            .iter()
            .filter(|a| a.contains("-ocaml-"))
            .cloned()
            .collect(),
        digest,
        arches: b
            .prepared
            .iter()
            .map(|p| {
                let arch = ArchEntry {
                    digest: b.digests.get(&p.target.arch).cloned().unwrap_or_default(),
                    build_key: p.key.clone(),
                    size: None,
                };
                (p.target.arch, arch)
            })
            .collect(),
        build_key: b.group_key.to_string(),
        inputs: b.inputs.clone(),
        published_at: chrono::Utc::now(),
        verified_at: None,
        history: vec![],
    }
}

/// Assemble, verify and publish the tag; returns the index digest and how
/// the lockfile changed.
pub async fn publish_tag(
    reg: &Registry,
    lockfile_path: &Path,
    b: &TagBuild<'_>,
) -> Result<(String, Change), PublishError> {
    let Some(first) = b.prepared.first() else {
        return Err(PublishError::Empty(b.id.to_string()));
    };
    let required = required_platforms(b.prepared);
    let sources: Vec<String> = b.digests.values().cloned().collect();
    let idx = index::assemble(
        reg,
        &b.id.repository,
        &sources,
        &required,
        &annotations(b, first),
    )
    .await?;
    let change = publish(
        reg,
        lockfile_path,
        entry(b, first, idx.digest.clone()),
        &required,
        b.reason,
    )
    .await?;
    Ok((idx.digest, change))
}
