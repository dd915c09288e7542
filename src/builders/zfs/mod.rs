//! macOS and FreeBSD base datasets built on ZFS and shipped as send streams.

pub mod artifact;
pub mod build;
pub mod driver;
pub mod fetch;
pub mod gc;
pub mod holds;
pub mod host;
pub mod incremental;
pub mod probe;
pub mod provision;
pub mod send;
pub mod sources;
pub mod worker;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::builders::{
    BoxFuture, BuildJob, BuildOutput, Builder, artifact_annotations, host_permits, hosts,
};
use crate::catalogue::BuilderKind;
use crate::config::{Config, ZfsHost};
use crate::model::{ArtifactKind, Failure};
use crate::plan::{Prepared, Target};
use crate::registry::{Registry, artifact as oci};
use artifact::{IncrementalRef, ZfsArtifactConfig};

/// ZFS hosts, one build at a time each, routed by
/// [`crate::builders::hosts`] among those of the target's platform.
pub struct ZfsBuilder {
    config: Config,
    hosts: Vec<ZfsHost>,
    provision_timeout: Duration,
    out_dir: PathBuf,
}

impl ZfsBuilder {
    pub fn new(config: &Config) -> ZfsBuilder {
        ZfsBuilder {
            config: config.clone(),
            hosts: config.zfs.hosts.clone(),
            provision_timeout: Duration::from_secs(config.zfs.provision_timeout_secs),
            out_dir: config.work_dir().join("zfs"),
        }
    }

    fn host_for(&self, t: &Target) -> Option<&ZfsHost> {
        self.hosts_for(t).into_iter().next()
    }

    /// The hosts of `t`'s platform and arch, in configuration order.
    fn hosts_for(&self, t: &Target) -> Vec<&ZfsHost> {
        self.hosts
            .iter()
            .filter(|h| h.platforms.contains(&t.platform) && t.arch == h.arch)
            .collect()
    }

    /// Build on the first host of the platform, in routing order, with its
    /// slot free (one build at a time each; see [`crate::builders::hosts`]);
    /// a host that fails the build as infrastructure and then does not
    /// answer is marked down and the build moves to the next.
    async fn routed(&self, job: &BuildJob<'_>) -> Result<BuildOutput, Failure> {
        let t = &job.prepared.target;
        let health = hosts::health(&self.config);
        let (mut up, mut due, mut down) = (Vec::new(), Vec::new(), Vec::new());
        for h in self.hosts_for(t) {
            let key = format!("zfs:{}", h.name);
            match health.as_ref().and_then(|s| s.get(&key).ok().flatten()) {
                Some(d) if !hosts::probe_due(&key) => {
                    down.push(format!("{} (down since {}: {})", h.name, d.since, d.error))
                }
                Some(_) => due.push(h),
                None => up.push(h),
            }
        }
        let n_up = up.len();
        up.extend(due);
        if up.is_empty() {
            let kind = if down.is_empty() {
                crate::model::FailureKind::NoBuilder
            } else {
                crate::model::FailureKind::Infra
            };
            return Err(Failure::new(
                kind,
                format!(
                    "no zfs host builds {} {}{}",
                    t.platform,
                    t.arch,
                    if down.is_empty() {
                        String::new()
                    } else {
                        format!(" that is up: {}", down.join("; "))
                    }
                ),
            ));
        }
        let slots = |h: &ZfsHost| host_permits(&format!("zfs:{}", h.name), 1);
        let free: Vec<(bool, usize)> = up
            .iter()
            .enumerate()
            .map(|(i, h)| (i < n_up, slots(h).available_permits()))
            .collect();
        let mut up: Vec<&ZfsHost> = hosts::order(&free).into_iter().map(|i| up[i]).collect();
        let mut failed = None;
        while !up.is_empty() {
            let permits: Vec<_> = up.iter().map(|h| slots(h)).collect();
            let (i, slot) = hosts::take_slot(&permits).await;
            let host = up.remove(i);
            let key = format!("zfs:{}", host.name);
            let built = self.build_on(host, job).await;
            drop(slot);
            let f = match built {
                Ok(out) => {
                    if let Some(s) = &health {
                        let _ = s.mark_up(&key);
                    }
                    return Ok(out);
                }
                Err(f) => f,
            };
            if f.kind != crate::model::FailureKind::Infra || probe::answers(host).await {
                return Err(f);
            }
            tracing::warn!(host = %host.name, target = %t.id(), error = %f.message, "zfs host does not answer: marked down, the build moves to the next host");
            if let Some(s) = &health {
                let _ = s.mark_down(&key, &f.message);
            }
            failed = Some(f);
        }
        Err(failed
            .unwrap_or_else(|| Failure::infra(format!("{}: no zfs host could build it", t.id()))))
    }
}

