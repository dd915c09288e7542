//! Configuration: embedded defaults, overridden by a TOML file, then by
//! `KILN_*` environment variables, then by `--set key=value` flags.
//!
//! The embedded defaults are the repository's own `kiln.toml`, so the
//! documented file and the defaults can never drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod hosts;
mod layer;
mod secrets;
mod validate;

pub use hosts::{Docker, DockerHost, Isolation, Qemu, QemuHost, Zfs, ZfsHost, windows_build};
use layer::{env_path, lookup, merge, set_path};
pub use secrets::{REDACTED, redact_userinfo};
use validate::validate;

/// The platforms Kiln knows (`platforms/<name>/`).
pub const PLATFORMS: [&str; 5] = ["linux", "windows", "macos", "freebsd", "openbsd"];

/// The defaults, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../../kiln.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: invalid TOML: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {message}")]
    Field { origin: String, message: String },
    #[error("--set {arg}: expected KEY=VALUE with KEY like `registry.url`")]
    BadSet { arg: String },
    #[error("{origin}: unknown setting `{key}`; known settings are listed in kiln.toml")]
    UnknownKey { origin: String, key: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub state_dir: PathBuf,
    pub versions_dir: PathBuf,
    pub platforms_dir: PathBuf,
    pub manifests_dir: PathBuf,
    pub database: Database,
    pub registry: Registry,
    pub docker: Docker,
    pub zfs: Zfs,
    pub qemu: Qemu,
    pub plan: PlanSettings,
    pub refresh: Refresh,
    pub api: Api,
    pub daemon: Daemon,
    pub identity: Identity,
}

/// Where the keys Kiln logs in or signs with live: outside `state_dir`, so
/// that losing the state (disposable: a cache of the registry) loses no
/// identity. `kiln doctor` checks every key named here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Empty: `$XDG_CONFIG_HOME/kiln`, else `$HOME/.config/kiln`, else
    /// `identity/` beside the config file. Made absolute when loaded.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub url: String,
    pub namespace: String,
    pub insecure: bool,
    pub concurrency: usize,
    pub rate_limit: f64,
    pub docker_config: String,
    /// The longest one request waits out the registry's own rate limit
    /// (429 with Retry-After or ratelimit-* headers); beyond it the work
    /// fails as infrastructure and the daemon parks it until the reset.
    #[serde(default = "rate_limit_max_wait_secs")]
    pub rate_limit_max_wait_secs: u64,
    /// What a full round may pull from and push to registries in one
    /// limit window (`limit_window_hours`), for `kiln plan`; 0: no limit.
    #[serde(default)]
    pub pull_limit: u64,
    #[serde(default)]
    pub push_limit: u64,
    #[serde(default = "limit_window_hours")]
    pub limit_window_hours: u64,
    /// `kiln gc --registry` keeps unreferenced manifests this long.
    #[serde(default = "registry_retention_days")]
    pub retention_days: u64,
    /// A command run after `kiln gc --registry` deleted manifests, to free
    /// their blobs (the registry's own garbage collection); empty: none.
    #[serde(default)]
    pub garbage_collect: String,
}

fn limit_window_hours() -> u64 {
    6
}

fn registry_retention_days() -> u64 {
    30
}

fn rate_limit_max_wait_secs() -> u64 {
    900
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSettings {
    pub opam_repository: String,
    pub opam_repository_commit: String,
    /// The ref followed (`git ls-remote`) when no commit is pinned.
    #[serde(default = "head")]
    pub opam_repository_ref: String,
    /// How often a new commit of the followed ref becomes a build input
    /// even when none of the images' own packages changed (the embedded
    /// defaults always supply it).
    pub opam_repository_refresh_days: u64,
}

fn head() -> String {
    "HEAD".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    pub api_url: String,
    pub token_env: String,
    /// A GitHub App instead of a personal token: its id, the installation
    /// whose token Kiln acts with, and the App's RSA private key (PEM,
    /// relative to `identity.dir`; made absolute when loaded). 0: no App.
    #[serde(default)]
    pub app_id: u64,
    #[serde(default)]
    pub installation_id: u64,
    #[serde(default)]
    pub app_key: String,
    pub consumers: Vec<Consumer>,
}

/// One CI repository Kiln refreshes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// `owner/name`
    pub repo: String,
    #[serde(default = "main_branch")]
    pub base: String,
    /// Files the change touches, from the repository's root: `ocaml-version`
    /// its `.ml` (and `.mli`, `CHANGES.md` when listed); `opam-pin` each
    /// `dune-project`/`*.opam` bound and `git reset --hard` pin.
    pub paths: Vec<String>,
    /// `ocaml-version` or `opam-pin`.
    pub format: String,
    /// `pull-request` or `issue`.
    #[serde(default = "pull_request")]
    pub mode: String,
}

