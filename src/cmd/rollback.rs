use std::process::ExitCode;

use anyhow::Result;
use kiln::config::{Config, Sources};
use kiln::registry::Registry;

#[derive(clap::Args)]
pub struct Args {
    /// The published tag, as `repository:tag` (e.g. kiln/opam:debian-13-ocaml-5.5).
    tag: String,
    /// Roll back to this digest from the tag's history (default: the previous one).
    #[arg(long)]
    to: Option<String>,
    /// Why, recorded in the lockfile history.
    #[arg(long, default_value = "manual rollback")]
    reason: String,
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let reg = Registry::new(&config.registry)?;
    let rt = tokio::runtime::Runtime::new()?;
    let e = rt.block_on(kiln::publish::verify::rollback(
        &reg,
        &config.lockfile_path(),
        &args.tag,
        args.to.as_deref(),
        &args.reason,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        println!(
            "{} now points at {} (was {})",
            args.tag, e.digest, e.history[0].digest
        );
    }
    Ok(ExitCode::SUCCESS)
}
