//! The worker inventory (`kiln workers`, `/v1/workers`, the status page)
//! and `kiln gc` over every host, against real hosts: the ssh-only ZFS
//! worker of `common::sshd` (its own sshd, user and zfs-fuse pool), a
//! second ZFS host on a pool of this machine, the kept QEMU disks of a real
//! OpenBSD-slice build, the services' dockerd, and hosts that cannot be
//! reached (an ssh port nothing listens on, a missing engine socket).
//!
//! zfs-fuse is fragile under concurrent mounts and destroys: the tests of
//! this file hold `LOCK` and run one at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::serve::Api;
use common::sshd::SshWorker;
use common::{Bounded, LIMIT, Profile, zfs};

static LOCK: Mutex<()> = Mutex::new(());

/// An image name no lockfile entry can name (a build key's first 12 hex
/// that no build here has).
const STALE: &str = "macos-homebrew-ocaml-5.4.0-0123456789ab";
const STALE_DISK: &str = "openbsd-79-amd64-ocaml-5.4.0-0123456789ab";

fn lock(test: &str) -> Option<MutexGuard<'static, ()>> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = zfs::unavailable() {
        common::skip(test, &why);
        return None;
    }
    Some(guard)
}

/// `[[zfs.hosts]]` for a pool of this machine.
fn local_host_toml(name: &str, pool: &str, prefix: &str) -> String {
    format!(
        "[[zfs.hosts]]\nname = \"{name}\"\npool = \"{pool}\"\nprefix = \"{prefix}\"\nplatforms = []\narch = \"amd64\"\n"
    )
}

/// `zfs create -p` on this machine (the pools of both ZFS hosts are here).
fn zfs_create(dataset: &str) {
    let out = Command::new("zfs")
        .args(["create", "-p", "-o", "mountpoint=none", dataset])
        .output_within(Duration::from_secs(120))
        .unwrap();
    assert!(
        out.status.success(),
        "zfs create {dataset}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real qcow2 disk made by qemu-img.
fn qcow2(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("1M")
        .output_within(Duration::from_secs(60))
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn workers(p: &Profile) -> Value {
    let out = p
        .command()
        .args(["workers", "--json"])
        .output_within(LIMIT)
        .unwrap();
    common::ok_json(out)
}

/// The report of `builder` host `name`.
fn host<'a>(inv: &'a Value, builder: &str, name: &str) -> &'a Value {
    inv["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["builder"] == builder && h["host"] == name)
        .unwrap_or_else(|| panic!("no {builder} host {name} in {inv:#}"))
}

/// What `h` holds under a name ending in `suffix`.
fn held<'a>(h: &'a Value, suffix: &str) -> &'a Value {
    h["holds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"].as_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("nothing ending in {suffix} held: {h:#}"))
}

/// `kiln gc --retention-days 0 --json`: exit code and decisions.
fn gc(p: &Profile) -> (Option<i32>, Vec<Value>) {
    let out = p
        .command()
        .args(["gc", "--retention-days", "0", "--json"])
        .output_within(LIMIT)
        .unwrap();
    let d = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kiln gc --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), d)
}

