//! The HTTP side of the OCI distribution API: auth, retries, rate limits
//! and concurrency limit. Everything else in `registry` goes through
//! [`Registry::send`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use tokio::sync::{Mutex, OnceCell, Semaphore};

use super::auth::{Credentials, Secret, host_of};
use super::limits::{self, Schedule};
use super::token::Token;
use super::{RegistryError, error_chain};
use crate::config;

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
    pub(super) http: reqwest::Client,
    /// Kiln's registry settings: where this host's credentials come from.
    settings: config::Registry,
    /// This host's credentials, looked up at the first challenge.
    creds: OnceCell<Option<Credentials>>,
    /// scope → bearer token.
    pub(super) tokens: Mutex<HashMap<String, Token>>,
    /// The registry asked for basic auth: every request carries it.
    pub(super) basic: AtomicBool,
    permits: Arc<Semaphore>,
    schedule: Schedule,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    /// The longest a request waits out a registry's rate limit (429,
    /// Retry-After, ratelimit-*) before failing as rate-limited.
    pub max_rate_wait: Duration,
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

/// Whether `host` is this machine.
fn is_loopback(host: &str) -> bool {
    host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
}

impl Registry {
    /// A client for Kiln's own registry, `cfg.url`.
    pub fn new(cfg: &config::Registry) -> Result<Registry, RegistryError> {
        Registry::for_url(cfg, &cfg.url)
    }

