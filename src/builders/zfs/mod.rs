//! macOS and FreeBSD base datasets built on ZFS and shipped as send streams.

pub mod build;
pub mod driver;
pub mod gc;
pub mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::registry::{Registry, artifact};

/// Build one zfs target of a plan into a verified, pushed OCI artifact;
/// returns the artifact manifest digest (for the tag's index).
pub(crate) async fn artifact_build(
    config: &Config,
    reg: &Registry,
    p: &crate::builders::run::Prepared,
    repository: &str,
    immutable: &str,
    log: &Path,
) -> Result<String, String> {
    let t = &p.target;
    let host = config
        .zfs
        .hosts
        .iter()
        .find(|h| h.platforms.contains(&t.platform) && h.arch == t.arch)
        .ok_or_else(|| format!("no zfs host builds {} {}", t.platform, t.arch))?;
    // One build at a time per ZFS host, across every job of the process.
    let _slot = crate::builders::run::host_permits(&format!("zfs:{}", host.name), 1)
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    let zfs = driver::Zfs::new(host);
    let short = &p.key.trim_start_matches("sha256:")[..12];
    let leaf = format!("{}-ocaml-{}-{short}", t.os, t.version);
    let dataset = format!("{}/{}/base-image/{leaf}", host.pool, host.prefix);
    let mount_root = t.vars.get("mount_root").map(PathBuf::from);
    let mount = |child: &str, production: String| match &mount_root {
        Some(root) => root.join(&host.prefix).join(&leaf).join(child),
        None => PathBuf::from(production),
    };
    let user = t.vars.get("build_user").cloned();
    let children: Vec<build::Child> = match t.platform.as_str() {
        "macos" => vec![
            build::Child {
                name: "home".into(),
                mountpoint: mount(
                    "home",
                    format!(
                        "/Users/{}",
                        user.clone().unwrap_or_else(|| "mac1000".into())
                    ),
                ),
            },
            build::Child {
                name: "brew".into(),
                mountpoint: mount(
                    "brew",
                    t.vars.get("brew_prefix").cloned().unwrap_or_default(),
                ),
            },
        ],
        _ => vec![build::Child {
            name: "rootfs".into(),
            mountpoint: mount("rootfs", format!("/usr/jails/{leaf}")),
        }],
    };
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
    );
    let profile = match t.platform.as_str() {
        "macos" => {
            env.insert("HOME".into(), children[0].mountpoint.display().to_string());
            env.insert("BREW".into(), children[1].mountpoint.display().to_string());
            children[0].mountpoint.join(".obuilder_profile.sh")
        }
        _ => {
            env.insert(
                "ROOTFS".into(),
                children[0].mountpoint.display().to_string(),
            );
            children[0].mountpoint.join("home/opam/.profile")
        }
    };
    let out_dir = config.work_dir().join("zfs");
    let spec = build::ZfsSpec {
        target: t.id(),
        platform: t.platform.clone(),
        arch: t.arch.clone(),
        dataset,
        children,
        script: p.dockerfile.clone(),
        env,
        user,
        timeout: Duration::from_secs(config.zfs.provision_timeout_secs),
        profile,
        smoke: vec![(
            "ocaml -version".into(),
            crate::builders::run::expected_ocaml(t),
        )],
        log: log.to_path_buf(),
        out_dir,
    };
    let out = build::build(&zfs, &spec).await.map_err(|e| e.to_string())?;
    // An earlier image of the same series on this host: also publish the
    // incremental stream from it. It is an optimisation for workers, so a
    // failure here is logged and the full stream is published alone.
    let series_prefix = format!("{}-ocaml-{}.", t.os, t.version.series_tag());
    let mut incremental = None;
    match build::previous_image(&zfs, &spec.dataset, &series_prefix).await {
        Ok(Some(previous)) => match build::incremental(&zfs, &spec, &previous).await {
            Ok(inc) => {
                let pushed = push_incremental(reg, repository, t, &leaf, &inc).await;
                let _ = tokio::fs::remove_file(&inc.stream).await;
                match pushed {
                    Ok(digest) => {
                        tracing::info!(target_id = %t.id(), from = %inc.from, bytes = inc.size, "incremental stream published");
                        incremental = Some(serde_json::json!({
                            "from": inc.from, "digest": digest, "size": inc.size,
                            "from_guids": inc.from_guids,
                        }));
                    }
                    Err(e) => {
                        tracing::warn!(target_id = %t.id(), error = %e, "incremental stream not pushed")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(target_id = %t.id(), error = %e, "incremental stream not built")
            }
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(target_id = %t.id(), error = %e, "looking for an earlier image"),
    }
    let mut ann = BTreeMap::new();
    ann.insert(
        "org.opencontainers.image.version".to_string(),
        t.version.to_string(),
    );
    ann.insert("org.ocaml.kiln.build-key".to_string(), p.key.clone());
    ann.insert(
        "org.ocaml.kiln.immutable-tag".to_string(),
        immutable.to_string(),
    );
    let title = format!("{leaf}.zfs.zst");
    let pushed = artifact::push(
        reg,
        &artifact::ArtifactPush {
            repo: repository,
            file: &out.stream,
            artifact_type: artifact::ZFS_ARTIFACT,
            layer_media_type: artifact::ZFS_LAYER,
            title: &title,
            digest: None,
            uncompressed_sha256: Some(&out.uncompressed_sha256),
            config: serde_json::json!({"os": t.platform, "architecture": t.arch, "layout": out.layout,
                "incremental": incremental.into_iter().collect::<Vec<_>>()}),
            annotations: ann,
        },
    )
    .await
    .map_err(|e| e.to_string());
    let _ = tokio::fs::remove_file(&out.stream).await;
    Ok(pushed?.digest)
}

/// Push an incremental stream as its own artifact; returns its digest.
async fn push_incremental(
    reg: &Registry,
    repository: &str,
    t: &crate::plan::Target,
    leaf: &str,
    inc: &build::Incremental,
) -> Result<String, String> {
    let digest = format!("sha256:{}", inc.sha256);
    let title = format!("{leaf}.from-{}.tar.zst", inc.from);
    let pushed = artifact::push(
        reg,
        &artifact::ArtifactPush {
            repo: repository,
            file: &inc.stream,
            artifact_type: artifact::ZFS_INCREMENTAL_ARTIFACT,
            layer_media_type: artifact::ZFS_INCREMENTAL_LAYER,
            title: &title,
            digest: Some(&digest),
            uncompressed_sha256: None,
            config: serde_json::json!({"os": t.platform, "architecture": t.arch,
                "to": leaf, "from": inc.from, "from_guids": inc.from_guids}),
            annotations: BTreeMap::new(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(pushed.digest)
}
