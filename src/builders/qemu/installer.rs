//! What OpenBSD's installer (and the test guest, which follows the same
//! protocol) finds on the build's HTTP server, laid out as autoinstall(8)
//! expects:
//!
//! ```text
//! /install.conf                               the response file
//! /disklabel                                  the autopartitioning template
//! /pub/OpenBSD/<release>/<arch>/SHA256        the release's checksums
//! /pub/OpenBSD/<release>/<arch>/<set>         each declared set
//! /pub/OpenBSD/<release>/<arch>/site<NN>.tgz  built here: install.site and
//!                                             the platform's other files
//! ```
//!
//! The sets are declared per OS release in `platform.yaml` (`vars.sets`,
//! the files to install, and `vars.sets_sha256`, the sha256 of the
//! release's `SHA256` file, which pins every set through its lines; both
//! are keyed through `install.conf`, which names them). They are read from
//! a local copy of the release directory and checked before any boot: an
//! OS release without sets, a `SHA256` that is not the pinned one, a set
//! missing from it or whose bytes disagree with it is refused, naming the
//! release and the file.

use std::path::{Path, PathBuf};

use super::tree::{Entry, Tree};
use crate::plan::Prepared;

/// Recipes served at the top of the tree; every other recipe goes into the
/// site set.
const TOP_LEVEL: &[&str] = &["install.conf", "disklabel"];

/// `release` reads `<os>: OpenBSD <release>/<arch>`.
#[derive(Debug, thiserror::Error)]
pub enum SetsError {
    #[error(
        "{release} declares no install sets: set vars.sets (the set files) and vars.sets_sha256 (the sha256 of the release's SHA256) in platform.yaml"
    )]
    Undeclared { release: String },
    #[error("{release}: {file} not found at {path}: {message}")]
    Missing {
        release: String,
        file: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "{release}: {file} fails its checksum: expected {expected}, got {actual} ({path}); nothing was booted"
    )]
    Checksum {
        release: String,
        file: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{release}: {file} is not listed in SHA256")]
    NotListed { release: String, file: String },
}

/// The declaration of one OS release's sets, read from its vars.
#[derive(Debug, Clone)]
pub struct Sets {
    pub os: String,
    pub release: String,
    pub arch: String,
    pub files: Vec<String>,
    pub sha256_of_sha256: String,
    /// The local copy of `pub/OpenBSD/<release>/<arch>/`.
    pub dir: PathBuf,
}

impl Sets {
    /// `vars.sets`, `vars.sets_sha256`; `vars.sets_dir` (relative to the
    /// state dir) or `openbsd/<release>/<arch>`.
    pub fn declared(p: &Prepared, state_dir: &Path) -> Result<Sets, SetsError> {
        let t = &p.target;
        let var = |k: &str| t.vars.get(k).map(|v| v.trim().to_string());
        let release = var("release").unwrap_or_default();
        let arch = t.arch.to_string();
        let files: Vec<String> = var("sets")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let pin = var("sets_sha256").unwrap_or_default();
        if files.is_empty() || pin.is_empty() || release.is_empty() {
            return Err(SetsError::Undeclared {
                release: format!("{}: OpenBSD {release}/{arch}", t.os),
            });
        }
        let dir = match var("sets_dir") {
            Some(d) => state_dir.join(d),
            None => state_dir.join("openbsd").join(&release).join(&arch),
        };
        Ok(Sets {
            os: t.os.clone(),
            release,
            arch,
            files,
            sha256_of_sha256: pin,
            dir,
        })
    }

    /// `pub/OpenBSD/<release>/<arch>`: the installer's "Server directory".
    pub fn server_dir(&self) -> String {
        format!("pub/OpenBSD/{}/{}", self.release, self.arch)
    }

    /// How errors name the release.
    fn label(&self) -> String {
        format!("{}: OpenBSD {}/{}", self.os, self.release, self.arch)
    }

