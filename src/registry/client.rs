//! The HTTP side of the OCI distribution API: auth, retries, rate limit and
//! concurrency limit. Everything else in `registry` goes through
//! [`Registry::send`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Method, StatusCode, header};
use tokio::sync::{Mutex, Semaphore};

use super::RegistryError;
use crate::config;

/// Credentials for basic auth or for fetching bearer tokens.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log secrets.
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// A request body that can be sent again on retry.
#[derive(Clone)]
pub struct Body {
    pub bytes: bytes::Bytes,
    pub content_type: Option<String>,
    /// When set, the body is this range of a file instead of `bytes`,
    /// streamed afresh from disk on each attempt (never held in memory).
    pub file: Option<FileRange>,
}

impl Body {
    pub fn bytes(bytes: bytes::Bytes, content_type: &str) -> Body {
        Body {
            bytes,
            content_type: Some(content_type.to_string()),
            file: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FileRange {
    pub path: std::path::PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl FileRange {
    async fn stream(&self) -> std::io::Result<reqwest::Body> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut f = tokio::fs::File::open(&self.path).await?;
        f.seek(std::io::SeekFrom::Start(self.offset)).await?;
        let reader = tokio::io::BufReader::with_capacity(1 << 20, f.take(self.len));
        Ok(reqwest::Body::wrap_stream(
            tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20),
        ))
    }
}

pub struct Registry {
    /// `http://127.0.0.1:5000`
    pub base: String,
    /// `127.0.0.1:5000`, for references.
    pub host: String,
    http: reqwest::Client,
    creds: Option<Credentials>,
    /// scope → bearer token.
    tokens: Mutex<HashMap<String, String>>,
    permits: Arc<Semaphore>,
    /// Next instant a request may start (client-side rate limit).
    next_slot: Mutex<Instant>,
    interval: Duration,
    /// How far ahead of the schedule a burst may run.
    burst: Duration,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    /// Upload chunk size: each chunk is one PATCH, the unit of resumption.
    pub chunk_size: u64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .finish()
    }
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

/// Credentials from the environment, then from a Docker config.json.
pub fn credentials(cfg: &config::Registry) -> Option<Credentials> {
    if let (Ok(u), Ok(p)) = (
        std::env::var("KILN_REGISTRY_USERNAME"),
        std::env::var("KILN_REGISTRY_PASSWORD"),
    ) {
        return Some(Credentials {
            username: u,
            password: p,
        });
    }
    let path = if let Some(rest) = cfg.docker_config.strip_prefix("~/") {
        std::path::PathBuf::from(std::env::var("HOME").ok()?).join(rest)
    } else {
        std::path::PathBuf::from(&cfg.docker_config)
    };
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let host = host_of(&cfg.url);
    let auth = v["auths"][host.as_str()]["auth"].as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

impl Registry {
    pub fn new(cfg: &config::Registry) -> Result<Registry, RegistryError> {
        let host = host_of(&cfg.url);
        let loopback =
            host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]");
        if cfg.url.starts_with("http://") && !loopback && !cfg.insecure {
            return Err(RegistryError::Config(format!(
                "registry.url {}: plain HTTP is only allowed for loopback registries unless registry.insecure = true",
                cfg.url
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(cfg.concurrency)
            .build()
            .map_err(|e| RegistryError::Config(format!("HTTP client: {e}")))?;
        Ok(Registry {
            base: cfg.url.trim_end_matches('/').to_string(),
            host,
            http,
            creds: credentials(cfg),
            tokens: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            next_slot: Mutex::new(Instant::now()),
            interval: Duration::from_secs_f64(1.0 / cfg.rate_limit.max(0.001)),
            burst: Duration::from_secs_f64(
                cfg.concurrency.max(1) as f64 / cfg.rate_limit.max(0.001),
            ),
            max_attempts: 5,
            base_backoff: Duration::from_millis(200),
            chunk_size: super::CHUNK,
        })
    }

    /// A client for an upstream registry Kiln only reads parents from:
    /// fewer attempts and a shorter connect timeout, so that an unreachable
    /// upstream costs seconds, not minutes (the run then stops asking it).
    pub fn upstream(cfg: &config::Registry) -> Result<Registry, RegistryError> {
        let mut r = Registry::new(cfg)?;
        r.http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| RegistryError::Config(format!("HTTP client: {e}")))?;
        r.max_attempts = 2;
        Ok(r)
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Client-side rate limit: a virtual schedule (GCRA) spacing requests
    /// `interval` apart on average, with a burst of `concurrency` allowed.
    async fn rate_limit(&self) {
        let wait = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let tat = (*next).max(now);
            *next = tat + self.interval;
            tat.checked_sub(self.burst)
                .unwrap_or(now)
                .saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Send with auth, rate limit, concurrency limit and retries on
    /// connection errors, 429 and 5xx (honouring Retry-After).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Body>,
        scope: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = self.url(path);
        let mut attempt = 0;
        let mut authed_once = false;
        loop {
            attempt += 1;
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| RegistryError::Config("registry client closed".into()))?;
            self.rate_limit().await;
            let mut req = self.http.request(method.clone(), &url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some(b) = &body {
                if let Some(ct) = &b.content_type {
                    req = req.header(header::CONTENT_TYPE, ct);
                }
                req = match &b.file {
                    Some(range) => {
                        let stream = range.stream().await.map_err(|e| RegistryError::Io {
                            path: range.path.display().to_string(),
                            source: e,
                        })?;
                        req.header(header::CONTENT_LENGTH, range.len).body(stream)
                    }
                    None => req
                        .header(header::CONTENT_LENGTH, b.bytes.len())
                        .body(b.bytes.clone()),
                };
            }
            if let Some(token) = self.tokens.lock().await.get(scope) {
                req = req.bearer_auth(token);
            } else if let Some(c) = &self.creds
                && authed_once
            {
                req = req.basic_auth(&c.username, Some(&c.password));
            }
            let result = req.send().await;
            let retry_after = match result {
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !authed_once {
                        authed_once = true;
                        let challenge = resp
                            .headers()
                            .get(header::WWW_AUTHENTICATE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        self.authenticate(&challenge, scope).await?;
                        attempt -= 1;
                        continue;
                    }
                    if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                        && attempt < self.max_attempts
                    {
                        let ra = resp
                            .headers()
                            .get(header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs);
                        tracing::warn!(%url, %status, attempt, "registry asked us to retry");
                        ra
                    } else {
                        return Ok(resp);
                    }
                }
                Err(e)
                    if attempt < self.max_attempts
                        && (e.is_connect() || e.is_timeout() || e.is_request()) =>
                {
                    tracing::warn!(%url, error = %e, attempt, "registry request failed; retrying");
                    None
                }
                Err(e) => {
                    return Err(RegistryError::Http {
                        url,
                        message: e.to_string(),
                    });
                }
            };
            let backoff = retry_after.unwrap_or(self.base_backoff * 2u32.pow(attempt.min(6)));
            tokio::time::sleep(backoff.min(Duration::from_secs(60))).await;
        }
    }

    /// Answer a 401: bearer token from the realm, or basic auth.
    async fn authenticate(&self, challenge: &str, scope: &str) -> Result<(), RegistryError> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            if self.creds.is_none() {
                return Err(RegistryError::Auth(format!(
                    "{} needs credentials: set KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD or log in with docker",
                    self.host
                )));
            }
            return Ok(());
        };
        let mut realm = String::new();
        let mut service = String::new();
        for part in split_params(params) {
            if let Some((k, v)) = part.split_once('=') {
                let v = v.trim_matches('"').to_string();
                match k.trim() {
                    "realm" => realm = v,
                    "service" => service = v,
                    _ => {}
                }
            }
        }
        if realm.is_empty() {
            return Err(RegistryError::Auth(format!(
                "bad WWW-Authenticate from {}: {challenge}",
                self.host
            )));
        }
        let mut req = self
            .http
            .get(&realm)
            .query(&[("service", service.as_str()), ("scope", scope)]);
        if let Some(c) = &self.creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RegistryError::Auth(format!("token from {realm}: {e}")))?;
        if !resp.status().is_success() {
            return Err(RegistryError::Auth(format!(
                "token from {realm}: {}",
                resp.status()
            )));
        }
        let v: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| RegistryError::Auth(format!("token from {realm}: {e}")))?;
        let token = v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .ok_or_else(|| {
                RegistryError::Auth(format!("token from {realm}: no token in answer"))
            })?;
        self.tokens
            .lock()
            .await
            .insert(scope.to_string(), token.to_string());
        Ok(())
    }
}

/// Split `a="x,y",b="z"` on commas outside quotes.
fn split_params(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params() {
        let p = split_params(
            r#"realm="https://auth/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], r#"scope="repository:a/b:pull,push""#);
    }

    #[test]
    fn credentials_are_never_printed() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
