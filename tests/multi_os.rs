//! Multi-OS-version Windows indexes against the real registry, without a
//! Windows engine: two small fixture images pushed with Windows platform
//! fields (`os.version` in their configs; the registry does not care what
//! a layer holds) are published as the per-release tags of a two-release
//! Windows catalogue through Kiln's publication, then
//! `publish_multi_os_indexes` assembles `windows-all-mingw-ocaml-5.5` (and
//! its alias) from them, and the registry answers with one entry per
//! build, each with its `os.version`.

use std::collections::BTreeMap;
use std::process::Command;

use kiln::catalogue::Arch;
use kiln::plan::{Filter, Target};
use kiln::publish::lockfile::{ArchEntry, ArtifactKind, Entry, Lockfile};
use kiln::registry::index::{self, Platform};
use kiln::registry::{OCI_MANIFEST, Registry, sha256_digest};
use serde_json::json;

mod common;
use common::Bounded;

const BUILDS: [(&str, &str, &str); 2] = [
    ("windows-mingw-ltsc2019", "10.0.17763", "10.0.17763.5696"),
    (
        "windows-server-mingw-ltsc2022",
        "10.0.20348",
        "10.0.20348.2402",
    ),
];

fn registry() -> Registry {
    let cfg = kiln::config::Config::defaults(std::path::Path::new("/")).unwrap();
    Registry::new(&cfg.registry).unwrap()
}

fn skopeo_raw(reference: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://127.0.0.1:5000/{reference}"))
        .output_within(common::LIMIT)
        .unwrap();
    common::ok_json(out)
}

/// A catalogue of OCaml 5.5.0 on two Windows releases of the mingw port,
/// both entries of `windows-all-mingw`.
fn catalogue(dir: &std::path::Path) -> kiln::catalogue::Catalogue {
    let (v, p) = (dir.join("versions"), dir.join("platforms/windows"));
    std::fs::create_dir_all(&v).unwrap();
    std::fs::create_dir_all(&p).unwrap();
    let demo = common::root().join("scripts/demo/versions/5.5.yaml");
    std::fs::copy(demo, v.join("5.5.yaml")).unwrap();
    std::fs::write(
        v.join("sets.yaml"),
        "recent: [\"5.5\"]\nsignificant: [\"5.5\"]\n",
    )
    .unwrap();
    let mut releases = String::new();
    for (os, build, _) in BUILDS {
        releases.push_str(&format!(
            "  - id: {os}\n    distro: windows-mingw\n    tier: 2\n    arches: [amd64]\n    recipes: [mingw.Dockerfile]\n    os_version: \"{build}\"\n    multi_os_index: windows-all-mingw\n"
        ));
    }
    std::fs::write(
        p.join("platform.yaml"),
        format!("platform: windows\nbuilder: docker\nrepository: opam\nbare_aliases: false\nreleases:\n{releases}"),
    )
    .unwrap();
    std::fs::write(
        p.join("policy.yaml"),
        "versions: [latest]\nrequired_tiers: [2]\n",
    )
    .unwrap();
    std::fs::write(p.join("mingw.Dockerfile"), "FROM scratch\n").unwrap();
    kiln::catalogue::load(&v, &dir.join("platforms")).unwrap()
}

/// Push a one-layer Windows image whose config names `os.version`; returns
/// its manifest digest.
async fn push_windows_image(reg: &Registry, repo: &str, os_version: &str) -> String {
    let layer = format!("not a Windows layer, {os_version}").into_bytes();
    let (ld, ls) = reg.push_blob(repo, layer.clone().into()).await.unwrap();
    let cfg = json!({"os": "windows", "os.version": os_version, "architecture": "amd64",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]}, "config": {}});
    let (cd, cs) = reg
        .push_blob(repo, serde_json::to_vec(&cfg).unwrap().into())
        .await
        .unwrap();
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]});
    let bytes = serde_json::to_vec(&m).unwrap();
    reg.put_manifest(repo, &sha256_digest(&bytes), &bytes, OCI_MANIFEST)
        .await
        .unwrap()
}

