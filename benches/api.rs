//! Digest API benchmark: `wrk` against `/v1/resolve`, against `/v2/`'s
//! manifest GET (answered from memory, through the gate) and against the
//! registry's own manifest GET for the same image, in the same run.
//! Prints the rates, the ratios, p99 latencies, and the server's memory
//! with a 10,000-tag lockfile. Every entry names the one manifest pushed
//! to the registry, so `/v2/` can serve any of them. Needs `wrk` and the services
//! (`bash scripts/services.sh up`). Run: `cargo bench --bench api`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use kiln::api::gate::Requirement;
use kiln::api::snapshot::Store;
use kiln::api::{AppState, Backing, Metrics};
use kiln::catalogue::Arch;
use kiln::publish::lockfile::{ArchEntry, ArtifactKind, Entry, Lockfile};
use kiln::registry::Registry;
use sha2::{Digest, Sha256};

const TAGS: usize = 10_000;
const REGISTRY: &str = "127.0.0.1:5000";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn digest_of(s: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(s.as_bytes())))
}

fn big_lockfile(manifest: &str) -> (Lockfile, Vec<Requirement>) {
    let mut lock = Lockfile::default();
    let mut reqs = Vec::new();
    for i in 0..TAGS {
        let os = format!("distro{}-{}", i / 100, i % 100);
        let tag = format!("{os}-ocaml-5.5");
        let arches: BTreeMap<Arch, ArchEntry> =
            [Arch::Amd64, Arch::Arm64, Arch::Ppc64le, Arch::S390x]
                .into_iter()
                .map(|a| {
                    (
                        a,
                        ArchEntry {
                            digest: manifest.to_string(),
                            build_key: digest_of(a.as_str()),
                            size: Some(1 << 20),
                        },
                    )
                })
                .collect();
        lock.publish(
            Entry {
                kind: ArtifactKind::Image,
                platform: "linux".into(),
                os: os.clone(),
                ocaml: Some("5.5.0".parse().unwrap()),
                variant: None,
                repository: "kiln-bench/opam".into(),
                tag: tag.clone(),
                immutable_tag: format!("{tag}.0-b{i}"),
                aliases: vec![],
                digest: manifest.to_string(),
                arches,
                build_key: digest_of(&format!("key{i}")),
                inputs: BTreeMap::new(),
                published_at: chrono::Utc::now(),
                verified_at: None,
                history: vec![],
                adopted: None,
                repairs: vec![],
            },
            "bench",
        );
        reqs.push(Requirement {
            platform: "linux".into(),
            os,
            ocaml: "5.5.0".parse().unwrap(),
            variant: None,
            repository: "kiln-bench/opam".into(),
            tag,
            aliases: vec![],
            arches: vec![Arch::Amd64, Arch::Arm64, Arch::Ppc64le, Arch::S390x],
            no_builder: vec![],
        });
    }
    (lock, reqs)
}

/// Push a one-config image; its manifest digest.
async fn push_image(repo: &str, tag: &str) -> Result<String, String> {
    let c = reqwest::Client::new();
    let blob = |data: Vec<u8>| {
        let c = c.clone();
        async move {
            let d = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
            let r = c
                .post(format!("http://{REGISTRY}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let loc = r
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or("no upload location")?
                .to_string();
            let url = if loc.starts_with("http") {
                loc
            } else {
                format!("http://{REGISTRY}{loc}")
            };
            let sep = if url.contains('?') { '&' } else { '?' };
            let r = c
                .put(format!("{url}{sep}digest={d}"))
                .body(data.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("blob put: {}", r.status()));
            }
            Ok::<_, String>((d, data.len()))
        }
    };
    let (cd, cl) = blob(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    )
    .await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cl},
        "layers": []
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let r = c
        .put(format!("http://{REGISTRY}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(bytes.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("manifest put: {}", r.status()));
    }
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(&bytes))))
}

struct WrkResult {
    rps: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn wrk(url: &str, header: Option<&str>) -> WrkResult {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c32", "-d8s", "--latency"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk not installed: apt-get install wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .unwrap_or(f64::NAN);
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    WrkResult {
        rps,
        p99_ms,
        non_2xx,
    }
}

fn parse_latency(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockfile.json");
    let manifest = rt
        .block_on(push_image("kiln-bench/opam", "distro42-7-ocaml-5.5"))
        .expect("registry push (is the registry up?)");
    let before = rss_kib();
    let (lock, reqs) = big_lockfile(&manifest);
    lock.save(&path).unwrap();
    drop(lock);
    let store = Store::open(
        path,
        REGISTRY.into(),
        Arc::new(move || Ok((reqs.clone(), Default::default()))),
    )
    .unwrap();
    let after = rss_kib();
    let state = Arc::new(AppState {
        store,
        log_dir: None,
        rebuild: None,
        queue_db: None,
        token: String::new(),
        metrics: Metrics::default(),
        distribution: Some(Arc::new(Backing::new(
            Registry::new(
                &kiln::config::Config::defaults(dir.path())
                    .expect("defaults")
                    .registry,
            )
            .expect("registry client"),
        ))),
        workers: None,
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(kiln::api::serve_on(state, listener, std::future::pending()));

    let kiln = wrk(
        &format!("http://{addr}/v1/resolve?image=ocaml/opam:distro42-7-ocaml-5.5"),
        None,
    );
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let v2 = wrk(
        &format!("http://{addr}/v2/ocaml/opam/manifests/distro42-7-ocaml-5.5"),
        Some(accept),
    );
    let reg = wrk(
        &format!("http://{REGISTRY}/v2/kiln-bench/opam/manifests/distro42-7-ocaml-5.5"),
        Some(accept),
    );
    let served_rss = rss_kib();
    println!(
        "digest API benchmark ({TAGS}-tag lockfile, wrk -t2 -c32 -d8s, same machine, same run)"
    );
    println!(
        "  kiln   GET /v1/resolve            {:>10.0} req/s   p99 {:>7.2} ms   non-2xx {}",
        kiln.rps, kiln.p99_ms, kiln.non_2xx
    );
    println!(
        "  kiln   GET /v2/…/manifests/TAG    {:>10.0} req/s   p99 {:>7.2} ms   non-2xx {}",
        v2.rps, v2.p99_ms, v2.non_2xx
    );
    println!(
        "  registry GET /v2/…/manifests/…    {:>10.0} req/s   p99 {:>7.2} ms   non-2xx {}",
        reg.rps, reg.p99_ms, reg.non_2xx
    );
    println!(
        "  ratio kiln /v2/ / registry        {:>10.1}x   (target ≥ 10x: answered from memory)",
        v2.rps / reg.rps.max(1.0)
    );
    println!(
        "  ratio kiln/registry               {:>10.1}x   (target ≥ 20x, p99 < 2 ms)",
        kiln.rps / reg.rps.max(1.0)
    );
    println!(
        "  memory: RSS {:.1} MiB before load, {:.1} MiB with the lockfile loaded, {:.1} MiB after serving",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        served_rss as f64 / 1024.0
    );
}
