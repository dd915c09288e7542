//! A token server speaking Docker's token protocol, for a real
//! `docker-registry` configured with `auth: token`: `GET /token?service=…
//! &scope=…` with basic credentials, and the OAuth2 `POST /token` that
//! exchanges an identity token (`grant_type=refresh_token`). It refuses
//! anonymous requests (the registries behind it are private), checks the
//! credentials it was given, grants what each scope asks, signs an RS256
//! JWT with a key and certificate made by `openssl` (the registry trusts
//! the certificate through `rootcertbundle`), and records every request:
//! who asked (the `Authorization` header or the refresh token), for which
//! scopes, and which token it answered, so a test can say which
//! credentials reached which server.
//!
//! It runs on its own runtime thread, so sync tests that drive the `kiln`
//! binary and async tests can both use it; it stops when dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine as _;

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub method: String,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    /// The `refresh_token` of an OAuth2 POST.
    pub refresh_token: Option<String>,
    pub scopes: Vec<String>,
    /// The status answered and, when granted, the token.
    pub status: u16,
    pub token: Option<String>,
}

#[derive(Clone)]
struct Issuer {
    service: String,
    key: PathBuf,
    cert_der_b64: String,
    /// user → password.
    users: HashMap<String, String>,
    /// identity (refresh) token → user.
    identity_tokens: HashMap<String, String>,
    expires_in: u64,
    log: Arc<Mutex<Vec<TokenRequest>>>,
}

pub struct TokenServer {
    pub port: u16,
    /// The certificate the registry must trust (`rootcertbundle`).
    pub cert: PathBuf,
    pub service: String,
    pub log: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenServer {
    /// A server in `dir` (key, certificate) for `service`, accepting
    /// `users` (name, password) and `identity_tokens` (token, user), whose
    /// tokens live `expires_in` seconds.
    pub fn start(
        dir: &Path,
        service: &str,
        users: &[(&str, &str)],
        identity_tokens: &[(&str, &str)],
        expires_in: u64,
    ) -> TokenServer {
        std::fs::create_dir_all(dir).unwrap();
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={service}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = run(Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert));
        let log = Arc::new(Mutex::new(Vec::new()));
        let issuer = Issuer {
            service: service.to_string(),
            key,
            cert_der_b64: base64::engine::general_purpose::STANDARD.encode(der),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            identity_tokens: identity_tokens
                .iter()
                .map(|(t, u)| (t.to_string(), u.to_string()))
                .collect(),
            expires_in,
            log: log.clone(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/token", axum::routing::get(token).post(oauth))
                    .with_state(issuer);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        TokenServer {
            port,
            cert,
            service: service.to_string(),
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The `auth:` section of a registry's configuration that trusts it.
    pub fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: kiln-test-issuer\n    rootcertbundle: {}\n",
            self.realm(),
            self.service,
            self.cert.display()
        )
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sign a token granting `scopes` to `user`.
fn sign(iss: &Issuer, user: &str, scopes: &[String]) -> String {
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = chrono::Utc::now().timestamp();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [iss.cert_der_b64]});
    let claims = serde_json::json!({
        "iss": "kiln-test-issuer", "sub": user, "aud": iss.service,
        "exp": now + iss.expires_in as i64, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", rand_id()), "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let file = iss.key.with_file_name(format!("input-{}", rand_id()));
    std::fs::write(&file, &input).unwrap();
    let sig = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&iss.key)
        .arg(&file));
    let _ = std::fs::remove_file(&file);
    format!("{input}.{}", b64url(&sig))
}

fn rand_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The user a basic `Authorization` header names, if its password is right.
fn basic_user(iss: &Issuer, auth: Option<&str>) -> Option<String> {
    let b = auth?.strip_prefix("Basic ")?;
    let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).ok()?).ok()?;
    let (u, p) = text.split_once(':')?;
    (iss.users.get(u).map(String::as_str) == Some(p)).then(|| u.to_string())
}

fn answer(iss: &Issuer, mut req: TokenRequest, user: Option<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(user) = user else {
        req.status = 401;
        iss.log.lock().unwrap().push(req);
        return (axum::http::StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    };
    let token = sign(iss, &user, &req.scopes);
    req.status = 200;
    req.token = Some(token.clone());
    iss.log.lock().unwrap().push(req);
    axum::Json(serde_json::json!({
        "token": token, "access_token": token, "expires_in": iss.expires_in,
    }))
    .into_response()
}

async fn token(
    axum::extract::State(iss): axum::extract::State<Issuer>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let pairs: Vec<(String, String)> = url_pairs(query.as_deref().unwrap_or(""));
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let req = TokenRequest {
        method: "GET".into(),
        authorization: auth.clone(),
        refresh_token: None,
        scopes: pairs
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .collect(),
        status: 0,
        token: None,
    };
    // No anonymous access: every registry here is private.
    let user = basic_user(&iss, auth.as_deref());
    answer(&iss, req, user)
}

async fn oauth(
    axum::extract::State(iss): axum::extract::State<Issuer>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::response::Response {
    let form: HashMap<String, String> = url_pairs(&body).into_iter().collect();
    let refresh = form.get("refresh_token").cloned();
    let req = TokenRequest {
        method: "POST".into(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        refresh_token: refresh.clone(),
        scopes: form
            .get("scope")
            .map(|s| s.split(' ').map(str::to_string).collect())
            .unwrap_or_default(),
        status: 0,
        token: None,
    };
    let user = match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => refresh.and_then(|t| iss.identity_tokens.get(&t).cloned()),
        Some("password") => {
            let (u, p) = (form.get("username"), form.get("password"));
            u.filter(|u| iss.users.get(*u) == p).cloned()
        }
        _ => None,
    };
    answer(&iss, req, user)
}

/// `a=b&c=d` with percent-decoding.
fn url_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
