//! OCaml version numbers: `4.14.4`, `5.5.0~beta1`, `4.14.3+flambda+fp`,
//! series `4.08`, and the pre-4.00 names `3.07`, `3.07+1`, `3.07+2`. Not
//! semver: prereleases use `~`, variants (and the 3.07 patch levels) use
//! `+`, minors below 5 are written with two digits (`4.08`), and a
//! prerelease sorts before its release. The grammar is ocurrent/
//! ocaml-version's (`Ocaml_version.of_string`): `MAJOR.MINOR[.PATCH][~PRE][+EXTRA]`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OCaml version {input:?}: {reason}")]
pub struct VersionError {
    pub input: String,
    pub reason: String,
}

/// A prerelease tag after `~`: alpha, beta, rc (with a number), or other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Prerelease {
    Alpha(u32),
    Beta(u32),
    Rc(u32),
    Other(String),
}

impl Prerelease {
    fn rank(&self) -> (u8, u32, &str) {
        match self {
            Prerelease::Other(s) => (0, 0, s.as_str()),
            Prerelease::Alpha(n) => (1, *n, ""),
            Prerelease::Beta(n) => (2, *n, ""),
            Prerelease::Rc(n) => (3, *n, ""),
        }
    }
}

/// An OCaml version. `patch` is `None` for a series (`4.08`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OcamlVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: Option<u32>,
    pub prerelease: Option<Prerelease>,
    /// `+`-separated extra: variant options (`flambda+fp`) or `trunk`.
    pub extra: Option<String>,
}

impl OcamlVersion {
    pub fn new(major: u32, minor: u32, patch: u32) -> Self {
        OcamlVersion {
            major,
            minor,
            patch: Some(patch),
            prerelease: None,
            extra: None,
        }
    }

    /// The series this version belongs to (`5.5`), without patch or extras.
    pub fn series(&self) -> OcamlVersion {
        OcamlVersion {
            major: self.major,
            minor: self.minor,
            patch: None,
            prerelease: None,
            extra: None,
        }
    }

    /// A bare series (`4.08`): no patch, prerelease or extra.
    pub fn is_series(&self) -> bool {
        self.patch.is_none() && self.prerelease.is_none() && self.extra.is_none()
    }

    /// Is this the name of a release (not of a series or a variant)?
    /// `MAJOR.MINOR.PATCH[~PRE]`, or before 4.00, when releases had no patch
    /// number, `3.07` and `3.07+N` (ocaml-version's `Releases.v3_07_*`).
    pub fn is_release_name(&self) -> bool {
        match (self.patch, &self.extra) {
            (Some(_), None) => true,
            (None, extra) => {
                self.major < 4
                    && self.prerelease.is_none()
                    && extra
                        .as_deref()
                        .is_none_or(|e| e.bytes().all(|b| b.is_ascii_digit()))
            }
            (Some(_), Some(_)) => false,
        }
    }

    /// The compiler part of a tag, by docker-base-images' `Tag.tag_of_compiler`
    /// (src/tag.ml): the version without its patch level, `~` and `+`
    /// written `-`: `5.5.0~beta1` → `5.5-beta1`, `4.14.3+flambda+fp` →
    /// `4.14-flambda-fp`, `5.5.0` → `5.5`.
    pub fn tag_part(&self) -> String {
        let mut out = self.series_tag();
        match &self.prerelease {
            None => {}
            Some(Prerelease::Alpha(n)) => out.push_str(&format!("-alpha{n}")),
            Some(Prerelease::Beta(n)) => out.push_str(&format!("-beta{n}")),
            Some(Prerelease::Rc(n)) => out.push_str(&format!("-rc{n}")),
            Some(Prerelease::Other(s)) => out.push_str(&format!("-{s}")),
        }
        if let Some(e) = &self.extra {
            out.push('-');
            out.push_str(&e.replace('+', "-"));
        }
        out
    }

    /// This version with variant `extra` (`4.14.3` + `flambda+fp`).
    pub fn with_extra(&self, extra: Option<&str>) -> OcamlVersion {
        OcamlVersion {
            extra: extra.map(str::to_string),
            ..self.clone()
        }
    }

    /// The form used in tags: `4.08`, `4.14`, `5.5`, `3.12`.
    pub fn series_tag(&self) -> String {
        if self.major < 5 {
            format!("{}.{:02}", self.major, self.minor)
        } else {
            format!("{}.{}", self.major, self.minor)
        }
    }

    /// The version without prerelease or extra (`5.5.0~beta1` → `5.5.0`).
    pub fn release(&self) -> OcamlVersion {
        OcamlVersion {
            prerelease: None,
            extra: None,
            ..self.clone()
        }
    }

    pub fn is_prerelease(&self) -> bool {
        self.prerelease.is_some()
    }

    /// Compare ignoring `extra` (variants); `None` patch sorts first.
    fn key(&self) -> (u32, u32, Option<u32>) {
        (self.major, self.minor, self.patch)
    }
}

impl Ord for OcamlVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key()
            .cmp(&other.key())
            .then_with(|| match (&self.prerelease, &other.prerelease) {
                (None, None) => Ordering::Equal,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => a.rank().cmp(&b.rank()),
            })
            .then_with(|| self.extra.cmp(&other.extra))
    }
}

