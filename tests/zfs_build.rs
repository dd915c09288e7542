//! ZFS base datasets through `kiln build`: the tree, reaping, the smoke
//! test, the send stream as an OCI artifact, failure leaving nothing, and
//! a worker-side receive of what was published.
//!
//! zfs-fuse is fragile under concurrent mounts and destroys: every test
//! holds `LOCK` for its whole run, so the tests of this file run one at a
//! time. Each builds what it checks from scratch (a build takes seconds).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::barrier::Barrier;
use common::serve::Api;
use common::{Bounded, LIMIT, Profile, Spawned, zfs};

static LOCK: Mutex<()> = Mutex::new(());

/// The pool for this test alone; `None` (the test is reported skipped)
/// when ZFS is unavailable here.
fn zfs_for(test: &str) -> Option<MutexGuard<'static, ()>> {
    // A test that failed while holding the lock leaves nothing shared in
    // memory to distrust: carry on.
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = zfs::unavailable() {
        common::skip(test, &why);
        return None;
    }
    Some(guard)
}

/// A demo profile whose macOS images build on the services' pool under a
/// prefix of its own, destroyed on drop.
struct ZfsProfile {
    // Dropped first: the datasets go before the profile's directory.
    _tree: zfs::Tree,
    p: Profile,
    prefix: String,
}

impl std::ops::Deref for ZfsProfile {
    type Target = Profile;
    fn deref(&self) -> &Profile {
        &self.p
    }
}

const RECIPE: &str = "platforms/macos/provision-demo.sh";

fn profile(name: &str) -> ZfsProfile {
    profile_timeout(name, 3600)
}

fn profile_timeout(name: &str, provision_timeout_secs: u64) -> ZfsProfile {
    let p = profile_unsynced(name, provision_timeout_secs);
    p.sync_sources_for(&["--platform", "macos"]);
    p
}

/// A profile whose sources (the demo's opam-repository bundle, which the
/// macOS recipe takes from `{{sources_url}}`) are not in its mirror yet.
fn profile_unsynced(name: &str, provision_timeout_secs: u64) -> ZfsProfile {
    let prefix = format!("test-zfs-{name}-{}", std::process::id());
    ZfsProfile {
        _tree: zfs::Tree(format!("kiln/{prefix}")),
        p: Profile::demo(&format!("zfs-{name}"))
            .demo_opam_repository()
            .toml(&common::zfs_toml(&prefix, Some(provision_timeout_secs)))
            .create(),
        prefix,
    }
}

impl ZfsProfile {
    fn build(&self) -> (Option<i32>, Value) {
        self.p.build(&["--platform", "macos"])
    }

    /// `kiln build` of the macOS image, started and left running (its
    /// output read as it runs; killed if the test fails).
    fn spawn_build(&self) -> Spawned {
        Spawned::piped(
            "kiln build",
            self.command()
                .args(["build", "--platform", "macos", "--json"]),
        )
    }

    /// The provisioning script with `lines` run first.
    fn recipe_starts_with(&self, lines: &str) {
        self.edit(RECIPE, |t| {
            t.replace("set -eu\n", &format!("set -eu\n{lines}"))
        });
    }

    fn datasets(&self) -> Vec<String> {
        zfs::datasets(&format!("kiln/{}", self.prefix))
    }

    /// The image's lockfile key.
    fn key(&self) -> String {
        format!("{}/macos-base:macos-homebrew-ocaml-5.5", self.namespace)
    }
}

/// The base datasets of the build (not their `home` and `brew` children).
fn bases(datasets: &[String]) -> Vec<String> {
    datasets
        .iter()
        .filter(|d| {
            d.contains("/base-image/macos-homebrew-ocaml-5.5.0-")
                && !d.ends_with("/home")
                && !d.ends_with("/brew")
        })
        .cloned()
        .collect()
}

