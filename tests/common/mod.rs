//! What the integration tests share: one way to make a test profile and
//! drive the `kiln` binary with it ([`profile`]), one way to say that a
//! test could not run here ([`skip`]), the ZFS pool's helpers ([`zfs`]),
//! the fault-injection pieces ([`faults`]: a private registry and a
//! proxy in front of it), a private dockerd ([`engine`]), a ZFS worker
//! reachable only by ssh ([`sshd`]), guards for the processes a test
//! starts and bounded waits ([`proc`]), what a test published removed from
//! the registry ([`registry`]), a barrier a recipe waits at ([`barrier`]),
//! a token server speaking Docker's token protocol ([`token`]), and nginx
//! in front of a registry, refusing `_catalog` and answering 429 on
//! demand ([`nginx`]).
//!
//! Each test file includes this with `mod common;`, so not every file uses
//! every piece.
#![allow(dead_code, unused_imports)]

pub mod barrier;
pub mod engine;
pub mod faults;
pub mod github;
pub mod jobs;
pub mod netns;
pub mod nginx;
pub mod proc;
pub mod profile;
pub mod registry;
pub mod serve;
pub mod skip;
pub mod sshd;
pub mod token;
pub mod zfs;

use std::time::{Duration, Instant};

pub use faults::{Mode, PrivateRegistry, Proxy, ProxyState};
pub use proc::{Bounded, LIMIT, Spawned};
pub use profile::{
    Profile, ProfileBuilder, fixtures, kiln, ok_json, qemu_toml, root, state_dir, zfs_toml,
};
pub use skip::skip;

/// `RUN <command>` as no earlier build rendered it (a comment naming this
/// process and moment), so that the engine's layer cache, which keeps the
/// steps of published builds, cannot answer it: it runs, taking its time.
pub fn uncached_step(command: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("RUN {command} # uncached {}-{now}\n", std::process::id())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `ok` (every 200 ms) until it holds; panic naming `what` after
/// `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Try `done` up to `times` times, `pause` apart, until it holds (a
/// teardown racing an asynchronous release: a busy pool, a bridge in use).
pub fn retry(times: usize, pause: Duration, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..times {
        if done() {
            return true;
        }
        std::thread::sleep(pause);
    }
    false
}

/// Whether a process whose command line matches `pattern` (`pgrep -f`) runs.
pub fn running(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output_within(Duration::from_secs(30))
        .unwrap()
        .status
        .success()
}

/// The pids of the processes whose command line matches `pattern`
/// (`pgrep -f`; a failure of pgrep other than "none" panics).
pub fn pids(pattern: &str) -> Vec<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output_within(Duration::from_secs(30))
        .unwrap();
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "pgrep -f {pattern}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `pid`'s parent, its parent's, … up to init (from `/proc`, as this
/// machine's pid namespace numbers them).
pub fn ancestors(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut p = pid;
    while p > 1 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            break;
        };
        // `pid (comm) state ppid …`: comm may hold spaces, so after its ')'.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
        else {
            break;
        };
        out.push(ppid);
        p = ppid;
    }
    out
}
