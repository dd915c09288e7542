//! `kiln sources declare-openbsd` against the reference tool: a release
//! directory of small files, its `SHA256` listing signed by
//! `signify-openbsd` (OpenBSD's signify, as Debian packages it) into an
//! embedded `SHA256.sig`, exactly as OpenBSD signs a release. The sets a
//! release lists in its `platform.yaml` are declared from the verified
//! listing; a tampered listing, another key, a set the listing lacks and a
//! name already declared otherwise are each refused naming the file, and
//! leave `versions/sources.yaml` byte for byte as it was. Declared sets
//! are then fetched by `kiln sources sync` from a local HTTP mirror, and a
//! mirror file whose bytes differ is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{Bounded, Profile};

const SIGNIFY: &str = "signify-openbsd";

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether the reference tool is here; a skip (SKIPPED) when it is not.
fn have_signify(test: &str) -> bool {
    if which(SIGNIFY) {
        return true;
    }
    common::skip(
        test,
        "signify-openbsd is not installed (bash scripts/services.sh up installs it)",
    );
    false
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output_within(common::LIMIT)
        .is_ok_and(|o| o.status.success())
}

fn signify(dir: &Path, args: &[&str]) -> Output {
    Command::new(SIGNIFY)
        .args(args)
        .current_dir(dir)
        .output_within(common::LIMIT)
        .unwrap()
}

/// A release as a mirror has it, `<root>/<release>/<arch>/`, with its
/// `SHA256` and `SHA256.sig`, and the key pair that signed it.
struct Release {
    work: tempfile::TempDir,
    dir: PathBuf,
    pubkey: PathBuf,
}

impl Release {
    /// `files` (name, bytes) in `7.9/amd64/`, listed and signed.
    fn signed(files: &[(String, Vec<u8>)]) -> Release {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("mirror/7.9/amd64");
        std::fs::create_dir_all(&dir).unwrap();
        let mut listing = String::new();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
            listing.push_str(&format!("SHA256 ({name}) = {}\n", sha256_hex(bytes)));
        }
        std::fs::write(dir.join("SHA256"), &listing).unwrap();
        let r = Release {
            pubkey: work.path().join("openbsd-79-base.pub"),
            dir,
            work,
        };
        r.keypair("openbsd-79-base");
        let out = signify(
            &r.dir,
            &[
                "-S",
                "-e",
                "-s",
                r.work.path().join("openbsd-79-base.sec").to_str().unwrap(),
                "-m",
                "SHA256",
                "-x",
                "SHA256.sig",
            ],
        );
        assert!(out.status.success(), "signify -S: {}", stderr(&out));
        r
    }

    /// `signify -G -n`: a key pair without passphrase, `<name>.pub`/`.sec`.
    fn keypair(&self, name: &str) -> PathBuf {
        let p = self.work.path().join(format!("{name}.pub"));
        let s = self.work.path().join(format!("{name}.sec"));
        let out = signify(
            self.work.path(),
            &[
                "-G",
                "-n",
                "-p",
                p.to_str().unwrap(),
                "-s",
                s.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "signify -G: {}", stderr(&out));
        p
    }

    fn sig(&self) -> PathBuf {
        self.dir.join("SHA256.sig")
    }

    fn mirror_root(&self) -> PathBuf {
        self.work.path().join("mirror")
    }

    /// The reference tool's answer: `signify -C` of the sets in the dir.
    fn reference_check(&self, pubkey: &Path) -> Output {
        signify(
            &self.dir,
            &["-C", "-p", pubkey.to_str().unwrap(), "-x", "SHA256.sig"],
        )
    }
}

