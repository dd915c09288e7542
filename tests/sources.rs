//! The source mirror against the real registry and engine: declared
//! sources fetched once into the registry and served to a build by Kiln's
//! per-build server (the build has no other way to get them); a missing
//! source, a checksum that does not match, an undeclared reference and a
//! compiler archive no strong checksum pins are each refused before any
//! build, naming what is wrong, and publish nothing.

use std::path::Path;

mod common;
use common::{Bounded, Profile};

const CONTENT: &str = "kiln source mirror test payload\n";

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// A busybox profile whose recipe takes `payload.txt` from the source
/// server and checks it; `payload.txt` is declared with `sha` and comes
/// from a local file of the profile.
fn profile(name: &str, sha: &str) -> Profile {
    let p = Profile::busybox(&format!("sources-{name}"), "busybox")
        .own_state()
        .recipe_prefix(
            "RUN wget -q -O /payload.txt {{sources_url}}/payload.txt && grep -q 'source mirror' /payload.txt\n",
        )
        .create();
    std::fs::create_dir_all(p.path().join("state")).unwrap();
    std::os::unix::fs::symlink(
        common::state_dir().join("fixtures"),
        p.path().join("state/fixtures"),
    )
    .unwrap();
    let origin = p.path().join("origin/payload.txt");
    std::fs::create_dir_all(origin.parent().unwrap()).unwrap();
    std::fs::write(&origin, CONTENT).unwrap();
    std::fs::write(
        p.path().join("versions/sources.yaml"),
        format!(
            "sources:\n  - name: payload.txt\n    url: file://{}\n    sha256: {sha}\n",
            origin.display()
        ),
    )
    .unwrap();
    p
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sync(p: &Profile) -> std::process::Output {
    p.kiln(&["sources", "sync", "--json"])
}

#[test]
fn a_synced_source_is_served_to_the_build_and_keyed() {
    let sha = sha256_hex(CONTENT.as_bytes());
    let p = profile("served", &sha);
    // Before the sync the run refuses, naming the source, and builds nothing.
    let out = p.kiln(&["build"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("payload.txt") && err.contains("kiln sources sync"),
        "{err}"
    );
    assert!(p.entries().is_empty(), "nothing may be published");
    // Synced once: fetched, then present.
    let first: serde_json::Value = common::ok_json(sync(&p));
    assert_eq!(first["sources"][0][1], "fetched", "{first}");
    assert_eq!(
        first["sources"][0][0]["blob"],
        format!("sha256:{sha}"),
        "{first}"
    );
    // The origin may go away: the mirror is the copy builds use.
    std::fs::remove_file(p.path().join("origin/payload.txt")).unwrap();
    let again: serde_json::Value = common::ok_json(sync(&p));
    assert_eq!(again["sources"][0][1], "present", "{again}");
    let (code, s) = p.build(&[]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["built"], 1, "{s}");
    let (_, entry) = p.entries().into_iter().next().unwrap();
    assert_eq!(entry["inputs"]["amd64.source:payload.txt"], sha, "{entry}");
    let list: serde_json::Value = common::ok_json(p.kiln(&["sources", "list", "--json"]));
    assert_eq!(list[0]["present"], true, "{list}");
}

#[test]
fn a_checksum_mismatch_mirrors_and_publishes_nothing() {
    let wrong = "0".repeat(64);
    let p = profile("mismatch", &wrong);
    let out = sync(&p);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("payload.txt")
            && err.contains("checksum mismatch")
            && err.contains("sources.yaml")
            && err.contains(&sha256_hex(CONTENT.as_bytes())),
        "{err}"
    );
    let list: serde_json::Value =
        serde_json::from_slice(&p.kiln(&["sources", "list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["present"], false, "{list}");
    assert!(!p.kiln(&["build"]).status.success());
    assert!(p.entries().is_empty());
    // No fetch leftovers in the cache.
    let cache = p.path().join("state/sources");
    let left: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_undeclared_source_is_refused_naming_recipe_and_line() {
    let p = profile("undeclared", &sha256_hex(CONTENT.as_bytes()));
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        format!("{t}RUN wget -q {{{{sources_url}}}}/not-declared.tar.gz\n")
    });
    let out = p.kiln(&["catalogue", "validate"]);
    assert!(!out.status.success());
    let err = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(
        err.contains("busybox.Dockerfile")
            && err.contains("line ")
            && err.contains("not-declared.tar.gz"),
        "{err}"
    );
    let bad_sha = p.path().join("versions/sources.yaml");
    std::fs::write(
        &bad_sha,
        "sources:\n  - name: payload.txt\n    url: file:///x\n    sha256: nothex\n",
    )
    .unwrap();
    let out = p.kiln(&["plan"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("sources[0].sha256"),
        "{}",
        stderr(&out)
    );
}

/// A git repository of opam packages whose compiler archive `sum` pins.
fn opam_repo(dir: &Path, sum: &str) -> String {
    opam_repo_commit(dir, sum).0
}

/// The git repository under `dir` (made, or a commit added on top) with
/// ocaml-base-compiler.5.5.0's archive pinned by `sum`; and that commit.
fn opam_repo_commit(dir: &Path, sum: &str) -> (String, String) {
    let tree = dir.join("tree");
    let pkg = tree.join("packages/ocaml-base-compiler/ocaml-base-compiler.5.5.0");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(tree.join("repo"), "opam-version: \"2.0\"\n").unwrap();
    std::fs::write(
        pkg.join("opam"),
        format!(
            "opam-version: \"2.0\"\nurl {{\n  src: \"file:///nonexistent/ocaml-5.5.0.tar.gz\"\n  checksum: \"{sum}\"\n}}\n"
        ),
    )
    .unwrap();
    let git = dir.join("repo.git");
    let ok = std::process::Command::new("bash")
        .arg(common::root().join("scripts/demo/opam-repository.sh"))
        .arg(&tree)
        .arg(&git)
        .output_within(common::LIMIT)
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let commit = String::from_utf8_lossy(&ok.stdout).trim().to_string();
    assert_eq!(commit.len(), 40, "{commit}");
    (git.display().to_string(), commit)
}

#[test]
fn a_compiler_archive_without_a_strong_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let git = opam_repo(dir.path(), "md5=a55ca12a4e6edf83cb4777abdb7b2f4d");
    let p = Profile::busybox("sources-md5", "busybox")
        .own_state()
        .plan(&format!(
            "opam_repository = \"{git}\"\nopam_repository_ref = \"refs/heads/master\""
        ))
        .recipe_prefix("RUN wget -q -O /dev/null {{sources_url}}/opam-cache/none || true\n")
        .create();
    let out = sync(&p);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("packages/ocaml-base-compiler/ocaml-base-compiler.5.5.0/opam")
            && err.contains("no sha256 or sha512"),
        "{err}"
    );
    assert!(!p.kiln(&["build"]).status.success());
    assert!(p.entries().is_empty());
}

#[test]
fn an_opam_version_the_recipes_cannot_build_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::root();
    for sub in ["versions", "platforms"] {
        let ok = std::process::Command::new("cp")
            .arg("-r")
            .arg(root.join(sub))
            .arg(dir.path())
            .status_within(common::LIMIT)
            .unwrap()
            .success();
        assert!(ok);
    }
    let pf = dir.path().join("platforms/linux/platform.yaml");
    let text = std::fs::read_to_string(&pf).unwrap();
    // The first release's gcc stays; its opam becomes one no recipe builds.
    let edited = text.replacen(
        "vars: { gcc: \"14.2\" }",
        "vars: { gcc: \"14.2\", opam_version: \"2.9.0\" }",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(&pf, edited).unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(&config, "").unwrap();
    let out = common::kiln()
        .arg("--config")
        .arg(&config)
        .args(["catalogue", "validate"])
        .output_within(common::LIMIT)
        .unwrap();
    assert!(!out.status.success());
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("platform.yaml")
            && err.contains("releases[0].vars.opam_version")
            && err.contains("unknown opam version \"2.9.0\""),
        "{err}"
    );
}

/// `sources::target_tree`, the one function both the Docker and the QEMU
/// builder serve from: a declared source is served once synced, and a
/// wanted bundle the mirror lacks is refused naming the bundle, its commit
/// and where it comes from (a recipe failure).
#[test]
fn a_target_tree_serves_what_the_target_uses_and_names_a_missing_bundle() {
    use kiln::sources::{self, Mirror, Uses};
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("payload.txt");
    std::fs::write(&origin, CONTENT).unwrap();
    let mut cfg = kiln::config::Config::defaults(common::root()).unwrap();
    cfg.state_dir = dir.path().join("state");
    let namespace = format!("kiln-test-target-tree-{}", std::process::id());
    let _gone = common::registry::Published::namespace(&cfg.registry.url, &namespace);
    let reg = kiln::registry::Registry::new(&cfg.registry).unwrap();
    let mirror = Mirror::new(&reg, &namespace, &cfg.state_dir);
    let decl = kiln::catalogue::SourceDecl {
        name: "payload.txt".into(),
        url: format!("file://{}", origin.display()),
        sha256: sha256_hex(CONTENT.as_bytes()),
    };
    let uses = Uses {
        sources: vec![decl],
        ..Uses::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Not synced: the source is named, with the fix.
        let err = sources::target_tree(&cfg, &mirror, &uses, &[], "")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("payload.txt") && err.to_string().contains("sources sync"),
            "{err}"
        );
        let wanted = sources::wanted(&cfg, &uses.sources, false, &[], "")
            .await
            .unwrap();
        mirror.sync(&wanted).await.unwrap();
        let tree = sources::target_tree(&cfg, &mirror, &uses, &[], "")
            .await
            .unwrap();
        // By name, and by checksum in opam's archive-mirror layout.
        let sha = sha256_hex(CONTENT.as_bytes());
        let files: std::collections::BTreeMap<&str, _> =
            tree.files().map(|(k, v)| (k.as_str(), v)).collect();
        let names: Vec<&str> = files.keys().copied().collect();
        let by_sum = format!("opam-cache/sha256/{}/{sha}", &sha[..2]);
        assert_eq!(names, vec![by_sum.as_str(), "payload.txt"]);
        assert_eq!(
            std::fs::read_to_string(files["payload.txt"]).unwrap(),
            CONTENT
        );
        // The bundle of a commit the mirror never saw.
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let with_bundle = Uses {
            bundle: true,
            ..uses.clone()
        };
        let err = sources::target_tree(&cfg, &mirror, &with_bundle, &[], commit)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("opam-repository.bundle at {commit}"))
                && err.to_string().contains("plan.opam_repository"),
            "{err}"
        );
        assert_eq!(err.kind(), kiln::model::FailureKind::Recipe);
    });
}

