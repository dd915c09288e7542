//! `kiln plan`: the cascade as text (per-arch builds, every tag with its
//! arches and aliases, the gate, totals) or as JSON with the same tags.

use std::process::ExitCode;

use anyhow::Result;
use kiln::catalogue;
use kiln::config::{Config, Sources};
use kiln::model::Requirement;
use kiln::pipeline::PlanKeys;
use kiln::plan::{self, PlannedTag, Target, Totals};

#[derive(clap::Args)]
// `kiln plan` says more about the two flags than the others do.
#[command(
    mut_arg("version", |a| a.help("A version (5.5.0), series (5.5) or set (recent, significant, latest, all)")),
    mut_arg("os", |a| a.help("OS release id or alias (debian-13, ubuntu-lts)"))
)]
pub struct Args {
    #[command(flatten)]
    select: super::filter::PlanFilter,
    /// Print every target, not just the tags and totals.
    #[arg(long)]
    targets: bool,
    /// With --targets: also compute each target's build key (resolves parents).
    #[arg(long)]
    keys: bool,
    /// Print each selected target's recipes as its build renders them,
    /// with the values only a build knows (the source server's URL, the
    /// parent's digest, the opam-repository commit) as `{{placeholders}}`:
    /// nothing is resolved, no network is used.
    #[arg(long, conflicts_with = "keys")]
    render: bool,
    /// Simulate one full round of the selected targets on the configured
    /// fleet (critical path first, the opam stage cached per host): the
    /// makespan, the bottleneck host kind, each host's load and the bytes
    /// that cross this machine.
    #[arg(long, conflicts_with_all = ["keys", "render"])]
    estimate: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let filter = args.select.filter();
    let targets = plan::expand(&cat, &filter)?;
    if args.render {
        return render(&targets, args.json);
    }
    if args.estimate {
        return estimate(&config, &targets, args.json);
    }
    let totals = plan::totals(&targets);
    let tags = plan::tags(&targets, &config.registry.namespace);
    let traffic = plan::traffic::traffic(&targets, &tags, &config.registry);
    let pending = plan::pending::pending(&cat, &targets);
    let builders = kiln::builders::Builders::new(&config);
    let reqs = plan::requirements(&targets, &config.registry.namespace, |t| {
        builders.can_build(t)
    });
    // With --keys: each target's build key, immutable tag, and standing
    // against the published lockfile.
    let keys = if args.keys {
        let lock = kiln::publish::lockfile::Lockfile::load(&config.lockfile_path())?;
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(kiln::pipeline::plan_keys(&config, &targets, &lock))
    } else {
        PlanKeys::default()
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "totals": totals,
                "traffic": traffic,
                "tags": tags,
                "requirements": reqs,
                "pending": pending,
                "targets": if args.targets { serde_json::to_value(&targets)? } else { serde_json::Value::Null },
                "build_keys": keys.build_keys,
                "immutable_tags": keys.immutable_tags,
                "states": keys.states,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Cascade order: per-arch builds, then multi-arch indexes, then the gate.
    if args.targets {
        print_targets(&targets, &keys);
    }
    print_tags(&tags);
    print_pending(&pending);
    print_gate(&reqs);
    print_totals(&totals, &reqs);
    print_traffic(&traffic, &config.registry.url);
    Ok(ExitCode::SUCCESS)
}

/// `kiln plan --estimate`.
fn estimate(config: &Config, targets: &[Target], json: bool) -> Result<ExitCode> {
    let costs = kiln::pipeline::simulate::Costs::default();
    let e = kiln::pipeline::simulate::simulate(config, targets, &costs, true);
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(ExitCode::SUCCESS);
    }
    let hours = |s: f64| s / 3600.0;
    let last = e
        .hosts
        .iter()
        .max_by(|a, b| a.1.last_end_secs.total_cmp(&b.1.last_end_secs))
        .map(|(n, _)| n.as_str())
        .unwrap_or("none");
    println!(
        "one round of {} builds on {} hosts: {:.1} h (bottleneck: {} host {last}); {:.1} GiB cross this machine",
        e.builds,
        e.hosts.len(),
        hours(e.makespan_secs),
        e.bottleneck,
        e.bytes as f64 / f64::from(1u32 << 30)
    );
    if e.unroutable > 0 {
        println!(
            "  {} targets no configured host builds (left out)",
            e.unroutable
        );
    }
    for (name, h) in &e.hosts {
        let used = if e.makespan_secs > 0.0 {
            100.0 * h.busy_secs / (h.slots as f64 * e.makespan_secs)
        } else {
            0.0
        };
        println!(
            "  {name} ({}, {} slots): busy {:.1} h, {used:.0}% of the round, done at {:.1} h",
            h.kind,
            h.slots,
            hours(h.busy_secs),
            hours(h.last_end_secs)
        );
    }
    println!("costs: {}", e.costs.source);
    Ok(ExitCode::SUCCESS)
}

fn print_traffic(t: &plan::traffic::Traffic, registry: &str) {
    let per: Vec<String> = t.pulls.iter().map(|(h, n)| format!("{h} {n}")).collect();
    let limit = |n: u64| {
        if n == 0 {
            "no limit set".to_string()
        } else {
            format!("limit {n} per {}h", t.window_hours)
        }
    };
    println!(
        "registry traffic of a full round: {} manifest pulls ({}; {}), {} manifest pushes to {registry} ({})",
        t.pulls_total,
        if per.is_empty() {
            "no parents".to_string()
        } else {
            per.join(", ")
        },
        limit(t.pull_limit),
        t.pushes,
        limit(t.push_limit)
    );
    for o in &t.over {
        println!("  OVER: {o}");
    }
}

