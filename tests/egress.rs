//! A build reaches nothing but the distro mirror and Kiln's own source
//! server. `kiln build` and a private dockerd run in a network namespace
//! of the test's own whose only route leads to a second namespace, the
//! mirror's host, where a stand-in distro mirror serves a package; the
//! build's source proxy is Kiln's, on the private engine's bridge (the
//! build's `http_proxy`: `http://kiln-sources/…` from the mirror, other
//! hosts forwarded from the namespace), and the
//! registry is reached through a relay on that loopback (a Unix socket to
//! the suite's registry: the engine pulls the parent and Kiln pushes the
//! image there). A recipe that takes a package from the mirror and a
//! declared source from `{{sources_url}}` builds and publishes; the same
//! recipe also fetching from anything else — an HTTP server this machine
//! answers on its own address — fails, as the recipe's failure, and that
//! server never sees the build.
//!
//! Namespaces, the veth pair between them, the servers, relays and the
//! engine are removed when the test ends. Traffic goes only to loopback,
//! the mirror's namespace, and this machine's own address.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::engine::PrivateEngine;
use common::netns::{Netns, ip};
use common::{Bounded, LIMIT, Profile, Spawned};

/// The mirror's host, and the build's side of the link to it.
const MIRROR: &str = "10.231.77.1";
const BUILD: &str = "10.231.77.2";
const PAYLOAD: &str = "kiln egress test payload: source mirror\n";

/// The two namespaces and the one link between them: the build's has no
/// other route than to the mirror's /30.
struct Network {
    // Dropped last: everything running inside goes first.
    build: Netns,
    mirror: Netns,
}

fn network(tag: &str) -> Network {
    let id = std::process::id() % 100_000;
    let build = Netns::new(format!("kilneg{id}{tag}b"));
    let mirror = Netns::new(format!("kilneg{id}{tag}m"));
    let (vb, vm) = (format!("kegb{id}{tag}"), format!("kegm{id}{tag}"));
    ip(&["link", "add", &vb, "type", "veth", "peer", "name", &vm]);
    ip(&["link", "set", &vb, "netns", &build.0]);
    ip(&["link", "set", &vm, "netns", &mirror.0]);
    ip(&[
        "-n",
        &build.0,
        "addr",
        "add",
        &format!("{BUILD}/30"),
        "dev",
        &vb,
    ]);
    ip(&["-n", &build.0, "link", "set", &vb, "up"]);
    ip(&[
        "-n",
        &mirror.0,
        "addr",
        "add",
        &format!("{MIRROR}/30"),
        "dev",
        &vm,
    ]);
    ip(&["-n", &mirror.0, "link", "set", &vm, "up"]);
    // The private engine's bridge, in the build's namespace.
    let br = format!("kegbr{id}{tag}");
    ip(&["-n", &build.0, "link", "add", &br, "type", "bridge"]);
    ip(&["-n", &build.0, "addr", "add", "172.31.251.1/24", "dev", &br]);
    ip(&["-n", &build.0, "link", "set", &br, "up"]);
    Network { build, mirror }
}

/// This machine's own address on its default route (not loopback).
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "get", "192.0.2.123"])
        .output_within(Duration::from_secs(30))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "src")
        .and_then(|i| words.get(i + 1))
        .map(|s| s.to_string())
        .unwrap_or_else(|| panic!("no source address in `ip route get`: {text}"))
}

/// Everything one confined build needs, removed in field order.
struct Confined {
    _kiln_relay: Spawned,
    _host_relay: Spawned,
    engine: Option<PrivateEngine>,
    mirror_server: Spawned,
    _elsewhere: Spawned,
    elsewhere_log: std::path::PathBuf,
    elsewhere_url: String,
    net: Network,
    _dir: tempfile::TempDir,
}

impl Drop for Confined {
    fn drop(&mut self) {
        // The engine before its namespace goes.
        drop(self.engine.take());
    }
}

fn confined(tag: &str) -> Confined {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let net = network(tag);
    // The stand-in distro mirror, in the mirror's namespace.
    let www = d.join("mirror");
    std::fs::create_dir_all(www.join("pool")).unwrap();
    std::fs::write(www.join("pool/hello.txt"), "a package from the mirror\n").unwrap();
    let mirror_server = Spawned::piped(
        "the mirror's httpd",
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.mirror.0,
                "busybox",
                "httpd",
                "-f",
                "-v",
            ])
            .args(["-p", &format!("{MIRROR}:80"), "-h"])
            .arg(&www),
    );
    // Anything else: a server this machine answers on its own address.
    let host = host_address();
    let port = common::free_port();
    let other = d.join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x"), "not for builds\n").unwrap();
    let elsewhere_log = d.join("elsewhere.log");
    let elsewhere = Spawned::start(
        "the other httpd",
        Command::new("busybox")
            .args(["httpd", "-f", "-v", "-p", &format!("{host}:{port}"), "-h"])
            .arg(&other)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&elsewhere_log).unwrap()),
    );
    let elsewhere_url = format!("http://{host}:{port}/x");
    // It answers this machine: the build's failure to reach it is the
    // namespace's doing, not a server that is not there.
    common::wait_until("the other server", 30, || {
        Command::new("curl")
            .args(["-fsS", "-o", "/dev/null", &elsewhere_url])
            .status_within(Duration::from_secs(30))
            .is_ok_and(|s| s.success())
    });
    // The registry on the build's loopback: a relay through a Unix socket.
    let (host_relay, kiln_relay) = common::netns::registry_relay(&net.build.0, d);
    let engine_dir = d.join("engine");
    std::fs::create_dir_all(&engine_dir).unwrap();
    let br = format!("kegbr{}{tag}", std::process::id() % 100_000);
    let engine = PrivateEngine::start_in(&engine_dir, &br, Some(&net.build.0));
    Confined {
        _kiln_relay: kiln_relay,
        _host_relay: host_relay,
        engine: Some(engine),
        mirror_server,
        _elsewhere: elsewhere,
        elsewhere_log,
        elsewhere_url,
        net,
        _dir: dir,
    }
}

