//! The resumable chunked upload: an upload session is started, the file is
//! streamed in chunks (each hashed as it is sent), a failed chunk is
//! resumed where the registry says it stands, and the upload is finished
//! under the digest the streamed bytes must match.

use std::path::Path;

use reqwest::{Method, StatusCode, header};
use sha2::{Digest, Sha256};

use super::blob::BlobPush;
use super::{
    Body, FileRange, Registry, RegistryError, fail, hash_prefix, hash_range, location, scope,
};

/// How many times one upload may resume before it gives up.
const MAX_RESUMES: u32 = 8;

/// The registry could not be reached or failed on its side.
fn unreachable(e: &RegistryError) -> bool {
    match e {
        RegistryError::Http { .. } => true,
        RegistryError::Status { status, .. } => status.is_server_error(),
        _ => false,
    }
}

/// Statuses after which an upload asks where it stands rather than giving up.
fn resumable_status(s: StatusCode) -> bool {
    s == StatusCode::RANGE_NOT_SATISFIABLE
        || s == StatusCode::NOT_FOUND
        || s == StatusCode::BAD_REQUEST
        || s.is_server_error()
}

impl Registry {
    pub(super) async fn start_upload(&self, repo: &str) -> Result<String, RegistryError> {
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

    pub(super) fn absolute(&self, loc: &str) -> String {
        if loc.starts_with("http") {
            loc.to_string()
        } else {
            format!("{}{loc}", self.base)
        }
    }

    pub(super) async fn finish_upload(
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
            file: None,
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

    /// The chunked upload. A chunk that fails (dropped connection, registry
    /// restarted, 416 after a partial write) is followed by an upload-status
    /// query; the upload resumes at the offset the registry reports, or
    /// starts afresh when the registry no longer knows the session.
    pub(super) async fn upload_file(
        &self,
        repo: &str,
        path: &Path,
        report: &mut BlobPush,
    ) -> Result<(), RegistryError> {
        let io = |source| RegistryError::Io {
            path: path.display().to_string(),
            source,
        };
        let size = report.size;
        let mut loc = self.start_upload(repo).await?;
        let mut h = Sha256::new();
        let mut offset = 0u64;
        while offset < size {
            let want = (size - offset).min(self.chunk_size.max(1));
            let end = offset + want - 1;
            let range = format!("{offset}-{end}");
            // The chunk streams from disk; a blocking thread hashes the same
            // range meanwhile (it is in the page cache by then).
            let hashing = hash_chunk(h.clone(), path, offset, want, size);
            let sent = self
                .send_chunk(repo, &loc, path, offset, want, &range)
                .await;
            let hashed = hashing
                .await
                .map_err(|e| io(std::io::Error::other(e.to_string())))?
                .map_err(io)?;
            if sent.is_ok() {
                report.bytes_sent += want;
            }
            let failure = match sent {
                Ok(r) if r.status() == StatusCode::ACCEPTED => {
                    h = hashed;
                    loc = location(&r).unwrap_or(loc);
                    offset += want;
                    continue;
                }
                Ok(r) if resumable_status(r.status()) => {
                    fail("upload chunk", format!("{repo} {range}"), r).await
                }
                Ok(r) => return Err(fail("upload chunk", format!("{repo} {range}"), r).await),
                Err(e) => e,
            };
            report.resumes += 1;
            if report.resumes > MAX_RESUMES {
                return Err(failure);
            }
            tracing::warn!(repo, range, error = %failure, "upload chunk failed; asking the registry where to resume");
            (loc, offset) = self.resume_point(repo, &loc, report).await?;
            tracing::info!(repo, offset, "resuming upload");
            h = hash_prefix(path, offset).await.map_err(io)?.0;
        }
        // The file must not have changed between the two passes.
        check_streamed(h, path, &report.digest)?;
        self.finish_upload(repo, &loc, &report.digest, None).await
    }

    /// PATCH one chunk of the file, streamed from disk.
    async fn send_chunk(
        &self,
        repo: &str,
        loc: &str,
        path: &Path,
        offset: u64,
        want: u64,
        range: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        self.send(
            Method::PATCH,
            &self.absolute(loc),
            &[("content-range", range)],
            Some(Body {
                bytes: bytes::Bytes::new(),
                content_type: Some("application/octet-stream".into()),
                file: Some(FileRange {
                    path: path.to_path_buf(),
                    offset,
                    len: want,
                }),
            }),
            &scope(repo, true),
        )
        .await
    }

    /// After a failed chunk, the session and offset to go on from: where
    /// the registry says the upload stands, or a new session from byte 0.
    async fn resume_point(
        &self,
        repo: &str,
        loc: &str,
        report: &mut BlobPush,
    ) -> Result<(String, u64), RegistryError> {
        match self.upload_offset_patiently(repo, loc).await? {
            Some((received, at)) if received > 0 => Ok((at, received)),
            _ => {
                // The registry discarded the session (distribution
                // cancels one whose size disagrees with the client's
                // state, e.g. after part of a chunk was written).
                let loc = self.start_upload(repo).await?;
                report.restarts += 1;
                Ok((loc, 0))
            }
        }
    }

    /// [`Registry::upload_offset`], waiting with backoff while the registry
    /// is unreachable or failing (a restart in progress).
    async fn upload_offset_patiently(
        &self,
        repo: &str,
        loc: &str,
    ) -> Result<Option<(u64, String)>, RegistryError> {
        let mut attempt = 0u32;
        loop {
            match self.upload_offset(repo, loc).await {
                Err(e) if attempt < 6 && unreachable(&e) => {
                    attempt += 1;
                    let wait = (self.base_backoff * 2u32.pow(attempt.min(6)))
                        .min(std::time::Duration::from_secs(30));
                    tracing::warn!(repo, error = %e, attempt, "registry unreachable; waiting to resume the upload");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Where an upload session stands: bytes received and the location to
    /// continue at; `None` when the registry no longer knows the session.
    pub(super) async fn upload_offset(
        &self,
        repo: &str,
        loc: &str,
    ) -> Result<Option<(u64, String)>, RegistryError> {
        let r = self
            .send(
                Method::GET,
                &self.absolute(loc),
                &[],
                None,
                &scope(repo, true),
            )
            .await?;
        match r.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => {
                // `Range: 0-N` names the last byte received; `0-0` is also
                // what an empty upload reports, so it counts as nothing.
                let received = r
                    .headers()
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(_, end)| end.trim().parse::<u64>().ok())
                    .map(|end| if end == 0 { 0 } else { end + 1 })
                    .unwrap_or(0);
                Ok(Some((
                    received,
                    location(&r).unwrap_or_else(|| loc.to_string()),
                )))
            }
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(None),
            _ => Err(fail("upload status", repo.to_string(), r).await),
        }
    }
}

/// Hash `want` bytes of the file from `offset` on a blocking thread,
/// continuing `h`; a file shorter than `size` is an error.
fn hash_chunk(
    h: Sha256,
    path: &Path,
    offset: u64,
    want: u64,
    size: u64,
) -> tokio::task::JoinHandle<std::io::Result<Sha256>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<Sha256> {
        let (h, n) = hash_range(h, &path, offset, want)?;
        if n != want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("file is shorter than {size} bytes"),
            ));
        }
        Ok(h)
    })
}

/// The digest of what was streamed must be the one the upload was for.
fn check_streamed(h: Sha256, path: &Path, digest: &str) -> Result<(), RegistryError> {
    let streamed = format!("sha256:{}", hex::encode(h.finalize()));
    if streamed != digest {
        return Err(RegistryError::DigestMismatch {
            what: "blob file",
            reference: path.display().to_string(),
            expected: digest.to_string(),
            actual: streamed,
        });
    }
    Ok(())
}
