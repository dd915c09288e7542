//! A build on a Docker engine that is not on the Kiln machine's network
//! stack: a private dockerd in a network namespace of the test's own,
//! reached only over tcp with TLS (a CA, server and client certificates
//! made here by openssl; Kiln gets the client's through
//! `DOCKER_CERT_PATH`). Its build containers sit on the engine's bridge
//! inside the namespace and reach this machine only across the veth link,
//! where the build's source proxy listens on the host's end
//! (`sources_address`): a recipe taking a declared source from
//! `{{sources_url}}` builds there and publishes. The engine pulls its
//! parent from the suite's registry through a relay on the namespace's
//! loopback (a Unix socket to 127.0.0.1:5000), as the egress test does.
//!
//! The namespace, veth pair, route, relays, certificates and engine go
//! when the test ends. Traffic goes only to loopback and the namespace.

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::engine::PrivateEngine;
use common::netns::{Netns, ip};
use common::{Bounded, Profile};

/// This machine's end of the link, and the engine's.
const HOST: &str = "10.232.88.1";
const ENGINE: &str = "10.232.88.2";
/// The engine's bridge inside the namespace.
const BRIDGE_NET: &str = "172.31.247.0/24";
const PAYLOAD: &str = "kiln remote engine test payload: source mirror\n";

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output_within(Duration::from_secs(120))
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, the engine's certificate (for its address) and Kiln's client
/// certificate, in `dir` under the names dockerd and DOCKER_CERT_PATH use.
fn certificates(dir: &std::path::Path) {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=kiln test CA",
            days[0],
            days[1],
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server-key.pem",
            "-out",
            "server.csr",
            "-subj",
            "/CN=engine",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName=IP:{ENGINE}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            "server-cert.pem",
            "-extfile",
            "server.ext",
            days[0],
            days[1],
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "client.csr",
            "-subj",
            "/CN=kiln",
        ],
    );
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-extfile",
            "client.ext",
            days[0],
            days[1],
        ],
    );
}

/// The host route to the engine's bridge, removed on drop.
struct Route;

impl Drop for Route {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["route", "del", BRIDGE_NET])
            .stderr(Stdio::null())
            .status_within(Duration::from_secs(60));
    }
}

