//! The plan filter flags `kiln plan`, `kiln build` and `kiln sources`
//! share (`#[command(flatten)]`), and the library's [`Filter`] they make.

use kiln::catalogue::Arch;
use kiln::plan::Filter;

#[derive(clap::Args)]
pub struct PlanFilter {
    /// A version (5.5.0), series (5.5) or set (recent, latest, all).
    #[arg(long)]
    version: Option<String>,
    #[arg(long)]
    platform: Option<String>,
    /// OS release id or alias.
    #[arg(long)]
    os: Option<String>,
    #[arg(long)]
    arch: Option<Arch>,
    /// A compiler variant (flambda, flambda+fp, …), or `none` for the plain compiler.
    #[arg(long)]
    variant: Option<String>,
    /// One tag, `TAG` or `REPOSITORY:TAG` (`opam:debian-13-ocaml-5.5`).
    #[arg(long)]
    tag: Option<String>,
}

impl PlanFilter {
    /// The targets these flags select (every tag).
    pub fn filter(self) -> Filter {
        Filter {
            version: self.version,
            platform: self.platform,
            os: self.os,
            arch: self.arch,
            tag: self.tag.map(|t| {
                t.rsplit_once(':')
                    .map_or(t.clone(), |(_, tag)| tag.to_string())
            }),
            variant: self.variant,
        }
    }
}
