//! Kiln's production recipes against what upstream's do, beyond the
//! Dockerfile-by-Dockerfile comparison of tests/conformance_dockerfiles.rs:
//! every source a recipe takes from the source server is declared with its
//! sha256, old compilers get upstream's extra steps (the GCC 15 overlay,
//! the secondary compiler, the beta repository), and 32-bit arches run
//! under `linux32`. Recipes are rendered as `kiln plan --render` renders
//! them and reduced to facts by tests/upstream/facts.rs.

mod upstream;

use std::collections::BTreeSet;
use std::path::PathBuf;

use kiln::catalogue::{self, Arch};
use kiln::plan::{self, Filter, validate};
use upstream::facts;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Git sources versions/sources.yaml lists without a commit: only a
/// machine that reaches their remote can declare them (no upstream record
/// gives the commit); a target taking one is refused, naming the command.
const PENDING: &[(&str, &str)] = &[(
    "ocaml-patches-overlay.bundle",
    "the `patches` branch of ocurrent/opam-repository: builds.expected names no commit and the \
     stored snapshot of the branch predates its GCC 15 patches",
)];

fn shipped() -> catalogue::Catalogue {
    catalogue::load(&root().join("versions"), &root().join("platforms")).unwrap()
}

/// Kiln's recipe for one OS release and compiler, plain, amd64, as `kiln
/// plan --render` renders it.
fn rendered(cat: &catalogue::Catalogue, os: &str, version: &str) -> String {
    let filter = Filter {
        version: Some(version.into()),
        os: Some(os.into()),
        arch: Some(Arch::Amd64),
        variant: Some(plan::PLAIN_VARIANT.into()),
        ..Filter::default()
    };
    let targets = plan::expand(cat, &filter).unwrap();
    let t = targets
        .first()
        .unwrap_or_else(|| panic!("no target {os} {version} amd64"));
    render_target(t)
}

fn render_target(t: &plan::Target) -> String {
    plan::render::render(t).unwrap().remove(0).1
}

fn reduce(text: &str) -> Vec<String> {
    facts::reduce(text, "os")
}

