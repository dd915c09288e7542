//! OpenBSD images (the tiny test guest of `qemu_build.rs`) built on a QEMU
//! host reached only over ssh (`[[qemu.hosts]]`; the sshd test host of
//! `common::sshd`, its own user, key and config): the build's server,
//! sets and kernel reach the host through Kiln's connection, QEMU runs as
//! the host's user, the compacted disk comes back over the connection and
//! is pushed. A host that cannot be reached is marked down and the build
//! moves on; a cut connection or a killed Kiln leaves nothing on the host.
//!
//! The tests share the fixture kernel and the sshd pattern: they hold
//! `LOCK` and run one at a time.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::sshd::SshWorker;
use common::{Bounded, LIMIT, Profile, Spawned};

static LOCK: Mutex<()> = Mutex::new(());

/// The lock and a started host, or `None` (reported skipped).
fn host_for(test: &str, tag: &str) -> Option<(MutexGuard<'static, ()>, SshWorker)> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    SshWorker::start_or_skip(test, tag).map(|w| (guard, w))
}

/// Where the host keeps its builds' work dirs (the user's home).
fn work_dir(w: &SshWorker) -> PathBuf {
    PathBuf::from(format!("/home/{}/kiln-qemu", w.user))
}

/// `[[qemu.hosts]]` for `w` (TCG: its user cannot open /dev/kvm).
fn host_toml(name: &str, w: &SshWorker) -> String {
    format!(
        "[[qemu.hosts]]\nname = \"{name}\"\nssh = \"{}\"\nssh_config = \"{}\"\nwork_dir = \"{}\"\naccel = \"tcg\"\n",
        w.alias,
        w.ssh_config.display(),
        work_dir(w).display()
    )
}

/// The demo profile's OpenBSD release (the test guest) built on `hosts`.
fn profile(name: &str, hosts: &str, boot_timeout_secs: u64) -> Profile {
    let p = Profile::demo(&format!("qemu-remote-{name}"))
        .toml(&format!("{}{hosts}", common::qemu_toml(boot_timeout_secs)))
        .create();
    p.sync_sources();
    p
}

fn spawn_build(p: &Profile) -> Spawned {
    Spawned::piped(
        "kiln build",
        p.command()
            .args(["build", "--platform", "openbsd", "--json"]),
    )
}

fn finished(build: Spawned) -> (Option<i32>, Value) {
    let out = build.output_within(LIMIT);
    let s = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), s)
}

/// QEMU running as the host's user (not as this test's).
fn qemu_on(w: &SshWorker) -> bool {
    w.user_processes().contains("qemu-system")
}