/// The sets `platform.yaml` lists for openbsd-79-amd64 (OpenBSD 7.9), as files: each name
/// `openbsd-7.9-amd64-<file>` but SHA256, with small distinct contents.
fn files_of_sets(platform_yaml: &Path) -> Vec<(String, Vec<u8>)> {
    let v: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(platform_yaml).unwrap()).unwrap();
    let release = v["releases"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "openbsd-79-amd64")
        .unwrap();
    let mut files: Vec<(String, Vec<u8>)> = release["vars"]["sets"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|n| n.strip_prefix("openbsd-7.9-amd64-").unwrap().to_string())
        .filter(|f| f != "SHA256" && f != "SHA256.sig")
        .map(|f| (f.clone(), format!("OpenBSD 7.9 amd64 {f}\n").into_bytes()))
        .collect();
    // A release directory has more than a platform installs.
    files.push(("INSTALL.amd64".into(), b"not installed\n".to_vec()));
    files.sort();
    files
}

/// A profile whose OpenBSD platform is the shipped one (its sets named as
/// production names them), with the shipped catalogue and sources.
fn production_profile(name: &str) -> Profile {
    let p = Profile::demo(name).own_state().create();
    for sub in ["versions", "platforms"] {
        std::fs::remove_dir_all(p.file(sub)).unwrap();
    }
    std::fs::create_dir_all(p.file("platforms")).unwrap();
    copy_tree(&common::root().join("versions"), p.path());
    copy_tree(
        &common::root().join("platforms/openbsd"),
        &p.file("platforms"),
    );
    p
}

fn copy_tree(from: &Path, into: &Path) {
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(into)
            .status_within(common::LIMIT)
            .unwrap()
            .success()
    );
}

fn declare(p: &Profile, r: &Release, pubkey: &Path, extra: &[&str]) -> Output {
    p.command()
        .args([
            "sources",
            "declare-openbsd",
            "--release",
            "7.9",
            "--arch",
            "amd64",
        ])
        .arg("--sha256-sig")
        .arg(r.sig())
        .arg("--pubkey")
        .arg(pubkey)
        .args(extra)
        .output_within(common::LIMIT)
        .unwrap()
}

fn sources_yaml(p: &Profile) -> Vec<u8> {
    std::fs::read(p.file("versions/sources.yaml")).unwrap()
}

