//! Is a ZFS host usable? One script over one connection (or locally) tells
//! apart the ways it is not: unreachable, `sudo` wanting a password, no
//! zfs, no such pool, or a pool that is not healthy. `kiln doctor` names
//! each with its fix; a build on such a host fails as infrastructure.

use std::time::Duration;

use super::host::{Host, shell_quote, unreachable};
use crate::config::ZfsHost;
use crate::process::ProcessError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Online { size: String, free: String },
    Unhealthy { health: String },
    Unreachable { detail: String },
    NeedsPassword { detail: String },
    NoZfs,
    NoPool { detail: String },
}

const NO_ZFS: &str = "kiln-probe: no zpool";
const NO_POOL: &str = "kiln-probe: no pool";

pub async fn probe(config: &ZfsHost) -> Probe {
    let host = Host::new(config);
    let pool = shell_quote(&config.pool);
    // zfs-fuse's zpool has no -p: sizes come back human-readable.
    let script = format!(
        "command -v zpool >/dev/null 2>&1 || {{ echo '{NO_ZFS}'; exit 3; }}\n\
         zpool list -H -o name,health,size,free {pool} 2>&1 || {{ echo '{NO_POOL}'; exit 4; }}\n\
         exit 0"
    );
    let run = host
        .script(&script)
        .timeout(Duration::from_secs(30))
        .run()
        .await;
    match run {
        Ok(out) => {
            let line = out.stdout.lines().next().unwrap_or("").to_string();
            let fields: Vec<&str> = line.trim().split('\t').collect();
            match fields.as_slice() {
                [_, "ONLINE", size, free] => Probe::Online {
                    size: size.to_string(),
                    free: free.to_string(),
                },
                [_, health, ..] => Probe::Unhealthy {
                    health: health.to_string(),
                },
                _ => Probe::NoPool {
                    detail: format!("unexpected zpool output {line:?}"),
                },
            }
        }
        Err(ProcessError::Failed { stderr, .. }) if stderr.contains("password is required") => {
            Probe::NeedsPassword { detail: stderr }
        }
        Err(ref e @ ProcessError::Failed { ref stderr, .. }) if !unreachable(&host, e) => {
            let out = e.to_string();
            if out.contains(NO_ZFS) || stderr.contains("not found") {
                Probe::NoZfs
            } else {
                Probe::NoPool {
                    detail: out
                        .lines()
                        .find(|l| !l.contains(NO_POOL))
                        .unwrap_or("")
                        .to_string(),
                }
            }
        }
        Err(e) => Probe::Unreachable {
            detail: e.to_string(),
        },
    }
}

impl Probe {
    /// What is wrong and the fix, or `None` when the host is usable.
    pub fn problem(&self, config: &ZfsHost) -> Option<(String, String)> {
        let on = if config.ssh.is_empty() {
            "this machine".to_string()
        } else {
            format!("{} ({})", config.name, config.ssh)
        };
        let ssh = if config.ssh_config.is_empty() {
            format!("ssh {}", config.ssh)
        } else {
            format!("ssh -F {} {}", config.ssh_config, config.ssh)
        };
        let pool = &config.pool;
        Some(match self {
            Probe::Online { .. } => return None,
            Probe::Unhealthy { health } => (
                format!("pool {pool} on {on} is {health}"),
                format!("zpool status {pool} (on {on})"),
            ),
            Probe::Unreachable { detail } => (
                format!("cannot reach {on}: {detail}"),
                format!(
                    "make `{ssh} true` work without a prompt: sshd running, Kiln's key in authorized_keys, the host in known_hosts"
                ),
            ),
            Probe::NeedsPassword { detail } => (
                format!("sudo on {on} wants a password: {detail}"),
                format!(
                    "a NOPASSWD sudoers entry for the ssh user on {on}, or `sudo = false` with a root login"
                ),
            ),
            Probe::NoZfs => (
                format!("no zfs/zpool on {on}"),
                format!(
                    "install ZFS on {on} (macOS: OpenZFS on OS X; FreeBSD: in base; Debian: zfsutils-linux or zfs-fuse)"
                ),
            ),
            Probe::NoPool { detail } => (
                format!("no pool {pool} on {on}: {detail}"),
                format!("zpool import {pool}, or zpool create {pool} <device> (on {on})"),
            ),
        })
    }
}

/// Does the host still answer with its pool online (after a build failed
/// as infrastructure: was it the host)?
pub async fn answers(config: &ZfsHost) -> bool {
    matches!(probe(config).await, Probe::Online { .. })
}
