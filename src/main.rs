//! The `kiln` command line. Parsing and dispatch only: every command's work
//! lives in the library, and errors become `anyhow` only here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Base-image factory for OCaml CI")]
struct Cli {
    /// Configuration file (default: $KILN_CONFIG, else ./kiln.toml, else embedded defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set registry.url=http://127.0.0.1:5000`. Repeatable.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Log format on stderr: `text`, or `json` (one object per line, with
    /// the job and target ids of the span it happened in). Also KILN_LOG_FORMAT.
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        env = "KILN_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check every component Kiln drives and say how to fix what is missing.
    Doctor(cmd::doctor::Args),
    /// Print the effective configuration.
    Config(cmd::config::Args),
    /// Validate, list or format the version catalogue.
    Catalogue(cmd::catalogue::Args),
    /// Add or update releases in the catalogue.
    Bump(cmd::bump::Args),
    /// Show the targets, tags and totals a build would cover.
    Plan(cmd::plan::Args),
    /// Build, verify and publish what the plan calls for (skipping what is unchanged).
    Build(cmd::build::Args),
    /// Push the local parent images (busybox, Debian) the demo and tests build on.
    Fixtures(cmd::fixtures::Args),
    /// Check every lockfile entry against the registry (tags, indexes, children, blobs),
    /// or with --rebuild rebuild one image and compare it with the published one.
    Verify(cmd::verify::Args),
    /// Rebuild a lost lockfile from the registry.
    Lockfile(cmd::lockfile::Args),
    /// Move a published tag back to an earlier digest from its history.
    Rollback(cmd::rollback::Args),
    /// Worker side: fetch a published ZFS base dataset, verify and install it.
    Fetch(cmd::fetch::Args),
    /// Remove old base datasets and kept QEMU disks nothing references or uses, on every host.
    Gc(cmd::gc::Args),
    /// Every host of every builder: health, capacity in use, arches, what it holds.
    Workers(cmd::workers::Args),
    /// The rebuild daemon: cron-scheduled and requested rounds plus the digest API.
    Daemon(cmd::daemon::Args),
    /// The daemon's jobs: list, cancel one (its build stopped, nothing left), retry one.
    Jobs(cmd::jobs::Args),
    /// The release cascade: bump, build, verify, open the gate, refresh CI (rerunnable).
    Release(cmd::release::Args),
    /// The change a release makes to another project's files, from the catalogue
    /// (`export ocaml-version --from ocaml_version.ml`).
    Export(cmd::export::Args),
    /// Serve the digest API and the status page.
    Serve(cmd::serve::Args),
    /// What is published, building, failed and missing, per version.
    Status(cmd::status::Args),
    /// Pin an image by digest, or say why it is refused (exit 0 / 3 / 2).
    Resolve(cmd::resolve::Args),
    /// The source mirror: fetch every pinned build input into the registry, or list it.
    Sources(cmd::sources::Args),
}

fn main() -> ExitCode {
    // SIGPIPE stays ignored (Rust's default): a registry that dies under an
    // upload, or a child whose pipe closes, is then an error Kiln reports
    // and cleans up after, not a silent exit 141. A closed stdout (`kiln
    // plan | head`) is a write error the commands' output handles quietly
    // (`cmd::write_out`).
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only for a person at a terminal; files and pipes get text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => {
            cmd::JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
            logs.json()
                .with_current_span(true)
                .with_span_list(false)
                .init()
        }
    }
    let sources = kiln::config::Sources::from_process(cli.config.clone(), cli.sets.clone());
    let result = match cli.command {
        Command::Doctor(a) => cmd::doctor::run(&sources, a),
        Command::Config(a) => cmd::config::run(&sources, a),
        Command::Catalogue(a) => cmd::catalogue::run(&sources, a),
        Command::Bump(a) => cmd::bump::run(&sources, a),
        Command::Plan(a) => cmd::plan::run(&sources, a),
        Command::Build(a) => cmd::build::run(&sources, a),
        Command::Fixtures(a) => cmd::fixtures::run(&sources, a),
        Command::Verify(a) => cmd::verify::run(&sources, a),
        Command::Lockfile(a) => cmd::lockfile::run(&sources, a),
        Command::Sources(a) => cmd::sources::run(&sources, a),
        Command::Rollback(a) => cmd::rollback::run(&sources, a),
        Command::Fetch(a) => cmd::fetch::run(&sources, a),
        Command::Gc(a) => cmd::gc::run(&sources, a),
        Command::Workers(a) => cmd::workers::run(&sources, a),
        Command::Daemon(a) => cmd::daemon::run(&sources, a),
        Command::Jobs(a) => cmd::jobs::run(&sources, a),
        Command::Release(a) => cmd::release::run(&sources, a),
        Command::Export(a) => cmd::export::run(&sources, a),
        Command::Serve(a) => cmd::serve::run(&sources, a),
        Command::Resolve(a) => cmd::resolve::run(&sources, a),
        Command::Status(a) => cmd::status::run(&sources, a),
    };
    match (result, cmd::output_error()) {
        (Ok(code), None) => code,
        (Ok(_), Some(e)) => {
            cmd::write_err(format_args!("error: writing the output: {e}"), true);
            ExitCode::from(2)
        }
        (Err(e), _) => {
            cmd::write_err(format_args!("error: {e:#}"), true);
            ExitCode::from(2)
        }
    }
}
