use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use kiln::api::{AppState, Metrics};
use kiln::config::{Config, Sources};
use kiln::daemon::{lock::DaemonLock, triggers::Schedules};
use kiln::state::{queue::Queue, rounds::Rounds};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Address for the digest API (default: api.listen).
    #[arg(long)]
    addr: Option<String>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Run the scheduler and the digest API in one process (the default).
    Run,
    /// The latest rebuild rounds.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// The latest jobs of the queue (as `kiln jobs list`).
    Jobs {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    match args.command.unwrap_or(Sub::Run) {
        Sub::Status { json, limit } => {
            let rounds = Rounds::open(&config.database.path)?.list(limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rounds)?);
            } else {
                for r in &rounds {
                    println!(
                        "#{:<4} {:<20} {:<12} started {}  built {} unchanged {} failed {}{}",
                        r.id,
                        r.trigger,
                        r.state,
                        r.started_at,
                        r.built,
                        r.unchanged,
                        r.failed,
                        r.error
                            .as_deref()
                            .map(|e| format!("  error: {e}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Sub::Jobs { json, limit } => {
            super::jobs::list(&Queue::open(&config.database.path)?, json, limit)
        }
        Sub::Run => {
            // Refuse a bad schedule and a second daemon before anything starts.
            Schedules::parse(&config)?;
            let lock = DaemonLock::acquire(&config.state_dir)?;
            let addr = args.addr.unwrap_or_else(|| config.api.listen.clone());
            let store = super::resolve::open_store(&config)?;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let state = Arc::new(AppState {
                store,
                token: config.api.token.clone(),
                log_dir: Some(config.log_dir()),
                rebuild: Some(tx),
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
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("listening on {addr}"))?;
                super::say(&format!(
                    "kiln daemon: digest API on http://{addr}/, schedule {:?}",
                    config.daemon.schedule
                ));
                let mut api_stop = stop_rx.clone();
                let api = tokio::spawn(kiln::api::serve_on(state, listener, async move {
                    let _ = api_stop.changed().await;
                }));
                let sched = tokio::spawn(kiln::daemon::scheduler(config, lock, rx, stop_rx));
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                super::say("kiln daemon: stopping (running jobs finish first)");
                let _ = stop_tx.send(true);
                sched.await.context("scheduler")??;
                let _ = api.await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
