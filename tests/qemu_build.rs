//! The QEMU builder through `kiln build`, with the tiny Linux guest
//! (scripts/qemu-fixture.sh), which follows OpenBSD's install protocol:
//! its installer fetches `install.conf` from port 80 of its next-server,
//! the pinned sets (checked against `SHA256`) and the site set Kiln builds;
//! its first boot runs `rc.firsttime` with network and powers off; its
//! verify boot has no network and is checked by an ssh login as obuilder's
//! sandbox makes one. Two builds at once, a verified and compacted disk
//! published as an artifact, fetched and logged into through an overlay;
//! sets undeclared or corrupted (refused before any boot), a hung install
//! and a first boot that never powers off (killed at their timeouts), a
//! failed smoke test, nothing left.
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

/// The first-boot script (what the guest runs with network, then powers off).
const RECIPE: &str = "platforms/openbsd/rc.firsttime";
/// What the installer runs chrooted into the new system.
const INSTALL_SITE: &str = "platforms/openbsd/install.site";
const PLATFORM: &str = "platforms/openbsd/platform.yaml";

/// A demo profile building OpenBSD (the tiny guest) on TCG, the release
/// renamed to `os` unless it is the demo's own `openbsd-79-amd64`.
fn profile(name: &str, os: &str, boot_timeout_secs: u64) -> Profile {
    let p = Profile::demo(&format!("qemu-{name}"))
        .toml(&common::qemu_toml(boot_timeout_secs))
        .create();
    if os != "openbsd-79-amd64" {
        p.edit("platforms/openbsd/platform.yaml", |t| {
            t.replace("  - id: openbsd-79-amd64\n", &format!("  - id: {os}\n"))
                .replace("aliases: [openbsd, openbsd-7.9]", "aliases: []")
        });
    }
    p.sync_sources();
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

/// Boot a disk as obuilder's QEMU sandbox does (no network but the
/// forwarded ssh port) and run `ocaml -version` over `ssh opam@localhost
/// -p PORT` with the worker's key.
fn login_as_obuilder(disk: &Path) -> String {
    obuilder_session(&[disk], "ocaml -version")
}

/// Boot `disks` (the system disk, then a cache disk) as obuilder's sandbox
/// does and run `cmd` over its ssh login.
fn obuilder_session(disks: &[&Path], cmd: &str) -> String {
    let disk = disks[0];
    let fx = common::state_dir().join("fixtures/qemu");
    let serial = disk.with_extension("serial");
    let port = common::free_port();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "256", "-nographic", "-no-reboot"])
        .args(["-monitor", "none", "-display", "none", "-netdev"])
        .arg(format!(
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"
        ))
        .args(["-device", "virtio-net-pci,netdev=n0", "-kernel"])
        .arg(fx.join("vmlinuz"))
        .arg("-initrd")
        .arg(fx.join("initrd.gz"))
        .args(["-append", "console=ttyS0 quiet panic=1"])
        .args(disks.iter().flat_map(|d| {
            [
                "-drive".to_string(),
                format!("file={},if=virtio,format=qcow2", d.display()),
            ]
        }))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .spawn()
        .unwrap();
    let ssh = |cmd: &str| {
        Command::new("ssh")
            .arg("opam@localhost")
            .args(["-p", &port.to_string()])
            .args(["-o", "NoHostAuthenticationForLocalhost=yes", "-i"])
            .arg(common::state_dir().join("qemu/id_ed25519"))
            .args(["-o", "BatchMode=yes", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "ConnectTimeout=5", cmd])
            .output()
            .unwrap()
    };
    let mut answer = None;
    for _ in 0..120 {
        if !ssh("exit").status.success() {
            std::thread::sleep(std::time::Duration::from_secs(1));
            continue;
        }
        let out = ssh(cmd);
        if out.status.success() {
            answer = Some(String::from_utf8_lossy(&out.stdout).into_owned());
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    answer.unwrap_or_else(|| {
        panic!(
            "no ssh login; console: {}",
            std::fs::read_to_string(serial).unwrap_or_default()
        )
    })
}

/// The part of a build log one boot wrote.
fn section<'a>(log: &'a str, header: &str) -> &'a str {
    let start = log
        .find(header)
        .unwrap_or_else(|| panic!("no {header:?} in {log}"));
    let rest = &log[start + header.len()..];
    &rest[..rest.find("# kiln: ").unwrap_or(rest.len())]
}

