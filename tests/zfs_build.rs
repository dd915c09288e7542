//! ZFS base datasets through `kiln build`: the tree, reaping, the smoke
//! test, the send stream as an OCI artifact, failure leaving nothing, and
//! a worker-side receive of what was published.

use std::path::PathBuf;
use std::process::Command;

use kiln::publish::lockfile::{ArtifactKind, Lockfile};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn zfs_unavailable() -> bool {
    let f = root().join(".kiln/run/zfs.unavailable");
    if f.exists() {
        eprintln!(
            "SKIPPED: zfs unavailable: {}",
            std::fs::read_to_string(&f).unwrap_or_default()
        );
        return true;
    }
    false
}

struct Profile {
    dir: tempfile::TempDir,
    config: PathBuf,
    namespace: String,
    prefix: String,
}

impl Drop for Profile {
    fn drop(&mut self) {
        // zfs-fuse may report "busy" right after an unmount: destroy the
        // deepest datasets first and retry until nothing is left.
        let top = format!("kiln/{}", self.prefix);
        for _ in 0..40 {
            let out = Command::new("zfs")
                .args(["list", "-H", "-r", "-o", "name", &top])
                .stderr(std::process::Stdio::null())
                .output()
                .unwrap();
            let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            if names.is_empty() {
                return;
            }
            names.sort_by_key(|n| std::cmp::Reverse(n.matches('/').count()));
            for n in names {
                let _ = Command::new("zfs")
                    .args(["destroy", "-r", "-f", &n])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

fn profile(name: &str) -> Profile {
    profile_timeout(name, 3600)
}

fn profile_timeout(name: &str, timeout: u64) -> Profile {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["versions", "platforms"] {
        assert!(
            Command::new("cp")
                .arg("-r")
                .arg(root().join("scripts/demo").join(sub))
                .arg(dir.path())
                .status()
                .unwrap()
                .success()
        );
    }
    let namespace = format!("kiln-test-zfs-{name}-{}", std::process::id());
    let prefix = format!("test-zfs-{name}-{}", std::process::id());
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\nmanifests_dir = \"manifests\"\n[database]\npath = \"kiln.db\"\n[registry]\nnamespace = \"{namespace}\"\n[plan]\nopam_repository_commit = \"test-pinned\"\n[zfs]\nprovision_timeout_secs = {timeout}\n[[zfs.hosts]]\nname = \"local\"\npool = \"kiln\"\nprefix = \"{prefix}\"\nplatforms = [\"macos\"]\narch = \"amd64\"\n",
            state = root().join(".kiln").display()
        ),
    )
    .unwrap();
    Profile {
        dir,
        config,
        namespace,
        prefix,
    }
}

impl Profile {
    fn build(&self) -> (Option<i32>, serde_json::Value) {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&self.config)
            .args(["build", "--platform", "macos", "--json"])
            .output()
            .unwrap();
        assert!(
            !out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    }

    fn recipe(&self) -> PathBuf {
        self.dir.path().join("platforms/macos/provision-demo.sh")
    }

    fn datasets(&self) -> Vec<String> {
        let out = Command::new("zfs")
            .args([
                "list",
                "-H",
                "-r",
                "-o",
                "name",
                &format!("kiln/{}", self.prefix),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn process_running(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", pattern])
        .status()
        .unwrap()
        .success()
}

/// One test, two scenarios in sequence: zfs-fuse is fragile under
/// concurrent mounts and destroys, so this file never runs them in parallel.
#[test]
fn zfs_base_datasets() {
    dataset_tree_is_built_reaped_published_and_receivable();
    failed_provisioning_leaves_nothing();
    timed_out_or_killed_provisioning_leaves_nothing();
}

fn work_entries() -> std::collections::BTreeSet<String> {
    std::fs::read_dir(root().join(".kiln/work/zfs"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// After a failed build: no dataset, no lockfile entry, no new file in the
/// work dir, no process with `marker` in its command line, no mount.
fn assert_nothing_left(p: &Profile, before: &std::collections::BTreeSet<String>, marker: &str) {
    assert!(
        !p.datasets().iter().any(|d| d.contains("/base-image/")),
        "{:?}",
        p.datasets()
    );
    assert!(
        Lockfile::load(&p.dir.path().join("manifests/lockfile.json"))
            .unwrap()
            .entries
            .is_empty()
    );
    let new: Vec<String> = work_entries().difference(before).cloned().collect();
    assert!(new.is_empty(), "left in the work dir: {new:?}");
    assert!(!process_running(marker), "a process with {marker} survived");
    // No mount of the build's tree (the host's `<prefix>/base-image`
    // container stays: it is the host's layout, not the build's).
    // zfs-fuse drops a destroyed dataset's mount asynchronously: allow it a
    // few seconds to go, then insist.
    let mounted = || -> Vec<String> {
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("{}/base-image/", p.prefix)))
            .map(str::to_string)
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !mounted().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(mounted().is_empty(), "mounts left: {:?}", mounted());
}

fn timed_out_or_killed_provisioning_leaves_nothing() {
    if zfs_unavailable() {
        return;
    }
    // A script that starts a daemon, writes into the tree, then hangs past
    // the timeout.
    let p = profile_timeout("timeout", 3);
    let text = std::fs::read_to_string(p.recipe()).unwrap();
    std::fs::write(
        p.recipe(),
        text.replace(
            "set -eu\n",
            "set -eu\nsetsid sleep 765431 >/dev/null 2>&1 < /dev/null &\necho partial > \"$HOME/partial\"\nsleep 765432\n",
        ),
    )
    .unwrap();
    let before = work_entries();
    let started = std::time::Instant::now();
    let (code, s) = p.build();
    assert_eq!(code, Some(1), "{s}");
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
    let err = serde_json::to_string(&s).unwrap();
    assert!(
        err.contains("provisioning failed") && err.contains("timed out"),
        "{err}"
    );
    assert_nothing_left(&p, &before, "76543");

    // A script killed mid-way: SIGKILL from outside, as the OOM killer
    // would (from inside it could not: the script is PID 1 of its own PID
    // namespace, which ignores signals it sends itself).
    let p = profile("killed");
    std::fs::write(
        p.recipe(),
        text.replace(
            "set -eu\n",
            "set -eu\nsetsid sleep 765433 >/dev/null 2>&1 < /dev/null &\necho partial > \"$HOME/partial\"\nsleep 765434\n",
        ),
    )
    .unwrap();
    let before = work_entries();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&p.config)
        .args(["build", "--platform", "macos", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !process_running("sleep 765434") {
        assert!(
            std::time::Instant::now() < deadline,
            "the script never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        Command::new("pkill")
            .args(["-9", "-f", "^sh .*[.]provision[.]sh"])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("provisioning failed"), "{err}");
    assert_nothing_left(&p, &before, "76543");

    // Kiln itself killed (SIGKILL) while a quiet script runs: the script
    // and what it started die with Kiln; the half-built tree, which only
    // Kiln could have destroyed, is swept by the next build.
    let p = profile("kiln-killed");
    std::fs::write(
        p.recipe(),
        text.replace(
            "set -eu\n",
            "set -eu\necho partial > \"$HOME/partial\"\nsleep 765435\n",
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&p.config)
        .args(["build", "--platform", "macos", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !process_running("sleep 765435") {
        assert!(
            std::time::Instant::now() < deadline,
            "the script never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while process_running("sleep 765435") {
        assert!(
            std::time::Instant::now() < deadline,
            "the provisioning script outlived the kiln that started it"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let half: Vec<String> = p
        .datasets()
        .into_iter()
        .filter(|d| d.contains("/base-image/") && !d.ends_with("/home") && !d.ends_with("/brew"))
        .collect();
    assert_eq!(half.len(), 1, "the killed build's tree: {half:?}");
    std::fs::write(p.recipe(), &text).unwrap();
    let (code, s) = p.build();
    assert_eq!((code, &s["built"]), (Some(0), &serde_json::json!(1)), "{s}");
    assert!(
        !p.datasets().iter().any(|d| d.starts_with(&half[0])),
        "the half-built tree was swept: {:?}",
        p.datasets()
    );
}

fn dataset_tree_is_built_reaped_published_and_receivable() {
    if zfs_unavailable() {
        return;
    }
    let p = profile("ok");
    // A provisioning script that leaves a daemon behind (setsid: its own
    // session, outside any process group): it must not survive the build.
    let text = std::fs::read_to_string(p.recipe()).unwrap();
    std::fs::write(
        p.recipe(),
        text.replace(
            "set -eu\n",
            "set -eu\nsetsid sleep 654321 >/dev/null 2>&1 < /dev/null &\n",
        ),
    )
    .unwrap();
    let (code, s) = p.build();
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["built"], 1, "{s}");
    assert!(
        !process_running("sleep 654321"),
        "provisioning left a process behind"
    );
    // The tree: immutable name with full version and build id, two children.
    let ds = p.datasets();
    let base = ds
        .iter()
        .find(|d| {
            d.contains("/base-image/macos-homebrew-ocaml-5.5.0-")
                && !d.ends_with("/home")
                && !d.ends_with("/brew")
        })
        .unwrap()
        .clone();
    assert!(
        ds.contains(&format!("{base}/home")) && ds.contains(&format!("{base}/brew")),
        "{ds:?}"
    );
    // Published as an artifact index; the stream pulls back and receives.
    let lock = Lockfile::load(&p.dir.path().join("manifests/lockfile.json")).unwrap();
    let e = &lock.entries[&format!("{}/macos-base:macos-homebrew-ocaml-5.5", p.namespace)];
    assert_eq!(e.kind, ArtifactKind::ZfsStream);
    let cfg = kiln::config::Config::defaults(&root()).unwrap();
    let reg = kiln::registry::Registry::new(&cfg.registry).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("base.zfs.zst");
    let pulled = rt
        .block_on(kiln::registry::artifact::pull(
            &reg,
            &e.repository,
            &e.arches[&kiln::catalogue::Arch::Amd64].digest,
            &stream,
        ))
        .unwrap();
    assert_eq!(pulled.artifact_type, kiln::registry::artifact::ZFS_ARTIFACT);
    assert_eq!(pulled.config["os"], "macos");
    assert_eq!(
        pulled.config["layout"]["children"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A worker: a second pool, fetched into with `kiln fetch`; the file
    // trees are identical.
    let wdir = tempfile::tempdir().unwrap();
    let pool = format!("kilnw{}", std::process::id());
    let img = wdir.path().join("worker.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    assert!(
        Command::new("zpool")
            .args(["create", "-f", "-m", "none", &pool])
            .arg(&img)
            .status()
            .unwrap()
            .success()
    );
    struct PoolGuard(String);
    impl Drop for PoolGuard {
        fn drop(&mut self) {
            for _ in 0..20 {
                if Command::new("zpool")
                    .args(["destroy", "-f", &self.0])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(true)
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
    }
    let _pool = PoolGuard(pool.clone());
    let mnt = wdir.path().join("mnt");
    let fetch = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&p.config)
            .args([
                "fetch",
                &format!("{}/macos-base:macos-homebrew-ocaml-5.5", p.namespace),
                "--pool",
                &pool,
                "--prefix",
                "worker",
                "--json",
                "--mount-root",
            ])
            .arg(&mnt)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let f = fetch(&[]);
    assert_eq!(f["state"], "installed", "{f}");
    let leaf = base.rsplit('/').next().unwrap();
    let listing = |dir: &std::path::Path| {
        let out = Command::new("sh")
            .arg("-c")
            .arg("find . -type f -exec sha256sum {} + | sort")
            .current_dir(dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for child in ["home", "brew"] {
        let built = Command::new("zfs")
            .args([
                "get",
                "-H",
                "-o",
                "value",
                "mountpoint",
                &format!("{base}/{child}"),
            ])
            .output()
            .unwrap();
        let built = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
        let fetched = mnt.join(leaf).join(child);
        let (a, b) = (listing(&built), listing(&fetched));
        assert!(!a.is_empty(), "{child}: empty build tree");
        assert_eq!(a, b, "{child}: fetched tree differs");
    }
    // Fetching again is a no-op; the stable name is a clone of the base,
    // so the base is in use and must never be destroyed.
    assert_eq!(fetch(&[])["state"], "already present");
    let clones = Command::new("zfs")
        .args(["list", "-H", "-r", "-o", "name,origin", &pool])
        .output()
        .unwrap();
    let clones = String::from_utf8_lossy(&clones.stdout).to_string();
    assert!(clones.contains(&format!("{pool}/worker/base-image/macos-homebrew-ocaml-5.5/brew\t{pool}/worker/base-image/{leaf}/brew@kiln")), "{clones}");
    // A second round changes nothing.
    let (_, s2) = p.build();
    assert_eq!(s2["unchanged"], 1, "{s2}");

    // A small change: a new build id. The build also publishes the
    // incremental stream from the first image, and the worker, which has
    // that image, fetches only the difference.
    let text = std::fs::read_to_string(p.recipe()).unwrap();
    std::fs::write(
        p.recipe(),
        format!("{text}echo a small change > \"$HOME/changed.txt\"\n"),
    )
    .unwrap();
    let (code, s3) = p.build();
    assert_eq!(
        (code, &s3["built"]),
        (Some(0), &serde_json::json!(1)),
        "{s3}"
    );
    let lock = Lockfile::load(&p.dir.path().join("manifests/lockfile.json")).unwrap();
    let e2 = &lock.entries[&format!("{}/macos-base:macos-homebrew-ocaml-5.5", p.namespace)];
    let (_, cfg2) = rt
        .block_on(kiln::registry::artifact::inspect(
            &reg,
            &e2.repository,
            &e2.arches[&kiln::catalogue::Arch::Amd64].digest,
        ))
        .unwrap();
    let inc = &cfg2["incremental"][0];
    assert_eq!(inc["from"], leaf, "{cfg2}");
    // This fetch resolves the name through the digest API, not a lockfile
    // on disk: what a worker without a checkout does.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut api = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&p.config)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "kiln serve never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let f2 = fetch(&["--api", &format!("http://127.0.0.1:{port}")]);
    let _ = api.kill();
    let _ = api.wait();
    assert_eq!(f2["state"], "installed", "{f2}");
    assert_eq!(f2["via"], format!("incremental from {leaf}"), "{f2}");
    assert!(
        f2["bytes"].as_u64().unwrap() < f["bytes"].as_u64().unwrap(),
        "incremental {} bytes, full {}",
        f2["bytes"],
        f["bytes"]
    );
    let base2 = f2["dataset"]
        .as_str()
        .unwrap()
        .replace(&format!("{pool}/worker"), &format!("kiln/{}", p.prefix));
    let leaf2 = base2.rsplit('/').next().unwrap().to_string();
    assert_ne!(leaf2, leaf);
    for child in ["home", "brew"] {
        let built = Command::new("zfs")
            .args([
                "get",
                "-H",
                "-o",
                "value",
                "mountpoint",
                &format!("{base2}/{child}"),
            ])
            .output()
            .unwrap();
        let built = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
        let (a, b) = (listing(&built), listing(&mnt.join(&leaf2).join(child)));
        assert!(a.contains("changed.txt") || child == "brew", "{child}: {a}");
        assert_eq!(a, b, "{child}: tree fetched incrementally differs");
    }

    // gc. On the worker, the first image is unreferenced but the second
    // was received as its clone: in use, kept. On the build host, the
    // first image is unreferenced and unused: removed.
    let gc = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&p.config)
            .args(["gc", "--retention-days", "0", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let decision = |d: &[serde_json::Value], leaf: &str| {
        d.iter()
            .find(|x| {
                x["dataset"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/{leaf}"))
            })
            .map(|x| x["action"].as_str().unwrap().to_string())
    };
    let w = gc(&["--pool", &pool, "--prefix", "worker"]);
    assert_eq!(decision(&w, leaf).as_deref(), Some("kept"), "{w:?}");
    assert_eq!(decision(&w, &leaf2).as_deref(), Some("kept"), "{w:?}");
    let dry = gc(&["--dry-run"]);
    assert_eq!(
        decision(&dry, leaf).as_deref(),
        Some("would-remove"),
        "{dry:?}"
    );
    assert!(p.datasets().contains(&base), "a dry run removes nothing");
    let b = gc(&[]);
    assert_eq!(decision(&b, leaf).as_deref(), Some("removed"), "{b:?}");
    assert_eq!(decision(&b, &leaf2).as_deref(), Some("kept"), "{b:?}");
    assert!(!p.datasets().iter().any(|d| d.starts_with(&base)));
    assert!(p.datasets().contains(&base2));
}

fn failed_provisioning_leaves_nothing() {
    if zfs_unavailable() {
        return;
    }
    let p = profile("fail");
    let text = std::fs::read_to_string(p.recipe()).unwrap();
    std::fs::write(
        p.recipe(),
        text.replace("set -eu\n", "set -eu\necho about to fail\nexit 7\n"),
    )
    .unwrap();
    let (code, s) = p.build();
    assert_eq!(code, Some(1), "{s}");
    let err = serde_json::to_string(&s).unwrap();
    assert!(
        err.contains("provisioning failed") && err.contains("exit status: 7"),
        "{err}"
    );
    assert!(
        !p.datasets().iter().any(|d| d.contains("/base-image/macos")),
        "{:?}",
        p.datasets()
    );
    assert!(
        Lockfile::load(&p.dir.path().join("manifests/lockfile.json"))
            .unwrap()
            .entries
            .is_empty()
    );
    let work = root().join(".kiln/work/zfs");
    if work.exists() {
        let left: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.contains(&p.prefix))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // A smoke failure (wrong version through the profile) also leaves nothing.
    std::fs::write(
        p.recipe(),
        text.replace("version {{ocaml_version}}", "version 3.07.0"),
    )
    .unwrap();
    let (code, s) = p.build();
    assert_eq!(code, Some(1), "{s}");
    assert!(
        serde_json::to_string(&s)
            .unwrap()
            .contains("smoke test failed")
    );
    assert!(
        !p.datasets().iter().any(|d| d.contains("/base-image/macos")),
        "{:?}",
        p.datasets()
    );
}
