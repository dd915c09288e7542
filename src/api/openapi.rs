//! The OpenAPI 3.1 document: the API's contract.
//!
//! Paths, methods, summaries, security and every response (status, body
//! schema, headers) come from [`super::ROUTES`]; this file adds what the
//! table does not say: parameters and the schemas of the bodies. The
//! lockfile's schema is the committed `manifests/lockfile.schema.json`.

use axum::Json;
use serde_json::{Map, Value, json};

use super::gate::MissingReason;
use super::routes::{Body, ROUTES, Route};
use crate::builders::inventory::HeldKind;
use crate::catalogue::{Arch, BuilderKind};
use crate::model::FailureKind;

pub fn document() -> Json<Value> {
    Json(spec())
}

/// Parameters of the routes that take any. The patterns say exactly what
/// the handlers accept, so a schema-valid request is never a 400.
fn parameters(path: &str) -> Value {
    match path {
        "/v1/resolve" => json!([
            {"name": "image", "in": "query", "required": true,
             "description": "NAME:TAG; NAME may carry a registry host and port",
             "schema": {"type": "string", "maxLength": super::MAX_IMAGE,
                        "pattern": "^[A-Za-z0-9._/:-]+:[A-Za-z0-9._-]+$"},
             "example": "ocaml/opam:debian-13-ocaml-5.5"},
            {"name": "arch", "in": "query", "required": false,
             "description": "also answer this arch's own manifest digest (404 if the image has no such arch)",
             "schema": {"type": "string", "maxLength": super::MAX_ARCH, "pattern": "^[a-z0-9]+$"},
             "example": "arm64"}
        ]),
        "/v1/versions/{version}" => json!([
            {"name": "version", "in": "path", "required": true,
             "schema": {"type": "string"}, "example": "5.5.0"}
        ]),
        "/v1/lockfile" => json!([
            {"name": "If-None-Match", "in": "header", "required": false,
             "description": "an ETag of an earlier answer, or `*`: 304 if it is current",
             "schema": {"type": "string"}}
        ]),
        "/v1/logs/{name}" => json!([
            {"name": "name", "in": "path", "required": true,
             "schema": {"type": "string", "maxLength": 255,
                        "pattern": "^[A-Za-z0-9_+-][A-Za-z0-9._+-]*\\.log$"},
             "example": "linux_debian-13_5.5.0_amd64.log"}
        ]),
        "/v2/{name}/manifests/{reference}" => json!([v2_name(),
            {"name": "reference", "in": "path", "required": true,
             "description": "a tag or alias, or a manifest digest",
             "schema": {"type": "string",
                        "pattern": "^([A-Za-z0-9_][A-Za-z0-9._-]{0,127}|sha256:[a-f0-9]{64})$"},
             "example": "debian-13-ocaml-5.5"}]),
        "/v2/{name}/blobs/{digest}" => json!([v2_name(),
            {"name": "digest", "in": "path", "required": true,
             "schema": {"type": "string", "pattern": "^sha256:[a-f0-9]{64}$"}}]),
        "/v2/{name}/tags/list" => json!([v2_name()]),
        "/v1/jobs/{id}/cancel" | "/v1/jobs/{id}/retry" => json!([
            {"name": "id", "in": "path", "required": true,
             "description": "the job's id (`kiln jobs list`, `GET /v1/jobs`)",
             "schema": {"type": "integer", "format": "int64", "minimum": 1,
                        "maximum": 9_223_372_036_854_775_807_i64}, "example": 1}
        ]),
        _ => json!([]),
    }
}

/// A repository name of the distribution API (`ocaml/opam`); matched by
/// its last component, as the digest API matches names.
fn v2_name() -> Value {
    json!({"name": "name", "in": "path", "required": true,
           "schema": {"type": "string", "maxLength": 255,
                      "pattern": "^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$"},
           "example": "ocaml/opam"})
}

fn header(name: &str) -> Value {
    let description = match name {
        "WWW-Authenticate" => "the bearer challenge",
        "ETag" => "the current lockfile's entity tag",
        "Vary" => "Accept-Encoding",
        "Docker-Content-Digest" => "the manifest's (or blob's) digest",
        "Docker-Distribution-API-Version" => "`registry/2.0`",
        _ => "",
    };
    json!({"description": description, "required": true, "schema": {"type": "string"}})
}

