//! Expanding the catalogue into targets, tags, build keys and the
//! requirements the availability gate checks.
//!
//! A [`Target`] is one (platform, OS release, compiler version, variant,
//! arch). Targets sharing everything but the arch share one moving tag
//! (one multi-arch index); [`requirements`] groups them so, [`tags`]
//! lists every tag with its aliases. [`validate`] renders every recipe for
//! every target the catalogue can produce.
//!
//! Names follow docker-base-images (src/tag.ml, src/pipeline.ml): a tag is
//! `<os>-ocaml-<compiler>` with `<compiler>` from
//! [`OcamlVersion::tag_part`]; an OS release's aliases name the same image
//! (`debian-ocaml-5.5`); the newest release's plain compiler is also
//! `<os>`, `<alias>` (where the platform has `bare_aliases`) and `latest`
//! (the default OS release).

#[cfg(test)]
pub(crate) mod fixture;
pub mod key;
pub mod opam_repo;
pub mod pending;
pub mod prepare;
mod uses;
pub use uses::Uses;
mod filter;
pub mod recipe_vars;
pub mod render;
pub mod tags;
pub mod template;
pub mod traffic;
use filter::matches;
pub use filter::{Filter, PLAIN_VARIANT};
pub mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::catalogue::{Arch, BuilderKind, Catalogue, OcamlVersion, OsRelease, Platform, Status};
use crate::model::{Requirement, TagId, repository};

pub use prepare::Prepared;
pub use tags::{PlannedTag, TagEntry, TagKind, tags};
pub use validate::{RecipeProblem, ValidateError, Validation, validate};

/// The opam release the recipes install (part of every build key through
/// the rendered recipe).
pub const OPAM_VERSION: &str = "2.4.1";

/// Variables a builder supplies at build time, on top of a target's own.
pub const BUILD_TIME_VARS: &[&str] = &[
    "parent",
    "parent_digest",
    "opam_repository_commit",
    "http_base",
    "http_host",
    "ssh_user",
    "ssh_public_key",
    "sources_url",
];

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Target {
    pub platform: String,
    pub os: String,
    pub distro: String,
    pub tier: u8,
    /// The compiler of the image's switch; `None` for the compiler-less
    /// `<os>-opam` image (see [`Target::is_opam_image`]).
    pub version: Option<OcamlVersion>,
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub arch: Arch,
    /// Native-code compiler on this arch (else bytecode only).
    pub native: bool,
    pub builder: BuilderKind,
    /// Absolute paths of the recipe files.
    pub recipes: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub vars: BTreeMap<String, String>,
    pub opam_packages: Vec<String>,
    pub repository: String,
    /// The moving tag this target's output goes into.
    pub tag: String,
    pub aliases: Vec<String>,
    /// Required for the version to be available on this OS release.
    pub required: bool,
    /// The OS release declares its recipes deterministic.
    pub reproducible: bool,
    /// Every timestamp of the output is clamped to this (seconds since the
    /// epoch): see [`source_date_epoch`].
    pub source_date_epoch: u64,
    /// Windows: the `os.version` of this target's index entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// The multi-OS-version index this target is also an entry of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_os: Option<IndexTag>,
    /// What the recipes take from the source mirror (`{{sources_url}}`).
    #[serde(skip_serializing_if = "Uses::is_empty")]
    pub uses: Uses,
    /// The OS release's own smoke checks, rendered with `vars`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub smoke: Vec<crate::catalogue::platform::Smoke>,
}

/// A tag with its aliases (a multi-OS-version index: `windows-all-mingw-ocaml-5.5`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IndexTag {
    pub tag: String,
    pub aliases: Vec<String>,
}

impl Target {
    /// The compiler-less image of its OS release (`debian-13-opam`):
    /// opam and the opam-repository, no switch; built from the recipe's
    /// `opam` stage alone ([`OPAM_STAGE`]).
    pub fn is_opam_image(&self) -> bool {
        self.version.is_none()
    }

