//! A `kiln daemon` beside a profile, for tests that control its jobs
//! (cancel a running one) on a builder other than Docker.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{Bounded, LIMIT, Spawned};

/// `[api]` and `[daemon]` for a daemon whose only work is what is handed
/// to it (its schedule is once a year), its API on `port`.
pub fn daemon_toml(port: u16) -> String {
    format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"jobs-token\"\n[daemon]\nschedule = \"0 0 3 1 1 *\"\nmax_attempts = 3\npoll_secs = 0\n"
    )
}

/// Start `kiln daemon` (logging at info) and wait for its API.
pub fn spawn_daemon(cmd: &mut Command, port: u16) -> Spawned {
    let d = Spawned::piped("kiln daemon", cmd.arg("daemon").env("KILN_LOG", "info"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "daemon API never answered:\n{}",
            d.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d
}

/// `kiln jobs list --json`.
pub fn jobs(cmd: &mut Command) -> Vec<serde_json::Value> {
    let out = cmd
        .args(["jobs", "list", "--json", "--limit", "50"])
        .output_within(LIMIT)
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one running job's id, waiting for it to start.
pub fn running_job(kiln: &dyn Fn() -> Command, d: &Spawned) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(j) = jobs(&mut kiln()).iter().find(|j| j["state"] == "running") {
            return j["id"].as_i64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no job running:\n{}",
            d.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Wait until job `id` is in `state`; panic (with the daemon's log) after
/// `secs`. Returns the job.
pub fn wait_state(
    kiln: &dyn Fn() -> Command,
    d: &Spawned,
    id: i64,
    state: &str,
    secs: u64,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let all = jobs(&mut kiln());
        if let Some(j) = all.iter().find(|j| j["id"] == id && j["state"] == state) {
            return j.clone();
        }
        assert!(
            Instant::now() < deadline,
            "job #{id} never {state}: {all:?}\n{}",
            d.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `kiln jobs cancel ID`, then wait until the job is recorded cancelled
/// (the daemon records it only once the build's cleanups ran).
pub fn cancel_and_wait(kiln: &dyn Fn() -> Command, d: &Spawned, id: i64) {
    let out = kiln()
        .args(["jobs", "cancel", &id.to_string()])
        .output_within(LIMIT)
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_state(kiln, d, id, "cancelled", 120);
}
