//! The QEMU builder through `kiln build`, with the tiny Linux guest
//! (scripts/qemu-fixture.sh): two builds at once, a verified and compacted
//! disk published as an artifact, fetched and booted through an overlay;
//! a hung install killed at the timeout, a failed smoke test, nothing left.
//!
//! Every test checks that no QEMU and no work dir is left in the shared
//! `.kiln/work/qemu`, which another test's build would fill: each holds
//! `LOCK` for its whole run, so the tests of this file run one at a time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

mod common;
use common::Profile;

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const RECIPE: &str = "platforms/openbsd/install-demo.sh";

/// A demo profile building OpenBSD (the tiny guest) on TCG, the release
/// renamed to `os` unless it is the demo's own `openbsd-7.9`.
fn profile(name: &str, os: &str, boot_timeout_secs: u64) -> Profile {
    let p = Profile::demo(&format!("qemu-{name}"))
        .toml(&common::qemu_toml(boot_timeout_secs))
        .create();
    if os != "openbsd-7.9" {
        p.edit("platforms/openbsd/platform.yaml", |t| {
            t.replace("  - id: openbsd-7.9\n", &format!("  - id: {os}\n"))
                .replace("aliases: [openbsd]", "aliases: []")
        });
    }
    p
}

fn build(p: &Profile) -> (Option<i32>, Value) {
    p.build(&["--platform", "openbsd"])
}

fn work() -> PathBuf {
    common::state_dir().join("work/qemu")
}

fn no_leftovers() {
    let ps = Command::new("pgrep")
        .args(["-f", &work().display().to_string()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "QEMU left running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    if work().exists() {
        let left: Vec<_> = std::fs::read_dir(work())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "work dirs left: {left:?}");
    }
}

