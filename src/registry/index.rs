//! Multi-arch index assembly with the semantics of
//! `docker buildx imagetools create`, done natively.
//!
//! Sources may be single manifests or indexes (what BuildKit produces once
//! it attaches provenance); platform entries are taken from them;
//! attestation manifests (platform `unknown/unknown`) are kept as
//! attestations and never counted as a platform. A Windows child carries
//! its build (`os.version`, from its config) into its entry, so one index
//! may hold several `windows/amd64` images told apart by it (a multi-OS
//! index, `windows-all-mingw`); a required platform naming an `os.version`
//! (`10.0.17763`) takes the child of that build, any revision
//! (`10.0.17763.5696`). The index is pushed by
//! digest, read back and checked — every child present, platforms exactly
//! the required set — before anything may tag it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::catalogue::Arch;

use super::{DOCKER_LIST, OCI_INDEX, Registry, RegistryError};

/// An OCI platform, in the registry's terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// OCI `os.version`: Windows builds (`10.0.17763.5696`).
    pub os_version: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        if let Some(v) = &self.os_version {
            write!(f, "@{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The OCI platform of `arch` on `os` (the mapping is `Arch::oci`).
    pub fn for_arch(os: &str, arch: Arch) -> Platform {
        let (architecture, variant) = arch.oci();
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
        }
    }

    /// The same platform on OS build `os_version` (Windows).
    pub fn with_os_version(mut self, os_version: Option<&str>) -> Platform {
        self.os_version = os_version.map(str::to_string);
        self
    }

    /// Parse `os/architecture[/variant][@os.version]` (what `Display` writes).
    pub fn parse(s: &str) -> Option<Platform> {
        let (s, os_version) = match s.split_once('@') {
            Some((p, v)) => (p, Some(v.to_string())),
            None => (s, None),
        };
        let mut parts = s.splitn(3, '/');
        Some(Platform {
            os: parts.next()?.to_string(),
            architecture: parts.next()?.to_string(),
            variant: parts.next().map(str::to_string),
            os_version,
        })
    }

    /// The Kiln arch this platform names, if any.
    pub fn arch(&self) -> Option<Arch> {
        Arch::from_oci(&self.architecture, self.variant.as_deref())
    }

    /// The platform object of an index entry or image config.
    pub fn from_json(v: &Value) -> Option<Platform> {
        Some(Platform {
            os: v["os"].as_str()?.to_string(),
            architecture: v["architecture"].as_str()?.to_string(),
            variant: v["variant"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            os_version: v["os.version"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        })
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if let Some(version) = &self.os_version {
            v["os.version"] = json!(version);
        }
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }

    /// Does a child of this platform serve `required`? Same os,
    /// architecture and variant; and when `required` names an OS build,
    /// that build (`10.0.17763` is served by `10.0.17763.5696`).
    pub fn serves(&self, required: &Platform) -> bool {
        let (a, b) = (self.normalized(), required.normalized());
        a.os == b.os
            && a.architecture == b.architecture
            && a.variant == b.variant
            && b.os_version.as_deref().is_none_or(|want| {
                a.os_version.as_deref().is_some_and(|have| {
                    have == want
                        || have
                            .strip_prefix(want)
                            .is_some_and(|rest| rest.starts_with('.'))
                })
            })
    }

    fn is_unknown(&self) -> bool {
        self.os == "unknown" && self.architecture == "unknown"
    }

    /// `arm64` and `arm64/v8` are the same platform.
    fn normalized(&self) -> Platform {
        let mut p = self.clone();
        if p.architecture == "arm64" && p.variant.as_deref() == Some("v8") {
            p.variant = None;
        }
        p
    }
}

/// The digest of the child of index `idx` (its JSON) for `platform`.
pub fn child_for(idx: &Value, platform: &Platform) -> Option<String> {
    idx["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            Platform::from_json(&m["platform"]).is_some_and(|p| {
                p.os == platform.os
                    && p.architecture == platform.architecture
                    && (platform.variant.is_none() || p.variant == platform.variant)
            })
        })
        .and_then(|m| m["digest"].as_str())
        .map(str::to_string)
}

/// One entry of an assembled index.
#[derive(Debug, Clone)]
struct Child {
    media_type: String,
    digest: String,
    size: u64,
    platform: Platform,
    annotations: Option<Value>,
    attestation: bool,
}

