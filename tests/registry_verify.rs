//! `kiln verify` is cheap by default and thorough on demand, against the
//! real registry binary (private, behind nginx logging every request):
//! the default checks the manifest graph and HEADs every blob — no blob
//! is downloaded, a missing blob is named — while `Depth::Deep` (`kiln
//! verify --deep`) downloads and hashes every byte and names a blob whose
//! content was corrupted on the registry's disk.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::PrivateRegistry;
use common::nginx::Nginx;
use kiln::catalogue::Arch;
use kiln::publish::lockfile::Lockfile;
use kiln::publish::verify::verify_at;
use kiln::registry::index::{self, Platform};
use kiln::registry::{Depth, OCI_LAYER_GZIP, OCI_MANIFEST, Registry, sha256_digest};
use serde_json::json;

fn blob_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = &digest[7..];
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// An image with a config and one 64 KiB layer; (manifest, layer) digests.
async fn push_image(reg: &Registry, repo: &str, arch: &str) -> (String, String) {
    let layer: Vec<u8> = (0..65536u32)
        .map(|i| (i * 7 + arch.len() as u32) as u8)
        .collect();
    let (ld, ls) = reg.push_blob(repo, layer.into()).await.unwrap();
    let cfg = json!({"os": "linux", "architecture": arch,
        "rootfs": {"type": "layers", "diff_ids": [ld]}});
    let (cd, cs) = reg
        .push_blob(repo, serde_json::to_vec(&cfg).unwrap().into())
        .await
        .unwrap();
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": ld, "size": ls}]});
    let bytes = serde_json::to_vec(&m).unwrap();
    let d = reg
        .put_manifest(repo, &sha256_digest(&bytes), &bytes, OCI_MANIFEST)
        .await
        .unwrap();
    (d, ld)
}

fn blob_gets(n: &Nginx) -> usize {
    n.log()
        .iter()
        .filter(|l| l.method == "GET" && l.uri.contains("/blobs/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_heads_blobs_by_default_and_deep_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let registry = PrivateRegistry::start(&dir.path().join("registry"));
    let nginx = Nginx::start(&dir.path().join("nginx"), registry.port, 1);
    let mut cfg = kiln::config::Config::defaults(Path::new("/"))
        .unwrap()
        .registry;
    cfg.url = nginx.url();
    let reg = Registry::new(&cfg).unwrap();
    let repo = "verify/depth";
    let (amd, amd_layer) = push_image(&reg, repo, "amd64").await;
    let (arm, arm_layer) = push_image(&reg, repo, "arm64").await;
    let both: Vec<Platform> = [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .map(|a| Platform::for_arch("linux", a))
        .collect();
    let idx = index::assemble(
        &reg,
        repo,
        &[amd.clone(), arm.clone()],
        &both,
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let lockfile = dir.path().join("lockfile.json");
    let mut entry = kiln::publish::lockfile::Entry::from_record(
        kiln::publish::lockfile::EntryRecord {
            kind: kiln::publish::lockfile::ArtifactKind::Image,
            platform: "linux".into(),
            os: "debian-13".into(),
            ocaml: Some("5.5.0".parse().unwrap()),
            variant: None,
            tag: "debian-13-ocaml-5.5".into(),
            immutable_tag: "debian-13-ocaml-5.5.0-0123456789ab".into(),
            aliases: vec![],
            build_key: "key".into(),
            arch_keys: [
                (Arch::Amd64, "k1".to_string()),
                (Arch::Arm64, "k2".to_string()),
            ]
            .into(),
            inputs: BTreeMap::new(),
        },
        repo,
        &idx.digest,
        &[(Arch::Amd64, amd.clone()), (Arch::Arm64, arm.clone())].into(),
        chrono::Utc::now(),
    );
    entry.aliases.clear();
    kiln::publish::publish(&reg, &lockfile, entry, &both, "new")
        .await
        .unwrap();
    let lock = Lockfile::load(&lockfile).unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // Cheap: clean, and not one blob downloaded.
    let gets = blob_gets(&nginx);
    let problems = verify_at(&reg, &lock, scratch.path(), Depth::Cheap).await;
    assert_eq!(problems, vec![]);
    assert_eq!(blob_gets(&nginx), gets, "the cheap check downloaded blobs");
    // Deep: every blob (2 configs, 2 layers) read.
    let problems = verify_at(&reg, &lock, scratch.path(), Depth::Deep).await;
    assert_eq!(problems, vec![]);
    assert_eq!(blob_gets(&nginx), gets + 4);

    // A layer corrupted on disk (same size): only the deep check sees it.
    let path = blob_path(&registry.storage, &amd_layer);
    let original = std::fs::read(&path).unwrap();
    let mut bad = original.clone();
    bad[100] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(
        verify_at(&reg, &lock, scratch.path(), Depth::Cheap).await,
        vec![]
    );
    let deep = verify_at(&reg, &lock, scratch.path(), Depth::Deep).await;
    assert!(
        deep.iter()
            .any(|p| p.problem.contains(&amd_layer) && p.problem.contains("mismatch")),
        "{deep:?}"
    );
    std::fs::write(&path, &original).unwrap();

    // A layer gone from the registry's storage: the cheap check names it.
    std::fs::remove_file(blob_path(&registry.storage, &arm_layer)).unwrap();
    let cheap = verify_at(&reg, &lock, scratch.path(), Depth::Cheap).await;
    assert!(
        cheap.iter().any(|p| p.problem.contains(&arm_layer)),
        "{cheap:?}"
    );
}
