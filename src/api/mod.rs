//! The digest API: serves pins from the published lockfile and refuses
//! versions that are not complete.
//!
//! Every request reads one immutable [`snapshot::Snapshot`]; reloads swap it
//! atomically. Routes and every status each can answer are listed once in
//! [`ROUTES`] (`routes.rs`): the OpenAPI document is built from it, and
//! tests check the handlers and the running server against it.

mod auth;
mod distribution;
pub mod gate;
mod html;
mod jobs;
mod metrics;
mod openapi;
pub mod resolve;
mod routes;
pub mod snapshot;
pub mod suggest;
pub mod workers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::catalogue::{Arch, OcamlVersion};
pub use distribution::Backing;
use gate::Verdict;
pub use metrics::Metrics;
use metrics::count;
use snapshot::{Snapshot, Store};

pub use routes::{Body, ROUTES, Reply, Route, route};

/// The longest query string, and the longest `image` and `arch` (in
/// characters) of `/v1/resolve`: the document declares the two parameters'
/// `maxLength`, and everything over any of them is a malformed request
/// (400), as the document says. Within both, a query is never over
/// `MAX_QUERY`, even percent-encoded.
const MAX_QUERY: usize = 2048;
const MAX_IMAGE: usize = 512;
const MAX_ARCH: usize = 32;
/// Request bodies larger than this get a 413.
const MAX_BODY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
}

pub struct AppState {
    pub store: Store,
    /// Bearer token for writes; empty disables them.
    pub token: String,
    /// Where build logs live (served under /v1/logs/NAME).
    pub log_dir: Option<std::path::PathBuf>,
    /// The daemon's rebuild trigger, when the API runs inside `kiln daemon`.
    pub rebuild: Option<tokio::sync::mpsc::Sender<crate::model::rebuild::Rebuild>>,
    /// The state database holding the job queue, for queue metrics.
    pub queue_db: Option<std::path::PathBuf>,
    pub metrics: Metrics,
    /// The registry `/v2/` reads published manifests and blobs from; without
    /// one, `/v2/` answers 502 for them.
    pub distribution: Option<Arc<Backing>>,
    /// The worker inventory (`/v1/workers`, the status page); without
    /// one, `/v1/workers` answers 503.
    pub workers: Option<Arc<workers::Workers>>,
}

pub type Shared = Arc<AppState>;

#[derive(Serialize)]
struct ErrorBody {
    error: String,
    message: String,
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error: kind.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/openapi.json", get(openapi_document))
        .route("/v1/resolve", get(resolve_route))
        .route("/v1/versions", get(versions_route))
        .route("/v1/versions/{version}", get(version))
        .route("/v1/platforms", get(platforms_route))
        .route("/v1/workers", get(workers_route))
        .route("/v1/lockfile", get(lockfile))
        .route("/v1/logs/{name}", get(build_log))
        .route("/v1/reload", post(reload_route))
        .route("/v1/rebuild", post(rebuild))
        .route("/v1/jobs", get(jobs::list_jobs).post(jobs::queue_job))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/jobs/{id}/retry", post(jobs::retry_job))
        .route("/v2/", get(distribution::v2_base))
        .route("/v2/{*rest}", get(distribution::v2_dispatch))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such route; see /v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(axum::middleware::map_response(body_limit_json))
        .with_state(state)
}

/// The body-limit layer answers 413 in plain text before any handler runs;
/// every other error of the API is JSON, so this one is made JSON too.
async fn body_limit_json(r: Response) -> Response {
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() != StatusCode::PAYLOAD_TOO_LARGE || json {
        return r;
    }
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!("request bodies are limited to {MAX_BODY} bytes"),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn openapi_document() -> Response {
    openapi::document().into_response()
}

/// Serve until `shutdown` resolves; polls the lockfile for changes.
pub async fn serve(
    state: Shared,
    addr: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    serve_on(state, listener, shutdown).await
}

pub async fn serve_on(
    state: Shared,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let watcher = {
        let state = state.clone();
        tokio::spawn(async move {
            warm_v2(&state).await;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let s = state.clone();
                let r = tokio::task::spawn_blocking(move || s.store.reload_if_changed()).await;
                match r {
                    Ok(Ok(true)) => {
                        state.metrics.reloaded();
                        tracing::info!("lockfile changed: snapshot reloaded");
                        warm_v2(&state).await;
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        state.metrics.reload_failed();
                        tracing::warn!(error = %e, "lockfile reload failed; serving the previous snapshot");
                    }
                    Err(e) => tracing::warn!(error = %e, "reload task failed"),
                }
            }
        })
    };
    let inventory = state.workers.clone().map(|w| {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let lock = state.store.current();
                w.refresh(&lock.lockfile).await;
                tokio::time::sleep(w.max_age()).await;
            }
        })
    });
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?local, "digest API listening");
    let app = router(state).into_make_service();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ApiError::Serve);
    watcher.abort();
    if let Some(t) = inventory {
        t.abort();
    }
    result
}

