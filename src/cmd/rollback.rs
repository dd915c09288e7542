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
    let _lease = super::exclusive_of_daemon(&config, "kiln rollback")?;
    let reg = Registry::new(&config.registry)?;
    let rt = tokio::runtime::Runtime::new()?;
    let path = config.lockfile_path();
    let ns = &config.registry.namespace;
    let e = rt.block_on(async {
        // Roll back what the namespace holds now, another factory's
        // publications included; then publish the result for them.
        kiln::publish::remote::sync(&reg, ns, &path).await?;
        let e = kiln::publish::verify::rollback(
            &reg,
            &path,
            &args.tag,
            args.to.as_deref(),
            &args.reason,
        )
        .await?;
        kiln::publish::remote::publish_lockfile(&reg, ns, &path).await?;
        Ok::<_, kiln::publish::PublishError>(e)
    })?;
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
