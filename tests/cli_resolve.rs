//! `kiln resolve` on the command line: exit codes CI scripts rely on.

use serde_json::json;

mod common;
use common::Profile;

fn digest(n: u8) -> String {
    format!("sha256:{}", hex::encode([n; 32]))
}

/// Kiln's defaults, an empty catalogue slice (only what is published
/// resolves) and a lockfile with one two-arch image, written as the JSON
/// `kiln build` publishes (manifests/lockfile.schema.json).
fn setup() -> Profile {
    let p = Profile::bare();
    let entry = json!({
        "kind": "image",
        "platform": "linux",
        "os": "debian-13",
        "ocaml": "5.5.0",
        "repository": "kiln/opam",
        "tag": "debian-13-ocaml-5.5",
        "immutable_tag": "debian-13-ocaml-5.5.0-b1",
        "aliases": ["debian-ocaml-5.5"],
        "digest": digest(1),
        "arches": {
            "amd64": {"digest": digest(11), "build_key": "k"},
            "arm64": {"digest": digest(12), "build_key": "k"},
        },
        "build_key": "key",
        "inputs": {},
        "published_at": chrono::Utc::now(),
        "history": [],
    });
    let lock = json!({
        "schema_version": kiln::publish::lockfile::SCHEMA_VERSION,
        "entries": {"kiln/opam:debian-13-ocaml-5.5": entry},
    });
    std::fs::create_dir_all(p.file("manifests")).unwrap();
    std::fs::write(p.lockfile_path(), serde_json::to_vec_pretty(&lock).unwrap()).unwrap();
    p
}

#[test]
fn pinned_reference_exit_0() {
    let p = setup();
    let out = p.kiln(&["resolve", "ocaml/opam:debian-ocaml-5.5"]);
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
    let out = p.kiln(&[
        "resolve",
        "ocaml/opam:debian-13-ocaml-5.5",
        "--arch",
        "arm64",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["arch_digest"], digest(12));
}

#[test]
fn unknown_name_exit_2_with_suggestion() {
    let p = setup();
    let out = p.kiln(&["resolve", "ocaml/opam:debian-12-ocaml-5.5"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let hint = err
        .lines()
        .find(|l| l.contains("did you mean"))
        .unwrap_or_default();
    assert!(hint.contains("opam:debian-13-ocaml-5.5"), "{err}");
    let out = p.kiln(&["resolve", "not an image"]);
    assert_eq!(out.status.code(), Some(2));
}
