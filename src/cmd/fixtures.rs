use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln::builders::docker::{self, parents};
use kiln::config::{Config, Sources};
use kiln::registry::Registry;

#[derive(clap::Args)]
pub struct Args {
    /// Also build the Debian (debootstrap) parent; takes a few minutes once.
    #[arg(long)]
    debian: bool,
}

/// Push the local parent images the demo profile and tests build on.
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let host = config
        .docker
        .hosts
        .first()
        .context("no docker host configured")?;
    let reg = Registry::new(&config.registry)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let engine = docker::connect(host).await?;
        let d = parents::ensure_busybox(&config, &engine, &reg).await?;
        println!("{}/{}:latest@{d}", reg.host, parents::BUSYBOX_REPO);
        if args.debian {
            let d = parents::ensure_debian(&config, &engine, &reg).await?;
            println!("{}/{}:bookworm@{d}", reg.host, parents::DEBIAN_REPO);
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
