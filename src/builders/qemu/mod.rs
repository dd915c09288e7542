//! OpenBSD qcow2 disk images built unattended under QEMU.

pub mod build;
pub mod img;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::registry::{Registry, artifact};

/// Placeholders rendered into recipes at plan time and replaced by the
/// build's own HTTP server address, so the ephemeral port never enters the
/// build key.
pub const HTTP_BASE: &str = "@KILN_HTTP_BASE@";
pub const HTTP_HOST: &str = "@KILN_HTTP_HOST@";

/// `auto` → KVM when /dev/kvm opens, TCG otherwise.
pub fn accel(config: &Config) -> String {
    match config.qemu.accel.as_str() {
        "auto" if crate::doctor::kvm_usable() => "kvm".into(),
        "auto" => "tcg".into(),
        other => other.to_string(),
    }
}

/// Build one qemu target of a plan into a verified, pushed OCI artifact;
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
    let var = |k: &str| t.vars.get(k).cloned();
    let short = &p.key.trim_start_matches("sha256:")[..12];
    let name = format!("{}-{}-ocaml-{}-{short}", t.os, t.arch, t.version);
    let (boot, files, marker) = match var("boot").as_deref() {
        Some("kernel") => {
            let dir = config.state_dir.join("fixtures/qemu");
            let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
            if !kernel.exists() || !initrd.exists() {
                return Err(format!(
                    "{}: guest kernel/initramfs missing in {} (run scripts/qemu-fixture.sh)",
                    t.id(),
                    dir.display()
                ));
            }
            let boot = build::Boot::Kernel {
                kernel,
                initrd,
                install_append: "console=ttyS0 quiet panic=1 kiln.mode=install kiln.url={url}"
                    .into(),
                verify_append: "console=ttyS0 quiet panic=1 kiln.mode=verify".into(),
            };
            let files =
                BTreeMap::from([("install.sh".to_string(), p.dockerfile.clone().into_bytes())]);
            (boot, files, Some("KILN-INSTALL: ok".to_string()))
        }
        _ => {
            // OpenBSD: PXE boot into auto_install, which fetches install.conf
            // and the sets (with the site set) from our HTTP server.
            let release = var("release").unwrap_or_default();
            let tftp = config.state_dir.join("openbsd").join(&release).join("tftp");
            if !tftp.join("auto_install").exists() {
                return Err(format!(
                    "{}: OpenBSD {release} boot files not found in {}: copy pxeboot (as auto_install) and bsd.rd there from the mirror",
                    t.id(),
                    tftp.display()
                ));
            }
            let mut files = BTreeMap::new();
            for r in &t.recipes {
                let text =
                    std::fs::read_to_string(r).map_err(|e| format!("{}: {e}", r.display()))?;
                let mut vars = t.vars.clone();
                vars.insert("http_base".into(), HTTP_BASE.into());
                vars.insert("http_host".into(), HTTP_HOST.into());
                vars.insert(
                    "opam_repository_commit".into(),
                    p.inputs
                        .get("opam_repository_commit")
                        .cloned()
                        .unwrap_or_default(),
                );
                let rendered =
                    crate::plan::template::render(&r.display().to_string(), &text, &vars)
                        .map_err(|e| e.to_string())?;
                let name = r
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("recipe")
                    .to_string();
                files.insert(name, rendered.into_bytes());
            }
            (
                build::Boot::Pxe {
                    tftp_dir: tftp,
                    bootfile: "auto_install".into(),
                },
                files,
                None,
            )
        }
    };
    let img = img::Img::new(&config.qemu.img);
    let spec = build::QemuSpec {
        target: t.id(),
        system: config.qemu.system.clone(),
        accel: var("accel").unwrap_or_else(|| accel(config)),
        memory_mib: var("memory_mib")
            .and_then(|m| m.parse().ok())
            .unwrap_or(1024),
        cpus: var("cpus").and_then(|m| m.parse().ok()).unwrap_or(2),
        disk_size: var("disk_size").unwrap_or_else(|| "12G".into()),
        boot,
        files,
        install_marker: marker,
        verify_expect: crate::builders::run::expected_ocaml(t),
        timeout: Duration::from_secs(config.qemu.boot_timeout_secs),
        log: log.to_path_buf(),
        work_root: config.work_dir().join("qemu"),
        // Unique per build: parallel builds of the same target never share a path.
        output: config.work_dir().join("qemu-out").join(format!(
            "{name}-{}-{}.qcow2",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        )),
    };
    let out = build::build(&img, &spec).await.map_err(|e| e.to_string())?;
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
    ann.insert("org.ocaml.kiln.sha256".to_string(), out.sha256.clone());
    let title = format!("{name}.qcow2");
    let digest = format!("sha256:{}", out.sha256);
    let pushed = artifact::push(
        reg,
        &artifact::ArtifactPush {
            repo: repository,
            file: &out.path,
            artifact_type: artifact::QCOW2_ARTIFACT,
            layer_media_type: artifact::QCOW2_LAYER,
            title: &title,
            digest: Some(&digest),
            uncompressed_sha256: None,
            config: serde_json::json!({"os": t.platform, "architecture": t.arch,
                "disk": {"format": "qcow2", "virtual_size": out.virtual_size, "sha256": out.sha256}}),
            annotations: ann,
        },
    )
    .await
    .map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&out.path);
    Ok(pushed?.digest)
}