fn log_of(os: &str) -> PathBuf {
    common::state_dir().join(format!("log/openbsd_{os}_5.5.0_amd64.log"))
}

/// Two builds at the same time (no fixed ports, no shared paths), both
/// expected to publish: profile `a` builds the demo's `openbsd-79-amd64`.
struct Pair {
    a: Profile,
    _b: Profile,
    ra: (Option<i32>, Value),
    rb: (Option<i32>, Value),
}

fn built_in_parallel(name: &str) -> Pair {
    let a = profile(&format!("{name}-a"), "openbsd-79-amd64", 300);
    let b = profile(&format!("{name}-b"), "openbsd-7.8", 300);
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| build(&a));
        let hb = s.spawn(|| build(&b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    Pair { a, _b: b, ra, rb }
}

fn key(a: &Profile) -> String {
    format!("{}/openbsd-base:openbsd-79-amd64-ocaml-5.5", a.namespace)
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
fn disk_is_published_after_install_first_boot_and_an_ssh_verified_boot() {
    let _serial = serial();
    let Pair { a, ra, .. } = built_in_parallel("publish");
    assert_eq!(ra.0, Some(0), "{}", ra.1);
    assert_eq!(a.entry(&key(&a))["kind"], "qcow2");
    let log = std::fs::read_to_string(log_of("openbsd-79-amd64")).unwrap();
    let install = section(&log, "# kiln: install boot, serial console:");
    assert!(
        install.contains("KILN-BOOT: autoinstall from next-server 10.0.2.2")
            && install.contains("KILN-INSTALL: base79.tgz verified")
            && install.contains("KILN-INSTALL: site79.tgz is not in SHA256")
            && install.contains("KILN-INSTALL: ok"),
        "{install}"
    );
    let first = section(&log, "# kiln: first boot, serial console:");
    assert!(
        first.contains("reachable")
            && !first.contains("unreachable")
            && first.contains("KILN-FIRSTBOOT: rc.firsttime exited 0")
            && first.contains("KILN-BOOT: shutdown"),
        "{first}"
    );
    let verify = section(&log, "# kiln: verify boot, serial console:");
    assert!(
        verify.contains("unreachable") && !verify.contains("KILN-FIRSTBOOT"),
        "the verify boot has no network and no first-boot script: {verify}"
    );
    assert!(
        log.contains("over ssh as opam@localhost:")
            && log.contains("ocaml -version\nThe OCaml toplevel, version 5.5.0"),
        "{log}"
    );
    assert!(
        log.contains("# kiln: verify boot, the download-cache disk over ssh: doas mount /dev/vdb"),
        "the download-cache disk is mounted as obuilder mounts it: {log}"
    );
}

/// The worker side: fetch (verified, qemu-img check), overlay, and log in
/// as obuilder's sandbox does.
#[test]
fn fetched_disk_boots_through_an_overlay_and_obuilder_logs_in() {
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
    assert!(login_as_obuilder(&overlay).contains("The OCaml toplevel, version 5.5.0"));
}

/// obuilder's QEMU store: the disk as `base-image/<tag>.qcow2`, its
/// download-cache disk as the initial `cache/c-opam-archives` (kept on the
/// next fetch: it holds the jobs' downloads); a job's copy of the cache
/// mounts as obuilder mounts it and takes the user's files.
#[test]
fn fetch_into_obuilders_store_seeds_the_download_cache_once() {
    let _serial = serial();
    let Pair { a, ra, .. } = built_in_parallel("store");
    assert_eq!(ra.0, Some(0), "{}", ra.1);
    let store = tempfile::tempdir().unwrap();
    let fetch = || {
        let out = a
            .command()
            .args(["fetch", &key(&a), "--json", "--obuilder-store"])
            .arg(store.path())
            .output()
            .unwrap();
        common::ok_json(out)
    };
    let v: Value = fetch();
    let tag = key(&a).rsplit(':').next().unwrap().to_string();
    let base = store.path().join(format!("base-image/{tag}.qcow2"));
    let cache = store
        .path()
        .join("cache/c-opam-archives/rootfs/image.qcow2");
    assert_eq!(v["base_image"], base.display().to_string(), "{v}");
    assert_eq!(v["cache"], cache.display().to_string(), "{v}");
    assert_eq!(v["cache_kept"], false, "{v}");
    // A job: overlays of both, as obuilder's store makes them.
    let job = tempfile::tempdir().unwrap();
    let (root, cache_copy) = (
        job.path().join("root.qcow2"),
        job.path().join("cache.qcow2"),
    );
    let img = |base: &Path, o: &Path| {
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(o)
            .status()
            .unwrap();
        assert!(st.success());
    };
    img(&base, &root);
    img(&cache, &cache_copy);
    let dir = "/home/opam/.opam/download-cache";
    let out = obuilder_session(
        &[&root, &cache_copy],
        &format!(
            "doas mount /dev/vdb {dir} && echo archive > {dir}/a.tgz && ls -ln {dir}/a.tgz && doas umount {dir}"
        ),
    );
    assert!(
        out.contains(" 1000 "),
        "the user's file in the cache: {out}"
    );
    // The store's cache now in use: fetching again keeps it.
    std::fs::write(store.path().join("marker"), "").unwrap();
    let before = std::fs::metadata(&cache).unwrap().modified().unwrap();
    let again: Value = fetch();
    assert_eq!(again["cache_kept"], true, "{again}");
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        before
    );
}

/// A first boot that leaves the cache disk unformatted fails the verify
/// boot: nothing is published.
#[test]
fn an_unformatted_download_cache_fails_the_verify_boot() {
    let _serial = serial();
    let c = profile("nocache", "openbsd-7.0", 120);
    c.edit(RECIPE, |t| t.replace("mke2fs -q /dev/vdb", "true"));
    let (code, v) = build(&c);
    assert_ne!(code, Some(0), "{v}");
    let err = v["tags"][0]["arches"]["amd64"]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        err.contains("the download-cache disk does not mount"),
        "{err}"
    );
    assert!(c.entries().is_empty(), "nothing published");
    no_leftovers();
}

