//! `kiln bump`: add or update releases in the catalogue. Nothing is
//! written unless every version parses and the changed catalogue validates,
//! recipes included.

use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln::catalogue::{self, BumpOutcome, OcamlVersion, Status};
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// Versions to add or update, e.g. 5.5.0 4.14.4 5.6.0~alpha1.
    #[arg(required = true)]
    versions: Vec<String>,
    /// Status (trunk, dev, alpha, beta, rc, released, end-of-life); default from the version.
    #[arg(long)]
    status: Option<String>,
    /// Release date, YYYY-MM-DD.
    #[arg(long)]
    date: Option<String>,
    /// The record the status and date come from (a file at a commit, a
    /// tag), kept beside them in the series file.
    #[arg(long)]
    source: Option<String>,
    /// Show what would change without writing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let status: Option<Status> = match &args.status {
        Some(s) => Some(
            serde_json::from_value(serde_json::Value::String(s.clone())).with_context(|| {
                format!(
                    "--status {s}: expected trunk, dev, alpha, beta, rc, released or end-of-life"
                )
            })?,
        ),
        None => None,
    };
    let date = match &args.date {
        Some(d) => Some(
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .with_context(|| format!("--date {d}: expected YYYY-MM-DD"))?,
        ),
        None => None,
    };
    // Parse every version first: a bad one changes nothing.
    let versions: Vec<OcamlVersion> = args
        .versions
        .iter()
        .map(|v| v.parse::<OcamlVersion>())
        .collect::<Result<_, _>>()?;
    // Every version in memory, the catalogue validated with all of them and
    // every recipe rendered for every target, before one file is written.
    let staged = catalogue::stage_bump(
        &config.versions_dir,
        &config.platforms_dir,
        &versions,
        status,
        date,
        args.source.as_deref(),
    )?;
    kiln::plan::validate(&staged.catalogue)?;
    if !args.dry_run {
        staged.write()?;
    }
    let mut report = Vec::new();
    for (v, outcome) in versions.iter().zip(&staged.outcomes) {
        let (what, file) = match &outcome {
            BumpOutcome::Added { file } => ("added", Some(file.clone())),
            BumpOutcome::Updated { file } => ("updated", Some(file.clone())),
            BumpOutcome::Unchanged => ("unchanged", None),
        };
        report.push(serde_json::json!({"version": v, "change": what, "file": file, "dry_run": args.dry_run}));
        if !args.json {
            let suffix = if args.dry_run { " (dry run)" } else { "" };
            match file {
                Some(f) => println!("{v}: {what} in {}{suffix}", f.display()),
                None => println!("{v}: already in the catalogue, nothing to do"),
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}
