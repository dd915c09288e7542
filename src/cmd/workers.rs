//! `kiln workers`: every host of every builder and what it holds.

use std::process::ExitCode;

use anyhow::Result;
use kiln::builders::Builders;
use kiln::builders::inventory::{HostReport, Inventory};
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

/// List the hosts: a host that cannot be reached is a row saying so, and
/// the exit stays 0 (the listing itself worked).
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let lock = kiln::publish::lockfile::Lockfile::load(&config.lockfile_path())?;
    let builders = Builders::new(&config);
    let rt = tokio::runtime::Runtime::new()?;
    let inventory = rt.block_on(builders.inventory(&lock));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inventory)?);
    } else {
        print_text(&inventory);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(inv: &Inventory) {
    if inv.hosts.is_empty() {
        println!("no builder hosts configured");
    }
    for h in &inv.hosts {
        println!("{}", host_line(h));
        for item in &h.holds {
            let size = item
                .bytes
                .map(kiln::builders::inventory::human)
                .unwrap_or_else(|| "?".into());
            let digest = item.digest.as_deref().unwrap_or("");
            println!(
                "    {:<14} {}  {size}  {}  {}{}",
                item.kind.as_str(),
                item.name,
                if item.referenced {
                    "referenced"
                } else {
                    "unreferenced"
                },
                item.why,
                if digest.is_empty() {
                    String::new()
                } else {
                    format!("  {digest}")
                }
            );
        }
    }
    let bad = inv.unhealthy().count();
    if bad > 0 {
        println!("{bad} host(s) not ok");
    }
}

fn host_line(h: &HostReport) -> String {
    let busy = h
        .busy
        .map(|b| format!("{b}/{} busy", h.slots))
        .unwrap_or_else(|| format!("?/{} busy", h.slots));
    let mut line = format!(
        "{} {} ({}): {}; {busy}; arches {}",
        h.builder,
        h.host,
        h.address,
        h.health,
        h.arches.join(" ")
    );
    if let Some(p) = &h.pool {
        line.push_str(&format!("; pool {} {} ({} free)", p.name, p.size, p.free));
    }
    if let Some(b) = h.engine_cache_bytes {
        line.push_str(&format!(
            "; engine cache {}",
            kiln::builders::inventory::human(b)
        ));
    }
    line
}