fn main_branch() -> String {
    "main".into()
}

fn pull_request() -> String {
    "pull-request".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    pub listen: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Daemon {
    /// Cron schedule (with seconds) for every platform without its own.
    pub schedule: String,
    /// Per-platform cron schedules: `macos = "0 0 4 * * Sat"`.
    #[serde(default)]
    pub schedules: BTreeMap<String, String>,
    /// Attempts per job before an infrastructure failure is final.
    pub max_attempts: u32,
    /// Backoff after the first infrastructure failure; doubles each time.
    #[serde(default = "retry_base_secs")]
    pub retry_base_secs: u64,
    /// How often the parent digests, the opam-repository ref and the
    /// catalogue are polled for changes; 0 turns polling off.
    #[serde(default = "poll_secs")]
    pub poll_secs: u64,
    /// Cron schedule (with seconds) of `kiln gc --registry`; empty: never.
    #[serde(default)]
    pub registry_gc_schedule: String,
    /// At SIGTERM, how long running jobs may go on; then they are stopped
    /// (leaving nothing) and queued again for the next start.
    #[serde(default = "drain_secs")]
    pub drain_secs: u64,
}

fn retry_base_secs() -> u64 {
    30
}

fn drain_secs() -> u64 {
    240
}

fn poll_secs() -> u64 {
    300
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Explicit file (`--config`); when `None`, `$KILN_CONFIG`, then
    /// `./kiln.toml` if present, else embedded defaults only.
    pub file: Option<PathBuf>,
    /// Environment variables to consider (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
    /// `--set key=value` flags.
    pub sets: Vec<String>,
}

impl Sources {
    pub fn from_process(file: Option<PathBuf>, sets: Vec<String>) -> Self {
        Sources {
            file,
            env: std::env::vars().collect(),
            sets,
        }
    }
}

impl Config {
    /// Embedded defaults only, with relative paths against `base`.
    pub fn defaults(base: &Path) -> Result<Config, ConfigError> {
        let value = parse("embedded defaults", DEFAULT_TOML)?;
        finish(value, "embedded defaults", base, &[])
    }

    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let mut value = parse("embedded defaults", DEFAULT_TOML)?;
        let env_file = sources
            .env
            .iter()
            .find(|(k, _)| k == "KILN_CONFIG")
            .map(|(_, v)| PathBuf::from(v));
        let file = sources.file.clone().or(env_file).or_else(|| {
            let p = PathBuf::from("kiln.toml");
            p.exists().then_some(p)
        });
        let mut base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let mut origin = "embedded defaults".to_string();
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            origin = path.display().to_string();
            let overlay = parse(&origin, &text)?;
            merge(&mut value, overlay, &origin, "")?;
            if let Some(dir) = path.parent() {
                base = if dir.as_os_str().is_empty() {
                    base
                } else if dir.is_absolute() {
                    dir.to_path_buf()
                } else {
                    base.join(dir)
                };
            }
        }
        for (key, raw) in &sources.env {
            let Some(rest) = key.strip_prefix("KILN_") else {
                continue;
            };
            if rest == "CONFIG" || rest == "LOG" {
                continue;
            }
            if let Some(path) = env_path(&value, rest) {
                set_path(&mut value, &path, raw, &format!("environment {key}"))?;
            }
        }
        for arg in &sources.sets {
            let (k, v) = arg
                .split_once('=')
                .ok_or_else(|| ConfigError::BadSet { arg: arg.clone() })?;
            let path: Vec<String> = k.split('.').map(str::to_string).collect();
            if lookup(&value, &path).is_none() {
                return Err(ConfigError::UnknownKey {
                    origin: format!("--set {arg}"),
                    key: k.to_string(),
                });
            }
            set_path(&mut value, &path, v, &format!("--set {arg}"))?;
        }
        finish(value, &origin, &base, &sources.env)
    }

    /// Absolute path of the SQLite database.
    pub fn database_path(&self) -> &Path {
        &self.database.path
    }

    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("log")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.state_dir.join("work")
    }

    pub fn lockfile_path(&self) -> PathBuf {
        self.manifests_dir.join("lockfile.json")
    }
}

