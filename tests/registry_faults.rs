//! Registry faults on the real registry binary: a connection dropped in the
//! middle of an upload, the registry stopped mid-push, a 429 storm, a
//! manifest whose bytes do not match its digest and a child that is gone.
//! Each runs against a private `docker-registry` (own port and storage, so
//! the shared one is never disturbed) behind a fault-injecting TCP proxy.

mod common;

use kiln::catalogue::Arch;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Mode, PrivateRegistry, Proxy};
use kiln::publish::lockfile::{ArchEntry, ArtifactKind, Entry, Lockfile};
use kiln::registry::index::{self, Platform};
use kiln::registry::{OCI_MANIFEST, PushedHow, Registry, artifact, sha256_digest};
use serde_json::json;

/// Small chunks so that a few MiB make a multi-chunk upload.
const CHUNK: usize = 8 * 1024 * 1024;

fn client(url: &str) -> Registry {
    let mut cfg = kiln::config::Config::defaults(Path::new("/"))
        .unwrap()
        .registry;
    cfg.url = url.to_string();
    let mut reg = Registry::new(&cfg).unwrap();
    reg.max_attempts = 3;
    reg.base_backoff = Duration::from_millis(100);
    reg.chunk_size = CHUNK as u64;
    reg
}

/// Deterministic bytes that do not compress or repeat (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn push_image(reg: &Registry, repo: &str, arch: &str, payload: &str) -> String {
    let cfg = json!({"os": "linux", "architecture": arch, "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"p": payload}}});
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

fn image_entry(repo: &str, digest: &str, arches: &[(&str, &str)], tag: &str) -> Entry {
    Entry {
        kind: ArtifactKind::Image,
        platform: "linux".into(),
        os: "debian-13".into(),
        ocaml: Some("5.5.0".parse().unwrap()),
        variant: None,
        repository: repo.into(),
        tag: tag.into(),
        immutable_tag: format!("{tag}.0-{}", &digest[7..19]),
        aliases: vec![],
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

/// Push a file as an artifact and publish it, as the QEMU and ZFS builders do.
async fn push_and_publish(
    reg: &Registry,
    lockfile: &Path,
    repo: &str,
    file: &Path,
    tag: &str,
) -> Result<String, String> {
    let pushed = artifact::push(
        reg,
        &artifact::ArtifactPush {
            repo,
            file,
            artifact_type: artifact::QCOW2_ARTIFACT,
            layer_media_type: artifact::QCOW2_LAYER,
            title: "disk.qcow2",
            digest: None,
            uncompressed_sha256: None,
            config: json!({"os": "openbsd", "architecture": "amd64"}),
            annotations: BTreeMap::new(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut e = image_entry(repo, &pushed.digest, &[("amd64", &pushed.digest)], tag);
    e.kind = ArtifactKind::Qcow2;
    e.platform = "openbsd".into();
    let required = [Platform::for_arch("openbsd", Arch::Amd64)];
    kiln::publish::publish(reg, lockfile, e, &required, "new")
        .await
        .map_err(|e| e.to_string())?;
    Ok(pushed.digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_mid_upload_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = PrivateRegistry::start(dir.path());
    let proxy = Proxy::start(registry.port).await;
    let reg = client(&proxy.url());
    let size = 5 * CHUNK;
    let data = noise(size, 7);
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &data).unwrap();
    // Cut the connection in the middle of the third chunk.
    proxy.set(Mode::DropAt((2 * CHUNK + 3 * 1024 * 1024) as u64));
    let report = reg
        .push_blob_file_report("faults/resume", &file, None)
        .await
        .unwrap();
    assert_eq!(proxy.state.drops.load(Ordering::SeqCst), 1);
    assert_eq!(report.how, PushedHow::Uploaded);
    assert_eq!(report.digest, sha256_digest(&data));
    assert!(report.resumes >= 1, "{report:?}");
    // Part of the third chunk reached the registry, which (distribution
    // 2.8) then cancels the session: the upload began again and completed.
    assert!(report.restarts <= report.resumes, "{report:?}");
    // Read back around the proxy: the registry holds exactly our bytes.
    let direct = client(&registry.url());
    let back = dir.path().join("back.bin");
    direct
        .pull_blob_to_file("faults/resume", &report.digest, &back)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_restarted_between_chunks_resumes_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = PrivateRegistry::start(dir.path());
    let proxy = Proxy::start(registry.port).await;
    let size = 5 * CHUNK;
    let data = noise(size, 9);
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &data).unwrap();
    // The registry answers the upload start and two chunks, then is gone.
    proxy.set(Mode::RefuseAfterAccepted(3));
    let task = {
        let reg = client(&proxy.url());
        let file = file.clone();
        tokio::spawn(async move {
            reg.push_blob_file_report("faults/restart", &file, None)
                .await
        })
    };
    while proxy.state.refused.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A real restart, same storage and secret, while the client waits.
    registry.kill();
    registry.restart();
    // Out of reach long enough for the chunk's own retries to give up, so
    // the client has to ask the registry where the upload stands.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set(Mode::Pass);
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.digest, sha256_digest(&data));
    assert_eq!((report.resumes, report.restarts), (1, 0), "{report:?}");
    // Resumed at the registry's offset: no byte was sent twice.
    assert_eq!(report.bytes_sent, size as u64, "{report:?}");
    let back = dir.path().join("back.bin");
    client(&registry.url())
        .pull_blob_to_file("faults/restart", &report.digest, &back)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_stopped_mid_push_publishes_nothing_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = PrivateRegistry::start(&dir.path().join("registry"));
    let proxy = Proxy::start(registry.port).await;
    let reg = client(&proxy.url());
    let lockfile = dir.path().join("manifests/lockfile.json");
    // An earlier publication the failed push must leave alone.
    let small = dir.path().join("small.qcow2");
    std::fs::write(&small, noise(4096, 1)).unwrap();
    push_and_publish(
        &reg,
        &lockfile,
        "faults/openbsd",
        &small,
        "openbsd-7.8-ocaml-5.4",
    )
    .await
    .unwrap();
    let before = std::fs::read(&lockfile).unwrap();

    let big = dir.path().join("big.qcow2");
    std::fs::write(&big, noise(6 * CHUNK, 2)).unwrap();
    let start = proxy.state.up_bytes.load(Ordering::SeqCst);
    let task = {
        let (lockfile, big) = (lockfile.clone(), big.clone());
        let reg = client(&proxy.url());
        tokio::spawn(async move {
            push_and_publish(
                &reg,
                &lockfile,
                "faults/openbsd",
                &big,
                "openbsd-7.8-ocaml-5.5",
            )
            .await
        })
    };
    while proxy.state.up_bytes.load(Ordering::SeqCst) < start + 2 * CHUNK as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    registry.kill();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        err.contains("faults/openbsd") || err.contains("127.0.0.1"),
        "the error names what failed: {err}"
    );
    assert_eq!(
        std::fs::read(&lockfile).unwrap(),
        before,
        "lockfile untouched"
    );
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".partial")),
        "no partial files left"
    );

    registry.restart();
    assert!(
        client(&registry.url())
            .head_manifest("faults/openbsd", "openbsd-7.8-ocaml-5.5")
            .await
            .unwrap()
            .is_none(),
        "nothing was tagged"
    );
    let digest = push_and_publish(
        &reg,
        &lockfile,
        "faults/openbsd",
        &big,
        "openbsd-7.8-ocaml-5.5",
    )
    .await
    .unwrap();
    let lock = Lockfile::load(&lockfile).unwrap();
    assert_eq!(
        lock.entries["faults/openbsd:openbsd-7.8-ocaml-5.5"].digest,
        digest
    );
    assert_eq!(lock.entries.len(), 2);
    let scratch = tempfile::tempdir().unwrap();
    let problems = kiln::publish::verify::verify(&reg, &lock, scratch.path()).await;
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_fails_cleanly_honouring_retry_after_then_passes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = PrivateRegistry::start(dir.path());
    let direct = client(&registry.url());
    let proxy = Proxy::start(registry.port).await;
    let repo = "faults/storm";
    let amd = push_image(&direct, repo, "amd64", "storm").await;
    let arm = push_image(&direct, repo, "arm64", "storm").await;
    let both: Vec<Platform> = [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .map(|a| Platform::for_arch("linux", a))
        .collect();
    let idx = index::assemble(
        &direct,
        repo,
        &[amd.clone(), arm.clone()],
        &both,
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let lockfile = dir.path().join("lockfile.json");
    let entry = image_entry(
        repo,
        &idx.digest,
        &[("amd64", &amd), ("arm64", &arm)],
        "debian-13-ocaml-5.5",
    );

    proxy.set(Mode::Throttle { retry_after: 1 });
    // Kiln waits a registry's limit out for at most `max_rate_wait`: here
    // two Retry-Afters, then the third 429 would pass the ceiling.
    let mut limited = client(&proxy.url());
    limited.max_rate_wait = Duration::from_millis(2500);
    let err = kiln::publish::publish(&limited, &lockfile, entry.clone(), &both, "new")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("429") && err.contains("rate limited"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", proxy.port)),
        "names the registry: {err}"
    );
    assert!(
        err.contains("slow down, said the proxy"),
        "the registry's words reach the user: {err}"
    );
    assert!(!lockfile.exists(), "nothing recorded");
    for tag in [entry.tag.as_str(), entry.immutable_tag.as_str()] {
        assert!(
            direct.head_manifest(repo, tag).await.unwrap().is_none(),
            "{tag} not tagged"
        );
    }
    // The client waited as long as Retry-After said, not its own (shorter) backoff.
    let times = proxy.state.throttled.lock().unwrap().clone();
    assert_eq!(times.len(), 3, "tries within the ceiling: {times:?}");
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(950), "{times:?}");
    }

    // A storm that passes: the publication waits it out and completes.
    proxy.state.throttled.lock().unwrap().clear();
    let task = {
        let (lockfile, entry, both) = (lockfile.clone(), entry.clone(), both.clone());
        let reg = client(&proxy.url());
        tokio::spawn(
            async move { kiln::publish::publish(&reg, &lockfile, entry, &both, "new").await },
        )
    };
    while proxy.state.throttled.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.set(Mode::Pass);
    task.await.unwrap().unwrap();
    assert_eq!(Lockfile::load(&lockfile).unwrap().entries.len(), 1);
    assert_eq!(
        direct
            .head_manifest(repo, &entry.tag)
            .await
            .unwrap()
            .unwrap()
            .0,
        idx.digest
    );
}

fn blob_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = &digest[7..];
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_manifest_and_missing_child_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = PrivateRegistry::start(dir.path());
    let reg = client(&registry.url());
    let repo = "faults/bad";
    let both: Vec<Platform> = [Arch::Amd64, Arch::Arm64]
        .into_iter()
        .map(|a| Platform::for_arch("linux", a))
        .collect();
    let amd = push_image(&reg, repo, "amd64", "one").await;
    let arm = push_image(&reg, repo, "arm64", "one").await;
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

    // A child the registry no longer has: a clear error, no tag, no record.
    let arm_hex = &arm[7..];
    let link = registry
        .storage
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_manifests/revisions/sha256")
        .join(arm_hex);
    std::fs::remove_dir_all(&link).unwrap();
    let entry = image_entry(
        repo,
        &idx.digest,
        &[("amd64", &amd), ("arm64", &arm)],
        "debian-13-ocaml-5.5",
    );
    let err = kiln::publish::publish(&reg, &lockfile, entry.clone(), &both, "new")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&arm) && err.contains("missing"), "{err}");
    assert!(!lockfile.exists());
    assert!(reg.head_manifest(repo, &entry.tag).await.unwrap().is_none());

    // A manifest whose bytes no longer match its digest (same length, still
    // JSON, one digit changed): reading it fails, naming both digests, and
    // an index over it is never assembled.
    let amd_blob = blob_path(&registry.storage, &amd);
    let mut bytes = std::fs::read(&amd_blob).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at = text.find("\"size\":").unwrap() + "\"size\":".len();
    bytes[at] = if bytes[at] == b'9' {
        b'8'
    } else {
        bytes[at] + 1
    };
    std::fs::write(&amd_blob, &bytes).unwrap();
    let err = reg.get_manifest(repo, &amd).await.unwrap_err().to_string();
    assert!(
        err.contains("digest mismatch") && err.contains(&amd),
        "{err}"
    );
    let arm2 = push_image(&reg, repo, "arm64", "two").await;
    let err = index::assemble(&reg, repo, &[amd.clone(), arm2], &both, &BTreeMap::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("digest mismatch") && err.contains(&amd),
        "{err}"
    );
    assert!(!lockfile.exists());
}
