use std::process::ExitCode;

use anyhow::Result;
use kiln::config::{Config, Sources};
use kiln::publish::lockfile::Lockfile;
use kiln::registry::Registry;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

/// Check every lockfile entry against the registry; exit 1 on any problem.
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let lock = Lockfile::load(&config.lockfile_path())?;
    let reg = Registry::new(&config.registry)?;
    let scratch = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let problems = rt.block_on(kiln::publish::verify::verify(&reg, &lock, scratch.path()));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "entries": lock.entries.len(),
                "ok": problems.is_empty(),
                "problems": problems,
            }))?
        );
    } else if problems.is_empty() {
        println!(
            "verified {} lockfile entries against {}: every tag, index, child and blob is as recorded",
            lock.entries.len(),
            reg.host
        );
    } else {
        for p in &problems {
            println!("PROBLEM {}: {}", p.entry, p.problem);
        }
        println!(
            "{} problem(s) in {} entries",
            problems.len(),
            lock.entries.len()
        );
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
