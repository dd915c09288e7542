use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Result;
use kiln::catalogue;
use kiln::config::{Config, Sources};
use kiln::pipeline::{self, Event, Options, Outcome, Summary};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    select: super::filter::PlanFilter,
    /// Resolve inputs and show what would be built, without building.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let opts = Options {
        filter: args.select.filter(),
        dry_run: args.dry_run,
    };
    let bar = indicatif::ProgressBar::new(0);
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} arch builds  {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let running = Mutex::new(Vec::<String>::new());
    let progress = |e: Event| match e {
        Event::Planned { arch_builds } => bar.set_length(arch_builds as u64),
        Event::Started { target } => {
            if let Ok(mut r) = running.lock() {
                r.push(target);
                bar.set_message(r.join(", "));
            }
        }
        Event::Finished { target, outcome } => {
            bar.inc(1);
            if let Ok(mut r) = running.lock() {
                r.retain(|t| *t != target);
                bar.set_message(r.join(", "));
            }
            if let Outcome::Failed { kind, error } = outcome {
                bar.println(format!("FAILED ({kind}) {target}: {error}"));
            }
        }
    };
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let rt = tokio::runtime::Runtime::new()?;
    let summary = rt.block_on(pipeline::run(&config, &cat, &opts, &progress))?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary, opts.dry_run);
    }
    Ok(if summary.failed > 0 {
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
