//! ZFS base datasets built on a worker reachable only by ssh (an sshd of
//! the test's own on loopback, its own key, user and zfs-fuse pool; see
//! `common::sshd`), and obuilder's consumer contract replayed on what
//! `kiln fetch` delivers.
//!
//! zfs-fuse is fragile under concurrent mounts and destroys: the tests of
//! this file hold `LOCK` and run one at a time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::barrier::Barrier;
use common::sshd::SshWorker;
use common::{Bounded, LIMIT, Profile, Spawned, zfs};

static LOCK: Mutex<()> = Mutex::new(());

const RECIPE: &str = "platforms/macos/provision-demo.sh";
/// Where the demo platform mounts children (`mount_root`).
const MOUNT_ROOT: &str = "/var/lib/kiln-demo/mnt";

/// The lock and a started worker, or `None` (reported skipped).
fn worker_for(test: &str, tag: &str) -> Option<(MutexGuard<'static, ()>, SshWorker)> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    SshWorker::start_or_skip(test, tag).map(|w| (guard, w))
}

/// A demo profile whose macOS image builds on `w`, under `prefix`, with
/// what its recipe takes from the source mirror (the demo's
/// opam-repository bundle) synced.
fn profile_on(name: &str, w: &SshWorker, prefix: &str) -> Profile {
    let p = profile_unsynced(name, w, prefix);
    p.sync_sources_for(&["--platform", "macos"]);
    p
}

/// As [`profile_on`], its source mirror still empty.
fn profile_unsynced(name: &str, w: &SshWorker, prefix: &str) -> Profile {
    Profile::demo(&format!("zfs-remote-{name}"))
        .demo_opam_repository()
        .toml(&format!("[zfs]\n{}", w.host_toml(name, prefix)))
        .create()
}

fn key(p: &Profile) -> String {
    format!("{}/macos-base:macos-homebrew-ocaml-5.5", p.namespace)
}

fn datasets(top: &str) -> Vec<String> {
    zfs::datasets(top)
}

/// The image trees (not their children) under `<pool>/<prefix>/base-image`.
fn images(pool: &str, prefix: &str) -> Vec<String> {
    let base = format!("{pool}/{prefix}/base-image/");
    datasets(pool)
        .into_iter()
        .filter(|d| {
            d.strip_prefix(&base)
                .is_some_and(|leaf| !leaf.contains('/'))
        })
        .collect()
}

fn mountpoint(dataset: &str) -> PathBuf {
    let out = Command::new("zfs")
        .args(["get", "-H", "-o", "value", "mountpoint", dataset])
        .output_within(LIMIT)
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn zfs_ok(args: &[&str]) -> String {
    let out = Command::new("zfs").args(args).output_within(LIMIT).unwrap();
    assert!(
        out.status.success(),
        "zfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn provision_dirs() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("kiln-provision."))
                .collect()
        })
        .unwrap_or_default()
}

/// `kiln build --json <args>` of `p`, spawned (killed with its group if
/// the test fails), its output read as it runs.
fn spawn_build(p: &Profile) -> Spawned {
    Spawned::piped(
        "kiln build",
        p.command().args(["build", "--platform", "macos", "--json"]),
    )
}

/// Its exit code and summary, once it ended.
fn finished(build: Spawned) -> (Option<i32>, Value) {
    let out = build.output_within(LIMIT);
    let s = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), s)
}

