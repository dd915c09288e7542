//! ZFS benchmark, in one run on this machine's pools:
//!
//! (a) a worker fetching a base image after a small change: the
//!     incremental stream against the full one — bytes pulled and time
//!     (registry pull + verify + `zfs receive` + stable name);
//! (b) giving a job a fresh copy of a base image: `zfs clone` against
//!     `cp -a` of the same tree — the reason base images live on ZFS.
//!
//! The trees come from Kiln's own build path (`builders::zfs::build`,
//! provisioning with a script that lays down KILN_BENCH_TREE_MIB MiB of
//! files, default 200), pushed to the local registry and fetched into a
//! second pool standing in for a worker. Needs `bash scripts/services.sh
//! up`. Run: `cargo bench --bench zfs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln::builders::zfs::{build, driver::Zfs, incremental, send, worker};
use kiln::config::ZfsHost;
use kiln::registry::{Registry, artifact};

fn sh(cmd: &str) -> anyhow::Result<String> {
    let out = Command::new("bash").args(["-c", cmd]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn spec(dir: &Path, dataset: &str, leaf: &str, script: String) -> build::ZfsSpec {
    let children = ["home", "brew"]
        .iter()
        .map(|c| build::Child {
            name: c.to_string(),
            mountpoint: dir.join("mnt").join(leaf).join(c),
        })
        .collect::<Vec<_>>();
    let mut env = BTreeMap::new();
    env.insert(
        "HOME".to_string(),
        children[0].mountpoint.display().to_string(),
    );
    env.insert(
        "BREW".to_string(),
        children[1].mountpoint.display().to_string(),
    );
    env.insert("PATH".to_string(), "/usr/bin:/bin".to_string());
    build::ZfsSpec {
        target: format!("bench/{leaf}"),
        platform: "macos".into(),
        arch: kiln::catalogue::Arch::Amd64,
        dataset: dataset.to_string(),
        profile: children[0].mountpoint.join(".obuilder_profile.sh"),
        children,
        script,
        env,
        user: None,
        runner: build::Runner::Host,
        timeout: Duration::from_secs(3600),
        smoke: vec![("ocaml -version".into(), "5.5.0".into())],
        log: dir.join(format!("{leaf}.log")),
        out_dir: dir.join("out"),
    }
}

fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::var("KILN_BENCH_TREE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let cfg = kiln::config::Config::defaults(Path::new("/"))?;
    let reg = Registry::new(&cfg.registry)?;
    let id = std::process::id();
    let dir = tempfile::Builder::new()
        .prefix("kiln-bench-zfs-")
        .tempdir()?;
    let d = dir.path().to_path_buf();
    // The source of the tree: files of 256 KiB, random, like a switch's
    // objects and libraries.
    let src = d.join("src");
    std::fs::create_dir_all(&src)?;
    sh(&format!(
        "cd {} && for i in $(seq 1 {}); do mkdir -p lib/p$((i % 40)); head -c 262144 /dev/urandom > lib/p$((i % 40))/f$i.cmx; done",
        src.display(),
        mib * 4
    ))?;
    let script = |extra: &str| {
        format!(
            "set -eu\ncp -a {}/. \"$HOME/\"\nmkdir -p \"$BREW/bin\"\nprintf '#!/bin/sh\\necho 5.5.0\\n' > \"$BREW/bin/ocaml\"\nchmod 755 \"$BREW/bin/ocaml\"\necho \"export PATH=$BREW/bin:\\$PATH\" > \"$HOME/.obuilder_profile.sh\"\n{extra}",
            src.display()
        )
    };
    let host = |pool: &str, prefix: &str| ZfsHost {
        name: "bench".into(),
        ssh: String::new(),
        ssh_config: String::new(),
        sudo: false,
        pool: pool.into(),
        prefix: prefix.into(),
        platforms: vec!["macos".into()],
        arch: "amd64".into(),
    };
    let prefix = format!("bench-{id}");
    let zfs = Zfs::new(&host("kiln", &prefix));
    let base = format!("kiln/{prefix}/base-image");
    let leaf1 = "macos-homebrew-ocaml-5.5.0-aaaaaaaaaaaa";
    let leaf2 = "macos-homebrew-ocaml-5.5.0-bbbbbbbbbbbb";
    // A worker pool on a file of its own.
    let wpool = format!("kilnbench{id}");
    let img = d.join("worker.img");
    std::fs::File::create(&img)?.set_len(((mib as u64) * 3 + 512) << 20)?;
    sh(&format!(
        "zpool create -f -m none {wpool} {}",
        img.display()
    ))?;
    let wzfs = Zfs::new(&host(&wpool, "worker"));
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let s1 = spec(&d, &format!("{base}/{leaf1}"), leaf1, script(""));
        let out1 = build::build(&zfs, &s1).await?;
        let s2 = spec(
            &d,
            &format!("{base}/{leaf2}"),
            leaf2,
            script("echo 'a small change' > \"$HOME/lib/p1/changed.cmx\"\n"),
        );
        let out2 = build::build(&zfs, &s2).await?;
        let inc = incremental::incremental(&zfs, &s2, &format!("{base}/{leaf1}")).await?;
        let repo = format!("kiln-bench/zfs-{id}");
        let push = |file: PathBuf, kind: &'static str, layer: &'static str| {
            let repo = repo.clone();
            let reg = &reg;
            async move {
                artifact::push(
                    reg,
                    &artifact::ArtifactPush {
                        repo: &repo,
                        file: &file,
                        artifact_type: kind,
                        layer_media_type: layer,
                        title: "stream",
                        digest: None,
                        uncompressed_sha256: None,
                        config: serde_json::json!({"os": "macos", "architecture": "amd64"}),
                        annotations: BTreeMap::new(),
                    },
                )
                .await
            }
        };
        // Full streams go from the host straight into the registry.
        let publish = |out: build::Built| {
            let (repo, reg, zfs) = (repo.clone(), &reg, &zfs);
            async move {
                let sent = send::send_full(zfs, &out.snapshot, reg, &repo, "bench").await?;
                let pushed = artifact::put_artifact(
                    reg,
                    &artifact::ArtifactPush {
                        repo: &repo,
                        file: Path::new(""),
                        artifact_type: artifact::ZFS_ARTIFACT,
                        layer_media_type: artifact::ZFS_LAYER,
                        title: "stream",
                        digest: Some(&sent.digest),
                        uncompressed_sha256: Some(&sent.uncompressed_sha256),
                        config: serde_json::json!({"os": "macos", "architecture": "amd64"}),
                        annotations: BTreeMap::new(),
                    },
                    sent.digest.clone(),
                    sent.size,
                )
                .await?;
                anyhow::Ok(pushed)
            }
        };
        let p1 = publish(out1).await?;
        let p2 = publish(out2).await?;
        let pi = push(
            inc.stream.clone(),
            artifact::ZFS_INCREMENTAL_ARTIFACT,
            artifact::ZFS_INCREMENTAL_LAYER,
        )
        .await?;
        let wbase = format!("{wpool}/worker/base-image");
        let mounts = |leaf: &str| {
            ["home", "brew"]
                .iter()
                .map(|c| (c.to_string(), d.join("wmnt").join(leaf).join(c)))
                .collect::<Vec<_>>()
        };
        let fetch_full = |digest: String, leaf: &'static str| {
            let (reg, repo, d, wzfs, wbase, mounts) = (
                &reg,
                repo.clone(),
                d.clone(),
                &wzfs,
                wbase.clone(),
                mounts(leaf),
            );
            async move {
                let t = Instant::now();
                let file = d.join(format!("{leaf}.pulled"));
                let pulled = artifact::pull(reg, &repo, &digest, &file).await?;
                let sha = pulled.manifest["layers"][0]["digest"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches("sha256:")
                    .to_string();
                worker::install(
                    wzfs,
                    &worker::Install {
                        stream: &file,
                        sha256: &sha,
                        uncompressed_sha256: None,
                        dataset: &format!("{wbase}/{leaf}"),
                        stable: &format!("{wbase}/macos-homebrew-ocaml-5.5"),
                        mountpoints: mounts,
                    },
                )
                .await?;
                let _ = std::fs::remove_file(&file);
                anyhow::Ok((t.elapsed(), pulled.size))
            }
        };
        // The worker has the first image (fetched in full, untimed).
        fetch_full(p1.digest.clone(), leaf1).await?;
        // (a) the second image: in full into a third name, then incrementally.
        let (full_t, full_b) =
            fetch_full(p2.digest.clone(), "macos-homebrew-ocaml-5.5.0-ffffffffffff").await?;
        let t = Instant::now();
        let file = d.join("inc.pulled");
        let pulled = artifact::pull(&reg, &repo, &pi.digest, &file).await?;
        let sha = pulled.manifest["layers"][0]["digest"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("sha256:")
            .to_string();
        worker::install_incremental(
            &wzfs,
            &worker::Install {
                stream: &file,
                sha256: &sha,
                uncompressed_sha256: None,
                dataset: &format!("{wbase}/{leaf2}"),
                stable: &format!("{wbase}/macos-homebrew-ocaml-5.5"),
                mountpoints: mounts(leaf2),
            },
        )
        .await?;
        let inc_t = t.elapsed();
        let inc_b = pulled.size;
        println!("(a) fetching a {mib} MiB base image after a small change");
        println!(
            "    full stream         {:>12} bytes  {:>8.2} s",
            full_b,
            full_t.as_secs_f64()
        );
        println!(
            "    incremental stream  {:>12} bytes  {:>8.2} s   ({:.0}x fewer bytes, {:.1}x faster)",
            inc_b,
            inc_t.as_secs_f64(),
            full_b as f64 / inc_b.max(1) as f64,
            full_t.as_secs_f64() / inc_t.as_secs_f64()
        );
        // (b) clone against copy, on the worker's tree.
        let t = Instant::now();
        for c in ["home", "brew"] {
            wzfs.zfs(&[
                "clone",
                "-o",
                "mountpoint=none",
                &format!("{wbase}/{leaf2}/{c}@kiln"),
                &format!("{wpool}/job-{c}"),
            ])
            .await?;
        }
        let clone_t = t.elapsed();
        let copy_to = d.join("copy");
        let t = Instant::now();
        sh(&format!(
            "cp -a {} {}",
            d.join("wmnt").join(leaf2).display(),
            copy_to.display()
        ))?;
        let copy_t = t.elapsed();
        println!("(b) a fresh copy of that base image for one job");
        println!(
            "    zfs clone           {:>8.1} ms",
            clone_t.as_secs_f64() * 1000.0
        );
        println!(
            "    cp -a               {:>8.1} ms   (clone {:.0}x faster)",
            copy_t.as_secs_f64() * 1000.0,
            copy_t.as_secs_f64() / clone_t.as_secs_f64()
        );
        anyhow::Ok(())
    });
    // Clean up whatever happened (retrying while zfs-fuse says busy).
    let _ = rt.block_on(zfs.destroy_recursive(&format!("kiln/{prefix}")));
    for _ in 0..20 {
        if sh(&format!("zpool destroy -f {wpool}")).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    result
}