/// Publish `child` as target `t`'s tag through Kiln's publication: its
/// per-release index, verified, tagged and recorded in the lockfile.
async fn publish_release(
    reg: &Registry,
    lockfile: &std::path::Path,
    t: &Target,
    ns: &str,
    child: &str,
) {
    let repo = t.tag_id(ns).repository;
    let required = [Platform::for_arch("windows", Arch::Amd64)];
    let idx = index::assemble(
        reg,
        &repo,
        &[child.to_string()],
        &required,
        &BTreeMap::new(),
    )
    .await
    .unwrap();
    let entry = Entry {
        kind: ArtifactKind::Image,
        platform: t.platform.clone(),
        os: t.os.clone(),
        ocaml: t.version.clone(),
        variant: None,
        repository: repo,
        tag: t.tag.clone(),
        immutable_tag: format!("{}-{}", t.immutable_tag("sha256:0123456789ab"), t.os),
        aliases: t.aliases.clone(),
        digest: idx.digest,
        arches: BTreeMap::from([(
            Arch::Amd64,
            ArchEntry {
                digest: child.to_string(),
                build_key: "k".into(),
                size: None,
            },
        )]),
        build_key: "k".into(),
        inputs: BTreeMap::new(),
        published_at: chrono::Utc::now(),
        verified_at: None,
        history: vec![],
        adopted: None,
        repairs: vec![],
    };
    kiln::publish::publish(reg, lockfile, entry, &required, "test")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_multi_os_index_is_assembled_from_the_published_releases_with_their_os_versions() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalogue(dir.path());
    let ns = format!("kiln-test-multios-{}", std::process::id());
    let _gone = common::registry::Published::namespace("http://127.0.0.1:5000", &ns);
    let repo = format!("{ns}/opam");
    let lockfile = dir.path().join("manifests/lockfile.json");
    let targets = kiln::plan::expand(&cat, &Filter::default()).unwrap();
    assert_eq!(targets.len(), 2);
    let reg = registry();

    let mut children = Vec::new();
    for (t, (os, _, build)) in targets.iter().zip(BUILDS) {
        assert_eq!(t.os, os);
        children.push((push_windows_image(&reg, &repo, build).await, build));
    }
    // One release published: the index waits for the other.
    publish_release(&reg, &lockfile, &targets[0], &ns, &children[0].0).await;
    let moved = kiln::publish::publish_multi_os_indexes(&reg, &lockfile, &targets, &ns)
        .await
        .unwrap();
    assert!(moved.is_empty(), "{moved:?}");
    assert!(
        reg.head_manifest(&repo, "windows-all-mingw-ocaml-5.5")
            .await
            .unwrap()
            .is_none()
    );
    // The per-release index carries its child's build.
    let one = skopeo_raw(&format!("{repo}:windows-mingw-ltsc2019-ocaml-5.5"));
    assert_eq!(
        one["manifests"][0]["platform"]["os.version"],
        "10.0.17763.5696"
    );

    // Both published: the index and its alias (5.5.0 is the newest).
    publish_release(&reg, &lockfile, &targets[1], &ns, &children[1].0).await;
    let moved = kiln::publish::publish_multi_os_indexes(&reg, &lockfile, &targets, &ns)
        .await
        .unwrap();
    assert_eq!(
        moved,
        [
            format!("{repo}:windows-all-mingw-ocaml-5.5"),
            format!("{repo}:windows-all-mingw")
        ]
    );
    let raw = skopeo_raw(&format!("{repo}:windows-all-mingw-ocaml-5.5"));
    let entries: Vec<(String, String, String, String)> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
            (
                s(&p["os"]),
                s(&p["architecture"]),
                s(&p["os.version"]),
                s(&m["digest"]),
            )
        })
        .collect();
    let want: Vec<(String, String, String, String)> = children
        .iter()
        .map(|(d, b)| ("windows".into(), "amd64".into(), b.to_string(), d.clone()))
        .collect();
    assert_eq!(entries, want);
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.version"],
        "5.5.0"
    );
    let alias = skopeo_raw(&format!("{repo}:windows-all-mingw"));
    assert_eq!(alias, raw);

    // Nothing changed: nothing moves.
    let moved = kiln::publish::publish_multi_os_indexes(&reg, &lockfile, &targets, &ns)
        .await
        .unwrap();
    assert!(moved.is_empty(), "{moved:?}");
    // The gate still judges the releases' own tags only.
    let lock = Lockfile::load(&lockfile).unwrap();
    assert_eq!(lock.entries.len(), 2);
}
