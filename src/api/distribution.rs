//! The read side of the OCI distribution API under `/v2/`, for what is
//! published, behind the gate: `docker manifest inspect`, `docker pull`,
//! skopeo and containerd pull through Kiln and see only complete versions.
//!
//! A name is matched as the digest API matches it (the repository's last
//! path component, `ocaml/opam` → `opam`), a tag by tag or alias. A tag the
//! gate refuses answers `MANIFEST_UNKNOWN` with the refusal (and its
//! missing list) in the error's `detail`; an unknown tag says so, with the
//! closest names. Manifests are answered byte for byte as the backing
//! registry holds them (its media type, `Docker-Content-Digest`), from a
//! cache keyed by digest: content-addressed, so an entry never goes stale;
//! it is filled when a snapshot loads ([`Backing::warm`]) and on a miss.
//! Blobs referenced by a published manifest are streamed from the backing
//! registry (through Kiln's client, so its credentials work); the client
//! checks their digest.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Body as HttpBody;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::gate::{Verdict, verdict};
use super::resolve::{Refusal, resolve};
use super::snapshot::{Snapshot, basename};
use crate::lockfile::Entry;
use crate::registry::{Registry, RegistryError};

const API_VERSION: &str = "registry/2.0";

/// A manifest as the backing registry holds it.
struct Cached {
    bytes: bytes::Bytes,
    media_type: String,
}

/// The backing registry and what has been read from it.
pub struct Backing {
    registry: Registry,
    /// digest → manifest.
    manifests: RwLock<HashMap<String, Arc<Cached>>>,
    /// blob digest → the repository of a manifest that references it.
    blobs: RwLock<HashMap<String, String>>,
}

/// The blobs a manifest references (config, layers; artifact blobs).
fn referenced(v: &Value) -> Vec<String> {
    let one = |x: &Value| x["digest"].as_str().map(str::to_string);
    let mut out: Vec<String> = one(&v["config"]).into_iter().collect();
    for key in ["layers", "blobs"] {
        out.extend(v[key].as_array().into_iter().flatten().filter_map(one));
    }
    out
}

impl Backing {
    pub fn new(registry: Registry) -> Backing {
        Backing {
            registry,
            manifests: RwLock::new(HashMap::new()),
            blobs: RwLock::new(HashMap::new()),
        }
    }

    fn cached(&self, digest: &str) -> Option<Arc<Cached>> {
        let m = self.manifests.read().unwrap_or_else(|p| p.into_inner());
        m.get(digest).cloned()
    }

    /// The manifest `digest` of `repository`, from memory or fetched (and
    /// its digest checked) from the backing registry.
    async fn manifest(&self, repository: &str, digest: &str) -> Result<Arc<Cached>, RegistryError> {
        if let Some(c) = self.cached(digest) {
            return Ok(c);
        }
        let m = self.registry.get_manifest(repository, digest).await?;
        if let Ok(v) = serde_json::from_slice::<Value>(&m.bytes) {
            let mut b = self.blobs.write().unwrap_or_else(|p| p.into_inner());
            for d in referenced(&v) {
                b.entry(d).or_insert_with(|| repository.to_string());
            }
        }
        let c = Arc::new(Cached {
            bytes: m.bytes.into(),
            media_type: m.media_type,
        });
        let mut w = self.manifests.write().unwrap_or_else(|p| p.into_inner());
        w.insert(digest.to_string(), c.clone());
        Ok(c)
    }

    /// Read every manifest `snap` publishes (each index and its children)
    /// into memory; the number the registry did not answer for (each
    /// failure is logged).
    pub async fn warm(&self, snap: &Snapshot) -> usize {
        let mut failed = 0;
        for e in snap.lockfile.entries.values() {
            for d in std::iter::once(&e.digest).chain(e.arches.values().map(|a| &a.digest)) {
                if let Err(err) = self.manifest(&e.repository, d).await {
                    // A manifest the registry lost cannot hide a blob.
                    failed += usize::from(!absent(&err));
                    tracing::warn!(repository = %e.repository, digest = %d, error = %err, "cannot read a published manifest");
                }
            }
        }
        failed
    }
}