fn boot_verify(disk: &Path) -> String {
    let fx = common::state_dir().join("fixtures/qemu");
    let serial = disk.with_extension("serial");
    let st = Command::new("timeout")
        .args([
            "120",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-display",
            "none",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(fx.join("vmlinuz"))
        .arg("-initrd")
        .arg(fx.join("initrd.gz"))
        .args([
            "-append",
            "console=ttyS0 quiet panic=1 kiln.mode=verify",
            "-drive",
        ])
        .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read_to_string(serial).unwrap()
}

/// Two builds at the same time (no fixed ports, no shared paths), both
/// expected to publish: profile `a` builds the demo's `openbsd-7.9`.
struct Pair {
    a: Profile,
    _b: Profile,
    ra: (Option<i32>, Value),
    rb: (Option<i32>, Value),
}

fn built_in_parallel(name: &str) -> Pair {
    let a = profile(&format!("{name}-a"), "openbsd-7.9", 300);
    let b = profile(&format!("{name}-b"), "openbsd-7.8", 300);
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| build(&a));
        let hb = s.spawn(|| build(&b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    Pair { a, _b: b, ra, rb }
}

fn key(a: &Profile) -> String {
    format!("{}/openbsd-base:openbsd-7.9-ocaml-5.5", a.namespace)
}

#[test]
fn two_builds_at_once_both_publish_and_leave_nothing() {
    let _serial = serial();
    let Pair { ra, rb, .. } = built_in_parallel("pair");
    assert_eq!(ra.0, Some(0), "{}", ra.1);
    assert_eq!(rb.0, Some(0), "{}", rb.1);
    assert_eq!(ra.1["built"], 1);
    assert_eq!(rb.1["built"], 1);
    no_leftovers();
}

#[test]
fn disk_is_published_as_qcow2_after_install_and_verify_boots() {
    let _serial = serial();
    let Pair { a, ra, .. } = built_in_parallel("publish");
    assert_eq!(ra.0, Some(0), "{}", ra.1);
    assert_eq!(a.entry(&key(&a))["kind"], "qcow2");
    let log = std::fs::read_to_string(
        common::state_dir().join("log/openbsd_openbsd-7.9_5.5.0_amd64.log"),
    )
    .unwrap();
    assert!(
        log.contains("KILN-INSTALL: ok")
            && log.contains("KILN-VERIFY: The OCaml toplevel, version 5.5.0"),
        "{log}"
    );
}

/// The worker side: fetch (verified, qemu-img check), overlay, boot it.
#[test]
fn fetched_disk_boots_through_an_overlay_and_verifies() {
    let _serial = serial();
    let Pair { a, ra, .. } = built_in_parallel("fetch");
    assert_eq!(ra.0, Some(0), "{}", ra.1);
    let dest = tempfile::tempdir().unwrap();
    let out = a
        .command()
        .args(["fetch", &key(&a), "--overlay", "--json", "--dest"])
        .arg(dest.path())
        .output()
        .unwrap();
    let v: Value = common::ok_json(out);
    let overlay = PathBuf::from(v["overlay"].as_str().unwrap());
    assert!(boot_verify(&overlay).contains("KILN-VERIFY: The OCaml toplevel, version 5.5.0"));
}

/// A second round: unchanged, nothing boots.
#[test]
fn second_round_without_changes_builds_nothing() {
    let _serial = serial();
    let Pair { a, ra, .. } = built_in_parallel("again");
    assert_eq!(ra.0, Some(0), "{}", ra.1);
    let (_, again) = build(&a);
    assert_eq!(again["unchanged"], 1, "{again}");
}

/// A hung install is killed at the timeout; nothing is published or left.
#[test]
fn hung_install_is_killed_at_the_timeout_and_leaves_nothing() {
    let _serial = serial();
    let c = profile("hang", "openbsd-7.7", 20);
    std::fs::write(c.file(RECIPE), "sleep 600\n").unwrap();
    let (code, s) = build(&c);
    assert_eq!(code, Some(1), "{s}");
    assert!(
        serde_json::to_string(&s).unwrap().contains("timed out"),
        "{s}"
    );
    assert!(c.entries().is_empty());
    no_leftovers();
}

/// An install that leaves the wrong compiler fails the verify boot.
#[test]
fn wrong_compiler_fails_the_verify_boot_and_publishes_nothing() {
    let _serial = serial();
    let d = profile("smoke", "openbsd-7.6", 300);
    d.edit(RECIPE, |t| {
        t.replace("version {{ocaml_version}}", "version 4.02.3")
    });
    let (code, s) = build(&d);
    assert_eq!(code, Some(1), "{s}");
    let err = serde_json::to_string(&s).unwrap();
    assert!(err.contains("verify did not report success"), "{err}");
    assert!(d.entries().is_empty());
    no_leftovers();
}

/// `kiln build` killed outright (SIGKILL) in the middle of an install that
/// would go on for ten minutes: only Kiln's death can end this QEMU early.
struct Killed {
    k: Profile,
    /// The recipe as it was before the hanging install replaced it.
    recipe: String,
    /// What the killed build's QEMU command lines contain: its work dir.
    ours: String,
}

impl Killed {
    fn qemu_running(&self) -> bool {
        common::running(&self.ours)
    }

    fn wait_for_qemu_to_die(&self) {
        common::wait_until("QEMU to die with the kiln that started it", 10, || {
            !self.qemu_running()
        });
    }
}

impl Drop for Killed {
    /// The killed build's work dir, when no later build swept it.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(work()) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            if e.path().display().to_string().starts_with(&self.ours) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn kiln_killed_mid_install(name: &str) -> Killed {
    let k = profile(name, "openbsd-7.5", 300);
    let recipe = std::fs::read_to_string(k.file(RECIPE)).unwrap();
    std::fs::write(k.file(RECIPE), "sleep 600\n").unwrap();
    let mut child: Child = k
        .command()
        .args(["build", "--platform", "openbsd", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let killed = Killed {
        ours: format!("{}/{}-", work().display(), child.id()),
        k,
        recipe,
    };
    common::wait_until("QEMU to start", 120, || killed.qemu_running());
    child.kill().unwrap();
    child.wait().unwrap();
    killed
}

#[test]
fn qemu_dies_with_a_killed_kiln() {
    let _serial = serial();
    let killed = kiln_killed_mid_install("killed");
    killed.wait_for_qemu_to_die();
}

/// The next build removes the killed build's work dir and publishes.
#[test]
fn next_build_after_a_killed_kiln_sweeps_its_work_dir_and_publishes() {
    let _serial = serial();
    let killed = kiln_killed_mid_install("killed-next");
    killed.wait_for_qemu_to_die();
    std::fs::write(killed.k.file(RECIPE), &killed.recipe).unwrap();
    let (code, s) = build(&killed.k);
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
    no_leftovers();
}
