//! The OCI registry client: blobs, manifests, indexes, artifacts.
//!
//! Built on reqwest rather than oci-client: Kiln needs cross-repository
//! mounts, HEAD digest lookups with its own Accept set, chunked streaming
//! uploads, digest checks against `Docker-Content-Digest`, and 429/5xx
//! retries honouring Retry-After, which oci-client does not expose (see
//! ARCHITECTURE.md).

pub mod artifact;
mod client;
pub mod index;

use std::path::Path;

use reqwest::{Method, StatusCode, header};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use client::{Body, Credentials, Registry};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Uploads larger than this go in chunks.
pub const CHUNK: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry configuration: {0}")]
    Config(String),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("registry authentication: {0}")]
    Auth(String),
    #[error("{what} {reference}: registry answered {status}: {body}")]
    Status {
        what: &'static str,
        reference: String,
        status: StatusCode,
        body: String,
    },
    #[error("{what} {reference}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: &'static str,
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn scope(repo: &str, push: bool) -> String {
    format!(
        "repository:{repo}:{}",
        if push { "pull,push" } else { "pull" }
    )
}

async fn fail(what: &'static str, reference: String, resp: reqwest::Response) -> RegistryError {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    RegistryError::Status {
        what,
        reference,
        status,
        body: body.chars().take(400).collect(),
    }
}

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
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let r = self.send(Method::GET, "/v2/", &[], None, "").await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(fail("ping", self.base.clone(), r).await)
        }
    }

    /// Size of a blob if the repository has it.
    pub async fn blob_size(&self, repo: &str, digest: &str) -> Result<Option<u64>, RegistryError> {
        let r = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                None,
                &scope(repo, false),
            )
            .await?;
        match r.status() {
            s if s.is_success() => Ok(r
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(fail("blob HEAD", format!("{repo}@{digest}"), r).await),
        }
    }

    /// Try a cross-repository mount; `false` means the registry opened an
    /// upload instead (202), which the caller falls back to.
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &str,
        from: &str,
    ) -> Result<bool, RegistryError> {
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"),
                &[],
                None,
                &scope(repo, true),
            )
            .await?;
        match r.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => Ok(false),
            _ => Err(fail("blob mount", format!("{repo}@{digest} from {from}"), r).await),
        }
    }

    async fn start_upload(&self, repo: &str) -> Result<String, RegistryError> {
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                None,
                &scope(repo, true),
            )
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(fail("upload start", repo.to_string(), r).await);
        }
        location(&r).ok_or_else(|| {
            RegistryError::Invalid(format!("upload start {repo}: no Location header"))
        })
    }

    fn absolute(&self, loc: &str) -> String {
        if loc.starts_with("http") {
            loc.to_string()
        } else {
            format!("{}{loc}", self.base)
        }
    }

    async fn finish_upload(
        &self,
        repo: &str,
        loc: &str,
        digest: &str,
        last: Option<Body>,
    ) -> Result<(), RegistryError> {
        let url = self.absolute(loc);
        let sep = if url.contains('?') { '&' } else { '?' };
        let body = last.or(Some(Body {
            bytes: bytes::Bytes::new(),
            content_type: Some("application/octet-stream".into()),
        }));
        let r = self
            .send(
                Method::PUT,
                &format!("{url}{sep}digest={digest}"),
                &[],
                body,
                &scope(repo, true),
            )
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(fail("upload finish", format!("{repo}@{digest}"), r).await);
        }
        let got = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(digest)
            .to_string();
        if got != digest {
            return Err(RegistryError::DigestMismatch {
                what: "blob",
                reference: repo.to_string(),
                expected: digest.to_string(),
                actual: got,
            });
        }
        Ok(())
    }

    /// Push bytes as a blob (skipped when already present). Returns (digest, size).
    pub async fn push_blob(
        &self,
        repo: &str,
        data: bytes::Bytes,
    ) -> Result<(String, u64), RegistryError> {
        let digest = sha256_digest(&data);
        let size = data.len() as u64;
        if self.blob_size(repo, &digest).await?.is_some() {
            return Ok((digest, size));
        }
        let loc = self.start_upload(repo).await?;
        self.finish_upload(
            repo,
            &loc,
            &digest,
            Some(Body {
                bytes: data,
                content_type: Some("application/octet-stream".into()),
            }),
        )
        .await?;
        Ok((digest, size))
    }

    /// Push a file as a blob, streaming it in chunks and hashing as it goes.
    /// A blob the repository has (or can mount from `mount_from`) is not sent.
    pub async fn push_blob_file(
        &self,
        repo: &str,
        path: &Path,
        mount_from: Option<&str>,
    ) -> Result<(String, u64), RegistryError> {
        let io = |source| RegistryError::Io {
            path: path.display().to_string(),
            source,
        };
        // First pass: the digest, so that HEAD and mount can skip the upload.
        let mut f = tokio::fs::File::open(path).await.map_err(io)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        let digest = format!("sha256:{}", hex::encode(h.finalize()));
        if self.blob_size(repo, &digest).await?.is_some() {
            return Ok((digest, size));
        }
        if let Some(from) = mount_from
            && self.mount_blob(repo, &digest, from).await?
        {
            return Ok((digest, size));
        }
        let mut loc = self.start_upload(repo).await?;
        let mut f = tokio::fs::File::open(path).await.map_err(io)?;
        let mut h = Sha256::new();
        let mut offset = 0u64;
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let mut filled = 0;
            while filled < CHUNK {
                let n = f.read(&mut chunk[filled..]).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            h.update(&chunk[..filled]);
            let end = offset + filled as u64 - 1;
            let range = format!("{offset}-{end}");
            let r = self
                .send(
                    Method::PATCH,
                    &self.absolute(&loc),
                    &[("content-range", range.as_str())],
                    Some(Body {
                        bytes: bytes::Bytes::copy_from_slice(&chunk[..filled]),
                        content_type: Some("application/octet-stream".into()),
                    }),
                    &scope(repo, true),
                )
                .await?;
            if r.status() != StatusCode::ACCEPTED {
                return Err(fail("upload chunk", format!("{repo} {range}"), r).await);
            }
            loc = location(&r).unwrap_or(loc);
            offset += filled as u64;
        }
        // The file must not have changed between the two passes.
        let streamed = format!("sha256:{}", hex::encode(h.finalize()));
        if streamed != digest {
            return Err(RegistryError::DigestMismatch {
                what: "blob file",
                reference: path.display().to_string(),
                expected: digest,
                actual: streamed,
            });
        }
        self.finish_upload(repo, &loc, &digest, None).await?;
        Ok((digest, size))
    }

    /// Fetch a blob and check its digest.
    pub async fn pull_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let r = self
            .send(
                Method::GET,
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                None,
                &scope(repo, false),
            )
            .await?;
        if !r.status().is_success() {
            return Err(fail("blob GET", format!("{repo}@{digest}"), r).await);
        }
        let bytes = r.bytes().await.map_err(|e| RegistryError::Http {
            url: format!("{repo}@{digest}"),
            message: e.to_string(),
        })?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                what: "blob",
                reference: repo.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes.to_vec())
    }

    /// Stream a blob to `dest`, verifying the digest; on mismatch the
    /// partial file is removed.
    pub async fn pull_blob_to_file(
        &self,
        repo: &str,
        digest: &str,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        let io = |source| RegistryError::Io {
            path: dest.display().to_string(),
            source,
        };
        let mut r = self
            .send(
                Method::GET,
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                None,
                &scope(repo, false),
            )
            .await?;
        if !r.status().is_success() {
            return Err(fail("blob GET", format!("{repo}@{digest}"), r).await);
        }
        let tmp = dest.with_extension("partial");
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        loop {
            match r.chunk().await {
                Ok(Some(c)) => {
                    h.update(&c);
                    n += c.len() as u64;
                    f.write_all(&c).await.map_err(io)?;
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(RegistryError::Http {
                        url: format!("{repo}@{digest}"),
                        message: e.to_string(),
                    });
                }
            }
        }
        f.flush().await.map_err(io)?;
        drop(f);
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if actual != digest {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(RegistryError::DigestMismatch {
                what: "blob",
                reference: repo.to_string(),
                expected: digest.to_string(),
                actual,
            });
        }
        tokio::fs::rename(&tmp, dest).await.map_err(io)?;
        Ok(n)
    }

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
        let bytes = r
            .bytes()
            .await
            .map_err(|e| RegistryError::Http {
                url: format!("{repo}:{reference}"),
                message: e.to_string(),
            })?
            .to_vec();
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

fn location(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
