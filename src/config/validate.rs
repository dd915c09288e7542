//! Validation of a loaded configuration: every value checked, and an
//! error naming the key and where it came from.

use super::{Config, ConfigError, Consumer, Daemon, DockerHost, PLATFORMS, Registry};

pub(super) fn validate(c: &Config, origin: &str) -> Result<(), ConfigError> {
    let field = |message: String| ConfigError::Field {
        origin: origin.to_string(),
        message,
    };
    validate_registry(&c.registry).map_err(field)?;
    for (i, h) in c.docker.hosts.iter().enumerate() {
        validate_docker_host(i, h).map_err(field)?;
    }
    if !matches!(c.qemu.accel.as_str(), "auto" | "kvm" | "tcg") {
        return Err(field(format!(
            "qemu.accel = {:?}: expected \"auto\", \"kvm\" or \"tcg\"",
            c.qemu.accel
        )));
    }
    for (i, k) in c.refresh.consumers.iter().enumerate() {
        validate_consumer(i, k).map_err(field)?;
    }
    let r = &c.refresh;
    if r.app_id != 0 && (r.installation_id == 0 || r.app_key.is_empty()) {
        return Err(field(format!(
            "refresh.app_id = {}: a GitHub App also needs refresh.installation_id and refresh.app_key (its private key, PEM)",
            r.app_id
        )));
    }
    if c.api.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(field(format!(
            "api.listen = {:?}: expected ADDRESS:PORT such as 127.0.0.1:8080",
            c.api.listen
        )));
    }
    validate_daemon(&c.daemon).map_err(field)
}

/// `[registry]`: an http(s) URL, a positive concurrency and rate limit.
fn validate_registry(r: &Registry) -> Result<(), String> {
    if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
        return Err(format!(
            "registry.url = {:?}: must start with http:// or https://",
            r.url
        ));
    }
    if r.concurrency == 0 {
        return Err("registry.concurrency must be at least 1".into());
    }
    if r.rate_limit.is_nan() || r.rate_limit <= 0.0 {
        return Err("registry.rate_limit must be positive".into());
    }
    Ok(())
}

/// `docker.hosts[i]`: a known OS, a concurrency, an endpoint Docker can dial.
fn validate_docker_host(i: usize, h: &DockerHost) -> Result<(), String> {
    if h.os != "linux" && h.os != "windows" {
        return Err(format!(
            "docker.hosts[{i}] ({}): os = {:?}, expected \"linux\" or \"windows\"",
            h.name, h.os
        ));
    }
    if h.concurrency == 0 {
        return Err(format!(
            "docker.hosts[{i}] ({}): concurrency must be at least 1",
            h.name
        ));
    }
    if !(h.cache_budget_gib.is_finite() && h.cache_budget_gib >= 0.0) {
        return Err(format!(
            "docker.hosts[{i}] ({}): cache_budget_gib = {}, expected a size in GiB, 0 or more",
            h.name, h.cache_budget_gib
        ));
    }
    if h.os == "windows" {
        match h.os_version.as_deref() {
            None => {
                return Err(format!(
                    "docker.hosts[{i}] ({}): a Windows host needs os_version, its OS build (\"10.0.17763\" ltsc2019, \"10.0.20348\" ltsc2022, \"10.0.26100\" ltsc2025): it decides which releases it builds",
                    h.name
                ));
            }
            Some(v) if super::hosts::windows_build(v).is_none() => {
                return Err(format!(
                    "docker.hosts[{i}] ({}): os_version = {v:?}, expected a Windows version such as \"10.0.20348\"",
                    h.name
                ));
            }
            Some(_) => {}
        }
    } else if h.os_version.is_some() || h.isolation.is_some() {
        return Err(format!(
            "docker.hosts[{i}] ({}): os_version and isolation are for Windows hosts (os = \"windows\")",
            h.name
        ));
    }
    if h.ssh_config.is_some() && !h.endpoint.starts_with("ssh://") {
        return Err(format!(
            "docker.hosts[{i}] ({}): ssh_config is for ssh:// endpoints",
            h.name
        ));
    }
    let ok = h.endpoint.starts_with("unix://")
        || h.endpoint.starts_with("tcp://")
        || h.endpoint.starts_with("ssh://")
        || h.endpoint.starts_with("npipe://");
    if !ok {
        return Err(format!(
            "docker.hosts[{i}] ({}): endpoint = {:?}, expected unix://, tcp://, ssh:// or npipe://",
            h.name, h.endpoint
        ));
    }
    Ok(())
}

/// `refresh.consumers[i]`: a known format and mode, an OWNER/NAME repo,
/// at least one path.
fn validate_consumer(i: usize, k: &Consumer) -> Result<(), String> {
    if !matches!(k.format.as_str(), "ocaml-version" | "opam-pin") {
        return Err(format!(
            "refresh.consumers[{i}] ({}): format = {:?}, expected \"ocaml-version\" (ocurrent/ocaml-version's files) or \"opam-pin\" (a consumer's ocaml-version lower bound and opam-repository pin)",
            k.repo, k.format
        ));
    }
    if k.paths.is_empty() {
        return Err(format!(
            "refresh.consumers[{i}] ({}): paths = [], expected the files to change",
            k.repo
        ));
    }
    if !matches!(k.mode.as_str(), "pull-request" | "issue") {
        return Err(format!(
            "refresh.consumers[{i}] ({}): mode = {:?}, expected \"pull-request\" or \"issue\"",
            k.repo, k.mode
        ));
    }
    if k.repo.split('/').count() != 2 {
        return Err(format!(
            "refresh.consumers[{i}]: repo = {:?}, expected OWNER/NAME",
            k.repo
        ));
    }
    Ok(())
}

/// `[daemon]`: cron schedules that parse (per-platform ones for known
/// platforms), at least one attempt, a non-zero retry base.
fn validate_daemon(d: &Daemon) -> Result<(), String> {
    if let Err(e) = d.schedule.parse::<cron::Schedule>() {
        return Err(format!("daemon.schedule = {:?}: {e}", d.schedule));
    }
    for (platform, schedule) in &d.schedules {
        if !PLATFORMS.contains(&platform.as_str()) {
            return Err(format!(
                "daemon.schedules.{platform}: unknown platform, expected one of {}",
                PLATFORMS.join(", ")
            ));
        }
        if let Err(e) = schedule.parse::<cron::Schedule>() {
            return Err(format!("daemon.schedules.{platform} = {schedule:?}: {e}"));
        }
    }
    if d.max_attempts == 0 {
        return Err("daemon.max_attempts must be at least 1".into());
    }
    if d.retry_base_secs == 0 {
        return Err("daemon.retry_base_secs must be at least 1".into());
    }
    Ok(())
}

/// Tables that take keys of the user's choosing; their values are checked
/// in `validate`.
pub(super) const OPEN_TABLES: [&str; 1] = ["daemon.schedules"];