#[test]
fn worker_reachable_only_by_ssh_is_provisioned_end_to_end_over_one_connection() {
    let test = "worker_reachable_only_by_ssh_is_provisioned_end_to_end_over_one_connection";
    let Some((_lock, w)) = worker_for(test, "e2e") else {
        return;
    };
    let p = profile_on("e2e", &w, "ke2e");
    // The recipe leaves a daemon and waits at the barrier, where the test
    // looks at what runs where.
    let barrier = Barrier::start();
    p.edit(RECIPE, |t| {
        t.replacen(
            "set -eu\n",
            &format!(
                "set -eu\nsetsid sleep 765301 >/dev/null 2>&1 < /dev/null &\ncurl -fsS -o /dev/null {}\n",
                barrier.url("e2e")
            ),
            1,
        )
    });
    let before = w.connections();
    let build = spawn_build(&p);
    barrier.wait_for_arrivals(1, Duration::from_secs(300));
    // The recipe runs in a session of the worker's sshd (not on Kiln's
    // side of the connection), as root through sudo.
    let curl = common::pids(&barrier.url("e2e"));
    assert_eq!(curl.len(), 1, "the recipe's wait: {curl:?}");
    let line = common::ancestors(curl[0]);
    assert!(
        line.contains(&w.sshd_pid()),
        "the recipe ({}) does not run under the worker's sshd ({}): its ancestors {line:?}",
        curl[0],
        w.sshd_pid()
    );
    assert!(common::running("sleep 765301"), "the recipe's daemon");
    assert!(
        !w.user_processes().trim().is_empty(),
        "the build's ssh sessions run as the worker's user"
    );
    barrier.open();
    let (code, s) = finished(build);
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
    // Every step (create, provision, smoke test, snapshot, send) went over
    // one ssh connection.
    assert_eq!(w.connections() - before, 1, "ssh connections for one build");
    let trees = images(&w.pool.name, "ke2e");
    assert_eq!(trees.len(), 1, "{:?}", datasets(&w.pool.name));
    let home = mountpoint(&format!("{}/home", trees[0]));
    assert!(home.starts_with(MOUNT_ROOT), "{}", home.display());
    let readme = std::fs::read_to_string(home.join("README.kiln")).unwrap();
    assert!(readme.contains("5.5.0"), "{readme}");
    let e = p.entry(&key(&p));
    assert_eq!(e["kind"], "zfs-stream", "{e}");
    // Nothing of the build runs on: not the recipe's daemon (the host
    // killed its tree), not a session of the user (the connection ended).
    common::wait_until("the build's processes on the worker to end", 60, || {
        !common::running("sleep 765301") && w.user_processes().trim().is_empty()
    });
}

/// `kiln fetch` into a pool of its own; obuilder's fetch replayed on it.
struct Fetched {
    pool: zfs::Pool,
    mnt: tempfile::TempDir,
}

impl Fetched {
    fn new(tag: &str) -> Fetched {
        Fetched {
            pool: zfs::Pool::create(&format!("kilnob{}{tag}", std::process::id())),
            mnt: tempfile::tempdir().unwrap(),
        }
    }

    fn fetch(&self, p: &Profile) -> Value {
        let out = p
            .command()
            .args([
                "fetch",
                &key(p),
                "--pool",
                &self.pool.name,
                "--prefix",
                "kiln",
                "--json",
            ])
            .arg("--mount-root")
            .arg(self.mnt.path().join("trees"))
            .output_within(LIMIT)
            .unwrap();
        common::ok_json(out)
    }

    fn name(&self) -> String {
        format!("{}/base-image/macos-homebrew-ocaml-5.5", self.pool.name)
    }

