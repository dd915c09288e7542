//! The daemon meets a registry's rate limit longer than Kiln waits in a
//! request (nginx answering 429 with `Retry-After: 20`, Kiln's ceiling
//! 2 s): the job is parked as infrastructure until the limit resets —
//! queued for then, the attempt not counted, so even `max_attempts = 1`
//! does not make it final — and published once the registry answers.

mod common;

use chrono::{DateTime, Utc};
use common::nginx::Nginx;
use common::{Bounded, LIMIT, PrivateRegistry, Profile, Spawned, fixtures, free_port, wait_until};

fn jobs(p: &Profile) -> Vec<serde_json::Value> {
    let out = p
        .command()
        .args(["daemon", "jobs", "--json", "--limit", "50"])
        .output_within(LIMIT)
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn post_rebuild(port: u16) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/rebuild"))
            .bearer_auth("daemon-token")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 202);
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn a_job_meeting_the_registrys_limit_is_parked_until_it_resets_then_published() {
    fixtures();
    let dir = tempfile::tempdir().unwrap();
    let registry = PrivateRegistry::start(&dir.path().join("registry"));
    let nginx = Nginx::start(&dir.path().join("nginx"), registry.port, 20);
    let port = free_port();
    let p = Profile::busybox("parked", "busybox-parked")
        .own_state()
        .registry_url(&nginx.url())
        .toml(&format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"daemon-token\"\n[daemon]\n\
             schedule = \"0 0 3 1 1 *\"\nmax_attempts = 1\nretry_base_secs = 1\npoll_secs = 0\n"
        ))
        .create();
    nginx.throttle(true);
    let _daemon = Spawned::piped(
        "kiln daemon",
        p.command()
            .env("KILN_REGISTRY_RATE_LIMIT_MAX_WAIT_SECS", "2")
            .arg("daemon"),
    );
    wait_until("the daemon's API", 60, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    post_rebuild(port);
    // Parked: queued again, failure infra, attempt not counted, due at the
    // reset the registry announced (about 20 s away), not after the 1 s
    // backoff; with max_attempts = 1 a plain infra failure would be final.
    wait_until("the job parked", 120, || {
        jobs(&p)
            .iter()
            .any(|j| j["state"] == "queued" && j["failure"] == "infra")
    });
    let parked_at = Utc::now();
    let job = jobs(&p)[0].clone();
    assert_eq!(job["attempts"], 0, "{job:#}");
    let due = time(&job["next_attempt_at"]);
    assert!(due - parked_at > chrono::Duration::seconds(10), "{job:#}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("rate limited") && error.contains(&nginx.host()),
        "{error}"
    );
    // The registry answers again; the job runs at the reset and publishes.
    nginx.throttle(false);
    wait_until("the job published", 180, || {
        jobs(&p).iter().any(|j| j["state"] == "succeeded")
    });
    let done = jobs(&p)[0].clone();
    assert_eq!(done["outcome"], "built", "{done:#}");
    assert!(
        time(&done["started_at"]) >= due,
        "not retried before the reset: {done:#}"
    );
    let key = format!("{}/opam:busybox-parked-ocaml-5.5", p.namespace);
    assert!(p.entry(&key)["digest"].is_string());
}
