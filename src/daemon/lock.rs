//! One writer per state directory: an exclusive `flock` on
//! `<state>/daemon.lock`, holding the owner's pid and what it is
//! (`daemon`, `build`) for the error message and for a `kiln build` that
//! finds a daemon there and hands its work to it
//! ([`super::handoff`]).

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another kiln {holder} (pid {pid}) holds {path}: one writer per state dir; wait for it or stop it first"
    )]
    Held {
        path: PathBuf,
        pid: String,
        /// `daemon`, or the publishing commands (which write no pid).
        holder: String,
    },
    #[error(
        "publishing commands (kiln build) hold {path}: one writer per state dir, the daemon starts once they end"
    )]
    Commands { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for as long as it lives; the kernel drops it if the process dies.
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
    pub path: PathBuf,
}

impl DaemonLock {
    /// The daemon's lease: exclusive. Refused while another daemon or any
    /// publishing command holds it.
    pub fn acquire(state_dir: &Path) -> Result<DaemonLock, LockError> {
        let (mut file, path) = open(state_dir)?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let (pid, holder) = holder(&mut file);
            // The file names the last daemon; when that one is gone, the
            // holders are publishing commands, which write no name.
            let daemon_alive =
                !crate::process::owner_is_gone(&format!("{}/{pid}", crate::process::hostname()));
            return Err(if holder == "daemon" && daemon_alive {
                LockError::Held { path, pid, holder }
            } else {
                LockError::Commands { path }
            });
        }
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{} daemon", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(DaemonLock { _file: file, path })
    }

    /// A publishing command's lease: shared, so commands may run side by
    /// side as before, but never beside a daemon (which then refuses to
    /// start, and whose lease this one is refused with its pid).
    pub fn acquire_shared(state_dir: &Path) -> Result<DaemonLock, LockError> {
        let (mut file, path) = open(state_dir)?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc != 0 {
            let (pid, holder) = holder(&mut file);
            return Err(LockError::Held { path, pid, holder });
        }
        Ok(DaemonLock { _file: file, path })
    }
}

fn open(state_dir: &Path) -> Result<(std::fs::File, PathBuf), LockError> {
    let path = state_dir.join("daemon.lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    Ok((file, path))
}

/// The pid and kind the lock file names (`<pid> daemon`; a file written
/// before kinds were named holds the pid alone, and was a daemon's).
fn holder(file: &mut std::fs::File) -> (String, String) {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let mut words = text.split_whitespace();
    let pid = words.next().unwrap_or("unknown").to_string();
    let holder = words.next().unwrap_or("daemon").to_string();
    (pid, holder)
}
