//! Blobs: presence (HEAD), cross-repository mounts, pushes from memory or
//! from a file (skipped when present or mountable), and verified pulls to
//! memory or to a file. The chunked upload itself is in `upload`.

use std::path::Path;

use reqwest::{Method, StatusCode, header};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{Body, Registry, RegistryError, fail, mount_scope, scope, sha256_digest, sha256_file};

/// What [`Registry::push_blob_file_report`] did.
#[derive(Debug, Clone)]
pub struct BlobPush {
    pub digest: String,
    pub size: u64,
    pub how: PushedHow,
    /// Bytes in chunks the registry answered, resent ones included.
    pub bytes_sent: u64,
    /// Times the upload resumed after a failed chunk.
    pub resumes: u32,
    /// Of those, times the registry had discarded the session and the
    /// upload began again from byte 0.
    pub restarts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushedHow {
    /// The repository already had it.
    Present,
    /// Mounted from another repository: no bytes sent.
    Mounted,
    Uploaded,
}

impl Registry {
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
                &mount_scope(repo, from),
            )
            .await?;
        match r.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => Ok(false),
            _ => Err(fail("blob mount", format!("{repo}@{digest} from {from}"), r).await),
        }
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
                file: None,
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
        let r = self.push_blob_file_report(repo, path, mount_from).await?;
        Ok((r.digest, r.size))
    }

    /// [`Registry::push_blob_file`], saying how the blob got there.
    pub async fn push_blob_file_report(
        &self,
        repo: &str,
        path: &Path,
        mount_from: Option<&str>,
    ) -> Result<BlobPush, RegistryError> {
        // First pass: the digest, so that HEAD and mount can skip the upload.
        let (hex, size) = sha256_file(path)
            .await
            .map_err(|source| RegistryError::Io {
                path: path.display().to_string(),
                source,
            })?;
        self.push_blob_file_known(repo, path, &format!("sha256:{hex}"), size, mount_from)
            .await
    }

    /// Push a file whose digest and size the caller already knows (a builder
    /// hashed it as it wrote it): no first pass over the file. The upload
    /// still hashes what it streams and refuses a file that changed.
    pub async fn push_blob_file_known(
        &self,
        repo: &str,
        path: &Path,
        digest: &str,
        size: u64,
        mount_from: Option<&str>,
    ) -> Result<BlobPush, RegistryError> {
        let mut report = BlobPush {
            digest: digest.to_string(),
            size,
            how: PushedHow::Present,
            bytes_sent: 0,
            resumes: 0,
            restarts: 0,
        };
        if self.blob_size(repo, &report.digest).await?.is_some() {
            return Ok(report);
        }
        if let Some(from) = mount_from
            && self.mount_blob(repo, &report.digest, from).await?
        {
            report.how = PushedHow::Mounted;
            return Ok(report);
        }
        report.how = PushedHow::Uploaded;
        self.upload_file(repo, path, &mut report).await?;
        Ok(report)
    }

    /// Fetch a blob and check its digest.
    pub async fn pull_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let r = self.get_blob(repo, digest).await?;
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let bytes = r.bytes().await.map_err(|e| self.broken(&url, &e))?;
        same_digest(repo, digest, sha256_digest(&bytes))?;
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
        let mut r = self.get_blob(repo, digest).await?;
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
                    return Err(self.broken(&self.url(&format!("/v2/{repo}/blobs/{digest}")), &e));
                }
            }
        }
        f.flush().await.map_err(io)?;
        drop(f);
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if let Err(e) = same_digest(repo, digest, actual) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, dest).await.map_err(io)?;
        Ok(n)
    }

    /// GET a blob: the response, its body not read yet (and not checked:
    /// the reader checks the digest), or the failure.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<reqwest::Response, RegistryError> {
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
        Ok(r)
    }
}

/// A pulled blob's digest is the one asked for, or the mismatch.
fn same_digest(repo: &str, expected: &str, actual: String) -> Result<(), RegistryError> {
    if actual == expected {
        return Ok(());
    }
    Err(RegistryError::DigestMismatch {
        what: "blob",
        reference: repo.to_string(),
        expected: expected.to_string(),
        actual,
    })
}