/// The outcome of an assembly.
#[derive(Debug, Clone)]
pub struct Assembled {
    pub digest: String,
    pub bytes: Vec<u8>,
    /// Platform → child manifest digest (attestations excluded).
    pub platforms: BTreeMap<String, String>,
    pub attestations: usize,
}

async fn children_of(
    reg: &Registry,
    repo: &str,
    digest: &str,
) -> Result<Vec<Child>, RegistryError> {
    let m = reg.get_manifest(repo, digest).await?;
    let v = m.json()?;
    let media_type = v["mediaType"].as_str().unwrap_or(&m.media_type).to_string();
    if media_type == OCI_INDEX || media_type == DOCKER_LIST || v["manifests"].is_array() {
        let mut out = Vec::new();
        for e in v["manifests"].as_array().into_iter().flatten() {
            let platform = Platform::from_json(&e["platform"]).unwrap_or(Platform {
                os: "unknown".into(),
                architecture: "unknown".into(),
                variant: None,
                os_version: None,
            });
            let attestation = platform.is_unknown()
                || e["annotations"]["vnd.docker.reference.type"].as_str()
                    == Some("attestation-manifest");
            out.push(Child {
                media_type: e["mediaType"].as_str().unwrap_or("").to_string(),
                digest: e["digest"].as_str().unwrap_or("").to_string(),
                size: e["size"].as_u64().unwrap_or(0),
                platform,
                annotations: e.get("annotations").cloned(),
                attestation,
            });
        }
        Ok(out)
    } else {
        // A single manifest: its platform comes from its config blob.
        let cfg_digest = v["config"]["digest"].as_str().ok_or_else(|| {
            RegistryError::Invalid(format!("manifest {repo}@{digest} has no config"))
        })?;
        let cfg: Value = serde_json::from_slice(&reg.pull_blob(repo, cfg_digest).await?)
            .map_err(|e| RegistryError::Invalid(format!("config of {repo}@{digest}: {e}")))?;
        let platform = Platform::from_json(&cfg).ok_or_else(|| {
            RegistryError::Invalid(format!(
                "config of {repo}@{digest} names no os/architecture"
            ))
        })?;
        Ok(vec![Child {
            media_type,
            digest: m.digest.clone(),
            size: m.bytes.len() as u64,
            platform,
            annotations: None,
            attestation: false,
        }])
    }
}

/// Assemble, push by digest, read back and verify an index over `sources`
/// (manifest or index digests in `repo`). `required` is the exact set of
/// platforms the index must carry.
pub async fn assemble(
    reg: &Registry,
    repo: &str,
    sources: &[String],
    required: &[Platform],
    annotations: &BTreeMap<String, String>,
) -> Result<Assembled, RegistryError> {
    let mut children: Vec<Child> = Vec::new();
    for s in sources {
        children.extend(children_of(reg, repo, s).await?);
    }
    let (index, attestations) = index_document(repo, &children, required, annotations)?;
    let bytes = serde_json::to_vec(&index).map_err(|e| RegistryError::Invalid(e.to_string()))?;
    let digest = super::sha256_digest(&bytes);
    reg.put_manifest(repo, &digest, &bytes, OCI_INDEX).await?;
    // Read back and verify before anyone may tag it.
    let back = reg.get_manifest(repo, &digest).await?;
    if back.bytes != bytes {
        return Err(RegistryError::Invalid(format!(
            "index {repo}@{digest} read back differently"
        )));
    }
    let platforms = verify(reg, repo, &digest, required).await?;
    Ok(Assembled {
        digest,
        bytes,
        platforms,
        attestations,
    })
}

