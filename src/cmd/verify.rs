use std::process::ExitCode;

use anyhow::Result;
use kiln::catalogue::Arch;
use kiln::config::{Config, Sources};
use kiln::pipeline::rebuild::{RebuildReport, Verdict};
use kiln::publish::lockfile::Lockfile;
use kiln::publish::{Reconciled, Scope};
use kiln::registry::{Depth, Registry};

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
    /// Read and hash every blob instead of checking each by HEAD and size
    /// (the default, which `kiln release` uses too).
    #[arg(long, conflicts_with = "rebuild")]
    deep: bool,
    /// First reconcile: give every alias its one owner (from the catalogue
    /// and the lockfile) and put every moving tag and alias the registry
    /// holds elsewhere back at the lockfile's digest; then verify.
    #[arg(long, conflicts_with = "rebuild")]
    repair: bool,
    #[arg(long)]
    json: bool,
}

/// Check every lockfile entry against the registry; exit 1 on any problem.
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    if let Some(reference) = &args.rebuild {
        return rebuild(&config, reference, args.arch, args.json);
    }
    let reg = Registry::new(&config.registry)?;
    let rt = tokio::runtime::Runtime::new()?;
    let repaired = if args.repair {
        let _lease = super::exclusive_of_daemon(&config, "kiln verify --repair")?;
        Some(rt.block_on(repair(&config, &reg))?)
    } else {
        None
    };
    if let (Some(r), false) = (&repaired, args.json) {
        print_repair(r);
    }
    let lock = Lockfile::load(&config.lockfile_path())?;
    let scratch = tempfile::tempdir()?;
    let depth = if args.deep { Depth::Deep } else { Depth::Cheap };
    let problems = rt.block_on(kiln::publish::verify::verify_at(
        &reg,
        &lock,
        scratch.path(),
        depth,
    ));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "entries": lock.entries.len(),
                "depth": if args.deep { "deep" } else { "cheap" },
                "ok": problems.is_empty(),
                "problems": problems,
                "repaired": repaired,
            }))?
        );
    } else if problems.is_empty() {
        println!(
            "verified {} lockfile entries against {}: every tag, index, child and blob is as recorded ({})",
            lock.entries.len(),
            reg.host,
            if args.deep {
                "every blob read and hashed"
            } else {
                "blobs checked by HEAD and size; --deep reads them"
            }
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

/// `--repair`: the reconciliation every publishing run ends with, alone;
/// the lockfile is pushed to the registry when it changed. What moved is
/// printed unless `--json` (which carries it).
async fn repair(config: &Config, reg: &Registry) -> Result<Reconciled> {
    let cat = kiln::catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let all = kiln::plan::expand(&cat, &kiln::plan::Filter::default())?;
    let path = config.lockfile_path();
    let ns = &config.registry.namespace;
    // Reconcile to what the namespace holds now: a tag another factory
    // published since is never moved back to this one's older build.
    kiln::publish::remote::sync(reg, ns, &path).await?;
    let r = kiln::publish::reconcile(reg, &path, &all, ns, Scope::Full).await?;
    if r.changed_anything() {
        kiln::publish::remote::publish_lockfile(reg, ns, &path).await?;
    }
    Ok(r)
}

fn print_repair(r: &Reconciled) {
    for m in &r.moved {
        let was = m.was.as_deref().unwrap_or("missing");
        println!(
            "{}: {} was {was}, now {} (owner {})",
            m.reason, m.tag, m.now, m.owner
        );
    }
    for (alias, from, to) in &r.owners_changed {
        let from = from.as_deref().unwrap_or("nobody");
        println!("owner: {alias} moves from {from} to {to}");
    }
    for alias in &r.dropped {
        println!("dropped: {alias} (no entry owns it)");
    }
    println!(
        "reconciled: {} tags read, {} moved",
        r.checked,
        r.moved.len()
    );
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
