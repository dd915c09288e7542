//! The Docker builder behind the [`Builder`] contract: routes each arch to
//! a configured engine that runs it natively or under emulation, within
//! that host's concurrency, and builds, smoke-tests and pushes it; or, for
//! `kiln verify --rebuild`, builds it the same way and keeps it.
//!
//! Routing ([`order`]): hosts that run the arch natively before hosts that
//! emulate it, then the one with the most free build slots. A host that
//! stops answering while it builds (the build fails as infrastructure and
//! the engine no longer answers a ping) is marked down in the state store
//! ([`crate::state::hosts`]) and the build moves to the next host; a down
//! host is skipped, by every process, until it answers a ping again
//! (probed at most every [`hosts::PROBE_EVERY`]). The model (health,
//! order, slots) is [`crate::builders::hosts`]'s, shared with QEMU hosts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{BuildSpec, Engine, LocalImage, SmokeCheck};
use crate::builders::hosts::{self, order, probe_due};
use crate::builders::{BoxFuture, BuildJob, BuildOutput, Builder, host_permits};
use crate::catalogue::BuilderKind;
use crate::config::{Config, DockerHost};
use crate::model::{ArtifactKind, Failure};
use crate::plan::Target;

/// What a routed build ended with.
enum Done {
    Pushed(String),
    Kept(LocalImage),
}

/// Docker Engine hosts, connected on first use.
pub struct DockerBuilder {
    config: Config,
    hosts: Vec<DockerHost>,
    engines: tokio::sync::OnceCell<Vec<(DockerHost, Engine, Arc<Semaphore>)>>,
    /// Exports are unpacked and layers written under here (`<pid>-…`).
    work_dir: PathBuf,
}

impl DockerBuilder {
    pub fn new(config: &Config) -> DockerBuilder {
        DockerBuilder {
            config: config.clone(),
            hosts: config.docker.hosts.clone(),
            engines: tokio::sync::OnceCell::new(),
            work_dir: config.work_dir().join("docker"),
        }
    }

    /// The hosts that may build `t`, in the order to try them ([`order`]),
    /// down hosts left out (probed again when their probe is due); or why
    /// there is none.
    async fn candidates(
        &self,
        t: &Target,
    ) -> Result<Vec<&(DockerHost, Engine, Arc<Semaphore>)>, Failure> {
        let health = self.health();
        let mut up = vec![];
        let mut down = vec![];
        for e in self.engines().await.iter().filter(|(h, _, _)| serves(h, t)) {
            let key = format!("docker:{}", e.0.name);
            match health.as_ref().and_then(|h| h.get(&key).ok().flatten()) {
                Some(d) if !probe_due(&key) || e.1.docker.ping().await.is_err() => {
                    down.push(format!(
                        "{} (down since {}: {})",
                        e.0.name, d.since, d.error
                    ));
                }
                Some(_) => {
                    tracing::info!(host = %e.0.name, "docker host answers again: back in the routing");
                    if let Some(h) = &health {
                        let _ = h.mark_up(&key);
                    }
                    up.push(e);
                }
                None => up.push(e),
            }
        }
        if up.is_empty() {
            return Err(Failure::infra(format!(
                "{}: no docker host for {} {} is up{}",
                t.id(),
                t.platform,
                t.arch,
                if down.is_empty() {
                    String::new()
                } else {
                    format!(": {}", down.join("; "))
                }
            )));
        }
        let keys: Vec<(bool, usize)> = up
            .iter()
            .map(|(h, _, slots)| (t.arch == h.arch, slots.available_permits()))
            .collect();
        Ok(order(&keys).into_iter().map(|i| up[i]).collect())
    }

    fn health(&self) -> Option<crate::state::hosts::HostHealth> {
        hosts::health(&self.config)
    }

    /// Build one arch as [`Builder::build`] does (same engine routing,
    /// failover, source proxy, slots, recipe, smoke test and export) and
    /// keep the reproducible image on disk instead of pushing it.
    pub async fn rebuild(&self, job: BuildJob<'_>) -> Result<LocalImage, Failure> {
        match self.run(job, false).await? {
            Done::Kept(img) => Ok(img),
            Done::Pushed(_) => Err(Failure::infra("a kept rebuild was pushed")),
        }
    }