impl Builder for ZfsBuilder {
    fn kind(&self) -> BuilderKind {
        BuilderKind::Zfs
    }

    fn artifact_kind(&self) -> ArtifactKind {
        ArtifactKind::ZfsStream
    }

    fn can_build(&self, t: &Target) -> bool {
        self.host_for(t).is_some()
    }

    fn capacity(&self) -> usize {
        self.hosts.len().max(1)
    }

    /// `{{sources_url}}`: the source server as the build host reaches it
    /// (see [`sources`]), filled in when the build runs.
    fn build_vars(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("sources_url".to_string(), sources::SOURCES_URL.to_string())])
    }

    fn build<'a>(&'a self, job: BuildJob<'a>) -> BoxFuture<'a, Result<BuildOutput, Failure>> {
        Box::pin(async move { self.routed(&job).await })
    }

    fn sweep(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // A remote host is swept by each build, first thing over the
            // build's own connection (`build::build`): a run opens exactly
            // one connection per build, none for sweeping.
            for h in self.hosts.iter().filter(|h| h.ssh.is_empty()) {
                let zfs = driver::Zfs::new(h);
                let probe = format!("{}/base-image/sweep", base_of(h));
                if let Err(e) = build::sweep_dead(&zfs, &probe).await {
                    tracing::warn!(host = %h.name, error = %e, "sweeping what killed kiln processes left");
                }
            }
        })
    }

    fn inventory<'a>(
        &'a self,
        lock: &'a crate::lockfile::Lockfile,
    ) -> BoxFuture<'a, Vec<crate::builders::inventory::HostReport>> {
        Box::pin(async move {
            let names = crate::builders::inventory::zfs_names(lock);
            let names = &names;
            let mut reports = futures_util::future::join_all(self.hosts.iter().map(|h| {
                crate::builders::inventory::within(holds::stub(h), holds::report(h, names))
            }))
            .await;
            hosts::show_down(&self.config, "zfs", &mut reports);
            reports
        })
    }
}

/// `<pool>/<prefix>`: where a host keeps Kiln's trees.
fn base_of(h: &ZfsHost) -> String {
    format!("{}/{}", h.pool, h.prefix)
}

impl ZfsBuilder {
    /// Serve the target's sources, connect to `host` and make the server
    /// reachable from it, build and push there; the forward is closed and
    /// the server stopped when the build ends, however it ends.
    async fn build_on(&self, host: &ZfsHost, job: &BuildJob<'_>) -> Result<BuildOutput, Failure> {
        let t = &job.prepared.target;
        // Before the host is touched: a source missing from the mirror
        // refuses the build here, naming it and `kiln sources sync`.
        let server = crate::builders::source_server(&self.config, job)
            .await
            .map_err(|e| Failure::new(e.kind(), e.to_string()).with_log(job.log))?;
        // One connection for every step of the build; it closes when `zfs`
        // (and its clones) are dropped.
        let zfs = driver::Zfs::connect(host).await.map_err(|e| {
            Failure::infra(format!(
                "{}: zfs host {} unreachable: {e}",
                t.id(),
                host.name
            ))
        })?;
        let mut spec = self.spec(host, job);
        let reached = match &server {
            Some(s) => Some(sources::Reached::on(&zfs, s, &t.id()).await?),
            None => None,
        };
        if let Some(r) = &reached {
            spec.script = spec.script.replace(sources::SOURCES_URL, &r.url);
        }
        let result = self.build_and_push(host, job, &zfs, &spec).await;
        if let Some(r) = reached {
            r.close(&zfs).await;
        }
        drop(server);
        result
    }

