use std::process::ExitCode;

use anyhow::Result;
use kiln::catalogue;
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Validate versions/ and platforms/ (and that every recipe exists).
    Validate {
        #[arg(long)]
        json: bool,
    },
    /// List every release with its status and date, and the sets.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Rewrite every versions/<series>.yaml in canonical form.
    Fmt,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let loaded = catalogue::load(&config.versions_dir, &config.platforms_dir)
        .and_then(|c| catalogue::validate_recipes(&c).map(|_| c));
    match args.command {
        Sub::Validate { json } => {
            let (ok, msg) = match &loaded {
                Ok(c) => (
                    true,
                    format!(
                        "catalogue ok: {} series, {} releases, {} platforms, {} OS releases",
                        c.series.len(),
                        c.series.iter().map(|s| s.releases.len()).sum::<usize>(),
                        c.platforms.len(),
                        c.platforms.iter().map(|p| p.releases.len()).sum::<usize>()
                    ),
                ),
                Err(e) => (false, e.to_string()),
            };
            if json {
                println!("{}", serde_json::json!({"valid": ok, "message": msg}));
            } else if ok {
                println!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Sub::List { json } => {
            let cat = loaded?;
            if json {
                let series: Vec<_> = cat.series.iter().map(|s| serde_json::json!({
                    "series": s.series, "native": s.native, "bytecode_only": s.bytecode_only,
                    "variants": s.variants, "releases": s.releases,
                })).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "series": series,
                        "latest": cat.latest(),
                        "recent": cat.select("recent").unwrap_or_default(),
                        "significant": cat.select("significant").unwrap_or_default(),
                    }))?
                );
            } else {
                for s in &cat.series {
                    for r in &s.releases {
                        println!(
                            "{:<12} {:<12} {}",
                            r.version.to_string(),
                            format!("{:?}", r.status).to_lowercase(),
                            r.date.map(|d| d.to_string()).unwrap_or_default()
                        );
                    }
                }
                let show = |v: Vec<catalogue::OcamlVersion>| {
                    v.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                println!(
                    "\nlatest:      {}",
                    cat.latest().map(|v| v.to_string()).unwrap_or_default()
                );
                println!(
                    "recent:      {}",
                    show(cat.select("recent").unwrap_or_default())
                );
                println!(
                    "significant: {}",
                    show(cat.select("significant").unwrap_or_default())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Sub::Fmt => {
            let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
            let mut changed = 0;
            for s in &cat.series {
                let text = catalogue::format_series(s)?;
                if std::fs::read_to_string(&s.file).ok().as_deref() != Some(text.as_str()) {
                    std::fs::write(&s.file, text)?;
                    changed += 1;
                }
            }
            println!("{changed} of {} series files rewritten", cat.series.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}
