//! The API's contract as data: every route with every status it can
//! answer, the body each status carries and the headers it sets.
//!
//! [`ROUTES`] is the one list. The router registers exactly these routes,
//! the OpenAPI document ([`super::openapi`]) builds each operation's
//! `responses` from it, and the tests below read the handlers' source to
//! check that every status a handler (or a layer in front of it) can
//! produce is declared here, and that nothing is declared that no code
//! produces. `tests/api.rs` and `tests/api_contract.rs` (schemathesis)
//! check the same table against the running server.

/// What a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (304).
    Empty,
    /// `application/json`, described by this schema of the document's
    /// `components/schemas`.
    Json(&'static str),
    /// `text/plain`.
    Text,
    /// `text/html`.
    Html,
}

/// One status a route can answer.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub status: u16,
    pub body: Body,
    pub description: &'static str,
    /// Headers this answer always sets.
    pub headers: &'static [&'static str],
}

/// One route: method, path (OpenAPI template), the handler's function name
/// (for the static status check), whether it needs the bearer token, and
/// every answer.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: &'static str,
    pub summary: &'static str,
    /// Needs `Authorization: Bearer <api.token>`: 401 without a bearer
    /// token, 403 with a wrong one (or when writes are disabled).
    pub auth: bool,
    pub replies: &'static [Reply],
}

impl Route {
    pub fn statuses(&self) -> impl Iterator<Item = u16> + '_ {
        self.replies.iter().map(|r| r.status)
    }

    pub fn reply(&self, status: u16) -> Option<&Reply> {
        self.replies.iter().find(|r| r.status == status)
    }
}

/// The route with this method and OpenAPI path template.
pub fn route(method: &str, path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
}

const fn reply(status: u16, body: Body, description: &'static str) -> Reply {
    Reply {
        status,
        body,
        description,
        headers: &[],
    }
}

const fn error(status: u16, description: &'static str) -> Reply {
    reply(status, Body::Json("Error"), description)
}

/// Every route answers 413 to a body over the limit (the body-limit layer
/// answers before any handler runs).
const TOO_LARGE: Reply = error(413, "request body over 16 KiB");
const UNAUTHORIZED: Reply = Reply {
    status: 401,
    body: Body::Json("Error"),
    description: "no bearer token (missing Authorization header, or not `Bearer`)",
    headers: &["WWW-Authenticate"],
};
const FORBIDDEN: Reply = error(
    403,
    "wrong bearer token, or writes disabled (api.token is empty)",
);

