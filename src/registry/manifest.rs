//! Manifests: HEAD for digest and media type, GET with digest check, and
//! PUT checking the registry's `Docker-Content-Digest`.

use reqwest::{Method, StatusCode, header};

use super::{ACCEPT_ALL, Body, Registry, RegistryError, fail, scope, sha256_digest};

/// A manifest as fetched: bytes, digest (verified) and media type.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

impl Manifest {
    pub fn json(&self) -> Result<serde_json::Value, RegistryError> {
        serde_json::from_slice(&self.bytes)
            .map_err(|e| RegistryError::Invalid(format!("manifest {}: {e}", self.digest)))
    }
}

impl Registry {
    /// Digest and media type of a manifest, by HEAD; `None` if absent.
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(String, String)>, RegistryError> {
        let r = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("accept", ACCEPT_ALL)],
                None,
                &scope(repo, false),
            )
            .await?;
        match r.status() {
            s if s.is_success() => {
                let d = r
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        RegistryError::Invalid(format!(
                            "manifest HEAD {repo}:{reference}: no Docker-Content-Digest"
                        ))
                    })?;
                let mt = r
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                Ok(Some((d, mt)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(fail("manifest HEAD", format!("{repo}:{reference}"), r).await),
        }
    }

    /// Fetch a manifest; when `reference` is a digest the bytes are checked.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let r = self
            .send(
                Method::GET,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("accept", ACCEPT_ALL)],
                None,
                &scope(repo, false),
            )
            .await?;
        if !r.status().is_success() {
            return Err(fail("manifest GET", format!("{repo}:{reference}"), r).await);
        }
        let media_type = r
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let bytes = r.bytes().await.map_err(|e| self.broken(&url, &e))?.to_vec();
        let digest = sha256_digest(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(RegistryError::DigestMismatch {
                what: "manifest",
                reference: repo.to_string(),
                expected: reference.to_string(),
                actual: digest,
            });
        }
        Ok(Manifest {
            bytes,
            digest,
            media_type,
        })
    }

    /// Put a manifest under a tag or its digest; checks the registry's digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, RegistryError> {
        let digest = sha256_digest(bytes);
        let r = self
            .send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[],
                Some(Body {
                    bytes: bytes::Bytes::copy_from_slice(bytes),
                    content_type: Some(media_type.to_string()),
                    file: None,
                }),
                &scope(repo, true),
            )
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(fail("manifest PUT", format!("{repo}:{reference}"), r).await);
        }
        if let Some(got) = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && got != digest
        {
            return Err(RegistryError::DigestMismatch {
                what: "manifest",
                reference: format!("{repo}:{reference}"),
                expected: digest,
                actual: got.to_string(),
            });
        }
        Ok(digest)
    }
}
