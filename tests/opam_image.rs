//! The compiler-less `<os>-opam` image end to end on the real engine and
//! registry: a two-stage busybox recipe whose `opam` stage alone is built
//! into `<os>-opam` beside the compiler image, published with a lockfile
//! entry that has no compiler version, never required by the gate, and
//! resolved by its tag.

use std::process::Command;

mod common;
use common::Bounded;
use common::{Profile, ok_json};

/// The busybox stand-ins in two stages: opam (and a stand-in
/// opam-repository) in `opam`, the compiler on top in `compiler`.
const RECIPE: &str = r#"# Test recipe: the `opam` stage is the compiler-less image.
FROM {{parent}}@{{parent_digest}} AS opam
RUN mkdir -p /usr/local/bin /home/opam/opam-repository \
 && printf '#!/bin/sh\necho "{{opam_version}}"\n' > /usr/local/bin/opam \
 && chmod 755 /usr/local/bin/opam \
 && echo "{{os}}/{{arch}} {{opam_repository_commit}}" > /home/opam/opam-repository/repo

FROM opam AS compiler
RUN printf '#!/bin/sh\necho "The OCaml toplevel, version {{ocaml_version}}"\n' > /usr/local/bin/ocaml \
 && chmod 755 /usr/local/bin/ocaml
LABEL org.opencontainers.image.version="{{ocaml_version}}"
"#;

fn profile(name: &str) -> Profile {
    let p = Profile::busybox(name, "bbopam").create();
    std::fs::write(p.file("platforms/linux/busybox.Dockerfile"), RECIPE).unwrap();
    p.edit("platforms/linux/policy.yaml", |t| {
        format!("{t}opam_image: true\n")
    });
    common::fixtures();
    p
}

/// `sh -c script` in a fresh container of `image` (pulled from the
/// shared registry, removed afterwards): its exit code and output.
fn run_in(image: &str, script: &str) -> (Option<i32>, String) {
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
        ])
        .args([image, "-c", script])
        .output_within(common::LIMIT)
        .unwrap();
    let _ = Command::new("docker")
        .args(["rmi", image])
        .output_within(common::LIMIT);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_opam_stage_is_built_published_and_resolved_without_a_compiler() {
    let p = profile("opamimg");
    let (code, s) = p.build(&[]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["built"], 2, "{s}");
    let repo = format!("{}/opam", p.namespace);

    // The lockfile entry has no compiler; the compiler image's has one.
    let e = p.entry(&format!("{repo}:bbopam-opam"));
    assert!(e.get("ocaml").is_none(), "{e}");
    assert_eq!(e["aliases"], serde_json::json!([]));
    let immutable = e["immutable_tag"].as_str().unwrap();
    assert!(immutable.starts_with("bbopam-opam-"), "{immutable}");
    assert!(e["inputs"].get("amd64.ocaml").is_none(), "{e}");
    let c = p.entry(&format!("{repo}:bbopam-ocaml-5.5"));
    assert_eq!(c["ocaml"], "5.5.0");
    assert_ne!(e["build_key"], c["build_key"]);

    // Its index says what it holds: opam, not a compiler.
    let raw: serde_json::Value = ok_json(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw"])
            .arg(format!("docker://127.0.0.1:5000/{repo}:bbopam-opam"))
            .output_within(common::LIMIT)
            .unwrap(),
    );
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.version"],
        format!("opam-{}", kiln::plan::OPAM_VERSION)
    );

    // The image holds opam and the opam-repository, and no compiler.
    let (code, out) = run_in(
        &format!("127.0.0.1:5000/{repo}:bbopam-opam"),
        "opam; cat /home/opam/opam-repository/repo; test ! -e /usr/local/bin/ocaml",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(kiln::plan::OPAM_VERSION), "{out}");
    assert!(out.contains("bbopam/amd64 test-pinned"), "{out}");

    // The gate requires the compiler image only.
    let plan: serde_json::Value = ok_json(p.kiln(&["plan", "--json"]));
    let required: Vec<&str> = plan["requirements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tag"].as_str().unwrap())
        .collect();
    assert_eq!(required, ["bbopam-ocaml-5.5"]);

    // The API resolves it by its tag, with no compiler in the answer.
    let out = p.kiln(&["resolve", &format!("{repo}:bbopam-opam"), "--json"]);
    let pin: serde_json::Value = ok_json(out);
    assert_eq!(pin["digest"], e["digest"]);
    assert!(pin.get("ocaml").is_none(), "{pin}");

    // Nothing changed: nothing is built again.
    let (code, s) = p.build(&[]);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["built"], 0, "{s}");
    assert_eq!(
        p.entry(&format!("{repo}:bbopam-opam"))["digest"],
        e["digest"]
    );
}

#[test]
fn a_recipe_without_an_opam_stage_is_refused_naming_it() {
    let p = Profile::busybox("opamnostage", "bbnostage").create();
    p.edit("platforms/linux/policy.yaml", |t| {
        format!("{t}opam_image: true\n")
    });
    let out = p.kiln(&["catalogue", "validate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("busybox.Dockerfile: no `FROM … AS opam` stage")
            && err.contains("bbnostage-opam"),
        "{err}"
    );
    // A build fails that image as the recipe's fault and publishes
    // nothing of it; the compiler image is built all the same.
    common::fixtures();
    let (code, s) = p.build(&[]);
    assert_ne!(code, Some(0), "{s}");
    assert_eq!(
        (s["built"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let failed = s["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"] == "bbnostage-opam")
        .unwrap();
    assert!(
        failed.to_string().contains("no `FROM … AS opam` stage"),
        "{failed}"
    );
    let keys: Vec<String> = p.entries().keys().cloned().collect();
    assert_eq!(keys, [format!("{}/opam:bbnostage-ocaml-5.5", p.namespace)]);
}
