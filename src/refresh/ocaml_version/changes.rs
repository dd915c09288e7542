//! The CHANGES.md entry of a release, in upstream's words (`Add OCaml
//! 4.14.3 and 5.4.1`, `Add OCaml 5.4.0~rc1`, `Add OCaml 5.5 trunk
//! version`), under an `## unreleased` heading at the top: the
//! maintainers add the attribution and the release heading when they cut
//! ocaml-version's release.

use crate::catalogue::{OcamlVersion, Status};

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The entry's lines for these versions and their statuses: one for the
/// releases and prereleases, one per series under development.
pub fn entry(bump: &[(OcamlVersion, Status)]) -> Option<String> {
    let mut names: Vec<&OcamlVersion> = bump
        .iter()
        .filter(|(_, s)| !matches!(s, Status::Trunk | Status::Dev))
        .map(|(v, _)| v)
        .collect();
    names.sort();
    let mut lines = Vec::new();
    if !names.is_empty() {
        let names: Vec<String> = names.iter().map(|v| v.to_string()).collect();
        lines.push(format!("Add OCaml {}", and_list(&names)));
    }
    for (v, s) in bump {
        if *s == Status::Trunk {
            lines.push(format!("Add OCaml {} trunk version", v.series_tag()));
        }
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// CHANGES.md with `entry`'s lines as bullets of the `## unreleased`
/// section (made at the top when missing); lines already there are not
/// added again.
pub fn add_entry(changes: &str, entry: &str) -> String {
    let bullets: Vec<String> = entry
        .lines()
        .map(|l| format!(" * {l}"))
        .filter(|b| {
            !changes
                .lines()
                .any(|c| c.trim_end() == b || c.starts_with(&format!("{b} (")))
        })
        .collect();
    if bullets.is_empty() {
        return changes.to_string();
    }
    let first = changes.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if !first.trim().eq_ignore_ascii_case("## unreleased") {
        return format!("## unreleased\n\n{}\n\n{changes}", bullets.join("\n"));
    }
    // After the section's last bullet.
    let mut at = 0;
    let mut last_bullet_end = None;
    let mut seen_heading = false;
    for line in changes.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with("## ") {
            if seen_heading {
                break;
            }
            seen_heading = true;
        } else if t.starts_with("* ") {
            last_bullet_end = Some(at + line.len());
        }
        at += line.len();
    }
    let insert = bullets.iter().map(|b| format!("{b}\n")).collect::<String>();
    let mut out = changes.to_string();
    match last_bullet_end {
        Some(end) => out.insert_str(end, &insert),
        None => {
            let heading_end = changes.find('\n').map_or(changes.len(), |n| n + 1);
            out.insert_str(heading_end, &format!("\n{insert}"));
        }
    }
    out
}
