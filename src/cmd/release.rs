use std::process::ExitCode;

use anyhow::Result;
use kiln::catalogue::OcamlVersion;
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// The released versions, e.g. 5.5.0 4.14.4.
    #[arg(required = true)]
    versions: Vec<String>,
    /// Show every step without side effects.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

/// Bump, build, verify, open the gate, refresh CI; rerun to continue.
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let versions: Vec<OcamlVersion> = args
        .versions
        .iter()
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Runtime::new()?;
    // One writer per state dir: beside a running daemon, the daemon builds.
    let lease = if args.dry_run {
        None
    } else {
        Some(kiln::daemon::handoff::take(&config)?)
    };
    let say = |line: &str| eprintln!("{line}");
    let daemon = match &lease {
        Some(kiln::daemon::handoff::Lease::Daemon { pid }) => {
            say(&format!(
                "kiln: the daemon (pid {pid}) holds the state dir: the release's builds are handed to it"
            ));
            Some(kiln::refresh::release::HandOff { pid, say: &say })
        }
        _ => None,
    };
    let report = rt.block_on(kiln::refresh::release::release(
        &config,
        &versions,
        args.dry_run,
        daemon,
    ))?;
    drop(lease);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "catalogue: {}",
            if report.bumped.is_empty() {
                "already up to date".to_string()
            } else {
                format!("bumped {}", report.bumped.join(", "))
            }
        );
        for s in &report.builds {
            println!(
                "build: {} built, {} unchanged, {} failed, {} without a builder{}",
                s.built,
                s.unchanged,
                s.failed,
                s.no_builder,
                if args.dry_run { " (dry run)" } else { "" }
            );
            if args.dry_run {
                for t in &s.tags {
                    println!(
                        "  {}:{} {}",
                        t.repository,
                        t.tag,
                        serde_json::to_string(&t.outcome).unwrap_or_default()
                    );
                }
            }
        }
        for p in &report.verify_problems {
            println!("verify: PROBLEM {p}");
        }
        if !report.available.is_empty() {
            println!("available: {}", report.available.join(", "));
        }
        for (v, m) in &report.missing {
            println!("not available yet: {v}");
            for x in m {
                println!("  missing {x}");
            }
        }
        for (repo, a) in &report.refreshed {
            println!(
                "refresh {repo}: {}",
                serde_json::to_string(a).unwrap_or_default()
            );
        }
        if !args.dry_run && !report.complete {
            println!(
                "stopped before refreshing CI: rerun `kiln release` once the missing images exist"
            );
        }
    }
    Ok(if report.complete || args.dry_run {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