    /// obuilder's `Zfs_clone.fetch`: `zfs list -H -r -o name
    /// <pool>/base-image/NAME`, then `zfs clone NAME/<child>@snap
    /// <job>/<child>` for each child. Returns the job's mount directory.
    fn obuilder_job(&self, job: &str) -> PathBuf {
        let base = self.name();
        let listed = zfs_ok(&["list", "-H", "-r", "-o", "name", &base]);
        let children: Vec<&str> = listed
            .lines()
            .filter(|l| l.len() > base.len())
            .map(|l| &l[base.len() + 1..])
            .collect();
        assert_eq!(children, ["brew", "home"], "{listed}");
        let mnt = self.mnt.path().join(job);
        let job_ds = format!("{}/{job}", self.pool.name);
        zfs_ok(&[
            "create",
            "-o",
            &format!("mountpoint={}", mnt.display()),
            &job_ds,
        ]);
        for c in children {
            zfs_ok(&[
                "clone",
                &format!("{base}/{c}@snap"),
                &format!("{job_ds}/{c}"),
            ]);
        }
        mnt
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn obuilder_fetch_replayed_on_what_kiln_fetch_delivered_and_the_name_moves_under_a_running_job() {
    let test = "obuilder_fetch_replayed_on_what_kiln_fetch_delivered_and_the_name_moves_under_a_running_job";
    let Some((_lock, w)) = worker_for(test, "ob") else {
        return;
    };
    let p = profile_on("ob", &w, "kob");
    let (code, s) = p.build(&["--platform", "macos"]);
    assert_eq!(code, Some(0), "{s}");
    let f = Fetched::new("ob");
    let got = f.fetch(&p);
    assert_eq!(got["state"], "installed", "{got}");
    assert_eq!(got["stable"], f.name(), "{got}");
    // A job of obuilder's, cloned from what the fetch delivered.
    let job1 = f.obuilder_job("job1");
    assert!(read(&job1.join("home/README.kiln")).contains("5.5.0"));
    assert!(read(&job1.join("brew/bin/ocaml")).contains("5.5.0"));
    // A new image: the name moves while job1 runs on the old tree.
    p.edit(RECIPE, |t| {
        format!("{t}echo second > \"$HOME/second.txt\"\n")
    });
    let (code, s) = p.build(&["--platform", "macos"]);
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
    let got2 = f.fetch(&p);
    assert_eq!(got2["state"], "installed", "{got2}");
    assert_ne!(got2["dataset"], got["dataset"]);
    // job1 keeps its tree; a new job gets the new one.
    assert!(!job1.join("home/second.txt").exists());
    assert!(read(&job1.join("home/README.kiln")).contains("5.5.0"));
    let job2 = f.obuilder_job("job2");
    assert_eq!(read(&job2.join("home/second.txt")), "second\n");
    let origin = zfs_ok(&[
        "get",
        "-H",
        "-o",
        "value",
        "origin",
        &format!("{}/home", f.name()),
    ]);
    assert!(
        origin.trim().starts_with(got2["dataset"].as_str().unwrap()),
        "{origin}"
    );
    // The old tree is retired, not destroyed, while job1's clone needs it.
    let retired = |pool: &str| -> Vec<String> {
        datasets(&format!("{pool}/kiln/retired"))
            .into_iter()
            .filter(|d| d.matches('/').count() == 3)
            .collect()
    };
    assert_eq!(
        retired(&f.pool.name).len(),
        1,
        "{:?}",
        datasets(&f.pool.name)
    );
    let gc = |p: &Profile| -> Vec<Value> {
        let out = p
            .command()
            .args([
                "gc",
                "--retention-days",
                "0",
                "--json",
                "--pool",
                &f.pool.name,
                "--prefix",
                "kiln",
            ])
            .output_within(LIMIT)
            .unwrap();
        common::ok_json(out)
    };
    let kept = gc(&p);
    assert!(
        kept.iter()
            .any(|d| d["action"] == "kept" && d["reason"].as_str().unwrap().contains("job1")),
        "{kept:?}"
    );
    // The job ends; gc removes the retired tree.
    let job1_ds = format!("{}/job1", f.pool.name);
    // zfs-fuse reports a dataset busy for a moment after its unmount.
    common::retry(40, Duration::from_millis(250), || {
        Command::new("zfs")
            .args(["destroy", "-r", &job1_ds])
            .status_within(LIMIT)
            .unwrap()
            .success()
    });
    let removed = gc(&p);
    assert!(
        removed
            .iter()
            .any(|d| d["action"] == "removed" && d["item"].as_str().unwrap().contains("/retired/")),
        "{removed:?}"
    );
    assert!(retired(&f.pool.name).is_empty());
    let _ = Command::new("zfs")
        .args(["destroy", "-r", &format!("{}/job2", f.pool.name)])
        .status_within(LIMIT);
}

/// The recipe, with a daemon and a long sleep first.
fn hanging_recipe(p: &Profile, mark: &str) {
    p.edit(RECIPE, |t| {
        t.replacen(
            "set -eu\n",
            &format!(
                "set -eu\necho partial > \"$HOME/partial\"\nsetsid sleep {mark}1 >/dev/null 2>&1 < /dev/null &\nsleep {mark}2\n"
            ),
            1,
        )
    });
}

fn without_hang(p: &Profile, mark: &str) {
    p.edit(RECIPE, |t| {
        t.replacen(
            &format!(
                "echo partial > \"$HOME/partial\"\nsetsid sleep {mark}1 >/dev/null 2>&1 < /dev/null &\nsleep {mark}2\n"
            ),
            "",
            1,
        )
    });
}

/// Nothing of the build on the worker: no tree, no process, no temp dir.
fn assert_worker_clean(w: &SshWorker, prefix: &str, mark: &str, tmp_before: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let clean = || {
        images(&w.pool.name, prefix).is_empty()
            && !common::running(&format!("sleep {mark}"))
            && provision_dirs().iter().all(|d| tmp_before.contains(d))
    };
    while !clean() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        images(&w.pool.name, prefix).is_empty(),
        "trees left: {:?}; the worker user's processes: {}",
        datasets(&w.pool.name),
        w.user_processes()
    );
    assert!(
        !common::running(&format!("sleep {mark}")),
        "a recipe process survived"
    );
    let new: Vec<String> = provision_dirs()
        .into_iter()
        .filter(|d| !tmp_before.contains(d))
        .collect();
    assert!(new.is_empty(), "temp dirs left: {new:?}");
}

#[test]
fn ssh_connection_killed_mid_provision_leaves_nothing_on_the_worker_and_the_rerun_completes() {
    let test =
        "ssh_connection_killed_mid_provision_leaves_nothing_on_the_worker_and_the_rerun_completes";
    let Some((_lock, w)) = worker_for(test, "cut") else {
        return;
    };
    let p = profile_on("cut", &w, "kcut");
    hanging_recipe(&p, "76511");
    let tmp_before = provision_dirs();
    let build = spawn_build(&p);
    common::wait_until("the recipe to run on the worker", 60, || {
        common::running("sleep 765112")
    });
    // Cut the connection on the worker's side: its sshd processes die.
    let pids = w.connection_pids();
    assert!(!pids.is_empty());
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status_within(Duration::from_secs(30));
    }
    let (code, s) = finished(build);
    assert_eq!(code, Some(1), "{s}");
    let text = s.to_string();
    assert!(
        text.contains("infra"),
        "a lost host is infrastructure's: {text}"
    );
    assert!(!text.contains("recipe"), "{text}");
    assert_worker_clean(&w, "kcut", "76511", &tmp_before);
    assert!(p.entries().is_empty());
    without_hang(&p, "76511");
    let (code, s) = p.build(&["--platform", "macos"]);
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
}