#[test]
fn a_release_is_declared_from_its_verified_sha256_sig() {
    if !have_signify("a_release_is_declared_from_its_verified_sha256_sig") {
        return;
    }
    let p = production_profile("obsd-declare");
    let files = files_of_sets(&p.file("platforms/openbsd/platform.yaml"));
    let r = Release::signed(&files);
    assert!(r.reference_check(&r.pubkey).status.success());
    let before = sources_yaml(&p);
    let report: serde_json::Value = common::ok_json(declare(&p, &r, &r.pubkey, &["--json"]));
    let decls = report["declarations"].as_array().unwrap();
    // Every set but the one the platform does not install, and the signed
    // listing itself (SHA256.sig, served for the installer's own check).
    assert_eq!(decls.len(), files.len() + 1, "{report}");
    let listing = std::fs::read(r.dir.join("SHA256")).unwrap();
    for d in decls {
        assert_eq!(d["outcome"], "declared", "{d}");
        let name = d["name"].as_str().unwrap();
        let file = name.strip_prefix("openbsd-7.9-amd64-").unwrap();
        assert_eq!(
            d["url"],
            format!("https://cdn.openbsd.org/pub/OpenBSD/7.9/amd64/{file}")
        );
        let bytes = if file == "SHA256" {
            listing.clone()
        } else if file == "SHA256.sig" {
            std::fs::read(r.sig()).unwrap()
        } else {
            files.iter().find(|(f, _)| f == file).unwrap().1.clone()
        };
        assert_eq!(d["sha256"], sha256_hex(&bytes), "{name}");
    }
    assert!(
        decls
            .iter()
            .any(|d| d["name"] == "openbsd-7.9-amd64-SHA256")
    );
    // The file's own text and comments are kept; one commented block added.
    let after = String::from_utf8(sources_yaml(&p)).unwrap();
    assert!(after.as_bytes().starts_with(&before), "text not kept");
    let added = &after[before.len()..];
    assert!(
        added.contains("# OpenBSD 7.9 amd64") && added.contains("openbsd-79-base.pub"),
        "{added}"
    );
    let out = p.kiln(&["catalogue", "validate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Again: nothing to declare, nothing written.
    let again: serde_json::Value = common::ok_json(declare(&p, &r, &r.pubkey, &["--json"]));
    assert!(
        again["declarations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["outcome"] == "unchanged"),
        "{again}"
    );
    assert_eq!(sources_yaml(&p), after.as_bytes());
}

#[test]
fn a_tampered_listing_is_refused_and_nothing_changes() {
    if !have_signify("a_tampered_listing_is_refused_and_nothing_changes") {
        return;
    }
    let p = production_profile("obsd-tampered");
    let r = Release::signed(&files_of_sets(&p.file("platforms/openbsd/platform.yaml")));
    // One digit of one listed sha256 changed inside the signed message.
    let sig = std::fs::read_to_string(r.sig()).unwrap();
    let at = sig.find("SHA256 (base79.tgz) = ").unwrap() + "SHA256 (base79.tgz) = ".len();
    let digit = if &sig[at..at + 1] == "0" { "1" } else { "0" };
    std::fs::write(r.sig(), format!("{}{digit}{}", &sig[..at], &sig[at + 1..])).unwrap();
    assert!(!r.reference_check(&r.pubkey).status.success());
    let before = sources_yaml(&p);
    let out = declare(&p, &r, &r.pubkey, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&r.sig().display().to_string()) && err.contains("verification failed"),
        "{err}"
    );
    assert_eq!(sources_yaml(&p), before, "nothing may change");
}

#[test]
fn another_public_key_is_refused_by_its_key_number() {
    if !have_signify("another_public_key_is_refused_by_its_key_number") {
        return;
    }
    let p = production_profile("obsd-wrongkey");
    let r = Release::signed(&files_of_sets(&p.file("platforms/openbsd/platform.yaml")));
    let other = r.keypair("openbsd-80-base");
    assert!(!r.reference_check(&other).status.success());
    let before = sources_yaml(&p);
    let out = declare(&p, &r, &other, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&r.sig().display().to_string())
            && err.contains(&other.display().to_string())
            && err.contains("signed with key"),
        "{err}"
    );
    assert_eq!(sources_yaml(&p), before, "nothing may change");
}

#[test]
fn a_set_missing_from_the_listing_is_refused_naming_it() {
    if !have_signify("a_set_missing_from_the_listing_is_refused_naming_it") {
        return;
    }
    let p = production_profile("obsd-missing");
    let mut files = files_of_sets(&p.file("platforms/openbsd/platform.yaml"));
    files.retain(|(f, _)| f != "bsd.mp");
    let r = Release::signed(&files);
    let before = sources_yaml(&p);
    let out = declare(&p, &r, &r.pubkey, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("openbsd-7.9-amd64-bsd.mp") && err.contains("platform.yaml:"),
        "{err}"
    );
    assert_eq!(sources_yaml(&p), before, "nothing may change");
}

#[test]
fn a_set_declared_with_another_digest_is_refused_with_its_line() {
    if !have_signify("a_set_declared_with_another_digest_is_refused_with_its_line") {
        return;
    }
    let p = production_profile("obsd-conflict");
    let r = Release::signed(&files_of_sets(&p.file("platforms/openbsd/platform.yaml")));
    p.edit("versions/sources.yaml", |t| {
        format!(
            "{t}  - name: openbsd-7.9-amd64-bsd\n    url: https://cdn.openbsd.org/pub/OpenBSD/7.9/amd64/bsd\n    sha256: {}\n",
            "0".repeat(64)
        )
    });
    let before = sources_yaml(&p);
    let line = String::from_utf8_lossy(&before)
        .lines()
        .position(|l| l.contains("name: openbsd-7.9-amd64-bsd"))
        .unwrap()
        + 1;
    let out = declare(&p, &r, &r.pubkey, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "sources.yaml:{line}: openbsd-7.9-amd64-bsd is already declared"
        )),
        "{err}"
    );
    assert_eq!(sources_yaml(&p), before, "nothing may change");
}

