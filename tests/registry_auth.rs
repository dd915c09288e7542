//! Registry authentication against the real registry binary: basic auth
//! (htpasswd), and bearer tokens from a token server of our own
//! (`common::token`, Docker's token protocol, RS256 JWTs signed with
//! openssl) that records who asked for what. Credentials come from a
//! Docker config.json, as on a release manager's machine: a password, or
//! an identity token exchanged by OAuth2. Tokens are asked per scope (a
//! mount asks pull on its source too) and used until they expire.
//! Credentials never appear in errors, debug output or logs: neither the
//! password, nor the `user:password` pair in base64 (what a Basic header
//! and config.json carry), nor a bearer token the registry's realm issued.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::nginx::Nginx;
use common::token::TokenServer;
use common::{Bounded, LIMIT, PrivateRegistry, Profile};
use kiln::registry::Registry;

const USER: &str = "kiln";
const PASSWORD: &str = "s3cret-Pa55";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
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

/// A config.json in `dir` with one `auths` entry.
fn docker_config(dir: &Path, name: &str, entry: serde_json::Value) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::json!({ "auths": entry }).to_string()).unwrap();
    path
}

fn password_entry(host: &str, password: &str) -> serde_json::Value {
    serde_json::json!({ host: {"auth": b64(&format!("{USER}:{password}"))} })
}

/// The forms a password travels in: itself, and `USER:password` in
/// base64 (a Basic header, an `auth` of config.json).
fn secret_forms(password: &str) -> [String; 2] {
    [password.to_string(), b64(&format!("{USER}:{password}"))]
}

/// Panics naming `what` when `text` holds any of `secrets`.
fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} holds a secret ({s}):\n{text}"
        );
    }
}

async fn round_trip(reg: &Registry, repo: &str) -> String {
    reg.ping().await.unwrap();
    let (d, _) = reg
        .push_blob(repo, bytes::Bytes::from_static(b"authenticated blob"))
        .await
        .unwrap();
    assert_eq!(
        reg.pull_blob(repo, &d).await.unwrap(),
        b"authenticated blob"
    );
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_docker_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("htpasswd")
        .args(["-Bbn", USER, PASSWORD])
        .output_within(LIMIT)
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
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
    assert!(
        err.contains("needs credentials") && err.contains(&host),
        "{err}"
    );
    // Wrong password: the registry's refusal, with the fix, not the password.
    let bad = docker_config(dir.path(), "bad", password_entry(&host, "wrong-password"));
    let err = client(&registry.url(), Some(&bad))
        .ping()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401") && err.contains("docker login"), "{err}");
    assert_no_secret("the refusal", &err, &secret_forms("wrong-password"));
    // Right password: push and pull.
    let good = docker_config(dir.path(), "good", password_entry(&host, PASSWORD));
    round_trip(&client(&registry.url(), Some(&good)), "auth/basic").await;
    // The type that holds them, as debug output (`{:?}` in a log event or
    // an error) shows it.
    let creds = kiln::registry::Credentials::password(USER, PASSWORD, "test");
    let shown = format!("{creds:?}");
    assert!(shown.contains(USER), "{shown}");
    assert_no_secret("Credentials' Debug", &shown, &secret_forms(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_from_the_registry_realm() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(dir.path(), "kiln-test", &[(USER, PASSWORD)], &[], 300);
    let registry =
        PrivateRegistry::start_with(&dir.path().join("registry"), &tokens.registry_auth());
    let host = format!("127.0.0.1:{}", registry.port);
    // Bad credentials: the token server's refusal, named, with the fix.
    let bad = docker_config(dir.path(), "bad", password_entry(&host, "wrong-password"));
    let err = client(&registry.url(), Some(&bad))
        .ping()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("token from") && err.contains("401"), "{err}");
    assert!(err.contains(&format!("docker login {host}")), "{err}");
    assert_no_secret("the refusal", &err, &secret_forms("wrong-password"));
    // Good credentials: a token per scope, then push and pull.
    let good = docker_config(dir.path(), "good", password_entry(&host, PASSWORD));
    round_trip(&client(&registry.url(), Some(&good)), "auth/bearer").await;
    let scopes: Vec<Vec<String>> = tokens.requests().into_iter().map(|r| r.scopes).collect();
    assert!(
        scopes.contains(&vec!["repository:auth/bearer:pull,push".to_string()]),
        "{scopes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_token_is_exchanged_at_the_realm() {
    let dir = tempfile::tempdir().unwrap();
    let refresh = "refresh-7f3a9c";
    let tokens = TokenServer::start(
        dir.path(),
        "kiln-test",
        &[(USER, PASSWORD)],
        &[(refresh, USER)],
        300,
    );
    let registry =
        PrivateRegistry::start_with(&dir.path().join("registry"), &tokens.registry_auth());
    let host = format!("127.0.0.1:{}", registry.port);
    // As `docker login` against an OAuth2 registry leaves it: no password,
    // an identity token.
    let config = docker_config(
        dir.path(),
        "identity",
        serde_json::json!({ host.as_str(): {"auth": b64(&format!("{USER}:")), "identitytoken": refresh} }),
    );
    round_trip(&client(&registry.url(), Some(&config)), "auth/identity").await;
    let asked = tokens.requests();
    assert!(!asked.is_empty());
    for r in &asked {
        assert_eq!(r.method, "POST", "{r:?}");
        assert_eq!(r.refresh_token.as_deref(), Some(refresh), "{r:?}");
        assert_eq!(r.authorization, None, "no basic auth with a token: {r:?}");
        assert_eq!(r.status, 200, "{r:?}");
    }
    // A revoked token is refused at the realm, naming the registry and
    // the fix, never the token.
    let revoked = docker_config(
        dir.path(),
        "revoked",
        serde_json::json!({ host.as_str(): {"identitytoken": "revoked-token-1"} }),
    );
    let err = client(&registry.url(), Some(&revoked))
        .ping()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&host) && err.contains("docker login"), "{err}");
    assert!(!err.contains("revoked-token-1"), "{err}");
}

