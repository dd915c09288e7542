//! The digest API over real HTTP: every route, refusals, 304, reloads, and
//! every answer checked against the statuses `kiln::api::ROUTES` declares.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln::api::gate::{Jobs, Requirement};
use kiln::api::snapshot::Store;
use kiln::api::{AppState, Metrics};
use kiln::catalogue::Arch;
use kiln::model::requirement::job_key;
use kiln::model::{ArchState, FailureKind, TagId};
use kiln::publish::lockfile::{ArchEntry, ArtifactKind, Entry, Lockfile};

fn digest(n: u8) -> String {
    format!("sha256:{}", hex::encode([n; 32]))
}

fn entry(os: &str, ocaml: &str, tag: &str, arches: &[&str], d: u8) -> Entry {
    Entry {
        kind: ArtifactKind::Image,
        platform: "linux".into(),
        os: os.into(),
        ocaml: Some(ocaml.parse().unwrap()),
        variant: None,
        repository: "kiln/opam".into(),
        tag: tag.into(),
        immutable_tag: format!("{tag}-{ocaml}-b1"),
        aliases: vec![format!(
            "{}-ocaml-{}",
            os.split('-').next().unwrap(),
            &ocaml[..3]
        )],
        digest: digest(d),
        arches: arches
            .iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    a.parse::<Arch>().unwrap(),
                    ArchEntry {
                        digest: digest(d + 100 + i as u8),
                        build_key: "k".into(),
                        size: None,
                    },
                )
            })
            .collect(),
        build_key: format!("key{d}"),
        inputs: BTreeMap::new(),
        published_at: chrono::Utc::now(),
        verified_at: None,
        history: vec![],
        adopted: None,
        repairs: vec![],
    }
}

fn req(os: &str, ocaml: &str, tag: &str, arches: &[&str]) -> Requirement {
    Requirement {
        platform: "linux".into(),
        os: os.into(),
        ocaml: ocaml.parse().unwrap(),
        variant: None,
        repository: "kiln/opam".into(),
        tag: tag.into(),
        aliases: vec![format!(
            "{}-ocaml-{}",
            os.split('-').next().unwrap(),
            &ocaml[..3]
        )],
        arches: arches.iter().map(|s| s.parse().unwrap()).collect(),
        no_builder: vec![],
    }
}

