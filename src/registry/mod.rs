//! The OCI registry client: blobs, manifests, indexes, artifacts.
//!
//! Built on reqwest rather than oci-client: Kiln needs cross-repository
//! mounts, HEAD digest lookups with its own Accept set, chunked streaming
//! uploads, digest checks against `Docker-Content-Digest`, and 429/5xx
//! retries honouring Retry-After, which oci-client does not expose (see
//! ARCHITECTURE.md).
//!
//! This module holds the media types, the error type and the digest
//! helpers; `blob`, `upload` and `manifest` hold the requests.

pub mod artifact;
pub mod auth;
mod blob;
mod check;
mod client;
mod delete;
pub mod index;
mod kind;
pub mod limits;
mod list;
mod manifest;
mod stream;
mod token;
mod upload;

use std::path::Path;

use reqwest::{Method, StatusCode, header};
use sha2::{Digest, Sha256};

pub use auth::{Credentials, Secret, credentials_for};
pub use blob::{BlobPush, PushedHow};
pub use check::Depth;
pub use client::{Body, FileRange, Registry};
pub use delete::Deleted;
pub use manifest::Manifest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Default upload chunk: each chunk is one PATCH streamed from the file and
/// the unit an interrupted upload resumes from. Large, because every PATCH
/// costs the registry a hash-state round trip (measured: 16 chunks of
/// 64 MiB take 27% longer than one stream for 1 GiB on distribution 2.8).
pub const CHUNK: u64 = 256 * 1024 * 1024;

/// Feed `len` bytes of a file from `offset` into `h` (fewer if the file
/// ends first); returns the hasher and the bytes read. Blocking.
pub fn hash_range(
    mut h: Sha256,
    path: &Path,
    offset: u64,
    len: u64,
) -> std::io::Result<(Sha256, u64)> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut f = f.take(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok((h, n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

/// sha256 (hex, no prefix) and size of a whole file, off the async threads.
pub async fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let (h, n) = hash_prefix(path, u64::MAX).await?;
    Ok((hex::encode(h.finalize()), n))
}

async fn hash_prefix(path: &Path, limit: u64) -> std::io::Result<(Sha256, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || hash_range(Sha256::new(), &path, 0, limit))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry configuration: {0}")]
    Config(String),
    /// The registry did not answer, or the connection broke (it died
    /// mid-upload, a proxy cut it).
    #[error(
        "registry {registry}: {url}: {message}; check that {registry} is up and reachable, then run again"
    )]
    Http {
        registry: String,
        url: String,
        message: String,
    },
    #[error("registry authentication: {0}")]
    Auth(String),
    /// `reference` starts with the registry's host (`127.0.0.1:5000/kiln/opam:tag`).
    #[error("{what} {reference}: registry answered {status}: {body}{}", status_fix(*status, reference))]
    Status {
        what: &'static str,
        reference: String,
        status: StatusCode,
        body: String,
    },
    /// The registry's rate limit asks for a longer wait than a request
    /// may take (`registry.rate_limit_max_wait_secs`).
    #[error("{0}")]
    RateLimited(Box<RateLimited>),
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

/// A registry's rate limit that outlasts what Kiln waits in a request.
#[derive(Debug, thiserror::Error)]
#[error(
    "registry {registry}: rate limited (429) at {url} ({said}) until {until}, longer than registry.rate_limit_max_wait_secs ({max_wait}s) waits: the work is parked until then; log in to {registry} for a higher limit, lower registry.rate_limit, or raise the ceiling"
)]
pub struct RateLimited {
    pub registry: String,
    pub url: String,
    pub until: chrono::DateTime<chrono::Utc>,
    /// What the registry said: its limit headers and body.
    pub said: String,
    pub max_wait: u64,
}

/// What to do about a refusal, by status; `reference` starts with the
/// registry's host.
fn status_fix(status: StatusCode, reference: &str) -> String {
    let registry = reference.split('/').next().unwrap_or(reference);
    match status.as_u16() {
        401 => format!(
            "; {registry} refused Kiln's credentials: log in (`docker login {registry}`) or, for Kiln's own registry, set KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD"
        ),
        403 => format!(
            "; the account Kiln uses on {registry} may not do this: grant it access to the repository"
        ),
        429 => format!("; {registry} is rate limiting Kiln: run again once its limit resets"),
        s if s >= 500 => format!("; {registry} failed on its side: run again later"),
        _ => String::new(),
    }
}

/// An error with its causes (`error sending request …: connection
/// reset by peer`): reqwest's own Display stops at the first.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
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

/// The scope of a cross-repository mount: push to `repo`, pull from
/// `from` (a registry grants the mount only with both).
fn mount_scope(repo: &str, from: &str) -> String {
    format!("{} {}", scope(repo, true), scope(from, false))
}

async fn fail(what: &'static str, reference: String, resp: reqwest::Response) -> RegistryError {
    let status = resp.status();
    let url = resp.url();
    let registry = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
        None => url.host_str().unwrap_or("").to_string(),
    };
    let body = resp.text().await.unwrap_or_default();
    RegistryError::Status {
        what,
        reference: format!("{registry}/{reference}"),
        status,
        body: body.chars().take(400).collect(),
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
}

fn location(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
