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
    /// Check the configuration against the catalogue instead of printing
    /// it: every OS release and arch the catalogue builds has a host that
    /// can build it (by the builders' own routing). Exits 1 naming the
    /// ones without.
    #[arg(long)]
    check: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let mut config = Config::load(sources)?;
    if args.check {
        return check(&config, args.json);
    }
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

/// `--check`: which (platform, OS release, arch) of the catalogue's
/// targets no configured host can build.
fn check(config: &Config, json: bool) -> Result<ExitCode> {
    let cat = kiln::catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let targets = kiln::plan::expand(&cat, &kiln::plan::Filter::default())?;
    let builders = kiln::builders::Builders::new(config);
    let mut covered = std::collections::BTreeSet::new();
    let mut missing = std::collections::BTreeMap::<String, usize>::new();
    for t in &targets {
        let slot = format!("{}/{}/{}", t.platform, t.os, t.arch);
        if builders.can_build(t) {
            covered.insert(slot);
        } else {
            *missing.entry(slot).or_default() += 1;
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": missing.is_empty(),
                "covered": covered,
                "no_host": missing,
            }))?
        );
    } else {
        println!(
            "configuration ok; hosts for {} OS release/arch pairs of the catalogue",
            covered.len()
        );
        for (slot, n) in &missing {
            println!("no host builds {slot} ({n} targets)");
        }
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
