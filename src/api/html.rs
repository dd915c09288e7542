//! The status page: versions × (platform, OS release), readable without
//! JavaScript. Per-arch detail is in a `<details>` element per cell; each
//! version's row starts with the gate's verdict on the version as a whole
//! (available, or refused and why: the tags missing and their reasons).
//! Below, the worker inventory's latest collection: every host, its
//! health, its builds, what it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use super::gate::{Missing, Requirement, Verdict};
use super::snapshot::Snapshot;
use crate::builders::inventory::{HostReport, Inventory};
use crate::catalogue::OcamlVersion;
use crate::publish::lockfile::Entry;

/// What the page says of the workers: this server has no inventory
/// (`None`), none collected yet (`Some(None)`), or the latest collection.
pub type WorkersView<'a> = Option<&'a Option<Arc<Inventory>>>;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(snap: &Snapshot, workers: WorkersView<'_>) -> String {
    let mut columns: BTreeSet<(String, String)> = BTreeSet::new();
    for r in &snap.requirements {
        columns.insert((r.platform.clone(), r.os.clone()));
    }
    let columns: Vec<_> = columns.into_iter().collect();
    let mut s = String::with_capacity(16 * 1024);
    push_head(&mut s, snap);
    s.push_str("<table><thead><tr><th>version</th><th>gate</th>");
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
        push_verdict(&mut s, snap, &v);
        for (p, os) in &columns {
            let Some(reqs) = by_cell.get(&(&v, p.as_str(), os.as_str())) else {
                s.push_str("<td class=\"na\"></td>");
                continue;
            };
            push_cell(&mut s, snap, reqs);
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    push_workers(&mut s, workers);
    s.push_str("</body></html>\n");
    s
}

/// The gate's verdict on the whole version: available, or refused with
/// the required tags that are missing and why.
fn push_verdict(s: &mut String, snap: &Snapshot, v: &OcamlVersion) {
    let Some(view) = super::version_view(snap, v) else {
        s.push_str("<td class=\"na\"></td>");
        return;
    };
    if view.available {
        s.push_str("<td class=\"available verdict\">available</td>");
        return;
    }
    let missing: Vec<_> = view.cells.iter().filter(|c| !c.available).collect();
    let _ = write!(
        s,
        "<td class=\"missing verdict\"><details><summary>refused: {} of {} required tags missing</summary><ul>",
        missing.len(),
        view.cells.len()
    );
    for c in missing {
        let reasons: Vec<String> = c
            .missing
            .iter()
            .map(|m| format!("{} {}", m.arch.as_str(), m.reason.as_str()))
            .collect();
        let _ = write!(s, "<li>{} ({})</li>", esc(&c.tag), esc(&reasons.join(", ")));
    }
    s.push_str("</ul></details></td>");
}

/// The workers table: one row per host, what it holds behind a `<details>`.
fn push_workers(s: &mut String, workers: WorkersView<'_>) {
    s.push_str("<h2 id=\"workers\">Workers</h2>");
    let inv = match workers {
        None => {
            s.push_str("<p>This server collects no worker inventory.</p>");
            return;
        }
        Some(None) => {
            s.push_str("<p>The worker inventory is being collected (<a href=\"/v1/workers\">/v1/workers</a>).</p>");
            return;
        }
        Some(Some(inv)) => inv,
    };
    let _ = write!(
        s,
        "<p>Collected {}; machine-readable: <a href=\"/v1/workers\">/v1/workers</a>.</p>\
         <table><thead><tr><th>builder</th><th>host</th><th>health</th><th>builds</th>\
         <th>arches</th><th>storage</th><th>holds</th></tr></thead><tbody>",
        inv.collected_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    for h in &inv.hosts {
        push_host(s, h);
    }
    s.push_str("</tbody></table>");
}

fn push_host(s: &mut String, h: &HostReport) {
    let class = if h.is_ok() { "available" } else { "missing" };
    let busy = h.busy.map(|b| b.to_string()).unwrap_or_else(|| "?".into());
    let storage = match (&h.pool, h.engine_cache_bytes) {
        (Some(p), _) => format!("pool {} {} ({} free)", p.name, p.size, p.free),
        (None, Some(b)) => format!("engine cache {b} bytes"),
        (None, None) => String::new(),
    };
    let unreferenced = h.holds.iter().filter(|x| !x.referenced).count();
    let _ = write!(
        s,
        "<tr><td>{}</td><td>{}<br><code>{}</code></td><td class=\"{class}\">{}</td><td>{busy}/{}</td>\
         <td>{}</td><td>{}</td><td><details><summary>{} held, {unreferenced} unreferenced</summary><ul>",
        esc(h.builder.as_str()),
        esc(&h.host),
        esc(&h.address),
        esc(&h.health),
        h.slots,
        esc(&h.arches.join(" ")),
        esc(&storage),
        h.holds.len()
    );
    for x in &h.holds {
        let _ = write!(
            s,
            "<li>{} <code>{}</code>{}: {}{}</li>",
            esc(x.kind.as_str()),
            esc(&x.name),
            x.bytes.map(|b| format!(" ({b} bytes)")).unwrap_or_default(),
            if x.referenced {
                "referenced"
            } else {
                "unreferenced"
            },
            x.digest
                .as_deref()
                .map(|d| format!(" <code>{}</code>", esc(d)))
                .unwrap_or_default()
        );
    }
    s.push_str("</ul></details></td></tr>");
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