    /// What the image holds, as names spell it: `5.5.0[+flambda]`, or
    /// `opam` for the compiler-less image.
    pub fn content(&self) -> String {
        match (&self.version, &self.variant) {
            (None, _) => OPAM_STAGE.to_string(),
            (Some(v), Some(var)) => format!("{v}+{var}"),
            (Some(v), None) => v.to_string(),
        }
    }

    /// The image's name part after the OS release: `ocaml-5.5.0`, or
    /// `opam` for the compiler-less image (artifact and dataset names).
    pub fn ocaml_name(&self) -> String {
        match &self.version {
            Some(v) => format!("ocaml-{v}"),
            None => OPAM_STAGE.to_string(),
        }
    }

    /// What `org.opencontainers.image.version` says of the image: its
    /// compiler version, or for the compiler-less image the opam it holds
    /// (`opam-2.4.1`).
    pub fn image_version(&self) -> String {
        match &self.version {
            Some(v) => v.to_string(),
            None => format!(
                "{OPAM_STAGE}-{}",
                self.vars.get("opam_version").map_or("", String::as_str)
            ),
        }
    }

    /// Stable id: `linux/debian-13/5.5.0[+flambda]/amd64`,
    /// `linux/debian-13/opam/amd64`.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.platform,
            self.os,
            self.content(),
            self.arch
        )
    }

    /// The tag this target's output goes into, in `namespace`.
    pub fn tag_id(&self, namespace: &str) -> TagId {
        TagId::new(repository(namespace, &self.repository), &self.tag)
    }

    /// Where this target's build log goes, under `log_dir`.
    pub fn log_file(&self, log_dir: &std::path::Path) -> PathBuf {
        log_dir.join(format!("{}.log", self.id().replace('/', "_")))
    }

    /// What `ocaml -version` prints in this target's image (its first
    /// line holds it); `None` for the compiler-less image.
    pub fn expected_ocaml(&self) -> Option<String> {
        self.version
            .as_ref()
            .map(|v| format!("version {}", v.release()))
    }

    /// The immutable tag of a build of this target's tag group:
    /// `debian-13-ocaml-5.5.0[-flambda]-<12 hex>`, `debian-13-opam-<12 hex>`.
    pub fn immutable_tag(&self, build_key: &str) -> String {
        let short = build_key.strip_prefix("sha256:").unwrap_or(build_key);
        let short = &short[..12.min(short.len())];
        match (&self.version, &self.variant) {
            (None, _) => format!("{}-{OPAM_STAGE}-{short}", self.os),
            (Some(v), Some(var)) => {
                format!("{}-ocaml-{v}-{}-{short}", self.os, var.replace('+', "-"))
            }
            (Some(v), None) => format!("{}-ocaml-{v}-{short}", self.os),
        }
    }
}

/// The recipe stage a compiler-less image is built from, and its tag's
/// suffix (`debian-13-opam`): docker-base-images' base image.
pub const OPAM_STAGE: &str = "opam";

/// The text of recipe `index` as target `t` builds it: the
/// whole file, except a compiler-less image's Dockerfile (its first
/// recipe), which is built through its `opam` stage only.
pub fn recipe_source<'a>(t: &Target, index: usize, text: &'a str) -> Result<&'a str, String> {
    if !t.is_opam_image() || index > 0 {
        return Ok(text);
    }
    template::through_stage(text, OPAM_STAGE).ok_or_else(|| {
        format!(
            "no `FROM … AS {OPAM_STAGE}` stage, which the compiler-less image {} is built from (policy.yaml: opam_image)",
            t.tag
        )
    })
}

/// The tag of an OS release's compiler-less image: `debian-13-opam`.
pub fn opam_tag(os: &str) -> String {
    format!("{os}-{OPAM_STAGE}")
}

