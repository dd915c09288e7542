use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use kiln::api::resolve::resolve;
use kiln::api::snapshot::Store;
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// Image reference to pin, e.g. ocaml/opam:debian-13-ocaml-5.5.
    image: String,
    /// Also give this arch's own manifest digest.
    #[arg(long)]
    arch: Option<String>,
    /// Ask a running digest API (e.g. http://127.0.0.1:8080) instead of reading the lockfile.
    #[arg(long)]
    api: Option<String>,
    #[arg(long)]
    json: bool,
}

/// The snapshot store the API and the CLI share.
pub fn open_store(config: &Config) -> Result<Store> {
    open_store_at(config, config.lockfile_path())
}

/// The API's store over the lockfile at `path`.
pub fn open_store_at(config: &Config, path: std::path::PathBuf) -> Result<Store> {
    let host = config
        .registry
        .url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let loader_config = config.clone();
    Store::open(
        path,
        host,
        Arc::new(move || kiln::status::requirements(&loader_config).map_err(|e| e.to_string())),
    )
    .context("loading the published lockfile")
}

/// Exit codes: 0 pinned, 3 refused (not available), 2 unknown name or error.
pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let (status, body): (u16, serde_json::Value) = match &args.api {
        Some(url) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let mut q = vec![("image", args.image.clone())];
                if let Some(a) = &args.arch {
                    q.push(("arch", a.clone()));
                }
                let r = reqwest::Client::new()
                    .get(format!("{}/v1/resolve", url.trim_end_matches('/')))
                    .query(&q)
                    .send()
                    .await
                    .with_context(|| format!("asking {url}"))?;
                let status = r.status().as_u16();
                let body = r
                    .json()
                    .await
                    .with_context(|| format!("reading the answer of {url}"))?;
                anyhow::Ok((status, body))
            })?
        }
        None => {
            let store = open_store(&config)?;
            let snap = store.current();
            match resolve(&snap, &args.image, args.arch.as_deref()) {
                Ok(pin) => (200, serde_json::to_value(pin)?),
                Err(r) => (r.http_status().as_u16(), serde_json::to_value(r)?),
            }
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    }
    match status {
        200 => {
            if !args.json {
                println!("{}", body["reference"].as_str().unwrap_or_default());
                if let Some(d) = body["arch_digest"].as_str() {
                    println!("{} {d}", args.arch.as_deref().unwrap_or(""));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        409 => {
            if !args.json {
                print_refusal(&body);
            }
            Ok(ExitCode::from(3))
        }
        _ => {
            if !args.json {
                eprintln!(
                    "error: {}",
                    body["message"].as_str().unwrap_or("unknown image")
                );
                if let Some(s) = body["suggestions"].as_array().filter(|s| !s.is_empty()) {
                    let names: Vec<&str> = s.iter().filter_map(|x| x.as_str()).collect();
                    eprintln!("  did you mean: {}", names.join(", "));
                }
            }
            Ok(ExitCode::from(2))
        }
    }
}

fn print_refusal(body: &serde_json::Value) {
    eprintln!(
        "refused: {}",
        body["message"].as_str().unwrap_or("not available")
    );
    for m in body["missing"].as_array().into_iter().flatten() {
        eprintln!(
            "  {:<8} {}{}",
            m["arch"].as_str().unwrap_or("?"),
            m["reason"].as_str().unwrap_or("?"),
            m["detail"]
                .as_str()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
    }
}