/// The `{{sources_url}}/<name>` a rendered recipe fetches.
fn fetched(text: &str) -> BTreeSet<String> {
    let base = "{{sources_url}}/".to_string();
    text.match_indices(&base)
        .map(|(i, _)| {
            text[i + base.len()..]
                .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn every_source_a_recipe_fetches_is_declared_with_its_sha256() {
    let text = std::fs::read_to_string(root().join("versions/sources.yaml")).unwrap();
    let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let mut declared = BTreeSet::new();
    for s in doc["sources"].as_sequence().unwrap() {
        let name = s["name"].as_str().unwrap();
        let sha = s["sha256"].as_str().unwrap();
        assert!(
            sha.len() == 64
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "versions/sources.yaml: {name}: sha256 {sha:?} is not 64 lowercase hex"
        );
        assert!(
            s["url"].as_str().unwrap().starts_with("https://"),
            "{name}: url"
        );
        assert!(declared.insert(name.to_string()), "{name} declared twice");
    }
    let mut pending = BTreeSet::new();
    for g in doc["git"].as_sequence().unwrap() {
        let served = format!("{}.bundle", g["name"].as_str().unwrap());
        match g["commit"].as_str() {
            Some(c) => {
                assert!(c.len() == 40, "{served}: commit {c:?}");
                declared.insert(served);
            }
            None => {
                pending.insert(served);
            }
        }
    }
    let cat = shipped();
    let mut wanted = BTreeSet::new();
    for t in validate::all_targets(&cat).unwrap() {
        // A compiler-less image is its recipe's `opam` stage, which the
        // compiler targets of its OS release render too.
        if t.builder == catalogue::BuilderKind::Docker
            && t.version.is_some()
            && t.recipes[0].starts_with(root().join("platforms"))
        {
            wanted.extend(fetched(&render_target(&t)));
        }
    }
    // The bundle and the archive cache are made by the sources server itself.
    wanted.remove("opam-repository.bundle");
    wanted.retain(|n| !n.starts_with("opam-cache"));
    // A step a target does not run names no source (`{{sources_url}}/` and
    // an empty `{{ocaml_beta_repository_source}}`).
    wanted.remove("");
    let undeclared: BTreeSet<String> = PENDING.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(pending, undeclared, "the pending git sources");
    for n in &wanted {
        assert!(
            declared.contains(n) || undeclared.contains(n),
            "a recipe fetches {{{{sources_url}}}}/{n}, which versions/sources.yaml does not declare"
        );
    }
    for n in &declared {
        assert!(
            wanted.contains(n),
            "versions/sources.yaml declares {n}, which no recipe fetches"
        );
    }
    for n in &undeclared {
        assert!(
            wanted.contains(n) && !declared.contains(n),
            "PENDING lists {n}: stale"
        );
    }
}

/// Does a fact start so?
fn has(facts: &[String], prefix: &str) -> bool {
    facts.iter().any(|f| f.starts_with(prefix))
}

#[test]
fn old_compilers_get_upstreams_extra_steps() {
    let cat = shipped();
    // 4.14.3 on Alpine 3.23 (gcc 15.2): the GCC 15 overlay; not on Debian 13 (gcc 14.2).
    let alpine = reduce(&rendered(&cat, "alpine-3.23", "4.14.3"));
    assert!(
        has(&alpine, "run opam repo add ocaml-patches-overlay "),
        "{alpine:?}"
    );
    assert!(!has(&alpine, "package apk zstd"), "zstd only from 5.1");
    let alpine5 = reduce(&rendered(&cat, "alpine-3.23", "5.4.1"));
    assert!(has(&alpine5, "package apk zstd"), "{alpine5:?}");
    let debian = reduce(&rendered(&cat, "debian-13", "4.14.3"));
    assert!(!has(&debian, "run opam repo add ocaml-patches-overlay"));
    assert!(has(
        &debian,
        "run opam switch create 4.14 --packages=ocaml-base-compiler.4.14.3"
    ));
    // Below 4.08: the secondary compiler.
    let old = reduce(&rendered(&cat, "debian-12", "4.07.1"));
    assert!(has(&old, "run opam install -y ocaml-secondary-compiler"));
    // A dev compiler: the beta repository.
    let dev = reduce(&rendered(&cat, "debian-13", "5.6.0"));
    assert!(has(&dev, "run opam repo add beta "), "{dev:?}");
    // Every Linux OS release says which gcc it ships.
    for pf in cat.platforms.iter().filter(|p| p.platform == "linux") {
        for os in &pf.releases {
            assert!(
                os.vars.contains_key("gcc"),
                "platforms/linux/platform.yaml: {}: vars.gcc",
                os.id
            );
        }
    }
}

#[test]
fn thirty_two_bit_arches_run_under_linux32() {
    let cat = shipped();
    let mut t = plan::expand(
        &cat,
        &Filter {
            version: Some("5.4.1".into()),
            os: Some("debian-13".into()),
            arch: Some(Arch::Amd64),
            ..Filter::default()
        },
    )
    .unwrap()
    .remove(0);
    // No OS release builds i386 any more (docker-base-images #346); the
    // variables of an i386 target are what a recipe would see.
    kiln::plan::recipe_vars::add(
        &mut t.vars,
        &t.version.clone().unwrap(),
        t.status.unwrap(),
        Arch::I386,
        &t.opam_packages.clone(),
    );
    let facts = reduce(&render_target(&t));
    assert!(
        has(&facts, "shell /usr/bin/linux32 /bin/sh -c"),
        "{facts:?}"
    );
    assert!(has(&facts, "entrypoint /usr/bin/linux32 opam exec --"));
}