    /// Build the tree on `host`, then push its full stream (and the
    /// incremental one from an earlier image of the series, if any).
    async fn build_and_push(
        &self,
        host: &ZfsHost,
        job: &BuildJob<'_>,
        zfs: &driver::Zfs,
        spec: &build::ZfsSpec,
    ) -> Result<BuildOutput, Failure> {
        let t = &job.prepared.target;
        let out = build::build(zfs, spec)
            .await
            .map_err(|e| Failure::new(e.kind(), e.to_string()).with_log(job.log))?;
        let sent = send::send_full(zfs, &out.snapshot, job.registry, job.repository, &t.id())
            .await
            .map_err(|e| Failure::new(e.kind(), e.to_string()).with_log(job.log))?;
        let incremental = push_incremental(zfs, spec, job).await;
        let config = ZfsArtifactConfig {
            os: t.platform.clone(),
            architecture: t.arch,
            layout: out.layout.clone(),
            incremental: incremental.into_iter().collect(),
        };
        let leaf = out.layout.leaf().to_string();
        let title = format!("{leaf}.zfs.zst");
        let pushed = oci::put_artifact(
            job.registry,
            &oci::ArtifactPush {
                repo: job.repository,
                file: std::path::Path::new(""),
                artifact_type: oci::ZFS_ARTIFACT,
                layer_media_type: oci::ZFS_LAYER,
                title: &title,
                digest: Some(&sent.digest),
                uncompressed_sha256: Some(&sent.uncompressed_sha256),
                config: serde_json::to_value(&config).unwrap_or_default(),
                annotations: artifact_annotations(job),
            },
            sent.digest.clone(),
            sent.size,
        )
        .await;
        let pushed = pushed.map_err(|e| Failure::new(e.kind(), e.to_string()))?;
        Ok(BuildOutput {
            digest: pushed.digest,
            adopted: out.reused.then(|| format!("host:{}", host.name)),
        })
    }

    /// What to build on `host`: the tree's name, children and mountpoints,
    /// the script's environment and the profile the smoke test sources.
    fn spec(&self, host: &ZfsHost, job: &BuildJob<'_>) -> build::ZfsSpec {
        let p: &Prepared = job.prepared;
        let t = &p.target;
        let leaf = format!("{}-{}-{}", t.os, t.ocaml_name(), p.short_key());
        let (children, env, profile) = layout(host, t, &leaf);
        // FreeBSD jobs run in a jail of the rootfs: so does the smoke test.
        let runner = match (t.platform.as_str(), children.first()) {
            ("freebsd", Some(rootfs)) => build::Runner::Jail {
                root: rootfs.mountpoint.clone(),
                user: "opam".into(),
            },
            _ => build::Runner::Host,
        };
        build::ZfsSpec {
            target: t.id(),
            platform: t.platform.clone(),
            arch: t.arch,
            dataset: format!("{}/base-image/{leaf}", base_of(host)),
            children,
            script: p.main_recipe().to_string(),
            env,
            user: t.vars.get("build_user").cloned(),
            runner,
            timeout: self.provision_timeout,
            profile,
            smoke: t
                .expected_ocaml()
                .map(|e| ("ocaml -version".to_string(), e))
                .into_iter()
                .collect(),
            log: job.log.to_path_buf(),
            out_dir: self.out_dir.clone(),
        }
    }
}

