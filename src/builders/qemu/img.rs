//! `qemu-img` driven as a process with JSON output: create, info, check,
//! convert (compact + compress) and overlays.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::process::{Cmd, ProcessError};

#[derive(Debug, thiserror::Error)]
pub enum ImgError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("qemu-img {what} of {path}: unexpected output: {message}")]
    Parse {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("qemu-img check of {path}: {corruptions} corruptions, {leaks} leaked clusters")]
    Corrupt {
        path: String,
        corruptions: u64,
        leaks: u64,
    },
}

/// The parts of `qemu-img info --output=json` Kiln uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Info {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Img {
    pub program: String,
    /// A remote QEMU host's connection (see `site`): paths are the host's.
    host: Option<crate::builders::zfs::host::Host>,
}

impl Img {
    pub fn new(program: &str) -> Img {
        Img {
            program: program.to_string(),
            host: None,
        }
    }

    /// The same program on a remote host, over its connection.
    pub fn on(&self, host: crate::builders::zfs::host::Host) -> Img {
        Img {
            program: self.program.clone(),
            host: Some(host),
        }
    }

    fn cmd(&self, args: Vec<std::ffi::OsString>) -> Cmd {
        let c = match &self.host {
            Some(h) => {
                let args: Vec<String> = args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                h.cmd(&self.program, &args)
            }
            None => Cmd::new(&self.program).args(args),
        };
        c.timeout(Duration::from_secs(1800))
    }

    pub async fn create(&self, path: &Path, size: &str) -> Result<(), ImgError> {
        self.cmd(vec![
            "create".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            path.into(),
            size.into(),
        ])
        .run()
        .await?;
        Ok(())
    }

    /// A copy-on-write overlay over `base` (what a build step boots).
    pub async fn overlay(&self, base: &Path, overlay: &Path) -> Result<(), ImgError> {
        self.cmd(vec![
            "create".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-F".into(),
            "qcow2".into(),
            "-b".into(),
            base.into(),
            overlay.into(),
        ])
        .run()
        .await?;
        Ok(())
    }

    pub async fn info(&self, path: &Path) -> Result<Info, ImgError> {
        let out = self
            .cmd(vec!["info".into(), "--output=json".into(), path.into()])
            .run()
            .await?;
        serde_json::from_str(&out.stdout).map_err(|e| ImgError::Parse {
            what: "info",
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// `qemu-img check --output=json`: refuses corruptions and leaks.
    pub async fn check(&self, path: &Path) -> Result<(), ImgError> {
        // check exits 2/3 on corruption/leaks: read its JSON either way.
        let out = match self
            .cmd(vec!["check".into(), "--output=json".into(), path.into()])
            .run()
            .await
        {
            Ok(o) => o.stdout,
            Err(ProcessError::Failed { stderr, .. }) if stderr.is_empty() => String::new(),
            Err(e) => return Err(e.into()),
        };
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| ImgError::Parse {
            what: "check",
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let corruptions = v["corruptions"].as_u64().unwrap_or(0);
        let leaks = v["leaks"].as_u64().unwrap_or(0);
        if corruptions > 0 || leaks > 0 {
            return Err(ImgError::Corrupt {
                path: path.display().to_string(),
                corruptions,
                leaks,
            });
        }
        Ok(())
    }

    /// Compact and compress: `convert -O qcow2 -c`.
    pub async fn compact(&self, src: &Path, dest: &Path) -> Result<(), ImgError> {
        self.cmd(vec![
            "convert".into(),
            "-q".into(),
            "-O".into(),
            "qcow2".into(),
            "-c".into(),
            src.into(),
            dest.into(),
        ])
        .run()
        .await?;
        Ok(())
    }
}
