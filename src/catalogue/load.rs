//! Reading, validating and (for `kiln bump`) rewriting the catalogue.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::platform::{BuilderKind, OsRelease, Platform, Policy};
use super::{ARCHES, Catalogue, CatalogueError, OcamlVersion, Rules, Series, Sets, Status};

/// Files of `versions/` that are not series files.
const NOT_SERIES: [&str; 3] = ["sets.yaml", "rules.yaml", "sources.yaml"];

fn read(path: &Path) -> Result<String, CatalogueError> {
    std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, CatalogueError> {
    serde_norway::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        CatalogueError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: e.to_string(),
        }
    })
}

/// Load and validate `versions/` and `platforms/`.
pub fn load(versions_dir: &Path, platforms_dir: &Path) -> Result<Catalogue, CatalogueError> {
    let mut series = Vec::new();
    let entries = std::fs::read_dir(versions_dir).map_err(|source| CatalogueError::Read {
        path: versions_dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !NOT_SERIES.contains(&n))
        })
        .collect();
    files.sort();
    for path in files {
        let mut s: Series = parse(&path, &read(&path)?)?;
        s.file = path;
        series.push(s);
    }
    series.sort_by(|a, b| a.series.cmp(&b.series));
    let sets_path = versions_dir.join("sets.yaml");
    let sets: Sets = if sets_path.exists() {
        parse(&sets_path, &read(&sets_path)?)?
    } else {
        Sets::default()
    };
    let rules_path = versions_dir.join("rules.yaml");
    let rules: Rules = if rules_path.exists() {
        parse(&rules_path, &read(&rules_path)?)?
    } else {
        Rules::default()
    };
    let sources_path = versions_dir.join("sources.yaml");
    let sources: super::Sources = if sources_path.exists() {
        parse(&sources_path, &read(&sources_path)?)?
    } else {
        super::Sources::default()
    };
    let mut platforms = Vec::new();
    if platforms_dir.exists() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(platforms_dir)
            .map_err(|source| CatalogueError::Read {
                path: platforms_dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("platform.yaml").exists())
            .collect();
        dirs.sort();
        for dir in dirs {
            let path = dir.join("platform.yaml");
            let mut p: Platform = parse(&path, &read(&path)?)?;
            let policy_path = dir.join("policy.yaml");
            p.policy = if policy_path.exists() {
                parse::<Policy>(&policy_path, &read(&policy_path)?)?
            } else {
                Policy::default()
            };
            p.dir = dir;
            platforms.push(p);
        }
    }
    let cat = Catalogue {
        series,
        sets,
        rules,
        sources,
        platforms,
        versions_dir: versions_dir.to_path_buf(),
        platforms_dir: platforms_dir.to_path_buf(),
    };
    validate(&cat)?;
    Ok(cat)
}

fn check_arches(path: &Path, field: &str, arches: &[String]) -> Result<(), CatalogueError> {
    let mut seen = BTreeSet::new();
    for (i, a) in arches.iter().enumerate() {
        if !ARCHES.contains(&a.as_str()) {
            return Err(CatalogueError::invalid(
                path,
                format!("{field}[{i}]"),
                format!("unknown arch {a:?}; known: {}", ARCHES.join(", ")),
            ));
        }
        if !seen.insert(a) {
            return Err(CatalogueError::invalid(
                path,
                format!("{field}[{i}]"),
                format!("{a} listed twice"),
            ));
        }
    }
    Ok(())
}

/// Every rule the data must satisfy; errors name the file and the field.
pub fn validate(cat: &Catalogue) -> Result<(), CatalogueError> {
    let mut seen_series = BTreeSet::new();
    for s in &cat.series {
        validate_series(s, &mut seen_series)?;
    }
    validate_sets(cat)?;
    validate_rules(cat)?;
    super::sources::validate(&cat.versions_dir.join("sources.yaml"), &cat.sources)?;
    let mut names = BTreeSet::new();
    for pf in &cat.platforms {
        validate_platform(cat, pf, &mut names)?;
    }
    Ok(())
}