/// The busybox profile whose recipe takes a package from the mirror and
/// `payload.txt` from the source server (then `extra` steps), building on
/// the confined engine; its source synced (from outside the namespace).
fn profile(c: &Confined, name: &str, os: &str, extra: &str) -> Profile {
    let socket = c.engine.as_ref().unwrap().socket();
    let p = Profile::busybox(&format!("egress-{name}"), os)
        .own_state()
        .recipe_prefix(&format!(
            "RUN wget -q -O /mirror.txt http://{MIRROR}/pool/hello.txt && grep -q 'from the mirror' /mirror.txt\n\
             RUN wget -q -O /payload.txt {{{{sources_url}}}}/payload.txt && grep -q 'source mirror' /payload.txt\n{extra}"
        ))
        .toml(&format!(
            "[docker]\n[[docker.hosts]]\nname = \"confined\"\nendpoint = \"unix://{}\"\nos = \"linux\"\narch = \"amd64\"\nconcurrency = 1\n",
            socket.display()
        ))
        .create();
    std::fs::create_dir_all(p.path().join("state")).unwrap();
    let origin = p.path().join("origin/payload.txt");
    std::fs::create_dir_all(origin.parent().unwrap()).unwrap();
    std::fs::write(&origin, PAYLOAD).unwrap();
    use sha2::Digest;
    std::fs::write(
        p.path().join("versions/sources.yaml"),
        format!(
            "sources:\n  - name: payload.txt\n    url: file://{}\n    sha256: {}\n",
            origin.display(),
            hex::encode(sha2::Sha256::digest(PAYLOAD))
        ),
    )
    .unwrap();
    p.sync_sources();
    p
}

/// `kiln build --json` inside the build's namespace.
fn build_inside(c: &Confined, p: &Profile) -> (Option<i32>, Value, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &c.net.build.0])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg("--config")
        .arg(&p.config)
        .args(["build", "--json"])
        .output_within(LIMIT)
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let s = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (out.status.code(), s, stderr)
}

fn log(p: &Profile, os: &str) -> String {
    let path = p
        .path()
        .join(format!("state/log/linux_{os}_5.5.0_amd64.log"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_build_reaches_the_mirror_and_the_source_server_and_nothing_else() {
    common::fixtures();
    let c = confined("a");
    // Only the mirror's link and loopback: no default route.
    let routes = Command::new("ip")
        .args(["-n", &c.net.build.0, "route", "show"])
        .output_within(Duration::from_secs(30))
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(!routes.contains("default"), "{routes}");

    let good = profile(&c, "ok", "busybox-egress", "");
    let (code, s, err) = build_inside(&c, &good);
    assert_eq!((code, &s["built"]), (Some(0), &json!(1)), "{s}\n{err}");
    good.entry(&format!("{}/opam:busybox-egress-ocaml-5.5", good.namespace));
    // The mirror served the build's side of the link (and the recipe
    // checked the package's content).
    let seen = c.mirror_server.stderr_so_far();
    assert!(
        seen.lines()
            .any(|l| l.contains(&format!("{BUILD}:")) && l.contains("response:200")),
        "the mirror saw: {seen}"
    );

    // The same recipe also reaching anything else: the recipe fails there.
    let bad = profile(
        &c,
        "other",
        "busybox-egressother",
        &format!("RUN wget -q -O /elsewhere.txt {}\n", c.elsewhere_url),
    );
    let (code, s, err) = build_inside(&c, &bad);
    assert_eq!(code, Some(1), "{s}\n{err}");
    let arch = &s["tags"][0]["arches"]["amd64"];
    assert_eq!(
        (arch["outcome"].as_str(), arch["kind"].as_str()),
        (Some("failed"), Some("recipe")),
        "{s}"
    );
    let text = log(&bad, "busybox-egressother");
    // The build's proxy could not reach it either (the namespace routes
    // only to the mirror): 502, and the recipe fails.
    assert!(
        text.contains(&c.elsewhere_url) && text.contains("502 Bad Gateway"),
        "{text}"
    );
    assert!(bad.entries().is_empty(), "nothing published");
    // The other server saw the test's own request only.
    let requests = std::fs::read_to_string(&c.elsewhere_log).unwrap_or_default();
    let from_build = requests
        .lines()
        .filter(|l| l.contains(BUILD) || l.contains("172.31.251."))
        .count();
    assert_eq!(from_build, 0, "{requests}");
}