fn responses(route: &Route) -> Value {
    let mut out = Map::new();
    for r in route.replies {
        let mut resp = Map::new();
        resp.insert("description".into(), r.description.into());
        let content = match r.body {
            Body::Empty => None,
            Body::Json(schema) => Some(json!({"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{schema}")}}})),
            Body::Text => Some(json!({"text/plain": {"schema": {"type": "string"}}})),
            Body::Html => Some(json!({"text/html": {"schema": {"type": "string"}}})),
            Body::Manifest => Some(
                crate::registry::ACCEPT_ALL
                    .split(", ")
                    .map(|t| (t.to_string(), json!({"schema": {"type": "object"}})))
                    .collect::<Map<String, Value>>()
                    .into(),
            ),
            Body::Blob => Some(json!({"application/octet-stream":
                {"schema": {"type": "string", "format": "binary"}}})),
        };
        if let Some(c) = content {
            resp.insert("content".into(), c);
        }
        if !r.headers.is_empty() {
            let headers: Map<String, Value> = r
                .headers
                .iter()
                .map(|h| (h.to_string(), header(h)))
                .collect();
            resp.insert("headers".into(), headers.into());
        }
        out.insert(r.status.to_string(), resp.into());
    }
    out.into()
}

fn paths() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), route.summary.into());
        op.insert(
            "operationId".into(),
            format!("{}_{}", route.method, route.handler).into(),
        );
        let params = parameters(route.path);
        if params.as_array().is_some_and(|p| !p.is_empty()) {
            op.insert("parameters".into(), params);
        }
        if route.auth {
            op.insert("security".into(), json!([{"bearer": []}]));
        }
        if route.method == "post" && route.path == "/v1/jobs" {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["tag"], "additionalProperties": false,
                    "properties": {
                        "tag": {"type": "string", "description": "REPOSITORY:TAG or TAG",
                                "example": "ocaml/opam:debian-13-ocaml-5.5"},
                        "force": {"type": "boolean", "default": false,
                                  "description": "rebuild though the key is unchanged"}}}}}}),
            );
        }
        op.insert("responses".into(), responses(route));
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(ops) = entry.as_object_mut() {
            ops.insert(route.method.to_string(), op.into());
        }
    }
    paths.into()
}

/// Rewrite `#/$defs/NAME` references of the lockfile schema to the
/// components the document holds them under.
fn rebase_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/components/schemas/Lockfile_{name}");
            }
            m.values_mut().for_each(rebase_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(rebase_refs),
        _ => {}
    }
}

/// The committed lockfile schema, as components: `Lockfile` and one
/// `Lockfile_NAME` per definition.
fn lockfile_schemas(schemas: &mut Map<String, Value>) {
    let Ok(mut schema) =
        serde_json::from_str::<Value>(include_str!("../../manifests/lockfile.schema.json"))
    else {
        // A unit test parses the same text; this cannot happen in a build
        // that passed its tests.
        schemas.insert("Lockfile".into(), json!({"type": "object"}));
        return;
    };
    rebase_refs(&mut schema);
    if let Some(m) = schema.as_object_mut() {
        m.remove("$schema");
        m.remove("$id");
        if let Some(Value::Object(defs)) = m.remove("$defs") {
            for (name, def) in defs {
                schemas.insert(format!("Lockfile_{name}"), def);
            }
        }
    }
    schemas.insert("Lockfile".into(), schema);
}

