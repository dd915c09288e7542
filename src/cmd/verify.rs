use std::process::ExitCode;

use anyhow::Result;
use kiln::catalogue::Arch;
use kiln::config::{Config, Sources};
use kiln::pipeline::rebuild::{RebuildReport, Verdict};
use kiln::publish::lockfile::Lockfile;
use kiln::registry::Registry;

#[derive(clap::Args)]
pub struct Args {
    /// Rebuild this published tag's image (REPO:TAG: moving tag, alias or
    /// immutable tag) without publishing it, and compare it with the
    /// published one. Exit 0 identical, 1 different, 2 not comparable.
    #[arg(long, value_name = "REPO:TAG")]
    rebuild: Option<String>,
    /// With --rebuild: which arch (needed when the tag has several).
    #[arg(long, requires = "rebuild")]
    arch: Option<Arch>,
    #[arg(long)]
    json: bool,
}

/// Check every lockfile entry against the registry; exit 1 on any problem.
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    if let Some(reference) = &args.rebuild {
        return rebuild(&config, reference, args.arch, args.json);
    }
    let lock = Lockfile::load(&config.lockfile_path())?;
    let reg = Registry::new(&config.registry)?;
    let scratch = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let problems = rt.block_on(kiln::publish::verify::verify(&reg, &lock, scratch.path()));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "entries": lock.entries.len(),
                "ok": problems.is_empty(),
                "problems": problems,
            }))?
        );
    } else if problems.is_empty() {
        println!(
            "verified {} lockfile entries against {}: every tag, index, child and blob is as recorded",
            lock.entries.len(),
            reg.host
        );
    } else {
        for p in &problems {
            println!("PROBLEM {}: {}", p.entry, p.problem);
        }
        println!(
            "{} problem(s) in {} entries",
            problems.len(),
            lock.entries.len()
        );
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `--rebuild`: build one target again and say whether it is the published image.
fn rebuild(config: &Config, reference: &str, arch: Option<Arch>, json: bool) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(kiln::pipeline::rebuild::rebuild(config, reference, arch))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_rebuild(&report);
    }
    Ok(match report.verdict {
        Verdict::Identical => ExitCode::SUCCESS,
        Verdict::Different { .. } => ExitCode::from(1),
        Verdict::InputsChanged { .. } => ExitCode::from(2),
    })
}

fn print_rebuild(r: &RebuildReport) {
    println!(
        "{} {} ({}, {})",
        r.reference,
        r.arch,
        r.target,
        if r.reproducible {
            "reproducible recipe"
        } else {
            "recipe not declared reproducible: differences are expected, adoption by build key keeps the published digest"
        }
    );
    let rebuilt = r.rebuilt.as_deref().unwrap_or("-");
    match &r.verdict {
        Verdict::Identical => println!("identical: the rebuild is {rebuilt}, the published digest"),
        Verdict::Different { difference: d } => {
            println!("different: published {}, rebuilt {rebuilt}", r.published);
            let mut at = String::new();
            if let Some(l) = d.layer {
                at.push_str(&format!(
                    "layer {l} (published {}, rebuilt {})",
                    d.published_layer.as_deref().unwrap_or("-"),
                    d.rebuilt_layer.as_deref().unwrap_or("-")
                ));
            }
            if let Some(f) = &d.file {
                at.push_str(&format!(", file {f}"));
            }
            if at.is_empty() {
                println!("  first difference: {}", d.what);
            } else {
                println!("  first difference: {at}: {}", d.what);
            }
        }
        Verdict::InputsChanged { inputs } => println!(
            "not comparable: the inputs changed since publication ({}); `kiln build` would build a new key",
            inputs.join(", ")
        ),
    }
}
