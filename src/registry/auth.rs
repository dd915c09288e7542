//! Credentials, per registry host, resolved as Docker resolves them.
//!
//! For Kiln's own registry (`registry.url`), `KILN_REGISTRY_USERNAME` and
//! `KILN_REGISTRY_PASSWORD` win. Otherwise, and for every other registry
//! (the upstreams parents come from), Docker's `config.json`:
//! `credHelpers[<host>]`, then `credsStore`, each through the
//! docker-credential-* protocol (`docker-credential-<name> get`, the
//! server URL on stdin, `{"Username","Secret"}` on stdout, `<token>` as
//! the user name of an identity token), then `auths[<host>]` (`auth`,
//! `username`/`password`, `identitytoken`). Docker Hub is one registry
//! under several names: a credential stored under
//! `https://index.docker.io/v1/`, `index.docker.io`,
//! `registry-1.docker.io` or `docker.io` is Docker Hub's.
//!
//! A credential is looked up for one host and only ever sent to that host
//! and the token realm it names: the push credential of Kiln's registry
//! never reaches an upstream. Nothing here logs or prints a secret.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;

use super::RegistryError;
use crate::config;

/// Docker Hub's host names; any of them names the one registry.
pub const DOCKER_HUB_HOSTS: [&str; 4] = [
    "index.docker.io",
    "registry-1.docker.io",
    "docker.io",
    "registry.hub.docker.com",
];

/// The key `docker login` writes for Docker Hub, and the server URL its
/// credential helpers are asked for.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// How a registry is authenticated to.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Basic auth to the registry, or to its token realm.
    Password(String),
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token
    /// realm for access tokens.
    IdentityToken(String),
}

/// One registry's credentials and where they were found.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub secret: Secret,
    /// For messages: `KILN_REGISTRY_USERNAME`, `config.json
    /// auths["https://index.docker.io/v1/"]`, `docker-credential-pass`.
    pub from: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret: neither the password nor the token.
        write!(
            f,
            "Credentials({} from {}, <redacted>)",
            self.username, self.from
        )
    }
}

impl Credentials {
    pub fn password(username: &str, password: &str, from: &str) -> Credentials {
        Credentials {
            username: username.to_string(),
            secret: Secret::Password(password.to_string()),
            from: from.to_string(),
        }
    }
}

/// Whether `host` is one of Docker Hub's names.
pub fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_HOSTS.contains(&host)
}

/// Whether two host names name the same registry.
pub fn same_registry(a: &str, b: &str) -> bool {
    a == b || (is_docker_hub(a) && is_docker_hub(b))
}

/// The server address Docker's tools use for `host` (config.json keys,
/// credential helpers, the engine's `serveraddress`).
pub fn server_address(host: &str) -> String {
    if is_docker_hub(host) {
        DOCKER_HUB_KEY.to_string()
    } else {
        host.to_string()
    }
}

/// The host a config.json key names: `https://index.docker.io/v1/` →
/// `index.docker.io` (Docker's `ConvertToHostname`).
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// `host` without scheme or trailing slash.
pub fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

/// The config.json path `registry.docker_config` names (`~/` expanded).
fn config_path(cfg: &config::Registry) -> Option<PathBuf> {
    match cfg.docker_config.strip_prefix("~/") {
        Some(rest) => Some(PathBuf::from(std::env::var("HOME").ok()?).join(rest)),
        None => Some(PathBuf::from(&cfg.docker_config)),
    }
}

type Cache = Mutex<HashMap<(PathBuf, String), Option<Credentials>>>;

/// Resolved credentials, per (config.json, host), for this process: a
/// credential helper runs once per registry, not once per request.
fn cache() -> std::sync::MutexGuard<'static, HashMap<(PathBuf, String), Option<Credentials>>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    match CACHE.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The credentials for `host`, as Docker would find them; `None` when
/// there are none (anonymous access). `cfg` is Kiln's registry
/// configuration: its `url` says which host the `KILN_REGISTRY_*`
/// override belongs to, `docker_config` where config.json is.
pub async fn credentials_for(
    cfg: &config::Registry,
    host: &str,
) -> Result<Option<Credentials>, RegistryError> {
    if host_of(&cfg.url) == host
        && let (Ok(u), Ok(p)) = (
            std::env::var("KILN_REGISTRY_USERNAME"),
            std::env::var("KILN_REGISTRY_PASSWORD"),
        )
    {
        return Ok(Some(Credentials::password(
            &u,
            &p,
            "KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD",
        )));
    }
    let Some(path) = config_path(cfg) else {
        return Ok(None);
    };
    let key = (path.clone(), host.to_string());
    if let Some(found) = cache().get(&key) {
        return Ok(found.clone());
    }
    let found = from_docker_config(&path, host).await?;
    cache().insert(key, found.clone());
    Ok(found)
}

