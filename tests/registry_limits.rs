//! Kiln against a registry that behaves as Docker Hub and GHCR do: nginx
//! (`common::nginx`) in front of a private registry refuses
//! `/v2/_catalog`, and, while throttled, answers every request 429 with
//! `Retry-After` and `ratelimit-*` headers.
//!
//! A lost lockfile is recovered, and a first build with none starts,
//! without ever asking for `_catalog`; a build that meets the limit waits
//! as long as the registry says and completes; a limit longer than
//! `registry.rate_limit_max_wait_secs` fails the tag as infrastructure
//! (retried, never final), naming the registry, when it resets and the
//! fix.

mod common;

use std::time::{Duration, Instant};

use common::nginx::Nginx;
use common::{Bounded, LIMIT, PrivateRegistry, Profile, Spawned, fixtures};

/// A private registry behind nginx, 429s asking for `retry_after` seconds.
fn throttling(dir: &std::path::Path, retry_after: u32) -> (PrivateRegistry, Nginx) {
    let registry = PrivateRegistry::start(&dir.join("registry"));
    let nginx = Nginx::start(&dir.join("nginx"), registry.port, retry_after);
    (registry, nginx)
}

fn key(p: &Profile, os: &str) -> String {
    format!("{}/opam:{os}-ocaml-5.5", p.namespace)
}

fn catalog_requests(n: &Nginx) -> Vec<String> {
    n.log()
        .into_iter()
        .filter(|l| l.uri.contains("_catalog"))
        .map(|l| format!("{} {} {}", l.method, l.uri, l.status))
        .collect()
}

#[test]
fn a_lost_lockfile_is_recovered_without_the_catalog() {
    fixtures();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, nginx) = throttling(dir.path(), 1);
    let p = Profile::busybox("nocatalog", "busybox-nocatalog")
        .registry_url(&nginx.url())
        .own_state()
        .create();
    let (code, summary) = p.build(&[]);
    assert_eq!(code, Some(0), "{summary:#}");
    let k = key(&p, "busybox-nocatalog");
    let published = p.entry(&k);
    // `kiln lockfile recover` on a registry that refuses _catalog.
    std::fs::remove_file(p.lockfile_path()).unwrap();
    let out = p.kiln(&["lockfile", "recover", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recovered = p.entry(&k);
    assert_eq!(recovered["digest"], published["digest"]);
    assert_eq!(recovered["immutable_tag"], published["immutable_tag"]);
    // A first build with no lockfile recovers first, and builds nothing.
    std::fs::remove_file(p.lockfile_path()).unwrap();
    let (code, summary) = p.build(&[]);
    assert_eq!(code, Some(0), "{summary:#}");
    assert_eq!(summary["unchanged"], 1, "{summary:#}");
    assert_eq!(p.entry(&k)["digest"], published["digest"]);
    assert_eq!(catalog_requests(&nginx), Vec::<String>::new());
    // The refusal is real: nginx does answer _catalog with an error.
    let refused = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("{}/v2/_catalog", nginx.url()))
        .output_within(LIMIT)
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "401");
}

#[test]
fn a_build_waits_out_the_registrys_rate_limit_and_completes() {
    fixtures();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, nginx) = throttling(dir.path(), 2);
    let p = Profile::busybox("ratelimit", "busybox-ratelimit")
        .registry_url(&nginx.url())
        .own_state()
        .create();
    nginx.throttle(true);
    let started = Instant::now();
    let child = Spawned::piped("kiln build", p.command().args(["build", "--json"]));
    // Throttled for about 7 s: several 429s, each waited out.
    common::wait_until("three 429 answers", 60, || {
        nginx.log().iter().filter(|l| l.status == 429).count() >= 3
    });
    std::thread::sleep(Duration::from_secs(2));
    nginx.throttle(false);
    let out = child.output_within(LIMIT);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{summary:#}");
    assert_eq!(summary["built"], 1, "{summary:#}");
    assert_eq!(
        summary["failed"], 0,
        "nothing classed as a failure: {summary:#}"
    );
    assert!(started.elapsed() > Duration::from_secs(6));
    // The waits were the registry's Retry-After (2 s), not a quick retry:
    // one process-wide hold, so no burst of 429s.
    let limited: Vec<f64> = nginx
        .log()
        .iter()
        .filter(|l| l.status == 429)
        .map(|l| l.at)
        .collect();
    for w in limited.windows(2) {
        assert!(
            w[1] - w[0] > 1.8,
            "429s {:.2} s apart: {limited:?}",
            w[1] - w[0]
        );
    }
    assert!(p.entry(&key(&p, "busybox-ratelimit"))["digest"].is_string());
}

#[test]
fn a_limit_beyond_the_ceiling_fails_the_tag_as_infrastructure_naming_the_registry() {
    fixtures();
    let dir = tempfile::tempdir().unwrap();
    let (_registry, nginx) = throttling(dir.path(), 3600);
    let p = Profile::busybox("ceiling", "busybox-ceiling")
        .registry_url(&nginx.url())
        .own_state()
        .create();
    // Published once, so the next run has its lockfile and reaches the tag.
    let (code, summary) = p.build(&[]);
    assert_eq!(code, Some(0), "{summary:#}");
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        format!("{t}RUN echo rebuilt > /rebuilt\n")
    });
    nginx.throttle(true);
    let started = Instant::now();
    let out = p
        .command()
        .args([
            "--set",
            "registry.rate_limit_max_wait_secs=2",
            "build",
            "--json",
        ])
        .output_within(LIMIT)
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "it did not wait an hour"
    );
    assert_ne!(out.status.code(), Some(0));
    // What the run printed names the registry, the limit and the fix: the
    // tag's failure in the summary, or, when the run's last step (the
    // reconciliation of its tags) met the same limit, the run's error.
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        nginx.host().as_str(),
        "rate limited",
        "rate_limit_max_wait_secs",
    ] {
        assert!(printed.contains(needle), "{needle:?} not in {printed}");
    }
    // The tag's failure, as the state store keeps it for the API, the
    // daemon and `kiln status`: infrastructure (retried), with the limits
    // the registry announced.
    let db = rusqlite::Connection::open(p.path().join("state/kiln.db")).unwrap();
    let (state, kind, error): (String, Option<String>, Option<String>) = db
        .query_row(
            "SELECT state, kind, error FROM target_state WHERE tag = ?1",
            ["busybox-ceiling-ocaml-5.5"],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let error = error.unwrap_or_default();
    assert_eq!(
        (state.as_str(), kind.as_deref()),
        ("failed", Some("infra")),
        "{error}"
    );
    for needle in [
        nginx.host().as_str(),
        "rate limited",
        "limit 100 per 21600s",
    ] {
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
}
