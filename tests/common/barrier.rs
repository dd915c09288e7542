//! A barrier a recipe waits at, so that a test holds a build at a known
//! step for as long as it needs (two builds overlapping, a SIGTERM while a
//! job runs, a sweep while another build is alive) with explicit
//! synchronisation instead of sleeps.
//!
//! An HTTP server: `GET /wait/<name>` records that `<name>` arrived and
//! answers only once the test opens the barrier. On loopback for what
//! runs on this machine (local or ssh ZFS hosts: `curl -fsS <url>`); on
//! an engine's bridge address for a Docker build's `RUN` step, which runs
//! on the engine's bridge network unless the build uses the source
//! server ([`Barrier::for_engine`], `wget -q -O /dev/null <url>`).
//! Dropping the barrier opens it, so a failed test leaves no recipe
//! waiting.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::Bounded;

#[derive(Default)]
struct State {
    /// Names in the order they arrived.
    arrived: Vec<String>,
    /// Requests still held.
    waiting: usize,
    open: bool,
    stopped: bool,
}

pub struct Barrier {
    pub port: u16,
    /// The address it listens on.
    ip: String,
    state: Arc<(Mutex<State>, Condvar)>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl Barrier {
    /// On loopback.
    pub fn start() -> Barrier {
        Barrier::start_on("127.0.0.1")
    }

    /// On the address of the bridge `bridge` (an engine's: `docker0` for
    /// the suite's, a private engine's own), which its containers reach
    /// as their gateway.
    pub fn for_engine(bridge: &str) -> Barrier {
        let out = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", bridge])
            .output_within(Duration::from_secs(30))
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ip = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 address on {bridge}: {text}"))
            .to_string();
        Barrier::start_on(&ip)
    }

    fn start_on(ip: &str) -> Barrier {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if lock(&st.0).stopped {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Barrier {
            port,
            ip: ip.to_string(),
            state,
        }
    }

    /// The URL a recipe step fetches to wait at the barrier as `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}:{}/wait/{name}", self.ip, self.port)
    }

    /// A Dockerfile step that waits at the barrier (busybox `wget`).
    pub fn docker_step(&self, name: &str) -> String {
        format!("RUN wget -q -O /dev/null {}\n", self.url(name))
    }

    /// Who arrived, in order.
    pub fn arrived(&self) -> Vec<String> {
        lock(&self.state.0).arrived.clone()
    }

    /// How many requests are held right now.
    pub fn waiting(&self) -> usize {
        lock(&self.state.0).waiting
    }

    /// Block until `n` arrivals in all; panic after `limit`.
    pub fn wait_for_arrivals(&self, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let (m, cv) = &*self.state;
        let mut s = lock(m);
        while s.arrived.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "waited {limit:?} for {n} arrivals at the barrier, have {:?}",
                s.arrived
            );
            s = cv
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.arrived.clone()
    }

    /// Let every held and later request through.
    pub fn open(&self) {
        let (m, cv) = &*self.state;
        lock(m).open = true;
        cv.notify_all();
    }
}

fn serve(conn: TcpStream, st: &(Mutex<State>, Condvar)) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    // The rest of the request head.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let name = first
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.strip_prefix("/wait/"))
        .unwrap_or("")
        .to_string();
    let (m, cv) = st;
    {
        let mut s = lock(m);
        s.arrived.push(name);
        s.waiting += 1;
        cv.notify_all();
        while !s.open {
            s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.waiting -= 1;
    }
    let mut conn = conn;
    let _ =
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\ngo\n");
}

impl Drop for Barrier {
    fn drop(&mut self) {
        lock(&self.state.0).stopped = true;
        self.open();
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect((self.ip.as_str(), self.port));
    }
}
