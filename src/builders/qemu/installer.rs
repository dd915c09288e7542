//! What OpenBSD's installer (and the test guest, which follows the same
//! protocol) finds on the build's HTTP server, laid out as autoinstall(8)
//! and upstream's mirror expect:
//!
//! ```text
//! /install.conf                               the response file
//! /disklabel                                  the autopartitioning template
//! /pub/OpenBSD/<release>/<arch>/SHA256        the release's checksums
//! /pub/OpenBSD/<release>/<arch>/<set>         each declared set
//! /pub/OpenBSD/<release>/<arch>/site<NN>.tgz  built here: install.site and
//!                                             the platform's other files
//! /pub/OpenBSD/<release>/<arch>/index.txt     the listing the installer
//!                                             reads over HTTP
//! ```
//!
//! The sets are sources of the source mirror: declared with their sha256 in
//! `versions/sources.yaml` (served under the last component of their
//! `url`), named by the OS release in `vars.sets`, fetched once into the
//! registry by `kiln sources sync` (a file that fails its checksum is never
//! mirrored), keyed by their sha256. Before any boot every set must be
//! declared, in the mirror (read through the digest-checked cache), and
//! agree with the release's `SHA256` (itself one of the sets); otherwise
//! the build is refused, naming the release and the file.

use std::path::PathBuf;

use super::tree::{Entry, Tree};
use crate::catalogue::SourceDecl;
use crate::model::FailureKind;
use crate::plan::{Prepared, Target};
use crate::sources::{Mirror, SourcesError};

/// Recipes served at the top of the tree; `boot.conf` goes to the TFTP
/// tree (see `tftp`); every other recipe goes into the site set.
const TOP_LEVEL: &[&str] = &["install.conf", "disklabel"];
const BOOT_CONF: &str = "boot.conf";
/// The set the boot loader is (`pxeboot`, served as `auto_install`, the
/// DHCP file name that makes OpenBSD's bsd.rd install unattended).
pub const PXEBOOT: &str = "pxeboot";
pub const BOOTFILE: &str = "auto_install";

/// `release` reads `<os>: OpenBSD <release>/<arch>`.
#[derive(Debug, thiserror::Error)]
pub enum SetsError {
    #[error(
        "{release} declares no install sets: list them in vars.sets (sources declared with their sha256 in versions/sources.yaml, SHA256 among them)"
    )]
    Undeclared { release: String },
    #[error(
        "{release}: set {name} is not a declared source (declare it with its url and sha256 in versions/sources.yaml)"
    )]
    NotDeclared { release: String, name: String },
    #[error(
        "{release}: the sets include no SHA256 (declare the release's SHA256 as a source and list it in vars.sets)"
    )]
    NoSha256 { release: String },
    #[error("{release}: {source}")]
    Mirror {
        release: String,
        source: Box<SourcesError>,
    },
    #[error("{release}: SHA256 ({path}): {message}")]
    Read {
        release: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "{release}: {file} fails its checksum: SHA256 says {expected}, the mirror's (declared) is {actual}; nothing was booted"
    )]
    Checksum {
        release: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{release}: {file} is not listed in SHA256")]
    NotListed { release: String, file: String },
    #[error(
        "{release}: the PXE boot needs {file}, which is not among the release's sets (list it in vars.sets{hint})"
    )]
    NoBootFile {
        release: String,
        file: String,
        hint: &'static str,
    },
}

impl SetsError {
    /// A declaration to fix is the recipe's; a registry that does not
    /// answer is infrastructure.
    pub fn kind(&self) -> FailureKind {
        match self {
            SetsError::Mirror { source, .. } => source.kind(),
            SetsError::Read { .. } => FailureKind::Infra,
            _ => FailureKind::Recipe,
        }
    }
}

/// One OS release's sets: each declared source with the file name the
/// installer asks for.
#[derive(Debug, Clone)]
pub struct Sets {
    pub label: String,
    pub release: String,
    pub arch: String,
    pub files: Vec<(String, SourceDecl)>,
}

/// The file a source is served as: the last component of its url.
fn file_name(d: &SourceDecl) -> String {
    d.url
        .rsplit(['/', ':'])
        .next()
        .filter(|f| !f.is_empty())
        .unwrap_or(&d.name)
        .to_string()
}

impl Sets {
    /// `vars.sets`, each found among the target's declared sources.
    pub fn declared(t: &Target) -> Result<Sets, SetsError> {
        let release = t.vars.get("release").cloned().unwrap_or_default();
        let arch = t.arch.to_string();
        let label = format!("{}: OpenBSD {release}/{arch}", t.os);
        let names: Vec<&str> = t
            .vars
            .get("sets")
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default();
        if names.is_empty() || release.is_empty() {
            return Err(SetsError::Undeclared { release: label });
        }
        let mut files = Vec::new();
        for name in names {
            let d = t
                .uses
                .sources
                .iter()
                .find(|d| d.name == name)
                .ok_or_else(|| SetsError::NotDeclared {
                    release: label.clone(),
                    name: name.to_string(),
                })?;
            files.push((file_name(d), d.clone()));
        }
        if !files.iter().any(|(f, _)| f == "SHA256") {
            return Err(SetsError::NoSha256 { release: label });
        }
        Ok(Sets {
            label,
            release,
            arch,
            files,
        })
    }

