//! `zfs` and `zpool` driven as processes on a [`Host`]: locally, or over
//! ssh (one connection for a whole build, see [`Zfs::connect`]).
//!
//! zfs-fuse (the pool this machine runs) has no `-p` on `list`; exact
//! numbers come from `zfs get -H -o value -p`, names and mountpoints from
//! `zfs list -H -o`. Commands that can race with zfs-fuse's own work
//! (destroy right after a receive or an unmount) are retried briefly.

use std::time::Duration;

use super::host::Host;
use crate::config::ZfsHost;
use crate::process::{Cmd, ProcessError};

#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("zfs on {host}: {message}")]
    Invalid { host: String, message: String },
}

/// One ZFS host.
#[derive(Debug, Clone)]
pub struct Zfs {
    pub host: ZfsHost,
    /// How commands reach it.
    pub on: Host,
}

impl Zfs {
    /// One ssh connection per command (or local): `kiln gc`, `fetch`.
    pub fn new(host: &ZfsHost) -> Zfs {
        Zfs {
            host: host.clone(),
            on: Host::new(host),
        }
    }

    /// Every command over one ssh connection, open until the last clone of
    /// this handle is dropped: a build.
    pub async fn connect(host: &ZfsHost) -> Result<Zfs, ZfsError> {
        Ok(Zfs {
            host: host.clone(),
            on: Host::connect(host).await?,
        })
    }

    fn cmd(&self, tool: &str, args: &[&str]) -> Cmd {
        self.on.cmd(tool, args).timeout(Duration::from_secs(600))
    }

    pub async fn zfs(&self, args: &[&str]) -> Result<String, ZfsError> {
        Ok(self.cmd("zfs", args).run().await?.stdout)
    }

    /// `zpool list -H -o health POOL`.
    pub async fn pool_health(&self) -> Result<String, ZfsError> {
        let out = self
            .cmd(
                "zpool",
                &["list", "-H", "-o", "health", self.host.pool.as_str()],
            )
            .run()
            .await?;
        Ok(out.stdout.trim().to_string())
    }

    /// Does this dataset (or snapshot) exist?
    pub async fn exists(&self, name: &str) -> Result<bool, ZfsError> {
        match self
            .cmd("zfs", &["list", "-H", "-o", "name", name])
            .run()
            .await
        {
            Ok(_) => Ok(true),
            Err(ProcessError::Failed { stderr, .. }) if stderr.contains("does not exist") => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Create a dataset (and its parents) with properties.
    pub async fn create(&self, name: &str, props: &[(&str, &str)]) -> Result<(), ZfsError> {
        let mut args = vec!["create".to_string(), "-p".to_string()];
        for (k, v) in props {
            args.push("-o".into());
            args.push(format!("{k}={v}"));
        }
        args.push(name.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cmd("zfs", &args).run().await?;
        Ok(())
    }

    /// Children (recursive) of a dataset, with mountpoints: `(name, mountpoint)`.
    pub async fn list(&self, name: &str) -> Result<Vec<(String, String)>, ZfsError> {
        let out = self
            .zfs(&["list", "-H", "-r", "-o", "name,mountpoint", name])
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect())
    }

    /// An exact numeric property (`used`, `referenced`, …).
    pub async fn get_number(&self, name: &str, prop: &str) -> Result<u64, ZfsError> {
        let out = self
            .zfs(&["get", "-H", "-o", "value", "-p", prop, name])
            .await?;
        out.trim().parse().map_err(|_| ZfsError::Invalid {
            host: self.host.name.clone(),
            message: format!("{prop} of {name} is {:?}, not a number", out.trim()),
        })
    }

    pub async fn get(&self, name: &str, prop: &str) -> Result<String, ZfsError> {
        Ok(self
            .zfs(&["get", "-H", "-o", "value", prop, name])
            .await?
            .trim()
            .to_string())
    }

    pub async fn snapshot_recursive(&self, snap: &str) -> Result<(), ZfsError> {
        self.zfs(&["snapshot", "-r", snap]).await?;
        Ok(())
    }

    /// `zfs rename`, retried while zfs-fuse reports the dataset busy (it
    /// does for a moment after a receive or a mountpoint change).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ZfsError> {
        let mut attempt = 0u64;
        loop {
            match self.zfs(&["rename", from, to]).await {
                Ok(_) => return Ok(()),
                Err(ZfsError::Process(ProcessError::Failed { ref stderr, .. }))
                    if stderr.contains("busy") && attempt < 10 =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(300 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Destroy recursively, retrying while zfs-fuse reports it busy.
    pub async fn destroy_recursive(&self, name: &str) -> Result<(), ZfsError> {
        let mut last = None;
        for attempt in 0..10 {
            if !self.exists(name).await? {
                return Ok(());
            }
            match self.zfs(&["destroy", "-r", "-f", name]).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    // Busy: take the deepest children one by one, then retry.
                    if let Ok(list) = self.list(name).await {
                        let mut names: Vec<String> = list.into_iter().map(|(n, _)| n).collect();
                        names.sort_by_key(|n| std::cmp::Reverse(n.matches('/').count()));
                        for n in names {
                            let _ = self.zfs(&["destroy", "-r", "-f", &n]).await;
                        }
                    }
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(300 * (attempt + 1))).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| ZfsError::Invalid {
            host: self.host.name.clone(),
            message: format!("cannot destroy {name}"),
        }))
    }

    /// Clones that depend on any snapshot under `name` (in use by workers).
    /// zfs-fuse (pool v23) has no `clones` property: look for datasets of
    /// the pool whose `origin` is a snapshot of `name` or its children.
    pub async fn clones_of(&self, name: &str) -> Result<Vec<String>, ZfsError> {
        let out = self
            .zfs(&[
                "list",
                "-H",
                "-r",
                "-t",
                "filesystem",
                "-o",
                "name,origin",
                self.host.pool.as_str(),
            ])
            .await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(_, origin)| {
                origin.starts_with(&format!("{name}@")) || origin.starts_with(&format!("{name}/"))
            })
            .map(|(n, _)| n.to_string())
            .collect())
    }
}