struct Server {
    base: String,
    lockfile: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(lock: &Lockfile, reqs: Vec<Requirement>, jobs: Jobs, token: &str) -> Server {
    start_with(lock, reqs, jobs, token, false).await
}

/// [`start`], with a job queue (`queue`: the state database at
/// `<dir>/kiln.db`, as `kiln daemon` gives its API) or without.
async fn start_with(
    lock: &Lockfile,
    reqs: Vec<Requirement>,
    jobs: Jobs,
    token: &str,
    queue: bool,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let lockfile = dir.path().join("manifests/lockfile.json");
    lock.save(&lockfile).unwrap();
    let store = Store::open(
        lockfile.clone(),
        "127.0.0.1:5000".into(),
        Arc::new(move || Ok((reqs.clone(), jobs.clone()))),
    )
    .unwrap();
    let log_dir = dir.path().join("log");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(log_dir.join("x.log"), "step 1/3\n").unwrap();
    let state = Arc::new(AppState {
        store,
        log_dir: Some(log_dir),
        rebuild: None,
        queue_db: queue.then(|| dir.path().join("kiln.db")),
        token: token.into(),
        metrics: Metrics::default(),
        distribution: None,
        workers: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(kiln::api::serve_on(state, listener, async {
        let _ = rx.await;
    }));
    Server {
        base,
        lockfile,
        _dir: dir,
        stop: Some(tx),
    }
}

fn fixture() -> (Lockfile, Vec<Requirement>, Jobs) {
    let mut lock = Lockfile::default();
    lock.publish(
        entry(
            "debian-13",
            "5.5.0",
            "debian-13-ocaml-5.5",
            &["amd64", "arm64"],
            1,
        ),
        "new",
    );
    lock.publish(
        entry(
            "alpine-3.22",
            "5.5.0",
            "alpine-3.22-ocaml-5.5",
            &["amd64"],
            2,
        ),
        "new",
    );
    lock.publish(
        entry("debian-13", "4.14.3", "debian-13-ocaml-4.14", &["amd64"], 3),
        "new",
    );
    let reqs = vec![
        req(
            "debian-13",
            "5.5.0",
            "debian-13-ocaml-5.5",
            &["amd64", "arm64"],
        ),
        req(
            "alpine-3.22",
            "5.5.0",
            "alpine-3.22-ocaml-5.5",
            &["amd64", "arm64"],
        ),
        req("debian-13", "4.14.4", "debian-13-ocaml-4.14", &["amd64"]),
    ];
    let mut jobs = Jobs::new();
    jobs.insert(
        job_key(
            &TagId::new("kiln/opam", "alpine-3.22-ocaml-5.5"),
            Arch::Arm64,
        ),
        ArchState::Failed {
            kind: FailureKind::Recipe,
            error: "smoke test: ocaml -version printed 5.4.1".into(),
            log: None,
        },
    );
    (lock, reqs, jobs)
}

#[tokio::test]
async fn resolve_pins_refuses_and_suggests() {
    let (lock, reqs, jobs) = fixture();
    let s = start(&lock, reqs, jobs, "").await;
    let c = reqwest::Client::new();
    let get = |q: &str| c.get(format!("{}/v1/resolve?{q}", s.base)).send();

    let r = get("image=ocaml/opam:debian-13-ocaml-5.5").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        v["reference"],
        format!("127.0.0.1:5000/kiln/opam:debian-13-ocaml-5.5@{}", digest(1))
    );
    assert_eq!(v["arches"].as_object().unwrap().len(), 2);
    assert_eq!(v["ocaml"], "5.5.0");

    // Alias and per-arch digest.
    let v: serde_json::Value = get("image=ocaml/opam:debian-ocaml-5.5&arch=arm64")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["arch_digest"], digest(102));

    // Incomplete set: 409 with the missing list and why.
    let r = get("image=ocaml/opam:alpine-3.22-ocaml-5.5").await.unwrap();
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["missing"][0]["arch"], "arm64");
    assert_eq!(v["missing"][0]["reason"], "failed");
    assert!(
        v["missing"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("5.4.1")
    );

    // The tag holds 4.14.3 but the catalogue wants 4.14.4: refused as stale.
    let r = get("image=ocaml/opam:debian-13-ocaml-4.14").await.unwrap();
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["missing"][0]["reason"], "stale");

    // Unknown: 404 with the closest names.
    let r = get("image=ocaml/opam:debian-14-ocaml-5.5").await.unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["suggestions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "opam:debian-13-ocaml-5.5"),
        "{v}"
    );

    // Unknown arch of a known image.
    assert_eq!(
        get("image=ocaml/opam:debian-13-ocaml-5.5&arch=s390x")
            .await
            .unwrap()
            .status(),
        404
    );

    // Malformed: 4xx JSON, never 5xx.
    for q in [
        "",
        "image=",
        "image=nocolon",
        "image=a:b@sha256:00",
        "arch=amd64",
        "image=%ff%fe:x",
    ] {
        let r = get(q).await.unwrap();
        assert!(r.status().is_client_error(), "{q}: {}", r.status());
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].is_string(), "{q}: {v}");
    }
    // Over the document's limits (the `maxLength` of `image` and `arch`,
    // a query over 2048 bytes): malformed, 400, as the document declares.
    // At the limit, a well-formed name is looked up (unknown: 404).
    let image_at = |n: usize| format!("ocaml/{}:x", "a".repeat(n - "ocaml/:x".len()));
    for (q, status) in [
        (format!("image={}", "a".repeat(5000)), 400),
        (format!("image={}", image_at(513)), 400),
        (format!("image={}", image_at(512)), 404),
        (
            format!(
                "image=ocaml/opam:debian-13-ocaml-5.5&arch={}",
                "a".repeat(33)
            ),
            400,
        ),
        (
            format!(
                "image=ocaml/opam:debian-13-ocaml-5.5&arch={}",
                "a".repeat(32)
            ),
            404,
        ),
    ] {
        assert_eq!(get(&q).await.unwrap().status(), status, "{}", &q[..40]);
    }
}

