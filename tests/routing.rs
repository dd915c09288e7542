//! Routing Docker builds over several engines, on real engines: the local
//! dockerd and a private one ([`PrivateEngine`]) on a bridge of its own.
//! A host running the arch natively is chosen over one that emulates it;
//! a host killed mid-build is marked down (in the state store, shown by
//! `kiln doctor`) and the build completes on the other host; once it
//! answers again it is back in the routing; builds arriving together
//! spread over hosts with free slots.

use std::time::Duration;

mod common;
use common::barrier::Barrier;
use common::engine::{PrivateEngine, make_bridge};
use common::{LIMIT, Profile, Spawned, fixtures};

/// `[docker]` with the hosts given as (name, endpoint, arch, emulate, concurrency).
fn hosts(list: &[(&str, String, &str, &str, usize)]) -> String {
    let mut t = "[docker]\n".to_string();
    for (name, endpoint, arch, emulate, concurrency) in list {
        t.push_str(&format!(
            "[[docker.hosts]]\nname = \"{name}\"\nendpoint = \"{endpoint}\"\nos = \"linux\"\narch = \"{arch}\"\nemulate = [{emulate}]\nconcurrency = {concurrency}\n"
        ));
    }
    t
}

/// The build log of the profile's one busybox target.
fn build_log(p: &Profile) -> String {
    let logs = p.path().join("state/log");
    let mut text = String::new();
    for e in std::fs::read_dir(&logs).unwrap().flatten() {
        text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    text
}

fn doctor(p: &Profile) -> serde_json::Value {
    let out = p.kiln(&["doctor", "--json"]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The doctor's check of the engine `name`.
fn engine_check(p: &Profile, name: &str) -> serde_json::Value {
    let d = doctor(p);
    d["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == format!("docker engine ({name})").as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no check of {name}: {d:#}"))
}

/// The docker host `name`'s health in `kiln workers --json`.
fn worker_health(p: &Profile, name: &str) -> String {
    let inv: serde_json::Value = common::ok_json(p.kiln(&["workers", "--json"]));
    inv["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["builder"] == "docker" && h["host"] == name)
        .and_then(|h| h["health"].as_str())
        .unwrap_or_else(|| panic!("no docker host {name}: {inv:#}"))
        .to_string()
}

#[test]
fn the_native_host_is_chosen_over_one_that_emulates() {
    fixtures();
    let dir = tempfile::tempdir().unwrap();
    let bridge = make_bridge("kilnrt", "172.31.251.1/24");
    let engine = PrivateEngine::start(dir.path(), &bridge.0);
    // The emulating host is listed first and has more free slots.
    let p = Profile::busybox("route-native", "busybox-route-native")
        .own_state()
        .toml(&hosts(&[
            (
                "emulating",
                "unix:///var/run/docker.sock".into(),
                "arm64",
                "\"amd64\"",
                8,
            ),
            (
                "native",
                format!("unix://{}", engine.socket().display()),
                "amd64",
                "",
                1,
            ),
        ]))
        .create();
    let (code, s) = p.build(&[]);
    assert_eq!(code, Some(0), "{s}");
    assert!(
        build_log(&p).contains("on docker host native"),
        "{}",
        build_log(&p)
    );
}

#[test]
fn a_host_killed_mid_build_is_marked_down_and_the_build_completes_on_another() {
    fixtures();
    let dir = tempfile::tempdir().unwrap();
    let bridge = make_bridge("kilnrf", "172.31.250.1/24");
    let mut engine = PrivateEngine::start(dir.path(), &bridge.0);
    let barrier = Barrier::for_engine(&bridge.0);
    // Both native; the private engine has more free slots, so it is first.
    let p = Profile::busybox("route-fail", "busybox-route-fail")
        .own_state()
        .recipe_prefix(&barrier.docker_step("held"))
        .toml(&hosts(&[
            (
                "local",
                "unix:///var/run/docker.sock".into(),
                "amd64",
                "",
                1,
            ),
            (
                "private",
                format!("unix://{}", engine.socket().display()),
                "amd64",
                "",
                4,
            ),
        ]))
        .create();
    let build = Spawned::piped(
        "kiln build",
        p.command()
            .args(["build", "--json"])
            .env("KILN_LOG", "info"),
    );
    barrier.wait_for_arrivals(1, Duration::from_secs(180));
    assert!(
        build_log(&p).contains("on docker host private"),
        "{}",
        build_log(&p)
    );
    engine.kill();
    barrier.open();
    let out = build.output_within(LIMIT);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{s}\n{err}");
    assert_eq!(s["built"], 1, "{s}");
    assert!(err.contains("docker host stopped answering"), "{err}");
    assert!(
        build_log(&p).contains("on docker host local"),
        "{}",
        build_log(&p)
    );
    // Shown down, with what the build saw.
    let check = engine_check(&p, "private");
    assert_eq!(check["status"], "missing", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("marked down by a build since"),
        "{check}"
    );
    // The worker inventory (`kiln workers`, `/v1/workers`, the status
    // page) shows it down too.
    assert!(
        worker_health(&p, "private").starts_with("down since "),
        "{}",
        worker_health(&p, "private")
    );
    assert_eq!(worker_health(&p, "local"), "ok");
    // And `kiln status`.
    let status = String::from_utf8_lossy(&p.kiln(&["status"]).stdout).to_string();
    assert!(
        status.contains("hosts marked down") && status.contains("docker:private"),
        "{status}"
    );
    // Back: the next build (a new key) probes it and routes to it again.
    let _engine = PrivateEngine::start(dir.path(), &bridge.0);
    assert!(
        engine_check(&p, "private")["detail"]
            .as_str()
            .unwrap()
            .contains("it answers again"),
    );
    p.edit("platforms/linux/busybox.Dockerfile", |t| {
        t.replace(&barrier.docker_step("held"), "")
    });
    let (code, s) = p.build(&[]);
    assert_eq!(code, Some(0), "{s}");
    assert!(
        build_log(&p).contains("on docker host private"),
        "{}",
        build_log(&p)
    );
    let check = engine_check(&p, "private");
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        !check["detail"].as_str().unwrap().contains("marked down"),
        "{check}"
    );
}

/// Two arches of one tag arrive together; two hosts, one slot each, serve
/// both (natively or by emulation): each build takes a host of its own,
/// so both run at once (both reach the barrier before it opens).
#[test]
fn builds_arriving_together_spread_over_hosts_by_free_slots() {
    fixtures();
    let dir = tempfile::tempdir().unwrap();
    let bridge = make_bridge("kilnrs", "172.31.246.1/24");
    let engine = PrivateEngine::start(dir.path(), &bridge.0);
    let barrier = Barrier::for_engine(&bridge.0);
    let p = Profile::busybox("route-spread", "busybox-route-spread")
        .own_state()
        .recipe_prefix(&barrier.docker_step("held"))
        .toml(&hosts(&[
            (
                "local",
                "unix:///var/run/docker.sock".into(),
                "amd64",
                "\"arm64\"",
                1,
            ),
            (
                "private",
                format!("unix://{}", engine.socket().display()),
                "amd64",
                "\"arm64\"",
                1,
            ),
        ]))
        .create();
    p.edit("platforms/linux/platform.yaml", |t| {
        t.replace("arches: [amd64]", "arches: [amd64, arm64]")
    });
    let build = Spawned::piped("kiln build", p.command().args(["build", "--json"]));
    // Both held at once: one slot per host, so on two hosts.
    let arrived = barrier.wait_for_arrivals(2, Duration::from_secs(240));
    assert_eq!(arrived.len(), 2, "{arrived:?}");
    barrier.open();
    let out = build.output_within(LIMIT);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{s}");
    let log = build_log(&p);
    assert!(
        log.contains("on docker host local") && log.contains("on docker host private"),
        "{log}"
    );
    drop(engine);
}