/// The moving tag of (os, version, variant): `debian-13-ocaml-5.5[-flambda]`,
/// `debian-13-ocaml-5.5-beta1-flambda-fp` (docker-base-images' `Tag.v`).
pub fn moving_tag(os: &str, v: &OcamlVersion, variant: Option<&str>) -> String {
    format!("{os}-ocaml-{}", v.with_extra(variant).tag_part())
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--version {0}")]
    Version(String),
    #[error("{path}: versions: {message}")]
    Policy { path: PathBuf, message: String },
}

/// Every target the catalogue and policies call for, filtered.
pub fn expand(cat: &Catalogue, filter: &Filter) -> Result<Vec<Target>, PlanError> {
    let wanted: Option<Vec<OcamlVersion>> = match &filter.version {
        Some(v) => Some(cat.select(v).map_err(PlanError::Version)?),
        None => None,
    };
    let mut out = Vec::new();
    for pf in &cat.platforms {
        if !matches(&filter.platform, &pf.platform) {
            continue;
        }
        // An explicit --version builds it even when the policy would not.
        let versions = match &wanted {
            Some(w) => w.clone(),
            None => policy_versions(cat, pf)?,
        };
        for os in &pf.releases {
            if let Some(f) = &filter.os
                && *f != os.id
                && !os.aliases.contains(f)
            {
                continue;
            }
            // The compiler-less image has no version or variant: an
            // explicit --version or --variant never selects it.
            if pf.policy.opam_image && wanted.is_none() && filter.variant.is_none() {
                expand_opam_image(cat, pf, os, filter, &mut out);
            }
            for v in &versions {
                expand_release(cat, pf, os, v, filter, &mut out);
            }
        }
    }
    Ok(out)
}

/// The versions a platform's policy selects, in policy order, once each.
fn policy_versions(cat: &Catalogue, pf: &Platform) -> Result<Vec<OcamlVersion>, PlanError> {
    let mut versions: Vec<OcamlVersion> = Vec::new();
    for sel in &pf.policy.versions {
        let vs = cat.select(sel).map_err(|message| PlanError::Policy {
            path: pf.dir.join("policy.yaml"),
            message,
        })?;
        for v in vs {
            if !versions.contains(&v) {
                versions.push(v);
            }
        }
    }
    Ok(versions)
}

/// The targets of an OS release's compiler-less image (`<os>-opam`), on
/// every arch of the OS release: no aliases (docker-base-images pushes
/// none), never required by the gate, which requires compilers.
fn expand_opam_image(
    cat: &Catalogue,
    pf: &Platform,
    os: &OsRelease,
    filter: &Filter,
    out: &mut Vec<Target>,
) {
    let tag = opam_tag(&os.id);
    if os.deprecated || filter.tag.as_ref().is_some_and(|f| *f != tag) {
        return;
    }
    for arch in os.arches.iter().filter_map(|a| a.parse::<Arch>().ok()) {
        if filter.arch.is_some_and(|f| f != arch) {
            continue;
        }
        out.push(Target {
            platform: pf.platform.clone(),
            os: os.id.clone(),
            distro: os.distro.clone(),
            tier: os.tier,
            version: None,
            status: None,
            variant: None,
            arch,
            native: false,
            builder: pf.builder,
            recipes: os.recipes.iter().map(|r| pf.dir.join(r)).collect(),
            parent: os.parent.clone(),
            vars: recipe_vars::base_vars(os, arch),
            opam_packages: vec![],
            repository: pf.repository.clone(),
            tag: tag.clone(),
            aliases: vec![],
            required: false,
            reproducible: os.reproducible,
            source_date_epoch: 0,
            os_version: os.os_version.clone(),
            multi_os: None,
            // What the opam stage takes (no compiler archives: no packages).
            uses: Uses::of_recipes(
                cat,
                &os.recipes
                    .iter()
                    .map(|r| pf.dir.join(r))
                    .collect::<Vec<_>>(),
                &BTreeMap::new(),
            ),
            // The OS release's own checks are about its compilers.
            smoke: vec![],
        });
    }
}

