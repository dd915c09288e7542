//! Secrets kept secret, and identities kept outside the disposable state
//! (issue #31, points 4 and 6), against the real binary: `kiln config`,
//! `kiln serve`, `kiln release` with the stand-in GitHub
//! (`common::github`, which verifies the App's JWTs with its public key
//! and issues installation tokens), and `kiln doctor`.
//!
//! Every secret is searched for in what Kiln prints, serves and logs, as
//! it is and base64-encoded (the form of a basic-auth header or a
//! config.json `auth`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

mod common;
use common::github::{App, Gh, Shared, app};
use common::{Bounded, LIMIT, Profile, Spawned};

const API_TOKEN: &str = "kiln-api-s3cret-7f1c";
const PAT: &str = "ghp_secretsTestPersonalToken42";
const TOKEN_ENV: &str = "KILN_TEST_SECRETS_GITHUB_TOKEN";
const REGISTRY_PASSWORD: &str = "registry-pa55word-e3";
const URL_PASSWORD: &str = "url-userinfo-secret-9a";

/// Each secret (as it is, and base64-encoded) found in `text`.
fn leaks(text: &str, secrets: &[&str]) -> Vec<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut found = vec![];
    for s in secrets {
        for form in [s.to_string(), b64(s), b64(&format!("kiln:{s}"))] {
            if text.contains(&form) {
                found.push(form);
            }
        }
    }
    found
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An RSA key pair as GitHub issues an App's (PKCS#1 PEM), and the public
/// half (SPKI PEM), written to `dir`.
fn rsa_key(dir: &Path) -> (PathBuf, Vec<u8>) {
    let key = dir.join("app.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    let public = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(public.status.success(), "{}", text(&public));
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (key, public.stdout)
}

/// A line from the middle of a PEM key: its secret material.
fn key_material(pem: &Path) -> String {
    let t = std::fs::read_to_string(pem).unwrap();
    t.lines().nth(3).unwrap().to_string()
}

/// The stand-in GitHub on `port`, with ocaml-version's files on `main`.
struct GitHub {
    g: Shared,
    _rt: tokio::runtime::Runtime,
}

fn github(port: u16, gh: Gh) -> GitHub {
    let g: Shared = Arc::new(Mutex::new(gh));
    {
        let mut s = g.lock().unwrap();
        s.files.insert(
            (
                "ocurrent/ocaml-version".into(),
                "main".into(),
                "ocaml_version.ml".into(),
            ),
            (ML.into(), "base0".into()),
        );
        s.refs.insert(
            ("ocurrent/ocaml-version".into(), "main".into()),
            "main0".into(),
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    let gh = g.clone();
    rt.spawn(async move { axum::serve(listener, app(gh)).await });
    GitHub { g, _rt: rt }
}

const ML: &str = "let x = 1\n\nmodule Releases = struct\n  let v5_5_0 = of_string_exn \"5.5.0\"\n  let v5_5 = v5_5_0\n\n  let all_patches = [\n    v5_5_0 ]\n\n  let all = [ v5_5 ]\n\n  let recent = [ v5_5 ]\n\n  let latest = v5_5\n\n  let unreleased_betas = [ ]\n  let dev = [ ]\nend\n";

/// A busybox profile whose release refreshes ocaml-version through the
/// stand-in GitHub on `port`, with `refresh` lines added (credentials).
fn release_profile(name: &str, port: u16, refresh: &str) -> Profile {
    common::fixtures();
    Profile::busybox(&format!("secrets-{name}"), &format!("busybox-secrets-{name}"))
        .own_state()
        .toml(&format!(
            "[refresh]\napi_url = \"http://127.0.0.1:{port}\"\ntoken_env = \"{TOKEN_ENV}\"\n{refresh}\
             [[refresh.consumers]]\nrepo = \"ocurrent/ocaml-version\"\nbase = \"main\"\nformat = \"ocaml-version\"\n\
             paths = [\"ocaml_version.ml\"]\n"
        ))
        .create()
}

fn release(p: &Profile, env: &[(&str, &str)]) -> Output {
    let mut c = p.command();
    c.env_remove(TOKEN_ENV).env("KILN_LOG", "debug");
    for (k, v) in env {
        c.env(k, v);
    }
    c.args(["release", "5.5.1", "--json"])
        .output_within(LIMIT)
        .unwrap()
}

/// What a release that must not start left: the catalogue unbumped, no
/// lockfile, no image, no write to GitHub.
fn nothing_built(p: &Profile, gh: &GitHub, out: &Output) {
    let versions = std::fs::read_dir(p.path().join("versions"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        !versions.contains("5.5.1"),
        "the catalogue was bumped: {}",
        text(out)
    );
    assert!(
        !p.lockfile_path().exists(),
        "something was published: {}",
        text(out)
    );
    let log = &gh.g.lock().unwrap().auth_log;
    assert!(
        log.iter().all(|(what, _)| what.starts_with("GET ")),
        "GitHub got a write: {log:?}"
    );
}

#[test]
fn release_without_github_credentials_builds_nothing_and_names_the_variable() {
    let port = common::free_port();
    let p = release_profile("nocreds", port, "");
    let gh = github(
        port,
        Gh {
            pat: PAT.into(),
            ..Gh::default()
        },
    );
    let out = release(&p, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(TOKEN_ENV) && stderr.contains("no GitHub credentials"),
        "{stderr}"
    );
    nothing_built(&p, &gh, &out);
}

#[test]
fn release_with_a_refused_token_builds_nothing_and_names_its_source() {
    let port = common::free_port();
    let p = release_profile("refused", port, "");
    let gh = github(
        port,
        Gh {
            pat: PAT.into(),
            ..Gh::default()
        },
    );
    let wrong = "ghp_revokedToken000";
    let out = release(&p, &[(TOKEN_ENV, wrong)]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(TOKEN_ENV) && stderr.contains("Bad credentials"),
        "{stderr}"
    );
    assert!(leaks(&text(&out), &[wrong]).is_empty(), "{}", text(&out));
    nothing_built(&p, &gh, &out);
}

#[test]
fn release_with_a_github_app_opens_its_pull_request_with_an_installation_token() {
    let port = common::free_port();
    let identity = tempfile::tempdir().unwrap();
    let (key, public_pem) = rsa_key(identity.path());
    let p = release_profile(
        "app",
        port,
        &format!(
            "app_id = 4242\ninstallation_id = 77\napp_key = \"app.pem\"\n\
             [identity]\ndir = \"{}\"\n",
            identity.path().display()
        ),
    );
    let gh = github(
        port,
        Gh {
            app: Some(App {
                id: 4242,
                installation: 77,
                public_pem,
            }),
            ..Gh::default()
        },
    );
    let out = release(&p, &[]);
    let s = gh.g.lock().unwrap();
    let log = &s.auth_log;
    // The JWT was verified with the App's public key (the stand-in refuses
    // any other), and the installation token it bought did the work.
    assert!(
        log.contains(&(
            "POST /app/installations/77/access_tokens".into(),
            "jwt".into()
        )),
        "{log:?}\n{}",
        text(&out)
    );
    let pr = log
        .iter()
        .find(|(what, _)| what == "POST /repos/ocurrent/ocaml-version/pulls")
        .unwrap_or_else(|| panic!("no pull request: {log:?}\n{}", text(&out)));
    assert_eq!(pr.1, "installation", "{log:?}");
    assert!(
        log.iter()
            .all(|(what, kind)| what.starts_with("POST /app/") || kind == "installation"),
        "a request without the installation token: {log:?}"
    );
    // One token, cached for the whole run (it is valid for an hour).
    assert_eq!(s.issued.len(), 1, "{log:?}");
    assert_eq!(s.pulls.len(), 1);
    // Neither the token nor the key in what Kiln printed or logged.
    let mut secrets = vec![key_material(&key)];
    secrets.extend(s.issued.iter().cloned());
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_eq!(leaks(&text(&out), &secrets), Vec::<String>::new());
    let config = p.kiln(&["config", "--json"]);
    assert_eq!(leaks(&text(&config), &secrets), Vec::<String>::new());
}

/// A profile holding every kind of secret Kiln can be given: the API
/// token, credentials in URLs, the registry password and GitHub token in
/// the environment, an App key under the identity dir.
fn secret_profile(identity: &Path) -> Profile {
    Profile::busybox("secrets-config", "busybox-secrets-config")
        .own_state()
        .toml(&format!(
            "[api]\ntoken = \"{API_TOKEN}\"\n\
             [refresh]\napi_url = \"https://kiln:{URL_PASSWORD}@github.example\"\ntoken_env = \"{TOKEN_ENV}\"\n\
             app_id = 1\ninstallation_id = 2\napp_key = \"app.pem\"\nconsumers = []\n\
             [identity]\ndir = \"{}\"\n",
            identity.display()
        ))
        .create()
}

fn with_secret_env(c: &mut Command) -> &mut Command {
    c.env("KILN_REGISTRY_USERNAME", "kiln")
        .env("KILN_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
        .env(TOKEN_ENV, PAT)
}

#[test]
fn kiln_config_prints_no_secret_unless_asked() {
    let identity = tempfile::tempdir().unwrap();
    let (key, _) = rsa_key(identity.path());
    let p = secret_profile(identity.path());
    let material = key_material(&key);
    let secrets = [API_TOKEN, URL_PASSWORD, REGISTRY_PASSWORD, PAT, &material];
    for args in [&["config"][..], &["config", "--json"]] {
        let out = with_secret_env(&mut p.command())
            .args(args)
            .output_within(LIMIT)
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            leaks(&text(&out), &secrets),
            Vec::<String>::new(),
            "{args:?}"
        );
        assert!(text(&out).contains("<redacted>"), "{}", text(&out));
    }
    // The search sees what is there: asked for, the config's own secrets
    // are printed.
    let out = with_secret_env(&mut p.command())
        .args(["config", "--show-secrets"])
        .output_within(LIMIT)
        .unwrap();
    let shown = leaks(&text(&out), &[API_TOKEN, URL_PASSWORD]);
    assert_eq!(shown, vec![API_TOKEN.to_string(), URL_PASSWORD.to_string()]);
}

#[test]
fn logs_need_the_token_and_no_route_shows_a_secret() {
    let identity = tempfile::tempdir().unwrap();
    let (key, _) = rsa_key(identity.path());
    let p = secret_profile(identity.path());
    let log_dir = p.path().join("state/log");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log = "linux_busybox_5.5.0_amd64.log";
    std::fs::write(log_dir.join(log), "step 1/3: RUN make\nbuild log body\n").unwrap();
    let port = common::free_port();
    let mut c = p.command();
    with_secret_env(&mut c).env("KILN_LOG", "debug").args([
        "serve",
        "--addr",
        &format!("127.0.0.1:{port}"),
    ]);
    let mut serve = Spawned::piped("kiln serve", &mut c);
    common::wait_until("kiln serve answers", 30, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::blocking::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = c.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let path = format!("/v1/logs/{log}");
    let (status, body) = get(&path, None);
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("build log body"));
    assert_eq!(get(&path, Some("not-the-token")).0, 403);
    let (status, body) = get(&path, Some(API_TOKEN));
    assert_eq!((status, body.contains("build log body")), (200, true));
    let material = key_material(&key);
    let secrets = [API_TOKEN, URL_PASSWORD, REGISTRY_PASSWORD, PAT, &material];
    for route in [
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/openapi.json",
        "/v1/versions",
        "/v1/versions/5.5.0",
        "/v1/platforms",
        "/v1/workers",
        "/v1/lockfile",
        "/v1/resolve?image=busybox",
        "/v1/logs/nope.log",
    ] {
        let (_, body) = get(route, None);
        assert_eq!(leaks(&body, &secrets), Vec::<String>::new(), "{route}");
    }
    serve.signal(libc_sigterm());
    let _ = serve.wait_until(Duration::from_secs(10));
    let logged = format!("{}{}", serve.stderr_so_far(), serve.stdout_so_far());
    assert!(!logged.is_empty(), "kiln serve logged nothing to search");
    assert_eq!(leaks(&logged, &secrets), Vec::<String>::new(), "{logged}");
}

fn libc_sigterm() -> i32 {
    15
}

/// A profile whose QEMU login key lives in `identity` (the default name
/// under `identity.dir`), made as `kiln doctor`'s fix says.
fn identity_profile(identity: &Path) -> Profile {
    let p = Profile::busybox("secrets-identity", "busybox-secrets-identity")
        .own_state()
        .toml(&format!("[identity]\ndir = \"{}\"\n", identity.display()))
        .create();
    let key = identity.join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    p
}

/// `kiln doctor --json`'s check of the QEMU login key.
fn key_check(p: &Profile) -> Value {
    let out = p.kiln(&["doctor", "--json"]);
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "identity (qemu.ssh_key)")
        .cloned()
        .unwrap_or_else(|| panic!("no key check: {v}"))
}

#[test]
fn the_login_key_survives_losing_the_state_dir_and_doctor_passes() {
    let identity = tempfile::tempdir().unwrap();
    let p = identity_profile(identity.path());
    let key = identity.path().join("id_ed25519");
    let config: Value = serde_json::from_slice(&p.kiln(&["config", "--json"]).stdout).unwrap();
    assert_eq!(config["qemu"]["ssh_key"], key.display().to_string());
    let state = PathBuf::from(config["state_dir"].as_str().unwrap());
    std::fs::create_dir_all(state.join("qemu")).unwrap();
    std::fs::remove_dir_all(&state).unwrap();
    assert!(!state.exists());
    assert!(key.is_file(), "the key went with the state");
    let c = key_check(&p);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains(&key.display().to_string()),
        "{c}"
    );
}

#[test]
fn doctor_fails_naming_the_key_when_it_is_world_readable_or_not_a_key() {
    use std::os::unix::fs::PermissionsExt;
    let identity = tempfile::tempdir().unwrap();
    let p = identity_profile(identity.path());
    let key = identity.path().join("id_ed25519");
    std::fs::set_permissions(&key, PermissionsExt::from_mode(0o644)).unwrap();
    let c = key_check(&p);
    assert_eq!(c["status"], "missing", "{c}");
    assert_eq!(c["required"], true, "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains(&key.display().to_string()) && detail.contains("0644"),
        "{c}"
    );
    assert!(!p.kiln(&["doctor"]).status.success());
    // Unreadable: a directory where the key should be (root reads any
    // file, whatever its mode).
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    let c = key_check(&p);
    assert_eq!(c["status"], "missing", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains(&key.display().to_string()),
        "{c}"
    );
}

#[test]
fn doctor_says_how_to_move_a_key_left_in_the_state_dir() {
    let identity = tempfile::tempdir().unwrap();
    let p = identity_profile(identity.path());
    let key = identity.path().join("id_ed25519");
    let config: Value = serde_json::from_slice(&p.kiln(&["config", "--json"]).stdout).unwrap();
    let legacy = PathBuf::from(config["state_dir"].as_str().unwrap()).join("qemu/id_ed25519");
    std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
    std::fs::rename(&key, &legacy).unwrap();
    let c = key_check(&p);
    assert_eq!(c["status"], "missing", "{c}");
    let fix = c["fix"].as_str().unwrap();
    assert!(fix.starts_with(&format!("mv {}", legacy.display())), "{c}");
}