fn schemas() -> Map<String, Value> {
    let arches: Vec<&str> = Arch::ALL.iter().map(|a| a.as_str()).collect();
    let reasons: Vec<&str> = MissingReason::ALL.iter().map(|r| r.as_str()).collect();
    let kinds: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
    let arch_digests = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let mut schemas: Map<String, Value> = json!({
        "Error": {"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string", "description": "machine-readable kind, e.g. not-available"},
            "message": {"type": "string"},
            "image": {"type": "string"}, "ocaml": {"type": "string"},
            "platform": {"type": "string"}, "os": {"type": "string"},
            "missing": {"type": "array", "items": {"$ref": "#/components/schemas/Missing"}},
            "suggestions": {"type": "array", "items": {"type": "string"}}}},
        "OciError": {"type": "object", "required": ["errors"], "properties": {
            "errors": {"type": "array", "items": {"type": "object", "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN or UNKNOWN"},
                    "message": {"type": "string"},
                    "detail": {"description": "for a refused tag, the refusal as /v1/resolve answers it (`Error`, with `missing`)"}}}}}},
        "TagList": {"type": "object", "required": ["name", "tags"], "properties": {
            "name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}},
        "Empty": {"type": "object"},
        "Missing": {"type": "object", "required": ["arch", "reason"], "properties": {
            "arch": {"type": "string", "enum": arches},
            "reason": {"type": "string", "enum": reasons},
            "kind": {"type": "string", "enum": kinds},
            "detail": {"type": "string"}}},
        "Pin": {"type": "object",
            "required": ["image", "reference", "digest", "arches", "build_key", "published_at", "platform", "os"],
            "properties": {
                "image": {"type": "string"}, "reference": {"type": "string"}, "digest": {"type": "string"},
                "arch_digest": {"type": "string"}, "arches": arch_digests,
                "build_key": {"type": "string"}, "published_at": {"type": "string", "format": "date-time"},
                "platform": {"type": "string"}, "os": {"type": "string"},
                "ocaml": {"type": "string", "description": "the compiler; absent for a compiler-less <os>-opam image"}}},
        "Cell": {"type": "object", "required": ["platform", "os", "tag", "available", "arches"], "properties": {
            "platform": {"type": "string"}, "os": {"type": "string"}, "tag": {"type": "string"},
            "available": {"type": "boolean"}, "arches": arch_digests,
            "missing": {"type": "array", "items": {"$ref": "#/components/schemas/Missing"}}}},
        "Version": {"type": "object", "required": ["version", "available", "cells"], "properties": {
            "version": {"type": "string"},
            "available": {"type": "boolean", "description": "every required tag of this version is available"},
            "cells": {"type": "array", "items": {"$ref": "#/components/schemas/Cell"}}}},
        "VersionList": {"type": "array", "items": {"$ref": "#/components/schemas/Version"}},
        "Platforms": {"type": "object", "description": "platform → its OS releases",
            "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "Ready": {"type": "object", "required": ["ready", "entries", "requirements", "loaded_at"], "properties": {
            "ready": {"type": "boolean"}, "entries": {"type": "integer", "minimum": 0},
            "requirements": {"type": "integer", "minimum": 0},
            "loaded_at": {"type": "string", "format": "date-time"}}},
        "Reloaded": {"type": "object", "required": ["reloaded", "entries", "etag"], "properties": {
            "reloaded": {"type": "boolean"}, "entries": {"type": "integer", "minimum": 0},
            "etag": {"type": "string"}}},
        "Queued": {"type": "object", "required": ["queued"], "properties": {
            "queued": {"type": "boolean"}, "note": {"type": "string"}}},
        "Jobs": {"type": "array", "items": {"type": "object",
            "required": ["id", "round", "repository", "tag", "platform", "builder", "state", "attempts", "queued_at", "next_attempt_at"],
            "properties": {
                "id": {"type": "integer"}, "round": {"type": "integer"},
                "repository": {"type": "string"}, "tag": {"type": "string"},
                "platform": {"type": "string"}, "builder": {"type": "string"},
                "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
                "attempts": {"type": "integer", "minimum": 0},
                "failure": {"type": ["string", "null"]}, "error": {"type": ["string", "null"]},
                "outcome": {"type": ["string", "null"]}, "log": {"type": ["string", "null"]},
                "queued_at": {"type": "string"}, "next_attempt_at": {"type": "string"},
                "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]},
                "duration_secs": {"type": ["number", "null"]}}}},
        "JobCancel": {"type": "object", "required": ["job", "cancel"], "properties": {
            "job": {"type": "integer"},
            "cancel": {"type": "string", "enum": ["cancelled", "requested"]}}},
        "JobQueued": {"type": "object", "required": ["job", "force"], "properties": {
            "job": {"type": "integer"}, "force": {"type": "boolean"}}},
        "JobRetry": {"type": "object", "required": ["job", "round"], "properties": {
            "job": {"type": "integer"}, "round": {"type": "integer"}}},
        "OpenApi": {"type": "object", "required": ["openapi", "info", "paths"]}
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    lockfile_schemas(&mut schemas);
    worker_schemas(&mut schemas);
    schemas
}

