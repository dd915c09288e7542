//! Git sources (versions/sources.yaml `git:`) against the real registry,
//! engine and git, with a local bare repository standing in for the
//! upstream remote: a pending source refuses the build naming the command
//! that declares it; `kiln sources declare-git` records the commit its
//! branch names; `kiln sources sync` mirrors a bundle of that commit (not
//! of the branch's later head), checked; the build gets it from Kiln's
//! per-build server, keyed by the commit; a commit that is not on the
//! branch mirrors nothing. And the recipes' way of adding such a
//! repository: git's `insteadOf` gives the upstream URL the mirror's
//! bundle, with no network.

use std::path::Path;
use std::process::Command;

mod common;
use common::Profile;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@e")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@e")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A bare "upstream" repository with a branch `patches` of one commit
/// (and `master` elsewhere); returns (its file URL, the work tree).
fn upstream(dir: &Path) -> (String, std::path::PathBuf) {
    let bare = dir.join("upstream.git");
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(dir, &["init", "--quiet", "--bare", bare.to_str().unwrap()]);
    git(&work, &["init", "--quiet", "-b", "master"]);
    std::fs::write(work.join("repo"), "opam-version: \"2.0\"\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "master"]);
    git(&work, &["checkout", "--quiet", "-b", "patches"]);
    std::fs::write(work.join("patch"), "one\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "patch one"]);
    git(
        &work,
        &[
            "push",
            "--quiet",
            bare.to_str().unwrap(),
            "master",
            "patches",
        ],
    );
    (format!("file://{}", bare.display()), work)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A busybox profile whose recipe takes `overlay.bundle` from the source
/// server and checks that it holds `commit` as branch `patches`.
fn profile(name: &str, url: &str, commit: &str) -> Profile {
    let p = Profile::busybox(&format!("git-{name}"), "busybox")
        .own_state()
        .recipe_prefix(&format!(
            "RUN wget -q -O /overlay.bundle {{{{sources_url}}}}/overlay.bundle && grep -q '{commit} refs/heads/patches' /overlay.bundle\n"
        ))
        .create();
    std::fs::create_dir_all(p.path().join("state")).unwrap();
    std::os::unix::fs::symlink(
        common::state_dir().join("fixtures"),
        p.path().join("state/fixtures"),
    )
    .unwrap();
    std::fs::write(
        p.path().join("versions/sources.yaml"),
        format!("# the overlay\ngit:\n  # declare me\n  - name: overlay\n    url: {url}\n    ref: patches\n"),
    )
    .unwrap();
    p
}

#[test]
fn a_git_source_is_declared_mirrored_at_its_commit_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let (url, work) = upstream(dir.path());
    let declared = git(&work, &["rev-parse", "patches"]);
    let p = profile("served", &url, &declared);
    // Pending: the build is refused, naming the command, and nothing is made.
    let out = p.kiln(&["build"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("kiln sources declare-git overlay {url} patches")),
        "{err}"
    );
    assert!(p.entries().is_empty());
    // Declared: the branch's commit, the file's comments kept.
    let r: serde_json::Value = common::ok_json(p.kiln(&[
        "sources",
        "declare-git",
        "overlay",
        &url,
        "patches",
        "--json",
    ]));
    assert_eq!(
        (r["commit"].as_str(), r["outcome"].as_str()),
        (Some(declared.as_str()), Some("declared"))
    );
    let yaml = std::fs::read_to_string(p.path().join("versions/sources.yaml")).unwrap();
    assert!(
        yaml.contains("# declare me") && yaml.contains(&format!("commit: {declared}")),
        "{yaml}"
    );
    // Upstream moves on; the mirror takes the declared commit, not the head.
    std::fs::write(work.join("patch"), "two\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "patch two"]);
    git(
        &work,
        &[
            "push",
            "--quiet",
            url.trim_start_matches("file://"),
            "patches",
        ],
    );
    let first: serde_json::Value = common::ok_json(p.kiln(&["sources", "sync", "--json"]));
    assert_eq!(first["sources"][0][0]["name"], "overlay.bundle", "{first}");
    assert_eq!(first["sources"][0][1], "fetched", "{first}");
    let again: serde_json::Value = common::ok_json(p.kiln(&["sources", "sync", "--json"]));
    assert_eq!(again["sources"][0][1], "present", "{again}");
    // The origin may go away: the build reads the mirror.
    std::fs::remove_dir_all(dir.path().join("upstream.git")).unwrap();
    let (code, s) = p.build(&[]);
    assert_eq!(code, Some(0), "{s}");
    let (_, entry) = p.entries().into_iter().next().unwrap();
    assert_eq!(
        entry["inputs"]["amd64.source:overlay.bundle"],
        declared.as_str(),
        "{entry}"
    );
}

#[test]
fn a_commit_not_on_the_branch_mirrors_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, work) = upstream(dir.path());
    let elsewhere = git(&work, &["rev-parse", "master~0"]);
    let patches = git(&work, &["rev-parse", "patches"]);
    // master's commit is an ancestor of patches; a commit of a branch that
    // was never pushed is on no branch of the remote.
    git(&work, &["checkout", "--quiet", "-b", "local", &elsewhere]);
    std::fs::write(work.join("other"), "x\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "never pushed"]);
    let stray = git(&work, &["rev-parse", "HEAD"]);
    let p = profile("stray", &url, &patches);
    p.edit("versions/sources.yaml", |t| {
        format!("{t}    commit: {stray}\n")
    });
    let out = p.kiln(&["sources", "sync"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&stray)
            && err.contains("not on branch patches")
            && err.contains("declare-git"),
        "{err}"
    );
    let list: serde_json::Value =
        serde_json::from_slice(&p.kiln(&["sources", "list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["present"], false, "{list}");
}

/// The recipes add the beta repository and the GCC 15 overlay as
/// upstream does, by their upstream URLs, while git's `insteadOf` points
/// those URLs at the bare clone of the mirror's bundle: with no network (a
/// network namespace of its own), `git ls-remote` of the upstream URL
/// answers from the bundle.
#[test]
fn the_upstream_url_resolves_to_the_bundle_without_the_network() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recipe = std::fs::read_to_string(root.join("platforms/linux/apt.Dockerfile")).unwrap();
    let insteadof = "git config --global url.file:///tmp/ocaml-patches-overlay.git.insteadOf https://github.com/ocurrent/opam-repository";
    assert!(recipe.contains(insteadof));
    assert!(recipe.contains(
        "opam repo add ocaml-patches-overlay git+https://github.com/ocurrent/opam-repository#patches --set-default"
    ));
    let dir = tempfile::tempdir().unwrap();
    let (_, work) = upstream(dir.path());
    let commit = git(&work, &["rev-parse", "patches"]);
    let bundle = dir.path().join("overlay.bundle");
    git(
        &work,
        &[
            "bundle",
            "create",
            "--quiet",
            bundle.to_str().unwrap(),
            "patches",
        ],
    );
    let clone = dir.path().join("ocaml-patches-overlay.git");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let script = format!(
        "set -e\ngit clone --quiet --bare {b} {c}\n{cfg}\ngit ls-remote https://github.com/ocurrent/opam-repository refs/heads/patches\n",
        b = bundle.display(),
        c = clone.display(),
        cfg = insteadof.replace(
            "/tmp/ocaml-patches-overlay.git",
            &clone.display().to_string()
        ),
    );
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), format!("{commit}\trefs/heads/patches"));
}

/// What the shipped catalogue cannot declare here is exactly what only a
/// machine reaching its origin can: the GCC 15 overlay (no upstream record
/// of its commit) and the OpenBSD releases' sets (no mirror reachable),
/// each with the one command that declares it; the beta repository is
/// declared (its record: the repository's master). `kiln plan` lists them.
#[test]
fn the_shipped_plan_lists_every_pending_source_with_its_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(root)
        .args(["plan", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pending: Vec<(String, String)> = v["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["source"].as_str().unwrap().to_string(),
                p["command"]
                    .as_str()
                    .expect("every pending source has its command")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        pending,
        [
            (
                "ocaml-patches-overlay.bundle".to_string(),
                "kiln sources declare-git ocaml-patches-overlay https://github.com/ocurrent/opam-repository patches".to_string()
            ),
            (
                "openbsd-7.8-amd64-*".to_string(),
                "kiln sources declare-openbsd --release 7.8 --arch amd64 --sha256-sig SHA256.sig --pubkey /etc/signify/openbsd-78-base.pub".to_string()
            ),
            (
                "openbsd-7.9-amd64-*".to_string(),
                "kiln sources declare-openbsd --release 7.9 --arch amd64 --sha256-sig SHA256.sig --pubkey /etc/signify/openbsd-79-base.pub".to_string()
            ),
        ]
    );
    // The beta repository is declared: a trunk target is not pending.
    let yaml = std::fs::read_to_string(root.join("versions/sources.yaml")).unwrap();
    assert!(yaml.contains("commit: 79aeeadd813bdae424ab53f882f08bee0a4e0b89"));
}
