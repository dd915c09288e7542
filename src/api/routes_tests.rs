//! The static half of the contract check: read `src/api/*.rs`, follow
//! each handler's calls to functions defined there, collect every
//! `StatusCode::NAME` they use, and compare with [`ROUTES`].

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;

use super::*;

const SOURCES: &[(&str, &str)] = &[
    ("mod.rs", include_str!("mod.rs")),
    ("distribution.rs", include_str!("distribution.rs")),
    ("auth.rs", include_str!("auth.rs")),
    ("gate.rs", include_str!("gate.rs")),
    ("html.rs", include_str!("html.rs")),
    ("jobs.rs", include_str!("jobs.rs")),
    ("metrics.rs", include_str!("metrics.rs")),
    ("openapi.rs", include_str!("openapi.rs")),
    ("resolve.rs", include_str!("resolve.rs")),
    ("snapshot.rs", include_str!("snapshot.rs")),
    ("suggest.rs", include_str!("suggest.rs")),
    ("workers.rs", include_str!("workers.rs")),
];

/// The status constants the API may use; a new one is added here.
const KNOWN: &[(&str, StatusCode)] = &[
    ("OK", StatusCode::OK),
    ("ACCEPTED", StatusCode::ACCEPTED),
    ("NOT_MODIFIED", StatusCode::NOT_MODIFIED),
    ("BAD_REQUEST", StatusCode::BAD_REQUEST),
    ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
    ("FORBIDDEN", StatusCode::FORBIDDEN),
    ("NOT_FOUND", StatusCode::NOT_FOUND),
    ("METHOD_NOT_ALLOWED", StatusCode::METHOD_NOT_ALLOWED),
    ("CONFLICT", StatusCode::CONFLICT),
    ("PAYLOAD_TOO_LARGE", StatusCode::PAYLOAD_TOO_LARGE),
    ("URI_TOO_LONG", StatusCode::URI_TOO_LONG),
    ("UNPROCESSABLE_ENTITY", StatusCode::UNPROCESSABLE_ENTITY),
    ("INTERNAL_SERVER_ERROR", StatusCode::INTERNAL_SERVER_ERROR),
    ("BAD_GATEWAY", StatusCode::BAD_GATEWAY),
    ("SERVICE_UNAVAILABLE", StatusCode::SERVICE_UNAVAILABLE),
];