/// A first build that succeeded.
struct Built {
    p: ZfsProfile,
    /// The base dataset: immutable name with full version and build id.
    base: String,
    /// Its last component.
    leaf: String,
}

/// Build once, with a provisioning script that leaves a daemon behind
/// (setsid: its own session, outside any process group).
fn built(name: &str) -> Built {
    let p = profile(name);
    p.recipe_starts_with("setsid sleep 654321 >/dev/null 2>&1 < /dev/null &\n");
    let (code, s) = p.build();
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["built"], 1, "{s}");
    let ds = p.datasets();
    let base = bases(&ds)
        .first()
        .unwrap_or_else(|| panic!("no base dataset in {ds:?}"))
        .clone();
    let leaf = base.rsplit('/').next().unwrap().to_string();
    Built { p, base, leaf }
}

/// A small change to the recipe, built: a new build id.
fn rebuilt_with_a_small_change(b: &Built) -> Value {
    b.p.edit(RECIPE, |t| {
        format!("{t}echo a small change > \"$HOME/changed.txt\"\n")
    });
    let (code, s) = b.p.build();
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
    s
}

/// The base dataset the second build made.
fn second_base(b: &Built) -> String {
    let ds = b.p.datasets();
    bases(&ds)
        .into_iter()
        .find(|d| *d != b.base)
        .unwrap_or_else(|| panic!("no second base dataset in {ds:?}"))
}

/// A worker: a pool of its own, fetched into with `kiln fetch`.
struct Worker {
    // Dropped first: the pool goes before its mount root.
    pool: zfs::Pool,
    dir: tempfile::TempDir,
}

