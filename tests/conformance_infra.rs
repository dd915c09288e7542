//! Kiln's macOS, FreeBSD and OpenBSD recipes against what upstream's
//! recipes for obuilder's base images establish: ocurrent/macos-infra's
//! base-image role, ocurrent/freebsd-infra's, and obuilder's qemu/ files
//! (tests/fixtures/upstream/infra-facts.json, made by
//! extract/infra_facts.py, whose header gives the vocabulary: packages,
//! opam binaries and their versions, the `opam` link, profile variables,
//! opam init's options, the switch, its packages and pin, opam-depext, git
//! identity, where the opam-repository comes from, install.conf answers,
//! partitions, the first boot's settings, …).
//!
//! Kiln's recipes are rendered for the compiler upstream's newest image
//! has (5.5) as `kiln plan --render` renders them and reduced to the same
//! facts (tests/upstream/infra.rs); the target's version is written
//! `{version}` on both sides. What one side has and the other lacks must
//! be a deviation of [`DEVIATIONS`], with its reason; an entry no longer
//! found fails too.

mod upstream;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln::catalogue::{self, Arch};
use kiln::plan::{self, Filter};
use upstream::infra;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Upstream,
    Kiln,
}
use Side::{Kiln, Upstream};

const OPAM_TARBALLS: &str = "opam is built from the declared opam-full release tarballs (pinned by sha256, the newest release of each series: 2.5.2, and 2.6.1 as opam-dev) instead of the binaries opam's install.sh from master downloads from GitHub (2.5.0, and master's as dev), which nothing pins";
const OPAM_REPOSITORY: &str = "the opam-repository is the source mirror's bundle of the pinned commit, checked against it, origin set back to GitHub, instead of a clone of GitHub's HEAD: the commit is a build input";
const SWITCH_PACKAGES: &str = "the switch is made by `opam switch create {version}` with the catalogue's packages (the compiler the build key says) rather than by `opam init -c {version}`; same switch name";
const BREW_PATH: &str = "the profile puts the arch's brew prefix on PATH ($BREW: /opt/homebrew on arm64, /usr/local on x86_64), where upstream writes /opt/homebrew for both, and the recipe sets its own PATH to run brew";
const MAC_USER: &str = "the build user and its sudoers entry are made once per worker by the operator (macos-infra recreates them for each image): Kiln's recipe never runs as root";
const OPENBSD_KEY: &str =
    "the ssh key is the factory's (qemu.ssh_key, rendered at build time), not obuilder's";
const OPENBSD_CONSOLE: &str = "the installer and the installed system talk on com0 (the serial line Kiln logs), so the whole install is in the build log";
const OPENBSD_ANSWERS: &str = "answers the installer asks for on the build's virtual hardware, explicit rather than defaulted: the network interface and its autoconf, the root disk and a GPT, the sets' directory on the build's server; and the root password prompt by its full question";
const OPENBSD_STAFF: &str = "the user is put in login class staff too (-L staff), so that the staff class's larger stack applies to it; upstream adds the group only";
const OPENBSD_NOW: &str =
    "Kiln waits for the power-off, so it powers off at once rather than in a minute";
const SCRIPT_ENV: &str = "the recipe's own environment while it runs (the bootstrap compiler, the brew prefix), not a profile the image keeps";
const OPENBSD_PATH: &str = "the verify boot runs `ocaml -version` over ssh as obuilder does: the switch's PATH goes into .ssh/environment with opam's variables";

