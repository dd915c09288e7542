use std::process::ExitCode;

use anyhow::Result;
use kiln::catalogue;
use kiln::config::{Config, Sources};
use kiln::plan::{self, Filter};

#[derive(clap::Args)]
pub struct Args {
    /// A version (5.5.0), series (5.5) or set (recent, significant, latest, all).
    #[arg(long)]
    version: Option<String>,
    #[arg(long)]
    platform: Option<String>,
    /// OS release id or alias (debian-13, ubuntu-lts).
    #[arg(long)]
    os: Option<String>,
    #[arg(long)]
    arch: Option<String>,
    /// Print every target, not just the tags and totals.
    #[arg(long)]
    targets: bool,
    /// With --targets: also compute each target's build key (resolves parents).
    #[arg(long)]
    keys: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let filter = Filter {
        version: args.version,
        platform: args.platform,
        os: args.os,
        arch: args.arch,
        tag: None,
    };
    let targets = plan::expand(&cat, &filter)?;
    let totals = plan::totals(&targets);
    let reqs = plan::requirements(&targets, &config.registry.namespace, |t| {
        kiln::status::can_build(&config, t)
    });
    // With --keys: each target's build key, immutable tag, and state
    // against the published lockfile.
    let mut keys: std::collections::BTreeMap<String, String> = Default::default();
    let mut states: std::collections::BTreeMap<String, String> = Default::default();
    let mut immutable: std::collections::BTreeMap<String, String> = Default::default();
    if args.keys {
        let rt = tokio::runtime::Runtime::new()?;
        let computed = rt.block_on(kiln::builders::run::target_keys(&config, &targets));
        let lock = kiln::publish::lockfile::Lockfile::load(&config.lockfile_path())?;
        let mut groups: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, String>,
        > = Default::default();
        for (t, (id, k)) in targets.iter().zip(computed) {
            match k {
                Ok((key, inputs)) => {
                    let repo = format!("{}/{}", config.registry.namespace, t.repository);
                    let state = match lock.entries.get(&format!("{repo}:{}", t.tag)) {
                        None => "missing".to_string(),
                        Some(e) if e.ocaml != t.version.to_string() => {
                            format!("stale: the tag holds OCaml {}", e.ocaml)
                        }
                        Some(e) => match e.arches.get(&t.arch) {
                            None => "missing".to_string(),
                            Some(a) if a.build_key == key => "published, current".to_string(),
                            Some(_) => {
                                let prefix = format!("{}.", t.arch);
                                let old: kiln::plan::key::Inputs = e
                                    .inputs
                                    .iter()
                                    .filter_map(|(k, v)| {
                                        k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone()))
                                    })
                                    .collect();
                                format!(
                                    "stale: {} changed",
                                    kiln::plan::key::changed(&old, &inputs).join(", ")
                                )
                            }
                        },
                    };
                    states.insert(id.clone(), state);
                    groups
                        .entry(format!("{repo}:{}", t.tag))
                        .or_default()
                        .insert(t.arch.clone(), key.clone());
                    keys.insert(id, key);
                }
                Err(e) => {
                    keys.insert(id, format!("(no key: {e})"));
                }
            }
        }
        for t in &targets {
            let g = format!("{}/{}:{}", config.registry.namespace, t.repository, t.tag);
            if let Some(arch_keys) = groups.get(&g) {
                immutable.insert(
                    t.id(),
                    t.immutable_tag(&kiln::plan::key::group_key(arch_keys)),
                );
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "totals": totals,
                "tags": reqs,
                "targets": if args.targets { serde_json::to_value(&targets)? } else { serde_json::Value::Null },
                "build_keys": keys,
                "immutable_tags": immutable,
                "states": states,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Cascade order: per-arch builds, then multi-arch indexes, then the gate.
    if args.targets {
        println!("== per-arch builds ({})", targets.len());
        for t in &targets {
            let key = keys
                .get(&t.id())
                .map(|k| {
                    format!(
                        "  {k}  {}  [{}]",
                        immutable.get(&t.id()).map(String::as_str).unwrap_or(""),
                        states.get(&t.id()).map(String::as_str).unwrap_or("")
                    )
                })
                .unwrap_or_default();
            println!(
                "{:<48} {:<10} {}{}{key}",
                t.id(),
                t.builder.as_str(),
                t.tag,
                if t.required { "" } else { "  (optional)" }
            );
        }
        println!();
    }
    let mut tags: Vec<(String, String, Vec<String>, bool)> = Vec::new();
    for t in &targets {
        match tags
            .iter_mut()
            .find(|x| x.0 == t.repository && x.1 == t.tag)
        {
            Some(x) => x.2.push(t.arch.clone()),
            None => tags.push((
                t.repository.clone(),
                t.tag.clone(),
                vec![t.arch.clone()],
                t.required,
            )),
        }
    }
    println!("== multi-arch indexes ({})", tags.len());
    for (repo, tag, arches, req) in &tags {
        println!(
            "{}/{repo}:{tag}  [{}]{}",
            config.registry.namespace,
            arches.join(", "),
            if *req { "" } else { "  (optional)" }
        );
    }
    println!();
    println!("== availability gate");
    let mut versions: Vec<&str> = reqs.iter().map(|r| r.ocaml.as_str()).collect();
    versions.dedup();
    versions.sort_by(|a, b| kiln::api::snapshot::version_cmp(b, a));
    versions.dedup();
    for v in versions {
        let rs: Vec<_> = reqs.iter().filter(|r| r.ocaml == v).collect();
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
    Ok(ExitCode::SUCCESS)
}
