//! `kiln gc --registry` on a registry holding several rounds of one tag:
//! the registry is the one `scripts/services.sh` runs (started here on a
//! private port and state dir by `services.sh registry-up`, with deletion
//! enabled), and `registry.garbage_collect` is `services.sh registry-gc`.
//!
//! Three rounds publish three builds of one tag (each with 4 MiB of its
//! own); a stray tag nobody published (another image) sits beside them. With a retention
//! of a day nothing goes (the history is young, the stray just seen);
//! with none, a dry run names what would go and deletes nothing; then gc
//! deletes the two replaced builds (index, immutable tag, children) and
//! the stray, the registry's garbage collection frees their blobs (its
//! disk usage drops), `kiln verify` stays clean, and the current pin
//! still pulls in full.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Bounded, LIMIT, Profile, fixtures, free_port, root};

/// A registry started by `scripts/services.sh registry-up` in its own
/// state dir; `registry-down` on drop.
struct ServicesRegistry {
    state: tempfile::TempDir,
    addr: String,
}

impl ServicesRegistry {
    fn services(&self, what: &str) -> std::process::Output {
        Command::new("bash")
            .arg(root().join("scripts/services.sh"))
            .arg(what)
            .env("KILN_STATE_DIR", self.state.path())
            .env("KILN_REGISTRY_ADDR", &self.addr)
            .output_within(LIMIT)
            .unwrap()
    }

    fn start() -> ServicesRegistry {
        let r = ServicesRegistry {
            state: tempfile::tempdir().unwrap(),
            addr: format!("127.0.0.1:{}", free_port()),
        };
        let out = r.services("registry-up");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        r
    }

    fn data(&self) -> PathBuf {
        self.state.path().join("registry/data")
    }

    /// `registry.garbage_collect` for this registry.
    fn gc_command(&self) -> String {
        format!(
            "KILN_STATE_DIR={} KILN_REGISTRY_ADDR={} bash {}",
            self.state.path().display(),
            self.addr,
            root().join("scripts/services.sh registry-gc").display()
        )
    }
}

impl Drop for ServicesRegistry {
    fn drop(&mut self) {
        let _ = self.services("registry-down");
    }
}

