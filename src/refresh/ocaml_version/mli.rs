//! `ocaml_version.mli`'s `module Releases : sig … end`: one entry per
//! version a release adds (`val v5_4_1 : t` and `(** Version 5.4.1 *)`) before
//! its series' entry (`val v5_4 : t`, `(** Latest release in the 5.4.x
//! series *)`), each followed by a blank line. Versions under development
//! are not exposed, as upstream does since 5.3.

use std::ops::Range;

use crate::catalogue::OcamlVersion;

use super::{MLI, PatchError, ident, ident_key, series_ident, version_key};

/// A `val NAME : t` line: name, byte range of the line, indentation.
struct Val {
    name: String,
    line: Range<usize>,
    indent: String,
}

fn region(text: &str) -> Result<Range<usize>, PatchError> {
    let head = "module Releases : sig";
    let start = text
        .find(head)
        .and_then(|i| text[i..].find('\n').map(|n| i + n + 1))
        .ok_or_else(|| PatchError::at(MLI, text, 0, format!("no `{head}`")))?;
    let end = text[start..]
        .find("\nend")
        .map_or(text.len(), |i| start + i + 1);
    Ok(start..end)
}

fn vals(text: &str, r: &Range<usize>) -> Vec<Val> {
    let mut out = Vec::new();
    let mut at = r.start;
    for line in text[r.clone()].split_inclusive('\n') {
        if let Some(name) = line
            .trim()
            .strip_prefix("val ")
            .and_then(|l| l.strip_suffix(" : t"))
            .filter(|n| ident_key(n).is_some())
        {
            out.push(Val {
                name: name.to_string(),
                line: at..at + line.len(),
                indent: line[..line.len() - line.trim_start().len()].to_string(),
            });
        }
        at += line.len();
    }
    out
}

/// The offset just past the blank line that ends the entry at `v`.
fn after_entry(text: &str, v: &Val) -> usize {
    let mut at = v.line.end;
    for line in text[at..].split_inclusive('\n') {
        at += line.len();
        if line.trim().is_empty() {
            break;
        }
    }
    at
}

fn entry(indent: &str, name: &str, doc: &str) -> String {
    format!("{indent}val {name} : t\n{indent}(** {doc} *)\n\n")
}

fn next_edit(text: &str, released: &[OcamlVersion]) -> Result<Option<(usize, String)>, PatchError> {
    let r = region(text)?;
    let vs = vals(text, &r);
    let Some(v) = released
        .iter()
        .find(|v| !vs.iter().any(|x| x.name == ident(v)))
    else {
        return Ok(None);
    };
    let indent = vs.first().map_or("  ".to_string(), |x| x.indent.clone());
    let key = version_key(v);
    let series = |n: &str| ident_key(n).is_some_and(|k| (k.0, k.1) == (key.0, key.1));
    let own = entry(&indent, &ident(v), &format!("Version {v}"));
    // Before the next patch of its series, else before the series' entry.
    if let Some(next) = vs
        .iter()
        .find(|x| series(&x.name) && ident_key(&x.name).is_some_and(|k| k.2.is_some() && k > key))
        .or_else(|| vs.iter().find(|x| x.name == series_ident(v)))
    {
        return Ok(Some((next.line.start, own)));
    }
    let series_entry = entry(
        &indent,
        &series_ident(v),
        &format!("Latest release in the {}.x series", v.series_tag()),
    );
    let new = format!("{own}{series_entry}");
    // A new series: after the previous series' entry, or before the first.
    let prev = vs
        .iter()
        .filter(|x| {
            ident_key(&x.name).is_some_and(|k| k.2.is_none() && (k.0, k.1) < (key.0, key.1))
        })
        .max_by_key(|x| ident_key(&x.name));
    match (prev, vs.first()) {
        (Some(p), _) => Ok(Some((after_entry(text, p), new))),
        (None, Some(first)) => Ok(Some((first.line.start, new))),
        (None, None) => Err(PatchError::at(
            MLI,
            text,
            r.start,
            "`module Releases` declares no release to put the new ones beside",
        )),
    }
}

pub fn patch(text: &str, released: &[OcamlVersion]) -> Result<String, PatchError> {
    let mut s = text.to_string();
    for _ in 0..10_000 {
        match next_edit(&s, released)? {
            Some((at, t)) => s.insert_str(at, &t),
            None => return Ok(s),
        }
    }
    Err(PatchError::at(MLI, text, 0, "the edits do not converge"))
}
