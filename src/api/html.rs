//! The status page: versions × (platform, OS release), readable without
//! JavaScript. Per-arch detail is in a `<details>` element per cell.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::gate::{Missing, Requirement, Verdict};
use super::snapshot::Snapshot;
use crate::catalogue::OcamlVersion;
use crate::publish::lockfile::Entry;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(snap: &Snapshot) -> String {
    let mut columns: BTreeSet<(String, String)> = BTreeSet::new();
    for r in &snap.requirements {
        columns.insert((r.platform.clone(), r.os.clone()));
    }
    let columns: Vec<_> = columns.into_iter().collect();
    let mut s = String::with_capacity(16 * 1024);
    push_head(&mut s, snap);
    s.push_str("<table><thead><tr><th>version</th>");
    for (p, os) in &columns {
        let _ = write!(s, "<th>{}<br>{}</th>", esc(p), esc(os));
    }
    s.push_str("</tr></thead><tbody>");
    let mut by_cell: BTreeMap<(&OcamlVersion, &str, &str), Vec<&Requirement>> = BTreeMap::new();
    for r in &snap.requirements {
        by_cell
            .entry((&r.ocaml, r.platform.as_str(), r.os.as_str()))
            .or_default()
            .push(r);
    }
    for v in snap.versions() {
        let _ = write!(
            s,
            "<tr><th><a href=\"/v1/versions/{0}\">{0}</a></th>",
            esc(&v.to_string())
        );
        for (p, os) in &columns {
            let Some(reqs) = by_cell.get(&(&v, p.as_str(), os.as_str())) else {
                s.push_str("<td class=\"na\"></td>");
                continue;
            };
            push_cell(&mut s, snap, reqs);
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></body></html>\n");
    s
}

/// The document head, the style sheet, the title, the summary line and
/// the legend.
fn push_head(s: &mut String, snap: &Snapshot) {
    s.push_str(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Kiln status</title><style>\
         body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
         table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}\
         th{background:#f3f3f3;position:sticky;top:0}\
         .available{background:#c8efc8}.partial{background:#fff0b3}.missing{background:#f8c9c4}.nobuilder{background:#ddd;color:#555}\
         .na{background:#fafafa}summary{cursor:pointer}code{font-size:11px}\
         </style></head><body><h1>Kiln: base images by OCaml version</h1>",
    );
    let _ = write!(
        s,
        "<p>{} published tags, {} required; snapshot loaded {}. Machine-readable: \
         <a href=\"/v1/versions\">/v1/versions</a>, <a href=\"/v1/lockfile\">/v1/lockfile</a>, \
         <a href=\"/v1/openapi.json\">OpenAPI</a>.</p>",
        snap.lockfile.entries.len(),
        snap.requirements.len(),
        snap.loaded_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    s.push_str("<p><span class=\"available\">available</span> <span class=\"partial\">partly built</span> \
                <span class=\"missing\">missing</span> <span class=\"nobuilder\">no builder</span></p>");
}

/// One (version, platform, OS) cell: its colour and count, with each
/// requirement's per-arch detail behind a `<details>`.
fn push_cell(s: &mut String, snap: &Snapshot, reqs: &[&Requirement]) {
    let mut ok = 0;
    let mut no_builder = false;
    let mut detail = String::new();
    for r in reqs {
        match super::gate::verdict(r, &snap.lockfile, &snap.jobs) {
            Verdict::Available { entry } => {
                ok += 1;
                push_available(&mut detail, r, entry);
            }
            Verdict::Missing { missing } => {
                no_builder |= push_missing(&mut detail, r, &missing);
            }
        }
    }
    let (class, label) = if ok == reqs.len() {
        ("available", "available".to_string())
    } else if no_builder && ok == 0 {
        ("nobuilder", "no builder".to_string())
    } else if ok > 0 {
        ("partial", format!("{ok}/{}", reqs.len()))
    } else {
        ("missing", "missing".to_string())
    };
    let _ = write!(
        s,
        "<td class=\"{class}\"><details><summary>{label}</summary>{detail}</details></td>"
    );
}

/// A published tag: its digest and each arch's.
fn push_available(detail: &mut String, r: &Requirement, entry: &Entry) {
    let _ = write!(
        detail,
        "<div><b>{}</b> <code>{}</code><ul>",
        esc(&r.tag),
        esc(&entry.digest[..19.min(entry.digest.len())])
    );
    for (a, e) in &entry.arches {
        let _ = write!(
            detail,
            "<li>{}: <code>{}</code></li>",
            esc(a.as_str()),
            esc(&e.digest[..19.min(e.digest.len())])
        );
    }
    detail.push_str("</ul></div>");
}

/// A tag with arches missing, each with its reason; `true` when one of
/// them has no builder.
fn push_missing(detail: &mut String, r: &Requirement, missing: &[Missing]) -> bool {
    let mut no_builder = false;
    let _ = write!(detail, "<div><b>{}</b><ul>", esc(&r.tag));
    for m in missing {
        no_builder |= m.reason == super::gate::MissingReason::NoBuilder;
        let _ = write!(
            detail,
            "<li>{}: {}{}</li>",
            esc(m.arch.as_str()),
            esc(m.reason.as_str()),
            m.detail
                .as_deref()
                .map(|d| format!(" ({})", esc(d)))
                .unwrap_or_default()
        );
    }
    detail.push_str("</ul></div>");
    no_builder
}
