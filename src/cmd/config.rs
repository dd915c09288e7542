use std::process::ExitCode;

use anyhow::Result;
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// Print as JSON instead of TOML.
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&config)?);
    } else {
        print!("{}", toml::to_string_pretty(&config)?);
    }
    Ok(ExitCode::SUCCESS)
}