/// The action gc took on host `host` for the item ending in `suffix`.
fn action(d: &[Value], host: &str, suffix: &str) -> String {
    d.iter()
        .find(|x| x["host"] == host && x["item"].as_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("no decision on {host} for {suffix}: {d:#?}"))["action"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The arch digest and per-arch build key's first 12 hex of one entry.
fn published(p: &Profile, key: &str) -> (String, String) {
    let e = p.entry(key);
    let a = &e["arches"]["amd64"];
    let hex = a["build_key"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    (a["digest"].as_str().unwrap().to_string(), hex[..12].into())
}

/// Both ZFS hosts hold a built (referenced) and a stale image, QEMU a
/// kept disk and a stale one: the inventory lists each with its digest
/// and whether the lockfile names it, and `kiln gc` removes the stale
/// ones on every host and keeps the rest.
#[test]
fn inventory_lists_every_hosts_holdings_and_gc_cleans_every_host() {
    let test = "inventory_lists_every_hosts_holdings_and_gc_cleans_every_host";
    let Some(_guard) = lock(test) else {
        return;
    };
    let w = match SshWorker::start("inv") {
        Ok(w) => w,
        Err(why) => return common::skip(test, &why),
    };
    let local = zfs::Pool::create(&format!("kilninv{}", std::process::id()));
    let qemu = common::qemu_toml(600).replace("keep_disks = false", "keep_disks = true");
    let p = Profile::demo("workers-inv")
        .own_state()
        .demo_opam_repository()
        .toml(&format!(
            "[zfs]\n{}{}{qemu}",
            w.host_toml("worker", "inv"),
            local_host_toml("second", &local.name, "inv")
        ))
        .create();
    let state = p.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink(common::state_dir().join("fixtures"), state.join("fixtures"))
        .unwrap();
    p.sync_sources();
    for platform in ["macos", "openbsd"] {
        let (code, s) = p.build(&["--platform", platform]);
        assert_eq!(code, Some(0), "{platform}: {s}");
    }
    let (mac_digest, mac_key) = published(
        &p,
        &format!("{}/macos-base:macos-homebrew-ocaml-5.5", p.namespace),
    );
    let (bsd_digest, bsd_key) = published(
        &p,
        &format!("{}/openbsd-base:openbsd-79-amd64-ocaml-5.5", p.namespace),
    );
    // What nothing references: an image on each ZFS host, a disk and its cache.
    zfs_create(&format!("{}/inv/base-image/{STALE}", w.pool.name));
    zfs_create(&format!("{}/inv/base-image/{STALE}", local.name));
    let disks = state.join("qemu/disks");
    qcow2(&disks.join(format!("{STALE_DISK}.qcow2")));
    qcow2(&disks.join(format!("{STALE_DISK}.download-cache.qcow2")));

    // obuilder's stable name on the worker, as `kiln fetch` makes it there
    // (the worker's pool is on this machine).
    let mnt = tempfile::tempdir().unwrap();
    let fetched = p
        .command()
        .args([
            "fetch",
            &format!("{}/macos-base:macos-homebrew-ocaml-5.5", p.namespace),
            "--pool",
            &w.pool.name,
            "--prefix",
            "inv",
            "--json",
        ])
        .arg("--mount-root")
        .arg(mnt.path())
        .output_within(LIMIT)
        .unwrap();
    let fetched: Value = common::ok_json(fetched);
    let stable_name = format!("{}/base-image/macos-homebrew-ocaml-5.5", w.pool.name);
    assert_eq!(fetched["stable"], stable_name.as_str(), "{fetched}");

    let inv = workers(&p);
    let worker = host(&inv, "zfs", "worker");
    assert_eq!(worker["health"], "ok", "{worker:#}");
    assert_eq!(worker["address"], format!("ssh {}", w.alias));
    assert_eq!(worker["busy"], 0);
    let built = held(worker, &format!("-{mac_key}"));
    assert_eq!(
        (&built["kind"], &built["referenced"], &built["digest"]),
        (
            &Value::from("dataset"),
            &Value::from(true),
            &Value::from(mac_digest)
        ),
        "{built:#}"
    );
    assert!(built["bytes"].as_u64().unwrap() > 0, "{built:#}");
    let stable = held(worker, &stable_name);
    assert_eq!(stable["kind"], "stable-name", "{stable:#}");
    assert_eq!(stable["referenced"], true, "{stable:#}");
    assert_eq!(stable["digest"], built["digest"], "{stable:#}");
    let stale = held(worker, &format!("/{STALE}"));
    assert_eq!(stale["referenced"], false, "{stale:#}");
    assert!(stale.get("digest").is_none(), "{stale:#}");
    let second = host(&inv, "zfs", "second");
    assert_eq!(second["health"], "ok", "{second:#}");
    assert_eq!(held(second, &format!("/{STALE}"))["referenced"], false);

    let q = host(&inv, "qemu", "local");
    for (suffix, kind) in [
        (format!("-{bsd_key}.qcow2"), "disk"),
        (format!("-{bsd_key}.download-cache.qcow2"), "download-cache"),
    ] {
        let x = held(q, &suffix);
        assert_eq!(x["kind"], kind, "{x:#}");
        assert_eq!(x["referenced"], true, "{x:#}");
        assert_eq!(x["digest"], bsd_digest.as_str(), "{x:#}");
    }
    for suffix in [".qcow2", ".download-cache.qcow2"] {
        let x = held(q, &format!("{STALE_DISK}{suffix}"));
        assert_eq!(x["referenced"], false, "{x:#}");
    }
    // The services' engine: reachable, its cache measured.
    let docker = host(&inv, "docker", "local");
    assert_eq!(docker["health"], "ok", "{docker:#}");
    assert!(
        docker["engine_cache_bytes"].as_u64().unwrap() > 0,
        "{docker:#}"
    );

    let (code, d) = gc(&p);
    assert_eq!(code, Some(0), "{d:#?}");
    assert_eq!(action(&d, "worker", &format!("/{STALE}")), "removed");
    assert_eq!(action(&d, "second", &format!("/{STALE}")), "removed");
    assert_eq!(action(&d, "worker", &format!("-{mac_key}")), "kept");
    assert_eq!(
        action(&d, "local", &format!("{STALE_DISK}.qcow2")),
        "removed"
    );
    assert_eq!(action(&d, "local", &format!("-{bsd_key}.qcow2")), "kept");
    // Removed on the hosts themselves, the referenced ones still there.
    let on_worker = zfs::datasets(&w.pool.name);
    assert!(
        !on_worker.iter().any(|x| x.ends_with(STALE))
            && on_worker.iter().any(|x| x.ends_with(&mac_key)),
        "{on_worker:?}"
    );
    assert!(
        !zfs::datasets(&local.name)
            .iter()
            .any(|x| x.ends_with(STALE)),
        "{:?}",
        zfs::datasets(&local.name)
    );
    let left: Vec<String> = std::fs::read_dir(&disks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        !left.iter().any(|f| f.starts_with(STALE_DISK))
            && left.iter().filter(|f| f.contains(&bsd_key)).count() == 2,
        "{left:?}"
    );
}

/// An ssh_config sending `alias` to a loopback port nothing listens on.
fn nowhere(dir: &Path, alias: &str) -> PathBuf {
    let port = common::free_port();
    let path = dir.join("ssh_config");
    std::fs::write(
        &path,
        format!(
            "Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  ConnectTimeout 5\n  BatchMode yes\n"
        ),
    )
    .unwrap();
    path
}

/// A ZFS host and an engine that cannot be reached are rows saying so; the
/// listing, the API and the status page show every other host, and gc
/// cleans the reachable host and exits non-zero naming the other.
#[test]
fn an_unreachable_host_is_listed_and_the_others_still_served_and_cleaned() {
    let test = "an_unreachable_host_is_listed_and_the_others_still_served_and_cleaned";
    let Some(_guard) = lock(test) else {
        return;
    };
    let local = zfs::Pool::create(&format!("kilnunr{}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    let config = nowhere(dir.path(), "kiln-nowhere");
    let p = Profile::demo("workers-unreachable")
        .own_state()
        .toml(&format!(
            "[zfs]\n[[zfs.hosts]]\nname = \"gone\"\nssh = \"kiln-nowhere\"\nssh_config = \"{}\"\npool = \"tank\"\nprefix = \"inv\"\n{}\
             [docker]\n[[docker.hosts]]\nname = \"gone-engine\"\nendpoint = \"unix://{}\"\nos = \"linux\"\narch = \"amd64\"\n",
            config.display(),
            local_host_toml("here", &local.name, "inv"),
            dir.path().join("no-such.sock").display()
        ))
        .create();
    zfs_create(&format!("{}/inv/base-image/{STALE}", local.name));

    let inv = workers(&p);
    let gone = host(&inv, "zfs", "gone");
    assert!(
        gone["health"]
            .as_str()
            .unwrap()
            .starts_with("unreachable: "),
        "{gone:#}"
    );
    assert_eq!(gone["busy"], Value::Null, "{gone:#}");
    let engine = host(&inv, "docker", "gone-engine");
    assert!(
        engine["health"]
            .as_str()
            .unwrap()
            .starts_with("unreachable: "),
        "{engine:#}"
    );
    let here = host(&inv, "zfs", "here");
    assert_eq!(here["health"], "ok", "{here:#}");
    assert_eq!(held(here, &format!("/{STALE}"))["referenced"], false);

    // The API and the status page: the same hosts.
    let api = Api::start(&p);
    let (status, body) = api.get("/v1/workers");
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).unwrap();
    assert!(
        host(&served, "zfs", "gone")["health"]
            .as_str()
            .unwrap()
            .starts_with("unreachable: ")
    );
    assert_eq!(
        held(host(&served, "zfs", "here"), &format!("/{STALE}"))["referenced"],
        false
    );
    // The first collection is done (the route above waited for it).
    let (status, page) = api.get("/");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<h2 id=\"workers\">Workers</h2><p>Collected"),
        "{page}"
    );
    assert!(
        page.contains(&format!("{}/inv/base-image/{STALE}", local.name))
            && page.contains("unreachable: "),
        "{page}"
    );
    drop(api);

    let (code, d) = gc(&p);
    assert_eq!(code, Some(1), "{d:#?}");
    assert_eq!(action(&d, "here", &format!("/{STALE}")), "removed");
    let failed = d.iter().find(|x| x["host"] == "gone").unwrap();
    assert_eq!(failed["action"], "failed", "{failed:#}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .starts_with("unreachable: "),
        "{failed:#}"
    );
    assert!(
        !zfs::datasets(&local.name)
            .iter()
            .any(|x| x.ends_with(STALE)),
        "{:?}",
        zfs::datasets(&local.name)
    );
}
