//! The OpenAPI 3.1 document, kept in sync with [`super::ROUTES`] by a test.

use axum::Json;
use serde_json::{Value, json};

pub fn document() -> Json<Value> {
    Json(spec())
}

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

pub fn spec() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Kiln digest API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Pins for OCaml CI base images, refused until every required image is published."},
        "paths": {
            "/": {"get": {"summary": "HTML status matrix", "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness, with snapshot size", "responses": {"200": {"description": "ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI document"}}}},
            "/v1/resolve": {"get": {
                "summary": "Pin an image reference by digest",
                "parameters": [
                    {"name": "image", "in": "query", "required": true, "schema": {"type": "string"}, "example": "ocaml/opam:debian-13-ocaml-5.5"},
                    {"name": "arch", "in": "query", "required": false, "schema": {"type": "string"}, "example": "arm64"}
                ],
                "responses": {
                    "200": {"description": "pinned", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Pin"}}}},
                    "400": err("malformed request"),
                    "404": err("unknown image or arch, with suggestions"),
                    "409": err("version not available on this platform: the missing list says what and why"),
                    "414": err("query string too long")
                }}},
            "/v1/versions": {"get": {"summary": "Availability of every version per platform and OS release", "responses": {"200": {"description": "list"}}}},
            "/v1/versions/{version}": {"get": {"summary": "Availability of one version",
                "parameters": [{"name": "version", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "availability"}, "404": err("unknown version")}}},
            "/v1/platforms": {"get": {"summary": "Platforms and OS releases", "responses": {"200": {"description": "platform → OS releases"}}}},
            "/v1/lockfile": {"get": {"summary": "The whole published lockfile (ETag, If-None-Match, gzip)",
                "responses": {"200": {"description": "lockfile JSON"}, "304": {"description": "not modified"}}}},
            "/v1/logs/{name}": {"get": {"summary": "A build log (linked from failures on the status page)",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "text/plain log"}, "400": err("not a log file name"), "404": err("no such log")}}},
            "/v1/rebuild": {"post": {"summary": "Queue a rebuild round in the daemon (bearer token)", "security": [{"bearer": []}],
                "responses": {"202": {"description": "queued"}, "401": err("bad token"), "403": err("writes disabled"), "503": err("not running inside kiln daemon")}}},
            "/v1/reload": {"post": {"summary": "Reload the lockfile now (bearer token)", "security": [{"bearer": []}],
                "responses": {"200": {"description": "reloaded"}, "401": err("bad token"), "403": err("writes disabled"), "422": err("lockfile invalid; previous snapshot kept")}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"},
                    "missing": {"type": "array", "items": {"type": "object", "properties": {
                        "arch": {"type": "string"},
                        "reason": {"type": "string", "enum": ["not-built", "building", "queued", "failed", "no-builder", "stale"]},
                        "kind": {"type": "string", "enum": ["infra", "recipe", "no-builder", "cancelled"]},
                        "detail": {"type": "string"}}}},
                    "suggestions": {"type": "array", "items": {"type": "string"}}}},
                "Pin": {"type": "object", "required": ["reference", "digest", "arches"], "properties": {
                    "image": {"type": "string"}, "reference": {"type": "string"}, "digest": {"type": "string"},
                    "arch_digest": {"type": "string"}, "arches": {"type": "object", "additionalProperties": {"type": "string"}},
                    "build_key": {"type": "string"}, "published_at": {"type": "string", "format": "date-time"},
                    "platform": {"type": "string"}, "os": {"type": "string"}, "ocaml": {"type": "string"}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
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
        let mut routes: Vec<(String, String)> = super::super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