/// `python3 -m http.server` over a directory, stopped when dropped.
struct HttpServer {
    _child: common::Spawned,
    url: String,
}

impl HttpServer {
    fn start(root: &Path) -> HttpServer {
        let port = common::free_port();
        let child = common::Spawned::start(
            "the test's HTTP mirror",
            Command::new("python3")
                .args(["-m", "http.server", "--bind", "127.0.0.1"])
                .arg(port.to_string())
                .arg("--directory")
                .arg(root)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        );
        common::wait_until("the test's HTTP mirror", 20, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        HttpServer {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// The demo's OpenBSD slice (the test guest's recipes) with its sets
/// named as a production release names them.
fn demo_profile(name: &str) -> Profile {
    let p = Profile::demo(name).own_state().create();
    p.edit("platforms/openbsd/platform.yaml", |t| {
        t.replace(
            "sets: openbsd-fixture-SHA256 openbsd-fixture-base79.tgz",
            "sets: openbsd-7.9-amd64-SHA256 openbsd-7.9-amd64-base79.tgz openbsd-7.9-amd64-pxeboot",
        )
    });
    p.edit("platforms/openbsd/rc.firsttime", |t| {
        t.replace("openbsd-fixture-SHA256", "openbsd-7.9-amd64-SHA256")
    });
    p
}

#[test]
fn declared_sets_are_listed_and_synced_from_the_mirror() {
    let test = "declared_sets_are_listed_and_synced_from_the_mirror";
    if !have_signify(test) {
        return;
    }
    if !which("qemu-system-x86_64") || !which("python3") {
        common::skip(test, "qemu-system-x86_64 or python3 is missing");
        return;
    }
    let p = demo_profile("obsd-sync");
    let files: Vec<(String, Vec<u8>)> = ["base79.tgz", "pxeboot", "bsd.rd"]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                format!("{f} of the test release\n").into_bytes(),
            )
        })
        .collect();
    let r = Release::signed(&files);
    let server = HttpServer::start(&r.mirror_root());
    let out = declare(
        &p,
        &r,
        &r.pubkey,
        &["--mirror", &format!("{}/", server.url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.kiln(&["catalogue", "validate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names = [
        "openbsd-7.9-amd64-SHA256",
        "openbsd-7.9-amd64-base79.tgz",
        "openbsd-7.9-amd64-pxeboot",
    ];
    let listed = || -> Vec<serde_json::Value> {
        let out = p.kiln(&["sources", "list", "--platform", "openbsd", "--json"]);
        assert!(!out.stdout.is_empty(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let rows = listed();
    for n in names {
        let row = rows.iter().find(|r| r["name"] == n).unwrap_or_else(|| {
            panic!("{n} not listed: {rows:?}");
        });
        assert_eq!(row["present"], false, "{row}");
        assert_eq!(
            row["url"],
            format!(
                "{}/7.9/amd64/{}",
                server.url,
                n.strip_prefix("openbsd-7.9-amd64-").unwrap()
            )
        );
    }
    // A mirror answering other bytes for a set: refused, nothing mirrored.
    let base = r.dir.join("base79.tgz");
    std::fs::write(&base, b"a set someone replaced\n").unwrap();
    let out = p.kiln(&["sources", "sync", "--platform", "openbsd", "--json"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("openbsd-7.9-amd64-base79.tgz") && err.contains("checksum mismatch"),
        "{err}"
    );
    let row = listed()
        .into_iter()
        .find(|r| r["name"] == "openbsd-7.9-amd64-base79.tgz")
        .unwrap();
    assert_eq!(row["present"], false, "{row}");
    // The genuine bytes: every set fetched into the registry's mirror.
    std::fs::write(&base, &files[0].1).unwrap();
    let out = p.kiln(&["sources", "sync", "--platform", "openbsd", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for n in names {
        let row = listed().into_iter().find(|r| r["name"] == n).unwrap();
        assert_eq!(row["present"], true, "{row}");
    }
    drop(server);
}
