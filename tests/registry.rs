//! The registry client, index assembly, artifacts and publication against
//! the real registry (127.0.0.1:5000), checked with skopeo.

use kiln::catalogue::Arch;
use std::collections::BTreeMap;
use std::process::Command;

use kiln::publish::lockfile::{ArchEntry, ArtifactKind, Entry, Lockfile};
use kiln::registry::index::{self, Platform};
use kiln::registry::{OCI_MANIFEST, PushedHow, Registry, artifact, sha256_digest};
use serde_json::json;

mod common;
use common::Bounded;

fn registry() -> Registry {
    let cfg = kiln::config::Config::defaults(std::path::Path::new("/")).unwrap();
    Registry::new(&cfg.registry).unwrap()
}

/// A repository of the test's own, removed from the registry when the
/// value drops (failed test or not).
struct Repo {
    name: String,
    _gone: common::registry::Published,
}

impl std::ops::Deref for Repo {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

fn unique(name: &str) -> Repo {
    unique_at("http://127.0.0.1:5000", name)
}

/// A repository of the test's own in the registry at `url`.
fn unique_at(url: &str, name: &str) -> Repo {
    let name = format!(
        "kiln-test/{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    Repo {
        _gone: common::registry::Published::repository(url, &name),
        name,
    }
}

fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://127.0.0.1:5000/{reference}"),
        ])
        .output_within(common::LIMIT)
        .unwrap();
    common::ok_json(out)
}

/// Push a minimal single-platform image manifest; returns its digest.
async fn push_image(
    reg: &Registry,
    repo: &str,
    os: &str,
    arch: &str,
    variant: Option<&str>,
    payload: &str,
) -> String {
    let mut cfg = json!({"os": os, "architecture": arch, "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"p": payload}}});
    if let Some(v) = variant {
        cfg["variant"] = json!(v);
    }
    let (cd, cs) = reg
        .push_blob(repo, serde_json::to_vec(&cfg).unwrap().into())
        .await
        .unwrap();
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs}, "layers": []});
    let bytes = serde_json::to_vec(&m).unwrap();
    reg.put_manifest(repo, &sha256_digest(&bytes), &bytes, OCI_MANIFEST)
        .await
        .unwrap()
}

#[tokio::test]
async fn blobs_round_trip_mount_and_chunks() {
    let reg = registry();
    reg.ping().await.unwrap();
    let repo = unique("blobs");
    let (d, n) = reg
        .push_blob(&repo, bytes::Bytes::from_static(b"hello kiln"))
        .await
        .unwrap();
    assert_eq!(n, 10);
    assert_eq!(reg.blob_size(&repo, &d).await.unwrap(), Some(10));
    assert_eq!(reg.pull_blob(&repo, &d).await.unwrap(), b"hello kiln");
    // Cross-repository mount: no upload needed.
    let other = unique("blobs-other");
    assert!(reg.mount_blob(&other, &d, &repo).await.unwrap());
    assert_eq!(reg.blob_size(&other, &d).await.unwrap(), Some(10));
    // A file larger than one chunk streams in several PATCHes.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let mut reg = reg;
    reg.chunk_size = 1 << 20;
    let data: Vec<u8> = (0..((2 << 20) + 12345))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    let (bd, bn) = reg.push_blob_file(&repo, &big, None).await.unwrap();
    assert_eq!(bd, sha256_digest(&data));
    assert_eq!(bn as usize, data.len());
    // Mount tried before any upload: from a repository without the blob the
    // registry answers 202 and the upload goes ahead; from one with it,
    // nothing is sent.
    let (third, nowhere) = (unique("blobs-third"), unique("nowhere"));
    let r = reg
        .push_blob_file_report(&third, &big, Some(&nowhere))
        .await
        .unwrap();
    assert_eq!((r.how, r.bytes_sent), (PushedHow::Uploaded, bn));
    let fourth = unique("blobs-fourth");
    let r = reg
        .push_blob_file_report(&fourth, &big, Some(&repo))
        .await
        .unwrap();
    assert_eq!((r.how, r.bytes_sent), (PushedHow::Mounted, 0));
    let back = dir.path().join("back.bin");
    reg.pull_blob_to_file(&repo, &bd, &back).await.unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // Asking for a digest the repository does not have fails cleanly, leaving no file.
    let missing = sha256_digest(b"nope");
    assert!(
        reg.pull_blob_to_file(&repo, &missing, &dir.path().join("x"))
            .await
            .is_err()
    );
    assert!(!dir.path().join("x").exists() && !dir.path().join("x.partial").exists());
}

