//! Which QEMU host builds: the configured hosts (or this machine alone),
//! routed by [`crate::builders::hosts`]: the first with a free slot, a
//! host lost mid-build marked down (when it does not answer) and the build
//! moved to the next.

use super::{QemuBuilder, accel, build, img, site};
use crate::builders::{host_permits, hosts};
use crate::config::QemuHost;
use crate::model::Failure;

impl QemuBuilder {
    /// The configured hosts, or this machine alone.
    pub(super) fn hosts(&self) -> Vec<QemuHost> {
        if self.qemu.hosts.is_empty() {
            vec![site::Site::local_host()]
        } else {
            self.qemu.hosts.clone()
        }
    }

    /// Build on the first host, in routing order, with a slot free (see
    /// [`crate::builders::hosts`]); a host that cannot be reached, or is
    /// lost mid-build, is marked down and the build moves to the next.
    pub(super) async fn routed(
        &self,
        img: &img::Img,
        mut spec: build::QemuSpec,
    ) -> Result<build::Built, Failure> {
        let health = hosts::health(&self.config);
        let (mut up, mut due, mut down) = (Vec::new(), Vec::new(), Vec::new());
        for h in self.hosts() {
            let key = format!("qemu:{}", h.name);
            match health.as_ref().and_then(|s| s.get(&key).ok().flatten()) {
                // A down host is tried again (last) when its probe is due:
                // opening its site is the probe.
                Some(d) if !hosts::probe_due(&key) => {
                    down.push(format!("{} (down since {}: {})", h.name, d.since, d.error));
                }
                Some(_) => due.push((h, true)),
                None => up.push((h, false)),
            }
        }
        up.extend(due);
        if up.is_empty() {
            return Err(Failure::infra(format!(
                "{}: no qemu host is up: {}",
                spec.target,
                down.join("; ")
            )));
        }
        let free: Vec<(bool, usize)> = up
            .iter()
            .map(|(h, was_down)| {
                let slots = host_permits(&format!("qemu:{}", h.name), h.concurrency);
                (!*was_down, slots.available_permits())
            })
            .collect();
        let mut up: Vec<(QemuHost, bool)> = hosts::order(&free)
            .into_iter()
            .map(|i| up[i].clone())
            .collect();
        let mut failed = None;
        while !up.is_empty() {
            let slots: Vec<_> = up
                .iter()
                .map(|(h, _)| host_permits(&format!("qemu:{}", h.name), h.concurrency))
                .collect();
            let (i, slot) = hosts::take_slot(&slots).await;
            let (host, _) = up.remove(i);
            let key = format!("qemu:{}", host.name);
            spec.accel = self.accel_on(&host, &spec);
            let built = build::build(img, &spec, &host).await;
            drop(slot);
            match built {
                Ok(out) => {
                    if let Some(s) = &health
                        && s.mark_up(&key).unwrap_or(false)
                    {
                        tracing::info!(host = %host.name, "qemu host answers again: back in the routing");
                    }
                    return Ok(out);
                }
                Err(e @ build::QemuError::Host { .. }) => {
                    // Down only if it does not answer now (a cut
                    // connection to a host that is up is not).
                    let answers =
                        host.ssh.is_empty() || site::probe(&host, &self.qemu).await.is_ok();
                    tracing::warn!(host = %host.name, target = %spec.target, error = %e, answers, "qemu host lost: the build moves to the next host");
                    if let Some(s) = &health
                        && !answers
                    {
                        let _ = s.mark_down(&key, &e.to_string());
                    }
                    failed = Some(Failure::infra(e.to_string()));
                }
                Err(e) => return Err(Failure::new(e.kind(), e.to_string())),
            }
        }
        Err(failed.unwrap_or_else(|| {
            Failure::infra(format!("{}: no qemu host could build it", spec.target))
        }))
    }

    /// The accelerator on `host`: the target's `vars.accel`, else the
    /// host's, else `qemu.accel` (`auto` judged here for this machine,
    /// KVM on a remote host).
    fn accel_on(&self, host: &QemuHost, spec: &build::QemuSpec) -> String {
        if let Some(a) = &spec.accel_var {
            return a.clone();
        }
        match (&host.accel, host.ssh.is_empty()) {
            (Some(a), _) => a.clone(),
            (None, true) => accel(&self.qemu),
            (None, false) if self.qemu.accel == "auto" => "kvm".into(),
            (None, false) => self.qemu.accel.clone(),
        }
    }
}