/// sha256 of a file, hex.
fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The install boot through the production path: QEMU's PXE (iPXE) takes
/// `auto_install` from the build's TFTP tree — the release's `pxeboot` set
/// —, which reads `etc/boot.conf` (the recipe) and boots `bsd.rd` (and the
/// guest's initrd), every one of them a set checked against SHA256. The
/// test declares the guest's boot files as a release manager declares a
/// release's: its own SHA256 listing them, each with its sha256.
#[test]
fn pxe_install_takes_its_boot_files_from_the_verified_sets() {
    let _serial = serial();
    let c = profile("pxe", "openbsd-6.9", 120);
    let fx = common::state_dir().join("fixtures/qemu");
    let sets = tempfile::tempdir().unwrap();
    let files = [
        ("base79.tgz", fx.join("sets/base79.tgz")),
        ("pxeboot", fx.join("boot/pxeboot")),
        ("bsd.rd", fx.join("vmlinuz")),
        ("bsd.rd.initrd", fx.join("initrd.gz")),
    ];
    let mut listing = String::new();
    let mut decls = String::new();
    for (name, from) in &files {
        let to = sets.path().join(name);
        std::fs::copy(from, &to).unwrap();
        listing.push_str(&format!("SHA256 ({name}) = {}\n", sha256_hex(&to)));
        if *name != "base79.tgz" {
            decls.push_str(&format!(
                "  - name: openbsd-fixture-{name}\n    url: file://{}\n    sha256: {}\n",
                to.display(),
                sha256_hex(&to)
            ));
        }
    }
    let sums = sets.path().join("SHA256");
    std::fs::write(&sums, listing).unwrap();
    let sums_sha = sha256_hex(&sums);
    c.edit("versions/sources.yaml", |t| {
        let mut out = String::new();
        let mut in_sums = false;
        for l in t.lines() {
            if l.contains("name: ") {
                in_sums = l.contains("name: openbsd-fixture-SHA256");
            }
            let l = match (in_sums, l.trim_start().split_once(": ")) {
                (true, Some(("url", _))) => format!("    url: file://{}", sums.display()),
                (true, Some(("sha256", _))) => format!("    sha256: {sums_sha}"),
                _ => l.to_string(),
            };
            out.push_str(&l);
            out.push('\n');
        }
        out + &decls
    });
    c.edit(PLATFORM, |t| {
        t.replace("      boot: kernel\n", "      boot: pxe-then-kernel\n      tftp: bsd.rd bsd.rd.initrd\n      install_marker: \"KILN-INSTALL: ok\"\n")
            .replace("recipes: [install.conf, install.site, rc.firsttime]", "recipes: [install.conf, boot.conf, install.site, rc.firsttime]")
            .replace("sets: openbsd-fixture-SHA256 openbsd-fixture-base79.tgz", "sets: openbsd-fixture-SHA256 openbsd-fixture-base79.tgz openbsd-fixture-pxeboot openbsd-fixture-bsd.rd openbsd-fixture-bsd.rd.initrd")
    });
    std::fs::write(
        c.file("platforms/openbsd/boot.conf"),
        "#!ipxe\n# The guest's boot.conf: what OpenBSD's says (`boot tftp:/bsd.rd`), in iPXE's words.\n\
         kernel tftp://${next-server}/bsd.rd console=ttyS0 quiet panic=1\n\
         initrd tftp://${next-server}/bsd.rd.initrd\nboot\n",
    )
    .unwrap();
    c.sync_sources();
    let (code, v) = build(&c);
    assert_eq!(code, Some(0), "{v}");
    let log = std::fs::read_to_string(log_of("openbsd-6.9")).unwrap();
    let install = section(&log, "# kiln: install boot, serial console:");
    for fetched in [
        "tftp://10.0.2.2/auto_install",
        "tftp://10.0.2.2/etc/boot.conf",
        "tftp://10.0.2.2/bsd.rd",
        "KILN-INSTALL: ok",
    ] {
        assert!(install.contains(fetched), "{fetched}: {install}");
    }
    no_leftovers();

    // A boot file that disagrees with SHA256 is refused before any boot.
    let c2 = profile("pxe-bad", "openbsd-6.8", 120);
    std::fs::copy(
        c.file("versions/sources.yaml"),
        c2.file("versions/sources.yaml"),
    )
    .unwrap();
    std::fs::copy(c.file(PLATFORM), c2.file(PLATFORM)).unwrap();
    c2.edit(PLATFORM, |t| {
        t.replace("id: openbsd-6.9", "id: openbsd-6.8")
    });
    std::fs::copy(
        c.file("platforms/openbsd/boot.conf"),
        c2.file("platforms/openbsd/boot.conf"),
    )
    .unwrap();
    std::fs::write(
        &sums,
        std::fs::read_to_string(&sums)
            .unwrap()
            .lines()
            .map(|l| match l.strip_prefix("SHA256 (pxeboot) = ") {
                Some(_) => format!("SHA256 (pxeboot) = {}\n", "0".repeat(64)),
                None => format!("{l}\n"),
            })
            .collect::<String>(),
    )
    .unwrap();
    let sums_sha2 = sha256_hex(&sums);
    c2.edit("versions/sources.yaml", |t| {
        t.replace(&sums_sha, &sums_sha2)
    });
    c2.sync_sources();
    let err = refused_before_any_boot(&c2, "openbsd-6.8");
    assert!(
        err.contains("pxeboot") && err.contains("fails its checksum: SHA256 says"),
        "{err}"
    );
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

/// A hung install is killed at its timeout; nothing is published or left.
#[test]
fn hung_install_is_killed_at_the_timeout_and_leaves_nothing() {
    let _serial = serial();
    let c = profile("hang", "openbsd-7.7", 30);
    std::fs::write(c.file(INSTALL_SITE), "sleep 600\n").unwrap();
    let (code, s) = build(&c);
    assert_eq!(code, Some(1), "{s}");
    let err = serde_json::to_string(&s).unwrap();
    assert!(
        err.contains("install boot failed") && err.contains("timed out"),
        "{err}"
    );
    assert!(c.entries().is_empty());
    no_leftovers();
}

/// A first boot that never powers off is killed at its timeout, and the
/// verify boot never starts.
#[test]
fn first_boot_that_never_powers_off_is_killed_at_its_timeout() {
    let _serial = serial();
    let c = profile("firstboot-hang", "openbsd-7.4", 30);
    std::fs::write(c.file(RECIPE), "sleep 600\n").unwrap();
    let (code, s) = build(&c);
    assert_eq!(code, Some(1), "{s}");
    let err = serde_json::to_string(&s).unwrap();
    assert!(
        err.contains("first boot failed") && err.contains("timed out"),
        "{err}"
    );
    let log = std::fs::read_to_string(log_of("openbsd-7.4")).unwrap();
    assert!(log.contains("KILN-INSTALL: ok"), "{log}");
    assert!(!log.contains("verify boot"), "{log}");
    assert!(c.entries().is_empty());
    no_leftovers();
}

/// Bad sets are refused before any boot: no log, nothing published or left.
/// (A release whose recipes name `{{sets}}` without declaring it at all is
/// refused earlier still, by `kiln catalogue validate` and when rendering.)
fn refused_before_any_boot(p: &Profile, os: &str) -> String {
    let _ = std::fs::remove_file(log_of(os));
    let (code, s) = build(p);
    assert_eq!(code, Some(1), "{s}");
    assert!(p.entries().is_empty());
    assert!(!log_of(os).exists(), "nothing booted");
    no_leftovers();
    serde_json::to_string(&s).unwrap()
}

#[test]
fn a_release_without_sets_is_refused_before_any_boot() {
    let _serial = serial();
    let c = profile("nosets", "openbsd-7.3", 60);
    c.edit(PLATFORM, |t| {
        t.lines()
            .map(|l| match l.trim_start().split_once(": ") {
                Some(("sets", _)) => "      sets: \"\"".to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let err = refused_before_any_boot(&c, "openbsd-7.3");
    assert!(
        err.contains("openbsd-7.3: OpenBSD 7.9/amd64 declares no install sets"),
        "{err}"
    );
}

/// The fixture's sets, copied where a test may change them.
fn sets_copy() -> tempfile::TempDir {
    let sets = tempfile::tempdir().unwrap();
    let fixture = common::state_dir().join("fixtures/qemu/sets");
    for f in ["SHA256", "base79.tgz"] {
        std::fs::copy(fixture.join(f), sets.path().join(f)).unwrap();
    }
    sets
}

/// The profile's declaration of the base set, pointed at `url` and `sha256`.
fn declare_base_set(p: &Profile, url: &str, sha256: Option<&str>) {
    p.edit("versions/sources.yaml", |t| {
        let mut out = String::new();
        let mut in_base = false;
        for l in t.lines() {
            if l.contains("name: openbsd-fixture-base79.tgz") {
                in_base = true;
            } else if l.contains("name: ") {
                in_base = false;
            }
            let l = match (in_base, l.trim_start().split_once(": ")) {
                (true, Some(("url", _))) => format!("    url: {url}"),
                (true, Some(("sha256", _))) if sha256.is_some() => {
                    format!("    sha256: {}", sha256.unwrap_or_default())
                }
                _ => l.to_string(),
            };
            out.push_str(&l);
            out.push('\n');
        }
        out
    });
}

/// A mirror answer that fails its checksum is never mirrored, and the
/// build that wants it is refused before any boot, naming it.
#[test]
fn a_corrupted_set_is_refused_by_its_checksum_and_nothing_boots() {
    let _serial = serial();
    let sets = sets_copy();
    let base = sets.path().join("base79.tgz");
    let mut bytes = std::fs::read(&base).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&base, bytes).unwrap();
    let c = Profile::demo("qemu-corrupt")
        .toml(&common::qemu_toml(60))
        .create();
    c.edit(PLATFORM, |t| {
        t.replace("  - id: openbsd-79-amd64\n", "  - id: openbsd-7.2\n")
            .replace("aliases: [openbsd, openbsd-7.9]", "aliases: []")
    });
    declare_base_set(&c, &format!("file://{}", base.display()), None);
    let out = c.kiln(&["sources", "sync"]);
    let sync = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{sync}");
    assert!(
        sync.contains("openbsd-fixture-base79.tgz") && sync.contains("checksum mismatch"),
        "{sync}"
    );
    // The run stops before building anything, naming the missing set.
    let _ = std::fs::remove_file(log_of("openbsd-7.2"));
    let out = c.kiln(&["build", "--platform", "openbsd", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("source openbsd-fixture-base79.tgz") && err.contains("kiln sources sync"),
        "{err}"
    );
    assert!(c.entries().is_empty());
    assert!(!log_of("openbsd-7.2").exists(), "nothing booted");
    no_leftovers();
}

/// A set whose bytes are its declared ones but not what the release's
/// SHA256 lists is refused before any boot, naming the release and file.
#[test]
fn a_set_that_disagrees_with_sha256_is_refused_before_any_boot() {
    let _serial = serial();
    let sets = sets_copy();
    let base = sets.path().join("base79.tgz");
    let mut bytes = std::fs::read(&base).unwrap();
    bytes.extend_from_slice(b"not the release's");
    std::fs::write(&base, &bytes).unwrap();
    let sha = kiln::plan::key::sha256_hex(&bytes);
    let c = Profile::demo("qemu-sha256")
        .toml(&common::qemu_toml(60))
        .create();
    c.edit(PLATFORM, |t| {
        t.replace("  - id: openbsd-79-amd64\n", "  - id: openbsd-7.1\n")
            .replace("aliases: [openbsd, openbsd-7.9]", "aliases: []")
    });
    declare_base_set(&c, &format!("file://{}", base.display()), Some(&sha));
    c.sync_sources();
    let err = refused_before_any_boot(&c, "openbsd-7.1");
    assert!(
        err.contains("openbsd-7.1: OpenBSD 7.9/amd64: base79.tgz fails its checksum"),
        "{err}"
    );
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
    assert!(err.contains("verify boot did not report success"), "{err}");
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
    let recipe = std::fs::read_to_string(k.file(INSTALL_SITE)).unwrap();
    std::fs::write(k.file(INSTALL_SITE), "sleep 600\n").unwrap();
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
    std::fs::write(killed.k.file(INSTALL_SITE), &killed.recipe).unwrap();
    let (code, s) = build(&killed.k);
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}");
    no_leftovers();
}

/// A QEMU job of the daemon cancelled while its first boot runs: QEMU is
/// gone and the work dir removed before the job is recorded cancelled;
/// nothing is published.
#[test]
fn a_cancelled_daemon_job_leaves_no_qemu_and_no_work_dir() {
    let _serial = serial();
    let port = common::free_port();
    let p = Profile::demo("qemu-cancel")
        .toml(&common::qemu_toml(600))
        .toml(&common::jobs::daemon_toml(port))
        .create();
    p.sync_sources();
    std::fs::write(p.file(RECIPE), "sleep 600\n").unwrap();
    let mut d = common::jobs::spawn_daemon(&mut p.command(), port);
    let build = common::Spawned::piped(
        "kiln build",
        p.command()
            .args(["build", "--platform", "openbsd", "--json"]),
    );
    let kiln = || p.command();
    let id = common::jobs::running_job(&kiln, &d);
    // Wait until QEMU runs in the job's work dir.
    common::wait_until("QEMU running", 300, || {
        Command::new("pgrep")
            .args(["-f", &work().display().to_string()])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    });
    common::jobs::cancel_and_wait(&kiln, &d, id);
    no_leftovers();
    let out = build.output_within(common::LIMIT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(p.entries().is_empty());
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_within(common::LIMIT).code(), Some(0));
}