    /// A client for the registry at `url`, with Kiln's registry settings
    /// `cfg` (limits, where config.json is): credentials are those of
    /// `url`'s own host, never `cfg.url`'s.
    pub fn for_url(cfg: &config::Registry, url: &str) -> Result<Registry, RegistryError> {
        let host = host_of(url);
        if url.starts_with("http://") && !is_loopback(&host) && !cfg.insecure {
            return Err(RegistryError::Config(format!(
                "registry {url}: plain HTTP is only allowed for loopback registries unless registry.insecure = true"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(cfg.concurrency)
            .build()
            .map_err(|e| RegistryError::Config(format!("HTTP client: {e}")))?;
        Ok(Registry {
            base: url.trim_end_matches('/').to_string(),
            host,
            http,
            settings: cfg.clone(),
            creds: OnceCell::new(),
            tokens: Mutex::new(HashMap::new()),
            basic: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            schedule: Schedule::new(cfg.rate_limit, cfg.concurrency),
            max_attempts: 5,
            base_backoff: Duration::from_millis(200),
            max_rate_wait: Duration::from_secs(cfg.rate_limit_max_wait_secs),
            chunk_size: super::CHUNK,
        })
    }

    /// A client for an upstream registry Kiln only reads parents from
    /// (`url`): its own credentials, fewer attempts and a shorter connect
    /// timeout, so that an unreachable upstream costs seconds, not
    /// minutes (the run then stops asking it).
    pub fn upstream(cfg: &config::Registry, url: &str) -> Result<Registry, RegistryError> {
        let mut r = Registry::for_url(cfg, url)?;
        r.http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| RegistryError::Config(format!("HTTP client: {e}")))?;
        r.max_attempts = 2;
        Ok(r)
    }

    /// This registry's credentials (resolved once, at the first
    /// challenge).
    pub(super) async fn credentials(&self) -> Result<Option<Credentials>, RegistryError> {
        self.creds
            .get_or_try_init(|| super::auth::credentials_for(&self.settings, &self.host))
            .await
            .cloned()
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Build one attempt of a request, with the body afresh and the auth
    /// this registry wants.
    async fn request(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Body>,
        scope: &str,
    ) -> Result<reqwest::RequestBuilder, RegistryError> {
        let mut req = self.http.request(method.clone(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
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
        if let Some(token) = self.cached_token(scope).await {
            req = req.bearer_auth(token);
        } else if self.basic.load(Ordering::Relaxed)
            && let Some(c) = self.credentials().await?
            && let Secret::Password(p) = &c.secret
        {
            req = req.basic_auth(&c.username, Some(p));
        }
        Ok(req)
    }

    /// Wait out a hold an earlier 429 put on this registry, or fail at
    /// once when it lasts longer than this request may still wait.
    async fn respect_hold(&self, url: &str, waited: &mut Duration) -> Result<(), RegistryError> {
        let Some((left, until, said)) = limits::held(&self.host) else {
            return Ok(());
        };
        if *waited + left > self.max_rate_wait {
            return Err(RegistryError::RateLimited(Box::new(super::RateLimited {
                registry: self.host.clone(),
                url: url.to_string(),
                until,
                said: if said.is_empty() {
                    "an earlier answer asked Kiln to wait".into()
                } else {
                    format!("an earlier answer asked Kiln to wait: {said}")
                },
                max_wait: self.max_rate_wait.as_secs(),
            })));
        }
        tokio::time::sleep(left).await;
        *waited += left;
        Ok(())
    }

    /// Send with auth, rate limits, concurrency limit and retries: on
    /// connection errors and 5xx up to `max_attempts`, on 429 for as long
    /// as the registry asks within `max_rate_wait`.
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
        let mut authed = false;
        let mut waited = Duration::ZERO;
        loop {
            attempt += 1;
            self.respect_hold(&url, &mut waited).await?;
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| RegistryError::Config("registry client closed".into()))?;
            self.schedule.slot().await;
            let req = self
                .request(&method, &url, headers, body.as_ref(), scope)
                .await?;
            let backoff = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let announced = limits::announced(resp.headers());
                    if status == StatusCode::UNAUTHORIZED && !authed {
                        authed = true;
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
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        let wait = announced
                            .wait()
                            .unwrap_or(self.base_backoff * 2u32.pow(attempt.min(10)));
                        limits::hold(&self.host, wait, &announced.describe());
                        if waited + wait > self.max_rate_wait {
                            return Err(self.rate_limited(&url, resp, &announced, wait).await);
                        }
                        tracing::warn!(registry = %self.host, %url, limits = %announced.describe(), wait_secs = wait.as_secs_f64(), "registry rate limit: waiting");
                        tokio::time::sleep(wait).await;
                        waited += wait;
                        attempt -= 1;
                        continue;
                    }
                    self.note_limits(&announced);
                    if status.is_server_error() && attempt < self.max_attempts {
                        tracing::warn!(registry = %self.host, %url, %status, attempt, "registry failed on its side; retrying");
                        announced.retry_after
                    } else {
                        return Ok(resp);
                    }
                }
                Err(e)
                    if attempt < self.max_attempts
                        && (e.is_connect() || e.is_timeout() || e.is_request()) =>
                {
                    tracing::warn!(registry = %self.host, %url, error = %error_chain(&e), attempt, "registry request failed; retrying");
                    None
                }
                Err(e) => return Err(self.broken(&url, &e)),
            };
            let wait = backoff.unwrap_or(self.base_backoff * 2u32.pow(attempt.min(6)));
            tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
        }
    }

    /// A registry that did not answer, or whose connection broke.
    pub(super) fn broken(&self, url: &str, e: &reqwest::Error) -> RegistryError {
        RegistryError::Http {
            registry: self.host.clone(),
            url: url.to_string(),
            message: error_chain(e),
        }
    }

    /// A successful answer may say the window is spent: then hold the
    /// registry until it resets, so the next request waits instead of
    /// being refused.
    fn note_limits(&self, a: &limits::Announced) {
        if a.remaining == Some(0)
            && let Some(reset) = a.reset
        {
            tracing::warn!(registry = %self.host, limits = %a.describe(), "registry rate limit spent");
            limits::hold(&self.host, reset, &a.describe());
        } else if let (Some(r), Some(l)) = (a.remaining, a.limit)
            && r * 10 < l
        {
            tracing::info!(registry = %self.host, limits = %a.describe(), "registry rate limit nearly spent");
        }
    }

    /// The error for a 429 whose wait is longer than Kiln waits.
    async fn rate_limited(
        &self,
        url: &str,
        resp: reqwest::Response,
        announced: &limits::Announced,
        wait: Duration,
    ) -> RegistryError {
        let body: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        let said = [announced.describe(), body.trim().to_string()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        RegistryError::RateLimited(Box::new(super::RateLimited {
            registry: self.host.clone(),
            url: url.to_string(),
            until: chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
            said,
            max_wait: self.max_rate_wait.as_secs(),
        }))
    }
}
