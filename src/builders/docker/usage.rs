//! A Docker engine for the worker inventory: reachable (`/_ping`), the
//! containers Kiln runs on it now, and its cache, the bytes `docker system
//! df` reports for image layers and the build cache.
//!
//! bollard's `df` reads the shape engines answer from API 1.52 on
//! (`ImageUsage`, `BuildCacheUsage`); older engines (Docker 20.10 here,
//! API 1.41) answer `LayersSize` and a `BuildCache` list, which bollard's
//! type has no field for. For those, `/system/df` is read once more as
//! JSON over the same endpoint (unix socket or plain tcp) and summed the
//! same way; an engine that answers neither is reported with its cache
//! unknown.

use std::time::Duration;

use bollard::query_parameters::ListContainersOptions;

use super::{Engine, OWNER_LABEL};
use crate::builders::inventory::HostReport;
use crate::catalogue::BuilderKind;
use crate::config::DockerHost;

/// The report's first lines, known without asking the engine (its
/// endpoint's userinfo redacted: the inventory is served publicly).
pub fn stub(h: &DockerHost) -> HostReport {
    let address = crate::config::redact_userinfo(&h.endpoint);
    let mut r = HostReport::new(BuilderKind::Docker, &h.name, &address);
    r.arches = std::iter::once(&h.arch)
        .chain(&h.emulate)
        .cloned()
        .collect();
    r.slots = h.concurrency.max(1);
    r
}

/// Ask the engine.
pub async fn report(h: &DockerHost) -> HostReport {
    let r = stub(h);
    // Errors name the endpoint: with its userinfo redacted, as the address.
    let redacted = |e: &dyn std::fmt::Display| e.to_string().replace(&h.endpoint, &r.address);
    let engine = match super::connect(h).await {
        Ok(e) => e,
        Err(e) => {
            let e = redacted(&e);
            return r.unreachable(e);
        }
    };
    let docker = engine.docker.clone().with_timeout(Duration::from_secs(30));
    if let Err(e) = docker.ping().await {
        let e = redacted(&e);
        return r.unreachable(e);
    }
    let mut r = r;
    r.busy = running(&engine).await.ok();
    match cache_bytes(h, &engine).await {
        Ok(bytes) => r.engine_cache_bytes = Some(bytes),
        Err(e) => tracing::warn!(host = %h.name, error = %e, "the engine's cache size is unknown"),
    }
    r
}

/// Containers Kiln started that are running now, their owner alive.
/// Free bytes where a Linux engine keeps its images (`root`, its
/// `DockerRootDir`), asked of the engine itself: `df` in a short-lived
/// container of an image it already holds (no pull, no network), the
/// root bind-mounted read-only. For engines Kiln has no shell on (tcp);
/// the container carries Kiln's owner label, so a killed `doctor` leaves
/// nothing the sweep would not remove.
pub async fn free_disk(engine: &Engine, root: &str) -> Result<u64, String> {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{
        CreateContainerOptionsBuilder, ListImagesOptions, LogsOptionsBuilder,
        RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
    };
    use futures_util::StreamExt;
    let images = engine
        .docker
        .list_images(None::<ListImagesOptions>)
        .await
        .map_err(|e| e.to_string())?;
    // An image with a `df`: a base or a build of one (named by a tag, or
    // by the digest it was pulled by), run by its id.
    let image = images
        .iter()
        .find(|i| {
            i.repo_tags.iter().chain(&i.repo_digests).any(|n| {
                ["busybox", "debian", "ubuntu", "alpine", "opam"]
                    .iter()
                    .any(|b| n.contains(b))
            })
        })
        .map(|i| i.id.clone())
        .ok_or("no image with a df on the engine yet (it has built nothing)")?;
    let name = format!("kiln-df-{}-{}", std::process::id(), rand_suffix());
    let created = engine
        .docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            ContainerCreateBody {
                image: Some(image.clone()),
                labels: Some([(OWNER_LABEL.to_string(), crate::process::owner())].into()),
                entrypoint: Some(vec!["df".into()]),
                cmd: Some(vec!["-Pk".into(), "/kiln-root".into()]),
                network_disabled: Some(true),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    binds: Some(vec![format!("{root}:/kiln-root:ro")]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let run = async {
        engine
            .docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut wait = engine.docker.wait_container(
            &created.id,
            Some(
                WaitContainerOptionsBuilder::default()
                    .condition("not-running")
                    .build(),
            ),
        );
        while let Some(r) = wait.next().await {
            r.map_err(|e| e.to_string())?;
        }
        let mut out = String::new();
        let mut logs = engine.docker.logs(
            &created.id,
            Some(LogsOptionsBuilder::default().stdout(true).build()),
        );
        while let Some(l) = logs.next().await {
            out.push_str(&l.map_err(|e| e.to_string())?.to_string());
        }
        df_available(&out).ok_or_else(|| format!("{image}: df said {out:?}"))
    };
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| Err("no answer within 60 s".into()));
    let _ = engine
        .docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    result
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Available bytes from `df -Pk`'s output (its second line's fourth field,
/// in KiB).
fn df_available(out: &str) -> Option<u64> {
    let kib: u64 = out
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

async fn running(engine: &Engine) -> Result<usize, bollard::errors::Error> {
    let filters: std::collections::HashMap<String, Vec<String>> =
        [("label".to_string(), vec![OWNER_LABEL.to_string()])].into();
    let containers = engine
        .docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters: Some(filters),
            ..Default::default()
        }))
        .await?;
    Ok(containers
        .iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(OWNER_LABEL))
                .is_some_and(|o| !crate::process::owner_is_gone(o))
        })
        .count())
}

