//! A blob uploaded from a stream (a `zfs send` coming over ssh), hashed on
//! the way, never written to disk: chunks are read into memory and sent
//! one PATCH each. The upload is finished (PUT with the digest) only when
//! the caller says the producer succeeded, and cancelled otherwise, so a
//! truncated stream never becomes a blob.
//!
//! The bytes are gone once sent, so a chunk can be resent only from the
//! chunk in hand: after a failed chunk the registry is asked where the
//! upload stands, and the chunk is sent again if it stands at the chunk's
//! start; anything else fails the upload (the build is retried as an
//! infrastructure failure and sends its tree again).

use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Body, Registry, RegistryError, fail, location, scope};

/// At most this much of a stream is held in memory (one chunk).
const STREAM_CHUNK: u64 = 64 << 20;

/// An upload whose bytes are all sent, not yet finished.
#[derive(Debug)]
pub struct StreamedBlob {
    pub digest: String,
    pub size: u64,
    repo: String,
    loc: String,
}

impl Registry {
    /// Send everything `reader` yields as one blob upload of `repo`.
    pub async fn upload_stream<R: AsyncRead + Unpin>(
        &self,
        repo: &str,
        mut reader: R,
    ) -> Result<StreamedBlob, RegistryError> {
        let chunk = self.chunk_size.clamp(1, STREAM_CHUNK) as usize;
        let mut loc = self.start_upload(repo).await?;
        let mut h = Sha256::new();
        let mut offset = 0u64;
        loop {
            let mut buf = Vec::with_capacity(chunk);
            let read = (&mut reader).take(chunk as u64).read_to_end(&mut buf).await;
            if let Err(source) = read {
                self.cancel(&loc, repo).await;
                return Err(RegistryError::Io {
                    path: format!("stream for {repo}"),
                    source,
                });
            }
            if buf.is_empty() {
                break;
            }
            h.update(&buf);
            let bytes = bytes::Bytes::from(buf);
            match self.patch(repo, &loc, offset, bytes.clone()).await {
                Ok(next) => loc = next,
                Err(first) => {
                    // Resend the chunk in hand if the registry stands at its start.
                    let at = self.upload_offset(repo, &loc).await.ok().flatten();
                    match at {
                        Some((received, at)) if received == offset => {
                            tracing::warn!(repo, offset, error = %first, "stream chunk failed; sending it again");
                            match self.patch(repo, &at, offset, bytes.clone()).await {
                                Ok(next) => loc = next,
                                Err(e) => {
                                    self.cancel(&at, repo).await;
                                    return Err(e);
                                }
                            }
                        }
                        _ => {
                            self.cancel(&loc, repo).await;
                            return Err(first);
                        }
                    }
                }
            }
            offset += bytes.len() as u64;
        }
        Ok(StreamedBlob {
            digest: format!("sha256:{}", hex::encode(h.finalize())),
            size: offset,
            repo: repo.to_string(),
            loc,
        })
    }

    /// The producer succeeded: make the blob.
    pub async fn finish_stream(&self, blob: &StreamedBlob) -> Result<(), RegistryError> {
        self.finish_upload(&blob.repo, &blob.loc, &blob.digest, None)
            .await
    }

    /// The producer failed: drop the session and what it received.
    pub async fn cancel_stream(&self, blob: StreamedBlob) {
        self.cancel(&blob.loc, &blob.repo).await;
    }

    async fn cancel(&self, loc: &str, repo: &str) {
        let r = self
            .send(
                Method::DELETE,
                &self.absolute(loc),
                &[],
                None,
                &scope(repo, true),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(repo, error = %e, "cancelling an upload session");
        }
    }

    /// PATCH `bytes` at `offset`; returns the location to go on at.
    async fn patch(
        &self,
        repo: &str,
        loc: &str,
        offset: u64,
        bytes: bytes::Bytes,
    ) -> Result<String, RegistryError> {
        let end = offset + bytes.len() as u64 - 1;
        let range = format!("{offset}-{end}");
        let r = self
            .send(
                Method::PATCH,
                &self.absolute(loc),
                &[("content-range", range.as_str())],
                Some(Body::bytes(bytes, "application/octet-stream")),
                &scope(repo, true),
            )
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(fail("upload chunk", format!("{repo} {range}"), r).await);
        }
        Ok(location(&r).unwrap_or_else(|| loc.to_string()))
    }
}
