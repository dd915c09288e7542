//! Two factories, one namespace (issue #31): each keeps its own state dir
//! and lockfile, and the lockfile they publish to the registry
//! (`<namespace>/kiln-lockfile:latest`) ends with both sets of entries; a
//! tag one of them published later is never moved back by the other.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Bounded, LIMIT, Profile, Spawned, fixtures, ok_json};

const REGISTRY: &str = "http://127.0.0.1:5000";

/// The one tag of a busybox profile.
fn key(p: &Profile, os: &str) -> String {
    format!("{}/opam:{os}-ocaml-5.5", p.namespace)
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sSf"])
        .args(args)
        .output_within(Duration::from_secs(60))
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The lockfile the registry publishes for `namespace`, and who pushed it.
fn published(namespace: &str) -> (serde_json::Value, String) {
    let repo = format!("{namespace}/kiln-lockfile");
    let manifest: serde_json::Value = serde_json::from_slice(&curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("{REGISTRY}/v2/{repo}/manifests/latest"),
    ]))
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let lock =
        serde_json::from_slice(&curl(&[&format!("{REGISTRY}/v2/{repo}/blobs/{layer}")])).unwrap();
    let writer = manifest["annotations"]["org.ocaml.kiln.writer"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (lock, writer)
}

/// The digest a tag points at in the registry.
fn tag_digest(repository: &str, tag: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sSfI",
            "-H",
            "Accept: application/vnd.oci.image.index.v1+json",
            &format!("{REGISTRY}/v2/{repository}/manifests/{tag}"),
        ])
        .output_within(Duration::from_secs(60))
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("docker-content-digest:")
                .map(|d| d.trim().to_string())
        })
        .unwrap()
}

fn build(p: &Profile, what: &str) -> Spawned {
    Spawned::piped(what, p.command().args(["build", "--json"]))
}

fn succeeded(what: &str, s: Spawned) -> serde_json::Value {
    let out = s.output_within(LIMIT);
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn two_factories_keep_each_others_entries_and_never_move_a_tag_back() {
    fixtures();
    let a = Profile::busybox("twofac", "busybox-fa")
        .own_state()
        .create();
    let b = Profile::busybox("twofac", "busybox-fb")
        .own_state()
        .create();
    assert_eq!(a.namespace, b.namespace);
    let (ka, kb) = (key(&a, "busybox-fa"), key(&b, "busybox-fb"));

    // Both publish at once, each its own tag.
    let (ra, rb) = (build(&a, "kiln build (a)"), build(&b, "kiln build (b)"));
    let (sa, sb) = (succeeded("a", ra), succeeded("b", rb));
    assert_eq!(sa["built"], 1, "{sa:#}");
    assert_eq!(sb["built"], 1, "{sb:#}");
    let (lock, _) = published(&a.namespace);
    let entries = lock["entries"].as_object().unwrap();
    assert!(
        entries.contains_key(&ka) && entries.contains_key(&kb),
        "the published lockfile holds both factories' entries: {:?}",
        entries.keys().collect::<Vec<_>>()
    );
    assert_eq!(entries[&ka]["digest"], a.entry(&ka)["digest"]);
    assert_eq!(entries[&kb]["digest"], b.entry(&kb)["digest"]);

    // A third factory publishes a's tag again, from a changed recipe: a
    // later publication at another digest.
    let c = Profile::busybox("twofac", "busybox-fa")
        .recipe_prefix("RUN echo factory-c > /factory\n")
        .own_state()
        .create();
    let sc = succeeded("kiln build (c)", build(&c, "kiln build (c)"));
    assert_eq!(sc["built"], 1, "{sc:#}");
    let newer = c.entry(&ka)["digest"].as_str().unwrap().to_string();
    let older = a.entry(&ka)["digest"].as_str().unwrap().to_string();
    assert_ne!(newer, older);
    let (repository, tag) = ka.rsplit_once(':').unwrap();
    assert_eq!(tag_digest(repository, tag), newer);

    // Factory a, whose lockfile still holds the older build, reconciles
    // its tags: it takes c's publication instead of moving the tag back.
    let repair: serde_json::Value = ok_json(a.kiln(&["verify", "--repair", "--json"]));
    assert_eq!(repair["ok"], true, "{repair:#}");
    assert_eq!(
        tag_digest(repository, tag),
        newer,
        "the tag moved back to the older build: {repair:#}"
    );
    let mine = a.entry(&ka);
    assert_eq!(mine["digest"], newer.as_str());
    assert_eq!(mine["history"][0]["digest"], older.as_str());
    let (lock, writer) = published(&a.namespace);
    assert_eq!(lock["entries"][&ka]["digest"], newer.as_str());
    assert!(lock["entries"].get(&kb).is_some(), "{lock:#}");
    assert!(writer.contains("manifests/lockfile.json"), "{writer}");
    // b's next run (a no-op) keeps c's build too, and loses nothing.
    let again = succeeded("kiln build (b again)", build(&b, "kiln build (b again)"));
    assert_eq!(again["built"], 0, "{again:#}");
    assert_eq!(tag_digest(repository, tag), newer);
    let (lock, _) = published(&b.namespace);
    assert_eq!(lock["entries"][&ka]["digest"], newer.as_str());
    assert_eq!(lock["entries"].as_object().unwrap().len(), 2, "{lock:#}");
}
