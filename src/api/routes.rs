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
    /// An image manifest or index, in the media type the backing registry
    /// holds it in (OCI or Docker), byte for byte.
    Manifest,
    /// `application/octet-stream`: a blob, streamed.
    Blob,
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
    /// token, 403 with a wrong one (or when `api.token` is empty). The
    /// write routes and the build logs.
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
            error(
                400,
                "malformed request: no `image`, not NAME:TAG, or a parameter over its `maxLength` (the query over 2048 bytes)",
            ),
            error(404, "unknown image or arch, with suggestions"),
            error(
                409,
                "version not available on this platform: the missing list says what and why",
            ),
            TOO_LARGE,
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
        path: "/v1/workers",
        handler: "workers_route",
        summary: "Every host of every builder: health, builds, arches, what it holds",
        auth: false,
        replies: &[
            reply(
                200,
                Body::Json("Inventory"),
                "the worker inventory (collected at most once a minute)",
            ),
            TOO_LARGE,
            error(503, "this server collects no worker inventory"),
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
        summary: "A build log (bearer token: a log holds whatever the build printed)",
        auth: true,
        replies: &[
            reply(200, Body::Text, "the log"),
            error(400, "not a log file name"),
            UNAUTHORIZED,
            FORBIDDEN,
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
    Route {
        method: "get",
        path: "/v1/jobs",
        handler: "list_jobs",
        summary: "The daemon's latest 100 jobs, newest first",
        auth: false,
        replies: &[
            reply(200, Body::Json("Jobs"), "the jobs"),
            TOO_LARGE,
            error(
                503,
                "not running inside `kiln daemon`, or the state store failed",
            ),
        ],
    },
    Route {
        method: "post",
        path: "/v1/jobs",
        handler: "queue_job",
        summary: "Queue one tag, forced to rebuild though its key is unchanged if asked (bearer token)",
        auth: true,
        replies: &[
            reply(
                202,
                Body::Json("JobQueued"),
                "queued (or joined the job already waiting)",
            ),
            error(400, "the body is not {\"tag\": …, \"force\": …}"),
            UNAUTHORIZED,
            FORBIDDEN,
            error(
                404,
                "no such tag in the plan, or no configured builder for it",
            ),
            TOO_LARGE,
            error(
                503,
                "not running inside `kiln daemon`, or the state store failed",
            ),
        ],
    },
    Route {
        method: "post",
        path: "/v1/jobs/{id}/cancel",
        handler: "cancel_job",
        summary: "Cancel a queued job, or stop a running one leaving nothing (bearer token)",
        auth: true,
        replies: &[
            reply(
                200,
                Body::Json("JobCancel"),
                "cancelled, or the stop requested",
            ),
            error(400, "the id is not a number"),
            UNAUTHORIZED,
            FORBIDDEN,
            error(404, "no such job"),
            error(409, "the job is neither queued nor running"),
            TOO_LARGE,
            error(
                503,
                "not running inside `kiln daemon`, or the state store failed",
            ),
        ],
    },
    Route {
        method: "post",
        path: "/v1/jobs/{id}/retry",
        handler: "retry_job",
        summary: "Queue a failed or cancelled job again (bearer token)",
        auth: true,
        replies: &[
            reply(202, Body::Json("JobRetry"), "queued again in a new round"),
            error(400, "the id is not a number"),
            UNAUTHORIZED,
            FORBIDDEN,
            error(404, "no such job"),
            error(
                409,
                "the job is neither failed nor cancelled, or its tag is queued already",
            ),
            TOO_LARGE,
            error(
                503,
                "not running inside `kiln daemon`, or the state store failed",
            ),
        ],
    },
    Route {
        method: "get",
        path: "/v2/",
        handler: "v2_base",
        summary: "OCI distribution API: this server reads like a registry",
        auth: false,
        replies: &[
            Reply {
                status: 200,
                body: Body::Json("Empty"),
                description: "a registry (no authentication needed to read)",
                headers: &[V2_VERSION],
            },
            TOO_LARGE,
        ],
    },
    Route {
        method: "get",
        path: "/v2/{name}/manifests/{reference}",
        handler: "v2_manifest",
        summary: "A published manifest or index by tag (through the gate) or digest",
        auth: false,
        replies: V2_MANIFEST,
    },
    Route {
        method: "head",
        path: "/v2/{name}/manifests/{reference}",
        handler: "v2_manifest",
        summary: "A published manifest's digest, media type and size",
        auth: false,
        replies: V2_MANIFEST,
    },
    Route {
        method: "get",
        path: "/v2/{name}/blobs/{digest}",
        handler: "v2_blob",
        summary: "A blob of a published manifest, streamed from the backing registry",
        auth: false,
        replies: V2_BLOB,
    },
    Route {
        method: "head",
        path: "/v2/{name}/blobs/{digest}",
        handler: "v2_blob",
        summary: "A blob's size",
        auth: false,
        replies: V2_BLOB,
    },
    Route {
        method: "get",
        path: "/v2/{name}/tags/list",
        handler: "v2_tags",
        summary: "The tags and aliases of a repository that resolve now",
        auth: false,
        replies: &[
            reply(
                200,
                Body::Json("TagList"),
                "every tag the gate lets through",
            ),
            oci_error(404, "`NAME_UNKNOWN`: no published repository of that name"),
            TOO_LARGE,
        ],
    },
];

const V2_VERSION: &str = "Docker-Distribution-API-Version";

const fn oci_error(status: u16, description: &'static str) -> Reply {
    Reply {
        status,
        body: Body::Json("OciError"),
        description,
        headers: &[V2_VERSION],
    }
}

const V2_MANIFEST: &[Reply] = &[
    Reply {
        status: 200,
        body: Body::Manifest,
        description: "the manifest, byte for byte as the backing registry holds it",
        headers: &["Docker-Content-Digest", V2_VERSION],
    },
    oci_error(
        404,
        "`MANIFEST_UNKNOWN`: a tag the gate refuses (its refusal, with the missing list, in `detail`), an unknown tag (with suggestions), a digest nothing publishes, or one the backing registry does not have",
    ),
    TOO_LARGE,
    oci_error(502, "the backing registry did not answer"),
];

const V2_BLOB: &[Reply] = &[
    Reply {
        status: 200,
        body: Body::Blob,
        description: "the blob, streamed from the backing registry",
        headers: &["Docker-Content-Digest", V2_VERSION],
    },
    oci_error(
        404,
        "`BLOB_UNKNOWN`: no published manifest of this name references it",
    ),
    TOO_LARGE,
    oci_error(502, "the backing registry did not answer"),
];

/// Functions every request passes through before or after its handler;
/// the statuses they produce are declared on every route.
#[cfg(test)]
const LAYERS: &[&str] = &["body_limit_json"];

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
