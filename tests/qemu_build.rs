//! The QEMU builder through `kiln build`, with the tiny Linux guest
//! (scripts/qemu-fixture.sh): two builds at once, a verified and compacted
//! disk published as an artifact, fetched and booted through an overlay;
//! a hung install killed at the timeout, a failed smoke test, nothing left.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::publish::lockfile::{ArtifactKind, Lockfile};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Profile {
    dir: tempfile::TempDir,
    config: PathBuf,
    namespace: String,
}

fn profile(name: &str, timeout_secs: u64) -> Profile {
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
    let namespace = format!("kiln-test-qemu-{name}-{}", std::process::id());
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nmanifests_dir = \"manifests\"\n[database]\npath = \"kiln.db\"\n[registry]\nnamespace = \"{namespace}\"\n[plan]\nopam_repository_commit = \"test-pinned\"\n[qemu]\naccel = \"tcg\"\nsystem = \"qemu-system-x86_64\"\nimg = \"qemu-img\"\nboot_timeout_secs = {timeout_secs}\n",
            root().join(".kiln").display()
        ),
    )
    .unwrap();
    Profile {
        dir,
        config,
        namespace,
    }
}

impl Profile {
    fn rename_os(&self, to: &str) {
        let pf = self.dir.path().join("platforms/openbsd/platform.yaml");
        let t = std::fs::read_to_string(&pf).unwrap();
        std::fs::write(
            &pf,
            t.replace("  - id: openbsd-7.9\n", &format!("  - id: {to}\n"))
                .replace("aliases: [openbsd]", "aliases: []"),
        )
        .unwrap();
    }

    fn recipe(&self) -> PathBuf {
        self.dir.path().join("platforms/openbsd/install-demo.sh")
    }

    fn build(&self) -> (Option<i32>, serde_json::Value) {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--config")
            .arg(&self.config)
            .args(["build", "--platform", "openbsd", "--json"])
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
}

fn no_leftovers() {
    let work = root().join(".kiln/work/qemu");
    let ps = Command::new("pgrep")
        .args(["-f", &work.display().to_string()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "QEMU left running: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    if work.exists() {
        let left: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "work dirs left: {left:?}");
    }
}

fn boot_verify(disk: &Path) -> String {
    let fx = root().join(".kiln/fixtures/qemu");
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

#[test]
fn qemu_images_build_in_parallel_verify_publish_and_fail_cleanly() {
    // Two builds at the same time: no fixed ports, no shared paths.
    let a = profile("a", 300);
    let b = profile("b", 300);
    b.rename_os("openbsd-7.8");
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| a.build());
        let hb = s.spawn(|| b.build());
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert_eq!(ra.0, Some(0), "{}", ra.1);
    assert_eq!(rb.0, Some(0), "{}", rb.1);
    assert_eq!(ra.1["built"], 1);
    assert_eq!(rb.1["built"], 1);
    let lock = Lockfile::load(&a.dir.path().join("manifests/lockfile.json")).unwrap();
    let key = format!("{}/openbsd-base:openbsd-7.9-ocaml-5.5", a.namespace);
    assert_eq!(lock.entries[&key].kind, ArtifactKind::Qcow2);
    let log = std::fs::read_to_string(root().join(".kiln/log/openbsd_openbsd-7.9_5.5.0_amd64.log"))
        .unwrap();
    assert!(
        log.contains("KILN-INSTALL: ok")
            && log.contains("KILN-VERIFY: The OCaml toplevel, version 5.5.0"),
        "{log}"
    );
    no_leftovers();

    // The worker side: fetch (verified, qemu-img check), overlay, boot it.
    let dest = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&a.config)
        .args(["fetch", &key, "--overlay", "--json", "--dest"])
        .arg(dest.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let overlay = PathBuf::from(v["overlay"].as_str().unwrap());
    assert!(boot_verify(&overlay).contains("KILN-VERIFY: The OCaml toplevel, version 5.5.0"));

    // A second round: unchanged, nothing boots.
    let (_, again) = a.build();
    assert_eq!(again["unchanged"], 1, "{again}");

    // A hung install is killed at the timeout; nothing is published or left.
    let c = profile("hang", 20);
    c.rename_os("openbsd-7.7");
    std::fs::write(c.recipe(), "sleep 600\n").unwrap();
    let (code, s) = c.build();
    assert_eq!(code, Some(1), "{s}");
    assert!(
        serde_json::to_string(&s).unwrap().contains("timed out"),
        "{s}"
    );
    assert!(
        Lockfile::load(&c.dir.path().join("manifests/lockfile.json"))
            .unwrap()
            .entries
            .is_empty()
    );
    no_leftovers();

    // An install that leaves the wrong compiler fails the verify boot.
    let d = profile("smoke", 300);
    d.rename_os("openbsd-7.6");
    let text = std::fs::read_to_string(d.recipe()).unwrap();
    std::fs::write(
        d.recipe(),
        text.replace("version {{ocaml_version}}", "version 4.02.3"),
    )
    .unwrap();
    let (code, s) = d.build();
    assert_eq!(code, Some(1), "{s}");
    let err = serde_json::to_string(&s).unwrap();
    assert!(err.contains("verify did not report success"), "{err}");
    assert!(
        Lockfile::load(&d.dir.path().join("manifests/lockfile.json"))
            .unwrap()
            .entries
            .is_empty()
    );
    no_leftovers();

    // `kiln build` killed outright (SIGKILL) in the middle of an install:
    // QEMU dies with it; the next build removes its work dir and publishes.
    let k = profile("killed", 300);
    k.rename_os("openbsd-7.5");
    // An install that would go on for ten minutes: only Kiln's death can
    // end this QEMU early.
    let text = std::fs::read_to_string(k.recipe()).unwrap();
    std::fs::write(k.recipe(), "sleep 600\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&k.config)
        .args(["build", "--platform", "openbsd", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ours = format!(
        "{}/{}-",
        root().join(".kiln/work/qemu").display(),
        child.id()
    );
    let qemu_running = || {
        !Command::new("pgrep")
            .args(["-f", &ours])
            .output()
            .unwrap()
            .stdout
            .is_empty()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !qemu_running() {
        assert!(std::time::Instant::now() < deadline, "QEMU never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while qemu_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU outlived the kiln that started it"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::write(k.recipe(), text).unwrap();
    let (code, s) = k.build();
    assert_eq!((code, &s["built"]), (Some(0), &serde_json::json!(1)), "{s}");
    no_leftovers();
}
