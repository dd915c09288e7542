//! The registry SIGKILLed while `kiln build` streams a layer into it, as an
//! operator saw it happen: Kiln must end with an error that names the
//! registry and the fix and a non-zero exit (not die by SIGPIPE, exit 141,
//! printing nothing), its cleanup must run (no smoke container, no local
//! build image, no work dir of its own left), and once the registry is
//! back a rerun completes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Bounded, LIMIT, PrivateRegistry, Profile, Spawned, fixtures};

/// Whether the registry is receiving a blob upload of more than a MiB
/// (distribution writes it under `_uploads/<id>/data`).
fn uploading(storage: &std::path::Path) -> bool {
    let out = Command::new("find")
        .arg(storage)
        .args(["-path", "*/_uploads/*/data", "-size", "+1M"])
        .output_within(LIMIT)
        .unwrap();
    !out.stdout.is_empty()
}

fn lines(cmd: &mut Command) -> Vec<String> {
    let out = cmd.output_within(LIMIT).unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_registry_killed_mid_upload_is_a_clear_error_and_the_rerun_completes() {
    fixtures();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = PrivateRegistry::start(&dir.path().join("registry"));
    let host = format!("127.0.0.1:{}", registry.port);
    // 96 MiB that gzip cannot shrink: one long upload to kill.
    let p = Profile::busybox("killed", "busybox-killed")
        .recipe_prefix("RUN head -c 100663296 /dev/urandom > /payload\n")
        .registry_url(&registry.url())
        .own_state()
        .create();
    let child = Spawned::piped("kiln build", p.command().args(["build", "--json"]));
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !uploading(&registry.storage) {
        assert!(Instant::now() < deadline, "no upload started");
        std::thread::sleep(Duration::from_millis(20));
    }
    registry.kill();
    let out = child.output_within(LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An exit code, not a signal; and it says why.
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0),
        "status {:?} (141 or a signal is SIGPIPE)\n{stdout}\n{stderr}",
        out.status
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no summary on stdout: {stdout}\n{stderr}"));
    let tag = &summary["tags"][0];
    assert_eq!(tag["outcome"]["outcome"], "failed", "{summary:#}");
    assert_eq!(tag["outcome"]["kind"], "infra", "{summary:#}");
    let error = serde_json::to_string(&tag).unwrap();
    assert!(
        error.contains(&format!("registry {host}")) && error.contains("check that"),
        "the error names the registry and the fix: {error}"
    );
    // The build's cleanup ran: nothing of that process is left.
    let owner = format!("{}/{pid}", kiln::process::hostname());
    let containers = lines(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=org.ocaml.kiln.owner={owner}"),
    ]));
    assert_eq!(containers, Vec::<String>::new());
    let images = lines(Command::new("docker").args([
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "kiln-build/amd64",
    ]));
    let mine: Vec<&String> = images
        .iter()
        .filter(|i| i.starts_with(&format!("kiln-build/amd64:{pid}-")))
        .collect();
    assert!(mine.is_empty(), "{mine:?}");
    let work = p.path().join("state/work/docker");
    let left: Vec<String> = std::fs::read_dir(&work)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{pid}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "work dirs left in {}: {left:?}",
        work.display()
    );

    // The registry is back: the rerun publishes.
    registry.restart();
    let (code, summary) = p.build(&[]);
    assert_eq!(code, Some(0), "{summary:#}");
    assert_eq!(summary["failed"], 0, "{summary:#}");
    let key = format!("{}/opam:busybox-killed-ocaml-5.5", p.namespace);
    assert!(p.entry(&key)["digest"].is_string());
}