/// (platform, side, fact, reason).
const DEVIATIONS: &[(&str, Side, &str, &str)] = &[
    ("macos", Upstream, "opam opam-2.5 2.5.0", OPAM_TARBALLS),
    ("macos", Kiln, "opam opam-2.5 2.5.2", OPAM_TARBALLS),
    ("macos", Upstream, "opam opam-dev dev", OPAM_TARBALLS),
    ("macos", Kiln, "opam opam-dev 2.6.1", OPAM_TARBALLS),
    ("macos", Upstream, "opam-repository github", OPAM_REPOSITORY),
    ("macos", Kiln, "opam-repository bundle", OPAM_REPOSITORY),
    (
        "macos",
        Kiln,
        "switch-packages ocaml-base-compiler.{version}",
        SWITCH_PACKAGES,
    ),
    (
        "macos",
        Upstream,
        "env PATH=/opt/homebrew/bin:/opt/homebrew/sbin:$PATH",
        BREW_PATH,
    ),
    (
        "macos",
        Kiln,
        "env PATH=$BREW/bin:$BREW/sbin:\\$PATH",
        BREW_PATH,
    ),
    (
        "macos",
        Kiln,
        "env PATH=$BREW/bin:$BREW/sbin:/usr/bin:/bin:/usr/sbin:/sbin",
        SCRIPT_ENV,
    ),
    ("macos", Upstream, "sudoers mac1000", MAC_USER),
    ("freebsd", Upstream, "opam opam-2.5 2.5.0", OPAM_TARBALLS),
    ("freebsd", Kiln, "opam opam-2.5 2.5.2", OPAM_TARBALLS),
    ("freebsd", Upstream, "opam opam-dev dev", OPAM_TARBALLS),
    ("freebsd", Kiln, "opam opam-dev 2.6.1", OPAM_TARBALLS),
    (
        "freebsd",
        Upstream,
        "opam-repository github",
        OPAM_REPOSITORY,
    ),
    ("freebsd", Kiln, "opam-repository bundle", OPAM_REPOSITORY),
    (
        "freebsd",
        Kiln,
        "switch-packages ocaml-base-compiler.{version}",
        SWITCH_PACKAGES,
    ),
    (
        "freebsd",
        Kiln,
        "jail kiln-setup.sh",
        "Kiln's root script in the jail (freebsd-infra's freebsd.sh), named for Kiln",
    ),
    (
        "freebsd",
        Upstream,
        "jail freebsd.sh",
        "freebsd-infra's root script in the jail; Kiln's is kiln-setup.sh, the same steps",
    ),
    (
        "freebsd",
        Kiln,
        "jail kiln-opam.sh as opam",
        "the opam user's script (freebsd-infra's freebsd-ocaml.sh), named for Kiln",
    ),
    (
        "freebsd",
        Upstream,
        "jail freebsd-ocaml.sh as opam",
        "freebsd-infra's opam user's script; Kiln's is kiln-opam.sh, the same steps",
    ),
    (
        "openbsd",
        Kiln,
        "env PATH=/tmp/opam-bootstrap/bootstrap/ocaml/bin:$PATH",
        SCRIPT_ENV,
    ),
    (
        "openbsd",
        Kiln,
        "set SHA256",
        "Kiln checks every set against the release's SHA256 before any boot (and serves it beside SHA256.sig)",
    ),
    ("openbsd", Upstream, "opam opam-2.5 2.5.0", OPAM_TARBALLS),
    ("openbsd", Kiln, "opam opam-2.5 2.5.2", OPAM_TARBALLS),
    (
        "openbsd",
        Upstream,
        "opam-repository github",
        OPAM_REPOSITORY,
    ),
    ("openbsd", Kiln, "opam-repository bundle", OPAM_REPOSITORY),
    (
        "openbsd",
        Upstream,
        "answer Public ssh key for user = ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA09mqKPpMJ4tyOpl4l+KTTl1DqjFT2mRD29HW8VwnmB root@alpha",
        OPENBSD_KEY,
    ),
    (
        "openbsd",
        Kiln,
        "answer Public ssh key for user = {{ssh_public_key}}",
        OPENBSD_KEY,
    ),
    (
        "openbsd",
        Upstream,
        "answer Change the default console to com0 = no",
        OPENBSD_CONSOLE,
    ),
    (
        "openbsd",
        Kiln,
        "answer Change the default console to com0 = yes",
        OPENBSD_CONSOLE,
    ),
    (
        "openbsd",
        Upstream,
        "answer Password for root = *************",
        OPENBSD_ANSWERS,
    ),
    (
        "openbsd",
        Kiln,
        "answer Password for root account = *************",
        OPENBSD_ANSWERS,
    ),
    (
        "openbsd",
        Kiln,
        "answer Network interfaces = vio0",
        OPENBSD_ANSWERS,
    ),
    (
        "openbsd",
        Kiln,
        "answer IPv4 address for vio0 = autoconf",
        OPENBSD_ANSWERS,
    ),
    (
        "openbsd",
        Kiln,
        "answer IPv6 address for vio0 = none",
        OPENBSD_ANSWERS,
    ),
    (
        "openbsd",
        Kiln,
        "answer Which disk is the root disk = sd0",
        OPENBSD_ANSWERS,
    ),
    (
        "openbsd",
        Kiln,
        "answer Use (W)hole disk MBR, whole disk (G)PT or (E)dit = G",
        OPENBSD_ANSWERS,
    ),
    (
        "openbsd",
        Kiln,
        "answer Server directory = pub/OpenBSD/7.9/amd64",
        OPENBSD_ANSWERS,
    ),
    ("openbsd", Upstream, "usermod -G staff opam", OPENBSD_STAFF),
    (
        "openbsd",
        Kiln,
        "usermod -L staff -G staff opam",
        OPENBSD_STAFF,
    ),
    ("openbsd", Upstream, "shutdown -p +1", OPENBSD_NOW),
    ("openbsd", Kiln, "shutdown -p now", OPENBSD_NOW),
    (
        "openbsd",
        Kiln,
        "env PATH=$(opam var bin --switch={version}):/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin",
        OPENBSD_PATH,
    ),
];