/// The text with comments, string and char literals blanked out (same
/// length, so offsets still line up), and the test module cut off.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = text[i..].find('\n').map_or(b.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'_') =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                let close = format!("\"{}", "#".repeat(hashes));
                let start = i + 2 + hashes;
                let end = text[start..]
                    .find(&close)
                    .map_or(b.len(), |n| start + n + close.len());
                blank(&mut out, i + 1, end);
                i = end;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j);
                i = j + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '{') or a lifetime ('a).
                let end = if b.get(i + 1) == Some(&b'\\') {
                    text[i + 2..].find('\'').map(|n| i + 2 + n)
                } else {
                    let w = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                    (b.get(i + 1 + w) == Some(&b'\'')).then_some(i + 1 + w)
                };
                match end {
                    Some(e) => {
                        blank(&mut out, i + 1, e);
                        i = e + 1;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8")
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Every identifier in `code` with its offset.
fn idents(code: &str) -> Vec<(usize, &str)> {
    let b = code.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if is_ident(b[i]) && (i == 0 || !is_ident(b[i - 1])) {
            let end = (i..b.len()).find(|&j| !is_ident(b[j])).unwrap_or(b.len());
            out.push((i, &code[i..end]));
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// `fn name` → its body, for every function of these sources.
fn functions(sources: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut fns: BTreeMap<String, String> = BTreeMap::new();
    for (file, text) in sources {
        let code = code_only(text);
        let ids = idents(&code);
        for w in ids.windows(2) {
            let ((_, kw), (at, name)) = (w[0], w[1]);
            if kw != "fn" {
                continue;
            }
            let b = code.as_bytes();
            // The body opens at the first `{` outside the signature's
            // parentheses and brackets; a `;` there means no body.
            let mut nesting = 0usize;
            let mut open = None;
            for (j, &c) in b.iter().enumerate().skip(at) {
                match c {
                    b'(' | b'[' => nesting += 1,
                    b')' | b']' => nesting = nesting.saturating_sub(1),
                    b'{' if nesting == 0 => {
                        open = Some(j);
                        break;
                    }
                    b';' if nesting == 0 => break,
                    _ => {}
                }
            }
            let Some(open) = open else { continue };
            let mut depth = 0usize;
            let mut close = b.len() - 1;
            for (j, &c) in b.iter().enumerate().skip(open) {
                match c {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            close = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let prev = fns.insert(name.to_string(), code[open..=close].to_string());
            assert!(
                prev.is_none(),
                "{file}: a second fn {name} in src/api; calls are followed by \
                 name, so rename one of them"
            );
        }
    }
    fns
}

/// Every status `name` can produce, following calls into functions of
/// `fns` (free functions, paths and methods alike).
fn statuses_of(fns: &BTreeMap<String, String>, name: &str) -> BTreeSet<u16> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    let mut out = BTreeSet::new();
    while let Some(f) = todo.pop() {
        if !seen.insert(f.clone()) {
            continue;
        }
        let body = fns
            .get(&f)
            .unwrap_or_else(|| panic!("no fn {f} in src/api"));
        let ids = idents(body);
        for (k, &(at, id)) in ids.iter().enumerate() {
            assert!(
                id != "from_u16",
                "fn {f}: a status computed at run time cannot be checked; \
                 use StatusCode constants"
            );
            if id == "StatusCode"
                && body[at + id.len()..].starts_with("::")
                && let Some(&(_, konst)) = ids.get(k + 1)
            {
                let code = KNOWN
                    .iter()
                    .find(|(n, _)| *n == konst)
                    .unwrap_or_else(|| panic!("fn {f}: add StatusCode::{konst} to KNOWN"));
                out.insert(code.1.as_u16());
            } else if fns.contains_key(id) && body[at + id.len()..].trim_start().starts_with('(') {
                todo.push(id.to_string());
            }
        }
    }
    out
}

#[test]
fn every_status_the_code_produces_is_declared_and_nothing_else() {
    let fns = functions(SOURCES);
    let layers: BTreeSet<u16> = LAYERS.iter().flat_map(|l| statuses_of(&fns, l)).collect();
    assert!(!layers.is_empty(), "the body-limit layer answers 413");
    for r in ROUTES {
        let mut produced = statuses_of(&fns, r.handler);
        produced.extend(&layers);
        let declared: BTreeSet<u16> = r.statuses().collect();
        let undeclared: Vec<_> = produced.difference(&declared).collect();
        assert!(
            undeclared.is_empty(),
            "{} {}: fn {} can answer {undeclared:?}, which ROUTES does not declare",
            r.method,
            r.path,
            r.handler
        );
        // 200 is what a handler answers when it names no status.
        let unproduced: Vec<_> = declared
            .iter()
            .filter(|s| **s != 200 && !produced.contains(s))
            .collect();
        assert!(
            unproduced.is_empty(),
            "{} {}: ROUTES declares {unproduced:?}, which fn {} never answers",
            r.method,
            r.path,
            r.handler
        );
    }
}

#[test]
fn routes_are_unique_and_writes_and_logs_declare_auth() {
    let mut seen = BTreeSet::new();
    for r in ROUTES {
        assert!(
            seen.insert((r.method, r.path)),
            "{} {} twice",
            r.method,
            r.path
        );
        let statuses: Vec<u16> = r.statuses().collect();
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(statuses, sorted, "{}: statuses in order, once", r.path);
        assert_eq!(
            r.auth,
            r.method == "post" || r.path == "/v1/logs/{name}",
            "{}: writes and build logs need the token",
            r.path
        );
        if r.auth {
            let unauthorized = r.reply(401).expect("401 declared");
            assert!(unauthorized.headers.contains(&"WWW-Authenticate"));
            assert!(r.reply(403).is_some(), "{}: 403 declared", r.path);
        }
    }
}

#[test]
fn the_scanner_follows_calls_and_skips_literals() {
    let text = "fn a() { let s = \"StatusCode::OK }\"; let c = '}'; b(s); x.m() }\n\
                // StatusCode::CONFLICT\n\
                fn b<'x>(v: [u8; 2]) -> R { StatusCode::NOT_FOUND }\n\
                fn m(&self) { StatusCode::ACCEPTED }\n\
                fn unused() { StatusCode::FORBIDDEN }\n\
                trait T { fn decl(); }\n\
                #[cfg(test)]\nmod tests { fn a() { StatusCode::BAD_REQUEST } }\n";
    let fns = functions(&[("t.rs", text)]);
    assert_eq!(
        fns.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "m", "unused"]
    );
    assert_eq!(
        statuses_of(&fns, "a").into_iter().collect::<Vec<_>>(),
        [202, 404]
    );
}