/// Nothing of a build left on the host: no process of its user naming
/// the work dir, no work dir.
fn assert_host_clean(w: &SshWorker) {
    let work = work_dir(w);
    let left = || -> Vec<String> {
        std::fs::read_dir(&work)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let running = || {
        w.user_processes()
            .lines()
            .filter(|l| l.contains(&work.display().to_string()))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while (!left().is_empty() || !running().is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        running().is_empty(),
        "left running on the host: {:?}",
        running()
    );
    assert!(
        left().is_empty(),
        "left in the host's work dir: {:?}",
        left()
    );
}

/// `[[qemu.hosts]]` for a host that cannot be reached.
fn nowhere(dir: &std::path::Path) -> String {
    format!(
        "[[qemu.hosts]]\nname = \"nowhere\"\nssh = \"kiln-nowhere\"\nssh_config = \"{}\"\n",
        common::sshd::nowhere(dir).display()
    )
}

#[test]
fn openbsd_builds_on_a_qemu_host_over_ssh_after_an_unreachable_one_is_marked_down() {
    let test = "openbsd_builds_on_a_qemu_host_over_ssh_after_an_unreachable_one_is_marked_down";
    let Some((_lock, w)) = host_for(test, "qf") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The unreachable host first: equal free slots keep the
    // configuration's order, so the build tries it, marks it down, moves on.
    let hosts = format!("{}{}", nowhere(dir.path()), host_toml("far", &w));
    let p = profile("far", &hosts, 300);
    let mut build = spawn_build(&p);
    // Where a disk built here would be staged: a remote host's disks are
    // streamed from the host into the registry instead.
    let staged = common::state_dir().join("work/qemu-out");
    let disks_here = || -> Vec<String> {
        std::fs::read_dir(&staged)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.contains("openbsd-79"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (mut seen, mut landed) = (false, Vec::new());
    while build.try_wait().is_none() {
        seen |= qemu_on(&w);
        landed.extend(disks_here());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, s) = finished(build);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["built"], 1, "{s}");
    assert!(seen, "QEMU never ran as the host's user {}", w.user);
    assert!(
        landed.is_empty(),
        "disks landed on this machine: {landed:?}"
    );
    // What was streamed is what `kiln fetch` checks and delivers: the
    // disk, against the digest and sha256 its artifact names.
    let key = format!("{}/openbsd-base:openbsd-79-amd64-ocaml-5.5", p.namespace);
    p.entry(&key);
    let dest = tempfile::tempdir().unwrap();
    let out = p
        .command()
        .args(["fetch", &key, "--json", "--dest"])
        .arg(dest.path())
        .output_within(LIMIT)
        .unwrap();
    let fetched: Value = common::ok_json(out);
    assert!(fetched.to_string().contains(".qcow2"), "{fetched}");
    let log = std::fs::read_to_string(
        common::state_dir().join("log/openbsd_openbsd-79-amd64_5.5.0_amd64.log"),
    )
    .unwrap();
    assert!(log.contains("on qemu host far"), "{log}");
    // The verify boot logged in to the guest, through the host.
    assert!(log.contains("The OCaml toplevel, version 5.5.0"), "{log}");
    assert_host_clean(&w);
    // The unreachable host is down in the inventory; the other one is up,
    // its slots and builds read over ssh.
    let row = |name: &str| p.worker_row("qemu", name);
    let down = row("nowhere");
    assert!(
        down["health"].as_str().unwrap().starts_with("down since "),
        "{down}"
    );
    let far = row("far");
    assert_eq!(far["health"], "ok", "{far}");
    assert_eq!(far["busy"], 0, "{far}");
    // doctor checks the host over ssh: QEMU there, KVM judged as its user.
    let out = p
        .command()
        .args(["doctor", "--json"])
        .output_within(LIMIT)
        .unwrap();
    let doc = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(doc.contains("qemu host (far)"), "{doc}");
    assert!(doc.contains("QEMU emulator version"), "{doc}");
    assert!(doc.contains("KVM not usable (TCG)"), "{doc}");
}

/// Start a build on `w` and wait until its QEMU runs there.
fn build_running_on(w: &SshWorker, name: &str) -> (Profile, Spawned) {
    let p = profile(name, &host_toml(name, w), 600);
    let build = spawn_build(&p);
    common::wait_until("QEMU to run on the host", 120, || qemu_on(w));
    (p, build)
}

#[test]
fn a_cut_connection_leaves_nothing_on_the_qemu_host() {
    let test = "a_cut_connection_leaves_nothing_on_the_qemu_host";
    let Some((_lock, w)) = host_for(test, "qc") else {
        return;
    };
    let (p, build) = build_running_on(&w, "cut");
    // Cut it on the host's side: its sshd processes die.
    for pid in w.connection_pids() {
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status_within(Duration::from_secs(30));
    }
    let (code, s) = finished(build);
    assert_eq!(code, Some(1), "{s}");
    assert!(
        s.to_string().contains("infra"),
        "a lost host is infrastructure's: {s}"
    );
    assert_host_clean(&w);
    assert!(p.entries().is_empty(), "nothing published");
}

#[test]
fn a_killed_kiln_leaves_nothing_on_the_qemu_host() {
    let test = "a_killed_kiln_leaves_nothing_on_the_qemu_host";
    let Some((_lock, w)) = host_for(test, "qk") else {
        return;
    };
    let p = profile("killed", &host_toml("killed", &w), 600);
    let mut build = Spawned::start(
        "kiln build",
        p.command()
            .args(["build", "--platform", "openbsd", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    common::wait_until("QEMU to run on the host", 120, || qemu_on(&w));
    build.sigkill();
    // Nobody but the host itself can clean up now.
    assert_host_clean(&w);
}