    /// Route `job` over the hosts that may build it and build it on the
    /// first that can: pushed (`push`) or kept on disk. A host that stops
    /// answering mid-build is marked down and the build moves on.
    async fn run(&self, job: BuildJob<'_>, push: bool) -> Result<Done, Failure> {
        let t = &job.prepared.target;
        let mut spec = spec(&job, &self.work_dir);
        spec.auth = engine_auth(&self.config, &spec, job.log).await?;
        // Recipes name `http://kiln-sources`, the same in every build;
        // each attempt gets its own proxy where its host's containers
        // reach it (dropped when the attempt ends).
        let tree = crate::builders::source_tree(&self.config, &job)
            .await
            .map_err(|e| Failure::new(e.kind(), e.to_string()).with_log(job.log))?;
        if tree.is_some() {
            spec.dockerfile = spec
                .dockerfile
                .replace(super::SOURCES_URL, crate::sources::proxy::SOURCES_URL);
        }
        let mut failed = None;
        let mut hosts = self.candidates(t).await?;
        while !hosts.is_empty() {
            // The first host in routing order with a slot free now (so that
            // builds arriving together spread over the hosts), else wait
            // for the first one's.
            let slots: Vec<_> = hosts.iter().map(|(_, _, s)| s.clone()).collect();
            let (i, slot) = hosts::take_slot(&slots).await;
            let (host, engine, _) = hosts.remove(i);
            spec.host = host.name.clone();
            spec.isolation = (host.os == "windows").then(|| host.isolation.unwrap_or_default());
            let route = match &tree {
                Some(tree) => {
                    let r = source_proxy(host, engine, tree.clone())
                        .await
                        .map_err(|f| f.with_log(job.log))?;
                    spec.proxy = Some(r.url.clone());
                    Some(r)
                }
                None => None,
            };
            let built = if push {
                super::build(engine, job.registry, &spec)
                    .await
                    .map(|b| Done::Pushed(b.digest))
            } else {
                super::build_local(engine, job.registry, &spec)
                    .await
                    .map(Done::Kept)
            };
            drop(slot);
            if let Some(r) = route {
                r.close().await;
            }
            // The steps it left as the layer cache, within the host's
            // budget.
            let budget = (host.cache_budget_gib * f64::from(1u32 << 30)) as u64;
            let min_age = self.config.docker.cache_min_age_secs;
            if let Err(e) = super::cache::keep_within(engine, budget, min_age).await {
                tracing::warn!(host = %host.name, error = %e, "keeping the layer cache within its budget");
            }
            let e = match built {
                Ok(done) => return Ok(done),
                Err(e) => e,
            };
            let f = Failure::new(e.kind(), e.to_string()).with_log(job.log);
            // An infrastructure failure of a host that no longer
            // answers: mark it down and move the build on.
            if f.kind != crate::model::FailureKind::Infra || engine.docker.ping().await.is_ok() {
                return Err(f);
            }
            tracing::warn!(host = %host.name, target = %t.id(), error = %f.message, "docker host stopped answering: marked down, the build moves to the next host");
            if let Some(h) = self.health() {
                let _ = h.mark_down(&format!("docker:{}", host.name), &f.message);
            }
            failed = Some(f);
        }
        Err(failed.unwrap_or_else(|| {
            Failure::infra(format!("{}: no docker host could build it", t.id()))
        }))
    }

    /// The engines that connected, each with its host's build slots (an
    /// ssh host connects here, once per process; one that cannot is left
    /// out, logged).
    async fn engines(&self) -> &[(DockerHost, Engine, Arc<Semaphore>)] {
        self.engines
            .get_or_init(|| async {
                let mut out = Vec::new();
                for h in &self.hosts {
                    match super::connect(h).await {
                        Ok(e) => out.push((
                            h.clone(),
                            e,
                            host_permits(&format!("docker:{}", h.name), h.concurrency),
                        )),
                        Err(e) => tracing::warn!(error = %e, "docker host unavailable"),
                    }
                }
                out
            })
            .await
    }
}

/// A build's source proxy and how its containers reach it.
struct SourceRoute {
    proxy: crate::sources::SourceProxy,
    /// The build's `http_proxy`.
    url: String,
    /// An ssh engine's forward of the proxy to its bridge gateway.
    forward: Option<(
        Arc<super::tunnel::Tunnel>,
        crate::builders::zfs::host::Forward,
    )>,
}

impl SourceRoute {
    /// Stop the proxy and cancel its forward.
    async fn close(self) {
        if let Some((t, f)) = &self.forward {
            t.cancel(f).await;
        }
        drop(self.proxy);
    }
}