/// The backing registry answered that it has no such thing (as opposed
/// to not answering): the lockfile names what the registry lost.
fn absent(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Status { status, .. } if status.as_u16() == 404)
}

/// An error in the distribution API's format.
fn v2_error(status: StatusCode, code: &str, message: &str, detail: Value) -> Response {
    let mut r = (
        status,
        axum::Json(json!({"errors": [{"code": code, "message": message, "detail": detail}]})),
    )
        .into_response();
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    r
}

/// `GET /v2/`: this is a registry (no authentication needed to read).
pub(super) async fn v2_base() -> Response {
    let mut r = axum::Json(json!({})).into_response();
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    r
}

/// Everything under `/v2/NAME/…`, NAME holding slashes.
pub(super) async fn v2_dispatch(
    State(st): State<Shared>,
    method: Method,
    rest: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(rest)) = rest else {
        return v2_unknown_route();
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return v2_tags(&st, name);
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return v2_manifest(&st, &method, name, reference).await;
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return v2_blob(&st, &method, name, digest).await;
    }
    v2_unknown_route()
}

fn v2_unknown_route() -> Response {
    v2_error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        "not a route of the distribution API: /v2/NAME/manifests/REF, /v2/NAME/blobs/DIGEST, /v2/NAME/tags/list",
        Value::Null,
    )
}

/// Every tag and alias of `name` that resolves now.
pub(super) fn v2_tags(st: &Shared, name: &str) -> Response {
    let snap = st.store.current();
    let base = basename(name);
    let mut tags: Vec<&str> = snap
        .names
        .iter()
        .filter_map(|n| n.strip_prefix(base)?.strip_prefix(':'))
        .filter(|tag| entry_for(&snap, name, tag).is_some())
        .collect();
    tags.sort_unstable();
    if tags.is_empty() {
        return v2_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            &format!("no published repository {name}"),
            Value::Null,
        );
    }
    axum::Json(json!({"name": name, "tags": tags})).into_response()
}

/// The entry a tag of `name` stands for, when the gate lets it through.
fn entry_for<'a>(snap: &'a Snapshot, name: &str, tag: &str) -> Option<&'a Entry> {
    match snap.requirement(name, tag) {
        Some(req) => match verdict(req, &snap.lockfile, &snap.jobs) {
            Verdict::Available { entry } => Some(entry),
            Verdict::Missing { .. } => None,
        },
        None => snap.published(name, tag),
    }
}

/// The repository of `name` publishing manifest `digest` (an index or
/// one of its children), if any.
fn publishing(snap: &Snapshot, name: &str, digest: &str) -> Option<String> {
    let base = basename(name);
    snap.lockfile
        .entries
        .values()
        .filter(|e| basename(&e.repository) == base)
        .find(|e| e.digest == digest || e.arches.values().any(|a| a.digest == digest))
        .map(|e| e.repository.clone())
}

/// A manifest by tag (through the gate) or by digest.
pub(super) async fn v2_manifest(
    st: &Shared,
    method: &Method,
    name: &str,
    reference: &str,
) -> Response {
    let snap = st.store.current();
    let (repository, digest) = if reference.starts_with("sha256:") {
        match publishing(&snap, name, reference) {
            Some(repo) => (repo, reference.to_string()),
            None => {
                return v2_error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    &format!("{name}@{reference} is not a published manifest"),
                    Value::Null,
                );
            }
        }
    } else {
        match entry_for(&snap, name, reference) {
            Some(e) => (e.repository.clone(), e.digest.clone()),
            None => return v2_refusal(&snap, name, reference),
        }
    };
    let Some(backing) = &st.distribution else {
        return v2_unavailable("this server has no backing registry");
    };
    match backing.manifest(&repository, &digest).await {
        Ok(m) => {
            let mut r = if *method == Method::HEAD {
                let mut r = StatusCode::OK.into_response();
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
                r
            } else {
                m.bytes.clone().into_response()
            };
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&m.media_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&digest) {
                h.insert("docker-content-digest", v);
            }
            h.insert(
                "docker-distribution-api-version",
                HeaderValue::from_static(API_VERSION),
            );
            r
        }
        Err(e) if absent(&e) => v2_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!(
                "{name}:{reference} is published ({digest}) but the backing registry does not have it (`kiln verify` says more)"
            ),
            Value::Null,
        ),
        Err(e) => v2_unavailable(&format!("backing registry: {e}")),
    }
}

