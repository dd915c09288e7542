//! Publishing one built tag: assemble the index over its arches (built or
//! reused), annotate it, and record it through [`super::publish`] with the
//! inputs behind it and why it moved.

use std::collections::BTreeMap;
use std::path::Path;

use super::lockfile::{ArchEntry, Change, ENTRY_ANNOTATION, Entry};
use super::{PublishError, publish};
use crate::catalogue::Arch;
use crate::model::{ArtifactKind, TagId};
use crate::plan::{Prepared, key};
use crate::registry::index::{self, Platform};
use crate::registry::{Registry, RegistryError};

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
    /// Where the build came from when Kiln did not make it in this run.
    pub adopted: Option<String>,
}

/// The platforms the index must carry: exactly the tag's arches.
pub fn required_platforms(prepared: &[Prepared]) -> Vec<Platform> {
    prepared
        .iter()
        .map(|p| Platform::for_arch(&p.target.platform, p.target.arch))
        .collect()
}

/// The index's annotations: version, creation date, opam-repository
/// commit and the tag's build key. The date is the images'
/// SOURCE_DATE_EPOCH, not the publication time (the lockfile keeps that),
/// so that an index over reproducible children is reproducible too.
fn annotations(b: &TagBuild<'_>, first: &Prepared) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "org.opencontainers.image.version".to_string(),
            first.target.image_version(),
        ),
        (
            "org.opencontainers.image.created".to_string(),
            crate::plan::epoch_rfc3339(first.target.source_date_epoch),
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
        // the whole tier-1 set: see `publish::owners`.
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
        adopted: b.adopted.clone(),
        repairs: vec![],
    }
}

/// Assemble, verify and publish the tag; returns the index digest and how
/// the lockfile changed. The index carries the entry's record, so the
/// registry alone can say what it is.
pub async fn publish_tag(
    reg: &Registry,
    lockfile_path: &Path,
    b: &TagBuild<'_>,
) -> Result<(String, Change), PublishError> {
    let Some(first) = b.prepared.first() else {
        return Err(PublishError::Empty(b.id.to_string()));
    };
    let required = required_platforms(b.prepared);
    let mut e = entry(b, first, String::new());
    let mut ann = annotations(b, first);
    ann.insert(ENTRY_ANNOTATION.to_string(), record_json(&e)?);
    let sources: Vec<String> = b.digests.values().cloned().collect();
    let idx = index::assemble(reg, &b.id.repository, &sources, &required, &ann).await?;
    e.digest = idx.digest.clone();
    let change = publish(reg, lockfile_path, e, &required, b.reason).await?;
    Ok((idx.digest, change))
}

fn record_json(e: &Entry) -> Result<String, PublishError> {
    serde_json::to_string(&e.record())
        .map_err(|err| PublishError::Registry(RegistryError::Invalid(err.to_string())))
}

/// A build of this tag's key already in the registry, under its immutable
/// tag: its index digest and per-arch digests, once it is checked to carry
/// the same build key and to verify. `None` when the tag is not there.
pub async fn find_published(
    reg: &Registry,
    b: &TagBuild<'_>,
) -> Result<Option<(String, BTreeMap<Arch, String>)>, PublishError> {
    let repo = &b.id.repository;
    let Some((digest, _)) = reg.head_manifest(repo, b.immutable_tag).await? else {
        return Ok(None);
    };
    let index = reg.get_manifest(repo, &digest).await?.json()?;
    let key = index["annotations"]["org.ocaml.kiln.build-key"].as_str();
    if key != Some(b.group_key) {
        return Err(PublishError::KeyMismatch {
            reference: format!("{repo}:{}", b.immutable_tag),
            found: key.unwrap_or("none").to_string(),
            wanted: b.group_key.to_string(),
        });
    }
    let children = index::verify(reg, repo, &digest, &required_platforms(b.prepared)).await?;
    let arches = children
        .into_iter()
        .filter_map(|(platform, d)| Some((Platform::parse(&platform)?.arch()?, d)))
        .collect();
    Ok(Some((digest, arches)))
}

/// Publish a build of the same key found in the registry (see
/// [`find_published`]) instead of building it again: the moving tag, the
/// aliases and the lockfile follow it, recorded as adopted.
pub async fn adopt_tag(
    reg: &Registry,
    lockfile_path: &Path,
    b: &TagBuild<'_>,
    digest: &str,
    arch_digests: &BTreeMap<Arch, String>,
) -> Result<Change, PublishError> {
    let Some(first) = b.prepared.first() else {
        return Err(PublishError::Empty(b.id.to_string()));
    };
    let with_digests = TagBuild {
        digests: arch_digests,
        inputs: b.inputs.clone(),
        adopted: Some("registry".into()),
        ..*b
    };
    let e = entry(&with_digests, first, digest.to_string());
    let reason = format!(
        "{}; adopted {} from the registry",
        b.reason, b.immutable_tag
    );
    publish(
        reg,
        lockfile_path,
        e,
        &required_platforms(b.prepared),
        &reason,
    )
    .await
}
