//! nginx (Debian's package; `scripts/services.sh up` installs it) as a
//! reverse proxy in front of a private registry, behaving as the public
//! registries do where Kiln must cope: `/v2/_catalog` refused (Docker Hub
//! and GHCR answer it with an error), and, while the `throttle` file
//! exists, every request answered `429 Too Many Requests` with
//! `Retry-After` and Docker Hub's `ratelimit-limit`/`ratelimit-remaining`
//! headers plus `ratelimit-reset`. Its access log records, per request,
//! the method, URI, status, `Authorization` header and user agent, so a
//! test can say what reached the registry and with which credentials.
//! Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::free_port;

pub struct Nginx {
    pub port: u16,
    pub access_log: PathBuf,
    /// While this file exists, every `/v2/` request gets a 429.
    pub throttle: PathBuf,
    child: Option<Child>,
}

/// One line of the access log.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// When the answer was sent, in seconds since the epoch.
    pub at: f64,
    pub method: String,
    pub uri: String,
    pub status: u16,
    /// `-` when none was sent.
    pub authorization: String,
    pub user_agent: String,
}

impl Nginx {
    /// Proxy `127.0.0.1:<port>` to the registry on `upstream`; 429s carry
    /// `Retry-After: retry_after` and `ratelimit-reset: retry_after`.
    pub fn start(dir: &Path, upstream: u16, retry_after: u32) -> Nginx {
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let access_log = dir.join("access.log");
        let throttle = dir.join("throttle");
        let conf = dir.join("nginx.conf");
        let tmp = dir.join("tmp");
        std::fs::write(
            &conf,
            format!(
                r#"user root;
worker_processes 1;
pid {pid};
error_log {err} warn;
events {{ worker_connections 256; }}
http {{
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  log_format kiln '$msec\t$request_method\t$request_uri\t$status\t$http_authorization\t$http_user_agent';
  access_log {log} kiln;
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    chunked_transfer_encoding on;
    location = /v2/_catalog {{
      default_type application/json;
      return 401 '{{"errors":[{{"code":"UNAUTHORIZED","message":"catalog listing is not offered here","detail":null}}]}}';
    }}
    location /v2/ {{
      if (-f {throttle}) {{
        add_header Retry-After {retry_after} always;
        add_header ratelimit-limit "100;w=21600" always;
        add_header ratelimit-remaining "0;w=21600" always;
        add_header ratelimit-reset {retry_after} always;
        return 429 '{{"errors":[{{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit (nginx in front of the test registry)"}}]}}';
      }}
      proxy_pass http://127.0.0.1:{upstream};
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-Proto http;
      proxy_http_version 1.1;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 900;
    }}
  }}
}}
"#,
                pid = dir.join("nginx.pid").display(),
                err = dir.join("error.log").display(),
                tmp = tmp.display(),
                log = access_log.display(),
                throttle = throttle.display(),
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx (scripts/services.sh up installs it)");
        let n = Nginx {
            port,
            access_log,
            throttle,
            child: Some(child),
        };
        super::wait_until("nginx to listen", 30, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        n
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn throttle(&self, on: bool) {
        if on {
            std::fs::write(&self.throttle, "on").unwrap();
        } else {
            let _ = std::fs::remove_file(&self.throttle);
        }
    }

    /// Every request logged so far.
    pub fn log(&self) -> Vec<Logged> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                Some(Logged {
                    at: f.first()?.parse().ok()?,
                    method: f.get(1)?.to_string(),
                    uri: f.get(2)?.to_string(),
                    status: f.get(3)?.parse().ok()?,
                    authorization: f.get(4)?.to_string(),
                    user_agent: f.get(5).unwrap_or(&"").to_string(),
                })
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (which SIGKILL of the
        // master alone would leave serving).
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}
