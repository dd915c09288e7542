//! Registry authentication against the real registry binary: basic auth
//! (htpasswd) and bearer tokens (distribution's token auth, with a token
//! server of our own that signs RS256 JWTs with openssl). Credentials come
//! from a Docker config.json, as on a release manager's machine, and never
//! appear in errors or debug output.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::PrivateRegistry;
use kiln::registry::Registry;

const USER: &str = "kiln";
const PASSWORD: &str = "s3cret-Pa55";

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A client whose credentials come from `docker_config` (or none).
fn client(url: &str, docker_config: Option<&Path>) -> Registry {
    let mut cfg = kiln::config::Config::defaults(Path::new("/"))
        .unwrap()
        .registry;
    cfg.url = url.to_string();
    cfg.docker_config = docker_config
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/nonexistent/config.json".into());
    let mut reg = Registry::new(&cfg).unwrap();
    reg.max_attempts = 2;
    reg
}

fn docker_config(dir: &Path, host: &str, password: &str) -> std::path::PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::json!({"auths": {host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    path
}

async fn round_trip(reg: &Registry, repo: &str) {
    reg.ping().await.unwrap();
    let (d, _) = reg
        .push_blob(repo, bytes::Bytes::from_static(b"authenticated blob"))
        .await
        .unwrap();
    assert_eq!(
        reg.pull_blob(repo, &d).await.unwrap(),
        b"authenticated blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_docker_config() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
    std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
    let registry = PrivateRegistry::start_with(
        &dir.path().join("registry"),
        &format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            dir.path().join("htpasswd").display()
        ),
    );
    let host = format!("127.0.0.1:{}", registry.port);
    // Anonymous: refused, saying how to give credentials.
    let err = client(&registry.url(), None)
        .ping()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs credentials"), "{err}");
    // Wrong password: the registry's refusal, not the password.
    let bad = docker_config(dir.path(), &host, "wrong-password");
    let reg = client(&registry.url(), Some(&bad));
    let err = reg.ping().await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains("wrong-password"), "{err}");
    // Right password: push and pull.
    let good = docker_config(dir.path(), &host, PASSWORD);
    let reg = client(&registry.url(), Some(&good));
    round_trip(&reg, "auth/basic").await;
    assert!(!format!("{reg:?}").contains(PASSWORD));
}

/// A token server: checks basic credentials, then signs a JWT granting
/// what the scope asks for, with the certificate in `x5c`.
#[derive(Clone)]
struct Issuer {
    key: std::path::PathBuf,
    cert_der_b64: String,
    scopes: Arc<Mutex<Vec<String>>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn token(
    axum::extract::State(iss): axum::extract::State<Issuer>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (axum::http::StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    let scope = q.get("scope").cloned().unwrap_or_default();
    iss.scopes.lock().unwrap().push(scope.clone());
    let access: Vec<serde_json::Value> = scope
        .split(' ')
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = chrono::Utc::now().timestamp();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [iss.cert_der_b64]});
    let claims = serde_json::json!({
        "iss": "kiln-test-issuer", "sub": USER, "aud": "kiln-test",
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", std::process::id()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let input = iss.key.with_extension("input");
    std::fs::write(&input, &signing_input).unwrap();
    let sig = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&iss.key)
        .arg(&input));
    let jwt = format!("{signing_input}.{}", b64url(&sig));
    axum::Json(serde_json::json!({"token": jwt, "expires_in": 300})).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_from_the_registry_realm() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kiln-test-token",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let der = run(Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert));
    let issuer = Issuer {
        key: key.clone(),
        cert_der_b64: base64::engine::general_purpose::STANDARD.encode(der),
        scopes: Arc::new(Mutex::new(Vec::new())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .with_state(issuer.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let registry = PrivateRegistry::start_with(
        &dir.path().join("registry"),
        &format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: kiln-test\n    issuer: kiln-test-issuer\n    rootcertbundle: {}\n",
            cert.display()
        ),
    );
    let host = format!("127.0.0.1:{}", registry.port);
    // Bad credentials: the token server's refusal, named.
    let bad = docker_config(dir.path(), &host, "wrong-password");
    let err = client(&registry.url(), Some(&bad))
        .ping()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("token from") && err.contains("401"), "{err}");
    assert!(!err.contains("wrong-password"), "{err}");
    // Good credentials: a token per scope, then push and pull.
    let good = docker_config(dir.path(), &host, PASSWORD);
    let reg = client(&registry.url(), Some(&good));
    round_trip(&reg, "auth/bearer").await;
    let scopes = issuer.scopes.lock().unwrap().clone();
    assert!(
        scopes
            .iter()
            .any(|s| s == "repository:auth/bearer:pull,push"),
        "{scopes:?}"
    );
    assert!(!format!("{reg:?}").contains(PASSWORD));
}
