//! Losing Kiln's state never wedges it: the registry is the source of
//! truth. A build whose key is already published is adopted, not rebuilt
//! (a reverted recipe, a second factory, a fresh state dir); a lost
//! lockfile is rebuilt from the registry; an API replica serves the
//! registry's copy; an unreachable upstream fails fast.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Bounded, LIMIT, PrivateRegistry, Profile, Spawned, fixtures, ok_json, root, skip};

/// The one tag of a busybox profile.
fn key(p: &Profile, os: &str) -> String {
    format!("{}/opam:{os}-ocaml-5.5", p.namespace)
}

/// `kiln build` that must succeed; its summary.
fn build_ok(p: &Profile) -> serde_json::Value {
    let (code, summary) = p.build(&[]);
    assert_eq!(code, Some(0), "{summary:#}");
    summary
}

fn outcome(summary: &serde_json::Value) -> String {
    summary["tags"][0]["outcome"]["outcome"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_reverted_recipe_adopts_its_published_build() {
    fixtures();
    let p = Profile::busybox("revert", "busybox-revert").create();
    let k = key(&p, "busybox-revert");
    build_ok(&p);
    let a = p.entry(&k);
    // B: a changed recipe builds and moves the tag.
    let recipe = "platforms/linux/busybox.Dockerfile";
    let original = std::fs::read_to_string(p.file(recipe)).unwrap();
    p.edit(recipe, |t| format!("{t}RUN echo change-b > /change\n"));
    let b = build_ok(&p);
    assert_eq!(outcome(&b), "built");
    assert_ne!(p.entry(&k)["digest"], a["digest"]);
    // Back to A: the same key as the first build, adopted from the registry
    // (its immutable tag is there) — not rebuilt into a second digest.
    std::fs::write(p.file(recipe), &original).unwrap();
    let back = build_ok(&p);
    assert_eq!(outcome(&back), "adopted", "{back:#}");
    assert_eq!(back["adopted"], 1);
    let e = p.entry(&k);
    assert_eq!(e["digest"], a["digest"]);
    assert_eq!(e["immutable_tag"], a["immutable_tag"]);
    assert_eq!(e["adopted"], "registry");
    let why = e["history"][0]["replaced_because"].as_str().unwrap();
    assert!(why.contains("adopted"), "{why}");
    assert!(why.contains("recipe:busybox.Dockerfile"), "{why}");
    // And a further run changes nothing.
    assert_eq!(outcome(&build_ok(&p)), "unchanged");
}

#[test]
fn a_fresh_state_dir_adopts_everything_and_pins_the_same_digests() {
    fixtures();
    let first = Profile::busybox("fresh", "busybox-fresh")
        .own_state()
        .create();
    build_ok(&first);
    let k = key(&first, "busybox-fresh");
    let published = first.entry(&k);
    // A second factory (or the same after losing its state dir): same
    // catalogue and namespace, nothing local.
    let second = Profile::busybox("fresh", "busybox-fresh")
        .own_state()
        .create();
    assert_eq!(second.namespace, first.namespace);
    assert!(!second.lockfile_path().exists());
    let summary = build_ok(&second);
    assert_eq!(summary["built"], 0, "{summary:#}");
    let e = second.entry(&k);
    assert_eq!(e["digest"], published["digest"]);
    assert_eq!(e["arches"], published["arches"]);
    let verify = second.kiln(&["verify", "--json"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // The API of each pins the same digest.
    for p in [&first, &second] {
        let pin: serde_json::Value =
            ok_json(p.kiln(&["resolve", "--json", "opam:busybox-fresh-ocaml-5.5"]));
        assert_eq!(pin["digest"], published["digest"], "{pin:#}");
    }
}

#[test]
fn a_lost_lockfile_is_recovered_from_the_registry() {
    fixtures();
    let p = Profile::busybox("recover", "busybox-recover").create();
    let k = key(&p, "busybox-recover");
    build_ok(&p);
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        format!("{t}RUN echo second > /second\n")
    });
    build_ok(&p);
    let before = p.entry(&k);
    assert_eq!(before["history"].as_array().unwrap().len(), 1);
    // Recovering over an existing lockfile needs --force.
    let refused = p.kiln(&["lockfile", "recover"]);
    assert!(!refused.status.success());
    std::fs::remove_file(p.lockfile_path()).unwrap();
    let r: serde_json::Value = ok_json(p.kiln(&["lockfile", "recover", "--json"]));
    assert_eq!(r["entries"], 1, "{r:#}");
    assert_eq!(r["history"], 1, "{r:#}");
    let after = p.entry(&k);
    for field in [
        "digest",
        "arches",
        "build_key",
        "inputs",
        "immutable_tag",
        "ocaml",
        "os",
        "platform",
        "kind",
    ] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(
        after["history"][0]["digest"],
        before["history"][0]["digest"]
    );
    assert_eq!(after["adopted"], "recovered");
    assert!(p.kiln(&["verify"]).status.success());
    // A build after losing the lockfile again recovers it first and builds
    // nothing.
    std::fs::remove_file(p.lockfile_path()).unwrap();
    let summary = build_ok(&p);
    assert_eq!(summary["built"], 0, "{summary:#}");
    assert_eq!(outcome(&summary), "unchanged");
    assert_eq!(p.entry(&k)["digest"], before["digest"]);
}

#[test]
fn an_api_replica_serves_the_registrys_lockfile() {
    fixtures();
    let p = Profile::busybox("replica", "busybox-replica").create();
    build_ok(&p);
    let k = key(&p, "busybox-replica");
    let digest = p.entry(&k)["digest"].as_str().unwrap().to_string();
    // Another host: the same catalogue and namespace, no lockfile at all.
    let replica = Profile::busybox("replica", "busybox-replica")
        .own_state()
        .create();
    assert!(!replica.lockfile_path().exists());
    let port = common::free_port();
    let serve = Spawned::piped(
        "kiln serve --from-registry",
        replica.command().args([
            "serve",
            "--from-registry",
            "--addr",
            &format!("127.0.0.1:{port}"),
        ]),
    );
    let url = format!("http://127.0.0.1:{port}/v1/resolve?image=opam:busybox-replica-ocaml-5.5");
    let mut pin = serde_json::Value::Null;
    common::wait_until("the replica's API", 30, || {
        let out = Command::new("curl")
            .args(["-sf", &url])
            .output_within(Duration::from_secs(30))
            .unwrap();
        if out.status.success() {
            pin = serde_json::from_slice(&out.stdout).unwrap_or_default();
        }
        out.status.success()
    });
    drop(serve);
    assert_eq!(pin["digest"], digest.as_str(), "{pin:#}");
    assert!(
        !replica.lockfile_path().exists(),
        "the replica wrote no state"
    );
}

#[test]
fn a_zfs_tree_of_the_same_key_on_the_host_is_adopted() {
    if let Some(why) = common::zfs::unavailable() {
        skip("a_zfs_tree_of_the_same_key_on_the_host_is_adopted", &why);
        return;
    }
    let prefix = format!("test-adopt-{}", std::process::id());
    let _tree = common::zfs::Tree(format!("kiln/{prefix}"));
    let zfs = common::zfs_toml(&prefix, None);
    // The demo's macOS recipe takes the opam-repository bundle from the
    // source mirror: each factory mirrors it into its own namespace.
    let first = Profile::demo("zfs-adopt-a")
        .demo_opam_repository()
        .toml(&zfs)
        .create();
    first.sync_sources_for(&["--platform", "macos"]);
    let (code, s) = first.build(&["--platform", "macos"]);
    assert_eq!(code, Some(0), "{s:#}");
    // A fresh factory publishing elsewhere, on the same build host: the
    // tree of this key is there, complete, and is sent as it is.
    let second = Profile::demo("zfs-adopt-b")
        .demo_opam_repository()
        .toml(&zfs)
        .create();
    second.sync_sources_for(&["--platform", "macos"]);
    let (code, s) = second.build(&["--platform", "macos"]);
    assert_eq!(code, Some(0), "{s:#}");
    let tag = &s["tags"][0];
    assert_eq!(tag["outcome"]["outcome"], "adopted", "{s:#}");
    assert_eq!(tag["outcome"]["from"], "host:local");
    let e = second.entry(&format!(
        "{}/macos-base:macos-homebrew-ocaml-5.5",
        second.namespace
    ));
    assert_eq!(e["adopted"], "host:local");
}

#[test]
fn offline_release_dry_run_fails_fast_naming_each_unreachable_host() {
    // The shipped catalogue, whose parents live on Docker Hub and quay.io,
    // neither of which this machine reaches.
    let dir = tempfile::tempdir().unwrap();
    for sub in ["versions", "platforms"] {
        assert!(
            Command::new("cp")
                .arg("-r")
                .arg(root().join(sub))
                .arg(dir.path())
                .status_within(LIMIT)
                .unwrap()
                .success()
        );
    }
    let d = dir.path().display();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{d}/state\"\nmanifests_dir = \"{d}/manifests\"\n[database]\npath = \"{d}/state/kiln.db\"\n[registry]\nnamespace = \"kiln-test-offline-{}\"\n",
            std::process::id()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let out = common::kiln()
        .arg("--config")
        .arg(&config)
        .args([
            "--set",
            "plan.opam_repository_commit=0123456789abcdef0123456789abcdef01234567",
            "release",
            "5.5.0",
            "4.14.4",
            "--dry-run",
        ])
        .output_within(LIMIT)
        .unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(took < Duration::from_secs(30), "took {took:?}:\n{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("upstream registry unreachable"))
        .collect();
    let mut hosts: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split("host=").nth(1)?.split_whitespace().next())
        .collect();
    let n = hosts.len();
    hosts.sort();
    hosts.dedup();
    assert_eq!(n, hosts.len(), "one line per host:\n{stderr}");
    assert!(hosts.iter().any(|h| h.contains("docker.io")), "{stderr}");
}

/// A profile with a state dir of its own that still sees the services'
/// fixtures (the tiny guest's kernel and initramfs), with the OpenBSD
/// sets in its namespace's source mirror.
fn own_state_with_fixtures(name: &str, toml: &str) -> Profile {
    let p = Profile::demo(name).own_state().toml(toml).create();
    std::fs::create_dir_all(p.path().join("state")).unwrap();
    std::os::unix::fs::symlink(
        common::state_dir().join("fixtures"),
        p.path().join("state/fixtures"),
    )
    .unwrap();
    p.sync_sources();
    p
}

#[test]
fn a_qemu_disk_of_the_same_key_on_the_host_is_adopted() {
    // Disks kept, unlike the other QEMU tests; a state dir of its own so
    // that no other test's disk is found.
    let toml = common::qemu_toml(300).replace("keep_disks = false", "keep_disks = true");
    let first = own_state_with_fixtures("qemu-adopt-a", &toml);
    let state = first.path().join("state");
    let (code, s) = first.build(&["--platform", "openbsd"]);
    assert_eq!(code, Some(0), "{s:#}");
    assert_eq!(s["built"], 1, "{s:#}");
    let mut kept: Vec<String> = std::fs::read_dir(state.join("qemu/disks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(
        kept.len(),
        2,
        "the verified disk and its download cache are kept: {kept:?}"
    );
    assert!(kept[0].ends_with(".download-cache.qcow2"), "{kept:?}");
    // A fresh factory on the same host, holding that disk: adopted, no boot.
    let second = own_state_with_fixtures("qemu-adopt-b", &toml);
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(state.join("qemu"))
            .arg(second.path().join("state/"))
            .status_within(LIMIT)
            .unwrap()
            .success()
    );
    let (code, s) = second.build(&["--platform", "openbsd"]);
    assert_eq!(code, Some(0), "{s:#}");
    let tag = &s["tags"][0];
    assert_eq!(tag["outcome"]["outcome"], "adopted", "{s:#}");
    assert_eq!(tag["outcome"]["from"], "host:local");
    let log = second
        .path()
        .join("state/log/openbsd_openbsd-79-amd64_5.5.0_amd64.log");
    assert!(!log.exists(), "no boot: {}", log.display());
}

/// The OpenBSD image after its factory lost the state dir: the login key
/// lives outside it (`qemu.ssh_key`, here the services' key, as
/// `identity.dir` in production), so the build key is the same and the
/// image is taken from the registry as the others are: nothing boots, the
/// digest is the published one.
#[test]
fn a_lost_state_dir_takes_the_openbsd_image_from_the_registry() {
    let toml = common::qemu_toml(300);
    let p = own_state_with_fixtures("qemu-lost", &toml);
    let (code, s) = p.build(&["--platform", "openbsd"]);
    assert_eq!(code, Some(0), "{s:#}");
    assert_eq!(s["built"], 1, "{s:#}");
    let published = s["tags"][0]["outcome"]["digest"].clone();
    let state = p.path().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(common::state_dir().join("fixtures"), state.join("fixtures"))
        .unwrap();
    let (code, s) = p.build(&["--platform", "openbsd"]);
    assert_eq!(code, Some(0), "{s:#}");
    assert_eq!(s["built"], 0, "{s:#}");
    assert_eq!(s["tags"][0]["outcome"]["digest"], published, "{s:#}");
    let log = state.join("log/openbsd_openbsd-79-amd64_5.5.0_amd64.log");
    assert!(!log.exists(), "no boot: {}", log.display());
}

/// `lockfile recover` rebuilds the lockfile from the registry alone — a
/// factory with no state and an empty catalogue — writes nothing there
/// (its storage is the same file for file before and after), and leaves
/// out an entry that fails verification (a blob of its image whose bytes
/// are not its digest, same size: what `--deep` is for), naming it.
#[test]
fn recover_reads_only_the_registry_and_leaves_out_what_fails_verification() {
    fixtures();
    let storage = tempfile::tempdir().unwrap();
    let registry = PrivateRegistry::start(storage.path());
    // Two tags under one namespace, built by the same factory.
    let builder = |os: &str| {
        Profile::busybox("recover-ro", os)
            .own_state()
            .registry_url(&registry.url())
            .create()
    };
    let (good, bad) = (builder("busybox-rogood"), builder("busybox-robad"));
    build_ok(&good);
    build_ok(&bad);
    let (good_key, bad_key) = (key(&good, "busybox-rogood"), key(&bad, "busybox-robad"));
    let good_entry = good.entry(&good_key);
    let bad_entry = bad.entry(&bad_key);
    // The bad one's amd64 config blob, corrupted on the registry's disk.
    let manifest = Command::new("curl")
        .args([
            "-sSf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!(
                "{}/v2/{}/manifests/{}",
                registry.url(),
                bad_entry["repository"].as_str().unwrap(),
                bad_entry["arches"]["amd64"]["digest"].as_str().unwrap()
            ),
        ])
        .output_within(Duration::from_secs(60))
        .unwrap();
    assert!(
        manifest.status.success(),
        "{}",
        String::from_utf8_lossy(&manifest.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    let hex = &config["sha256:".len()..];
    let blob = registry
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let before = registry.contents();
    // A factory that lost everything: no state, no lockfile, no catalogue.
    let fresh = Profile::busybox("recover-ro", "busybox-rofresh")
        .own_state()
        .registry_url(&registry.url())
        .create();
    for dir in ["versions", "platforms"] {
        std::fs::remove_dir_all(fresh.file(dir)).unwrap();
        std::fs::create_dir_all(fresh.file(dir)).unwrap();
    }
    assert_eq!(fresh.namespace, good.namespace);
    let r: serde_json::Value = ok_json(fresh.kiln(&["lockfile", "recover", "--deep", "--json"]));
    assert_eq!(r["entries"], 1, "{r:#}");
    let skipped = r["skipped"].to_string();
    assert!(
        skipped.contains(&bad_key) && skipped.contains(&config),
        "the bad entry is named with its blob: {r:#}"
    );
    let entries = fresh.entries();
    assert!(!entries.contains_key(&bad_key), "{entries:?}");
    let e = fresh.entry(&good_key);
    for field in ["digest", "arches", "build_key", "immutable_tag", "inputs"] {
        assert_eq!(e[field], good_entry[field], "{field}");
    }
    assert_eq!(e["adopted"], "recovered");
    assert_eq!(
        registry.contents(),
        before,
        "recovery wrote to the registry"
    );
}