/// Start a build's source proxy where `host`'s build containers reach
/// it: `sources_address`; for a local engine its bridge's gateway; for
/// an ssh engine on this machine's loopback, forwarded over the engine's
/// connection to the host's bridge gateway.
async fn source_proxy(
    host: &DockerHost,
    engine: &Engine,
    tree: crate::sources::Tree,
) -> Result<SourceRoute, Failure> {
    let start = |ip: std::net::IpAddr| {
        crate::sources::SourceProxy::start(tree.clone(), std::net::SocketAddr::new(ip, 0))
    };
    let proxy_failed = |e: crate::sources::SourcesError| Failure::new(e.kind(), e.to_string());
    let no_gateway = || {
        Failure::infra(format!(
            "docker host {}: its default bridge network has no IPv4 gateway for the source proxy; set docker.hosts.sources_address",
            host.name
        ))
    };
    if host.sources_address.is_none()
        && let Some(t) = &engine.tunnel
    {
        let gateway = bridge_gateway(engine).await.ok_or_else(no_gateway)?;
        let proxy = start(std::net::Ipv4Addr::LOCALHOST.into())
            .await
            .map_err(proxy_failed)?;
        let f = t.reverse(gateway, proxy.addr()).await.map_err(|e| {
            Failure::infra(format!(
                "docker host {}: forwarding the source proxy to {gateway} over ssh (its sshd needs `GatewayPorts clientspecified`): {e}",
                host.name
            ))
        })?;
        let url = proxy.proxy_url_at(std::net::SocketAddr::new(gateway, f.remote_port));
        return Ok(SourceRoute {
            proxy,
            url,
            forward: Some((t.clone(), f)),
        });
    }
    let ip: std::net::IpAddr = match &host.sources_address {
        Some(a) => a.parse().map_err(|e| {
            Failure::new(
                crate::model::FailureKind::Recipe,
                format!("docker host {}: sources_address {a:?}: {e}", host.name),
            )
        })?,
        None if host.endpoint.starts_with("unix://") => {
            bridge_gateway(engine).await.ok_or_else(no_gateway)?
        }
        None => {
            return Err(Failure::new(
                crate::model::FailureKind::Recipe,
                format!(
                    "docker host {} ({}): its builds take sources, but Kiln does not know where its build containers reach this machine; set docker.hosts.sources_address",
                    host.name, host.endpoint
                ),
            ));
        }
    };
    let proxy = start(ip).await.map_err(proxy_failed)?;
    Ok(SourceRoute {
        url: proxy.proxy_url(),
        proxy,
        forward: None,
    })
}

/// The IPv4 gateway of the engine's default `bridge` network.
async fn bridge_gateway(engine: &Engine) -> Option<std::net::IpAddr> {
    let net = engine
        .docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .ok()?;
    net.ipam?.config?.into_iter().find_map(|c| {
        ipv4_gateway(c.gateway.as_deref(), c.subnet.as_deref()).map(std::net::IpAddr::V4)
    })
}

/// A bridge's IPv4 gateway from its IPAM entry: the one it names, or,
/// as a freshly started engine leaves it unnamed for its default bridge,
/// the first address of its subnet (where Docker puts `docker0`).
fn ipv4_gateway(gateway: Option<&str>, subnet: Option<&str>) -> Option<std::net::Ipv4Addr> {
    if let Some(g) = gateway.and_then(|g| g.parse().ok()) {
        return Some(g);
    }
    let (net, len) = subnet?.split_once('/')?;
    let net: std::net::Ipv4Addr = net.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if !(1..=30).contains(&len) {
        return None;
    }
    let mask = u32::MAX << (32 - len);
    Some(std::net::Ipv4Addr::from((u32::from(net) & mask) + 1))
}

/// Whether host `h` can build `t` (its OS, its arch natively or emulated,
/// a Windows release it runs).
pub(crate) fn serves(h: &DockerHost, t: &Target) -> bool {
    h.os == t.platform
        && (t.arch == h.arch || h.emulate.iter().any(|e| t.arch == *e))
        && h.runs_os_version(t.os_version.as_deref())
}

