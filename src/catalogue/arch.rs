//! CPU architectures: Kiln's names (Docker's: `amd64`, `arm64`, `i386`,
//! `arm32v7`, …) and every mapping to other naming schemes — OCI platform
//! `architecture`/`variant`, Docker's `--platform` string, opam's binary
//! release names, `uname -m`. This is the only place those mappings live.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One architecture Kiln builds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
    I386,
    Arm32v7,
    Ppc64le,
    S390x,
    Riscv64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown arch {0:?} (known: amd64, arm64, i386, arm32v7, ppc64le, s390x, riscv64)")]
pub struct ArchError(pub String);

impl Arch {
    pub const ALL: [Arch; 7] = [
        Arch::Amd64,
        Arch::Arm64,
        Arch::I386,
        Arch::Arm32v7,
        Arch::Ppc64le,
        Arch::S390x,
        Arch::Riscv64,
    ];

    /// Kiln's (and Docker Hub's) name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::I386 => "i386",
            Arch::Arm32v7 => "arm32v7",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// OCI platform `architecture` and `variant`.
    pub fn oci(self) -> (&'static str, Option<&'static str>) {
        match self {
            Arch::I386 => ("386", None),
            Arch::Arm32v7 => ("arm", Some("v7")),
            other => (other.as_str(), None),
        }
    }

    /// The arch an OCI platform names (`arm64/v8` is `arm64`).
    pub fn from_oci(architecture: &str, variant: Option<&str>) -> Option<Arch> {
        match (architecture, variant) {
            ("386", _) => Some(Arch::I386),
            ("arm", Some("v7")) => Some(Arch::Arm32v7),
            ("arm", _) => None,
            (other, _) => other.parse().ok(),
        }
    }

    /// Docker's `--platform` string: `linux/arm/v7`.
    pub fn docker_platform(self, os: &str) -> String {
        match self.oci() {
            (a, Some(v)) => format!("{os}/{a}/{v}"),
            (a, None) => format!("{os}/{a}"),
        }
    }

    /// opam's binary release names (`opam-2.4.1-x86_64-linux`).
    pub fn opam(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "arm64",
            Arch::I386 => "i686",
            Arch::Arm32v7 => "armhf",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// What `uname -m` prints inside a Linux image of this arch.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
            Arch::I386 => "i686",
            Arch::Arm32v7 => "armv7l",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// Debian's name for this arch (`dpkg --print-architecture`,
    /// `debootstrap --arch`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::I386 => "i386",
            Arch::Arm32v7 => "armhf",
            Arch::Ppc64le => "ppc64el",
            Arch::S390x => "s390x",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The Homebrew prefix on macOS for this arch.
    pub fn brew_prefix(self) -> &'static str {
        match self {
            Arch::Arm64 => "/opt/homebrew",
            _ => "/usr/local",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = ArchError;
    fn from_str(s: &str) -> Result<Arch, ArchError> {
        Arch::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ArchError(s.to_string()))
    }
}

impl PartialEq<str> for Arch {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Arch {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Arch {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl Serialize for Arch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_every_scheme() {
        for a in Arch::ALL {
            assert_eq!(a.as_str().parse::<Arch>().unwrap(), a);
            let (arch, variant) = a.oci();
            assert_eq!(Arch::from_oci(arch, variant), Some(a));
        }
        assert_eq!(Arch::Arm32v7.docker_platform("linux"), "linux/arm/v7");
        assert_eq!(Arch::I386.docker_platform("linux"), "linux/386");
        assert_eq!(Arch::from_oci("arm64", Some("v8")), Some(Arch::Arm64));
        assert!("amd65".parse::<Arch>().is_err());
        let j = serde_json::to_string(&Arch::S390x).unwrap();
        assert_eq!(j, "\"s390x\"");
        assert_eq!(serde_json::from_str::<Arch>(&j).unwrap(), Arch::S390x);
    }
}
