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
}

impl PlanFilter {
    /// The targets these flags select (every tag).
    pub fn filter(self) -> Filter {
        Filter {
            version: self.version,
            platform: self.platform,
            os: self.os,
            arch: self.arch,
            tag: None,
        }
    }
}
