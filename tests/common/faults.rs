//! Pieces shared by the fault tests: a private registry process (the same
//! `docker-registry` binary services.sh runs, on its own port and storage)
//! and a TCP proxy in front of it that can drop connections or answer 429.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::free_port;

/// A `docker-registry serve` of our own; killed on drop.
pub struct PrivateRegistry {
    pub port: u16,
    pub storage: PathBuf,
    config: PathBuf,
    /// YAML appended at top level (`auth:`).
    extra: String,
    child: Option<Child>,
}

impl PrivateRegistry {
    pub fn start(dir: &Path) -> PrivateRegistry {
        PrivateRegistry::start_with(dir, "")
    }

    /// With more configuration (YAML appended at top level, e.g. `auth:`).
    pub fn start_with(dir: &Path, extra: &str) -> PrivateRegistry {
        let port = free_port();
        let storage = dir.join("data");
        std::fs::create_dir_all(&storage).unwrap();
        let config = dir.join("config.yml");
        let mut r = PrivateRegistry {
            port,
            storage,
            config,
            extra: extra.to_string(),
            child: None,
        };
        r.write_config();
        r.restart();
        r
    }

    fn write_config(&self) {
        std::fs::write(
            &self.config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n  secret: kiln-fault-test-secret\n{}",
                self.storage.display(),
                self.port,
                self.extra
            ),
        )
        .unwrap();
    }

    /// Every file of its storage with its size: what a test compares to
    /// show that nothing was written (a blob, a manifest, a tag, an upload
    /// begun and abandoned all add or change a file).
    pub fn contents(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![self.storage.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = e.path();
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                } else {
                    out.push((path, meta.len()));
                }
            }
        }
        out.sort();
        out
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start (again) on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/services.sh up installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Cut the connection carrying the byte that takes the client→registry
    /// total past this count, once; then pass.
    DropAt(u64),
    /// Answer every new connection's requests with 429 and this Retry-After.
    Throttle {
        retry_after: u32,
    },
    /// Refuse connections (accept and close at once).
    Refuse,
    /// Pass until the registry has answered `202 Accepted` this many times
    /// in all (upload start and each chunk), close that connection after
    /// the answer, then refuse: the client sees the registry vanish between
    /// two chunks.
    RefuseAfterAccepted(u32),
}

pub struct ProxyState {
    pub mode: Mutex<Mode>,
    /// Client→registry bytes forwarded.
    pub up_bytes: AtomicU64,
    pub drops: AtomicU32,
    pub refused: AtomicU32,
    pub accepted: AtomicU32,
    /// When each 429 was sent, relative to the proxy's start.
    pub throttled: Mutex<Vec<Duration>>,
    started: Instant,
}

pub struct Proxy {
    pub port: u16,
    pub state: Arc<ProxyState>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            mode: Mutex::new(Mode::Pass),
            up_bytes: AtomicU64::new(0),
            drops: AtomicU32::new(0),
            refused: AtomicU32::new(0),
            accepted: AtomicU32::new(0),
            throttled: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move { handle(client, target_port, st).await });
            }
        });
        Proxy { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }
}

fn mode(st: &ProxyState) -> Mode {
    *st.mode.lock().unwrap()
}

async fn handle(mut client: TcpStream, target_port: u16, st: Arc<ProxyState>) {
    match mode(&st) {
        Mode::Refuse => {
            st.refused.fetch_add(1, Ordering::SeqCst);
            return;
        }
        Mode::Throttle { retry_after } => {
            throttle(&mut client, retry_after, &st).await;
            return;
        }
        _ => {}
    }
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let st_down = st.clone();
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match ur.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let answers = buf[..n]
                .windows(13)
                .filter(|w| *w == b"HTTP/1.1 202 ")
                .count() as u32;
            let mut last = false;
            if answers > 0 {
                let total = st_down.accepted.fetch_add(answers, Ordering::SeqCst) + answers;
                if let Mode::RefuseAfterAccepted(k) = mode(&st_down)
                    && total >= k
                {
                    // Refuse before the client can act on this answer.
                    *st_down.mode.lock().unwrap() = Mode::Refuse;
                    last = true;
                }
            }
            if cw.write_all(&buf[..n]).await.is_err() || last {
                break;
            }
        }
        let _ = cw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if mode(&st) == Mode::Refuse {
            break; // the registry "went away": nothing more reaches it
        }
        let before = st.up_bytes.fetch_add(n as u64, Ordering::SeqCst);
        if let Mode::DropAt(at) = mode(&st)
            && before + n as u64 > at
        {
            *st.mode.lock().unwrap() = Mode::Pass;
            st.drops.fetch_add(1, Ordering::SeqCst);
            down.abort();
            return; // both halves dropped: the connection is cut
        }
        if uw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = uw.shutdown().await;
    let _ = down.await;
}

/// Read one request (head and body), answer 429 and close.
async fn throttle(client: &mut TcpStream, retry_after: u32, st: &ProxyState) {
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_lowercase();
    let body_len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while pending.len() < head_end + body_len {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
    st.throttled.lock().unwrap().push(st.started.elapsed());
    let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down, said the proxy"}]}"#;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    // One answer per connection: the client's next try opens a new one,
    // which sees the proxy's mode at that time.
    let _ = client.shutdown().await;
}