fn v2_unavailable(message: &str) -> Response {
    v2_error(StatusCode::BAD_GATEWAY, "UNKNOWN", message, Value::Null)
}

/// `MANIFEST_UNKNOWN` for a tag: refused by the gate (the refusal, with
/// its missing list, as the detail) or unknown (with suggestions).
fn v2_refusal(snap: &Snapshot, name: &str, tag: &str) -> Response {
    let image = format!("{name}:{tag}");
    let (message, detail) = match resolve(snap, &image, None) {
        Err(r) => {
            let message = match &*r {
                Refusal::NotAvailable { message, .. } => message.clone(),
                Refusal::Unknown { message, .. } => message.clone(),
                Refusal::BadRequest { message } => message.clone(),
            };
            (message, serde_json::to_value(&*r).unwrap_or(Value::Null))
        }
        Ok(_) => (format!("{image} is not published"), Value::Null),
    };
    v2_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &message, detail)
}

/// A blob some published manifest of `name` references, streamed from the
/// backing registry.
pub(super) async fn v2_blob(st: &Shared, method: &Method, name: &str, digest: &str) -> Response {
    let Some(backing) = &st.distribution else {
        return v2_unavailable("this server has no backing registry");
    };
    let known = |b: &Backing| {
        let blobs = b.blobs.read().unwrap_or_else(|p| p.into_inner());
        blobs
            .get(digest)
            .filter(|repo| basename(repo) == basename(name))
            .cloned()
    };
    let repository = match known(backing) {
        Some(r) => r,
        None => {
            // Not seen yet: read the published manifests, then look again.
            let snap = st.store.current();
            let failed = backing.warm(&snap).await;
            match known(backing) {
                Some(r) => r,
                None if failed > 0 => {
                    return v2_unavailable(&format!(
                        "backing registry: {failed} published manifests could not be read, so {name}@{digest} cannot be told apart"
                    ));
                }
                None => {
                    return v2_error(
                        StatusCode::NOT_FOUND,
                        "BLOB_UNKNOWN",
                        &format!("{name}@{digest} is not referenced by a published manifest"),
                        Value::Null,
                    );
                }
            }
        }
    };
    let lost = || {
        v2_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            &format!("{name}@{digest} is referenced but the backing registry does not have it"),
            Value::Null,
        )
    };
    let r = if *method == Method::HEAD {
        match backing.registry.blob_size(&repository, digest).await {
            Ok(None) => return lost(),
            other => other.map(|size| (size.map(HeaderValue::from), HttpBody::empty())),
        }
    } else {
        backing
            .registry
            .get_blob(&repository, digest)
            .await
            .map(|r| {
                let len = r.headers().get(header::CONTENT_LENGTH).cloned();
                (len, HttpBody::from_stream(r.bytes_stream()))
            })
    };
    match r {
        Ok((len, body)) => {
            let mut resp = Response::new(body);
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Some(l) = len {
                h.insert(header::CONTENT_LENGTH, l);
            }
            if let Ok(v) = HeaderValue::from_str(digest) {
                h.insert("docker-content-digest", v);
            }
            h.insert(
                "docker-distribution-api-version",
                HeaderValue::from_static(API_VERSION),
            );
            resp
        }
        Err(e) if absent(&e) => lost(),
        Err(e) => v2_unavailable(&format!("backing registry: {e}")),
    }
}