/// `kiln plan --render`: every recipe of every target, one after the
/// other under a header naming the target, its tag and the file; with
/// `--json`, a list of `{target, tag, recipes: [{file, text}]}`.
fn render(targets: &[Target], json: bool) -> Result<ExitCode> {
    let mut out = Vec::new();
    for t in targets {
        let files = plan::render::render(t)?;
        out.push((t, files));
    }
    if json {
        let doc: Vec<serde_json::Value> = out
            .iter()
            .map(|(t, files)| {
                serde_json::json!({
                    "target": t.id(),
                    "tag": t.tag,
                    "recipes": files.iter().map(|(f, text)| serde_json::json!({"file": f, "text": text})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (t, files) in &out {
        for (file, text) in files {
            println!("==> {} ({}): {file} <==", t.id(), t.tag);
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_targets(targets: &[Target], keys: &PlanKeys) {
    println!("== per-arch builds ({})", targets.len());
    for t in targets {
        let id = t.id();
        let key = keys
            .build_keys
            .get(&id)
            .map(|k| {
                format!(
                    "  {k}  {}  [{}]",
                    keys.immutable_tags
                        .get(&id)
                        .map(String::as_str)
                        .unwrap_or(""),
                    keys.states.get(&id).map(String::as_str).unwrap_or("")
                )
            })
            .unwrap_or_default();
        println!(
            "{:<48} {:<10} {}{}{}{key}",
            id,
            t.builder.as_str(),
            t.tag,
            if t.required { "" } else { "  (optional)" },
            if t.reproducible {
                "  (reproducible)"
            } else {
                ""
            }
        );
    }
    println!();
}

/// One line per tag: `repository:tag  [arches]`, then for an alias
/// `= <tag it names>`, for a multi-OS index `{os os.version, …}`,
/// `(optional)` when the gate does not require it and `(reproducible)`
/// when its recipe is declared so; then how many images are reproducible.
fn print_tags(tags: &[PlannedTag]) {
    let count = |k: plan::TagKind| tags.iter().filter(|t| t.kind == k).count();
    println!(
        "== tags ({}: {} images, {} aliases, {} multi-OS indexes)",
        tags.len(),
        count(plan::TagKind::Image),
        count(plan::TagKind::Alias),
        count(plan::TagKind::MultiOs),
    );
    for t in tags {
        let arches: Vec<&str> = t.arches.iter().map(|a| a.as_str()).collect();
        let mut line = format!("{}  [{}]", t.name(), arches.join(", "));
        if let Some(of) = &t.alias_of {
            line.push_str(&format!("  = {of}"));
        }
        if t.kind == plan::TagKind::MultiOs {
            let entries: Vec<String> = t
                .entries
                .iter()
                .map(|e| format!("{} {}", e.os, e.os_version.as_deref().unwrap_or("-")))
                .collect();
            line.push_str(&format!("  {{{}}}", entries.join(", ")));
        }
        if !t.required {
            line.push_str("  (optional)");
        }
        if t.reproducible {
            line.push_str("  (reproducible)");
        }
        println!("{line}");
    }
    println!();
    let images = || tags.iter().filter(|t| t.kind == plan::TagKind::Image);
    let reproducible = images().filter(|t| t.reproducible).count();
    if reproducible < images().count() {
        println!(
            "{reproducible} of {} images reproducible (the same key built anywhere gives the same digest); the others (recipes reading a live mirror) keep their published digests by adoption of their build key",
            images().count()
        );
        println!();
    }
}

/// Sources targets take that only a machine reaching their origin can
/// declare, each with its command (such targets are refused until then).
fn print_pending(pending: &[plan::pending::Pending]) {
    if pending.is_empty() {
        return;
    }
    println!(
        "== pending sources ({}: refused until declared)",
        pending.len()
    );
    for p in pending {
        println!(
            "{}  ({} targets)  {}",
            p.source,
            p.targets,
            p.command
                .as_deref()
                .unwrap_or("NO COMMAND: declare it in versions/sources.yaml")
        );
    }
    println!();
}

fn print_gate(reqs: &[Requirement]) {
    println!("== availability gate");
    let versions: std::collections::BTreeSet<&catalogue::OcamlVersion> =
        reqs.iter().map(|r| &r.ocaml).collect();
    for v in versions.into_iter().rev() {
        let rs: Vec<_> = reqs.iter().filter(|r| r.ocaml == *v).collect();
        let nb: usize = rs.iter().map(|r| r.no_builder.len()).sum();
        println!(
            "OCaml {v}: available once {} required tags are published{}",
            rs.len(),
            if nb > 0 {
                format!(" ({nb} required arch builds have no configured builder)")
            } else {
                String::new()
            }
        );
    }
    println!();
}

fn print_totals(totals: &Totals, reqs: &[Requirement]) {
    let no_builder: usize = reqs.iter().map(|r| r.no_builder.len()).sum();
    println!(
        "{} targets into {} tags ({} required targets); {} required arch builds have no configured builder",
        totals.targets, totals.tags, totals.required, no_builder
    );
    let fmt = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("by platform: {}", fmt(&totals.by_platform));
    println!("by arch:     {}", fmt(&totals.by_arch));
}