#[tokio::test]
async fn versions_platforms_lockfile_and_pages() {
    let (lock, reqs, jobs) = fixture();
    let s = start(&lock, reqs, jobs, "").await;
    let c = reqwest::Client::new();

    let v: serde_json::Value = c
        .get(format!("{}/v1/versions", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let versions: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["5.5.0", "4.14.4"]);
    assert_eq!(v[0]["available"], false);

    let r = c
        .get(format!("{}/v1/versions/5.5.0", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let cells = v["cells"].as_array().unwrap();
    assert!(
        cells
            .iter()
            .any(|c| c["os"] == "debian-13" && c["available"] == true)
    );
    assert!(
        cells
            .iter()
            .any(|c| c["os"] == "alpine-3.22" && c["available"] == false)
    );
    assert_eq!(
        c.get(format!("{}/v1/versions/9.9.9", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let v: serde_json::Value = c
        .get(format!("{}/v1/platforms", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["linux"].as_array().unwrap().len(), 2);

    // Lockfile: ETag, 304, gzip.
    let r = c
        .get(format!("{}/v1/lockfile", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let body: Lockfile = r.json().await.unwrap();
    assert_eq!(body, lock);
    let r = c
        .get(format!("{}/v1/lockfile", s.base))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = c
        .get(format!("{}/v1/lockfile", s.base))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let bytes = r.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
        .unwrap();
    assert_eq!(serde_json::from_str::<Lockfile>(&text).unwrap(), lock);

    let html = c
        .get(format!("{}/", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("<table>")
            && html.contains("debian-13")
            && html.contains("class=\"available\"")
    );
    assert!(html.contains("smoke test: ocaml -version printed 5.4.1"));

    let m = c
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("kiln_lockfile_entries 3"), "{m}");
    assert!(m.contains("kiln_available_tags 1"), "{m}");
    assert!(
        m.contains("kiln_api_requests_total{route=\"lockfile\"} 3"),
        "{m}"
    );

    let spec: serde_json::Value = c
        .get(format!("{}/v1/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for r in kiln::api::ROUTES {
        assert!(
            spec["paths"][r.path][r.method].is_object(),
            "{} {}",
            r.method,
            r.path
        );
    }
    assert_eq!(
        c.get(format!("{}/healthz", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/readyz", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c.get(format!("{}/nope", s.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "not-found"
    );
    let r = c
        .delete(format!("{}/v1/lockfile", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "method-not-allowed"
    );
}

/// The status page's row of `version`: from its `<tr>` to the next.
fn row<'a>(html: &'a str, version: &str) -> &'a str {
    let start = html
        .find(&format!("<tr><th><a href=\"/v1/versions/{version}\">"))
        .unwrap_or_else(|| panic!("no row for {version}: {html}"));
    let rest = &html[start..];
    &rest[..rest[4..].find("<tr>").map(|i| i + 4).unwrap_or(rest.len())]
}

/// Each version's row says what the gate says of the version as a whole:
/// available, or refused with the tags missing and why.
#[tokio::test]
async fn status_page_shows_the_gates_verdict_per_version() {
    let (lock, mut reqs, jobs) = fixture();
    // 4.14.3 is what the lockfile holds: that version is complete.
    reqs[2] = req("debian-13", "4.14.3", "debian-13-ocaml-4.14", &["amd64"]);
    let s = start(&lock, reqs, jobs, "").await;
    let html = reqwest::get(format!("{}/", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let complete = row(&html, "4.14.3");
    assert!(
        complete.contains("<td class=\"available verdict\">available</td>"),
        "{complete}"
    );
    let refused = row(&html, "5.5.0");
    assert!(
        refused.contains("<td class=\"missing verdict\">")
            && refused.contains("refused: 1 of 2 required tags missing")
            && refused.contains("<li>alpine-3.22-ocaml-5.5 (arm64 failed)</li>")
            && !refused.contains("<li>debian-13-ocaml-5.5"),
        "{refused}"
    );
    // This server collects no inventory: the page and the route say so.
    assert!(html.contains("This server collects no worker inventory."));
    let r = reqwest::get(format!("{}/v1/workers", s.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "no-inventory"
    );
}

#[tokio::test]
async fn hot_reload_and_token() {
    let (lock, reqs, jobs) = fixture();
    let s = start(&lock, reqs, jobs, "s3cret").await;
    let c = reqwest::Client::new();
    let resolve = |img: &'static str| c.get(format!("{}/v1/resolve?image={img}", s.base)).send();
    assert_eq!(
        resolve("opam:alpine-3.22-ocaml-5.5")
            .await
            .unwrap()
            .status(),
        409
    );

    // The missing arch gets published: picked up without restart.
    let mut newer = lock.clone();
    newer.publish(
        entry(
            "alpine-3.22",
            "5.5.0",
            "alpine-3.22-ocaml-5.5",
            &["amd64", "arm64"],
            7,
        ),
        "arm64 built",
    );
    newer.save(&s.lockfile).unwrap();
    let mut ok = false;
    for _ in 0..40 {
        if resolve("opam:alpine-3.22-ocaml-5.5")
            .await
            .unwrap()
            .status()
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "new lockfile not picked up");

    // A broken lockfile on disk: previous snapshot keeps serving.
    std::fs::write(&s.lockfile, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        resolve("opam:alpine-3.22-ocaml-5.5")
            .await
            .unwrap()
            .status(),
        200
    );
    let m = c
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!m.contains("kiln_reload_errors_total 0"), "{m}");

    // Writes need the token.
    let post = |t: Option<&str>| {
        let mut r = c.post(format!("{}/v1/reload", s.base));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // No bearer token: 401 with the challenge; a wrong one: 403.
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(post(Some("s3cre")).await.unwrap().status(), 403);
    assert_eq!(post(Some("s3cret")).await.unwrap().status(), 422);
    newer.save(&s.lockfile).unwrap();
    assert_eq!(post(Some("s3cret")).await.unwrap().status(), 200);
    // Oversized bodies are refused with a 4xx.
    let r = c
        .post(format!("{}/v1/reload", s.base))
        .bearer_auth("s3cret")
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

/// One request and what `ROUTES` says about its answer: the status is
/// declared for the route, the body is of the declared kind, the declared
/// headers are there.
async fn declared(
    c: &reqwest::Client,
    s: &Server,
    (method, template): (&str, &str),
    uri: &str,
    build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> u16 {
    let route = kiln::api::route(method, template).unwrap_or_else(|| panic!("{template}"));
    let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let r = build(c.request(m, format!("{}{uri}", s.base)))
        .send()
        .await
        .unwrap();
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
    let body = r.bytes().await.unwrap();
    match reply.body {
        kiln::api::Body::Empty => assert!(body.is_empty(), "{method} {uri}"),
        kiln::api::Body::Json(_) => {
            assert_eq!(ctype.as_deref(), Some("application/json"), "{method} {uri}");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if status >= 400 {
                assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
            }
        }
        kiln::api::Body::Text => {
            assert!(ctype.unwrap().starts_with("text/plain"), "{method} {uri}")
        }
        kiln::api::Body::Html => {
            assert!(ctype.unwrap().starts_with("text/html"), "{method} {uri}")
        }
        kiln::api::Body::Manifest | kiln::api::Body::Blob => {
            unreachable!("{method} {uri}: /v2/ is checked by tests/distribution.rs")
        }
    }
    status
}

#[tokio::test]
async fn every_answer_is_declared() {
    let (lock, reqs, jobs) = fixture();
    let s = start(&lock, reqs, jobs, "s3cret").await;
    let c = reqwest::Client::new();
    let same = |b: reqwest::RequestBuilder| b;
    let big = |b: reqwest::RequestBuilder| b.body(vec![b'x'; 100_000]);
    let bearer = |t: &'static str| move |b: reqwest::RequestBuilder| b.bearer_auth(t);

    let mut seen: std::collections::BTreeMap<(&str, &str), std::collections::BTreeSet<u16>> =
        Default::default();
    let cases: Vec<((&str, &str), String)> = vec![
        (("get", "/"), "/".into()),
        (("get", "/healthz"), "/healthz".into()),
        (("get", "/readyz"), "/readyz".into()),
        (("get", "/metrics"), "/metrics".into()),
        (("get", "/v1/openapi.json"), "/v1/openapi.json".into()),
        (("get", "/v1/versions"), "/v1/versions".into()),
        (
            ("get", "/v1/versions/{version}"),
            "/v1/versions/5.5.0".into(),
        ),
        (
            ("get", "/v1/versions/{version}"),
            "/v1/versions/9.9.9".into(),
        ),
        (("get", "/v1/versions/{version}"), "/v1/versions/%FF".into()),
        (("get", "/v1/platforms"), "/v1/platforms".into()),
        (("get", "/v1/workers"), "/v1/workers".into()),
        (("get", "/v1/lockfile"), "/v1/lockfile".into()),
        (("get", "/v1/logs/{name}"), "/v1/logs/x.log".into()),
        (("get", "/v1/logs/{name}"), "/v1/logs/0".into()),
        (("get", "/v1/logs/{name}"), "/v1/logs/nope.log".into()),
        (("get", "/v1/logs/{name}"), "/v1/logs/%FF.log".into()),
        (
            ("get", "/v1/resolve"),
            "/v1/resolve?image=ocaml/opam:debian-13-ocaml-5.5".into(),
        ),
        (
            ("get", "/v1/resolve"),
            "/v1/resolve?image=opam:alpine-3.22-ocaml-5.5".into(),
        ),
        (
            ("get", "/v1/resolve"),
            "/v1/resolve?image=opam:debian-14-ocaml-5.5".into(),
        ),
        (("get", "/v1/resolve"), "/v1/resolve?image=".into()),
        (("get", "/v1/resolve"), "/v1/resolve".into()),
        (
            ("get", "/v1/resolve"),
            format!("/v1/resolve?image={}", "a".repeat(5000)),
        ),
        (("post", "/v1/rebuild"), "/v1/rebuild".into()),
        (("post", "/v1/reload"), "/v1/reload".into()),
    ];
    for (route, uri) in &cases {
        let st = declared(&c, &s, *route, uri, same).await;
        seen.entry(*route).or_default().insert(st);
        let st = declared(&c, &s, *route, uri, big).await;
        assert_eq!(st, 413, "{uri}");
        seen.entry(*route).or_default().insert(st);
    }
    let etag = c
        .get(format!("{}/v1/lockfile", s.base))
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    let st = declared(&c, &s, ("get", "/v1/lockfile"), "/v1/lockfile", |b| {
        b.header("If-None-Match", etag)
    })
    .await;
    seen.entry(("get", "/v1/lockfile")).or_default().insert(st);
    for write in ["/v1/reload", "/v1/rebuild"] {
        for auth in ["wrong", "s3cret"] {
            let st = declared(&c, &s, ("post", write), write, bearer(auth)).await;
            seen.entry(("post", write)).or_default().insert(st);
        }
        let st = declared(&c, &s, ("post", write), write, |b| {
            b.header("Authorization", "Basic czNjcmV0")
        })
        .await;
        assert_eq!(st, 401);
    }
    // Logs are the token's: each case again with it, and with a wrong one.
    let logs = [
        "/v1/logs/x.log",
        "/v1/logs/0",
        "/v1/logs/nope.log",
        "/v1/logs/%FF.log",
    ];
    for uri in logs {
        for auth in ["wrong", "s3cret"] {
            let st = declared(&c, &s, ("get", "/v1/logs/{name}"), uri, bearer(auth)).await;
            seen.entry(("get", "/v1/logs/{name}"))
                .or_default()
                .insert(st);
        }
    }
    // Job control: this server has no queue (503); one with the daemon's
    // queue answers from it (the job routes' every other status).
    let (lock2, reqs2, jobs2) = fixture();
    let q = start_with(&lock2, reqs2, jobs2, "s3cret", true).await;
    let queue = kiln::state::queue::Queue::open(&q._dir.path().join("kiln.db")).unwrap();
    queue
        .enqueue(
            1,
            "kiln/opam",
            "debian-13-ocaml-5.5",
            "linux",
            kiln::catalogue::BuilderKind::Docker,
        )
        .unwrap();
    let json = |body: &'static str| {
        move |b: reqwest::RequestBuilder| {
            b.bearer_auth("s3cret")
                .header("content-type", "application/json")
                .body(body)
        }
    };
    for (server, route, uri) in [
        (&s, ("get", "/v1/jobs"), "/v1/jobs"),
        (&q, ("get", "/v1/jobs"), "/v1/jobs"),
        (&s, ("post", "/v1/jobs"), "/v1/jobs"),
        (&s, ("post", "/v1/jobs/{id}/cancel"), "/v1/jobs/1/cancel"),
        (&s, ("post", "/v1/jobs/{id}/retry"), "/v1/jobs/1/retry"),
    ] {
        for st in [
            declared(&c, server, route, uri, same).await,
            declared(&c, server, route, uri, big).await,
            declared(&c, server, route, uri, bearer("wrong")).await,
            declared(&c, server, route, uri, bearer("s3cret")).await,
        ] {
            seen.entry(route).or_default().insert(st);
        }
    }
    // POST /v1/jobs: a bad body 400; a good one 503 without a daemon.
    for (body, want) in [("{\"tag\": 1}", 400), ("{\"tag\": \"opam:x\"}", 503)] {
        let st = declared(&c, &q, ("post", "/v1/jobs"), "/v1/jobs", json(body)).await;
        assert_eq!(st, want, "{body}");
        seen.entry(("post", "/v1/jobs")).or_default().insert(st);
    }
    // Cancel and retry on the queue: the job id not a number (400), no
    // such job (404), a queued job cancelled (200), then cancelled again
    // (409), retried (202), retried again while queued (409).
    for (route, uri, want) in [
        (("post", "/v1/jobs/{id}/cancel"), "/v1/jobs/x/cancel", 400),
        (("post", "/v1/jobs/{id}/retry"), "/v1/jobs/x/retry", 400),
        (("post", "/v1/jobs/{id}/cancel"), "/v1/jobs/9/cancel", 404),
        (("post", "/v1/jobs/{id}/retry"), "/v1/jobs/9/retry", 404),
        (("post", "/v1/jobs/{id}/cancel"), "/v1/jobs/1/cancel", 200),
        (("post", "/v1/jobs/{id}/cancel"), "/v1/jobs/1/cancel", 409),
        (("post", "/v1/jobs/{id}/retry"), "/v1/jobs/1/retry", 202),
        (("post", "/v1/jobs/{id}/retry"), "/v1/jobs/1/retry", 409),
    ] {
        let st = declared(&c, &q, route, uri, bearer("s3cret")).await;
        assert_eq!(st, want, "{uri}");
        seen.entry(route).or_default().insert(st);
    }
    assert_eq!(queue.get(1).unwrap().unwrap().state, "queued");

    std::fs::write(&s.lockfile, "{ not json").unwrap();
    let st = declared(
        &c,
        &s,
        ("post", "/v1/reload"),
        "/v1/reload",
        bearer("s3cret"),
    )
    .await;
    seen.entry(("post", "/v1/reload")).or_default().insert(st);

    // Every declared status that a test can reach was reached. (Reload's
    // 503 needs its blocking task to die, and rebuild's 202 a daemon:
    // tests/daemon.rs covers that; the workers' 200 needs builder hosts:
    // tests/workers.rs asks `kiln serve` with real ones.)
    let unreachable = [
        ("post", "/v1/reload", 503),
        ("post", "/v1/rebuild", 202),
        ("get", "/v1/workers", 200),
        // POST /v1/jobs's 202 and 404 need the daemon's scheduler:
        // tests/daemon.rs `the_api_queues_one_tag_forced`.
        ("post", "/v1/jobs", 202),
        ("post", "/v1/jobs", 404),
    ];
    // /v2/ needs published images in a real registry: tests/distribution.rs
    // reaches every status it declares.
    for r in kiln::api::ROUTES
        .iter()
        .filter(|r| !r.path.starts_with("/v2/"))
    {
        for status in r.statuses() {
            if unreachable.contains(&(r.method, r.path, status)) {
                continue;
            }
            assert!(
                seen.get(&(r.method, r.path))
                    .is_some_and(|s| s.contains(&status)),
                "{} {}: {status} never seen",
                r.method,
                r.path
            );
        }
    }

    // With writes disabled: still 401 without a token, 403 with any.
    let (lock, reqs, jobs) = fixture();
    let off = start(&lock, reqs, jobs, "").await;
    for write in ["/v1/reload", "/v1/rebuild"] {
        assert_eq!(declared(&c, &off, ("post", write), write, same).await, 401);
        assert_eq!(
            declared(&c, &off, ("post", write), write, bearer("s3cret")).await,
            403
        );
    }
}