    fn missing(&self, file: &str, path: &Path, e: std::io::Error) -> SetsError {
        SetsError::Missing {
            release: self.label(),
            file: file.to_string(),
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    fn checksum(&self, file: &str, path: &Path, expected: &str, actual: String) -> SetsError {
        SetsError::Checksum {
            release: self.label(),
            file: file.to_string(),
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        }
    }

    /// Check `SHA256` against its pin and every set against `SHA256`;
    /// the checked files, by name.
    pub async fn verified(&self) -> Result<Vec<(String, PathBuf)>, SetsError> {
        let sums_path = self.dir.join("SHA256");
        let sums = std::fs::read(&sums_path).map_err(|e| self.missing("SHA256", &sums_path, e))?;
        let actual = crate::plan::key::sha256_hex(&sums);
        if actual != self.sha256_of_sha256 {
            return Err(self.checksum("SHA256", &sums_path, &self.sha256_of_sha256, actual));
        }
        let sums = String::from_utf8_lossy(&sums);
        let mut out = vec![("SHA256".to_string(), sums_path)];
        for file in &self.files {
            let want = listed(&sums, file).ok_or_else(|| SetsError::NotListed {
                release: self.label(),
                file: file.clone(),
            })?;
            let path = self.dir.join(file);
            let (got, _) = crate::registry::sha256_file(&path)
                .await
                .map_err(|e| self.missing(file, &path, e))?;
            if got != want {
                return Err(self.checksum(file, &path, &want, got));
            }
            out.push((file.clone(), path));
        }
        Ok(out)
    }
}

/// The sha256 `SHA256` gives for `file` (BSD format: `SHA256 (f) = hex`).
pub fn listed(sums: &str, file: &str) -> Option<String> {
    let prefix = format!("SHA256 ({file}) = ");
    sums.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|h| h.trim().to_ascii_lowercase())
}

/// `site<NN>.tgz` from the recipes that are not served at the top:
/// `install.site` and whatever it installs, executable when it is a script,
/// with fixed owners and times so that the same recipes give the same bytes.
pub fn site_tgz(files: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for (name, text) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(text.len() as u64);
        h.set_mode(if text.starts_with("#!") { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, format!("./{name}"), text.as_bytes())?;
    }
    tar.into_inner()?.finish()
}

/// The installer's tree for one build: top-level recipes, the verified
/// sets and the site set.
pub async fn tree(p: &Prepared, sets: &Sets) -> Result<Tree, SetsError> {
    let verified = sets.verified().await?;
    let mut tree = Tree::default();
    let mut site = Vec::new();
    for (name, text) in &p.recipes {
        if TOP_LEVEL.contains(&name.as_str()) {
            tree.insert(name.clone(), Entry::Bytes(text.clone().into_bytes()));
        } else {
            site.push((name.clone(), text.clone()));
        }
    }
    let dir = sets.server_dir();
    for (name, path) in verified {
        tree.insert(format!("{dir}/{name}"), Entry::File(path));
    }
    let nn = sets.release.replace('.', "");
    // Built when the server starts: its scripts may name the server.
    tree.insert(format!("{dir}/site{nn}.tgz"), Entry::Tgz(site));
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_lines_are_read_by_file_name() {
        let sums = "SHA256 (base79.tgz) = ABC\nSHA256 (bsd) = def\n";
        assert_eq!(listed(sums, "base79.tgz").as_deref(), Some("abc"));
        assert_eq!(listed(sums, "bsd").as_deref(), Some("def"));
        assert_eq!(listed(sums, "bsd.mp"), None);
    }

    #[test]
    fn the_site_set_is_byte_stable_and_install_site_is_executable() {
        let files = vec![
            (
                "install.site".to_string(),
                "#!/bin/sh\necho hi\n".to_string(),
            ),
            ("motd".to_string(), "hello\n".to_string()),
        ];
        let a = site_tgz(&files).unwrap();
        assert_eq!(a, site_tgz(&files).unwrap());
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&a[..]));
        let modes: Vec<(String, u32)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            modes,
            vec![("install.site".into(), 0o755), ("motd".into(), 0o644)]
        );
    }
}