/// The build of one arch, as the engine API takes it.
fn spec(job: &BuildJob<'_>, work_dir: &std::path::Path) -> BuildSpec {
    let p = job.prepared;
    let t = &p.target;
    BuildSpec {
        target: t.id(),
        dockerfile: p.main_recipe().to_string(),
        context: BTreeMap::new(),
        os: t.platform.clone(),
        arch: t.arch,
        repository: job.repository.to_string(),
        engine_tag: format!("{}-{}", job.immutable_tag, t.arch),
        parent: p
            .inputs
            .get("parent")
            .zip(p.inputs.get("parent_digest"))
            .map(|(name, digest)| format!("{name}@{digest}")),
        source_date_epoch: t.source_date_epoch,
        work_dir: work_dir.to_path_buf(),
        // Every image runs its opam; a compiler image also its compiler.
        smoke: t
            .expected_ocaml()
            .map(|expect| SmokeCheck {
                argv: vec!["ocaml".into(), "-version".into()],
                expect,
            })
            .into_iter()
            .chain([SmokeCheck {
                argv: vec!["opam".into(), "--version".into()],
                expect: t.vars.get("opam_version").cloned().unwrap_or_default(),
            }])
            .chain(t.smoke.iter().map(|c| SmokeCheck {
                argv: vec!["sh".into(), "-c".into(), c.run.clone()],
                expect: c.expect.clone(),
            }))
            .collect(),
        log: job.log.to_path_buf(),
        labels: BTreeMap::from([("org.ocaml.kiln.build-key".to_string(), p.key.clone())]),
        auth: Default::default(),
        host: String::new(),
        proxy: None,
        isolation: None,
        no_cache: job.fresh,
    }
}

/// The engine's credentials for `spec`: its parent's registry (the pull)
/// and Kiln's own (a Windows push), each its own.
async fn engine_auth(
    config: &Config,
    spec: &BuildSpec,
    log: &std::path::Path,
) -> Result<super::EngineAuth, Failure> {
    let hosts = spec
        .parent
        .as_deref()
        .map(|p| super::pull::registry_host(p.split('@').next().unwrap_or(p)))
        .into_iter()
        .chain((spec.os != "linux").then(|| crate::registry::auth::host_of(&config.registry.url)));
    super::EngineAuth::resolve(&config.registry, hosts)
        .await
        .map_err(|e| Failure::new(e.kind(), e.to_string()).with_log(log))
}

impl Builder for DockerBuilder {
    fn kind(&self) -> BuilderKind {
        BuilderKind::Docker
    }

    fn artifact_kind(&self) -> ArtifactKind {
        ArtifactKind::Image
    }

    fn can_build(&self, t: &Target) -> bool {
        self.hosts.iter().any(|h| serves(h, t))
    }

    fn capacity(&self) -> usize {
        self.hosts
            .iter()
            .map(|h| h.concurrency)
            .sum::<usize>()
            .max(1)
    }

    fn build_vars(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("sources_url".to_string(), super::SOURCES_URL.to_string())])
    }

    fn build<'a>(&'a self, job: BuildJob<'a>) -> BoxFuture<'a, Result<BuildOutput, Failure>> {
        Box::pin(async move {
            match self.run(job, true).await? {
                Done::Pushed(digest) => Ok(BuildOutput {
                    digest,
                    adopted: None,
                }),
                Done::Kept(_) => Err(Failure::infra("a published build was kept, not pushed")),
            }
        })
    }

    fn sweep(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            crate::builders::sweep_dead_work_dirs(&self.work_dir);
            for (h, e, _) in self.engines().await {
                if let Err(err) = super::sweep_orphans(e).await {
                    tracing::warn!(host = %h.name, error = %err, "sweeping what killed kiln processes left");
                }
            }
        })
    }

    /// Each engine: reachable, Kiln's running containers, its cache size.
    fn inventory<'a>(
        &'a self,
        _lock: &'a crate::lockfile::Lockfile,
    ) -> BoxFuture<'a, Vec<crate::builders::inventory::HostReport>> {
        Box::pin(async move {
            let mut reports = futures_util::future::join_all(self.hosts.iter().map(|h| {
                crate::builders::inventory::within(super::usage::stub(h), super::usage::report(h))
            }))
            .await;
            hosts::show_down(&self.config, "docker", &mut reports);
            reports
        })
    }
}

#[cfg(test)]
mod routing {
    #[test]
    fn a_bridge_without_a_named_gateway_has_its_subnets_first_address() {
        use super::ipv4_gateway;
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        assert_eq!(
            ipv4_gateway(Some("10.9.0.5"), Some("10.9.0.0/24")),
            Some(ip("10.9.0.5"))
        );
        assert_eq!(
            ipv4_gateway(None, Some("172.17.0.0/16")),
            Some(ip("172.17.0.1"))
        );
        assert_eq!(
            ipv4_gateway(Some(""), Some("192.168.7.9/24")),
            Some(ip("192.168.7.1"))
        );
        assert_eq!(ipv4_gateway(None, Some("fd00::/64")), None);
        assert_eq!(ipv4_gateway(None, Some("10.0.0.0/32")), None);
        assert_eq!(ipv4_gateway(None, None), None);
    }
}
