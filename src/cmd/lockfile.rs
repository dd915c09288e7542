//! `kiln lockfile recover`: rebuild the lockfile from the registry.

use std::process::ExitCode;

use anyhow::{Result, bail};
use kiln::config::{Config, Sources};
use kiln::registry::Registry;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Rebuild the lockfile from the registry's tags and index annotations,
    /// then verify it. Reads the registry only.
    Recover {
        /// Replace an existing lockfile (kept beside it as `.bak`).
        #[arg(long)]
        force: bool,
        /// Read and hash every blob rather than HEAD it (as `kiln verify
        /// --deep`): catches a blob whose bytes changed at the same size.
        #[arg(long)]
        deep: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let Sub::Recover { force, deep, json } = args.command;
    let depth = if deep {
        kiln::registry::Depth::Deep
    } else {
        kiln::registry::Depth::Cheap
    };
    let path = config.lockfile_path();
    if path.exists() {
        if !force {
            bail!(
                "{} exists: `kiln lockfile recover --force` replaces it (keeping a .bak)",
                path.display()
            );
        }
        std::fs::copy(&path, path.with_extension("json.bak"))?;
    }
    let cat = kiln::catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let reg = Registry::new(&config.registry)?;
    let rt = tokio::runtime::Runtime::new()?;
    let ns = &config.registry.namespace;
    let r = rt.block_on(async {
        let repos = kiln::publish::repositories::known_repositories(&reg, &cat, ns, None).await?;
        kiln::publish::recover::recover_into(&reg, ns, &repos, &path, depth).await
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "lockfile": path,
                "entries": r.lockfile.entries.len(),
                "builds": r.builds,
                "history": r.lockfile.entries.values().map(|e| e.history.len()).sum::<usize>(),
                "skipped": r.skipped,
            })
        );
    } else {
        println!(
            "recovered {} tags ({} builds read) into {}",
            r.lockfile.entries.len(),
            r.builds,
            path.display()
        );
        for s in &r.skipped {
            println!("  skipped {s}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