fn parse(origin: &str, text: &str) -> Result<toml::Value, ConfigError> {
    text.parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })
}

/// The default identity directory: `$XDG_CONFIG_HOME/kiln`, else
/// `$HOME/.config/kiln`, else `identity/` beside the config.
fn identity_default(env: &[(String, String)], base: &Path) -> PathBuf {
    let var = |k: &str| {
        env.iter()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v))
    };
    var("XDG_CONFIG_HOME")
        .map(|x| x.join("kiln"))
        .or_else(|| var("HOME").map(|h| h.join(".config/kiln")))
        .unwrap_or_else(|| base.join("identity"))
}

fn finish(
    value: toml::Value,
    origin: &str,
    base: &Path,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let mut config: Config = value
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Field {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    config.state_dir = abs(&config.state_dir);
    config.versions_dir = abs(&config.versions_dir);
    config.platforms_dir = abs(&config.platforms_dir);
    config.manifests_dir = abs(&config.manifests_dir);
    config.database.path = abs(&config.database.path);
    config.identity.dir = if config.identity.dir.as_os_str().is_empty() {
        identity_default(env, base)
    } else {
        abs(&config.identity.dir)
    };
    let key = if config.qemu.ssh_key.is_empty() {
        "id_ed25519"
    } else {
        config.qemu.ssh_key.as_str()
    };
    config.qemu.ssh_key = config.identity.dir.join(key).display().to_string();
    if !config.refresh.app_key.is_empty() {
        config.refresh.app_key = config
            .identity
            .dir
            .join(&config.refresh.app_key)
            .display()
            .to_string();
    }
    // A local opam-repository (a git directory) may be named relative to
    // the file, like the directories above; URLs are left alone.
    if config.plan.opam_repository.starts_with("./")
        || config.plan.opam_repository.starts_with("../")
    {
        config.plan.opam_repository = abs(Path::new(&config.plan.opam_repository))
            .display()
            .to_string();
    }
    validate(&config, origin)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(env: &[(&str, &str)], sets: &[&str], file: Option<PathBuf>) -> Sources {
        Sources {
            file,
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::defaults(Path::new("/base")).unwrap();
        assert_eq!(c.registry.url, "http://127.0.0.1:5000");
        assert_eq!(c.state_dir, PathBuf::from("/base/.kiln"));
        assert_eq!(c.docker.hosts.len(), 1);
    }

    #[test]
    fn precedence_file_env_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(
            &file,
            "[registry]\nurl = \"http://file:1\"\nconcurrency = 3\n",
        )
        .unwrap();
        let c = Config::load(&sources(&[], &[], Some(file.clone()))).unwrap();
        assert_eq!(c.registry.url, "http://file:1");
        assert_eq!(c.state_dir, dir.path().join(".kiln"));
        let c = Config::load(&sources(
            &[
                ("KILN_REGISTRY_URL", "http://env:2"),
                ("KILN_STATE_DIR", "/s"),
            ],
            &[],
            Some(file.clone()),
        ))
        .unwrap();
        assert_eq!(c.registry.url, "http://env:2");
        assert_eq!(c.registry.concurrency, 3);
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        let c = Config::load(&sources(
            &[("KILN_REGISTRY_URL", "http://env:2")],
            &["registry.url=http://flag:3", "registry.concurrency=5"],
            Some(file),
        ))
        .unwrap();
        assert_eq!(c.registry.url, "http://flag:3");
        assert_eq!(c.registry.concurrency, 5);
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.toml");
        std::fs::write(&file, "[registry]\nurll = \"x\"\n").unwrap();
        let e = Config::load(&sources(&[], &[], Some(file.clone()))).unwrap_err();
        assert!(e.to_string().contains("registry.urll"), "{e}");
        std::fs::write(&file, "[api]\nlisten = \"nowhere\"\n").unwrap();
        let e = Config::load(&sources(&[], &[], Some(file.clone()))).unwrap_err();
        assert!(e.to_string().contains("api.listen"), "{e}");
        let e = Config::load(&sources(
            &[("KILN_REGISTRY_CONCURRENCY", "many")],
            &[],
            None,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("registry.concurrency"), "{e}");
        let e = Config::load(&sources(&[], &["nokey"], None)).unwrap_err();
        assert!(matches!(e, ConfigError::BadSet { .. }));
        let e = Config::load(&sources(&[], &["registry.nope=1"], None)).unwrap_err();
        assert!(e.to_string().contains("registry.nope"), "{e}");
    }
}
