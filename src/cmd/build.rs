use std::process::ExitCode;

use anyhow::Result;
use kiln::catalogue;
use kiln::config::{Config, Sources};
use kiln::daemon::handoff::{self, Lease};
use kiln::pipeline::{self, Event, Options, Outcome, Summary};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    select: super::filter::PlanFilter,
    /// Resolve inputs and show what would be built, without building.
    #[arg(long)]
    dry_run: bool,
    /// Rebuild the one tag chosen with --tag although its key is unchanged;
    /// published once it verifies, saying whether the digest came out the same.
    #[arg(long, requires = "tag")]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let opts = Options {
        filter: args.select.filter(),
        dry_run: args.dry_run,
        reconcile: kiln::publish::Scope::Full,
        force: args.force,
    };
    let rt = tokio::runtime::Runtime::new()?;
    // One writer per state dir: beside a running daemon, the daemon builds.
    let lease = if opts.dry_run {
        None
    } else {
        Some(handoff::take(&config)?)
    };
    let summary = if let Some(Lease::Daemon { pid }) = &lease {
        let say = |line: &str| eprintln!("{line}");
        rt.block_on(handoff::hand_off(
            &config,
            &cat,
            &opts.filter,
            opts.force,
            pid,
            &say,
        ))?
    } else {
        let display = super::progress::Progress::new(args.json);
        let progress = |e: Event| display.event(e);
        let s = rt.block_on(pipeline::run(&config, &cat, &opts, &progress))?;
        display.finish();
        s
    };
    drop(lease);
    if let Some(tag) = &opts.filter.tag
        && summary.tags.is_empty()
    {
        anyhow::bail!("--tag {tag}: no such tag in the plan (`kiln plan` lists them)");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary, opts.dry_run);
    }
    if let (Some(e), false) = (&summary.reconcile_error, args.json) {
        println!("FAILED reconciling moving tags and aliases: {e}");
    }
    Ok(if summary.failed > 0 || summary.reconcile_error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The summary table.
fn print_summary(summary: &Summary, dry_run: bool) {
    println!("{:<44} {:<10} {:<11} detail", "tag", "ocaml", "result");
    for t in &summary.tags {
        let (result, detail) = match &t.outcome {
            Outcome::Built { digest } => (
                "built",
                format!(
                    "{} {}",
                    &digest[..19.min(digest.len())],
                    t.changed_inputs.join(",")
                ),
            ),
            Outcome::Unchanged { digest } => {
                ("unchanged", digest[..19.min(digest.len())].to_string())
            }
            Outcome::Adopted { digest, from } => (
                "adopted",
                format!("{} from the {from}", &digest[..19.min(digest.len())]),
            ),
            Outcome::Failed { kind, error } => ("FAILED", format!("({kind}) {error}")),
            Outcome::NoBuilder { reason } => ("no builder", reason.clone()),
            Outcome::Planned => (
                "to build",
                t.arches
                    .keys()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        println!(
            "{:<44} {:<10} {:<11} {}",
            format!("{}:{}", t.repository, t.tag),
            t.ocaml.as_deref().unwrap_or("-"),
            result,
            detail
        );
        if let Outcome::Failed { .. } = t.outcome {
            for (arch, o) in &t.arches {
                if let Outcome::Failed { error, .. } = o {
                    println!("{:<44} {:<10} {:<11} {arch}: {error}", "", "", "");
                }
            }
        }
    }
    for m in &summary.repaired {
        println!(
            "{}: {} was {}, now {} (owner {})",
            m.reason,
            m.tag,
            m.was.as_deref().unwrap_or("missing"),
            m.now,
            m.owner
        );
    }
    println!(
        "\n{} built, {} unchanged, {} adopted, {} failed, {} without a builder{}",
        summary.built,
        summary.unchanged,
        summary.adopted,
        summary.failed,
        summary.no_builder,
        if dry_run { " (dry run)" } else { "" }
    );
}
