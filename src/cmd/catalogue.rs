//! `kiln catalogue`: validate, list, show and format the catalogue.

use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln::catalogue::{self, Arch, Catalogue};
use kiln::config::{Config, Sources};
use kiln::plan::{self, ValidateError};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Validate versions/ and platforms/, and render every recipe for every target.
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
    /// One release: status, date, arches, variants, opam packages, where it builds.
    Show {
        version: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let loaded = catalogue::load(&config.versions_dir, &config.platforms_dir)
        .and_then(|c| catalogue::validate_recipes(&c).map(|_| c));
    match args.command {
        Sub::Validate { json } => Ok(validate(&loaded, json)),
        Sub::List { json } => list(&loaded?, json),
        Sub::Show { version, json } => show(&loaded?, &version, json),
        Sub::Fmt => fmt(&config),
    }
}

/// `kiln catalogue validate`: whether the catalogue loads and every recipe
/// renders for every target, with its counts, or every problem (one line
/// each, or a JSON object listing them).
fn validate(loaded: &Result<Catalogue, catalogue::CatalogueError>, json: bool) -> ExitCode {
    let checked = match loaded {
        Ok(c) => match plan::validate(c) {
            Ok(v) => Ok(format!(
                "catalogue ok: {} series, {} releases, {} platforms, {} OS releases; \
                 every recipe renders for all {} targets ({} renderings)",
                c.series.len(),
                c.series.iter().map(|s| s.releases.len()).sum::<usize>(),
                c.platforms.len(),
                c.platforms.iter().map(|p| p.releases.len()).sum::<usize>(),
                v.targets,
                v.renderings,
            )),
            Err(ValidateError::Recipes(problems)) => {
                Err(problems.iter().map(|p| p.to_string()).collect())
            }
            Err(e) => Err(vec![e.to_string()]),
        },
        Err(e) => Err(vec![e.to_string()]),
    };
    match (&checked, json) {
        (Ok(msg), false) => println!("{msg}"),
        (Err(problems), false) => {
            for p in problems {
                eprintln!("error: {p}");
            }
        }
        (Ok(msg), true) => println!(
            "{}",
            serde_json::json!({"valid": true, "message": msg, "problems": []})
        ),
        (Err(problems), true) => println!(
            "{}",
            serde_json::json!({
                "valid": false,
                "message": problems.join("\n"),
                "problems": problems,
            })
        ),
    }
    if checked.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `kiln catalogue list`: every release with status and date, then the sets.
fn list(cat: &Catalogue, json: bool) -> Result<ExitCode> {
    if json {
        let series: Vec<_> = cat
            .series
            .iter()
            .map(|s| {
                serde_json::json!({
                    "series": s.series, "native": s.native, "bytecode_only": s.bytecode_only,
                    "releases": s.releases,
                })
            })
            .collect();
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

/// `kiln catalogue show`: one release, its series' arches and variants, its
/// opam packages and the OS releases that build it.
fn show(cat: &Catalogue, version: &str, json: bool) -> Result<ExitCode> {
    let v: catalogue::OcamlVersion = version.parse()?;
    let series = cat
        .series_of(&v)
        .with_context(|| format!("no series {} in the catalogue", v.series()))?;
    let release = cat.release(&v).with_context(|| {
        format!("no release {v} in the catalogue; `kiln catalogue list` shows them")
    })?;
    let variants = variant_arches(cat, &v);
    let mut packages = serde_json::Map::new();
    packages.insert(
        "default".into(),
        serde_json::json!(catalogue::opam::packages(&v, release.status, None)),
    );
    for (var, _) in &variants {
        packages.insert(
            var.clone(),
            serde_json::json!(catalogue::opam::packages(&v, release.status, Some(var))),
        );
    }
    let supported: Vec<Arch> = Arch::ALL
        .into_iter()
        .filter(|a| cat.supports(&v, *a))
        .collect();
    let builds = os_releases(cat, &v);
    let out = serde_json::json!({
        "version": v, "series": v.series(), "status": release.status, "date": release.date,
        "source": release.source,
        "native": series.native, "bytecode_only": series.bytecode_only, "supported": supported,
        "variants": variants.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "opam_packages": packages, "latest": cat.latest() == Some(&v), "os_releases": builds,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_release(&v, series, release, &variants, &builds);
    }
    Ok(ExitCode::SUCCESS)
}

/// The variants of release `v` (rules.yaml), each with the arches it
/// exists on, in rule order.
fn variant_arches(cat: &Catalogue, v: &catalogue::OcamlVersion) -> Vec<(String, Vec<Arch>)> {
    let mut out: Vec<(String, Vec<Arch>)> = Vec::new();
    for arch in Arch::ALL {
        for var in cat.variants(v, arch) {
            match out.iter_mut().find(|(n, _)| n == var) {
                Some((_, arches)) => arches.push(arch),
                None => out.push((var.to_string(), vec![arch])),
            }
        }
    }
    out
}

/// Every OS release of every platform: whether it builds `v`, why not, and
/// the tag it would carry.
fn os_releases(cat: &Catalogue, v: &catalogue::OcamlVersion) -> Vec<serde_json::Value> {
    let mut builds = Vec::new();
    for p in &cat.platforms {
        for os in &p.releases {
            builds.push(serde_json::json!({
                "platform": p.platform, "os": os.id, "tier": os.tier,
                "builds": os.refuses(v).is_none(),
                "why_not": os.refuses(v),
                "tag": kiln::plan::moving_tag(&os.id, v, None),
            }));
        }
    }
    builds
}

/// The text form of `kiln catalogue show`.
fn print_release(
    v: &catalogue::OcamlVersion,
    series: &catalogue::Series,
    release: &catalogue::Release,
    variants: &[(String, Vec<Arch>)],
    builds: &[serde_json::Value],
) {
    println!(
        "OCaml {v} ({:?}{})",
        release.status,
        release.date.map(|d| format!(", {d}")).unwrap_or_default()
    );
    if let Some(source) = &release.source {
        println!("  source:        {source}");
    }
    println!("  native:        {}", series.native.join(", "));
    println!("  bytecode only: {}", series.bytecode_only.join(", "));
    for (var, arches) in variants {
        let arches: Vec<&str> = arches.iter().map(|a| a.as_str()).collect();
        println!("  variant {var:<20} {}", arches.join(", "));
    }
    println!(
        "  opam:          {}",
        catalogue::opam::packages(v, release.status, None).join(" ")
    );
    for b in builds {
        if b["builds"] == true {
            println!(
                "  builds on {}/{} (tier {}) as {}",
                b["platform"].as_str().unwrap_or(""),
                b["os"].as_str().unwrap_or(""),
                b["tier"],
                b["tag"].as_str().unwrap_or("")
            );
        }
    }
}

/// `kiln catalogue fmt`: rewrite the series files not in canonical form,
/// only for a catalogue that validates (recipes included).
fn fmt(config: &Config) -> Result<ExitCode> {
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    plan::validate(&cat)?;
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
