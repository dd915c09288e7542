//! One module per subcommand: argument struct and a `run` function that
//! turns library results into output and an exit code.
//!
//! Output goes through [`write_out`]: `println!`, `print!`, `eprintln!`
//! and `eprint!` are shadowed below for every subcommand, so a closed
//! stdout (`kiln plan | head`) is a handled write error, never a panic,
//! and never a SIGPIPE: Kiln keeps SIGPIPE ignored (Rust's default) so
//! that a registry or child process dying under a write is an error with
//! a message, not a silent death (see `main`).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

/// `println!` for subcommands: see [`write_out`].
macro_rules! println {
    () => {
        $crate::cmd::write_out(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cmd::write_out(format_args!($($arg)*), true)
    };
}

/// `print!` for subcommands: see [`write_out`].
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::cmd::write_out(format_args!($($arg)*), false)
    };
}

/// `eprintln!` for subcommands: a closed stderr loses the line quietly.
macro_rules! eprintln {
    () => {
        $crate::cmd::write_err(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cmd::write_err(format_args!($($arg)*), true)
    };
}

/// `eprint!` for subcommands: see [`eprintln!`].
#[allow(unused_macros)]
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::cmd::write_err(format_args!($($arg)*), false)
    };
}

/// Set once stdout could not be written: the rest of the output is
/// dropped and the command runs to its end (its cleanup included).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Why stdout failed, when it was not a reader going away.
static STDOUT_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Write to stdout. A reader that went away (`EPIPE`: `kiln plan | head`)
/// ends the output quietly; any other write error is kept for `main` to
/// report ([`output_error`]).
pub fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let r = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    if let Err(e) = r {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe
            && let Ok(mut slot) = STDOUT_ERROR.lock()
        {
            *slot = Some(e.to_string());
        }
    }
}

/// Write to stderr; a closed stderr loses the line.
pub fn write_err(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| {
        if newline {
            err.write_all(b"\n")
        } else {
            Ok(())
        }
    });
}

/// A failure to write the output other than its reader going away.
pub fn output_error() -> Option<String> {
    STDOUT_ERROR.lock().ok().and_then(|s| s.clone())
}

pub mod build;
pub mod bump;
pub mod catalogue;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod export;
pub mod fetch;
pub mod filter;
pub mod fixtures;
pub mod gc;
pub mod jobs;
pub mod lockfile;
pub mod plan;
pub mod progress;
pub mod release;
pub mod resolve;
pub mod rollback;
pub mod serve;
pub mod sources;
pub mod status;
pub mod verify;
pub mod workers;

/// Set by `main` when logs are JSON (`--log-format json`).
pub static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line for the operator of a long-running command: plain on stderr, or,
/// when logs are JSON, a log event like every other line.
/// The state dir's lease for a command that moves tags but cannot hand
/// its work to the daemon (`rollback`, `verify --repair`): held while the
/// value lives; refused, naming the daemon, while one runs.
pub fn exclusive_of_daemon(
    config: &kiln::config::Config,
    what: &str,
) -> anyhow::Result<kiln::daemon::lock::DaemonLock> {
    match kiln::daemon::handoff::take(config)? {
        kiln::daemon::handoff::Lease::Own(lock) => Ok(lock),
        kiln::daemon::handoff::Lease::Daemon { pid } => anyhow::bail!(
            "{what}: the daemon (pid {pid}) holds {}/daemon.lock and may be moving the same tags: stop it (SIGTERM; running jobs drain within daemon.drain_secs), {what}, then start it again; nothing was changed",
            config.state_dir.display()
        ),
    }
}

pub fn say(message: &str) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// The ZFS host a worker-side command acts on: the first configured one,
/// with `--pool` and `--prefix` applied.
pub fn zfs_host(
    config: &kiln::config::Config,
    pool: Option<String>,
    prefix: Option<String>,
) -> anyhow::Result<kiln::config::ZfsHost> {
    use anyhow::Context;
    let mut host = config
        .zfs
        .hosts
        .first()
        .cloned()
        .context("no zfs host configured")?;
    if let Some(p) = pool {
        host.pool = p;
    }
    if let Some(p) = prefix {
        host.prefix = p;
    }
    Ok(host)
}