/// Read what the current snapshot publishes into `/v2/`'s memory.
async fn warm_v2(state: &Shared) {
    if let Some(b) = &state.distribution {
        let failed = b.warm(&state.store.current()).await;
        if failed > 0 {
            tracing::warn!(failed, "/v2/: some published manifests are not in memory");
        }
    }
}

async fn readyz(State(st): State<Shared>) -> Response {
    let snap = st.store.current();
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "ready": true,
            "entries": snap.lockfile.entries.len(),
            "requirements": snap.requirements.len(),
            "loaded_at": snap.loaded_at,
        })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ResolveQuery {
    image: String,
    arch: Option<String>,
}

async fn resolve_route(
    State(st): State<Shared>,
    RawQuery(raw): RawQuery,
    query: Result<Query<ResolveQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let too_long = raw.as_ref().is_some_and(|q| q.len() > MAX_QUERY);
    let within = |Query(q): &Query<ResolveQuery>| {
        !too_long
            && q.image.chars().count() <= MAX_IMAGE
            && q.arch
                .as_ref()
                .is_none_or(|a| a.chars().count() <= MAX_ARCH)
    };
    let Some(Query(q)) = query.ok().filter(within) else {
        let r = error(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!(
                "expected ?image=NAME:TAG[&arch=ARCH] (image up to {MAX_IMAGE} characters, arch up to {MAX_ARCH}, the query up to {MAX_QUERY} bytes), e.g. ?image=ocaml/opam:debian-13-ocaml-5.5"
            ),
        );
        count(&st, 0, r.status());
        return r;
    };
    let snap = st.store.current();
    let r = match resolve::resolve(&snap, &q.image, q.arch.as_deref()) {
        Ok(pin) => (StatusCode::OK, axum::Json(pin)).into_response(),
        Err(refusal) => (refusal.http_status(), axum::Json(refusal)).into_response(),
    };
    count(&st, 0, r.status());
    r
}

/// Availability of one (platform, OS release) for one version.
#[derive(Serialize)]
pub struct Cell {
    pub platform: String,
    pub os: String,
    pub tag: String,
    pub available: bool,
    pub arches: BTreeMap<Arch, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<gate::Missing>,
}

#[derive(Serialize)]
pub struct VersionView {
    pub version: OcamlVersion,
    /// Every required tag of this version is available.
    pub available: bool,
    pub cells: Vec<Cell>,
}

pub fn version_view(snap: &Snapshot, v: &OcamlVersion) -> Option<VersionView> {
    let cells: Vec<Cell> = snap
        .requirements
        .iter()
        .filter(|r| r.ocaml == *v)
        .map(|r| match gate::verdict(r, &snap.lockfile, &snap.jobs) {
            Verdict::Available { entry } => Cell {
                platform: r.platform.clone(),
                os: r.os.clone(),
                tag: r.tag.clone(),
                available: true,
                arches: entry
                    .arches
                    .iter()
                    .map(|(a, e)| (*a, e.digest.clone()))
                    .collect(),
                missing: vec![],
            },
            Verdict::Missing { missing } => Cell {
                platform: r.platform.clone(),
                os: r.os.clone(),
                tag: r.tag.clone(),
                available: false,
                arches: BTreeMap::new(),
                missing,
            },
        })
        .collect();
    if cells.is_empty() {
        return None;
    }
    Some(VersionView {
        version: v.clone(),
        available: cells.iter().all(|c| c.available),
        cells,
    })
}

async fn versions_route(State(st): State<Shared>) -> Response {
    let snap = st.store.current();
    let all: Vec<VersionView> = snap
        .versions()
        .iter()
        .filter_map(|v| version_view(&snap, v))
        .collect();
    count(&st, 2, StatusCode::OK);
    axum::Json(all).into_response()
}