/// The children serving `required`, one per required platform (in
/// platform order), when they are exactly the required set: none missing,
/// none left over, none ambiguous. Otherwise why not.
fn match_required<'a>(
    children: &'a [Child],
    required: &[Platform],
) -> Result<Vec<&'a Child>, String> {
    let mut by_platform: BTreeMap<Platform, &Child> = BTreeMap::new();
    for c in children.iter().filter(|c| !c.attestation) {
        if let Some(prev) = by_platform.insert(c.platform.normalized(), c)
            && prev.digest != c.digest
        {
            return Err(format!(
                "platform {} given twice ({} and {})",
                c.platform, prev.digest, c.digest
            ));
        }
    }
    let want: std::collections::BTreeSet<Platform> =
        required.iter().map(Platform::normalized).collect();
    let mut chosen: BTreeMap<Platform, &Child> = BTreeMap::new();
    let mut missing = Vec::new();
    for r in &want {
        let serving: Vec<&&Child> = by_platform
            .values()
            .filter(|c| c.platform.serves(r))
            .collect();
        match serving.as_slice() {
            [] => missing.push(r.to_string()),
            [c] => {
                chosen.insert(c.platform.normalized(), c);
            }
            [a, b, ..] => {
                return Err(format!(
                    "platform {r} given twice ({} {} and {} {})",
                    a.platform, a.digest, b.platform, b.digest
                ));
            }
        }
    }
    let extra: Vec<String> = by_platform
        .keys()
        .filter(|p| !chosen.contains_key(p))
        .map(Platform::to_string)
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(format!(
            "is not the required set: missing [{}], unexpected [{}]",
            missing.join(", "),
            extra.join(", ")
        ));
    }
    Ok(chosen.into_values().collect())
}

/// The index over `children`: exactly one manifest per required platform
/// (`arm64/v8` is `arm64`; a Windows entry carries its `os.version`), then
/// every attestation with its annotations. Returns the document and the
/// number of attestations it carries.
fn index_document(
    repo: &str,
    children: &[Child],
    required: &[Platform],
    annotations: &BTreeMap<String, String>,
) -> Result<(Value, usize), RegistryError> {
    let chosen = match_required(children, required)
        .map_err(|why| RegistryError::Invalid(format!("index for {repo} {why}")))?;
    let mut manifests: Vec<Value> = chosen
        .iter()
        .map(|c| {
            json!({"mediaType": c.media_type, "digest": c.digest, "size": c.size, "platform": c.platform.to_json()})
        })
        .collect();
    let attestations: Vec<&Child> = children.iter().filter(|c| c.attestation).collect();
    for a in &attestations {
        let mut e = json!({"mediaType": a.media_type, "digest": a.digest, "size": a.size, "platform": a.platform.to_json()});
        if let Some(ann) = &a.annotations {
            e["annotations"] = ann.clone();
        }
        manifests.push(e);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
        "annotations": annotations,
    });
    Ok((index, attestations.len()))
}

