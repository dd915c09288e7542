//! Docker/OCI image references (`[host[:port]/]path[:tag][@sha256:…]`),
//! parsed by the grammar of distribution's `reference` package, so that a
//! parent in `platform.yaml` is known to be an image name before anything
//! hands it to a registry, an engine or a recipe.
//!
//! Grammar (distribution/reference, with Docker's rule for telling a host
//! from a first path component):
//! - host: DNS labels of `[A-Za-z0-9]` with inner `-`, joined by `.`, or
//!   `[IPv6]`; an optional `:port` of digits. The first component is a host
//!   when there is a `/` after it and it contains `.` or `:`, is
//!   `localhost`, or has an uppercase letter.
//! - path: components of `[a-z0-9]+` joined by `.`, `_`, `__` or dashes,
//!   separated by `/`; the whole name is at most 255 characters.
//! - tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
//! - digest: `sha256:` and 64 lowercase hex digits.

use std::fmt;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("it is empty")]
    Empty,
    #[error("{ch:?} at byte {at} cannot appear in an image reference")]
    Character { ch: char, at: usize },
    #[error("the name is {0} characters long (at most 255)")]
    TooLong(usize),
    #[error("digest {0:?} is not sha256: followed by 64 lowercase hex digits")]
    Digest(String),
    #[error("tag {0:?} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag(String),
    #[error("host {0:?} is not a DNS name or [IPv6] address with an optional numeric port")]
    Host(String),
    #[error("path component {0:?} is not lowercase [a-z0-9]+ joined by '.', '_', '__' or '-'")]
    Path(String),
}

/// A parsed image reference. `host` is `None` for Docker Hub names
/// (`debian`, `opensuse/leap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub host: Option<String>,
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// The name without tag or digest, as written (`127.0.0.1:5000/a/b`).
    pub fn name(&self) -> String {
        match &self.host {
            Some(h) => format!("{h}/{}", self.path),
            None => self.path.clone(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<ImageRef, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if let Some((at, ch)) = s.char_indices().find(|(_, c)| {
            !(c.is_ascii_alphanumeric()
                || matches!(c, '.' | '_' | '-' | '/' | ':' | '@' | '[' | ']'))
        }) {
            return Err(ReferenceError::Character { ch, at });
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                check_digest(d)?;
                (rest, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                check_tag(&rest[i + 1..])?;
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            None => (rest, None),
        };
        if name.len() > 255 {
            return Err(ReferenceError::TooLong(name.len()));
        }
        let (host, path) = match name.split_once('/') {
            Some((first, path)) if is_host_like(first) => {
                check_host(first)?;
                (Some(first.to_string()), path)
            }
            _ => (None, name),
        };
        check_path(path)?;
        Ok(ImageRef {
            host,
            path: path.to_string(),
            tag,
            digest,
        })
    }
}

/// Docker's rule: the first of several components names a registry host
/// when it has a `.` or `:`, is `localhost`, or has an uppercase letter
/// (and, for a clearer error, when it starts like an `[IPv6]` address).
fn is_host_like(first: &str) -> bool {
    first.contains(['.', ':'])
        || first.starts_with('[')
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn check_digest(d: &str) -> Result<(), ReferenceError> {
    match d.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(ReferenceError::Digest(d.to_string())),
    }
}

fn check_tag(t: &str) -> Result<(), ReferenceError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = t.len() <= 128
        && t.bytes().next().is_some_and(word)
        && t.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Tag(t.to_string()))
    }
}

fn check_host(h: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::Host(h.to_string());
    let (host, port) = if let Some(v6) = h.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
        let hexish = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
        if addr.is_empty() || !addr.contains(':') || !addr.bytes().all(hexish) {
            return Err(bad());
        }
        match after {
            "" => (None, None),
            p => (None, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match h.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(h), None),
        }
    };
    if let Some(host) = host {
        let label = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label) {
            return Err(bad());
        }
    }
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(())
}

/// A repository path: `/`-separated components of lowercase alphanumeric
/// runs joined by one separator (`.`, `_`, `__`, or any number of `-`).
pub fn check_path(path: &str) -> Result<(), ReferenceError> {
    for c in path.split('/') {
        if !path_component(c) {
            return Err(ReferenceError::Path(c.to_string()));
        }
    }
    Ok(())
}

