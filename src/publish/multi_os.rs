//! Multi-OS-version indexes (`windows-all-mingw-ocaml-5.5`, and
//! `windows-all-mingw` for the newest compiler): one index over the images
//! of several OS releases of one port, whose entries are all
//! `windows/amd64` and told apart by each child's `os.version`, so that
//! Docker on a Windows host pulls the image of its own build.
//!
//! They are assembled from what is published: once every OS release's
//! image of that compiler is in the lockfile (like the newest-compiler
//! aliases, the index waits for the whole set), the index is made over
//! those images' per-arch manifests, each required with the `os.version`
//! its OS release declares (`platform.yaml`: `10.0.17763`; the child's
//! config gives the revision), verified, and tagged with its name and
//! aliases. Its digest depends on the children only, so a run that changed
//! none of them moves nothing. The lockfile does not record it: its
//! entries are keyed by arch, and the index has several children of one
//! arch; its members' entries are what the gate and the API judge.

use std::collections::BTreeMap;
use std::path::Path;

use super::PublishError;
use super::lockfile::Lockfile;
use crate::model::TagId;
use crate::plan::{PlannedTag, TagKind, Target, moving_tag};
use crate::registry::index::{self, Platform};
use crate::registry::{OCI_INDEX, Registry};

/// Annotation of a multi-OS index: its members, `tag@digest`, comma-separated.
pub const MEMBERS_ANNOTATION: &str = "org.ocaml.kiln.members";

/// What one multi-OS index is made of, from the lockfile: the member
/// images' per-arch digests and the platform each must carry. `None`
/// while a member is not published with that compiler.
fn members(lock: &Lockfile, t: &PlannedTag) -> Option<(Vec<String>, Vec<Platform>, Vec<String>)> {
    let (mut sources, mut required, mut names) = (vec![], vec![], vec![]);
    for e in &t.entries {
        let tag = match &t.ocaml {
            Some(v) => moving_tag(&e.os, v, t.variant.as_deref()),
            None => crate::plan::opam_tag(&e.os),
        };
        let published = lock
            .entries
            .get(&TagId::new(t.repository.clone(), &tag).key())
            .filter(|p| p.ocaml == t.ocaml)?;
        let child = &published.arches.get(&e.arch)?.digest;
        sources.push(child.clone());
        required
            .push(Platform::for_arch(&t.platform, e.arch).with_os_version(e.os_version.as_deref()));
        names.push(format!("{tag}@{child}"));
    }
    Some((sources, required, names))
}

/// Assemble and tag every multi-OS index of the plan (`all`) whose members
/// are all published. Returns the tags moved, as `repository:tag`.
pub async fn publish_multi_os_indexes(
    reg: &Registry,
    lockfile_path: &Path,
    all: &[Target],
    namespace: &str,
) -> Result<Vec<String>, PublishError> {
    let lock = Lockfile::load(lockfile_path)?;
    let tags = crate::plan::tags(all, namespace);
    let mut moved = Vec::new();
    for t in tags.iter().filter(|t| t.kind == TagKind::MultiOs) {
        let Some((sources, required, names)) = members(&lock, t) else {
            tracing::debug!(tag = %t.name(), "multi-OS index waits for all its members");
            continue;
        };
        let mut ann = BTreeMap::from([(MEMBERS_ANNOTATION.to_string(), names.join(","))]);
        if let Some(v) = &t.ocaml {
            ann.insert("org.opencontainers.image.version".into(), v.to_string());
        }
        let idx = index::assemble(reg, &t.repository, &sources, &required, &ann).await?;
        let aliases = tags
            .iter()
            .filter(|a| a.repository == t.repository && a.alias_of.as_ref() == Some(&t.tag));
        for name in std::iter::once(&t.tag).chain(aliases.map(|a| &a.tag)) {
            let current = reg.head_manifest(&t.repository, name).await?;
            if current.map(|(d, _)| d).as_deref() != Some(idx.digest.as_str()) {
                reg.put_manifest(&t.repository, name, &idx.bytes, OCI_INDEX)
                    .await?;
                tracing::info!(tag = %name, digest = %idx.digest, members = %names.join(","), "multi-OS index tagged");
                moved.push(format!("{}:{name}", t.repository));
            }
        }
    }
    Ok(moved)
}