/// One local mirror of the opam-repository serves both of its readers:
/// what `plan::opam_repo` fetches to diff two commits is what the source
/// mirror reads opam files from, with no second fetch (the origin is gone
/// by then).
#[test]
fn one_opam_repository_mirror_serves_the_plan_and_the_sources() {
    let dir = tempfile::tempdir().unwrap();
    let (first_sum, second_sum) = ("a".repeat(64), "b".repeat(64));
    let (_, first) = opam_repo_commit(dir.path(), &format!("sha256={first_sum}"));
    // A second commit: the compiler's archive is pinned anew.
    let (git, second) = opam_repo_commit(dir.path(), &format!("sha256={second_sum}"));
    assert_ne!(first, second);
    let mut cfg = kiln::config::Config::defaults(common::root()).unwrap();
    cfg.state_dir = dir.path().join("state");
    cfg.plan.opam_repository = git.clone();
    cfg.plan.opam_repository_ref = "refs/heads/master".into();
    let package = "ocaml-base-compiler.5.5.0".to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The plan's diff of the two commits fetches them into the mirror
        // and names the package whose opam file changed.
        let installed = std::collections::BTreeSet::from([package.clone()]);
        let changed = kiln::plan::opam_repo::changed_packages(&cfg, &first, &second, &installed)
            .await
            .unwrap();
        assert_eq!(
            changed,
            std::collections::BTreeSet::from([package.clone()]),
            "{changed:?}"
        );
        // The origin goes away: the sources read both commits' opam files
        // from that same mirror, each with its own checksum.
        std::fs::rename(&git, dir.path().join("moved.git")).unwrap();
        for (commit, sum) in [(&second, &second_sum), (&first, &first_sum)] {
            let archives =
                kiln::sources::opam::archives(&cfg, commit, std::slice::from_ref(&package))
                    .await
                    .unwrap();
            assert_eq!(archives.len(), 1, "{archives:?}");
            assert_eq!(archives[0].url, "file:///nonexistent/ocaml-5.5.0.tar.gz");
            assert_eq!(
                archives[0].checksum,
                kiln::sources::opam::Checksum::Sha256(sum.clone()),
                "{commit}"
            );
        }
        // A commit the mirror lacks needs the origin: the error names it.
        let err = kiln::sources::opam::ensure_commit(&cfg, &"c".repeat(40))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&git), "{err}");
    });
    assert!(
        kiln::sources::opam::mirror_dir(&cfg).join("HEAD").exists(),
        "one mirror under the state dir"
    );
}