/// The targets of one compiler release on one OS release: the default
/// compiler and each variant the policy asks for (on the tiers it builds
/// variants on), on every arch the OS release, the release and the
/// variant's rules allow.
fn expand_release(
    cat: &Catalogue,
    pf: &Platform,
    os: &OsRelease,
    v: &OcamlVersion,
    filter: &Filter,
    out: &mut Vec<Target>,
) {
    if os.refuses(v).is_some() {
        return;
    }
    let (Some(series), Some(release)) = (cat.series_of(v), cat.release(v)) else {
        return;
    };
    let newest = cat.latest() == Some(v);
    let with_variants = pf.policy.variant_tiers.contains(&os.tier);
    let variants = std::iter::once(None).chain(
        pf.policy
            .variants
            .iter()
            .filter(|_| with_variants)
            .map(|var| Some(var.as_str())),
    );
    for variant in variants {
        let tag = moving_tag(&os.id, v, variant);
        if filter.tag.as_ref().is_some_and(|f| *f != tag) || !filter.selects_variant(variant) {
            continue;
        }
        let aliases = aliases(pf, os, v, variant, newest);
        let multi_os = os.multi_os_index.as_ref().map(|g| IndexTag {
            tag: moving_tag(g, v, variant),
            aliases: if variant.is_none() && newest {
                vec![g.clone()]
            } else {
                vec![]
            },
        });
        let required = pf.policy.required_tiers.contains(&os.tier)
            && !os.deprecated
            && (variant.is_none() || pf.policy.require_variants);
        let opam_packages = crate::catalogue::opam::packages(v, release.status, variant);
        let recipes: Vec<PathBuf> = os.recipes.iter().map(|r| pf.dir.join(r)).collect();
        for arch in os.arches.iter().filter_map(|a| a.parse::<Arch>().ok()) {
            if filter.arch.is_some_and(|f| f != arch) || !cat.supports(v, arch) {
                continue;
            }
            if variant.is_some_and(|var| !cat.variants(v, arch).contains(&var)) {
                continue;
            }
            let mut vars =
                recipe_vars::target_vars(os, v, release.status, variant, arch, &opam_packages);
            recipe_vars::add_git_commits(&mut vars, &cat.sources);
            out.push(Target {
                platform: pf.platform.clone(),
                os: os.id.clone(),
                distro: os.distro.clone(),
                tier: os.tier,
                version: Some(v.clone()),
                status: Some(release.status),
                variant: variant.map(str::to_string),
                arch,
                native: series.native.contains(&arch.to_string()),
                builder: pf.builder,
                recipes: recipes.clone(),
                parent: os.parent.clone(),
                opam_packages: opam_packages.clone(),
                repository: pf.repository.clone(),
                tag: tag.clone(),
                aliases: aliases.clone(),
                required,
                reproducible: os.reproducible,
                source_date_epoch: source_date_epoch(release.date),
                os_version: os.os_version.clone(),
                multi_os: multi_os.clone(),
                uses: Uses::of_recipes(cat, &recipes, &vars),
                smoke: render_smoke(pf, os, &vars),
                vars,
            });
        }
    }
}

/// An OS release's smoke checks with the target's variables filled in; a
/// check that names an unknown variable is kept as written, so that it
/// fails loudly in the build rather than vanishing (`kiln catalogue
/// validate` reports it).
fn render_smoke(
    pf: &crate::catalogue::Platform,
    os: &OsRelease,
    vars: &BTreeMap<String, String>,
) -> Vec<crate::catalogue::platform::Smoke> {
    let file = pf.dir.join("platform.yaml").display().to_string();
    let r = |s: &str| template::render(&file, s, vars).unwrap_or_else(|_| s.to_string());
    os.smoke
        .iter()
        .map(|c| crate::catalogue::platform::Smoke {
            run: r(&c.run),
            expect: r(&c.expect),
        })
        .collect()
}

