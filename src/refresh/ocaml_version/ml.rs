//! `ocaml_version.ml`'s `module Releases = struct … end`: its definitions
//! (`let v5_4_1 = of_string_exn "5.4.1"`), series aliases (`let v5_4 =
//! v5_4_1`) and lists, brought to what the catalogue wants one edit at a
//! time, re-reading the file after each (it is a few hundred lines).

use std::ops::Range;

use super::list::{self, Edit, List};
use super::{ML, PatchError, Wanted, ident, ident_key, series_ident, version_key};
use crate::catalogue::OcamlVersion;

/// A line `let NAME = RHS` of the module, by byte range (newline included).
struct Binding {
    name: String,
    rhs: String,
    line: Range<usize>,
    indent: String,
}

/// The text between `module Releases = struct` and its `end`.
fn region(text: &str) -> Result<Range<usize>, PatchError> {
    let head = "module Releases = struct";
    let start = text
        .find(head)
        .and_then(|i| text[i..].find('\n').map(|n| i + n + 1))
        .ok_or_else(|| PatchError::at(ML, text, 0, format!("no `{head}`")))?;
    let end = text[start..]
        .match_indices("\nend")
        .map(|(i, _)| start + i + 1)
        .find(|&e| matches!(text[e + 3..].chars().next(), None | Some('\n' | ' ')))
        .ok_or_else(|| PatchError::at(ML, text, start, "`module Releases` has no `end`"))?;
    Ok(start..end)
}

fn bindings(text: &str, r: &Range<usize>) -> Vec<Binding> {
    let mut out = Vec::new();
    let mut at = r.start;
    for line in text[r.clone()].split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some((name, rhs)) = trimmed
            .strip_prefix("let ")
            .and_then(|l| l.split_once(" = "))
        {
            out.push(Binding {
                name: name.to_string(),
                rhs: rhs.to_string(),
                line: at..at + line.len(),
                indent: line[..line.len() - line.trim_start().len()].to_string(),
            });
        }
        at += line.len();
    }
    out
}

/// `(name, version text)` of the release definitions.
fn definitions(bs: &[Binding]) -> Vec<(&Binding, &str)> {
    bs.iter()
        .filter(|b| ident_key(&b.name).is_some_and(|k| k.2.is_some()))
        .filter_map(|b| {
            let v = b.rhs.strip_prefix("of_string_exn \"")?.strip_suffix('"')?;
            Some((b, v))
        })
        .collect()
}

fn aliases(bs: &[Binding]) -> Vec<&Binding> {
    bs.iter()
        .filter(|b| ident_key(&b.name).is_some_and(|k| k.2.is_none()))
        .filter(|b| ident_key(&b.rhs).is_some_and(|k| k.2.is_some()))
        .collect()
}

fn same_series(name: &str, v: &OcamlVersion) -> bool {
    ident_key(name).is_some_and(|(a, b, _)| (a, b) == (v.major, v.minor))
}

/// The first missing definition, as an edit.
fn definition_edit(bs: &[Binding], w: &Wanted) -> Option<Edit> {
    let defs = definitions(bs);
    let indent = defs
        .first()
        .map_or("  ".to_string(), |d| d.0.indent.clone());
    let mut wanted: Vec<&OcamlVersion> = w.released.iter().chain(&w.dev).collect();
    wanted.sort();
    let v = wanted
        .into_iter()
        .find(|v| !defs.iter().any(|d| d.0.name == ident(v)))?;
    let line = format!("{indent}let {} = of_string_exn \"{v}\"\n", ident(v));
    let key = version_key(v);
    let series: Vec<_> = defs.iter().filter(|d| same_series(&d.0.name, v)).collect();
    if let Some(first) = series.first() {
        let at = match series
            .iter()
            .rev()
            .find(|d| ident_key(&d.0.name) < Some(key))
        {
            Some(pred) => pred.0.line.end,
            None => first.0.line.start,
        };
        return Some(Edit {
            range: at..at,
            text: line,
        });
    }
    // A new series block, after the previous series' alias (blocks are
    // separated by one blank line), or before the first block.
    let alias = format!("{indent}let {} = {}\n", series_ident(v), ident(v));
    let before = bs
        .iter()
        .filter(|b| ident_key(&b.name).is_some_and(|k| (k.0, k.1) < (key.0, key.1)))
        .map(|b| b.line.end)
        .max();
    Some(match before {
        Some(at) => Edit {
            range: at..at,
            text: format!("\n{line}{alias}"),
        },
        None => {
            let at = defs.first().map_or(0, |d| d.0.line.start);
            Edit {
                range: at..at,
                text: format!("{line}{alias}\n"),
            }
        }
    })
}