impl Worker {
    fn new(name: &str) -> Worker {
        Worker {
            pool: zfs::Pool::create(&format!("kilnw{}-{name}", std::process::id())),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// `kiln fetch` of the profile's image into this worker's pool.
    fn fetch(&self, p: &ZfsProfile, extra: &[&str]) -> Value {
        let out = p
            .command()
            .args([
                "fetch",
                &p.key(),
                "--pool",
                &self.pool.name,
                "--prefix",
                "worker",
                "--json",
                "--mount-root",
            ])
            .arg(self.mnt())
            .args(extra)
            .output_within(LIMIT)
            .unwrap();
        common::ok_json(out)
    }
}

/// Every file under `dir` with its checksum, sorted.
fn listing(dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -type f -exec sha256sum {} + | sort")
        .current_dir(dir)
        .output_within(LIMIT)
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn mountpoint(dataset: &str) -> PathBuf {
    let out = Command::new("zfs")
        .args(["get", "-H", "-o", "value", "mountpoint", dataset])
        .output_within(LIMIT)
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A worker holding both images: the first fetched whole, the second
/// fetched incrementally through the digest API (not a lockfile on disk:
/// what a worker without a checkout does).
struct WorkerWithBoth {
    b: Built,
    w: Worker,
    full: Value,
    incremental: Value,
}

fn worker_with_both(name: &str) -> WorkerWithBoth {
    let b = built(name);
    let w = Worker::new(name);
    let full = w.fetch(&b.p, &[]);
    assert_eq!(full["state"], "installed", "{full}");
    rebuilt_with_a_small_change(&b);
    let api = Api::start(&b.p);
    let incremental = w.fetch(&b.p, &["--api", &api.url]);
    drop(api);
    WorkerWithBoth {
        b,
        w,
        full,
        incremental,
    }
}

/// `kiln gc --retention-days 0 --json <extra>`: its decisions. Without a
/// `--pool` in `extra`, the profile's own pool and prefix: a gc of every
/// host would also collect the kept QEMU disks of the state dir the tests
/// share (the demo's), which no test lockfile names.
fn gc(p: &ZfsProfile, extra: &[&str]) -> Vec<Value> {
    let own = ["--pool", "kiln", "--prefix", p.prefix.as_str()];
    let scope: &[&str] = if extra.contains(&"--pool") { &[] } else { &own };
    let out = p
        .command()
        .args(["gc", "--retention-days", "0", "--json"])
        .args(scope)
        .args(extra)
        .output_within(LIMIT)
        .unwrap();
    common::ok_json(out)
}

/// What gc decided for the image whose dataset ends in `leaf`.
fn decision(d: &[Value], leaf: &str) -> Option<String> {
    d.iter()
        .find(|x| x["item"].as_str().unwrap().ends_with(&format!("/{leaf}")))
        .map(|x| x["action"].as_str().unwrap().to_string())
}

fn work_entries() -> BTreeSet<String> {
    std::fs::read_dir(common::state_dir().join("work/zfs"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// After a failed build: no dataset, no lockfile entry, no new file in the
/// work dir, no process matching `marker` in its command line, no mount.
fn assert_nothing_left(p: &ZfsProfile, before: &BTreeSet<String>, marker: &str) {
    assert!(
        !p.datasets().iter().any(|d| d.contains("/base-image/")),
        "{:?}",
        p.datasets()
    );
    assert!(p.entries().is_empty());
    let new: Vec<String> = work_entries().difference(before).cloned().collect();
    assert!(new.is_empty(), "left in the work dir: {new:?}");
    assert!(!common::running(marker), "a process with {marker} survived");
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mounted().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(mounted().is_empty(), "mounts left: {:?}", mounted());
}

#[test]
fn built_tree_has_an_immutable_name_and_home_and_brew_children() {
    let Some(_zfs) = zfs_for("built_tree_has_an_immutable_name_and_home_and_brew_children") else {
        return;
    };
    let b = built("tree");
    let ds = b.p.datasets();
    assert!(
        ds.contains(&format!("{}/home", b.base)) && ds.contains(&format!("{}/brew", b.base)),
        "{ds:?}"
    );
}

#[test]
fn provisioning_leaves_no_process_behind() {
    let Some(_zfs) = zfs_for("provisioning_leaves_no_process_behind") else {
        return;
    };
    let _b = built("reap");
    assert!(
        !common::running("sleep 654321"),
        "provisioning left a process behind"
    );
}

#[test]
fn tree_is_published_as_a_zfs_stream_artifact() {
    let Some(_zfs) = zfs_for("tree_is_published_as_a_zfs_stream_artifact") else {
        return;
    };
    let b = built("artifact");
    let e = b.p.entry(&b.p.key());
    assert_eq!(e["kind"], "zfs-stream", "{e}");
    // The stream pulls back.
    let cfg = kiln::config::Config::defaults(common::root()).unwrap();
    let reg = kiln::registry::Registry::new(&cfg.registry).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("base.zfs.zst");
    let pulled = rt
        .block_on(kiln::registry::artifact::pull(
            &reg,
            e["repository"].as_str().unwrap(),
            e["arches"]["amd64"]["digest"].as_str().unwrap(),
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
}

#[test]
fn worker_fetch_receives_identical_trees() {
    let Some(_zfs) = zfs_for("worker_fetch_receives_identical_trees") else {
        return;
    };
    let b = built("fetch");
    let w = Worker::new("fetch");
    let f = w.fetch(&b.p, &[]);
    assert_eq!(f["state"], "installed", "{f}");
    for child in ["home", "brew"] {
        let built = listing(&mountpoint(&format!("{}/{child}", b.base)));
        let fetched = listing(&w.mnt().join(&b.leaf).join(child));
        assert!(!built.is_empty(), "{child}: empty build tree");
        assert_eq!(built, fetched, "{child}: fetched tree differs");
    }
}

/// The name obuilder uses (`<pool>/base-image/NAME`) is a tree of clones
/// of the base, so the base is in use and must never be destroyed.
#[test]
fn fetching_again_is_a_no_op_and_the_stable_name_clones_the_base() {
    let Some(_zfs) = zfs_for("fetching_again_is_a_no_op_and_the_stable_name_clones_the_base")
    else {
        return;
    };
    let b = built("refetch");
    let w = Worker::new("refetch");
    w.fetch(&b.p, &[]);
    assert_eq!(w.fetch(&b.p, &[])["state"], "already present");
    let pool = &w.pool.name;
    let clones = Command::new("zfs")
        .args(["list", "-H", "-r", "-o", "name,origin", pool])
        .output_within(LIMIT)
        .unwrap();
    let clones = String::from_utf8_lossy(&clones.stdout).to_string();
    let leaf = &b.leaf;
    assert!(
        clones.contains(&format!("{pool}/base-image/macos-homebrew-ocaml-5.5/brew\t{pool}/worker/base-image/{leaf}/brew@kiln")),
        "{clones}"
    );
    // In obuilder's layout: each child of the name has its `@snap`.
    for child in ["home", "brew"] {
        let snap = format!("{pool}/base-image/macos-homebrew-ocaml-5.5/{child}@snap");
        assert!(
            zfs::datasets(&snap).contains(&snap),
            "{snap} missing: {clones}"
        );
    }
}

#[test]
fn second_round_without_changes_builds_nothing() {
    let Some(_zfs) = zfs_for("second_round_without_changes_builds_nothing") else {
        return;
    };
    let b = built("again");
    let (_, s2) = b.p.build();
    assert_eq!(s2["unchanged"], 1, "{s2}");
}

/// A small change: a new build id, and the build also publishes the
/// incremental stream from the first image.
#[test]
fn small_change_also_publishes_an_incremental_stream_from_the_last_image() {
    let Some(_zfs) =
        zfs_for("small_change_also_publishes_an_incremental_stream_from_the_last_image")
    else {
        return;
    };
    let b = built("incremental");
    rebuilt_with_a_small_change(&b);
    let e2 = b.p.entry(&b.p.key());
    let cfg = kiln::config::Config::defaults(common::root()).unwrap();
    let reg = kiln::registry::Registry::new(&cfg.registry).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, cfg2) = rt
        .block_on(kiln::registry::artifact::inspect(
            &reg,
            e2["repository"].as_str().unwrap(),
            e2["arches"]["amd64"]["digest"].as_str().unwrap(),
        ))
        .unwrap();
    let inc = &cfg2["incremental"][0];
    assert_eq!(inc["from"], b.leaf.as_str(), "{cfg2}");
}

/// The worker, which has the first image, fetches only the difference.
#[test]
fn worker_with_the_last_image_fetches_only_the_difference_through_the_api() {
    let Some(_zfs) =
        zfs_for("worker_with_the_last_image_fetches_only_the_difference_through_the_api")
    else {
        return;
    };
    let WorkerWithBoth {
        b,
        w,
        full: f,
        incremental: f2,
    } = worker_with_both("delta");
    assert_eq!(f2["state"], "installed", "{f2}");
    assert_eq!(f2["via"], format!("incremental from {}", b.leaf), "{f2}");
    assert!(
        f2["bytes"].as_u64().unwrap() < f["bytes"].as_u64().unwrap(),
        "incremental {} bytes, full {}",
        f2["bytes"],
        f["bytes"]
    );
    let pool = &w.pool.name;
    let base2 = f2["dataset"]
        .as_str()
        .unwrap()
        .replace(&format!("{pool}/worker"), &format!("kiln/{}", b.p.prefix));
    let leaf2 = base2.rsplit('/').next().unwrap().to_string();
    assert_ne!(leaf2, b.leaf);
    for child in ["home", "brew"] {
        let built = listing(&mountpoint(&format!("{base2}/{child}")));
        let fetched = listing(&w.mnt().join(&leaf2).join(child));
        assert!(
            built.contains("changed.txt") || child == "brew",
            "{child}: {built}"
        );
        assert_eq!(
            built, fetched,
            "{child}: tree fetched incrementally differs"
        );
    }
}

/// On the worker, the first image is unreferenced but the second was
/// received as its clone: in use, kept.
#[test]
fn gc_on_a_worker_keeps_an_image_that_a_newer_one_was_received_on() {
    let Some(_zfs) = zfs_for("gc_on_a_worker_keeps_an_image_that_a_newer_one_was_received_on")
    else {
        return;
    };
    let WorkerWithBoth {
        b, w, incremental, ..
    } = worker_with_both("gcworker");
    let leaf2 = incremental["dataset"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let d = gc(&b.p, &["--pool", &w.pool.name, "--prefix", "worker"]);
    assert_eq!(decision(&d, &b.leaf).as_deref(), Some("kept"), "{d:?}");
    assert_eq!(decision(&d, &leaf2).as_deref(), Some("kept"), "{d:?}");
}

#[test]
fn gc_dry_run_on_the_build_host_removes_nothing() {
    let Some(_zfs) = zfs_for("gc_dry_run_on_the_build_host_removes_nothing") else {
        return;
    };
    let b = built("gcdry");
    rebuilt_with_a_small_change(&b);
    let dry = gc(&b.p, &["--dry-run"]);
    assert_eq!(
        decision(&dry, &b.leaf).as_deref(),
        Some("would-remove"),
        "{dry:?}"
    );
    assert!(
        b.p.datasets().contains(&b.base),
        "a dry run removes nothing"
    );
}

/// On the build host, the first image is unreferenced and unused: removed.
#[test]
fn gc_on_the_build_host_removes_the_unreferenced_image_only() {
    let Some(_zfs) = zfs_for("gc_on_the_build_host_removes_the_unreferenced_image_only") else {
        return;
    };
    let b = built("gchost");
    rebuilt_with_a_small_change(&b);
    let base2 = second_base(&b);
    let leaf2 = base2.rsplit('/').next().unwrap();
    let d = gc(&b.p, &[]);
    assert_eq!(decision(&d, &b.leaf).as_deref(), Some("removed"), "{d:?}");
    assert_eq!(decision(&d, leaf2).as_deref(), Some("kept"), "{d:?}");
    assert!(!b.p.datasets().iter().any(|d| d.starts_with(&b.base)));
    assert!(b.p.datasets().contains(&base2));
}

#[test]
fn failed_provisioning_script_leaves_nothing() {
    let Some(_zfs) = zfs_for("failed_provisioning_script_leaves_nothing") else {
        return;
    };
    let p = profile("fail");
    p.recipe_starts_with("echo about to fail\nexit 7\n");
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
    assert!(p.entries().is_empty());
    let left: Vec<String> = work_entries()
        .into_iter()
        .filter(|n| n.contains(&p.prefix))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A smoke failure (wrong version through the profile) also leaves nothing.
#[test]
fn failed_smoke_test_leaves_nothing() {
    let Some(_zfs) = zfs_for("failed_smoke_test_leaves_nothing") else {
        return;
    };
    let p = profile("smoke");
    p.edit(RECIPE, |t| {
        t.replace("version {{ocaml_version}}", "version 3.07.0")
    });
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

/// A script that starts a daemon, writes into the tree, then hangs past
/// the timeout.
#[test]
fn provisioning_past_its_timeout_is_killed_and_leaves_nothing() {
    let Some(_zfs) = zfs_for("provisioning_past_its_timeout_is_killed_and_leaves_nothing") else {
        return;
    };
    let p = profile_timeout("timeout", 3);
    p.recipe_starts_with(
        "setsid sleep 765431 >/dev/null 2>&1 < /dev/null &\necho partial > \"$HOME/partial\"\nsleep 765432\n",
    );
    let before = work_entries();
    let started = Instant::now();
    let (code, s) = p.build();
    assert_eq!(code, Some(1), "{s}");
    assert!(started.elapsed() < Duration::from_secs(120));
    let err = serde_json::to_string(&s).unwrap();
    assert!(
        err.contains("provisioning failed") && err.contains("timed out"),
        "{err}"
    );
    assert_nothing_left(&p, &before, "76543[12]");
}

/// A script killed mid-way: SIGKILL from outside, as the OOM killer would
/// (from inside it could not: the script is PID 1 of its own PID
/// namespace, which ignores signals it sends itself).
#[test]
fn provisioning_script_killed_from_outside_leaves_nothing() {
    let Some(_zfs) = zfs_for("provisioning_script_killed_from_outside_leaves_nothing") else {
        return;
    };
    let p = profile("killed");
    p.recipe_starts_with(
        "setsid sleep 765433 >/dev/null 2>&1 < /dev/null &\necho partial > \"$HOME/partial\"\nsleep 765434\n",
    );
    let before = work_entries();
    let build = p.spawn_build();
    common::wait_until("the script to start", 60, || {
        common::running("sleep 765434")
    });
    // This build's script only (another test's may run on this machine):
    // the provisioning shells below this kiln.
    let scripts: Vec<u32> = common::pids("^sh .*[.]provision[.]sh")
        .into_iter()
        .filter(|pid| common::ancestors(*pid).contains(&build.id()))
        .collect();
    assert!(
        !scripts.is_empty(),
        "no provisioning script under kiln {}",
        build.id()
    );
    for pid in scripts {
        assert!(
            Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status_within(Duration::from_secs(30))
                .unwrap()
                .success()
        );
    }
    let out = build.output_within(LIMIT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("provisioning failed"), "{err}");
    assert_nothing_left(&p, &before, "76543[34]");
}

/// Kiln itself killed (SIGKILL) while a quiet script runs.
fn kiln_killed_mid_provisioning(name: &str) -> ZfsProfile {
    let p = profile(name);
    p.recipe_starts_with("echo partial > \"$HOME/partial\"\nsleep 765435\n");
    let mut build = p.spawn_build();
    common::wait_until("the script to start", 60, || {
        common::running("sleep 765435")
    });
    build.sigkill();
    p
}

/// The script and what it started die with Kiln.
fn wait_for_the_script_to_die() {
    common::wait_until(
        "the provisioning script to die with the kiln that started it",
        10,
        || !common::running("sleep 765435"),
    );
}

#[test]
fn kiln_killed_mid_provisioning_takes_the_script_with_it() {
    let Some(_zfs) = zfs_for("kiln_killed_mid_provisioning_takes_the_script_with_it") else {
        return;
    };
    let _p = kiln_killed_mid_provisioning("kiln-killed");
    wait_for_the_script_to_die();
}

/// The host cleans up after a killed Kiln by itself: the provisioning
/// script's watchdog sees its stdin (held by Kiln) close, kills the recipe,
/// destroys the half-built tree and removes its temp directory; the next
/// build then builds from scratch. (A tree whose host died too is still
/// swept by the next build: `build::sweep_dead`.)
#[test]
fn half_built_tree_of_a_killed_kiln_is_removed_by_the_host_and_the_next_build_completes() {
    let Some(_zfs) = zfs_for(
        "half_built_tree_of_a_killed_kiln_is_removed_by_the_host_and_the_next_build_completes",
    ) else {
        return;
    };
    let p = kiln_killed_mid_provisioning("kiln-killed-sweep");
    wait_for_the_script_to_die();
    common::wait_until("the host to destroy the half-built tree", 60, || {
        !p.datasets().iter().any(|d| d.contains("/base-image/macos"))
    });
    p.edit(RECIPE, |t| {
        t.replace("echo partial > \"$HOME/partial\"\nsleep 765435\n", "")
    });
    let (code, s) = p.build();
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
}

/// The provisioning log of the demo's macOS target (the shared state's
/// `log/`; the tests of this file run one at a time).
fn provision_log() -> String {
    let dir = common::state_dir().join("log");
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("macos_macos-homebrew_") && n.ends_with(".log") && !n.contains("rebuild")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no macOS build log in {}", dir.display()));
    std::fs::read_to_string(newest.path()).unwrap()
}

/// `git -C <dir> <args>` (its stdout, trimmed), which must succeed.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output_within(LIMIT)
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Is anything listening on `port` of this machine (`ss -ltn`)?
fn listening(port: u16) -> bool {
    let out = Command::new("ss")
        .args(["-Hltn"])
        .output_within(LIMIT)
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        l.split_whitespace()
            .nth(3)
            .is_some_and(|a| a.ends_with(&format!(":{port}")))
    })
}

/// The recipe took the opam-repository from the build's source server on
/// this machine's loopback: the bundle of the pinned commit, cloned into
/// the tree and checked; the server is gone once the build ended.
#[test]
fn local_build_takes_the_opam_repository_from_the_source_server() {
    let Some(_zfs) = zfs_for("local_build_takes_the_opam_repository_from_the_source_server") else {
        return;
    };
    let p = profile("sources");
    let (code, s) = p.build();
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
    let e = p.entry(&p.key());
    let commit = e["inputs"]["amd64.opam_repository_commit"]
        .as_str()
        .unwrap_or_else(|| panic!("no keyed opam-repository commit in {e}"))
        .to_string();
    let base = bases(&p.datasets())
        .first()
        .cloned()
        .expect("a base dataset");
    let repo = mountpoint(&format!("{base}/home")).join("opam-repository");
    let head = git(&repo, &["rev-parse", "HEAD"]);
    assert_eq!(
        head, commit,
        "the tree's opam-repository is at the keyed commit"
    );
    assert_eq!(
        git(&repo, &["remote", "get-url", "origin"]),
        "https://github.com/ocaml/opam-repository.git"
    );
    let log = provision_log();
    let line = log
        .lines()
        .find(|l| l.starts_with(&format!("opam-repository at {head} from http://127.0.0.1:")))
        .unwrap_or_else(|| panic!("no source server line in the log:\n{log}"));
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        !listening(port),
        "the source server still listens on {port}"
    );
}

/// A source the recipe takes is not in the mirror: the run is refused,
/// naming it and `kiln sources sync`, and nothing is made on the host.
#[test]
fn build_whose_source_is_missing_is_refused_before_anything_is_created() {
    let Some(_zfs) = zfs_for("build_whose_source_is_missing_is_refused_before_anything_is_created")
    else {
        return;
    };
    let p = profile_unsynced("nosources", 3600);
    let out = p
        .command()
        .args(["build", "--platform", "macos", "--json"])
        .output_within(LIMIT)
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("opam-repository.bundle") && text.contains("kiln sources sync"),
        "{text}"
    );
    assert!(p.datasets().is_empty(), "{:?}", p.datasets());
    assert!(p.entries().is_empty());
}

/// A tree under construction belongs to its live builder: neither `kiln
/// gc` (whatever its age and though nothing references it) nor the sweep
/// of another build on the same host touches it, and the build it
/// belongs to then completes and publishes it.
#[test]
fn gc_and_the_sweep_never_touch_a_tree_a_live_build_holds() {
    let Some(_zfs) = zfs_for("gc_and_the_sweep_never_touch_a_tree_a_live_build_holds") else {
        return;
    };
    let a = profile("live");
    let barrier = Barrier::start();
    a.recipe_starts_with(&format!("curl -fsS -o /dev/null {}\n", barrier.url("live")));
    let build = a.spawn_build();
    barrier.wait_for_arrivals(1, Duration::from_secs(300));
    let held = bases(&a.datasets());
    assert_eq!(held.len(), 1, "{:?}", a.datasets());
    let owner = Command::new("zfs")
        .args(["get", "-H", "-o", "value", "org.ocaml.kiln:owner", &held[0]])
        .output_within(Duration::from_secs(60))
        .unwrap();
    let owner = String::from_utf8_lossy(&owner.stdout).trim().to_string();
    assert!(
        owner.ends_with(&format!("/{}", build.id())),
        "the tree names its builder: {owner}"
    );
    let leaf = held[0].rsplit('/').next().unwrap().to_string();
    // gc, with no retention: unreferenced and old enough, but being built.
    let d = gc(&a, &[]);
    assert_eq!(decision(&d, &leaf).as_deref(), Some("kept"), "{d:?}");
    let why = d
        .iter()
        .find(|x| x["item"] == held[0].as_str())
        .map(|x| x["reason"].to_string())
        .unwrap_or_default();
    assert!(why.contains("being built by"), "{d:?}");
    // Another build on the same host and prefix (another image: its own
    // tree), which sweeps what dead builders left there first.
    let other = Profile::demo("zfs-live-other")
        .demo_opam_repository()
        .toml(&common::zfs_toml(&a.prefix, Some(3600)))
        .create();
    other.edit(RECIPE, |t| format!("{t}echo other > \"$HOME/other\"\n"));
    other.sync_sources_for(&["--platform", "macos"]);
    let (code, s) = other.build(&["--platform", "macos"]);
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
    assert!(
        a.datasets().contains(&held[0]),
        "the held tree is gone: {:?}",
        a.datasets()
    );
    assert!(barrier.waiting() == 1, "the held build still waits");
    barrier.open();
    let out = build.output_within(LIMIT);
    let s: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        (out.status.code(), &s["built"]),
        (Some(0), &json!(1)),
        "{s}"
    );
    assert!(a.datasets().contains(&held[0]), "{:?}", a.datasets());
    a.entry(&a.key());
}

/// A `kiln build` handed to the daemon, whose job is cancelled while its
/// provisioning is held: the half-built tree is destroyed before the job
/// is recorded cancelled, nothing is published, and the handed-off build
/// reports the cancellation.
#[test]
fn a_cancelled_daemon_job_leaves_no_dataset() {
    let Some(_zfs) = zfs_for("a_cancelled_daemon_job_leaves_no_dataset") else {
        return;
    };
    let port = common::free_port();
    let prefix = format!("test-zfs-cancel-{}", std::process::id());
    let a = ZfsProfile {
        _tree: zfs::Tree(format!("kiln/{prefix}")),
        p: Profile::demo("zfs-cancel")
            .demo_opam_repository()
            .own_state()
            .toml(&common::zfs_toml(&prefix, Some(3600)))
            .toml(&common::jobs::daemon_toml(port))
            .create(),
        prefix,
    };
    a.sync_sources_for(&["--platform", "macos"]);
    let barrier = Barrier::start();
    a.recipe_starts_with(&format!(
        "curl -fsS -o /dev/null {}\n",
        barrier.url("cancel")
    ));
    let mut d = common::jobs::spawn_daemon(&mut a.command(), port);
    let build = a.spawn_build();
    barrier.wait_for_arrivals(1, Duration::from_secs(300));
    let held = bases(&a.datasets());
    assert_eq!(held.len(), 1, "{:?}", a.datasets());
    let kiln = || a.command();
    let id = common::jobs::running_job(&kiln, &d);
    common::jobs::cancel_and_wait(&kiln, &d, id);
    let left: Vec<String> = a
        .datasets()
        .into_iter()
        .filter(|x| x.contains("/base-image/macos-homebrew-ocaml-5.5.0-"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "{}", d.stderr_so_far());
    let out = build.output_within(LIMIT);
    let s: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(
        s["tags"][0]["outcome"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cancelled by cli")),
        "{s}"
    );
    assert!(a.entries().is_empty());
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_within(LIMIT).code(), Some(0));
}