/// The SOURCE_DATE_EPOCH of a compiler release's images: midnight UTC of
/// its catalogue date, or 0 (1970-01-01) when the catalogue has none
/// (trunk, prereleases). It depends on the catalogue alone, never on when
/// or where the build runs.
pub fn source_date_epoch(date: Option<chrono::NaiveDate>) -> u64 {
    date.map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp())
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0)
}

/// A SOURCE_DATE_EPOCH as image configs and annotations write a time:
/// `2021-10-04T00:00:00Z`.
pub fn epoch_rfc3339(sde: u64) -> String {
    i64::try_from(sde)
        .ok()
        .and_then(|s| chrono::DateTime::<chrono::Utc>::from_timestamp(s, 0))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The other moving tags of a target's tag: the OS release's aliases for
/// the compiler, and for the newest release's default compiler the
/// compiler-less names (`debian-13`, `debian`, `latest`) — docker-base-
/// images' `gen_tags` (src/pipeline.ml); its Windows pipeline gives only
/// `<os>` (`bare_aliases: false`).
fn aliases(
    pf: &Platform,
    os: &OsRelease,
    v: &OcamlVersion,
    variant: Option<&str>,
    newest: bool,
) -> Vec<String> {
    let mut aliases: Vec<String> = os
        .aliases
        .iter()
        .map(|a| moving_tag(a, v, variant))
        .collect();
    if variant.is_none() && newest {
        aliases.push(os.id.clone());
        if pf.bare_aliases {
            aliases.extend(os.aliases.iter().cloned());
        }
        if os.default {
            aliases.push("latest".into());
        }
    }
    aliases
}

/// Group required targets by moving tag into gate requirements.
/// `can_build(platform, arch)` says whether any configured builder can
/// build that arch; arches it cannot are reported as `no-builder`.
pub fn requirements(
    targets: &[Target],
    namespace: &str,
    can_build: impl Fn(&Target) -> bool,
) -> Vec<Requirement> {
    let mut groups: BTreeMap<String, Requirement> = BTreeMap::new();
    for t in targets.iter().filter(|t| t.required) {
        // The gate requires compilers; a compiler-less image is never required.
        let Some(ocaml) = &t.version else { continue };
        let id = t.tag_id(namespace);
        let r = groups.entry(id.key()).or_insert_with(|| Requirement {
            platform: t.platform.clone(),
            os: t.os.clone(),
            ocaml: ocaml.clone(),
            variant: t.variant.clone(),
            repository: id.repository.clone(),
            tag: t.tag.clone(),
            aliases: t.aliases.clone(),
            arches: vec![],
            no_builder: vec![],
        });
        r.arches.push(t.arch);
        if !can_build(t) {
            r.no_builder.push(t.arch);
        }
    }
    groups.into_values().collect()
}

/// Totals for `kiln plan`: per platform and per arch.
#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub targets: usize,
    pub tags: usize,
    pub required: usize,
    pub by_platform: BTreeMap<String, usize>,
    pub by_arch: BTreeMap<String, usize>,
}

pub fn totals(targets: &[Target]) -> Totals {
    let mut t = Totals {
        targets: targets.len(),
        ..Default::default()
    };
    let mut tags = std::collections::BTreeSet::new();
    for x in targets {
        tags.insert((x.repository.clone(), x.tag.clone()));
        *t.by_platform.entry(x.platform.clone()).or_default() += 1;
        *t.by_arch.entry(x.arch.to_string()).or_default() += 1;
        t.required += usize::from(x.required);
    }
    t.tags = tags.len();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_date_epoch_is_midnight_utc_of_the_release_date_or_zero() {
        let d = chrono::NaiveDate::from_ymd_opt(2021, 10, 4);
        assert_eq!(source_date_epoch(d), 1_633_305_600);
        assert_eq!(source_date_epoch(None), 0);
        assert_eq!(epoch_rfc3339(1_633_305_600), "2021-10-04T00:00:00Z");
        assert_eq!(epoch_rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