/// `rules.yaml`: variant names that can be tags, series ranges that are
/// series and not empty.
fn validate_rules(cat: &Catalogue) -> Result<(), CatalogueError> {
    let p = cat.versions_dir.join("rules.yaml");
    for (list, rules) in [
        ("variants", &cat.rules.variants),
        ("trunk_variants", &cat.rules.trunk_variants),
    ] {
        for (i, r) in rules.iter().enumerate() {
            let field = format!("{list}[{i}]");
            let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
            if r.name.is_empty()
                || !r
                    .name
                    .split('+')
                    .all(|w| !w.is_empty() && w.chars().all(ok_char))
            {
                return Err(CatalogueError::invalid(
                    &p,
                    format!("{field}.name"),
                    format!("{:?}: options are lowercase words joined by '+'", r.name),
                ));
            }
            for (what, v) in [("from", &r.from), ("below", &r.below)] {
                if v.as_ref().is_some_and(|v| !v.is_series()) {
                    return Err(CatalogueError::invalid(
                        &p,
                        format!("{field}.{what}"),
                        "a series (MAJOR.MINOR), as compiler_variants compares them",
                    ));
                }
            }
            if let (Some(f), Some(b)) = (&r.from, &r.below)
                && f >= b
            {
                return Err(CatalogueError::invalid(
                    &p,
                    format!("{field}.below"),
                    format!("{b} is not after {f}"),
                ));
            }
        }
    }
    Ok(())
}

/// One series file: its name, its arches, its releases.
fn validate_series(
    s: &Series,
    seen_series: &mut BTreeSet<OcamlVersion>,
) -> Result<(), CatalogueError> {
    let p = &s.file;
    if !s.series.is_series() {
        return Err(CatalogueError::invalid(
            p,
            "series",
            format!(
                "{} is a release, not a series (write {})",
                s.series,
                s.series.series()
            ),
        ));
    }
    if let Some(stem) = p.file_stem().and_then(|x| x.to_str())
        && stem != s.series.to_string()
    {
        return Err(CatalogueError::invalid(
            p,
            "series",
            format!("file is named {stem}.yaml but declares series {}", s.series),
        ));
    }
    if !seen_series.insert(s.series.clone()) {
        return Err(CatalogueError::invalid(
            p,
            "series",
            format!("series {} is declared twice", s.series),
        ));
    }
    validate_series_arches(s)?;
    if s.releases.is_empty() {
        return Err(CatalogueError::invalid(p, "releases", "no releases"));
    }
    for i in 0..s.releases.len() {
        validate_series_release(s, i)?;
    }
    Ok(())
}

/// Native and bytecode-only arches are known and disjoint.
fn validate_series_arches(s: &Series) -> Result<(), CatalogueError> {
    let p = &s.file;
    check_arches(p, "native", &s.native)?;
    check_arches(p, "bytecode_only", &s.bytecode_only)?;
    if let Some(a) = s.native.iter().find(|a| s.bytecode_only.contains(a)) {
        return Err(CatalogueError::invalid(
            p,
            "bytecode_only",
            format!("{a} is also native"),
        ));
    }
    Ok(())
}

/// `releases[i]` of a series: in the series, a full version, a status
/// that agrees with the version, after the release before it.
fn validate_series_release(s: &Series, i: usize) -> Result<(), CatalogueError> {
    let p = &s.file;
    let r = &s.releases[i];
    let field = format!("releases[{i}]");
    if r.version.series() != s.series {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.version"),
            format!("{} is not in series {}", r.version, s.series),
        ));
    }
    let trunk_extra = r.status == Status::Trunk && r.version.patch.is_some();
    if !(r.version.is_release_name() || trunk_extra) {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.version"),
            format!("{} is not a full release version", r.version),
        ));
    }
    let pre = r.version.is_prerelease();
    let pre_status = matches!(r.status, Status::Alpha | Status::Beta | Status::Rc);
    if pre != pre_status && !matches!(r.status, Status::Trunk | Status::Dev) {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.status"),
            format!(
                "{} has status {:?} but {}",
                r.version,
                r.status,
                if pre {
                    "is a prerelease"
                } else {
                    "is not a prerelease"
                }
            ),
        ));
    }
    if i > 0 && s.releases[i - 1].version >= r.version {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.version"),
            format!(
                "{} must come after {} (releases are listed oldest first, without duplicates)",
                r.version,
                s.releases[i - 1].version
            ),
        ));
    }
    Ok(())
}

