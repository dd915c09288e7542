//! Network namespaces of a test's own (`ip netns`), removed on drop with
//! the interfaces in them.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::Bounded;

/// `ip <args>`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output_within(Duration::from_secs(60))
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop (with the interfaces in it).
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status_within(Duration::from_secs(60));
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .status_within(Duration::from_secs(60));
    }
}

/// The suite's registry (127.0.0.1:5000) on the loopback of namespace
/// `ns`: a socat relay on each side of a Unix socket in `dir`. Both
/// relays stop when the returned pair drops.
pub fn registry_relay(ns: &str, dir: &std::path::Path) -> (super::Spawned, super::Spawned) {
    let sock = dir.join("registry.sock");
    let host = super::Spawned::start(
        "the registry relay (host side)",
        Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
            .arg("TCP:127.0.0.1:5000")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    super::wait_until("the relay's socket", 30, || sock.exists());
    let inside = super::Spawned::start(
        "the registry relay (namespace side)",
        Command::new("ip")
            .args(["netns", "exec", ns, "socat"])
            .arg("TCP-LISTEN:5000,bind=127.0.0.1,reuseaddr,fork")
            .arg(format!("UNIX-CONNECT:{}", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    (host, inside)
}