#[test]
fn kiln_killed_mid_provision_leaves_nothing_on_the_worker() {
    let test = "kiln_killed_mid_provision_leaves_nothing_on_the_worker";
    let Some((_lock, w)) = worker_for(test, "kk") else {
        return;
    };
    let p = profile_on("kk", &w, "kkk");
    hanging_recipe(&p, "76521");
    let tmp_before = provision_dirs();
    let mut build = Spawned::start(
        "kiln build",
        p.command()
            .args(["build", "--platform", "macos", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    common::wait_until("the recipe to run on the worker", 60, || {
        common::running("sleep 765212")
    });
    // The recipe runs with the source server forwarded to the worker.
    let forwards = forwards_of(&w);
    assert!(
        !forwards.is_empty(),
        "no forward from the build's connection while the recipe runs"
    );
    build.sigkill();
    // Nobody but the worker itself can clean up now.
    assert_worker_clean(&w, "kkk", "76521", &tmp_before);
    // The forward went with the connection (its master died with Kiln).
    common::wait_until("the forward to close", 30, || {
        listening_ports().is_disjoint(&forwards)
    });
}

#[test]
fn two_builds_on_two_workers_run_at_the_same_time() {
    let test = "two_builds_on_two_workers_run_at_the_same_time";
    let Some((_lock, w1)) = worker_for(test, "par1") else {
        return;
    };
    let w2 = match SshWorker::start("par2") {
        Ok(w) => w,
        Err(why) => return common::skip(test, &why),
    };
    let profiles = [
        profile_on("par1", &w1, "kpar1"),
        profile_on("par2", &w2, "kpar2"),
    ];
    // Each recipe waits at the barrier: both there at once is the overlap.
    let barrier = Barrier::start();
    for (i, p) in profiles.iter().enumerate() {
        let url = barrier.url(&format!("par{}", i + 1));
        p.edit(RECIPE, |t| {
            t.replacen(
                "set -eu\n",
                &format!("set -eu\ncurl -fsS -o /dev/null {url}\n"),
                1,
            )
        });
    }
    let builds: Vec<Spawned> = profiles.iter().map(spawn_build).collect();
    let mut both = barrier.wait_for_arrivals(2, Duration::from_secs(300));
    both.sort();
    assert_eq!(both, ["par1", "par2"], "both provisionings at once");
    assert_eq!(barrier.waiting(), 2, "both held at the barrier together");
    barrier.open();
    for b in builds {
        let (code, s) = finished(b);
        assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
    }
    for (w, prefix) in [(&w1, "kpar1"), (&w2, "kpar2")] {
        let trees = images(&w.pool.name, prefix);
        assert_eq!(trees.len(), 1, "{:?}", datasets(&w.pool.name));
    }
}

/// `[[zfs.hosts]]` for a macOS host that cannot be reached.
fn nowhere_host(dir: &Path) -> String {
    format!(
        "[[zfs.hosts]]\nname = \"nowhere\"\nssh = \"kiln-nowhere\"\nssh_config = \"{}\"\npool = \"tank\"\nprefix = \"kiln\"\nplatforms = [\"macos\"]\narch = \"amd64\"\n",
        common::sshd::nowhere(dir).display()
    )
}

/// A host that cannot be reached and a host without the pool: `kiln
/// doctor` names each with its fix, and a build for either ends as an
/// infrastructure failure (retried), never the recipe's.
#[test]
fn unreachable_host_and_missing_pool_are_named_by_doctor_and_fail_builds_as_infra() {
    let test = "unreachable_host_and_missing_pool_are_named_by_doctor_and_fail_builds_as_infra";
    let Some((_lock, w)) = worker_for(test, "doc") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let nowhere = nowhere_host(dir.path());
    let nopool = w.host_toml("nopool", "kdoc").replace(
        &format!("pool = \"{}\"", w.pool.name),
        "pool = \"kilnnosuchpool\"",
    );
    for (name, host) in [("nowhere", &nowhere), ("nopool", &nopool)] {
        let p = Profile::demo(&format!("zfs-remote-doc-{name}"))
            .demo_opam_repository()
            .toml(&format!("[zfs]\n{host}"))
            .create();
        // The sources are there: the build fails at the host, not before.
        p.sync_sources_for(&["--platform", "macos"]);
        let out = p
            .command()
            .args(["doctor", "--json"])
            .output_within(LIMIT)
            .unwrap();
        assert!(!out.status.success(), "doctor must fail for {name}");
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["component"] == format!("zfs pool ({name})"))
            .unwrap_or_else(|| panic!("{report}"))
            .clone();
        assert_eq!(check["status"], "missing", "{check}");
        let (detail, fix) = (check["detail"].to_string(), check["fix"].to_string());
        match name {
            "nowhere" => {
                assert!(detail.contains("cannot reach"), "{check}");
                assert!(
                    fix.contains("ssh -F") && fix.contains("kiln-nowhere"),
                    "{check}"
                );
            }
            _ => {
                assert!(detail.contains("no pool kilnnosuchpool"), "{check}");
                assert!(fix.contains("zpool import kilnnosuchpool"), "{check}");
            }
        }
        let (code, s) = p.build(&["--platform", "macos"]);
        assert_eq!(code, Some(1), "{s}");
        let arch = &s["tags"][0]["arches"]["amd64"];
        assert_eq!(arch["kind"], "infra", "{name}: {s}");
    }
}

/// The ports the worker's side listens on (`ss -ltn`, on loopback: the
/// worker's sshd binds a remote forward there).
fn listening_ports() -> BTreeSet<u16> {
    let out = Command::new("ss")
        .args(["-Hltn"])
        .output_within(LIMIT)
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The ports the worker's sshd listens on for its current connections:
/// their remote forwards (`ss -ltnp`, by the connections' pids).
fn forwards_of(w: &SshWorker) -> BTreeSet<u16> {
    let pids: Vec<String> = w
        .connection_pids()
        .iter()
        .map(|p| format!("pid={p},"))
        .collect();
    let out = Command::new("ss")
        .args(["-Hltnp"])
        .output_within(LIMIT)
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| pids.iter().any(|p| l.contains(p.as_str())))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// A remote build reaches the source server through a reverse forward
/// over its one ssh connection: the recipe cloned the bundle of the keyed
/// commit from `http://127.0.0.1:<port>` on the worker, and once the build
/// ended nothing listens on that port any more.
#[test]
fn remote_build_reaches_the_source_server_through_its_connection_and_leaves_no_forward() {
    let test =
        "remote_build_reaches_the_source_server_through_its_connection_and_leaves_no_forward";
    let Some((_lock, w)) = worker_for(test, "src") else {
        return;
    };
    let p = profile_on("src", &w, "ksrc");
    let before = w.connections();
    let log_before = w.log().len();
    let ports_before = listening_ports();
    let out = p
        .command()
        .args(["build", "--json", "--platform", "macos"])
        .env("KILN_LOG", "kiln::builders::zfs=info")
        .output_within(LIMIT)
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{stderr}"));
    assert_eq!(
        (out.status.code(), &s["built"]),
        (Some(0), &json!(1)),
        "{s}"
    );
    // The forward was opened, and cancelled by Kiln itself at the end
    // (not only closed with the connection): the worker's sshd received
    // the cancel request on this build's connection.
    assert!(
        stderr.contains("source server forwarded to the build host"),
        "{stderr}"
    );
    let sshd = w.log_of_ended(log_before, Duration::from_secs(30));
    assert!(
        sshd.lines()
            .any(|l| l.contains("rtype tcpip-forward want_reply")),
        "no forward request reached the worker's sshd:\n{sshd}"
    );
    assert!(
        sshd.lines()
            .any(|l| l.contains("rtype cancel-tcpip-forward want_reply")),
        "the forward was never cancelled, only closed with the connection:\n{sshd}\nkiln:\n{stderr}"
    );
    // The forward rode the build's own connection.
    assert_eq!(w.connections() - before, 1, "ssh connections for one build");
    let trees = images(&w.pool.name, "ksrc");
    assert_eq!(trees.len(), 1, "{:?}", datasets(&w.pool.name));
    let repo = mountpoint(&format!("{}/home", trees[0])).join("opam-repository");
    let head = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["rev-parse", "HEAD"])
        .output_within(LIMIT)
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let e = p.entry(&key(&p));
    assert_eq!(
        e["inputs"]["amd64.opam_repository_commit"].as_str(),
        Some(head.as_str()),
        "{e}"
    );
    // The log names the URL the recipe used: the forward's port on the
    // worker, which nothing listens on any more.
    let log_dir = common::state_dir().join("log");
    let log = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("macos_macos-homebrew_")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| read(&e.path()))
        .unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.starts_with(&format!("opam-repository at {head} from http://127.0.0.1:")))
        .unwrap_or_else(|| panic!("no source server line in the log:\n{log}"));
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        !ports_before.contains(&port),
        "port {port} was in use before"
    );
    let left = listening_ports();
    assert!(!left.contains(&port), "the forward still listens on {port}");
    // Nor did the build leave sshd's forwarding listener of any other port.
    let new: Vec<u16> = left.difference(&ports_before).copied().collect();
    let sshd_new = Command::new("ss")
        .args(["-Hltnp"])
        .output_within(LIMIT)
        .unwrap();
    let sshd_new = String::from_utf8_lossy(&sshd_new.stdout).to_string();
    assert!(
        new.iter().all(|p| !sshd_new
            .lines()
            .any(|l| l.contains(&format!(":{p} ")) && l.contains("sshd"))),
        "new sshd listeners {new:?}:\n{sshd_new}"
    );
}