/// `sets.yaml` names only series of the catalogue.
fn validate_sets(cat: &Catalogue) -> Result<(), CatalogueError> {
    let sets_path = cat.versions_dir.join("sets.yaml");
    for (name, list) in [
        ("recent", &cat.sets.recent),
        ("significant", &cat.sets.significant),
    ] {
        for (i, v) in list.iter().enumerate() {
            if cat.series_of(v).is_none() || !v.is_series() {
                return Err(CatalogueError::invalid(
                    &sets_path,
                    format!("{name}[{i}]"),
                    format!("{v} is not a series of the catalogue"),
                ));
            }
        }
    }
    Ok(())
}

/// One platform directory: its name, its repository (a registry path),
/// its OS releases (whose ids and aliases must be unique within a
/// repository, across platforms: `names`) and its policy.
fn validate_platform(
    cat: &Catalogue,
    pf: &Platform,
    names: &mut BTreeSet<(String, String)>,
) -> Result<(), CatalogueError> {
    let p = pf.dir.join("platform.yaml");
    let dir_name = pf.dir.file_name().and_then(|x| x.to_str()).unwrap_or("");
    if pf.platform != dir_name {
        return Err(CatalogueError::invalid(
            &p,
            "platform",
            format!(
                "{:?} does not match its directory {dir_name:?}",
                pf.platform
            ),
        ));
    }
    if let Err(why) = super::reference::check_path(&pf.repository) {
        return Err(CatalogueError::invalid(
            &p,
            "repository",
            format!("{:?} is not a repository path: {why}", pf.repository),
        ));
    }
    let mut ids = BTreeSet::new();
    let mut defaults = 0;
    for (i, r) in pf.releases.iter().enumerate() {
        validate_os_release(&p, pf, i, r, &mut ids, names)?;
        defaults += usize::from(r.default);
    }
    if defaults > 1 {
        return Err(CatalogueError::invalid(
            &p,
            "releases",
            "more than one release has default: true",
        ));
    }
    // `latest` and the multi-OS index names are names of the repository too.
    let groups: BTreeSet<&String> = pf
        .releases
        .iter()
        .filter_map(|r| r.multi_os_index.as_ref())
        .collect();
    let extra = groups
        .into_iter()
        .map(|g| (g.as_str(), "multi_os_index"))
        .chain((defaults > 0).then_some(("latest", "default")));
    for (name, field) in extra {
        if !names.insert((pf.repository.clone(), name.to_string())) {
            return Err(CatalogueError::invalid(
                &p,
                format!("releases[].{field}"),
                format!(
                    "{name} already names something else in repository {}",
                    pf.repository
                ),
            ));
        }
    }
    validate_policy(cat, pf)
}

/// `releases[i]` of a platform: id, tier, arches, parent (an image
/// reference), recipes, and names not
/// taken by another OS release of the repository.
fn validate_os_release(
    p: &Path,
    pf: &Platform,
    i: usize,
    r: &OsRelease,
    ids: &mut BTreeSet<String>,
    names: &mut BTreeSet<(String, String)>,
) -> Result<(), CatalogueError> {
    let field = format!("releases[{i}]");
    if r.id.is_empty()
        || !r
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.id"),
            format!("{:?}: ids are lowercase letters, digits, '-' and '.'", r.id),
        ));
    }
    if !ids.insert(r.id.clone()) {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.id"),
            format!("{} is declared twice", r.id),
        ));
    }
    if !(1..=3).contains(&r.tier) {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.tier"),
            format!("{} is not 1, 2 or 3", r.tier),
        ));
    }
    check_arches(p, &format!("{field}.arches"), &r.arches)?;
    if r.reproducible && (pf.builder != BuilderKind::Docker || pf.platform != "linux") {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.reproducible"),
            "only Linux images built by the docker builder are made reproducible",
        ));
    }
    if let Some(parent) = &r.parent
        && let Err(why) = parent.parse::<super::ImageRef>()
    {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.parent"),
            format!("{parent:?} is not an image reference: {why}"),
        ));
    }
    if let Some(v) = &r.os_version
        && (v.split('.').count() < 3
            || !v
                .split('.')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
    {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.os_version"),
            format!("{v:?} is not a Windows version such as 10.0.17763"),
        ));
    }
    if r.recipes.is_empty() {
        return Err(CatalogueError::invalid(
            p,
            format!("{field}.recipes"),
            "no recipe files",
        ));
    }
    if let Some((k, v)) = r.bad_switch() {
        let why = format!("{v:?}: a step switch is \"true\" or \"false\"");
        return Err(CatalogueError::invalid(p, format!("{field}.vars.{k}"), why));
    }
    for (name, what) in std::iter::once((&r.id, "id")).chain(r.aliases.iter().map(|a| (a, "alias")))
    {
        if !names.insert((pf.repository.clone(), name.clone())) {
            return Err(CatalogueError::invalid(
                p,
                format!("{field}.{what}"),
                format!(
                    "{name} already names another OS release of repository {}",
                    pf.repository
                ),
            ));
        }
    }
    Ok(())
}