/// Check a pushed index: every child present, platforms exactly `required`.
/// Returns platform (with its `os.version`, if any) → child digest.
pub async fn verify(
    reg: &Registry,
    repo: &str,
    digest: &str,
    required: &[Platform],
) -> Result<BTreeMap<String, String>, RegistryError> {
    let children = children_of(reg, repo, digest).await?;
    for c in &children {
        if reg.head_manifest(repo, &c.digest).await?.is_none() {
            return Err(RegistryError::Invalid(format!(
                "index {repo}@{digest}: child {} ({}) is missing",
                c.digest, c.platform
            )));
        }
    }
    let chosen = match_required(&children, required)
        .map_err(|why| RegistryError::Invalid(format!("index {repo}@{digest} {why}")))?;
    Ok(chosen
        .into_iter()
        .map(|c| (c.platform.normalized().to_string(), c.digest.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(platform: &str, digest: &str, attestation: bool) -> Child {
        Child {
            media_type: super::super::OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 10,
            platform: Platform::parse(platform).unwrap(),
            annotations: attestation
                .then(|| json!({"vnd.docker.reference.type": "attestation-manifest"})),
            attestation,
        }
    }

    fn linux(arches: &[Arch]) -> Vec<Platform> {
        arches
            .iter()
            .map(|a| Platform::for_arch("linux", *a))
            .collect()
    }

    #[test]
    fn an_index_holds_exactly_the_required_platforms_then_attestations() {
        let children = [
            child("linux/amd64", "sha256:a", false),
            child("linux/arm64/v8", "sha256:b", false),
            child("unknown/unknown", "sha256:c", true),
        ];
        let ann = BTreeMap::from([("org.ocaml.kiln.build-key".to_string(), "k".to_string())]);
        let (idx, attestations) =
            index_document("r", &children, &linux(&[Arch::Amd64, Arch::Arm64]), &ann).unwrap();
        assert_eq!(attestations, 1);
        let m = idx["manifests"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0]["platform"]["architecture"], "amd64");
        assert_eq!(m[1]["platform"]["architecture"], "arm64");
        assert_eq!(
            m[2]["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        assert_eq!(idx["annotations"]["org.ocaml.kiln.build-key"], "k");
        assert_eq!(idx["mediaType"], OCI_INDEX);
    }

    #[test]
    fn a_missing_or_extra_platform_is_refused_naming_both() {
        let children = [
            child("linux/amd64", "sha256:a", false),
            child("linux/s390x", "sha256:s", false),
        ];
        let e = index_document(
            "r",
            &children,
            &linux(&[Arch::Amd64, Arch::Arm32v7]),
            &BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing [linux/arm/v7]"), "{e}");
        assert!(e.contains("unexpected [linux/s390x]"), "{e}");
    }

    #[test]
    fn one_platform_given_twice_is_refused() {
        let children = [
            child("linux/amd64", "sha256:a", false),
            child("linux/amd64", "sha256:z", false),
        ];
        let e = index_document("r", &children, &linux(&[Arch::Amd64]), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
    }

    fn windows(build: &str, digest: &str) -> Child {
        let mut c = child("windows/amd64", digest, false);
        c.platform.os_version = Some(build.into());
        c
    }

    #[test]
    fn a_multi_os_index_has_one_entry_per_windows_build_with_its_os_version() {
        let children = [
            windows("10.0.26100.4061", "sha256:w25"),
            windows("10.0.17763.5696", "sha256:w19"),
            windows("10.0.20348.2402", "sha256:w22"),
        ];
        let required: Vec<Platform> = ["10.0.17763", "10.0.20348", "10.0.26100"]
            .iter()
            .map(|v| Platform::for_arch("windows", Arch::Amd64).with_os_version(Some(v)))
            .collect();
        let (idx, _) = index_document("r", &children, &required, &BTreeMap::new()).unwrap();
        let entries: Vec<(&str, &str)> = idx["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["platform"]["os"], "windows");
                assert_eq!(m["platform"]["architecture"], "amd64");
                (
                    m["platform"]["os.version"].as_str().unwrap(),
                    m["digest"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("10.0.17763.5696", "sha256:w19"),
                ("10.0.20348.2402", "sha256:w22"),
                ("10.0.26100.4061", "sha256:w25")
            ]
        );
        // A per-release index carries its child's build as well.
        let one = [Platform::for_arch("windows", Arch::Amd64)];
        let (idx, _) = index_document("r", &children[1..2], &one, &BTreeMap::new()).unwrap();
        assert_eq!(
            idx["manifests"][0]["platform"]["os.version"],
            "10.0.17763.5696"
        );
        // A build missing, or one the index must not hold, is named.
        let e = index_document("r", &children[..2], &required, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing [windows/amd64@10.0.20348]"), "{e}");
        let e = index_document("r", &children, &required[..2], &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unexpected [windows/amd64@10.0.26100.4061]"),
            "{e}"
        );
        // Two images of one build cannot both be its entry.
        let twice = [
            windows("10.0.17763.5696", "sha256:a"),
            windows("10.0.17763.6000", "sha256:b"),
        ];
        let e = index_document("r", &twice, &required[..1], &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        // 10.0.1 is not a revision of 10.0.17763.
        let other = windows("10.0.177630.1", "sha256:c");
        assert!(!other.platform.serves(&required[0]));
    }

    #[test]
    fn platforms_print_and_parse_with_their_os_version() {
        let p = Platform::for_arch("windows", Arch::Amd64).with_os_version(Some("10.0.17763.5696"));
        assert_eq!(p.to_string(), "windows/amd64@10.0.17763.5696");
        assert_eq!(Platform::parse(&p.to_string()), Some(p.clone()));
        assert_eq!(p.arch(), Some(Arch::Amd64));
        let arm = Platform::for_arch("linux", Arch::Arm32v7);
        assert_eq!(Platform::parse(&arm.to_string()), Some(arm));
    }

    #[test]
    fn the_child_for_a_platform_is_found_by_os_and_arch() {
        let idx = json!({"manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:v7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        ]});
        let arm = Platform::for_arch("linux", Arch::Arm32v7);
        assert_eq!(child_for(&idx, &arm).as_deref(), Some("sha256:v7"));
        let s390 = Platform::for_arch("linux", Arch::S390x);
        assert_eq!(child_for(&idx, &s390), None);
    }
}
