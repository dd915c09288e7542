//! `kiln bump`: adding or updating releases, validated as a whole
//! catalogue before anything is written, written atomically. Staged first
//! ([`stage_bump`]) so that checks from layers above (every recipe renders)
//! can refuse the change before a file is touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::load::{format_series, load, validate};
use super::{Catalogue, CatalogueError, OcamlVersion, Release, Series, Sets, Status};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BumpOutcome {
    /// A new release was added (and maybe a new series file created).
    Added { file: PathBuf },
    /// An existing release had its status or date changed.
    Updated { file: PathBuf },
    /// Already exactly so: nothing written.
    Unchanged,
}

/// Releases added or updated in memory, the whole catalogue validated with
/// them, nothing written yet: a caller may check more (the recipe renders
/// `plan::validate` does) before [`StagedBump::write`].
#[derive(Debug, Clone)]
pub struct StagedBump {
    /// The catalogue with the changes.
    pub catalogue: Catalogue,
    /// One per version asked for, in order.
    pub outcomes: Vec<BumpOutcome>,
    /// Series whose files change.
    changed: BTreeSet<OcamlVersion>,
    sets_changed: bool,
}

impl StagedBump {
    /// Write every changed series file (and `sets.yaml`), each atomically.
    pub fn write(&self) -> Result<(), CatalogueError> {
        for s in &self.catalogue.series {
            if self.changed.contains(&s.series) {
                write_atomic(&s.file, &format_series(s)?)?;
            }
        }
        if self.sets_changed {
            write_sets(&self.catalogue.versions_dir, &self.catalogue.sets)?;
        }
        Ok(())
    }
}

/// Add or update releases in memory (all with `status`, or each its
/// default, `date` and `source`, the record they come from) and validate
/// the resulting catalogue; nothing is written.
pub fn stage_bump(
    versions_dir: &Path,
    platforms_dir: &Path,
    versions: &[OcamlVersion],
    status: Option<Status>,
    date: Option<chrono::NaiveDate>,
    source: Option<&str>,
) -> Result<StagedBump, CatalogueError> {
    let mut staged = StagedBump {
        catalogue: load(versions_dir, platforms_dir)?,
        outcomes: Vec::new(),
        changed: BTreeSet::new(),
        sets_changed: false,
    };
    for version in versions {
        let cat = &mut staged.catalogue;
        let status = status.unwrap_or(default_status(version));
        let series_v = version.series();
        let idx = series_index(cat, versions_dir, &series_v);
        let new = Release {
            version: version.clone(),
            status,
            date,
            source: source.map(str::to_string),
        };
        let Some(outcome) = put_release(&mut cat.series[idx], new) else {
            staged.outcomes.push(BumpOutcome::Unchanged);
            continue;
        };
        staged.outcomes.push(outcome);
        staged.changed.insert(series_v.clone());
        // A newly released minor joins the `recent` set (a reviewable
        // one-line diff in sets.yaml); `latest` follows by itself.
        if status.is_release() && !cat.sets.recent.contains(&series_v) {
            cat.sets.recent.push(series_v);
            cat.sets.recent.sort();
            staged.sets_changed = true;
        }
    }
    validate(&staged.catalogue)?;
    Ok(staged)
}

/// Add or update a release. Validates the whole catalogue with the change
/// before writing anything; writes atomically.
pub fn bump(
    versions_dir: &Path,
    platforms_dir: &Path,
    version: &OcamlVersion,
    status: Option<Status>,
    date: Option<chrono::NaiveDate>,
    dry_run: bool,
) -> Result<BumpOutcome, CatalogueError> {
    let staged = stage_bump(
        versions_dir,
        platforms_dir,
        std::slice::from_ref(version),
        status,
        date,
        None,
    )?;
    if !dry_run {
        staged.write()?;
    }
    Ok(staged
        .outcomes
        .into_iter()
        .next()
        .unwrap_or(BumpOutcome::Unchanged))
}