/// The step that fetches a source renders the same in two builds (no
/// per-build port or secret: `http://kiln-sources/…`, the proxy given as
/// Docker's predefined `http_proxy` argument), the build runs on the
/// engine's default network, and nothing of the proxy (its address, its
/// token) reaches the published image's config or history.
#[test]
fn the_source_step_renders_the_same_in_every_build_and_leaves_no_secret() {
    let sha = sha256_hex(CONTENT.as_bytes());
    let p = profile("stable", &sha);
    assert!(sync(&p).status.success());
    let step = |p: &Profile| {
        let log = std::fs::read_dir(p.path().join("state/log"))
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect::<String>();
        // `Step 2/7 : RUN …`: the step's text, without its count.
        log.lines()
            .find(|l| l.contains("RUN wget -q -O /payload.txt"))
            .and_then(|l| l.split_once(" : "))
            .map(|(_, step)| step.to_string())
            .unwrap_or_else(|| panic!("no fetch step in {log}"))
    };
    let (code, s) = p.build(&[]);
    assert_eq!(code, Some(0), "{s}");
    let first = step(&p);
    assert!(first.contains("http://kiln-sources/payload.txt"), "{first}");
    // A second build (its key changed by a later step) renders it alike.
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        format!("{t}RUN echo second > /second\n")
    });
    let (code, s) = p.build(&[]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["built"], 1, "{s}");
    assert_eq!(step(&p), first);
    let digest = s["tags"][0]["outcome"]["digest"].as_str().unwrap();
    let repo = s["tags"][0]["repository"].as_str().unwrap();
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            "--config",
            "--override-arch",
            "amd64",
        ])
        .arg(format!("docker://127.0.0.1:5000/{repo}@{digest}"))
        .output_within(common::LIMIT)
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let config = String::from_utf8_lossy(&out.stdout);
    assert!(config.contains("kiln-sources/payload.txt"), "{config}");
    for secret in ["_proxy", "kiln:", "HTTP_PROXY"] {
        assert!(!config.contains(secret), "{secret} in {config}");
    }
}
