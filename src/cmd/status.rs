use kiln::api::gate::MissingReason;
use kiln::catalogue::OcamlVersion;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use kiln::api::version_view;
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// Only this compiler version (full, e.g. 5.5.0).
    version: Option<String>,
    #[arg(long)]
    json: bool,
    /// Keep watching: redraw progress every second until every shown version is available.
    #[arg(long)]
    watch: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let store = super::resolve::open_store(&config)?;
    if args.watch {
        return watch(&store, args.version.as_deref());
    }
    let snap = store.current();
    let versions: Vec<OcamlVersion> = match &args.version {
        Some(v) => v.parse().ok().into_iter().collect(),
        None => snap.versions(),
    };
    let views: Vec<_> = versions
        .iter()
        .filter_map(|v| version_view(&snap, v))
        .collect();
    if let Some(v) = &args.version
        && views.is_empty()
    {
        anyhow::bail!("no catalogue version {v:?}; `kiln catalogue list` shows the known ones");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} published tags, {} required",
        snap.lockfile.entries.len(),
        snap.requirements.len()
    );
    for view in &views {
        let ok = view.cells.iter().filter(|c| c.available).count();
        println!(
            "\nOCaml {}: {} ({ok}/{} tags available)",
            view.version,
            if view.available {
                "AVAILABLE"
            } else {
                "not available"
            },
            view.cells.len()
        );
        for c in &view.cells {
            if c.available {
                println!(
                    "  ok       {:<10} {:<28} {}",
                    c.platform,
                    c.tag,
                    c.arches
                        .keys()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
            } else {
                let why: Vec<String> = c
                    .missing
                    .iter()
                    .map(|m| match m.kind {
                        Some(k) if m.reason == MissingReason::Failed => {
                            format!("{}:{}({k})", m.arch, m.reason.as_str())
                        }
                        _ => format!("{}:{}", m.arch, m.reason.as_str()),
                    })
                    .collect();
                println!(
                    "  missing  {:<10} {:<28} {}",
                    c.platform,
                    c.tag,
                    why.join(" ")
                );
            }
        }
    }
    // Hosts routing skips: builds waiting on them go elsewhere or wait
    // (`kiln workers` and `kiln doctor` say more).
    let down = kiln::state::hosts::HostHealth::open(&config.database.path)
        .and_then(|h| h.all())
        .unwrap_or_default();
    if !down.is_empty() {
        println!(
            "
hosts marked down (skipped by routing until they answer):"
        );
        for d in down {
            println!("  {:<24} since {}: {}", d.host, d.since, d.error);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn watch(store: &kiln::api::snapshot::Store, version: Option<&str>) -> Result<ExitCode> {
    let bars = indicatif::MultiProgress::new();
    let style =
        indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} tags {msg}")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .progress_chars("=> ");
    let mut shown: Vec<(OcamlVersion, indicatif::ProgressBar)> = Vec::new();
    loop {
        store.reload_if_changed()?;
        let snap = store.current();
        let versions: Vec<OcamlVersion> = match version {
            Some(v) => v.parse().ok().into_iter().collect(),
            None => snap.versions(),
        };
        let mut all = true;
        for v in &versions {
            let Some(view) = version_view(&snap, v) else {
                continue;
            };
            let bar = match shown.iter().find(|(n, _)| n == v) {
                Some((_, b)) => b.clone(),
                None => {
                    let b = bars.add(indicatif::ProgressBar::new(0));
                    b.set_style(style.clone());
                    b.set_prefix(v.to_string());
                    shown.push((v.clone(), b.clone()));
                    b
                }
            };
            let ok = view.cells.iter().filter(|c| c.available).count() as u64;
            bar.set_length(view.cells.len() as u64);
            bar.set_position(ok);
            let building = view
                .cells
                .iter()
                .flat_map(|c| &c.missing)
                .filter(|m| m.reason == MissingReason::Building)
                .count();
            let failed = view
                .cells
                .iter()
                .flat_map(|c| &c.missing)
                .filter(|m| m.reason == MissingReason::Failed)
                .count();
            bar.set_message(format!("{building} building, {failed} failed"));
            all &= view.available;
        }
        if all {
            for (_, b) in &shown {
                b.finish();
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
