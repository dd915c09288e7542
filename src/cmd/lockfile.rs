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
        #[arg(long)]
        json: bool,
    },
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let Sub::Recover { force, json } = args.command;
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
    let reg = Registry::new(&config.registry)?;
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt.block_on(kiln::publish::recover::recover_into(
        &reg,
        &config.registry.namespace,
        &path,
    ))?;
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