/// Every route: (method, path) → the statuses it answers.
pub const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/",
        handler: "status_page",
        summary: "HTML status matrix",
        auth: false,
        replies: &[reply(200, Body::Html, "status page"), TOO_LARGE],
    },
    Route {
        method: "get",
        path: "/healthz",
        handler: "healthz",
        summary: "Liveness",
        auth: false,
        replies: &[reply(200, Body::Text, "alive: `ok`"), TOO_LARGE],
    },
    Route {
        method: "get",
        path: "/readyz",
        handler: "readyz",
        summary: "Readiness, with snapshot size",
        auth: false,
        replies: &[reply(200, Body::Json("Ready"), "ready"), TOO_LARGE],
    },
    Route {
        method: "get",
        path: "/metrics",
        handler: "scrape",
        summary: "Prometheus metrics",
        auth: false,
        replies: &[
            reply(200, Body::Text, "Prometheus text exposition format"),
            TOO_LARGE,
        ],
    },
    Route {
        method: "get",
        path: "/v1/openapi.json",
        handler: "openapi_document",
        summary: "This document",
        auth: false,
        replies: &[
            reply(200, Body::Json("OpenApi"), "OpenAPI 3.1 document"),
            TOO_LARGE,
        ],
    },
    Route {
        method: "get",
        path: "/v1/resolve",
        handler: "resolve_route",
        summary: "Pin an image reference by digest",
        auth: false,
        replies: &[
            reply(200, Body::Json("Pin"), "pinned"),
            error(400, "malformed request: no `image`, or not NAME:TAG"),
            error(404, "unknown image or arch, with suggestions"),
            error(
                409,
                "version not available on this platform: the missing list says what and why",
            ),
            TOO_LARGE,
            error(414, "query string over 2048 bytes"),
        ],
    },
    Route {
        method: "get",
        path: "/v1/versions",
        handler: "versions_route",
        summary: "Availability of every version per platform and OS release",
        auth: false,
        replies: &[
            reply(
                200,
                Body::Json("VersionList"),
                "every version, newest first",
            ),
            TOO_LARGE,
        ],
    },
    Route {
        method: "get",
        path: "/v1/versions/{version}",
        handler: "version",
        summary: "Availability of one version",
        auth: false,
        replies: &[
            reply(200, Body::Json("Version"), "availability"),
            error(400, "path segment is not valid UTF-8"),
            error(404, "unknown version"),
            TOO_LARGE,
        ],
    },
    Route {
        method: "get",
        path: "/v1/platforms",
        handler: "platforms_route",
        summary: "Platforms and OS releases",
        auth: false,
        replies: &[
            reply(200, Body::Json("Platforms"), "platform → OS releases"),
            TOO_LARGE,
        ],
    },
    Route {
        method: "get",
        path: "/v1/lockfile",
        handler: "lockfile",
        summary: "The whole published lockfile (ETag, If-None-Match, gzip)",
        auth: false,
        replies: &[
            Reply {
                status: 200,
                body: Body::Json("Lockfile"),
                description: "the lockfile (gzip with Accept-Encoding: gzip)",
                headers: &["ETag", "Vary"],
            },
            Reply {
                status: 304,
                body: Body::Empty,
                description: "not modified: If-None-Match names the current ETag",
                headers: &["ETag", "Vary"],
            },
            TOO_LARGE,
        ],
    },
    Route {
        method: "get",
        path: "/v1/logs/{name}",
        handler: "build_log",
        summary: "A build log (linked from failures on the status page)",
        auth: false,
        replies: &[
            reply(200, Body::Text, "the log"),
            error(400, "not a log file name"),
            error(404, "no such log, or no log directory"),
            TOO_LARGE,
        ],
    },
    Route {
        method: "post",
        path: "/v1/reload",
        handler: "reload_route",
        summary: "Reload the lockfile now (bearer token)",
        auth: true,
        replies: &[
            reply(200, Body::Json("Reloaded"), "reloaded"),
            UNAUTHORIZED,
            FORBIDDEN,
            TOO_LARGE,
            error(422, "lockfile invalid; previous snapshot kept"),
            error(503, "the reload task failed; previous snapshot kept"),
        ],
    },
    Route {
        method: "post",
        path: "/v1/rebuild",
        handler: "rebuild",
        summary: "Queue a rebuild round in the daemon (bearer token)",
        auth: true,
        replies: &[
            reply(202, Body::Json("Queued"), "queued"),
            UNAUTHORIZED,
            FORBIDDEN,
            TOO_LARGE,
            error(
                503,
                "not running inside `kiln daemon`, or its scheduler stopped",
            ),
        ],
    },
];

/// Functions every request passes through before or after its handler;
/// the statuses they produce are declared on every route.
#[cfg(test)]
const LAYERS: &[&str] = &["body_limit_json"];

#[cfg(test)]
mod tests {
    //! The static half of the contract check: read `src/api/*.rs`, follow
    //! each handler's calls to functions defined there, collect every
    //! `StatusCode::NAME` they use, and compare with [`ROUTES`].

    use std::collections::{BTreeMap, BTreeSet};

    use axum::http::StatusCode;

    use super::*;

    const SOURCES: &[(&str, &str)] = &[
        ("mod.rs", include_str!("mod.rs")),
        ("auth.rs", include_str!("auth.rs")),
        ("gate.rs", include_str!("gate.rs")),
        ("html.rs", include_str!("html.rs")),
        ("metrics.rs", include_str!("metrics.rs")),
        ("openapi.rs", include_str!("openapi.rs")),
        ("resolve.rs", include_str!("resolve.rs")),
        ("snapshot.rs", include_str!("snapshot.rs")),
        ("suggest.rs", include_str!("suggest.rs")),
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
                } else if fns.contains_key(id)
                    && body[at + id.len()..].trim_start().starts_with('(')
                {
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
    fn routes_are_unique_and_write_routes_declare_auth() {
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
                r.method == "post",
                "{}: writes need the token",
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
}
