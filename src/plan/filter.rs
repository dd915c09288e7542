//! Narrowing a plan: the filter `kiln plan`, `kiln build`, `kiln sources`
//! and the daemon select targets with.

use crate::catalogue::Arch;

/// Narrow a plan: every field that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A version (`5.5.0`), series (`5.5`) or set (`recent`).
    pub version: Option<String>,
    pub platform: Option<String>,
    /// OS release id or alias.
    pub os: Option<String>,
    pub arch: Option<Arch>,
    /// One moving tag (`debian-13-ocaml-5.5`): the daemon's unit of work.
    pub tag: Option<String>,
    /// A compiler variant (`flambda`, `flambda+fp`), or [`PLAIN_VARIANT`]
    /// for the plain compiler; selects compiler images only.
    pub variant: Option<String>,
}

/// `--variant none`: the plain compiler, no variant.
pub const PLAIN_VARIANT: &str = "none";

impl Filter {
    /// Does the filter's variant (if any) select `variant`?
    pub(super) fn selects_variant(&self, variant: Option<&str>) -> bool {
        match self.variant.as_deref() {
            None => true,
            Some(PLAIN_VARIANT) => variant.is_none(),
            Some(v) => variant == Some(v),
        }
    }
}

/// Does an optional filter field accept `value`?
pub(super) fn matches(filter: &Option<String>, value: &str) -> bool {
    filter.as_deref().is_none_or(|f| f == value)
}
