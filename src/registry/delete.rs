//! Deleting from a registry through the distribution API: a manifest by
//! digest (which also removes the tags pointing at it), or, where a
//! registry does not delete by digest, a tag by name. The registry's own
//! garbage collection then frees the blobs nothing references.

use reqwest::{Method, StatusCode};

use super::{Registry, RegistryError, fail, scope};

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// It was not there.
    Absent,
    /// The registry does not delete this way (405, or 400 UNSUPPORTED):
    /// deletion is disabled, or it deletes tags only.
    Unsupported,
}

impl Registry {
    /// `DELETE /v2/<repo>/manifests/<reference>` (a digest or a tag).
    pub async fn delete_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Deleted, RegistryError> {
        let r = self
            .send(
                Method::DELETE,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[],
                None,
                &format!("repository:{repo}:delete {}", scope(repo, true)),
            )
            .await?;
        match r.status() {
            s if s.is_success() => Ok(Deleted::Deleted),
            StatusCode::NOT_FOUND => Ok(Deleted::Absent),
            StatusCode::METHOD_NOT_ALLOWED => Ok(Deleted::Unsupported),
            StatusCode::BAD_REQUEST => {
                let reference = format!("{repo}:{reference}");
                match fail("manifest DELETE", reference, r).await {
                    RegistryError::Status { body, .. } if body.contains("UNSUPPORTED") => {
                        Ok(Deleted::Unsupported)
                    }
                    e => Err(e),
                }
            }
            _ => Err(fail("manifest DELETE", format!("{repo}:{reference}"), r).await),
        }
    }
}