    /// `pub/OpenBSD/<release>/<arch>`: the installer's "Server directory".
    pub fn server_dir(&self) -> String {
        format!("pub/OpenBSD/{}/{}", self.release, self.arch)
    }

    /// Every set from the mirror (a missing one named), then each checked
    /// against `SHA256`: the local files, by the name the installer uses.
    pub async fn verified(
        &self,
        config: &crate::config::Config,
        mirror: &Mirror<'_>,
    ) -> Result<Vec<(String, PathBuf)>, SetsError> {
        let in_mirror = |source: SourcesError| SetsError::Mirror {
            release: self.label.clone(),
            source: Box::new(source),
        };
        let decls: Vec<SourceDecl> = self.files.iter().map(|(_, d)| d.clone()).collect();
        let wanted = crate::sources::wanted(config, &decls, false, &[], "")
            .await
            .map_err(in_mirror)?;
        let present = mirror.check(&wanted).await.map_err(in_mirror)?;
        let local = mirror.materialize_all(&present).await.map_err(in_mirror)?;
        let path_of = |d: &SourceDecl| local.get(&d.name).cloned().unwrap_or_default();
        let sums_path = self
            .files
            .iter()
            .find(|(f, _)| f == "SHA256")
            .map(|(_, d)| path_of(d))
            .unwrap_or_default();
        let read_error = |message: String| SetsError::Read {
            release: self.label.clone(),
            path: sums_path.clone(),
            message,
        };
        let sums = std::fs::read(&sums_path).map_err(|e| read_error(e.to_string()))?;
        // Read as `kiln sources declare-openbsd` reads the signed listing:
        // every line `SHA256 (file) = <hex>`, or the file and line named.
        let listing = crate::sources::signify::parse_listing(&sums_path, 1, &sums)
            .map_err(|e| read_error(e.to_string()))?;
        let mut out = Vec::new();
        for (file, d) in &self.files {
            // SHA256 and its signed form are not listed in SHA256.
            if file != "SHA256" && file != "SHA256.sig" {
                let want = listing.sha256(file).map(str::to_string).ok_or_else(|| {
                    SetsError::NotListed {
                        release: self.label.clone(),
                        file: file.clone(),
                    }
                })?;
                if want != d.sha256 {
                    return Err(SetsError::Checksum {
                        release: self.label.clone(),
                        file: file.clone(),
                        expected: want,
                        actual: d.sha256.clone(),
                    });
                }
            }
            out.push((file.clone(), path_of(d)));
        }
        Ok(out)
    }
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
/// sets, the site set and the listing.
pub fn tree(p: &Prepared, sets: &Sets, verified: Vec<(String, PathBuf)>) -> Tree {
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
    site.retain(|(name, _)| name != BOOT_CONF);
    let site_name = format!("site{}.tgz", sets.release.replace('.', ""));
    let mut index: Vec<String> = verified.iter().map(|(f, _)| f.clone()).collect();
    index.push(site_name.clone());
    index.sort();
    for (name, path) in verified {
        tree.insert(format!("{dir}/{name}"), Entry::File(path));
    }
    // Built when the server starts: its scripts may name the server.
    tree.insert(format!("{dir}/{site_name}"), Entry::Tgz(site));
    tree.insert(
        format!("{dir}/index.txt"),
        Entry::Bytes(format!("{}\n", index.join("\n")).into_bytes()),
    );
    tree
}

/// What the PXE boot fetches by TFTP, as upstream lays it out:
/// `auto_install` (the release's `pxeboot`), `etc/boot.conf` (the rendered
/// recipe), and the sets the loader boots (`vars.tftp`, default `bsd.rd`),
/// every one of them a set checked against `SHA256`.
pub fn tftp(p: &Prepared, sets: &Sets, verified: &[(String, PathBuf)]) -> Result<Tree, SetsError> {
    let file = |name: &str, hint: &'static str| {
        verified
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, path)| Entry::File(path.clone()))
            .ok_or_else(|| SetsError::NoBootFile {
                release: sets.label.clone(),
                file: name.to_string(),
                hint,
            })
    };
    let mut tree = Tree::default();
    tree.insert(BOOTFILE, file(PXEBOOT, "")?);
    let loaded = p
        .target
        .vars
        .get("tftp")
        .map(String::as_str)
        .unwrap_or("bsd.rd");
    for name in loaded.split_whitespace() {
        tree.insert(name, file(name, ", or change vars.tftp")?);
    }
    let conf = p
        .recipes
        .iter()
        .find(|(n, _)| n == BOOT_CONF)
        .map(|(_, text)| text.clone())
        .ok_or_else(|| SetsError::NoBootFile {
            release: sets.label.clone(),
            file: BOOT_CONF.to_string(),
            hint: ": it is a recipe, list it in the release's recipes",
        })?;
    tree.insert("etc/boot.conf", Entry::Bytes(conf.into_bytes()));
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_served_under_the_last_component_of_its_url() {
        let d = |url: &str| SourceDecl {
            name: "openbsd-7.9-amd64-base79.tgz".into(),
            url: url.into(),
            sha256: "0".repeat(64),
        };
        let f = |url: &str| file_name(&d(url));
        assert_eq!(
            f("https://cdn.openbsd.org/pub/OpenBSD/7.9/amd64/base79.tgz"),
            "base79.tgz"
        );
        assert_eq!(f("file:../fixtures/sets/SHA256"), "SHA256");
        assert_eq!(f("file:SHA256"), "SHA256");
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