async fn version(State(st): State<Shared>, v: Result<Path<String>, PathRejection>) -> Response {
    let v = match v {
        Ok(Path(v)) => v,
        Err(e) => {
            let r = bad_path(&e);
            count(&st, 2, r.status());
            return r;
        }
    };
    let snap = st.store.current();
    let view = v
        .parse::<OcamlVersion>()
        .ok()
        .and_then(|v| version_view(&snap, &v));
    let r = match view {
        Some(view) => axum::Json(view).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown-version",
            format!(
                "no catalogue version {v:?}; known: {}",
                snap.versions()
                    .iter()
                    .take(8)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    };
    count(&st, 2, r.status());
    r
}

async fn platforms_route(State(st): State<Shared>) -> Response {
    let snap = st.store.current();
    count(&st, 3, StatusCode::OK);
    axum::Json(snap.platforms()).into_response()
}

/// Every host of every builder: health, capacity in use, arches, holds.
async fn workers_route(State(st): State<Shared>) -> Response {
    let Some(w) = &st.workers else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-inventory",
            "this server collects no worker inventory",
        );
    };
    let snap = st.store.current();
    let inv = w.within_max_age(&snap.lockfile).await;
    axum::Json(inv.as_ref()).into_response()
}

async fn lockfile(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let snap = st.store.current();
    let etag = snap.etag.clone();
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let gzip = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
        let mut r = if gzip {
            let mut r = snap.lockfile_gzip.clone().into_response();
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            r
        } else {
            snap.lockfile_json.clone().into_response()
        };
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    count(&st, 1, resp.status());
    resp
}

/// A path segment the router could not decode (not UTF-8): 400, in JSON
/// like every other refusal.
fn bad_path(e: &PathRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "bad-path", e.body_text())
}

async fn reload_route(State(st): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(denied) = auth::writer(&st.token, &headers) {
        return denied.answer();
    }
    let s = st.clone();
    match tokio::task::spawn_blocking(move || s.store.reload()).await {
        Ok(Ok(())) => {
            st.metrics.reloaded();
            let snap = st.store.current();
            axum::Json(serde_json::json!({"reloaded": true, "entries": snap.lockfile.entries.len(), "etag": snap.etag})).into_response()
        }
        Ok(Err(e)) => {
            st.metrics.reload_failed();
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "reload-failed",
                format!("{e}; still serving the previous snapshot"),
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload-failed",
            e.to_string(),
        ),
    }
}

/// A build log by file name (no paths: `[A-Za-z0-9._+-]+\.log`).
async fn build_log(
    State(st): State<Shared>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    // A log holds whatever the build printed (environment, URLs, a
    // credential a recipe echoed): the token's, like the write routes.
    if let Err(denied) = auth::writer(&st.token, &headers) {
        return denied.answer();
    }
    let name = match name {
        Ok(Path(name)) => name,
        Err(e) => return bad_path(&e),
    };
    let valid = name.ends_with(".log")
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if !valid {
        return error(
            StatusCode::BAD_REQUEST,
            "bad-log-name",
            "log names look like linux_debian-13_5.5.0_amd64.log",
        );
    }
    let Some(dir) = &st.log_dir else {
        return error(
            StatusCode::NOT_FOUND,
            "no-logs",
            "this server has no log directory",
        );
    };
    match tokio::fs::read(dir.join(&name)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response(),
        Err(_) => error(
            StatusCode::NOT_FOUND,
            "no-such-log",
            format!("no log {name}"),
        ),
    }
}

/// Ask the daemon for a rebuild round (bearer token).
async fn rebuild(State(st): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(denied) = auth::writer(&st.token, &headers) {
        return denied.answer();
    }
    let Some(tx) = &st.rebuild else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-daemon",
            "rebuilds are run by `kiln daemon`; this is `kiln serve`",
        );
    };
    match tx.try_send(crate::model::rebuild::Rebuild::Round { who: "api".into() }) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"queued": true})),
        )
            .into_response(),
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"queued": true, "note": "a rebuild is already queued"})),
        )
            .into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-daemon",
            "the scheduler has stopped",
        ),
    }
}

async fn status_page(State(st): State<Shared>) -> Response {
    let snap = st.store.current();
    count(&st, 4, StatusCode::OK);
    let workers = st.workers.as_ref().map(|w| w.latest());
    Html(html::render(&snap, workers.as_ref())).into_response()
}