/// A source missing from the mirror refuses a remote build before Kiln
/// connects: no ssh connection, nothing on the worker.
#[test]
fn remote_build_whose_source_is_missing_is_refused_before_connecting() {
    let test = "remote_build_whose_source_is_missing_is_refused_before_connecting";
    let Some((_lock, w)) = worker_for(test, "nosrc") else {
        return;
    };
    let p = profile_unsynced("nosrc", &w, "knosrc");
    let before = w.connections();
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
    assert_eq!(
        w.connections(),
        before,
        "no ssh connection for a refused build"
    );
    assert!(images(&w.pool.name, "knosrc").is_empty());
}

/// Two hosts of the platform, the first unreachable: the build tries it
/// (equal free slots keep the configuration's order), marks it down and
/// builds on the second; the inventory shows the first down.
#[test]
fn a_build_moves_from_an_unreachable_zfs_host_to_the_next_one() {
    let test = "a_build_moves_from_an_unreachable_zfs_host_to_the_next_one";
    let Some((_lock, w)) = worker_for(test, "fo") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let nowhere = nowhere_host(dir.path());
    let p = Profile::demo("zfs-remote-failover")
        .demo_opam_repository()
        .toml(&format!("[zfs]\n{nowhere}{}", w.host_toml("there", "kfo")))
        .create();
    p.sync_sources_for(&["--platform", "macos"]);
    let (code, s) = p.build(&["--platform", "macos"]);
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
    assert_eq!(
        images(&w.pool.name, "kfo").len(),
        1,
        "built on the second host"
    );
    let row = |name: &str| p.worker_row("zfs", name);
    let down = row("nowhere");
    assert!(
        down["health"].as_str().unwrap().starts_with("down since "),
        "{down}"
    );
    assert_eq!(row("there")["health"], "ok");
}
