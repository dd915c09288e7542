//! The demo's Linux slice, for real (README's first command builds the
//! same): OCaml compiled from source by `opam switch create` in the
//! ocaml/opam layout, every input served from the source mirror; and
//! Debian's packaged OCaml as a two-arch index (arm64 by emulation), each
//! child compiling and running a program. These take minutes (the
//! compiler build is most of it).

mod common;
use common::Profile;

/// The real demo catalogue with its own state (logs, cache, lockfile),
/// sharing the services' parent tarballs.
fn profile(name: &str) -> Profile {
    let p = Profile::real_demo(name).own_state().create();
    std::fs::create_dir_all(p.path().join("state")).unwrap();
    std::os::unix::fs::symlink(
        common::state_dir().join("fixtures"),
        p.path().join("state/fixtures"),
    )
    .unwrap();
    // Both tests want the same parents: make them once.
    static PARENTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = PARENTS.lock().unwrap_or_else(|e| e.into_inner());
    let out = p.kiln(&["fixtures", "--debian"]);
    assert!(
        out.status.success(),
        "kiln fixtures --debian: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    p
}

/// Every build log's last lines: what a failed run shows, so a failure
/// on a CI machine says which command failed and why.
fn log_tails(p: &Profile) -> String {
    let mut out = String::new();
    let Ok(dir) = std::fs::read_dir(p.path().join("state/log")) else {
        return "no build logs".into();
    };
    for e in dir.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        out += &format!("\n--- {} (last 40 lines)\n{tail}\n", e.path().display());
    }
    out
}

fn log(p: &Profile, target: &str) -> String {
    let path = p.path().join(format!("state/log/{target}.log"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn ocaml_compiled_from_source_with_every_input_from_the_mirror() {
    let p = profile("real-source");
    // Nothing is in this profile's mirror yet: the run refuses up front.
    let out = p.kiln(&["build", "--os", "debian-12"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ocaml_4.13.1.orig.tar.gz") && err.contains("kiln sources sync"),
        "{err}"
    );
    let synced: serde_json::Value =
        common::ok_json(p.kiln(&["sources", "sync", "--json", "--os", "debian-12"]));
    let names: Vec<&str> = synced["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s[0]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"opam/ocaml-base-compiler.4.13.1/ocaml_4.13.1.orig.tar.gz")
            && names.contains(&"opam-repository.bundle"),
        "{synced}"
    );
    let (code, s) = p.build(&["--os", "debian-12"]);
    assert_eq!(code, Some(0), "{s:#}{}", log_tails(&p));
    assert_eq!(s["built"], 1, "{s:#}");
    let log = log(&p, "linux_debian-12_4.13.1_amd64");
    // The archive came from the build's source server, by checksum.
    assert!(
        log.contains("retrieved ocaml-base-compiler.4.13.1") && log.contains("/opam-cache)"),
        "{log}"
    );
    // Compiled here: the configure and the native compiler build ran.
    assert!(log.contains("ocaml-base-compiler.4.13.1"), "{log}");
    for expect in [
        "The OCaml toplevel, version 4.13.1",
        "opam --version -> 2.1.2",
        "Hello from OCaml 4.13.1",
        "layout ok, switch 4.13",
    ] {
        assert!(log.contains(expect), "{expect:?} not in {log}");
    }
    let entry = p.entry(&format!("{}/opam:debian-12-ocaml-4.13", p.namespace));
    let commit = entry["inputs"]["amd64.opam_repository_commit"]
        .as_str()
        .unwrap();
    let head = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(p.path().join("opam-repository.git"))
        .args(["rev-parse", "HEAD"])
        .output()
        .unwrap();
    assert_eq!(commit, String::from_utf8_lossy(&head.stdout).trim());
    // Pinned like any other image: the API's resolver gives the digest.
    let out = p.kiln(&["resolve", "ocaml/opam:debian-12-ocaml-4.13"]);
    let pin = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && pin.contains("@sha256:"), "{pin}");
}

#[test]
fn debians_packaged_ocaml_on_two_arches_compiles_and_runs_on_each() {
    let p = profile("real-system");
    let (code, s) = p.build(&["--os", "debian-12-system"]);
    assert_eq!(code, Some(0), "{s:#}{}", log_tails(&p));
    assert_eq!(s["built"], 1, "{s:#}");
    for (arch, uname) in [("amd64", "x86_64"), ("arm64", "aarch64")] {
        let log = log(&p, &format!("linux_debian-12-system_4.13.1_{arch}"));
        assert!(log.contains("Hello from OCaml 4.13.1 on Unix"), "{log}");
        assert!(log.contains(uname), "{log}");
    }
    let entry = p.entry(&format!("{}/opam:debian-12-system-ocaml-4.13", p.namespace));
    let arches: Vec<&String> = entry["arches"].as_object().unwrap().keys().collect();
    assert_eq!(arches, ["amd64", "arm64"], "{entry}");
}
