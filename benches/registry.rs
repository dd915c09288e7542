//! Registry benchmark, measured against the reference tools in the same run:
//!
//! (a) assembling 50 five-arch indexes, Kiln against `docker manifest
//!     create` + `docker manifest push` over the same sources;
//! (b) pushing a 1 GiB artifact, Kiln against `skopeo copy` of the same
//!     kind of file laid out as an OCI directory;
//! (c) re-publishing an already-present 1 GiB blob under another
//!     repository (cross-repository mount), in milliseconds.
//!
//! Needs the services (`bash scripts/services.sh up`: registry, docker CLI,
//! skopeo). Run: `cargo bench --bench registry`. KILN_BENCH_INDEXES and
//! KILN_BENCH_ARTIFACT_MIB shrink the run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kiln::registry::index::{self, Platform};
use kiln::registry::{DOCKER_MANIFEST, PushedHow, Registry, artifact, sha256_digest};
use serde_json::json;

const HOST: &str = "127.0.0.1:5000";
const ARCHES: [&str; 5] = ["amd64", "arm64", "ppc64le", "s390x", "riscv64"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A minimal single-arch image (Docker schema 2, which every tool reads).
async fn push_image(reg: &Registry, repo: &str, arch: &str, n: usize) -> anyhow::Result<String> {
    let cfg = json!({"os": "linux", "architecture": arch, "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"bench": n.to_string()}}});
    let (cd, cs) = reg
        .push_blob(repo, serde_json::to_vec(&cfg)?.into())
        .await?;
    let m = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": cs}, "layers": []});
    let bytes = serde_json::to_vec(&m)?;
    Ok(reg
        .put_manifest(repo, &sha256_digest(&bytes), &bytes, DOCKER_MANIFEST)
        .await?)
}

/// Write `mib` MiB of incompressible bytes.
fn noise_file(path: &Path, mib: usize, seed: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn indexes(reg: &Registry, n: usize, tag: &str) -> anyhow::Result<()> {
    let repo = format!("bench/index-{tag}");
    println!("(a) {n} five-arch indexes in {HOST}/{repo}");
    let mut sets: Vec<Vec<String>> = Vec::new();
    for i in 0..n {
        let mut set = Vec::new();
        for a in ARCHES {
            set.push(push_image(reg, &repo, a, i).await?);
        }
        sets.push(set);
    }
    let required: Vec<Platform> = ARCHES
        .iter()
        .map(|a| Platform::for_arch("linux", a.parse().expect("known arch")))
        .collect();

    // docker manifest create + push, one index after another as a release
    // script does; its own config dir so nothing leaks into ~/.docker.
    let docker_cfg = tempfile::tempdir()?;
    let t = Instant::now();
    for (i, set) in sets.iter().enumerate() {
        let target = format!("{HOST}/{repo}:docker-{i}");
        let mut create = Command::new("docker");
        create.env("DOCKER_CONFIG", docker_cfg.path()).args([
            "manifest",
            "create",
            "--insecure",
            &target,
        ]);
        for d in set {
            create.arg(format!("{HOST}/{repo}@{d}"));
        }
        run(&mut create)?;
        run(Command::new("docker")
            .env("DOCKER_CONFIG", docker_cfg.path())
            .args(["manifest", "push", "--insecure", "--purge", &target]))?;
    }
    let docker = t.elapsed();

    // Kiln, one after another, then eight at a time (as `kiln build` does).
    let assemble_and_tag = |i: usize, set: Vec<String>, prefix: &'static str| {
        let (repo, required) = (repo.clone(), required.clone());
        async move {
            let mut ann = BTreeMap::new();
            ann.insert(
                "org.opencontainers.image.version".to_string(),
                format!("{prefix}-{i}"),
            );
            let a = index::assemble(reg, &repo, &set, &required, &ann).await?;
            reg.put_manifest(
                &repo,
                &format!("{prefix}-{i}"),
                &a.bytes,
                kiln::registry::OCI_INDEX,
            )
            .await?;
            Ok::<_, anyhow::Error>(())
        }
    };
    let t = Instant::now();
    for (i, set) in sets.iter().enumerate() {
        assemble_and_tag(i, set.clone(), "kiln-seq").await?;
    }
    let kiln_seq = t.elapsed();
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(
        sets.iter()
            .enumerate()
            .map(|(i, s)| assemble_and_tag(i, s.clone(), "kiln-par")),
    )
    .buffer_unordered(8)
    .collect()
    .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let kiln_par = t.elapsed();

    // Both produced the same platform sets (read with docker's index).
    let theirs = reg.get_manifest(&repo, "docker-0").await?.json()?;
    let ours = reg.get_manifest(&repo, "kiln-par-0").await?.json()?;
    let count = |v: &serde_json::Value| v["manifests"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(
        count(&theirs) == 5 && count(&ours) == 5,
        "both indexes carry 5 platforms"
    );

    println!("    docker manifest create+push  {:>9}", secs(docker));
    println!(
        "    kiln, one at a time           {:>9}   ratio {:.1}x",
        secs(kiln_seq),
        docker.as_secs_f64() / kiln_seq.as_secs_f64()
    );
    println!(
        "    kiln, 8 concurrent            {:>9}   ratio {:.1}x",
        secs(kiln_par),
        docker.as_secs_f64() / kiln_par.as_secs_f64()
    );
    Ok(())
}

async fn artifacts(reg: &Registry, mib: usize, tag: &str) -> anyhow::Result<()> {
    println!("(b) a {mib} MiB artifact");
    let dir = tempfile::Builder::new().prefix("kiln-bench-").tempdir_in(
        std::env::var("KILN_BENCH_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )?;
    // Seeds new each run: no tool may find its blob already in the
    // registry (skopeo keeps a blob-location cache and would mount it).
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let ours = dir.path().join("ours.qcow2");
    noise_file(&ours, mib, seed)?;
    // skopeo gets a different file of the same size, so neither run finds
    // the other's blob already in the registry.
    let layout = dir.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    let theirs = dir.path().join("theirs.qcow2");
    noise_file(&theirs, mib, seed ^ 0x5a5a)?;
    let (layer, size) = kiln::registry::sha256_file(&theirs).await?;
    std::fs::rename(&theirs, layout.join("blobs/sha256").join(&layer))?;
    let write_blob = |bytes: &[u8]| -> anyhow::Result<(String, usize)> {
        let d = sha256_digest(bytes);
        std::fs::write(layout.join("blobs/sha256").join(&d[7..]), bytes)?;
        Ok((d, bytes.len()))
    };
    let (cd, cs) = write_blob(br#"{"os":"openbsd","architecture":"amd64"}"#)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": kiln::registry::OCI_MANIFEST,
        "artifactType": artifact::QCOW2_ARTIFACT,
        "config": {"mediaType": artifact::CONFIG, "digest": cd, "size": cs},
        "layers": [{"mediaType": artifact::QCOW2_LAYER, "digest": format!("sha256:{layer}"), "size": size}],
    }))?;
    let (md, ms) = write_blob(&manifest)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": kiln::registry::OCI_MANIFEST, "digest": md, "size": ms,
             "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))?,
    )?;

    // Kiln twice: as the QEMU builder pushes (it hashed the disk as it
    // wrote it, like the OCI layout skopeo reads), and hashing first.
    let ours2 = dir.path().join("ours2.qcow2");
    noise_file(&ours2, mib, seed ^ 0xa5a5)?;
    let known = {
        let (d, _) = kiln::registry::sha256_file(&ours).await?;
        format!("sha256:{d}")
    };
    let push = |repo: String, file: std::path::PathBuf, digest: Option<String>| async move {
        artifact::push(
            reg,
            &artifact::ArtifactPush {
                repo: &repo,
                file: &file,
                artifact_type: artifact::QCOW2_ARTIFACT,
                layer_media_type: artifact::QCOW2_LAYER,
                title: "disk.qcow2",
                digest: digest.as_deref(),
                uncompressed_sha256: None,
                config: json!({"os": "openbsd", "architecture": "amd64"}),
                annotations: BTreeMap::new(),
            },
        )
        .await
    };
    let kiln_repo = format!("bench/artifact-kiln-{tag}");
    let t = Instant::now();
    let pushed = push(kiln_repo.clone(), ours.clone(), Some(known)).await?;
    let kiln = t.elapsed();
    let t = Instant::now();
    push(format!("bench/artifact-kiln-hashing-{tag}"), ours2, None).await?;
    let kiln_hashing = t.elapsed();

    let t = Instant::now();
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:bench", layout.display()),
        &format!("docker://{HOST}/bench/artifact-skopeo-{tag}:bench"),
    ]))?;
    let skopeo = t.elapsed();
    let mbps = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "    skopeo copy (OCI layout)      {:>9}   {:.0} MiB/s",
        secs(skopeo),
        mbps(skopeo)
    );
    println!(
        "    kiln artifact push            {:>9}   {:.0} MiB/s   ratio {:.2}x",
        secs(kiln),
        mbps(kiln),
        skopeo.as_secs_f64() / kiln.as_secs_f64()
    );
    println!(
        "    kiln, hashing the file first  {:>9}   {:.0} MiB/s   ratio {:.2}x",
        secs(kiln_hashing),
        mbps(kiln_hashing),
        skopeo.as_secs_f64() / kiln_hashing.as_secs_f64()
    );

    println!("(c) the same {mib} MiB blob published under another repository");
    let other = format!("bench/artifact-mounted-{tag}");
    let t = Instant::now();
    let mounted = reg
        .push_blob_file_known(
            &other,
            &ours,
            &pushed.layer_digest,
            pushed.size,
            Some(&kiln_repo),
        )
        .await?;
    let mount = t.elapsed();
    anyhow::ensure!(
        mounted.how == PushedHow::Mounted,
        "expected a mount, got {:?}",
        mounted.how
    );
    println!(
        "    kiln, cross-repository mount  {:>6.1} ms   ({} bytes sent)",
        mount.as_secs_f64() * 1000.0,
        mounted.bytes_sent
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cfg = kiln::config::Config::defaults(Path::new("/"))?;
    let reg = Registry::new(&cfg.registry)?;
    let rt = tokio::runtime::Runtime::new()?;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        chrono::Utc::now().format("%H%M%S")
    );
    rt.block_on(async {
        reg.ping().await.map_err(|e| {
            anyhow::anyhow!("{e}: start the services with `bash scripts/services.sh up`")
        })?;
        indexes(&reg, env_usize("KILN_BENCH_INDEXES", 50), &tag).await?;
        artifacts(&reg, env_usize("KILN_BENCH_ARTIFACT_MIB", 1024), &tag).await
    })
}