/// Blob mounts ask for pull on the source repository in the same token;
/// a token is used until shortly before it expires, never after: no
/// request ever carries a token the registry refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_ask_pull_on_the_source_and_tokens_are_used_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(dir.path(), "kiln-test", &[(USER, PASSWORD)], &[], 6);
    let registry =
        PrivateRegistry::start_with(&dir.path().join("registry"), &tokens.registry_auth());
    let nginx = Nginx::start(&dir.path().join("nginx"), registry.port, 1);
    let config = docker_config(dir.path(), "good", password_entry(&nginx.host(), PASSWORD));
    let reg = client(&nginx.url(), Some(&config));
    let data = dir.path().join("blob");
    std::fs::write(&data, vec![7u8; 4096]).unwrap();
    let first = reg
        .push_blob_file_report("auth/from", &data, None)
        .await
        .unwrap();
    let mounted = reg
        .push_blob_file_report("auth/to", &data, Some("auth/from"))
        .await
        .unwrap();
    assert_eq!(mounted.how, kiln::registry::PushedHow::Mounted);
    let mount_scopes = vec![
        "repository:auth/to:pull,push".to_string(),
        "repository:auth/from:pull".to_string(),
    ];
    assert!(
        tokens.requests().iter().any(|r| r.scopes == mount_scopes),
        "{:?}",
        tokens.requests()
    );
    // Within the token's life: no new token for the same scope.
    let asked = tokens.requests().len();
    for _ in 0..3 {
        assert!(
            reg.blob_size("auth/from", &first.digest)
                .await
                .unwrap()
                .is_some()
        );
    }
    let pull = |r: &common::token::TokenRequest| r.scopes == ["repository:auth/from:pull"];
    let pulls_before = tokens.requests().iter().filter(|r| pull(r)).count();
    assert!(pulls_before <= 1 && tokens.requests().len() <= asked + 1);
    // After it: a fresh one, and the expired one is never sent.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    assert!(
        reg.blob_size("auth/from", &first.digest)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        tokens.requests().iter().filter(|r| pull(r)).count(),
        pulls_before + 1
    );
    let refused: Vec<_> = nginx
        .log()
        .into_iter()
        .filter(|l| l.status == 401 && l.authorization.starts_with("Bearer "))
        .collect();
    assert!(refused.is_empty(), "expired tokens sent: {refused:?}");
}

/// Every file under `dir` (the profile: its logs, its SQLite state, its
/// lockfile), as bytes read lossily.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else if path.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

/// `kiln build` publishing through the token registry, with every log
/// event of every crate (`KILN_LOG=trace`): what it printed, the build's
/// log and its state hold neither the password, nor its base64 form, nor
/// a token the realm issued; nor does what a run refused for a wrong
/// password prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_never_prints_or_logs_a_credential_or_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(dir.path(), "kiln-test", &[(USER, PASSWORD)], &[], 300);
    let registry =
        PrivateRegistry::start_with(&dir.path().join("registry"), &tokens.registry_auth());
    let host = format!("127.0.0.1:{}", registry.port);
    common::fixtures();
    let p = Profile::busybox("auth-logs", "busybox-authlogs")
        .own_state()
        .registry_url(&registry.url())
        .create();
    let run = |name: &str, password: &str| {
        let config = docker_config(dir.path(), name, password_entry(&host, password));
        let mut cmd = p.command();
        cmd.args(["build", "--json"])
            .env("KILN_LOG", "trace")
            .env("KILN_REGISTRY_DOCKER_CONFIG", &config);
        tokio::task::spawn_blocking(move || cmd.output_within(LIMIT).unwrap())
    };
    // A wrong password: refused, saying so without the secret.
    let out = run("bad", "wrong-password").await.unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{printed}");
    assert!(printed.contains("401"), "{printed}");
    assert_no_secret("kiln's output", &printed, &secret_forms("wrong-password"));
    // The right one: built and pushed through tokens.
    let out = run("good", PASSWORD).await.unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    let issued: Vec<String> = tokens
        .requests()
        .into_iter()
        .filter_map(|r| r.token)
        .collect();
    assert!(!issued.is_empty(), "no token was issued: {printed}");
    // trace logging was on: the secrets had every chance to be printed.
    assert!(printed.contains("TRACE"), "{printed}");
    let mut secrets = secret_forms(PASSWORD).to_vec();
    secrets.extend(issued);
    assert_no_secret("kiln's output", &printed, &secrets);
    let files = files_under(p.path());
    assert!(
        files
            .iter()
            .any(|(f, _)| f.extension().is_some_and(|e| e == "log")),
        "no build log under {}",
        p.path().display()
    );
    for (file, text) in files {
        assert_no_secret(&file.display().to_string(), &text, &secrets);
    }
}
