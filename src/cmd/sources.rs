//! `kiln sources`: the source mirror (every external input of a build,
//! pinned by checksum, fetched once into the registry).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use kiln::catalogue::{self, Arch};
use kiln::config::{Config, Sources};
use kiln::plan;
use kiln::registry::Registry;
use kiln::sources::declare::{self, Outcome};
use kiln::sources::{Mirror, SyncOutcome};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Args)]
struct Select {
    #[command(flatten)]
    plan: super::filter::PlanFilter,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Fetch every source the plan's buildable targets use into the
    /// registry's source mirror, checking each checksum; present ones are
    /// not fetched again.
    Sync(Select),
    /// Which sources the plan uses and whether the mirror has each.
    List(Select),
    /// Declare an OpenBSD release's install sets (its `vars.sets`) in
    /// versions/sources.yaml from the release's SHA256.sig, once its
    /// signify signature verifies with the release's public key.
    DeclareOpenbsd(DeclareOpenbsd),
    /// Declare a git source (versions/sources.yaml `git:`) at the commit
    /// branch REF of URL names now; run where the network reaches URL.
    /// `kiln sources sync` then mirrors a bundle of that commit.
    DeclareGit(DeclareGit),
}

#[derive(clap::Args)]
struct DeclareGit {
    /// The source's name: served to builds as {{sources_url}}/<NAME>.bundle.
    name: String,
    /// The remote (https://…, file:///…, or file:<path relative to versions/>).
    url: String,
    /// The branch whose commit is declared.
    #[arg(value_name = "REF")]
    git_ref: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DeclareOpenbsd {
    /// The OpenBSD release (7.9): OS release openbsd-<release>.
    #[arg(long)]
    release: String,
    /// The release's arch (amd64): the sets named openbsd-<release>-<arch>-<file>.
    #[arg(long)]
    arch: Arch,
    /// The release's SHA256.sig, as downloaded from a mirror.
    #[arg(long)]
    sha256_sig: PathBuf,
    /// The release's signify public key: /etc/signify/openbsd-<NN>-base.pub
    /// of an OpenBSD system of this release or the one before (each
    /// release ships the next one's), not from the download it checks.
    #[arg(long)]
    pubkey: PathBuf,
    /// Where the sets are fetched from: <mirror>/<release>/<arch>/<file>.
    #[arg(long, default_value = declare::DEFAULT_MIRROR)]
    mirror: String,
    /// Print the report (each set: name, url, sha256, declared or
    /// unchanged) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let (sel, sync) = match args.command {
        Sub::Sync(s) => (s, true),
        Sub::List(s) => (s, false),
        Sub::DeclareOpenbsd(d) => return declare_openbsd(&config, d),
        Sub::DeclareGit(d) => return declare_git(&config, d),
    };
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let targets = plan::expand(&cat, &sel.plan.filter())?;
    let reg = Registry::new(&config.registry)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let commit = plan::prepare::opam_repository_commit(&config).await?;
        if sync {
            let bar = spinner(sel.json, "syncing the source mirror");
            let r = kiln::pipeline::sources::sync(&config, &reg, &targets, &commit).await;
            bar.finish_and_clear();
            let r = r?;
            if sel.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for (p, how) in &r.sources {
                    let how = match how {
                        SyncOutcome::Present => "present",
                        SyncOutcome::Fetched => "fetched",
                    };
                    println!("{how:8} {:60} {} ({} bytes)", p.name, p.blob, p.size);
                }
                println!("{} sources in {}", r.sources.len(), r.repository);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let builders = kiln::builders::Builders::new(&config);
        let (wanted, bundle, git) =
            kiln::pipeline::sources::wanted(&config, &builders, &targets, &commit).await?;
        let mirror = Mirror::new(&reg, &config.registry.namespace, &config.state_dir);
        let mut rows = Vec::new();
        for w in &wanted {
            let p = mirror.present(w).await?;
            rows.push(serde_json::json!({
                "name": w.name, "url": w.url, "checksum": w.checksum.opam(),
                "declared_in": w.declared_in, "present": p.is_some(),
                "blob": p.as_ref().map(|p| p.blob.clone()),
            }));
        }
        if bundle {
            let p = mirror.bundle_present(&commit).await?;
            rows.push(serde_json::json!({
                "name": kiln::sources::BUNDLE_NAME, "url": config.plan.opam_repository,
                "checksum": format!("git={commit}"), "declared_in": "plan.opam_repository",
                "present": p.is_some(), "blob": p.as_ref().map(|p| p.blob.clone()),
            }));
        }
        for g in &git {
            let p = mirror.git_present(g).await?;
            rows.push(serde_json::json!({
                "name": g.served(), "url": g.url,
                "checksum": match &g.commit { Some(c) => format!("git={c}"), None => format!("undeclared: {}", g.declare_command()) },
                "declared_in": config.versions_dir.join("sources.yaml"),
                "present": p.is_some(), "blob": p.as_ref().map(|p| p.blob.clone()),
            }));
        }
        let missing = rows.iter().filter(|r| r["present"] == false).count();
        if sel.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            for r in &rows {
                let state = if r["present"] == true {
                    "present"
                } else {
                    "MISSING"
                };
                println!(
                    "{state:8} {:60} {}",
                    r["name"].as_str().unwrap_or(""),
                    r["checksum"].as_str().unwrap_or("")
                );
            }
            println!(
                "{} sources, {missing} missing from {}",
                rows.len(),
                mirror.repository()
            );
        }
        Ok(if missing > 0 {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}

fn declare_openbsd(config: &Config, args: DeclareOpenbsd) -> Result<ExitCode> {
    let req = declare::Request {
        release: args.release,
        arch: args.arch,
        sha256_sig: args.sha256_sig,
        pubkey: args.pubkey,
        mirror: args.mirror,
    };
    let report = declare::declare(&config.versions_dir, &config.platforms_dir, &req)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for d in &report.declarations {
        let how = match d.outcome {
            Outcome::Declared => "declared",
            Outcome::Unchanged => "unchanged",
        };
        println!("{how:9} {:40} {} {}", d.name, d.sha256, d.url);
    }
    let new = report
        .declarations
        .iter()
        .filter(|d| d.outcome == Outcome::Declared)
        .count();
    println!(
        "{} {}: {} sets verified with signify key {}, {new} declared in {}",
        report.release,
        report.arch,
        report.declarations.len(),
        report.keynum,
        report.sources_yaml.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn declare_git(config: &Config, args: DeclareGit) -> Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt.block_on(kiln::sources::declare_git::declare(
        &config.versions_dir,
        &args.name,
        &args.url,
        &args.git_ref,
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let how = match r.outcome {
        kiln::sources::declare_git::Outcome::Added => "added",
        kiln::sources::declare_git::Outcome::Declared => "declared",
        kiln::sources::declare_git::Outcome::Unchanged => "unchanged",
    };
    println!(
        "{how:9} {} {} {} at {}{} in {}",
        r.name,
        r.url,
        r.git_ref,
        r.commit,
        r.previous
            .as_deref()
            .filter(|p| *p != r.commit)
            .map(|p| format!(" (was {p})"))
            .unwrap_or_default(),
        r.sources_yaml.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn spinner(hidden: bool, msg: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if hidden {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else {
        bar.set_message(msg);
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
    }
    bar
}
