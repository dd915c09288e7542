//! Sources a plan's targets take that are not declared yet, each with the
//! one command that declares it, which only a machine that reaches its
//! origin can run: a git source without a commit (`kiln sources
//! declare-git`), an OpenBSD release's install sets (`kiln sources
//! declare-openbsd`, from the release's signed SHA256.sig). `kiln plan`
//! lists them; a source a target takes that is neither declared nor one
//! of these has no command, and is listed as such (the tests hold the
//! shipped plan to none).

use std::collections::BTreeMap;

use serde::Serialize;

use super::Target;
use crate::catalogue::Catalogue;

/// One undeclared source and the targets that take it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pending {
    /// What the recipes fetch (`ocaml-patches-overlay.bundle`), or for an
    /// OpenBSD release its sets (`openbsd-7.9-amd64-*`).
    pub source: String,
    /// The command that declares it; `None` when Kiln knows of none.
    pub command: Option<String>,
    /// How many of the plan's targets take it.
    pub targets: usize,
}

/// The command that declares an OpenBSD release's sets: its signed
/// listing verified with the release's public key (from an OpenBSD system
/// of the release or the one before, never from the same download).
pub fn declare_openbsd_command(release: &str, arch: &str) -> String {
    format!(
        "kiln sources declare-openbsd --release {release} --arch {arch} --sha256-sig SHA256.sig --pubkey /etc/signify/openbsd-{}-base.pub",
        release.replace('.', "")
    )
}

/// Every source `targets` take that is not declared, with its command.
pub fn pending(cat: &Catalogue, targets: &[Target]) -> Vec<Pending> {
    let mut out: BTreeMap<String, Pending> = BTreeMap::new();
    let mut add = |source: String, command: Option<String>| {
        out.entry(source.clone())
            .or_insert(Pending {
                source,
                command,
                targets: 0,
            })
            .targets += 1;
    };
    for t in targets {
        if let Some(g) = t.uses.undeclared() {
            add(g.served(), Some(g.declare_command()));
        }
        // Sets an OpenBSD release lists in `vars.sets` and the catalogue
        // does not declare.
        if let Some(sets) = t.vars.get("sets") {
            let missing = sets
                .split_whitespace()
                .any(|n| cat.sources.get(n).is_none());
            if missing {
                let release = t.vars.get("release").cloned().unwrap_or_default();
                let is_openbsd = t.distro == "openbsd" && !release.is_empty();
                add(
                    format!("openbsd-{release}-{}-*", t.arch),
                    is_openbsd.then(|| declare_openbsd_command(&release, t.arch.as_str())),
                );
            }
        }
    }
    out.into_values().collect()
}