/// `policy.yaml`: version selectors that resolve, tiers that exist.
fn validate_policy(cat: &Catalogue, pf: &Platform) -> Result<(), CatalogueError> {
    let pol = pf.dir.join("policy.yaml");
    for (i, v) in pf.policy.versions.iter().enumerate() {
        if let Err(e) = cat.select(v) {
            return Err(CatalogueError::invalid(&pol, format!("versions[{i}]"), e));
        }
    }
    for (list, tiers) in [
        ("required_tiers", &pf.policy.required_tiers),
        ("variant_tiers", &pf.policy.variant_tiers),
    ] {
        for (i, t) in tiers.iter().enumerate() {
            if !(1..=3).contains(t) {
                return Err(CatalogueError::invalid(
                    &pol,
                    format!("{list}[{i}]"),
                    format!("{t} is not 1, 2 or 3"),
                ));
            }
        }
    }
    if pf.policy.opam_image && pf.builder != BuilderKind::Docker {
        return Err(CatalogueError::invalid(
            &pol,
            "opam_image",
            format!(
                "compiler-less images are Docker images; platform {} is built by {}",
                pf.platform, pf.builder
            ),
        ));
    }
    let known = cat.rules.names();
    for (i, v) in pf.policy.variants.iter().enumerate() {
        if !known.contains(&v.as_str()) {
            return Err(CatalogueError::invalid(
                &pol,
                format!("variants[{i}]"),
                format!(
                    "{v} is no variant of versions/rules.yaml (known: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Check that every recipe a platform names exists, and that every source
/// it takes from `{{sources_url}}` is declared.
pub fn validate_recipes(cat: &Catalogue) -> Result<(), CatalogueError> {
    for pf in &cat.platforms {
        for (i, r) in pf.releases.iter().enumerate() {
            let mut all = super::sources::SourceRefs::default();
            for (j, recipe) in r.recipes.iter().enumerate() {
                let path = pf.dir.join(recipe);
                if !path.is_file() {
                    return Err(CatalogueError::invalid(
                        &pf.dir.join("platform.yaml"),
                        format!("releases[{i}].recipes[{j}]"),
                        format!("{} does not exist", path.display()),
                    ));
                }
                let text = read(&path)?;
                let refs = super::sources::references(&text, super::sources::PLACEHOLDER);
                if let Some((name, line)) = refs.names.iter().find(|(n, _)| !cat.sources.serves(n))
                {
                    return Err(CatalogueError::invalid(
                        &path,
                        format!("line {line}"),
                        format!(
                            "{{{{sources_url}}}}/{name} is not a declared source (declare it with its sha256 in {})",
                            cat.versions_dir.join("sources.yaml").display()
                        ),
                    ));
                }
                all.merge(refs);
            }
            super::sources::check_opam_version(
                &pf.dir.join("platform.yaml"),
                &format!("releases[{i}].vars.opam_version"),
                r.vars.get("opam_version").map(String::as_str),
                &all,
                &cat.sources,
            )?;
        }
    }
    Ok(())
}

/// The canonical text of a series file.
pub fn format_series(s: &Series) -> Result<String, CatalogueError> {
    let body = serde_norway::to_string(s)
        .map_err(|e| CatalogueError::invalid(&s.file, "(serialize)", e.to_string()))?;
    Ok(format!(
        "# OCaml {} series. Canonical form: edit with `kiln bump` or run `kiln catalogue fmt`.\n{body}",
        s.series
    ))
}