/// The status a version has when `kiln bump` is not told one.
fn default_status(version: &OcamlVersion) -> Status {
    if version.is_prerelease() {
        match &version.prerelease {
            Some(super::version::Prerelease::Alpha(_)) => Status::Alpha,
            Some(super::version::Prerelease::Beta(_)) => Status::Beta,
            Some(super::version::Prerelease::Rc(_)) => Status::Rc,
            _ => Status::Dev,
        }
    } else {
        Status::Released
    }
}

/// Index of `series_v` in the catalogue, adding the series (in order) when
/// it is new.
fn series_index(cat: &mut Catalogue, versions_dir: &Path, series_v: &OcamlVersion) -> usize {
    match cat.series.iter().position(|s| s.series == *series_v) {
        Some(i) => i,
        None => {
            // A new series inherits its arches from the newest one (its
            // variants come from rules.yaml).
            let prev = cat
                .series
                .iter()
                .rev()
                .find(|s| s.series < *series_v)
                .cloned();
            let source = prev
                .as_ref()
                .map(|p| format!("arches of {} (by `kiln bump`)", p.series));
            let (native, bytecode_only) = prev
                .map(|p| (p.native, p.bytecode_only))
                .unwrap_or_else(|| (vec!["amd64".into()], vec![]));
            cat.series.push(Series {
                series: series_v.clone(),
                native,
                bytecode_only,
                source,
                releases: vec![],
                file: versions_dir.join(format!("{series_v}.yaml")),
            });
            cat.series.sort_by(|a, b| a.series.cmp(&b.series));
            cat.series
                .iter()
                .position(|s| s.series == *series_v)
                .unwrap_or(0)
        }
    }
}

/// Add `new` to its series or update the release of that version (keeping
/// its date and source when `new` has none); `None` when nothing changes.
fn put_release(s: &mut Series, new: Release) -> Option<BumpOutcome> {
    let version = new.version.clone();
    match s.releases.iter_mut().find(|r| r.version == version) {
        Some(r) => {
            let merged = Release {
                date: new.date.or(r.date),
                source: new.source.clone().or_else(|| r.source.clone()),
                ..new
            };
            if *r == merged {
                return None;
            }
            *r = merged;
            Some(BumpOutcome::Updated {
                file: s.file.clone(),
            })
        }
        None => {
            // A release supersedes the trunk entry of its version; a
            // prerelease (5.6.0~alpha1) sits next to it with its own tags.
            if new.status.is_release() {
                s.releases.retain(|r| {
                    !(r.version.release() == version.release() && r.status == Status::Trunk)
                });
            }
            s.releases.push(new);
            s.releases.sort_by(|a, b| a.version.cmp(&b.version));
            Some(BumpOutcome::Added {
                file: s.file.clone(),
            })
        }
    }
}

/// Rewrite the `recent:` line of `sets.yaml` (adding both lines when the
/// file has none), leaving every other line as it is.
fn write_sets(versions_dir: &Path, sets: &Sets) -> Result<(), CatalogueError> {
    let sets_path = versions_dir.join("sets.yaml");
    let old = std::fs::read_to_string(&sets_path).unwrap_or_default();
    let quoted = |l: &[OcamlVersion]| {
        l.iter()
            .map(|v| format!("\"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let recent_line = format!("recent: [{}]", quoted(&sets.recent));
    let mut out: Vec<String> = old
        .lines()
        .map(|l| {
            if l.starts_with("recent:") {
                recent_line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !old.lines().any(|l| l.starts_with("recent:")) {
        out.push(recent_line);
        out.push(format!("significant: [{}]", quoted(&sets.significant)));
    }
    write_atomic(&sets_path, &format!("{}\n", out.join("\n")))
}

pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<(), CatalogueError> {
    let werr = |source| CatalogueError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(werr)?;
    std::fs::write(tmp.path(), text).map_err(werr)?;
    tmp.persist(path).map_err(|e| werr(e.error))?;
    Ok(())
}
