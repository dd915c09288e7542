//! What the integration tests share: one way to make a test profile and
//! drive the `kiln` binary with it ([`profile`]), one way to say that a
//! test could not run here ([`skip`]), the ZFS pool's helpers ([`zfs`]),
//! the fault-injection pieces ([`faults`]: a private registry and a
//! proxy in front of it), a private dockerd ([`engine`]), and a ZFS worker
//! reachable only by ssh ([`sshd`]).
//!
//! Each test file includes this with `mod common;`, so not every file uses
//! every piece.
#![allow(dead_code, unused_imports)]

pub mod engine;
pub mod faults;
pub mod profile;
pub mod skip;
pub mod sshd;
pub mod zfs;

use std::time::{Duration, Instant};

pub use faults::{Mode, PrivateRegistry, Proxy, ProxyState};
pub use profile::{
    Profile, ProfileBuilder, fixtures, kiln, ok_json, qemu_toml, root, state_dir, zfs_toml,
};
pub use skip::skip;

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
        .output()
        .unwrap()
        .status
        .success()
}
