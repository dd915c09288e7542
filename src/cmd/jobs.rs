//! `kiln jobs`: the daemon's queue, and control over its jobs. Requests go
//! into the state database, so they work whether the daemon runs (it stops
//! a cancelled running job within its queue poll) or not (a queued job is
//! cancelled at once; a retried one waits for the next start).

use std::process::ExitCode;

use anyhow::Result;
use kiln::config::{Config, Sources};
use kiln::state::queue::{Cancel, Job, Queue};
use kiln::state::rounds::Rounds;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// The latest jobs: state, attempts, failure kind, log (the default).
    List {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Cancel a queued job, or stop a running one (the daemon removes what
    /// its build made, then ends it `cancelled`).
    Cancel {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed or cancelled job again, in a new round.
    Retry {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(sources: &Sources, args: Args) -> Result<ExitCode> {
    let config = Config::load(sources)?;
    let queue = Queue::open(&config.database.path)?;
    match args.command.unwrap_or(Sub::List {
        json: false,
        limit: 20,
    }) {
        Sub::List { json, limit } => list(&queue, json, limit),
        Sub::Cancel { id, json } => {
            let done = queue.cancel(id, "cli")?;
            if json {
                println!("{}", serde_json::json!({"job": id, "cancel": done}));
            } else {
                match done {
                    Cancel::Cancelled => println!("job #{id} cancelled before it started"),
                    Cancel::Requested => println!(
                        "job #{id} is running: the daemon stops it and removes what its build made (`kiln jobs list` shows it cancelled)"
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Sub::Retry { id, json } => {
            let rounds = Rounds::open(&config.database.path)?;
            let round = queue.retry(id, || rounds.start(&format!("retry:#{id}")))?;
            if json {
                println!("{}", serde_json::json!({"job": id, "round": round}));
            } else {
                println!("job #{id} queued again in round #{round}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The latest `limit` jobs, newest first.
pub fn list(queue: &Queue, json: bool, limit: usize) -> Result<ExitCode> {
    let jobs = queue.list(limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
    } else {
        for j in &jobs {
            println!("{}", line(j));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn line(j: &Job) -> String {
    format!(
        "#{:<4} {:<10} {}:{}  attempts {}  {}{}{}",
        j.id,
        j.state,
        j.repository,
        j.tag,
        j.attempts,
        j.outcome.as_deref().unwrap_or(""),
        match (j.failure, j.state.as_str()) {
            (Some(f), _) => format!("{f} failure: {}", j.error.as_deref().unwrap_or("")),
            (None, "cancelled") => j.error.clone().unwrap_or_default(),
            _ => String::new(),
        },
        j.log
            .as_deref()
            .map(|l| format!("  (log: {l})"))
            .unwrap_or_default()
    )
}
