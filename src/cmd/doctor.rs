use std::process::ExitCode;

use anyhow::Result;
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(kiln::doctor::run(&config));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "healthy": report.healthy(),
                "checks": report.checks,
            }))?
        );
    } else {
        print!("{}", report.render_table());
    }
    Ok(if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
