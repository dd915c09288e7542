//! `versions/rules.yaml`: the compiler rules Kiln shares with
//! ocurrent/ocaml-version — from which release each arch is supported
//! (`Since.arch`) and which compiler variants exist for a release on an
//! arch (`compiler_variants`, `trunk_variants`). Data, read by the plan and
//! by `kiln catalogue show`; hand-edited (its comments name the upstream
//! source of each rule), never rewritten by `kiln bump` or `kiln catalogue
//! fmt`. A catalogue without the file has no variants and no arch cut-offs
//! inside a series.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Arch, OcamlVersion, Status};

/// One variant over a range of series, on some arches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VariantRule {
    /// The switch extra: `flambda`, `flambda+fp`, `no-flat-float-array`.
    pub name: String,
    /// First series with the variant (compared by series, as
    /// `compiler_variants` compares `(major, minor)`); none: every series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<OcamlVersion>,
    /// First series without it again; none: no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<OcamlVersion>,
    /// Arches it exists on; none: every arch the release supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arches: Option<Vec<Arch>>,
}

impl VariantRule {
    fn applies(&self, v: &OcamlVersion, arch: Arch) -> bool {
        let series = v.series();
        self.from.as_ref().is_none_or(|f| series >= f.series())
            && self.below.as_ref().is_none_or(|b| series < b.series())
            && self.arches.as_ref().is_none_or(|a| a.contains(&arch))
    }
}

/// `versions/rules.yaml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// The first release with a compiler for each arch (`Since.arch`).
    #[serde(default)]
    pub arch_since: BTreeMap<Arch, OcamlVersion>,
    /// Variants of every release but the trunk, in the order plans list them.
    #[serde(default)]
    pub variants: Vec<VariantRule>,
    /// Variants of the trunk (status `trunk`), which has its own list.
    #[serde(default)]
    pub trunk_variants: Vec<VariantRule>,
}

impl Rules {
    /// Is `v` at least the first release supporting `arch`? (The series
    /// file says whether the series has `arch` at all.)
    pub fn arch_since_allows(&self, v: &OcamlVersion, arch: Arch) -> bool {
        self.arch_since
            .get(&arch)
            .is_none_or(|since| v.release() >= *since)
    }

    /// The variants of release `v` (of status `status`) on `arch`, in rule
    /// order, each once.
    pub fn variants(&self, v: &OcamlVersion, status: Status, arch: Arch) -> Vec<&str> {
        let rules = if status == Status::Trunk {
            &self.trunk_variants
        } else {
            &self.variants
        };
        let mut out: Vec<&str> = Vec::new();
        for r in rules.iter().filter(|r| r.applies(v, arch)) {
            if !out.contains(&r.name.as_str()) {
                out.push(&r.name);
            }
        }
        out
    }

    /// Every variant name any rule gives, in rule order.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in self.variants.iter().chain(&self.trunk_variants) {
            if !out.contains(&r.name.as_str()) {
                out.push(&r.name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compare_by_series_and_since_by_release() {
        let text = "arch_since: {arm64: '4.02.3'}\nvariants:\n  - {name: fp, from: '4.08', below: '5.0', arches: [amd64]}\n  - {name: nnp, from: '4.12', below: '5.0'}\ntrunk_variants:\n  - {name: afl, arches: [amd64]}\n";
        let r: Rules = serde_norway::from_str(text).unwrap();
        let v = |s: &str| s.parse::<OcamlVersion>().unwrap();
        assert!(!r.arch_since_allows(&v("4.02.0"), Arch::Arm64));
        assert!(r.arch_since_allows(&v("4.02.3"), Arch::Arm64));
        assert!(r.arch_since_allows(&v("3.07+2"), Arch::Amd64));
        let rel = Status::Released;
        assert_eq!(r.variants(&v("4.08.0"), rel, Arch::Amd64), ["fp"]);
        assert!(r.variants(&v("4.08.0"), rel, Arch::Arm64).is_empty());
        assert_eq!(r.variants(&v("4.14.4"), rel, Arch::Amd64), ["fp", "nnp"]);
        assert!(r.variants(&v("5.0.0~alpha1"), rel, Arch::Amd64).is_empty());
        assert_eq!(r.variants(&v("5.6.0"), Status::Trunk, Arch::Amd64), ["afl"]);
        assert_eq!(r.names(), ["fp", "nnp", "afl"]);
    }
}
