use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use kiln::api::{AppState, Metrics};
use kiln::config::{Config, Sources};
use kiln::publish::remote;
use kiln::registry::Registry;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (default: api.listen).
    #[arg(long)]
    addr: Option<String>,
    /// Serve the lockfile the last build pushed to the registry
    /// (`<namespace>/kiln-lockfile:latest`), following it as it moves:
    /// a replica on another host needs no local state.
    #[arg(long)]
    from_registry: bool,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let addr = args.addr.unwrap_or_else(|| config.api.listen.clone());
    let rt = tokio::runtime::Runtime::new()?;
    // The replica's copy of the registry's lockfile lives as long as it runs.
    let replica = tempfile::tempdir()?;
    let store = if args.from_registry {
        let path = replica.path().join("lockfile.json");
        let reg = Registry::new(&config.registry)?;
        let ns = config.registry.namespace.clone();
        let digest = rt.block_on(follow_once(&reg, &ns, &path, None))?;
        let Some(digest) = digest else {
            bail!(
                "no lockfile in the registry at {}:latest (a build pushes it)",
                remote::lockfile_repository(&ns)
            );
        };
        rt.spawn(follow(reg, ns, path.clone(), digest));
        super::resolve::open_store_at(&config, path)?
    } else {
        super::resolve::open_store(&config)?
    };
    let state = Arc::new(AppState {
        store,
        token: config.api.token.clone(),
        log_dir: Some(config.log_dir()),
        rebuild: None,
        queue_db: Some(config.database.path.clone()),
        metrics: Metrics::default(),
        distribution: Some(Arc::new(kiln::api::Backing::new(
            kiln::registry::Registry::new(&config.registry)?,
        ))),
        workers: Some(Arc::new(kiln::api::workers::Workers::of(
            &config,
            kiln::api::workers::MAX_AGE,
        ))),
    });
    rt.block_on(async move {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        };
        super::say(&format!("kiln: digest API on http://{addr}/"));
        kiln::api::serve(state, &addr, shutdown)
            .await
            .context("digest API")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Pull the registry's lockfile into `path` if `latest` moved from `seen`;
/// returns the digest now served.
async fn follow_once(
    reg: &Registry,
    ns: &str,
    path: &std::path::Path,
    seen: Option<&str>,
) -> Result<Option<String>> {
    let Some(digest) = remote::remote_lockfile_digest(reg, ns).await? else {
        return Ok(seen.map(str::to_string));
    };
    if seen != Some(digest.as_str()) {
        remote::pull_lockfile(reg, ns, &digest, path).await?;
        tracing::info!(%digest, "serving the registry's lockfile");
    }
    Ok(Some(digest))
}

/// Follow the registry's lockfile every few seconds; the store reloads
/// when the file changes. A failed poll is logged and the last copy served.
async fn follow(reg: Registry, ns: String, path: std::path::PathBuf, mut seen: String) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        match follow_once(&reg, &ns, &path, Some(&seen)).await {
            Ok(Some(d)) => seen = d,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "polling the registry's lockfile"),
        }
    }
}
