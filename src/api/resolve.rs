//! Answering "which digest do I pin for this image?" — shared by the HTTP
//! route and `kiln resolve`, so both give the same answer.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde::Serialize;

use super::gate::{Missing, Verdict, verdict};
use super::snapshot::Snapshot;
use crate::catalogue::{Arch, OcamlVersion};
use crate::lockfile::Entry;

/// A pinned answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pin {
    pub image: String,
    /// `host/repository:tag@sha256:…`, ready for `FROM`.
    pub reference: String,
    pub digest: String,
    /// When `arch` was asked: that arch's own manifest digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch_digest: Option<String>,
    pub arches: BTreeMap<Arch, String>,
    pub build_key: String,
    pub published_at: chrono::DateTime<chrono::Utc>,
    pub platform: String,
    pub os: String,
    /// The compiler; absent for a compiler-less image (`debian-13-opam`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocaml: Option<OcamlVersion>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "error", rename_all = "kebab-case")]
pub enum Refusal {
    /// 400: the request itself is malformed.
    BadRequest { message: String },
    /// 404: no such image name or tag; here are the closest known names.
    Unknown {
        image: String,
        message: String,
        suggestions: Vec<String>,
    },
    /// 409: known, but not (all) there yet.
    NotAvailable {
        image: String,
        ocaml: OcamlVersion,
        platform: String,
        os: String,
        message: String,
        missing: Vec<Missing>,
    },
}

/// Refusals are boxed: they are the rare path and carry the missing list.
pub type Refused = Box<Refusal>;

impl Refusal {
    /// The HTTP status of this refusal (`kiln resolve` maps it to its exit
    /// code).
    pub fn http_status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Refusal::Unknown { .. } => StatusCode::NOT_FOUND,
            Refusal::NotAvailable { .. } => StatusCode::CONFLICT,
        }
    }
}

/// Split `name:tag` (the name may contain a registry host with a port).
pub fn parse_image(image: &str) -> Result<(&str, &str), Refused> {
    let bad = |m: &str| {
        Box::new(Refusal::BadRequest {
            message: format!(
                "image {image:?}: {m}; expected NAME:TAG such as ocaml/opam:debian-13-ocaml-5.5"
            ),
        })
    };
    if image.is_empty() || image.len() > 512 {
        return Err(bad("empty or longer than 512 bytes"));
    }
    if image.contains('@') {
        return Err(bad("already pinned by digest"));
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    let Some(colon) = image[slash..].rfind(':').map(|i| i + slash) else {
        return Err(bad("no tag"));
    };
    let (name, tag) = (&image[..colon], &image[colon + 1..]);
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
    };
    if !ok(name) || !ok(tag) || tag.contains('/') {
        return Err(bad("invalid characters"));
    }
    Ok((name, tag))
}

pub fn resolve(snap: &Snapshot, image: &str, arch: Option<&str>) -> Result<Pin, Refused> {
    let (name, tag) = parse_image(image)?;
    let entry: &Entry = match snap.requirement(name, tag) {
        Some(req) => match verdict(req, &snap.lockfile, &snap.jobs) {
            Verdict::Available { entry } => entry,
            Verdict::Missing { missing } => {
                let n = missing.len();
                return Err(Box::new(Refusal::NotAvailable {
                    image: image.to_string(),
                    ocaml: req.ocaml.clone(),
                    platform: req.platform.clone(),
                    os: req.os.clone(),
                    message: format!(
                        "OCaml {} is not available on {} yet: {n} of {} required arch{} missing",
                        req.ocaml,
                        req.os,
                        req.arches.len(),
                        if req.arches.len() == 1 {
                            " is"
                        } else {
                            "es are"
                        }
                    ),
                    missing,
                }));
            }
        },
        None => match snap.published(name, tag) {
            Some(e) => e,
            None => {
                return Err(Box::new(Refusal::Unknown {
                    image: image.to_string(),
                    message: format!("no image named {image:?} is known"),
                    suggestions: super::suggest::closest(&snap.names, name, tag, 5),
                }));
            }
        },
    };
    let arch_digest = match arch {
        None => None,
        Some(a) => match a.parse::<Arch>().ok().and_then(|x| entry.arches.get(&x)) {
            Some(x) => Some(x.digest.clone()),
            None => {
                return Err(Box::new(Refusal::Unknown {
                    image: image.to_string(),
                    message: format!(
                        "{image} has no arch {a:?}; it has {}",
                        entry
                            .arches
                            .keys()
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    suggestions: vec![],
                }));
            }
        },
    };
    Ok(Pin {
        image: image.to_string(),
        reference: entry.pin(&snap.registry_host, Some(&entry.tag)).reference(),
        digest: entry.digest.clone(),
        arch_digest,
        arches: entry
            .arches
            .iter()
            .map(|(a, e)| (*a, e.digest.clone()))
            .collect(),
        build_key: entry.build_key.clone(),
        published_at: entry.published_at,
        platform: entry.platform.clone(),
        os: entry.os.clone(),
        ocaml: entry.ocaml.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_image_forms() {
        assert_eq!(
            parse_image("ocaml/opam:debian-13-ocaml-5.5").unwrap(),
            ("ocaml/opam", "debian-13-ocaml-5.5")
        );
        assert_eq!(
            parse_image("127.0.0.1:5000/kiln/opam:x").unwrap(),
            ("127.0.0.1:5000/kiln/opam", "x")
        );
        assert!(parse_image("127.0.0.1:5000/kiln/opam").is_err());
        assert!(parse_image("opam@sha256:00").is_err());
        assert!(parse_image("op am:x").is_err());
        assert!(parse_image("").is_err());
    }
}