fn du_bytes(dir: &Path) -> u64 {
    let out = Command::new("du")
        .arg("-sb")
        .arg(dir)
        .output_within(LIMIT)
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// HTTP status of a manifest HEAD.
fn head(addr: &str, repo: &str, reference: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I"])
        .args(["-H", "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"])
        .arg(format!("http://{addr}/v2/{repo}/manifests/{reference}"))
        .output_within(LIMIT)
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn gc(p: &Profile, reg: &ServicesRegistry, args: &[&str]) -> serde_json::Value {
    let out = p
        .command()
        .env("KILN_REGISTRY_GARBAGE_COLLECT", reg.gc_command())
        .args(["gc", "--registry", "--json"])
        .args(args)
        .output_within(LIMIT)
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn removed(report: &serde_json::Value) -> Vec<String> {
    let mut r: Vec<String> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["digest"].as_str().unwrap().to_string())
        .collect();
    r.sort();
    r
}

#[test]
fn gc_deletes_what_nothing_references_and_the_registry_frees_it() {
    fixtures();
    let reg = ServicesRegistry::start();
    let p = Profile::busybox("gc", "busybox-gc")
        .registry_url(&format!("http://{}", reg.addr))
        .own_state()
        .create();
    let repo = format!("{}/opam", p.namespace);
    let key = format!("{repo}:busybox-gc-ocaml-5.5");
    let recipe = "platforms/linux/busybox.Dockerfile";
    let mut rounds = Vec::new();
    // Each round's payload replaces the last one's (not added after it:
    // the engine's layer cache would give a later round the earlier
    // rounds' payloads, still referenced by the current image).
    let base = std::fs::read_to_string(p.file(recipe)).unwrap();
    for round in 1..=3 {
        p.edit(recipe, |_| {
            format!("{base}RUN head -c 4194304 /dev/urandom > /round-{round}\n")
        });
        let (code, summary) = p.build(&[]);
        assert_eq!(code, Some(0), "{summary:#}");
        rounds.push(p.entry(&key));
    }
    let current = rounds[2].clone();
    let history: Vec<&str> = current["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["digest"].as_str().unwrap())
        .collect();
    assert_eq!(history.len(), 2, "{current:#}");
    // A tag nobody published (as a build that never reached a lockfile
    // leaves): another image, the busybox fixture, with its children.
    let stray = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg("docker://127.0.0.1:5000/kiln-fixtures/busybox:latest")
        .arg(format!("docker://{}/{repo}:stray", reg.addr))
        .output_within(LIMIT)
        .unwrap();
    assert!(
        stray.status.success(),
        "{}",
        String::from_utf8_lossy(&stray.stderr)
    );
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/{repo}:stray", reg.addr))
        .output_within(LIMIT)
        .unwrap();
    assert!(raw.status.success());
    let stray_digest = kiln::registry::sha256_digest(&raw.stdout);

    // Young history, a stray just seen: nothing goes.
    let young = gc(&p, &reg, &["--retention-days", "1"]);
    assert_eq!(removed(&young), Vec::<String>::new(), "{young:#}");
    assert_eq!(young["waiting"].as_array().unwrap().len(), 1, "{young:#}");
    // No retention, dry run: named, not deleted.
    let dry = gc(&p, &reg, &["--retention-days", "0", "--dry-run"]);
    let mut expected: Vec<String> = history.iter().map(|d| d.to_string()).collect();
    expected.push(stray_digest.clone());
    expected.sort();
    assert_eq!(removed(&dry), expected, "{dry:#}");
    assert_eq!(head(&reg.addr, &repo, history[1]), "200");

    let before = du_bytes(&reg.data());
    let done = gc(&p, &reg, &["--retention-days", "0"]);
    assert_eq!(removed(&done), expected, "{done:#}");
    let after = du_bytes(&reg.data());
    assert!(
        after + 6 * 1024 * 1024 < before,
        "the registry's disk dropped by two builds' payloads: {before} -> {after}"
    );
    // The replaced builds are gone: indexes, immutable tags, children.
    for (i, old) in rounds[..2].iter().enumerate() {
        assert_eq!(
            head(&reg.addr, &repo, old["digest"].as_str().unwrap()),
            "404",
            "round {i}"
        );
        assert_eq!(
            head(&reg.addr, &repo, old["immutable_tag"].as_str().unwrap()),
            "404"
        );
        for a in old["arches"].as_object().unwrap().values() {
            assert_eq!(head(&reg.addr, &repo, a["digest"].as_str().unwrap()), "404");
        }
    }
    assert_eq!(head(&reg.addr, &repo, "stray"), "404");
    assert_eq!(head(&reg.addr, &repo, &stray_digest), "404");
    // What is referenced survives: verify is clean and the pin pulls in full.
    let verify = p.kiln(&["verify", "--deep"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let pulled = tempfile::tempdir().unwrap();
    let copy = Command::new("skopeo")
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!(
            "docker://{}/{repo}@{}",
            reg.addr,
            current["digest"].as_str().unwrap()
        ))
        .arg(format!("oci:{}:pin", pulled.path().display()))
        .output_within(LIMIT)
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    // And gc again finds nothing.
    let again = gc(&p, &reg, &["--retention-days", "0"]);
    assert_eq!(removed(&again), Vec::<String>::new(), "{again:#}");
}

/// The daemon runs `kiln gc --registry` on `daemon.registry_gc_schedule`,
/// then the registry's garbage collection: a stray image nobody published
/// goes without anyone asking.
#[test]
fn the_daemon_runs_registry_gc_on_its_schedule() {
    fixtures();
    let reg = ServicesRegistry::start();
    let port = free_port();
    let ran = reg.state.path().join("collected");
    let p = Profile::busybox("gcdaemon", "busybox-gcdaemon")
        .registry_url(&format!("http://{}", reg.addr))
        .own_state()
        .toml(&format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"t\"\n[daemon]\n\
             schedule = \"0 0 3 1 1 *\"\nmax_attempts = 3\npoll_secs = 0\n\
             registry_gc_schedule = \"*/2 * * * * *\"\n"
        ))
        .create();
    let repo = format!("{}/opam", p.namespace);
    let stray = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg("docker://127.0.0.1:5000/kiln-fixtures/busybox:latest")
        .arg(format!("docker://{}/{repo}:stray", reg.addr))
        .output_within(LIMIT)
        .unwrap();
    assert!(
        stray.status.success(),
        "{}",
        String::from_utf8_lossy(&stray.stderr)
    );
    assert_eq!(head(&reg.addr, &repo, "stray"), "200");
    let _daemon = common::Spawned::piped(
        "kiln daemon",
        p.command()
            .env("KILN_REGISTRY_RETENTION_DAYS", "0")
            .env(
                "KILN_REGISTRY_GARBAGE_COLLECT",
                format!("{} && touch {}", reg.gc_command(), ran.display()),
            )
            .arg("daemon"),
    );
    common::wait_until("the daemon's registry gc", 120, || {
        head(&reg.addr, &repo, "stray") == "404" && ran.exists()
    });
}