/// The children of a tree with their mountpoints (macOS: home and brew;
/// FreeBSD: the jail's rootfs), the script's environment, and the profile.
fn layout(
    host: &ZfsHost,
    t: &Target,
    leaf: &str,
) -> (Vec<build::Child>, BTreeMap<String, String>, PathBuf) {
    let mount_root = t.vars.get("mount_root").map(PathBuf::from);
    let mount = |child: &str, production: String| match &mount_root {
        Some(root) => root.join(&host.prefix).join(leaf).join(child),
        None => PathBuf::from(production),
    };
    let child = |name: &str, production: String| build::Child {
        name: name.into(),
        mountpoint: mount(name, production),
    };
    let mut env = BTreeMap::from([(
        "PATH".to_string(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
    )]);
    if t.platform == "macos" {
        let user = t.vars.get("build_user").map_or("mac1000", String::as_str);
        let home = child("home", format!("/Users/{user}"));
        let brew = child("brew", t.arch.brew_prefix().to_string());
        env.insert("HOME".into(), home.mountpoint.display().to_string());
        env.insert("BREW".into(), brew.mountpoint.display().to_string());
        let profile = home.mountpoint.join(".obuilder_profile.sh");
        (vec![home, brew], env, profile)
    } else {
        let rootfs = child("rootfs", format!("/usr/jails/{leaf}"));
        env.insert("ROOTFS".into(), rootfs.mountpoint.display().to_string());
        let profile = rootfs.mountpoint.join("home/opam/.profile");
        (vec![rootfs], env, profile)
    }
}

/// An earlier image of the same series on this host: also publish the
/// incremental stream from it. It is an optimisation for workers, so a
/// failure here is logged and the full stream is published alone.
async fn push_incremental(
    zfs: &driver::Zfs,
    spec: &build::ZfsSpec,
    job: &BuildJob<'_>,
) -> Option<IncrementalRef> {
    let t = &job.prepared.target;
    let series_prefix = format!("{}-ocaml-{}.", t.os, t.version.as_ref()?.series_tag());
    let previous = match incremental::previous_image(zfs, &spec.dataset, &series_prefix).await {
        Ok(p) => p?,
        Err(e) => {
            tracing::warn!(target_id = %t.id(), error = %e, "looking for an earlier image");
            return None;
        }
    };
    let inc = match incremental::incremental(zfs, spec, &previous).await {
        Ok(inc) => inc,
        Err(e) => {
            tracing::warn!(target_id = %t.id(), error = %e, "incremental stream not built");
            return None;
        }
    };
    let leaf = spec.dataset.rsplit('/').next().unwrap_or_default();
    let pushed = push_incremental_artifact(job.registry, job.repository, t, leaf, &inc).await;
    let _ = tokio::fs::remove_file(&inc.stream).await;
    match pushed {
        Ok(digest) => {
            tracing::info!(target_id = %t.id(), from = %inc.from, bytes = inc.size, "incremental stream published");
            Some(IncrementalRef {
                from: inc.from,
                digest,
                size: inc.size,
                from_guids: inc.from_guids,
            })
        }
        Err(e) => {
            tracing::warn!(target_id = %t.id(), error = %e, "incremental stream not pushed");
            None
        }
    }
}

/// Push an incremental stream as its own artifact; returns its digest.
async fn push_incremental_artifact(
    reg: &Registry,
    repository: &str,
    t: &Target,
    leaf: &str,
    inc: &incremental::Incremental,
) -> Result<String, crate::registry::RegistryError> {
    let digest = format!("sha256:{}", inc.sha256);
    let title = format!("{leaf}.from-{}.tar.zst", inc.from);
    let pushed = oci::push(
        reg,
        &oci::ArtifactPush {
            repo: repository,
            file: &inc.stream,
            artifact_type: oci::ZFS_INCREMENTAL_ARTIFACT,
            layer_media_type: oci::ZFS_INCREMENTAL_LAYER,
            title: &title,
            digest: Some(&digest),
            uncompressed_sha256: None,
            config: serde_json::json!({"os": t.platform, "architecture": t.arch,
                "to": leaf, "from": inc.from, "from_guids": inc.from_guids}),
            annotations: BTreeMap::new(),
        },
    )
    .await?;
    Ok(pushed.digest)
}
