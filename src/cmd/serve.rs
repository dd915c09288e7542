use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use kiln::api::{AppState, Metrics};
use kiln::config::{Config, Sources};

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (default: api.listen).
    #[arg(long)]
    addr: Option<String>,
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let addr = args.addr.unwrap_or_else(|| config.api.listen.clone());
    let store = super::resolve::open_store(&config)?;
    let state = Arc::new(AppState {
        store,
        token: config.api.token.clone(),
        log_dir: Some(config.log_dir()),
        rebuild: None,
        queue_db: Some(config.database.path.clone()),
        metrics: Metrics::default(),
    });
    let rt = tokio::runtime::Runtime::new()?;
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