/// Image layers plus build cache, in bytes.
async fn cache_bytes(h: &DockerHost, engine: &Engine) -> Result<u64, String> {
    let df = engine.docker.df(None).await.map_err(|e| e.to_string())?;
    let images = df.image_usage.and_then(|u| u.total_size);
    let cache = df.build_cache_usage.and_then(|u| u.total_size);
    if images.is_some() || cache.is_some() {
        let sum = images.unwrap_or(0).max(0) + cache.unwrap_or(0).max(0);
        return Ok(sum as u64);
    }
    legacy_df(h).await
}

/// `/system/df` in the shape engines before API 1.52 answer.
async fn legacy_df(h: &DockerHost) -> Result<u64, String> {
    let (client, url) = if let Some(path) = h.endpoint.strip_prefix("unix://") {
        let client = reqwest::Client::builder().unix_socket(path);
        (client, "http://localhost/system/df".to_string())
    } else if let Some(addr) = h.endpoint.strip_prefix("tcp://")
        && std::env::var_os("DOCKER_CERT_PATH").is_none()
    {
        (
            reqwest::Client::builder(),
            format!("http://{addr}/system/df"),
        )
    } else {
        return Err(format!(
            "{} answers /system/df in a shape bollard does not read, and {} is not read directly",
            h.name, h.endpoint
        ));
    };
    let client = client
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    legacy_sum(&body).ok_or_else(|| format!("/system/df of {} has no LayersSize", h.name))
}

/// `LayersSize` plus every build cache record's `Size`.
fn legacy_sum(body: &serde_json::Value) -> Option<u64> {
    let layers = body.get("LayersSize")?.as_u64()?;
    let cache: u64 = body
        .get("BuildCache")
        .and_then(|c| c.as_array())
        .map(|c| c.iter().filter_map(|r| r.get("Size")?.as_u64()).sum())
        .unwrap_or(0);
    Some(layers + cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_gives_the_available_kib() {
        let out = "Filesystem           1024-blocks    Used Available Capacity Mounted on\n/dev/vda             263174212 11411160 240978852   5% /kiln-root\n";
        assert_eq!(df_available(out), Some(240978852 * 1024));
        assert_eq!(df_available("df: /kiln-root: No such file\n"), None);
    }

    #[test]
    fn an_endpoints_credentials_are_not_in_the_report() {
        let h = DockerHost {
            name: "remote".into(),
            endpoint: "tcp://builder:hunter2@10.0.0.5:2375".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            emulate: vec!["arm64".into()],
            concurrency: 3,
            cache_budget_gib: 50.0,
            sources_address: None,
            ssh_config: None,
            os_version: None,
            isolation: None,
        };
        let r = stub(&h);
        assert_eq!(r.address, "tcp://<redacted>@10.0.0.5:2375");
        assert_eq!((r.arches.join(" "), r.slots), ("amd64 arm64".into(), 3));
    }

    /// Refused on its port, or an endpoint Kiln cannot use (whose error
    /// names the endpoint): unreachable, the credentials nowhere.
    #[tokio::test]
    async fn an_unreachable_engine_is_reported_without_its_credentials() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        for endpoint in [
            format!("tcp://builder:hunter2@127.0.0.1:{port}"),
            format!("http://builder:hunter2@127.0.0.1:{port}"),
        ] {
            let h = DockerHost {
                name: "gone".into(),
                endpoint,
                os: "linux".into(),
                arch: "amd64".into(),
                emulate: vec![],
                concurrency: 1,
                cache_budget_gib: 50.0,
                sources_address: None,
                ssh_config: None,
                os_version: None,
                isolation: None,
            };
            let r = report(&h).await;
            assert!(r.health.starts_with("unreachable: "), "{}", r.health);
            assert!(!r.health.contains("hunter2"), "{}", r.health);
            assert_eq!((r.busy, r.engine_cache_bytes), (None, None));
        }
    }

    #[test]
    fn legacy_df_sums_layers_and_build_cache() {
        let body = serde_json::json!({"LayersSize": 1000, "Images": [],
            "BuildCache": [{"Size": 20}, {"Size": 3}]});
        assert_eq!(legacy_sum(&body), Some(1023));
        assert_eq!(
            legacy_sum(&serde_json::json!({"LayersSize": 7, "BuildCache": null})),
            Some(7)
        );
        assert_eq!(legacy_sum(&serde_json::json!({"Images": []})), None);
    }
}