fn fixture() -> serde_json::Value {
    let p = root().join("tests/fixtures/upstream/infra-facts.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Kiln's recipes of `os`, OCaml 5.5 on `arch`, rendered for reading, with
/// the QEMU guest's user as obuilder's (`opam`); and the release files it
/// serves the installer (`set <file>` of `vars.sets`).
fn rendered(
    cat: &catalogue::Catalogue,
    os: &str,
    arch: Arch,
) -> (Vec<String>, Vec<(String, String)>) {
    let filter = Filter {
        os: Some(os.into()),
        version: Some("5.5".into()),
        arch: Some(arch),
        ..Filter::default()
    };
    let t = plan::expand(cat, &filter).unwrap().remove(0);
    let version = t.version.clone().unwrap().to_string();
    let prefix = format!(
        "openbsd-{}-{arch}-",
        t.vars.get("release").map_or("", String::as_str)
    );
    let sets = t
        .vars
        .get("sets")
        .map(|s| {
            s.split_whitespace()
                .map(|n| format!("set {}", n.strip_prefix(&prefix).unwrap_or(n)))
                .collect()
        })
        .unwrap_or_default();
    let files = plan::render::render(&t)
        .unwrap()
        .into_iter()
        .map(|(n, text)| {
            (
                n,
                text.replace("{{ssh_user}}", "opam")
                    .replace(&version, "{version}"),
            )
        })
        .collect();
    (sets, files)
}

/// Kiln's facts for a platform.
fn kiln_facts(cat: &catalogue::Catalogue, platform: &str) -> Vec<String> {
    let (os, arch) = match platform {
        "macos" => ("macos-homebrew", Arch::Arm64),
        "freebsd" => ("freebsd-15.1", Arch::Amd64),
        _ => ("openbsd-79-amd64", Arch::Amd64),
    };
    let (sets, files) = rendered(cat, os, arch);
    let mut out = sets;
    for (name, text) in &files {
        match name.as_str() {
            "install.conf" => out.extend(infra::answers(text)),
            "disklabel" => out.extend(infra::partitions(text)),
            "boot.conf" => {}
            _ => out.extend(infra::script_facts(text)),
        }
    }
    out
}

/// What is left of one platform: (side, fact), each once.
fn left(up: &[String], kiln: &[String]) -> Vec<(Side, String)> {
    let count = |v: &[String]| {
        let mut m: BTreeMap<String, i32> = BTreeMap::new();
        for f in v {
            *m.entry(f.clone()).or_default() += 1;
        }
        m
    };
    let (u, k) = (count(up), count(kiln));
    let mut out = Vec::new();
    for f in u
        .keys()
        .chain(k.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (nu, nk) = (
            u.get(f).copied().unwrap_or(0),
            k.get(f).copied().unwrap_or(0),
        );
        if nu > nk {
            out.push((Upstream, f.clone()));
        } else if nk > nu {
            out.push((Kiln, f.clone()));
        }
    }
    out
}

fn problems(cat: &catalogue::Catalogue) -> Vec<String> {
    let doc = fixture();
    let mut out = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for platform in ["macos", "freebsd", "openbsd"] {
        let up: Vec<String> =
            serde_json::from_value(doc["platforms"][platform]["facts"].clone()).unwrap();
        assert!(up.len() > 10, "{platform}: {} upstream facts", up.len());
        for (side, fact) in left(&up, &kiln_facts(cat, platform)) {
            match DEVIATIONS
                .iter()
                .position(|(p, s, f, _)| *p == platform && *s == side && *f == fact)
            {
                Some(i) => {
                    used.insert(i);
                }
                None => out.push(format!("{platform}: unlisted ({side:?}, {fact:?})")),
            }
        }
    }
    for (i, (p, s, f, _)) in DEVIATIONS.iter().enumerate() {
        if !used.contains(&i) {
            out.push(format!("stale: ({p}, {s:?}, {f:?}) is left over nowhere"));
        }
    }
    out
}

fn shipped() -> catalogue::Catalogue {
    catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap()
}

#[test]
fn macos_freebsd_and_openbsd_recipes_establish_what_upstreams_do() {
    let p = problems(&shipped());
    assert!(p.is_empty(), "{} problems:\n{}", p.len(), p.join("\n"));
}

/// A difference the table does not list fails: gmp preinstalled again on
/// macOS, sandboxing disabled on FreeBSD, opam-depext and the xbase set
/// dropped on OpenBSD.
#[test]
fn a_new_difference_fails_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["versions", "platforms"] {
        let ok = std::process::Command::new("cp")
            .arg("-r")
            .arg(root().join(sub))
            .arg(dir.path().join(sub))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    let edit = |rel: &str, from: &str, to: &str| {
        let p = dir.path().join(rel);
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains(from), "{rel}: {from}");
        std::fs::write(&p, t.replacen(from, to, 1)).unwrap();
    };
    edit(
        "platforms/macos/provision.sh",
        "brew install --quiet gpatch",
        "brew install --quiet gpatch gmp",
    );
    edit(
        "platforms/freebsd/provision.sh",
        "opam init -y -k git -a --bare ./opam-repository",
        "opam init -y -k git -a --bare --disable-sandboxing ./opam-repository",
    );
    edit(
        "platforms/openbsd/platform.yaml",
        " openbsd-7.9-amd64-xbase79.tgz",
        "",
    );
    edit(
        "platforms/openbsd/rc.firsttime",
        "    opam install -y opam-depext\n",
        "",
    );
    let cat = catalogue::load(&dir.path().join("versions"), &dir.path().join("platforms")).unwrap();
    let p = problems(&cat);
    for want in [
        "macos: unlisted (Kiln, \"package gmp\")",
        "freebsd: unlisted (Kiln, \"opam-init kind=git setup=auto sandboxing=off\")",
        "openbsd: unlisted (Upstream, \"opam-install opam-depext\")",
        "openbsd: unlisted (Upstream, \"set xbase79.tgz\")",
    ] {
        assert!(p.iter().any(|l| l == want), "{want} not in {p:?}");
    }
}
