//! Listing a repository's tags (`/v2/<repo>/tags/list`), page by page.
//!
//! There is deliberately no `/v2/_catalog`: Docker Hub and GHCR refuse it,
//! so what Kiln reads from a registry (recovery, verify, gc) starts from
//! the repositories the catalogue and the published lockfile name.

use reqwest::{Method, StatusCode};

use super::{Registry, RegistryError, fail, scope};

/// Entries asked for per page.
const PAGE: usize = 1000;

impl Registry {
    /// Every tag of `repo`, sorted; none when the repository does not exist.
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        self.paged(
            &format!("/v2/{repo}/tags/list"),
            "tags",
            &scope(repo, false),
            "tags list",
        )
        .await
    }

    /// Follow `?n=&last=` pages until one comes back short.
    async fn paged(
        &self,
        path: &str,
        field: &str,
        scope: &str,
        what: &'static str,
    ) -> Result<Vec<String>, RegistryError> {
        let mut out: Vec<String> = Vec::new();
        loop {
            let mut page = format!("{path}?n={PAGE}");
            if let Some(last) = out.last() {
                page.push_str(&format!("&last={last}"));
            }
            let r = self.send(Method::GET, &page, &[], None, scope).await?;
            match r.status() {
                StatusCode::NOT_FOUND => return Ok(out),
                s if !s.is_success() => return Err(fail(what, path.to_string(), r).await),
                _ => {}
            }
            let v: serde_json::Value = r
                .json()
                .await
                .map_err(|e| self.broken(&self.url(&page), &e))?;
            let items: Vec<String> = v[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect();
            let n = items.len();
            out.extend(items);
            if n < PAGE {
                out.sort();
                out.dedup();
                return Ok(out);
            }
        }
    }
}
