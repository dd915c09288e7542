use std::process::ExitCode;

use anyhow::Result;
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// Print as JSON instead of TOML.
    #[arg(long)]
    json: bool,
    /// Print secrets (the API token) as they are instead of `<redacted>`.
    #[arg(long)]
    show_secrets: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let mut config = Config::load(sources)?;
    if !args.show_secrets {
        config.redact_secrets();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&config)?);
    } else {
        print!("{}", toml::to_string_pretty(&config)?);
    }
    Ok(ExitCode::SUCCESS)
}
