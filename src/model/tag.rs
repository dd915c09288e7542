//! Names: the repository inside the registry namespace, a tag's identity
//! (`<repository>:<tag>`, the lockfile's key), and the pinned reference CI
//! uses (`host/repository:tag@sha256:…`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The repository a platform publishes to, inside the registry namespace:
/// `kiln` + `opam` → `kiln/opam`. The one place this is formatted.
pub fn repository(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// One tag of one repository: the unit that is built, published and gated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TagId {
    /// `kiln/opam`.
    pub repository: String,
    /// `debian-13-ocaml-5.5`.
    pub tag: String,
}

impl TagId {
    pub fn new(repository: impl Into<String>, tag: impl Into<String>) -> TagId {
        TagId {
            repository: repository.into(),
            tag: tag.into(),
        }
    }

    /// The lockfile key, `kiln/opam:debian-13-ocaml-5.5`.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// The last path component of the repository: `ocaml/opam` and
    /// `kiln/opam` both name `opam`, so CI keeps its public image names.
    pub fn basename(&self) -> &str {
        basename(&self.repository)
    }
}

impl fmt::Display for TagId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// The last path component of a repository name.
pub fn basename(repository: &str) -> &str {
    repository.rsplit('/').next().unwrap_or(repository)
}

/// A reference pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedRef {
    /// Registry `host:port`.
    pub host: String,
    pub repository: String,
    /// The tag the pin was resolved from, if any.
    pub tag: Option<String>,
    pub digest: String,
}

impl PinnedRef {
    /// `host/repository:tag@sha256:…` (or without the tag): what the API's
    /// `reference` field and `kiln resolve` print, readable by Docker.
    pub fn reference(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}/{}:{t}@{}", self.host, self.repository, self.digest),
            None => self.by_digest(),
        }
    }

    /// `host/repository@sha256:…`, for tools that refuse tag+digest (skopeo).
    pub fn by_digest(&self) -> String {
        format!("{}/{}@{}", self.host, self.repository, self.digest)
    }
}

impl fmt::Display for PinnedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reference())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_formatted_in_one_place() {
        assert_eq!(repository("kiln", "opam"), "kiln/opam");
        assert_eq!(repository("", "opam"), "opam");
        let t = TagId::new("ocaml/opam", "debian-13-ocaml-5.5");
        assert_eq!(t.key(), "ocaml/opam:debian-13-ocaml-5.5");
        assert_eq!(t.basename(), "opam");
        let p = PinnedRef {
            host: "127.0.0.1:5000".into(),
            repository: "kiln/opam".into(),
            tag: Some("debian-13-ocaml-5.5".into()),
            digest: "sha256:ab".into(),
        };
        assert_eq!(
            p.reference(),
            "127.0.0.1:5000/kiln/opam:debian-13-ocaml-5.5@sha256:ab"
        );
        assert_eq!(p.by_digest(), "127.0.0.1:5000/kiln/opam@sha256:ab");
    }
}
