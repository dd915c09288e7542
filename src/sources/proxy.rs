//! The per-build source server as the build's HTTP proxy, so that a build
//! reaches it without host networking and its recipes never name a port.
//!
//! Recipes fetch `http://kiln-sources/<name>` ([`SOURCES_HOST`]), the same
//! text in every build, so a step two builds share renders byte for byte
//! the same and the engine's layer cache keeps it. The build is given
//! `http_proxy`/`HTTP_PROXY` = `http://kiln:<token>@<addr>:<port>`: Docker's
//! predefined proxy arguments, which enter neither the cache key nor the
//! image's history. The proxy answers only requests carrying the build's
//! token (407 otherwise): `kiln-sources` from the build's tree, any other
//! host forwarded (the distribution's package mirror, as host networking
//! allowed before), `CONNECT` tunnelled (HTTPS mirrors).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::SourcesError;
use super::serve::{Tree, serve_file};

/// The host name recipes fetch sources from.
pub const SOURCES_HOST: &str = "kiln-sources";

/// `{{sources_url}}` as every Docker build sees it.
pub const SOURCES_URL: &str = "http://kiln-sources";

/// The user name in the proxy's credentials.
const USER: &str = "kiln";

struct Proxy {
    tree: Tree,
    /// `Basic base64(kiln:<token>)`.
    expected: String,
    upstream: reqwest::Client,
}

/// A running proxy; dropped, it stops.
pub struct SourceProxy {
    addr: SocketAddr,
    token: String,
    task: tokio::task::JoinHandle<()>,
}

impl SourceProxy {
    /// Serve `tree` as a proxy on `bind` (port 0: an ephemeral one), for
    /// requests with a fresh random token only.
    pub async fn start(tree: Tree, bind: SocketAddr) -> Result<SourceProxy, SourcesError> {
        let token = random_token()?;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{token}"))
        );
        let upstream = reqwest::Client::builder().no_proxy().build().map_err(|e| {
            SourcesError::io("source proxy: the upstream client")(std::io::Error::other(e))
        })?;
        let state = Arc::new(Proxy {
            tree,
            expected,
            upstream,
        });
        let app = axum::Router::new().fallback(handle).with_state(state);
        let (addr, task) = super::serve::listen(bind, app, "source proxy").await?;
        Ok(SourceProxy { addr, token, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value of the build's `http_proxy`, credentials included.
    pub fn proxy_url(&self) -> String {
        self.proxy_url_at(self.addr)
    }

    /// The same, for a build that reaches the proxy at `addr` (the far
    /// end of an ssh forward to it).
    pub fn proxy_url_at(&self, addr: SocketAddr) -> String {
        format!("http://{USER}:{}@{addr}", self.token)
    }
}

impl Drop for SourceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn random_token() -> Result<String, SourcesError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(SourcesError::io("source proxy: a token from /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected)
}

async fn handle(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    if !authorized(req.headers(), &p.expected) {
        return (
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            [(header::PROXY_AUTHENTICATE, "Basic realm=\"kiln-sources\"")],
            "this proxy serves one build only\n",
        )
            .into_response();
    }
    if req.method() == Method::CONNECT {
        return tunnel(req);
    }
    let host = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_string())
        })
        .unwrap_or_default();
    if host == SOURCES_HOST {
        let path = req.uri().path().trim_start_matches('/').to_string();
        return match req.method() {
            &Method::GET | &Method::HEAD => serve_file(&p.tree, &path).await,
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        };
    }
    forward(&p.upstream, req).await
}

/// Headers that belong to one connection, never forwarded.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "proxy-connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// A request for another host, sent on and its answer streamed back.
async fn forward(client: &reqwest::Client, req: Request) -> Response {
    let url = req.uri().to_string();
    if req.uri().scheme_str() != Some("http") {
        return (StatusCode::BAD_REQUEST, "absolute http:// URLs only\n").into_response();
    }
    let method = req.method().clone();
    let mut headers = HeaderMap::new();
    for (k, v) in req.headers() {
        if !hop_by_hop(k) && k != header::HOST {
            headers.append(k.clone(), v.clone());
        }
    }
    let body = reqwest::Body::wrap_stream(req.into_body().into_data_stream());
    let sent = client
        .request(method, &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                if !hop_by_hop(k) {
                    out = out.header(k, v);
                }
            }
            out.body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "source proxy: forwarding failed");
            (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response()
        }
    }
}

/// `CONNECT host:port`: a tunnel, once the client has the 200.
fn tunnel(req: Request) -> Response {
    let Some(target) = req.uri().authority().map(|a| a.to_string()) else {
        return (StatusCode::BAD_REQUEST, "CONNECT host:port\n").into_response();
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(%target, error = %e, "source proxy: CONNECT upgrade failed");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(upgraded);
        match tokio::net::TcpStream::connect(&target).await {
            Ok(mut server) => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
            Err(e) => tracing::warn!(%target, error = %e, "source proxy: CONNECT failed"),
        }
    });
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP server on loopback answering `hello` (another host a
    /// build's package manager would reach).
    async fn other_host() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = axum::Router::new().fallback(|| async { "hello" });
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    }

    async fn proxy() -> (tempfile::TempDir, SourceProxy) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("payload.txt");
        std::fs::write(&file, "from the mirror\n").unwrap();
        let mut tree = Tree::new();
        tree.insert("payload.txt", file);
        let p = SourceProxy::start(tree, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        (dir, p)
    }

    fn client(proxy: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(proxy).unwrap())
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn the_mirror_and_other_hosts_are_served_only_with_the_builds_token() {
        let (_d, p) = proxy().await;
        let other = other_host().await;
        let with = client(&p.proxy_url());
        let r = with
            .get("http://kiln-sources/payload.txt")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "from the mirror\n");
        let r = with
            .get("http://kiln-sources/nothing")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = with.get(format!("http://{other}/x")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "hello");
        // Without the token, or with another one: refused, nothing served.
        for url in [
            format!("http://{}", p.addr()),
            format!("http://kiln:wrong@{}", p.addr()),
        ] {
            let r = client(&url)
                .get("http://kiln-sources/payload.txt")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 407, "{url}");
        }
    }

    #[tokio::test]
    async fn connect_tunnels_with_the_token_and_is_refused_without() {
        let (_d, p) = proxy().await;
        let other = other_host().await;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("kiln:{}", p.token))
        );
        for (credentials, expect) in [(Some(auth), "200"), (None, "407")] {
            let mut s = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
            let mut req = format!("CONNECT {other} HTTP/1.1\r\nHost: {other}\r\n");
            if let Some(a) = credentials {
                req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
            }
            req.push_str("\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(head.starts_with(&format!("HTTP/1.1 {expect}")), "{head}");
            if expect == "200" {
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                assert!(out.ends_with("hello"), "{out}");
            }
        }
    }
}