/// The first series alias that does not name its newest release (or,
/// before any release, its version under development).
fn alias_edit(bs: &[Binding], w: &Wanted, in_all_patches: &[String]) -> Option<Edit> {
    let defs = definitions(bs);
    for a in aliases(bs) {
        let series =
            |n: &str| ident_key(n).map(|k| (k.0, k.1)) == ident_key(&a.name).map(|k| (k.0, k.1));
        let released = w
            .released
            .iter()
            .map(ident)
            .chain(in_all_patches.iter().cloned())
            .filter(|n| series(n));
        let dev = w.dev.iter().map(ident).filter(|n| series(n));
        let newest = released
            .max_by_key(|n| ident_key(n))
            .or_else(|| dev.max_by_key(|n| ident_key(n)));
        if let Some(target) = newest
            && target != a.rhs
            && defs.iter().any(|d| d.0.name == target)
        {
            return Some(Edit {
                range: a.line.clone(),
                text: format!("{}let {} = {target}\n", a.indent, a.name),
            });
        }
    }
    None
}

fn list_of(text: &str, r: &Range<usize>, name: &str) -> Result<Option<List>, PatchError> {
    match list::find(text, r, name) {
        None => Ok(None),
        Some(Ok(l)) => Ok(Some(l)),
        Some(Err(at)) => Err(PatchError::at(
            ML,
            text,
            at,
            format!("`let {name} =` is not a list `[ … ]`"),
        )),
    }
}

fn required(text: &str, r: &Range<usize>, name: &str) -> Result<List, PatchError> {
    list_of(text, r, name)?.ok_or_else(|| {
        PatchError::at(
            ML,
            text,
            r.start,
            format!("no `let {name} = [ … ]` in `module Releases`"),
        )
    })
}

/// Bring the items of `l` to `want` (names `vM_N[_P]`): add the missing
/// after their predecessor, and when `exact`, remove the others.
fn list_edit(text: &str, l: &List, want: &[String], exact: bool) -> Option<Edit> {
    let have = l.texts(text);
    if exact && let Some(i) = have.iter().position(|h| !want.iter().any(|w| w == h)) {
        return Some(l.remove(i));
    }
    let w = want.iter().find(|w| !have.contains(&w.as_str()))?;
    let key = ident_key(w);
    let pred = have
        .iter()
        .enumerate()
        .filter(|(_, h)| ident_key(h).is_some() && ident_key(h) < key)
        .max_by_key(|(_, h)| ident_key(h))
        .map(|(i, _)| i);
    Some(l.insert(pred, w))
}

/// The release an `unreleased_betas` item is about, as an ordering key.
fn beta_key(item: &str) -> Option<(u32, u32, Option<u32>)> {
    match item.strip_prefix("of_string_exn \"") {
        Some(lit) => {
            let v: OcamlVersion = lit.strip_suffix('"')?.parse().ok()?;
            Some(version_key(&v.release()))
        }
        None => ident_key(item).map(|(a, b, p)| (a, b, Some(p.unwrap_or(0)))),
    }
}

fn betas_edit(text: &str, l: &List, want: &[OcamlVersion]) -> Option<Edit> {
    let have = l.texts(text);
    let lit = |v: &OcamlVersion| format!("of_string_exn \"{v}\"");
    for (i, h) in have.iter().enumerate() {
        match want.iter().find(|w| beta_key(&lit(w)) == beta_key(h)) {
            Some(w) if lit(w) != *h => return Some(l.replace(i, &lit(w))),
            Some(_) => {}
            None => return Some(l.remove(i)),
        }
    }
    let w = want
        .iter()
        .find(|w| !have.iter().any(|h| beta_key(h) == beta_key(&lit(w))))?;
    let key = beta_key(&lit(w));
    let pred = have
        .iter()
        .enumerate()
        .filter(|(_, h)| beta_key(h) < key)
        .max_by_key(|(_, h)| beta_key(h))
        .map(|(i, _)| i);
    Some(l.insert(pred, &lit(w)))
}

fn latest_edit(text: &str, r: &Range<usize>, w: &Wanted) -> Result<Option<Edit>, PatchError> {
    let Some(want) = &w.latest else {
        return Ok(None);
    };
    let at = list::binding(text, r, "latest").ok_or_else(|| {
        PatchError::at(ML, text, r.start, "no `let latest =` in `module Releases`")
    })?;
    let line_end = text[at..].find('\n').map_or(text.len(), |n| at + n);
    let rhs_at = at + "let latest =".len();
    let rhs = text[rhs_at..line_end].trim();
    let name = series_ident(want);
    Ok((rhs != name).then(|| {
        let start = rhs_at + text[rhs_at..line_end].find(rhs).unwrap_or(0);
        Edit {
            range: start..start + rhs.len(),
            text: name,
        }
    }))
}

