//! The services' ZFS pool (`kiln`, on zfs-fuse) as tests see it.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::Bounded;

/// Why ZFS cannot be used here, as `scripts/services.sh up` recorded it
/// (`.kiln/run/zfs.unavailable`); `None` when it brought the pool up.
pub fn unavailable() -> Option<String> {
    let f = super::state_dir().join("run/zfs.unavailable");
    f.exists().then(|| {
        format!(
            "zfs unavailable: {}",
            std::fs::read_to_string(&f).unwrap_or_default().trim()
        )
    })
}

/// `zfs list -r` of `top`: it and every dataset below (none if it does not
/// exist). Any other failure of `zfs list` (zfs-fuse wedged or gone) is a
/// panic, never an empty list: "no tree left" must not pass because zfs
/// could not say.
pub fn datasets(top: &str) -> Vec<String> {
    try_datasets(top).unwrap_or_else(|e| panic!("{e}"))
}

/// [`datasets`], its failure as a value (for drops, which must not panic).
pub fn try_datasets(top: &str) -> Result<Vec<String>, String> {
    let out = Command::new("zfs")
        .args(["list", "-H", "-r", "-o", "name", top])
        .output_within(Duration::from_secs(120))
        .map_err(|e| format!("zfs list -r {top}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // The one failure that means "nothing there".
        if stderr.contains("dataset does not exist") {
            return Ok(vec![]);
        }
        return Err(format!(
            "zfs list -r {top} failed ({}): {}",
            out.status,
            stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Destroys a dataset tree (e.g. `kiln/<prefix>`) on drop.
pub struct Tree(pub String);

impl Drop for Tree {
    fn drop(&mut self) {
        // zfs-fuse may report "busy" right after an unmount: destroy the
        // deepest datasets first and retry until nothing is left.
        super::retry(40, Duration::from_millis(250), || {
            let Ok(mut names) = try_datasets(&self.0) else {
                return false;
            };
            names.sort_by_key(|n| std::cmp::Reverse(n.matches('/').count()));
            for n in &names {
                let _ = Command::new("zfs")
                    .args(["destroy", "-r", "-f", n])
                    .stderr(Stdio::null())
                    .status_within(Duration::from_secs(120));
            }
            names.is_empty()
        });
    }
}

/// A pool of its own on a file (a worker's pool), destroyed on drop.
pub struct Pool {
    pub name: String,
    dir: tempfile::TempDir,
}

impl Pool {
    pub fn create(name: &str) -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("pool.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        assert!(
            Command::new("zpool")
                .args(["create", "-f", "-m", "none", name])
                .arg(&img)
                .status_within(Duration::from_secs(120))
                .unwrap()
                .success(),
            "zpool create {name}"
        );
        Pool {
            name: name.to_string(),
            dir,
        }
    }

    /// The file the pool was created on.
    pub fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("pool.img")
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        super::retry(20, Duration::from_millis(500), || {
            let gone = !Command::new("zpool")
                .args(["list", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status_within(Duration::from_secs(60))
                .map(|s| s.success())
                .unwrap_or(false);
            gone || Command::new("zpool")
                .args(["destroy", "-f", &self.name])
                .stderr(Stdio::null())
                .status_within(Duration::from_secs(120))
                .map(|s| s.success())
                .unwrap_or(true)
        });
    }
}