/// The busybox profile on the one docker host `host` (its name, endpoint
/// and more), whose recipe takes `payload.txt` from `{{sources_url}}`;
/// the source synced.
fn profile(name: &str, os: &str, host: &str) -> Profile {
    let p = Profile::busybox(name, os)
        .own_state()
        .recipe_prefix(
            "RUN wget -q -O /payload.txt {{sources_url}}/payload.txt && grep -q 'source mirror' /payload.txt\n",
        )
        .toml(&format!(
            "[docker]\n[[docker.hosts]]\n{host}os = \"linux\"\narch = \"amd64\"\nconcurrency = 1\n"
        ))
        .create();
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

#[test]
fn a_build_on_a_tls_engine_in_another_network_takes_its_sources_through_the_link() {
    common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let id = std::process::id() % 100_000;
    // The engine's host: a namespace, linked to this machine by a veth
    // pair; it forwards between its bridge and the link.
    let ns = Netns::new(format!("kilnre{id}"));
    let (vh, vn) = (format!("kreh{id}"), format!("kren{id}"));
    let _ = Command::new("ip")
        .args(["link", "del", &vh])
        .stderr(Stdio::null())
        .status_within(Duration::from_secs(60));
    ip(&["link", "add", &vh, "type", "veth", "peer", "name", &vn]);
    ip(&["link", "set", &vn, "netns", &ns.0]);
    ip(&["addr", "add", &format!("{HOST}/30"), "dev", &vh]);
    ip(&["link", "set", &vh, "up"]);
    ip(&[
        "-n",
        &ns.0,
        "addr",
        "add",
        &format!("{ENGINE}/30"),
        "dev",
        &vn,
    ]);
    ip(&["-n", &ns.0, "link", "set", &vn, "up"]);
    let br = format!("kreb{id}");
    ip(&["-n", &ns.0, "link", "add", &br, "type", "bridge"]);
    ip(&["-n", &ns.0, "addr", "add", "172.31.247.1/24", "dev", &br]);
    ip(&["-n", &ns.0, "link", "set", &br, "up"]);
    let fwd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .status_within(Duration::from_secs(60))
        .unwrap();
    assert!(fwd.success());
    ip(&["route", "add", BRIDGE_NET, "via", ENGINE]);
    let _route = Route;

    // The registry on the namespace's loopback, for the engine's pulls.
    let _relay = common::netns::registry_relay(&ns.0, d);

    // The engine, listening with TLS on its end of the link.
    let certs = d.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let engine_dir = d.join("engine");
    std::fs::create_dir_all(&engine_dir).unwrap();
    let c = |f: &str| certs.join(f).display().to_string();
    let engine = PrivateEngine::start_with(
        &engine_dir,
        &br,
        Some(&ns.0),
        &[
            "-H".into(),
            format!("tcp://{ENGINE}:2376"),
            "--tlsverify".into(),
            format!("--tlscacert={}", c("ca.pem")),
            format!("--tlscert={}", c("server-cert.pem")),
            format!("--tlskey={}", c("server-key.pem")),
        ],
    );
    // Without a client certificate the engine answers nothing.
    let plain = Command::new("docker")
        .args(["-H", &format!("tcp://{ENGINE}:2376"), "version"])
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("DOCKER_TLS_VERIFY")
        .output_within(Duration::from_secs(60))
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("Server:") || !plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stdout)
    );

    let p = profile(
        "remote-tls",
        "busybox-remote",
        &format!(
            "name = \"remote\"\nendpoint = \"tcp://{ENGINE}:2376\"\nsources_address = \"{HOST}\"\n"
        ),
    );
    let out = p
        .command()
        .args(["build", "--json"])
        .env("DOCKER_CERT_PATH", &certs)
        .output_within(common::LIMIT)
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let s: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
    let log = std::fs::read_to_string(
        p.path()
            .join("state/log/linux_busybox-remote_5.5.0_amd64.log"),
    )
    .unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{s}\n{err}\n{log}");
    assert_eq!(s["built"], 1, "{s}");
    assert!(log.contains("on docker host remote"), "{log}");
    p.entry(&format!("{}/opam:busybox-remote-ocaml-5.5", p.namespace));
    // Built there: the remote engine holds the parent it pulled.
    let images = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", engine.socket().display()))
        .args(["images", "-q", "127.0.0.1:5000/kiln-fixtures/busybox"])
        .output_within(Duration::from_secs(60))
        .unwrap();
    assert!(!images.stdout.is_empty(), "the remote engine built nothing");
    // doctor reaches it as builds do and asks it its free disk (no shell
    // on a tcp engine: df in a container of an image it holds).
    let out = p
        .command()
        .args(["doctor", "--json"])
        .env("DOCKER_CERT_PATH", &certs)
        .output_within(common::LIMIT)
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "docker engine (remote)")
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert_eq!(check["status"], "ok", "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("GiB free in ") && detail.contains("builds amd64"),
        "{check}"
    );
    // The df container is gone.
    let left = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", engine.socket().display()))
        .args(["ps", "-aq", "--filter", "name=kiln-df-"])
        .output_within(Duration::from_secs(60))
        .unwrap();
    assert!(left.stdout.is_empty(), "df containers left");
    drop(engine);
}

/// An engine reached only over ssh (the sshd test host on loopback, its
/// user in the `docker` group): Kiln's own connection forwards the host's
/// Docker socket here and, for the build, its source proxy (listening
/// on this machine's loopback only) to the host's bridge gateway; the
/// build fetches through it, and the forward and connection go with the
/// run.
#[test]
fn a_build_on_an_ssh_engine_takes_its_sources_through_the_connection() {
    common::fixtures();
    let w = match common::sshd::SshWorker::start("de") {
        Ok(w) => w,
        Err(e) => panic!("the ssh test host: {e}"),
    };
    let added = Command::new("usermod")
        .args(["-aG", "docker", &w.user])
        .status_within(Duration::from_secs(60))
        .unwrap();
    assert!(added.success());
    let p = profile(
        "remote-ssh",
        "busybox-remotessh",
        &format!(
            "name = \"sshengine\"\nendpoint = \"ssh://{}\"\nssh_config = \"{}\"\n",
            w.alias,
            w.ssh_config.display()
        ),
    );
    let (code, s) = p.build(&[]);
    let log = std::fs::read_to_string(
        p.path()
            .join("state/log/linux_busybox-remotessh_5.5.0_amd64.log"),
    )
    .unwrap_or_default();
    assert_eq!(code, Some(0), "{s}\n{log}\n{}", w.log());
    assert_eq!(s["built"], 1, "{s}");
    assert!(log.contains("on docker host sshengine"), "{log}");
    // Through sshd: the socket and the reverse forward were asked of it.
    let sshd = w.log();
    assert!(
        sshd.contains("docker.sock") && sshd.contains("tcpip-forward"),
        "{sshd}"
    );
    // Kiln has exited: its connection is gone from the host.
    common::wait_until("the ssh connection to close", 30, || {
        w.user_processes().trim().is_empty()
    });
}