fn path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if !b.first().copied().is_some_and(alnum) || !b.last().copied().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run between two alphanumerics.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        s.parse()
    }

    #[test]
    fn accepts_what_docker_accepts() {
        for s in [
            "debian",
            "debian:13",
            "library/debian:13",
            "opensuse/leap:15.6",
            "quay.io/centos/centos:stream10",
            "mcr.microsoft.com/windows/servercore:ltsc2025",
            "127.0.0.1:5000/kiln-fixtures/busybox:latest",
            "localhost/a",
            "localhost:5000/a/b_c/d__e/f--g.h:V1.0-rc_1",
            "[::1]:5000/a:b",
            "[fe80::1]/a",
            "Registry.Example/a",
        ] {
            let r = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.to_string(), s);
        }
        let d = format!("debian:13@sha256:{HEX}");
        assert_eq!(parse(&d).unwrap().digest.unwrap(), format!("sha256:{HEX}"));
        let r = parse(&format!("127.0.0.1:5000/a/b@sha256:{HEX}")).unwrap();
        assert_eq!(
            (r.host.as_deref(), r.path.as_str(), r.tag),
            (Some("127.0.0.1:5000"), "a/b", None)
        );
        let r = parse("opensuse/leap:15.6").unwrap();
        assert_eq!(
            (r.host.as_deref(), r.name().as_str()),
            (None, "opensuse/leap")
        );
        // ':' before a '/' is a port, never a tag.
        assert_eq!(parse("localhost:5000/a").unwrap().tag, None);
        assert_eq!(
            parse("localhost:5000").unwrap().tag.as_deref(),
            Some("5000")
        );
    }

    #[test]
    fn refuses_with_a_reason() {
        let e = |s: &str| parse(s).unwrap_err();
        assert_eq!(
            e("debian:13 ; rm -rf /"),
            ReferenceError::Character { ch: ' ', at: 9 }
        );
        assert_eq!(e(""), ReferenceError::Empty);
        assert_eq!(e("Debian:13"), ReferenceError::Path("Debian".into()));
        assert_eq!(e("debian:"), ReferenceError::Tag("".into()));
        assert_eq!(e("debian:-13"), ReferenceError::Tag("-13".into()));
        assert_eq!(
            e(&format!("debian:{}", "a".repeat(129))),
            ReferenceError::Tag("a".repeat(129))
        );
        assert!(parse(&format!("debian:{}", "a".repeat(128))).is_ok());
        assert_eq!(e(":13"), ReferenceError::Path("".into()));
        assert_eq!(e("a//b"), ReferenceError::Path("".into()));
        assert_eq!(e("a/"), ReferenceError::Path("".into()));
        assert_eq!(e("a..b"), ReferenceError::Path("a..b".into()));
        assert_eq!(e("a_-b"), ReferenceError::Path("a_-b".into()));
        assert_eq!(e("-a"), ReferenceError::Path("-a".into()));
        assert_eq!(
            e("debian@sha256:abc"),
            ReferenceError::Digest("sha256:abc".into())
        );
        assert!(matches!(
            e(&format!("debian@md5:{HEX}")),
            ReferenceError::Digest(_)
        ));
        assert!(matches!(
            e(&format!("a@sha256:{HEX}@sha256:{HEX}")),
            ReferenceError::Digest(_)
        ));
        assert_eq!(e("-x.io/a"), ReferenceError::Host("-x.io".into()));
        assert_eq!(e("x.io:/a"), ReferenceError::Host("x.io:".into()));
        assert_eq!(
            e("x.io:123456/a"),
            ReferenceError::Host("x.io:123456".into())
        );
        assert_eq!(e("[zz]/a"), ReferenceError::Host("[zz]".into()));
        assert!(matches!(e(&"a".repeat(256)), ReferenceError::TooLong(256)));
        assert!(matches!(
            e("a$b"),
            ReferenceError::Character { ch: '$', .. }
        ));
    }

    #[test]
    fn repository_paths() {
        assert!(check_path("opam").is_ok() && check_path("kiln/opam-windows").is_ok());
        assert_eq!(check_path("Opam"), Err(ReferenceError::Path("Opam".into())));
        assert_eq!(
            check_path("opam:1"),
            Err(ReferenceError::Path("opam:1".into()))
        );
    }
}