impl PartialOrd for OcamlVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for OcamlVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Minors keep the zero padding OCaml itself uses (4.08.1, 3.07).
        if self.major < 5 {
            write!(f, "{}.{:02}", self.major, self.minor)?;
        } else {
            write!(f, "{}.{}", self.major, self.minor)?;
        }
        if let Some(p) = self.patch {
            write!(f, ".{p}")?;
        }
        match &self.prerelease {
            None => {}
            Some(Prerelease::Alpha(n)) => write!(f, "~alpha{n}")?,
            Some(Prerelease::Beta(n)) => write!(f, "~beta{n}")?,
            Some(Prerelease::Rc(n)) => write!(f, "~rc{n}")?,
            Some(Prerelease::Other(s)) => write!(f, "~{s}")?,
        }
        if let Some(e) = &self.extra {
            write!(f, "+{e}")?;
        }
        Ok(())
    }
}

fn num(input: &str, part: &str, what: &str) -> Result<u32, VersionError> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 6 {
        return Err(VersionError {
            input: input.to_string(),
            reason: format!("{what} {part:?} is not a number"),
        });
    }
    part.parse().map_err(|_| VersionError {
        input: input.to_string(),
        reason: format!("{what} {part:?} is out of range"),
    })
}

impl FromStr for OcamlVersion {
    type Err = VersionError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| VersionError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (rest, extra) = match input.split_once('+') {
            Some((r, e)) => {
                if e.is_empty()
                    || !e
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-_".contains(&b))
                {
                    return Err(err("empty or invalid text after '+'"));
                }
                (r, Some(e.to_string()))
            }
            None => (input, None),
        };
        let (rest, pre) = match rest.split_once('~') {
            Some((r, p)) => (r, Some(p)),
            None => (rest, None),
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let (major, minor, patch) = match parts.as_slice() {
            [a, b] => (num(input, a, "major")?, num(input, b, "minor")?, None),
            [a, b, c] => (
                num(input, a, "major")?,
                num(input, b, "minor")?,
                Some(num(input, c, "patch")?),
            ),
            _ => return Err(err("expected MAJOR.MINOR or MAJOR.MINOR.PATCH")),
        };
        let prerelease = match pre {
            None => None,
            Some(p) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(err("empty or invalid prerelease after '~'"));
                }
                let tail = |prefix: &str| {
                    p.strip_prefix(prefix)
                        .filter(|t| {
                            !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && t.len() <= 6
                        })
                        .and_then(|t| t.parse().ok())
                };
                Some(if let Some(n) = tail("alpha") {
                    Prerelease::Alpha(n)
                } else if let Some(n) = tail("beta") {
                    Prerelease::Beta(n)
                } else if let Some(n) = tail("rc") {
                    Prerelease::Rc(n)
                } else {
                    Prerelease::Other(p.to_string())
                })
            }
        };
        if patch.is_none() && prerelease.is_some() {
            return Err(err("a series (MAJOR.MINOR) cannot carry '~'"));
        }
        let v = OcamlVersion {
            major,
            minor,
            patch,
            prerelease,
            extra,
        };
        Ok(v)
    }
}

impl Serialize for OcamlVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for OcamlVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML may give `4.14` as a float: accept any scalar and re-parse its text.
        let v = serde_norway::Value::deserialize(d)?;
        let text = match &v {
            serde_norway::Value::String(s) => s.clone(),
            serde_norway::Value::Number(n) => n.to_string(),
            _ => {
                return Err(serde::de::Error::custom(
                    "expected a version string such as \"5.5.0\"",
                ));
            }
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> OcamlVersion {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        for s in [
            "4.14.4",
            "5.5.0~beta1",
            "4.14.3+flambda+fp",
            "4.08",
            "3.07",
            "5.6.0+trunk",
            "4.02.3",
            "5.0.0~alpha0",
            "5.3.0~rc1",
            "3.07+1",
            "3.07+2",
        ] {
            assert_eq!(v(s).to_string(), s);
        }
        assert!(v("3.07") < v("3.07+1") && v("3.07+1") < v("3.07+2") && v("3.07+2") < v("3.08.0"));
        assert!(v("3.07+2").is_release_name() && v("3.07").is_release_name());
        assert!(!v("4.08").is_release_name() && !v("4.14.3+flambda").is_release_name());
        assert_eq!(
            v("5.5.0~beta1").with_extra(Some("afl")).tag_part(),
            "5.5-beta1-afl"
        );
        assert_eq!(v("4.14.3+flambda+fp").tag_part(), "4.14-flambda-fp");
        assert_eq!(v("5.6.0").tag_part(), "5.6");
        assert_eq!(v("4.08.1").series_tag(), "4.08");
        assert_eq!(v("5.5.0").series_tag(), "5.5");
        assert_eq!(v("4.14.3+flambda").extra.as_deref(), Some("flambda"));
        for bad in [
            "",
            "5",
            "5.x.0",
            "5.5.0~",
            "5.5.0+",
            "4.08~beta1",
            "1.2.3.4",
            "5.5.0 ",
        ] {
            assert!(
                bad.parse::<OcamlVersion>().is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[test]
    fn orders_prereleases_before_release() {
        let mut vs: Vec<OcamlVersion> = [
            "5.5.0",
            "5.5.0~rc1",
            "5.5.0~alpha1",
            "5.5.0~beta2",
            "5.4.1",
            "5.10.0",
            "4.14.4",
            "5.5.0~beta1",
        ]
        .iter()
        .map(|s| v(s))
        .collect();
        vs.sort();
        let out: Vec<String> = vs.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            out,
            [
                "4.14.4",
                "5.4.1",
                "5.5.0~alpha1",
                "5.5.0~beta1",
                "5.5.0~beta2",
                "5.5.0~rc1",
                "5.5.0",
                "5.10.0"
            ]
        );
    }
}