#[tokio::test]
async fn index_assembly_keeps_attestations_and_refuses_incomplete_sets() {
    let reg = registry();
    let repo = unique("index");
    let amd = push_image(&reg, &repo, "linux", "amd64", None, "a").await;
    let arm = push_image(&reg, &repo, "linux", "arm64", Some("v8"), "b").await;
    let armv7 = push_image(&reg, &repo, "linux", "arm", Some("v7"), "c").await;
    // A BuildKit-style source: an index with one platform and one attestation.
    let att = push_image(&reg, &repo, "unknown", "unknown", None, "att").await;
    let src_index = json!({"schemaVersion": 2, "mediaType": kiln::registry::OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": armv7, "size": reg.get_manifest(&repo, &armv7).await.unwrap().bytes.len(), "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
        {"mediaType": OCI_MANIFEST, "digest": att, "size": reg.get_manifest(&repo, &att).await.unwrap().bytes.len(), "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": armv7}}]});
    let sb = serde_json::to_vec(&src_index).unwrap();
    let src = reg
        .put_manifest(&repo, &sha256_digest(&sb), &sb, kiln::registry::OCI_INDEX)
        .await
        .unwrap();
    let required: Vec<Platform> = ["amd64", "arm64", "arm32v7"]
        .iter()
        .map(|a| Platform::for_arch("linux", a.parse().unwrap()))
        .collect();
    let mut ann = BTreeMap::new();
    ann.insert(
        "org.opencontainers.image.version".to_string(),
        "5.5.0".to_string(),
    );
    ann.insert(
        "org.ocaml.kiln.build-key".to_string(),
        "sha256:abc".to_string(),
    );
    let out = index::assemble(
        &reg,
        &repo,
        &[amd.clone(), arm.clone(), src.clone()],
        &required,
        &ann,
    )
    .await
    .unwrap();
    assert_eq!(out.platforms.len(), 3);
    assert_eq!(out.attestations, 1);
    // skopeo, the reference client, reads it back by digest.
    let raw = skopeo_raw(&format!("{repo}@{}", out.digest));
    let entries = raw["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(raw["annotations"]["org.ocaml.kiln.build-key"], "sha256:abc");
    assert!(
        entries
            .iter()
            .any(|e| e["platform"]["architecture"] == "unknown")
    );
    // Missing arch: refused, nothing pushed under that set.
    let more: Vec<Platform> = ["amd64", "arm64", "arm32v7", "s390x"]
        .iter()
        .map(|a| Platform::for_arch("linux", a.parse().unwrap()))
        .collect();
    let e = index::assemble(&reg, &repo, &[amd.clone(), arm.clone(), src], &more, &ann)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing [linux/s390x]"), "{e}");
    // An attestation alone never counts as a platform.
    let e = index::assemble(&reg, &repo, &[amd, att], &required, &ann)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[tokio::test]
async fn artifacts_round_trip() {
    let reg = registry();
    let repo = unique("artifact");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.qcow2.zst");
    std::fs::write(&file, vec![42u8; 100_000]).unwrap();
    let pushed = artifact::push(
        &reg,
        &artifact::ArtifactPush {
            repo: &repo,
            file: &file,
            artifact_type: artifact::QCOW2_ARTIFACT,
            layer_media_type: artifact::QCOW2_LAYER,
            title: "openbsd-7.9-amd64-ocaml-5.5.0.qcow2",
            digest: None,
            uncompressed_sha256: Some("00"),
            config: json!({"os": "openbsd", "architecture": "amd64"}),
            annotations: BTreeMap::new(),
        },
    )
    .await
    .unwrap();
    let raw = skopeo_raw(&format!("{repo}@{}", pushed.digest));
    assert_eq!(raw["artifactType"], artifact::QCOW2_ARTIFACT);
    assert_eq!(raw["annotations"]["org.ocaml.kiln.size"], "100000");
    let dest = dir.path().join("pulled");
    let pulled = artifact::pull(&reg, &repo, &pushed.digest, &dest)
        .await
        .unwrap();
    assert_eq!(pulled.artifact_type, artifact::QCOW2_ARTIFACT);
    assert_eq!(std::fs::read(&dest).unwrap(), vec![42u8; 100_000]);
    // Without os/architecture the artifact could not join an index: refused.
    let e = artifact::push(
        &reg,
        &artifact::ArtifactPush {
            repo: &repo,
            file: &file,
            artifact_type: "x",
            layer_media_type: "y",
            title: "t",
            digest: None,
            uncompressed_sha256: None,
            config: json!({}),
            annotations: BTreeMap::new(),
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("os and architecture"));
}

fn entry(repo: &str, digest: &str, arches: &[(&str, &str)], tag: &str) -> Entry {
    Entry {
        kind: ArtifactKind::Image,
        platform: "linux".into(),
        os: "debian-13".into(),
        ocaml: Some("5.5.0".parse().unwrap()),
        variant: None,
        repository: repo.into(),
        tag: tag.into(),
        immutable_tag: format!("{tag}.0-{}", &digest[7..19]),
        aliases: vec!["debian-ocaml-5.5".into()],
        digest: digest.into(),
        arches: arches
            .iter()
            .map(|(a, d)| {
                (
                    a.parse::<Arch>().unwrap(),
                    ArchEntry {
                        digest: d.to_string(),
                        build_key: "k".into(),
                        size: None,
                    },
                )
            })
            .collect(),
        build_key: "k".into(),
        inputs: BTreeMap::new(),
        published_at: chrono::Utc::now(),
        verified_at: None,
        history: vec![],
        adopted: None,
        repairs: vec![],
    }
}

#[tokio::test]
async fn publication_order_and_refusal() {
    let reg = registry();
    let repo = unique("publish");
    let dir = tempfile::tempdir().unwrap();
    let lockfile = dir.path().join("lockfile.json");
    let amd = push_image(&reg, &repo, "linux", "amd64", None, "1").await;
    let arm = push_image(&reg, &repo, "linux", "arm64", None, "1").await;
    let both: Vec<Platform> = [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .map(|a| Platform::for_arch("linux", a))
        .collect();
    let idx = index::assemble(
        &reg,
        &repo,
        &[amd.clone(), arm.clone()],
        &both,
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let e = entry(
        &repo,
        &idx.digest,
        &[("amd64", &amd), ("arm64", &arm)],
        "debian-13-ocaml-5.5",
    );
    let change = kiln::publish::publish(&reg, &lockfile, e.clone(), &both, "new")
        .await
        .unwrap();
    assert_eq!(change, kiln::publish::lockfile::Change::Added);
    for tag in [
        "debian-13-ocaml-5.5",
        "debian-ocaml-5.5",
        e.immutable_tag.as_str(),
    ] {
        assert_eq!(
            reg.head_manifest(&repo, tag).await.unwrap().unwrap().0,
            idx.digest,
            "{tag}"
        );
    }
    let lock = Lockfile::load(&lockfile).unwrap();
    assert!(lock.entries[&e.key()].verified_at.is_some());
    // Republishing the same digest: unchanged, no churn.
    let change = kiln::publish::publish(&reg, &lockfile, e.clone(), &both, "weekly")
        .await
        .unwrap();
    assert_eq!(change, kiln::publish::lockfile::Change::Unchanged);

    // An index missing a required arch: verification fails, the moving tag
    // does not move and the lockfile is untouched.
    let amd2 = push_image(&reg, &repo, "linux", "amd64", None, "2").await;
    let only = vec![Platform::for_arch("linux", Arch::Amd64)];
    let partial = index::assemble(
        &reg,
        &repo,
        std::slice::from_ref(&amd2),
        &only,
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let before = std::fs::read(&lockfile).unwrap();
    let mut bad = entry(
        &repo,
        &partial.digest,
        &[("amd64", &amd2)],
        "debian-13-ocaml-5.5",
    );
    bad.immutable_tag = "debian-13-ocaml-5.5.0-partial".into();
    let err = kiln::publish::publish(&reg, &lockfile, bad, &both, "rebuild")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("required"), "{err}");
    assert_eq!(
        reg.head_manifest(&repo, "debian-13-ocaml-5.5")
            .await
            .unwrap()
            .unwrap()
            .0,
        idx.digest
    );
    assert_eq!(std::fs::read(&lockfile).unwrap(), before);
    // An immutable tag never moves.
    let mut moved = e.clone();
    moved.digest = partial.digest.clone();
    let err = kiln::publish::publish(&reg, &lockfile, moved, &only, "x")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("immutable tags never move"),
        "{err}"
    );
}

/// Against a registry of its own, whose storage the test corrupts.
#[tokio::test]
async fn verify_names_problems_and_rollback_moves_back() {
    let storage = tempfile::tempdir().unwrap();
    let private = common::PrivateRegistry::start(storage.path());
    let mut cfg = kiln::config::Config::defaults(std::path::Path::new("/")).unwrap();
    cfg.registry.url = private.url();
    let reg = Registry::new(&cfg.registry).unwrap();
    let repo = unique_at(&private.url(), "verify");
    let dir = tempfile::tempdir().unwrap();
    let lockfile = dir.path().join("lockfile.json");
    let both: Vec<Platform> = [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .map(|a| Platform::for_arch("linux", a))
        .collect();
    let mut digests = Vec::new();
    for round in ["one", "two"] {
        let amd = push_image(
            &reg,
            &repo,
            "linux",
            "amd64",
            None,
            &format!("{repo}-{round}"),
        )
        .await;
        let arm = push_image(
            &reg,
            &repo,
            "linux",
            "arm64",
            None,
            &format!("{repo}-{round}"),
        )
        .await;
        let idx = index::assemble(
            &reg,
            &repo,
            &[amd.clone(), arm.clone()],
            &both,
            &BTreeMap::new(),
        )
        .await
        .unwrap();
        let mut e = entry(
            &repo,
            &idx.digest,
            &[("amd64", &amd), ("arm64", &arm)],
            "debian-13-ocaml-5.5",
        );
        e.build_key = format!("key-{round}");
        kiln::publish::publish(&reg, &lockfile, e, &both, round)
            .await
            .unwrap();
        digests.push(idx.digest);
    }
    let lock = Lockfile::load(&lockfile).unwrap();
    assert!(
        kiln::publish::verify::verify(&reg, &lock, dir.path())
            .await
            .is_empty()
    );
    // Roll back: tags and lockfile move to the first digest, history says why.
    let key = format!("{repo}:debian-13-ocaml-5.5");
    let e = kiln::publish::verify::rollback(&reg, &lockfile, &key, None, "bad compiler")
        .await
        .unwrap();
    assert_eq!(e.digest, digests[0]);
    assert_eq!(e.history[0].digest, digests[1]);
    assert_eq!(e.history[0].replaced_because, "rollback: bad compiler");
    assert_eq!(
        reg.head_manifest(&repo, "debian-13-ocaml-5.5")
            .await
            .unwrap()
            .unwrap()
            .0,
        digests[0]
    );
    assert_eq!(
        reg.head_manifest(&repo, "debian-ocaml-5.5")
            .await
            .unwrap()
            .unwrap()
            .0,
        digests[0]
    );
    let lock = Lockfile::load(&lockfile).unwrap();
    let problems = kiln::publish::verify::verify(&reg, &lock, dir.path()).await;
    // The immutable tag of the rolled-back entry still names the newer
    // build: that one difference, and nothing else.
    let immutable = &lock.entries[&key].immutable_tag;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].problem.contains(&format!("tag {immutable}"))
            && problems[0].problem.contains(&digests[1]),
        "{problems:?}"
    );
    // Rolling back to a digest not in the history is refused.
    assert!(
        kiln::publish::verify::rollback(&reg, &lockfile, &key, Some("sha256:00"), "x")
            .await
            .is_err()
    );

    // A blob corrupted on the registry's disk: `verify --deep` names it.
    let config_digest = {
        let m = reg
            .get_manifest(&repo, &lock.entries[&key].arches[&Arch::Amd64].digest)
            .await
            .unwrap();
        m.json().unwrap()["config"]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let hexd = &config_digest[7..];
    let blob = private
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hexd[..2])
        .join(hexd)
        .join("data");
    assert!(blob.exists(), "{}", blob.display());
    let original = std::fs::read(&blob).unwrap();
    let mut corrupt = original.clone();
    corrupt[0] ^= 0xff;
    std::fs::write(&blob, &corrupt).unwrap();
    let deep = kiln::registry::Depth::Deep;
    let problems = kiln::publish::verify::verify_at(&reg, &lock, dir.path(), deep).await;
    std::fs::write(&blob, &original).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.problem.contains(&config_digest) && p.problem.contains("mismatch")),
        "{problems:?}"
    );
}
