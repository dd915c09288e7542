//! `kiln resolve` on the command line: exit codes CI scripts rely on.

use std::collections::BTreeMap;
use std::process::Command;

use kiln::publish::lockfile::{ArchEntry, ArtifactKind, Entry, Lockfile};

fn digest(n: u8) -> String {
    format!("sha256:{}", hex::encode([n; 32]))
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut lock = Lockfile::default();
    let mut arches = BTreeMap::new();
    arches.insert(
        kiln::catalogue::Arch::Amd64,
        ArchEntry {
            digest: digest(11),
            build_key: "k".into(),
            size: None,
        },
    );
    arches.insert(
        kiln::catalogue::Arch::Arm64,
        ArchEntry {
            digest: digest(12),
            build_key: "k".into(),
            size: None,
        },
    );
    lock.publish(
        Entry {
            kind: ArtifactKind::Image,
            platform: "linux".into(),
            os: "debian-13".into(),
            ocaml: "5.5.0".parse().unwrap(),
            variant: None,
            repository: "kiln/opam".into(),
            tag: "debian-13-ocaml-5.5".into(),
            immutable_tag: "debian-13-ocaml-5.5.0-b1".into(),
            aliases: vec!["debian-ocaml-5.5".into()],
            digest: digest(1),
            arches,
            build_key: "key".into(),
            inputs: BTreeMap::new(),
            published_at: chrono::Utc::now(),
            verified_at: None,
            history: vec![],
            adopted: None,
        },
        "new",
    );
    // An empty catalogue slice: only what is published resolves.
    std::fs::create_dir_all(dir.path().join("versions")).unwrap();
    std::fs::create_dir_all(dir.path().join("platforms")).unwrap();
    lock.save(&dir.path().join("manifests/lockfile.json"))
        .unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(&config, "").unwrap();
    (dir, config)
}

fn kiln(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn pinned_reference_exit_0() {
    let (_d, config) = setup();
    let out = kiln(&config, &["resolve", "ocaml/opam:debian-ocaml-5.5"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("127.0.0.1:5000/kiln/opam:debian-13-ocaml-5.5@{}", digest(1))
    );
    let out = kiln(
        &config,
        &[
            "resolve",
            "ocaml/opam:debian-13-ocaml-5.5",
            "--arch",
            "arm64",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["arch_digest"], digest(12));
}

#[test]
fn unknown_name_exit_2_with_suggestion() {
    let (_d, config) = setup();
    let out = kiln(&config, &["resolve", "ocaml/opam:debian-12-ocaml-5.5"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let hint = err
        .lines()
        .find(|l| l.contains("did you mean"))
        .unwrap_or_default();
    assert!(hint.contains("opam:debian-13-ocaml-5.5"), "{err}");
    let out = kiln(&config, &["resolve", "not an image"]);
    assert_eq!(out.status.code(), Some(2));
}