fn series_names(vs: &[OcamlVersion]) -> Vec<String> {
    vs.iter().map(series_ident).collect()
}

/// The next edit towards `w`, if any.
fn next_edit(text: &str, w: &Wanted) -> Result<Option<Edit>, PatchError> {
    let r = region(text)?;
    let bs = bindings(text, &r);
    if let Some(e) = definition_edit(&bs, w) {
        return Ok(Some(e));
    }
    let patches = required(text, &r, "all_patches")?;
    let in_all: Vec<String> = patches.texts(text).iter().map(|s| s.to_string()).collect();
    if let Some(e) = alias_edit(&bs, w, &in_all) {
        return Ok(Some(e));
    }
    let released: Vec<String> = w.released.iter().map(ident).collect();
    let mut series: Vec<OcamlVersion> = w.released.iter().map(OcamlVersion::series).collect();
    series.dedup();
    let lists: [(&str, Vec<String>, bool); 4] = [
        ("all_patches", released, false),
        ("all", series_names(&series), false),
        ("recent", series_names(&w.recent), true),
        ("dev", series_names(&w.dev), true),
    ];
    for (name, want, exact) in &lists {
        if let Some(e) = list_edit(text, &required(text, &r, name)?, want, *exact) {
            return Ok(Some(e));
        }
    }
    if let Some(l) = list_of(text, &r, "significant")?
        && let Some(e) = list_edit(text, &l, &series_names(&w.significant), true)
    {
        return Ok(Some(e));
    }
    if let Some(e) = betas_edit(
        text,
        &required(text, &r, "unreleased_betas")?,
        &w.unreleased_betas,
    ) {
        return Ok(Some(e));
    }
    latest_edit(text, &r, w)
}

pub fn patch(text: &str, w: &Wanted) -> Result<String, PatchError> {
    let mut s = text.to_string();
    // Each edit adds or fixes one thing; far fewer than this many things exist.
    for _ in 0..10_000 {
        match next_edit(&s, w)? {
            Some(e) => e.apply(&mut s),
            None => return Ok(s),
        }
    }
    Err(PatchError::at(ML, text, 0, "the edits do not converge"))
}

/// What the file states: the releases of `all_patches` (by their
/// definitions), the versions of `unreleased_betas` written as literals,
/// the names it defines, the versions under development (`dev`'s series
/// by their aliases' definitions) and the series of `recent` and
/// `significant` (empty when the file has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub released: Vec<OcamlVersion>,
    pub betas: Vec<OcamlVersion>,
    pub defined: Vec<String>,
    pub dev: Vec<OcamlVersion>,
    pub recent: Vec<OcamlVersion>,
    pub significant: Vec<OcamlVersion>,
}

/// The series named `vM_N` by items of a list.
fn series_items(text: &str, l: &List) -> Vec<OcamlVersion> {
    l.texts(text)
        .iter()
        .filter_map(|n| match ident_key(n)? {
            (a, b, None) => Some(OcamlVersion::new(a, b, 0).series()),
            _ => None,
        })
        .collect()
}

pub fn state(text: &str) -> Result<State, PatchError> {
    let r = region(text)?;
    let bs = bindings(text, &r);
    let defs = definitions(&bs);
    let parse = |lit: &str, at: usize| {
        lit.parse::<OcamlVersion>()
            .map_err(|e| PatchError::at(ML, text, at, e.to_string()))
    };
    let patches = required(text, &r, "all_patches")?;
    let released = patches
        .texts(text)
        .iter()
        .filter_map(|n| defs.iter().find(|d| d.0.name == *n))
        .map(|d| parse(d.1, d.0.line.start))
        .collect::<Result<_, _>>()?;
    let betas_list = required(text, &r, "unreleased_betas")?;
    let betas = betas_list
        .items
        .iter()
        .filter_map(|i| {
            let lit = text[i.clone()]
                .strip_prefix("of_string_exn \"")?
                .strip_suffix('"')?;
            Some(parse(lit, i.start))
        })
        .collect::<Result<_, _>>()?;
    let als = aliases(&bs);
    let dev = required(text, &r, "dev")?
        .texts(text)
        .iter()
        .filter_map(|n| als.iter().find(|a| a.name == *n))
        .filter_map(|a| defs.iter().find(|d| d.0.name == a.rhs))
        .map(|d| parse(d.1, d.0.line.start))
        .collect::<Result<_, _>>()?;
    let significant = match list_of(text, &r, "significant")? {
        Some(l) => series_items(text, &l),
        None => vec![],
    };
    Ok(State {
        released,
        betas,
        defined: defs.iter().map(|d| d.0.name.clone()).collect(),
        dev,
        recent: series_items(text, &required(text, &r, "recent")?),
        significant,
    })
}
