//! `kiln export ocaml-version --from FILE`: the change a release makes to
//! ocurrent/ocaml-version, from the catalogue, as a patch (or files).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use kiln::catalogue;
use kiln::config::{Config, Sources};
use kiln::refresh::ocaml_version::{self, Wanted};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// `ocaml_version.ml`, `.mli` and CHANGES.md as the catalogue says.
    OcamlVersion(OcamlVersionArgs),
}

#[derive(clap::Args)]
struct OcamlVersionArgs {
    /// The checkout's `ocaml_version.ml`; the `.mli` and CHANGES.md beside it
    /// are patched too when they exist.
    #[arg(long = "from", value_name = "FILE")]
    from: PathBuf,
    /// Write the patched files into DIR instead of printing a patch.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the files and the CHANGES.md entry as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let What::OcamlVersion(a) = args.what;
    let config = Config::load(sources)?;
    let cat = catalogue::load(&config.versions_dir, &config.platforms_dir)?;
    let old = ocaml_version::read(&a.from)?;
    let patched = ocaml_version::patch(&old, &Wanted::from_catalogue(&cat))?;
    if let Some(dir) = &a.out {
        ocaml_version::write(dir, &patched.files)?;
    }
    if a.json {
        let files: serde_json::Map<String, serde_json::Value> = patched
            .files
            .named()
            .into_iter()
            .map(|(n, t)| (n.to_string(), serde_json::Value::String(t.to_string())))
            .collect();
        let changed: Vec<&str> = old
            .named()
            .into_iter()
            .zip(patched.files.named())
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "changed": changed,
                "entry": patched.entry,
                "files": files,
            }))?
        );
    } else if a.out.is_none() {
        print!("{}", ocaml_version::diff(&old, &patched.files));
    }
    Ok(ExitCode::SUCCESS)
}