/// Look `host` up in the config.json at `path` (none there: `None`).
async fn from_docker_config(
    path: &std::path::Path,
    host: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RegistryError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let bad = |why: String| {
        RegistryError::Config(format!(
            "{}: {why}; fix the file or set registry.docker_config to another one",
            path.display()
        ))
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let matching = |table: &str| -> Option<(String, serde_json::Value)> {
        v[table]
            .as_object()?
            .iter()
            .find(|(k, _)| same_registry(key_host(k), host))
            .map(|(k, x)| (k.clone(), x.clone()))
    };
    if let Some((key, helper)) = matching("credHelpers") {
        let helper = helper
            .as_str()
            .ok_or_else(|| bad(format!("credHelpers[{key:?}] is not a string")))?;
        return helper_get(helper, host, &format!("credHelpers[{key:?}]")).await;
    }
    if let Some(store) = v["credsStore"].as_str().filter(|s| !s.is_empty())
        && let Some(c) = helper_get(store, host, "credsStore").await?
    {
        return Ok(Some(c));
    }
    let Some((key, entry)) = matching("auths") else {
        return Ok(None);
    };
    let from = format!("{} auths[{key:?}]", path.display());
    let (mut user, mut password) = (
        entry["username"].as_str().unwrap_or("").to_string(),
        entry["password"].as_str().unwrap_or("").to_string(),
    );
    if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| {
                bad(format!(
                    "auths[{key:?}].auth is not base64 of user:password"
                ))
            })?;
        let (u, p) = decoded.split_once(':').ok_or_else(|| {
            bad(format!(
                "auths[{key:?}].auth is not base64 of user:password"
            ))
        })?;
        (user, password) = (u.to_string(), p.to_string());
    }
    if let Some(token) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials {
            username: user,
            secret: Secret::IdentityToken(token.to_string()),
            from,
        }));
    }
    if user.is_empty() && password.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::password(&user, &password, &from)))
}

/// `docker-credential-<helper> get` for `host`: the protocol of Docker's
/// credential helpers. "Not found" is no credential, not an error.
async fn helper_get(
    helper: &str,
    host: &str,
    configured: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let program = format!("docker-credential-{helper}");
    let fail = |why: String| {
        RegistryError::Auth(format!(
            "credentials for {host}: {program} (config.json {configured}): {why}; \
             install the helper, log in again (`docker login {host}`) or remove {configured} from config.json"
        ))
    };
    let (status, out) = crate::process::Cmd::new(&program)
        .arg("get")
        .stdin(server_address(host).into_bytes())
        .timeout(Duration::from_secs(60))
        .run_any()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !status.success() {
        // Helpers say "credentials not found in native keychain" on stdout.
        let said = format!("{} {}", out.stdout.trim(), out.stderr.trim());
        if said.to_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(fail(format!("exited {status}: {}", said.trim())));
    }
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| fail(format!("answered something other than JSON: {e}")))?;
    let user = v["Username"].as_str().unwrap_or("").to_string();
    let secret = v["Secret"].as_str().unwrap_or("").to_string();
    if secret.is_empty() {
        return Ok(None);
    }
    let secret = if user == "<token>" {
        Secret::IdentityToken(secret)
    } else {
        Secret::Password(secret)
    };
    Ok(Some(Credentials {
        username: user,
        secret,
        from: program,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_is_one_registry_under_its_names() {
        for k in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
            "docker.io",
        ] {
            assert!(same_registry(key_host(k), "registry-1.docker.io"), "{k}");
        }
        assert!(!same_registry(
            key_host("https://quay.io"),
            "registry-1.docker.io"
        ));
        assert_eq!(key_host("https://ghcr.io/v2/"), "ghcr.io");
        assert_eq!(key_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(server_address("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_address("quay.io"), "quay.io");
    }

    #[tokio::test]
    async fn a_docker_login_to_docker_hub_answers_for_every_name_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let hub = base64::engine::general_purpose::STANDARD.encode("hubuser:hubpass");
        let quay = base64::engine::general_purpose::STANDARD.encode("quser:qpass");
        std::fs::write(
            &path,
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": hub},
                "https://quay.io": {"auth": quay},
                "ghcr.io": {"identitytoken": "ghcr-refresh"},
            }})
            .to_string(),
        )
        .unwrap();
        for host in ["registry-1.docker.io", "docker.io", "index.docker.io"] {
            let c = from_docker_config(&path, host).await.unwrap().unwrap();
            assert_eq!(c.username, "hubuser", "{host}");
            assert!(c.secret == Secret::Password("hubpass".into()), "{host}");
        }
        let q = from_docker_config(&path, "quay.io").await.unwrap().unwrap();
        assert_eq!(q.username, "quser");
        let g = from_docker_config(&path, "ghcr.io").await.unwrap().unwrap();
        assert!(g.secret == Secret::IdentityToken("ghcr-refresh".into()));
        // Another registry gets nothing: Docker Hub's login is not a
        // default credential.
        assert!(
            from_docker_config(&path, "127.0.0.1:5000")
                .await
                .unwrap()
                .is_none()
        );
        // A missing helper is named with the fix, not skipped silently.
        std::fs::write(
            &path,
            serde_json::json!({"credHelpers": {"quay.io": "kiln-no-such-helper"}}).to_string(),
        )
        .unwrap();
        let err = from_docker_config(&path, "quay.io")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("docker-credential-kiln-no-such-helper") && err.contains("quay.io"),
            "{err}"
        );
    }

    #[test]
    fn debug_hides_every_kind_of_secret() {
        let p = Credentials::password("u", "hunter2", "test");
        let t = Credentials {
            username: "<token>".into(),
            secret: Secret::IdentityToken("refresh-xyz".into()),
            from: "test".into(),
        };
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(!format!("{t:?}").contains("refresh-xyz"));
    }
}