/// The worker inventory's schemas (`/v1/workers`), apart: one `json!` of
/// every schema reaches the macro's recursion limit.
fn worker_schemas(schemas: &mut Map<String, Value>) {
    let builders: Vec<&str> = BuilderKind::ALL.iter().map(|k| k.as_str()).collect();
    let held: Vec<&str> = HeldKind::ALL.iter().map(|k| k.as_str()).collect();
    let more = json!({
        "Inventory": {"type": "object", "required": ["collected_at", "hosts"], "properties": {
            "collected_at": {"type": "string", "format": "date-time"},
            "hosts": {"type": "array", "items": {"$ref": "#/components/schemas/WorkerHost"}}}},
        "WorkerHost": {"type": "object",
            "required": ["builder", "host", "address", "health", "arches", "slots", "busy", "holds"],
            "properties": {
                "builder": {"type": "string", "enum": builders},
                "host": {"type": "string"},
                "address": {"type": "string", "description": "this machine, an ssh target or an engine endpoint"},
                "health": {"type": "string", "description": "`ok`, or `unreachable: <error>`, `unhealthy: <why>`, `down since <time>: <error> (…)` (marked down by a build: routing skips it until it answers a probe)"},
                "arches": {"type": "array", "items": {"type": "string"}},
                "slots": {"type": "integer", "minimum": 0},
                "busy": {"type": ["integer", "null"], "minimum": 0, "description": "builds running now; null when the host could not be asked"},
                "pool": {"type": "object", "required": ["name", "size", "free"], "properties": {
                    "name": {"type": "string"}, "size": {"type": "string"}, "free": {"type": "string"}}},
                "engine_cache_bytes": {"type": "integer", "minimum": 0},
                "holds": {"type": "array", "items": {"$ref": "#/components/schemas/Held"}}}},
        "Held": {"type": "object", "required": ["kind", "name", "bytes", "referenced", "why"], "properties": {
            "kind": {"type": "string", "enum": held},
            "name": {"type": "string"},
            "bytes": {"type": ["integer", "null"], "minimum": 0},
            "referenced": {"type": "boolean", "description": "named by the lockfile or in use: `kiln gc` keeps it"},
            "why": {"type": "string"},
            "tag": {"type": "string", "description": "the lockfile entry naming it"},
            "digest": {"type": "string", "description": "the published digest of this build"}}}
    });
    if let Value::Object(more) = more {
        schemas.extend(more);
    }
}

pub fn spec() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Kiln digest API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Pins for OCaml CI base images, refused until every required image is published. \
                                 Reads are public; writes and build logs need `Authorization: Bearer <api.token>` \
                                 (401 without a bearer token, 403 with a wrong one or when api.token is empty)."},
        "paths": paths(),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "api.token from kiln.toml; empty disables writes and logs"}},
            "schemas": schemas()
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let spec = spec();
        let paths = spec["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.clone(), p.clone()))
            })
            .collect();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }

    #[test]
    fn every_declared_status_is_documented_with_its_body() {
        let spec = spec();
        for r in ROUTES {
            let op = &spec["paths"][r.path][r.method];
            let documented: BTreeSet<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            assert_eq!(
                documented,
                r.statuses().collect(),
                "{} {}",
                r.method,
                r.path
            );
            for reply in r.replies {
                let resp = &op["responses"][reply.status.to_string()];
                match reply.body {
                    Body::Empty => assert!(resp.get("content").is_none()),
                    Body::Json(name) => {
                        assert!(
                            spec["components"]["schemas"][name].is_object(),
                            "{}: no schema {name}",
                            r.path
                        );
                        assert!(resp["content"]["application/json"]["schema"].is_object());
                    }
                    Body::Text => assert!(resp["content"]["text/plain"].is_object()),
                    Body::Html => assert!(resp["content"]["text/html"].is_object()),
                    Body::Manifest => assert!(
                        resp["content"]["application/vnd.oci.image.index.v1+json"].is_object()
                    ),
                    Body::Blob => {
                        assert!(resp["content"]["application/octet-stream"].is_object())
                    }
                }
                for h in reply.headers {
                    assert!(resp["headers"][h].is_object(), "{} {h}", r.path);
                }
            }
            assert_eq!(op["security"].is_array(), r.auth, "{}", r.path);
        }
        assert_eq!(
            spec["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    /// Every `$ref` names a schema the document holds.
    #[test]
    fn every_reference_resolves() {
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let spec = spec();
        let mut all = vec![];
        refs(&spec, &mut all);
        assert!(all.iter().any(|r| r.contains("Lockfile_entry")));
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(
                spec["components"]["schemas"][name].is_object(),
                "{r} resolves"
            );
        }
        assert!(spec["components"]["schemas"]["Lockfile"]["$id"].is_null());
    }
}
