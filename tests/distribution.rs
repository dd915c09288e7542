//! `/v2/` of `kiln serve` read by the clients CI already runs: the local
//! dockerd 20.10 (`docker manifest inspect`, what ocurrent's `Docker.peek`
//! runs, and `docker pull`), skopeo and containerd's `ctr`, on an image
//! Kiln built and published into the real registry. Digests must be the
//! API's pins; clients check every blob's digest themselves; a version the
//! gate refuses is `MANIFEST_UNKNOWN` with the missing list.
//!
//! The current Docker of the fleet (a second engine) is issue #27's; only
//! the 20.10 engine runs here.
//!
//! One published profile and three servers are shared by the tests: one
//! over the published catalogue, one whose catalogue has moved on to
//! 5.5.1 (so the published 5.5.0 tag is refused as stale), one whose
//! backing registry does not answer.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

mod common;
use common::Profile;

const CTR_SOCKET: &str = "/var/run/docker/containerd/containerd.sock";

struct Serve {
    child: Child,
    host: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(p: &Profile, config: &Path, extra: &[&str], label: &str) -> Serve {
    let port = common::free_port();
    let child = common::kiln()
        .arg("--config")
        .arg(config)
        .args(extra)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(File::create(p.path().join(format!("{label}.out"))).unwrap())
        .stderr(File::create(p.path().join(format!("{label}.err"))).unwrap())
        .spawn()
        .unwrap();
    let mut s = Serve {
        child,
        host: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = s.child.try_wait() {
            panic!(
                "kiln serve exited ({status}): {}",
                std::fs::read_to_string(p.path().join(format!("{label}.err"))).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "kiln serve never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

struct World {
    p: Profile,
    /// The published tag and its pin (index digest) as `/v1/resolve` gives it.
    tag: String,
    pin: String,
    arch_digest: String,
    ok: Serve,
    refused: Serve,
    down: Serve,
}

const TAG: &str = "busybox-v2-ocaml-5.5";

fn resolve(host: &str, image: &str) -> Value {
    let r = reqwest::blocking::get(format!("http://{host}/v1/resolve?image={image}&arch=amd64"))
        .unwrap();
    assert_eq!(r.status(), 200, "{image}");
    r.json().unwrap()
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        common::fixtures();
        let p = Profile::busybox("v2", "busybox-v2").create();
        let (code, summary) = p.build(&[]);
        assert_eq!(code, Some(0), "{summary}");
        let ok = serve(&p, &p.config, &[], "ok");
        let pin = resolve(&ok.host, &format!("ocaml/opam:{TAG}"));
        // The same lockfile, under a catalogue that has moved on to 5.5.1.
        let text = std::fs::read_to_string(&p.config).unwrap();
        let refused_config = p.path().join("refused.toml");
        std::fs::write(
            &refused_config,
            format!("versions_dir = \"versions-refused\"\n{text}"),
        )
        .unwrap();
        let copy = Command::new("cp")
            .arg("-r")
            .arg(p.path().join("versions"))
            .arg(p.path().join("versions-refused"))
            .status()
            .unwrap();
        assert!(copy.success());
        let out = common::kiln()
            .arg("--config")
            .arg(&refused_config)
            .args(["bump", "5.5.1", "--status", "released"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let refused = serve(&p, &refused_config, &[], "refused");
        let down = serve(
            &p,
            &p.config,
            &["--set", "registry.url=http://127.0.0.1:9"],
            "down",
        );
        World {
            tag: TAG.into(),
            pin: pin["digest"].as_str().unwrap().into(),
            arch_digest: pin["arch_digest"].as_str().unwrap().into(),
            p,
            ok,
            refused,
            down,
        }
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[test]
fn docker_manifest_inspect_sees_the_pinned_index() {
    let w = world();
    let image = format!("{}/ocaml/opam:{}", w.ok.host, w.tag);
    let out = run(Command::new("docker").args(["manifest", "inspect", "--insecure", "-v", &image]));
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // An index: one entry per platform, each with the child's descriptor.
    let list = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
    let digests: Vec<&str> = list
        .iter()
        .filter_map(|m| m["Descriptor"]["digest"].as_str())
        .collect();
    assert_eq!(digests, [w.arch_digest.as_str()], "{v}");
}

#[test]
fn docker_pull_gets_the_pinned_digest() {
    let w = world();
    let image = format!("{}/ocaml/opam:{}", w.ok.host, w.tag);
    let out = run(Command::new("docker").args(["pull", &image]));
    let _ = run(Command::new("docker").args(["image", "rm", &image]));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("Digest: {}", w.pin)),
        "{}",
        text(&out)
    );
}

#[test]
fn skopeo_reads_the_index_byte_for_byte_and_copies_checked_blobs() {
    let w = world();
    let src = format!("docker://{}/ocaml/opam:{}", w.ok.host, w.tag);
    let raw = run(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--raw", &src]));
    assert!(raw.status.success(), "{}", text(&raw));
    assert_eq!(sha256(&raw.stdout), w.pin);
    let dir = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:x", dir.path().display());
    let copy =
        run(Command::new("skopeo").args(["copy", "--src-tls-verify=false", "--all", &src, &dest]));
    assert!(copy.status.success(), "{}", text(&copy));
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], w.pin.as_str(), "{index}");
}

#[test]
fn ctr_pulls_the_pinned_index() {
    let w = world();
    if !Path::new(CTR_SOCKET).exists() {
        common::skip(
            "ctr_pulls_the_pinned_index",
            &format!("no containerd at {CTR_SOCKET}"),
        );
        return;
    }
    let image = format!("{}/ocaml/opam:{}", w.ok.host, w.tag);
    let ns = format!("kiln-test-{}", std::process::id());
    let ctr = |args: &[&str]| {
        run(Command::new("ctr")
            .args(["--address", CTR_SOCKET, "--namespace", &ns])
            .args(args))
    };
    let pull = ctr(&["images", "pull", "--plain-http", &image]);
    let list = ctr(&["images", "ls"]);
    let _ = ctr(&["images", "rm", &image]);
    assert!(pull.status.success(), "{}", text(&pull));
    let line = String::from_utf8_lossy(&list.stdout)
        .lines()
        .find(|l| l.starts_with(&image))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains(&w.pin), "{}", text(&list));
}

#[test]
fn a_refused_version_is_manifest_unknown_with_the_missing_list() {
    let w = world();
    let r = reqwest::blocking::get(format!(
        "http://{}/v2/ocaml/opam/manifests/{}",
        w.refused.host, w.tag
    ))
    .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().unwrap();
    let e = &v["errors"][0];
    assert_eq!(e["code"], "MANIFEST_UNKNOWN", "{v}");
    assert_eq!(e["detail"]["ocaml"], "5.5.1", "{v}");
    let missing = e["detail"]["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{v}");
    assert_eq!(missing[0]["arch"], "amd64", "{v}");
    assert_eq!(missing[0]["reason"], "stale", "{v}");
    // And the clients say so.
    let image = format!("{}/ocaml/opam:{}", w.refused.host, w.tag);
    let docker = run(Command::new("docker").args(["manifest", "inspect", "--insecure", &image]));
    assert!(!docker.status.success());
    // Docker reports MANIFEST_UNKNOWN in its own words.
    assert!(
        text(&docker).contains("no such manifest"),
        "{}",
        text(&docker)
    );
    let skopeo = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{image}"),
    ]));
    assert!(!skopeo.status.success());
    assert!(
        text(&skopeo).contains("manifest unknown"),
        "{}",
        text(&skopeo)
    );
    // The published index is still there by digest.
    let by_digest = reqwest::blocking::get(format!(
        "http://{}/v2/ocaml/opam/manifests/{}",
        w.refused.host, w.pin
    ))
    .unwrap();
    assert_eq!(by_digest.status(), 200);
}

#[test]
fn an_unknown_tag_says_so_with_suggestions() {
    let w = world();
    let r = reqwest::blocking::get(format!(
        "http://{}/v2/ocaml/opam/manifests/busybox-v3-ocaml-5.5",
        w.ok.host
    ))
    .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN", "{v}");
    assert_eq!(v["errors"][0]["detail"]["error"], "unknown", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("busybox-v3"),
        "{v}"
    );
    assert_eq!(
        v["errors"][0]["detail"]["suggestions"][0],
        format!("opam:{}", w.tag),
        "{v}"
    );
}

#[test]
fn manifests_come_byte_for_byte_from_the_backing_registry() {
    let w = world();
    let c = reqwest::blocking::Client::new();
    for reference in [w.tag.as_str(), w.pin.as_str(), w.arch_digest.as_str()] {
        let ours = c
            .get(format!(
                "http://{}/v2/ocaml/opam/manifests/{reference}",
                w.ok.host
            ))
            .send()
            .unwrap();
        let want = if reference.starts_with("sha256:") {
            reference
        } else {
            w.pin.as_str()
        };
        assert_eq!(ours.headers()["docker-content-digest"], want);
        let ctype = ours.headers()["content-type"].to_str().unwrap().to_string();
        let bytes = ours.bytes().unwrap();
        let theirs = c
            .get(format!(
                "http://127.0.0.1:5000/v2/{}/opam/manifests/{want}",
                w.p.namespace
            ))
            .header("accept", kiln::registry::ACCEPT_ALL)
            .send()
            .unwrap();
        assert_eq!(theirs.headers()["content-type"].to_str().unwrap(), ctype);
        assert_eq!(bytes, theirs.bytes().unwrap(), "{reference}");
    }
}

/// One request and what `ROUTES` declares for its answer: the status is
/// declared, the declared headers are there, the body is of its kind.
fn declared(
    c: &reqwest::blocking::Client,
    host: &str,
    method: &str,
    template: &str,
    uri: &str,
    big: bool,
) -> u16 {
    let route = kiln::api::route(method, template).unwrap();
    let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    // A body over the limit is answered (413) before it is read: the server
    // may close while the client still sends, which the client can report
    // as an incomplete message. Ask again then.
    let send = || {
        let mut req = c.request(m.clone(), format!("http://{host}{uri}"));
        if big {
            req = req.body(vec![b'x'; 100_000]);
        }
        req.send()
    };
    let r = (0..5)
        .find_map(|_| send().ok())
        .unwrap_or_else(|| send().unwrap());
    let status = r.status().as_u16();
    let reply = route
        .reply(status)
        .unwrap_or_else(|| panic!("{method} {uri}: {status} is not declared for {template}"));
    for h in reply.headers {
        assert!(
            r.headers().contains_key(*h),
            "{method} {uri}: {status} without {h}"
        );
    }
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.bytes().unwrap();
    match reply.body {
        kiln::api::Body::Json(_) if method == "head" => {
            assert_eq!(ctype.as_deref(), Some("application/json"), "{method} {uri}");
        }
        kiln::api::Body::Json(schema) => {
            assert_eq!(ctype.as_deref(), Some("application/json"), "{method} {uri}");
            let v: Value = serde_json::from_slice(&body).unwrap();
            match schema {
                "OciError" => assert!(v["errors"][0]["code"].is_string(), "{v}"),
                "Error" => assert!(v["error"].is_string(), "{v}"),
                _ => {}
            }
        }
        kiln::api::Body::Manifest => {
            assert!(
                ctype.unwrap().starts_with("application/vnd."),
                "{method} {uri}"
            )
        }
        kiln::api::Body::Blob => {
            assert_eq!(
                ctype.as_deref(),
                Some("application/octet-stream"),
                "{method} {uri}"
            )
        }
        other => panic!("{method} {uri}: /v2/ does not answer {other:?}"),
    }
    if method == "head" {
        assert!(body.is_empty(), "{method} {uri}");
    }
    status
}

#[test]
fn every_v2_status_is_declared_and_reached() {
    let w = world();
    let c = reqwest::blocking::Client::new();
    let index: Value = serde_json::from_slice(
        &c.get(format!(
            "http://{}/v2/ocaml/opam/manifests/{}",
            w.ok.host, w.arch_digest
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap(),
    )
    .unwrap();
    let layer = index["layers"][0]["digest"].as_str().unwrap().to_string();
    let absent = format!("sha256:{}", "0".repeat(64));
    let m = "/v2/{name}/manifests/{reference}";
    let b = "/v2/{name}/blobs/{digest}";
    let t = "/v2/{name}/tags/list";
    let cases: Vec<(&str, &str, &Serve, String, bool)> = vec![
        ("get", "/v2/", &w.ok, "/v2/".into(), false),
        ("get", "/v2/", &w.ok, "/v2/".into(), true),
        ("get", t, &w.ok, "/v2/ocaml/opam/tags/list".into(), false),
        ("get", t, &w.ok, "/v2/nothing/tags/list".into(), false),
        ("get", t, &w.ok, "/v2/ocaml/opam/tags/list".into(), true),
    ];
    let mut seen: std::collections::BTreeMap<(&str, &str), std::collections::BTreeSet<u16>> =
        Default::default();
    let mut all = cases;
    for method in ["get", "head"] {
        all.extend([
            (
                method,
                m,
                &w.ok,
                format!("/v2/ocaml/opam/manifests/{}", w.tag),
                false,
            ),
            (
                method,
                m,
                &w.ok,
                format!("/v2/ocaml/opam/manifests/{absent}"),
                false,
            ),
            (
                method,
                m,
                &w.ok,
                format!("/v2/ocaml/opam/manifests/{}", w.tag),
                true,
            ),
            (
                method,
                m,
                &w.down,
                format!("/v2/ocaml/opam/manifests/{}", w.tag),
                false,
            ),
            (
                method,
                b,
                &w.ok,
                format!("/v2/ocaml/opam/blobs/{layer}"),
                false,
            ),
            (
                method,
                b,
                &w.ok,
                format!("/v2/ocaml/opam/blobs/{absent}"),
                false,
            ),
            (
                method,
                b,
                &w.ok,
                format!("/v2/ocaml/opam/blobs/{layer}"),
                true,
            ),
            (
                method,
                b,
                &w.down,
                format!("/v2/ocaml/opam/blobs/{layer}"),
                false,
            ),
        ]);
    }
    for (method, template, server, uri, big) in &all {
        let status = declared(&c, &server.host, method, template, uri, *big);
        seen.entry((method, template)).or_default().insert(status);
    }
    for r in kiln::api::ROUTES
        .iter()
        .filter(|r| r.path.starts_with("/v2/"))
    {
        for status in r.statuses() {
            assert!(
                seen.get(&(r.method, r.path))
                    .is_some_and(|s| s.contains(&status)),
                "{} {}: {status} never seen",
                r.method,
                r.path
            );
        }
    }
}

#[test]
fn the_tag_list_holds_what_resolves() {
    let w = world();
    let ok: Value = reqwest::blocking::get(format!("http://{}/v2/ocaml/opam/tags/list", w.ok.host))
        .unwrap()
        .json()
        .unwrap();
    assert!(
        ok["tags"].as_array().unwrap().iter().any(|t| t == TAG),
        "{ok}"
    );
    let refused =
        reqwest::blocking::get(format!("http://{}/v2/ocaml/opam/tags/list", w.refused.host))
            .unwrap()
            .json::<Value>()
            .unwrap();
    assert!(
        !refused["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t == TAG),
        "{refused}"
    );
}
