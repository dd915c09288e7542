//! The host model every builder routes by: Docker engines and QEMU hosts
//! (ZFS workers are matched to their platforms and take one build each,
//! through the same slots and health).
//!
//! - **Slots**: each host's `concurrency`, shared by every build of the
//!   process ([`crate::builders::host_permits`], keyed `<kind>:<name>`).
//! - **Order** ([`order`]): hosts that run the arch natively first, then
//!   the most free slots, then the configuration's order; a build takes the
//!   first host with a slot free now ([`take_slot`]), so that builds
//!   arriving together spread over hosts.
//! - **Health**: a host that fails a build as infrastructure and then does
//!   not answer is marked down in the state store
//!   ([`crate::state::hosts`], keyed `<kind>:<name>`): every process skips
//!   it, probing it at most every [`PROBE_EVERY`], and the build moves to
//!   the next host. `kiln doctor`, `kiln status`, `kiln workers` and the
//!   API read the same records ([`marked_down`]).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// The state store's record of hosts marked down (routing works without
/// it: a store that cannot open is logged).
pub fn health(config: &Config) -> Option<crate::state::hosts::HostHealth> {
    match crate::state::hosts::HostHealth::open(&config.database.path) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "host health: the state store failed");
            None
        }
    }
}

/// Show, in each report of `kind`'s hosts, the ones routing has marked
/// down (since when, why, and whether they answer now).
pub fn show_down(config: &Config, kind: &str, reports: &mut [super::inventory::HostReport]) {
    let down = health(config)
        .and_then(|h| h.all().ok())
        .unwrap_or_default();
    for r in reports {
        let key = format!("{kind}:{}", r.host);
        if let Some(d) = down.iter().find(|d| d.host == key) {
            r.health = marked_down(&r.health, d);
        }
    }
}

/// A slot on the first host, in routing order, that has one free now;
/// else wait for the first host's. Returns the host's index and its slot
/// (none only if its semaphore was closed).
pub async fn take_slot(slots: &[Arc<Semaphore>]) -> (usize, Option<OwnedSemaphorePermit>) {
    if let Some((i, p)) = slots
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.clone().try_acquire_owned().ok().map(|p| (i, p)))
    {
        return (i, Some(p));
    }
    match slots.first() {
        Some(s) => (0, s.clone().acquire_owned().await.ok()),
        None => (0, None),
    }
}

/// A host's health as the inventory shows it once a build marked it down:
/// routing skips it until a probe finds it answering.
pub fn marked_down(health: &str, d: &crate::state::hosts::Down) -> String {
    let now = if health == "ok" {
        "answers again: routing takes it back at its next probe".to_string()
    } else {
        health.to_string()
    };
    format!("down since {}: {} ({now})", d.since, d.error)
}

/// How often a down host is pinged to see whether it answers again.
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Is a probe of the down host `key` due (and, if so, taken now)?
pub fn probe_due(key: &str) -> bool {
    static LAST: OnceLock<std::sync::Mutex<BTreeMap<String, std::time::Instant>>> = OnceLock::new();
    let mut last = match LAST.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let now = std::time::Instant::now();
    match last.get(key) {
        Some(t) if now.duration_since(*t) < PROBE_EVERY => false,
        _ => {
            last.insert(key.to_string(), now);
            true
        }
    }
}

/// The order to try hosts in, given for each (runs the arch natively,
/// free build slots): native first, then the most free slots, then the
/// configuration's order.
pub fn order(hosts: &[(bool, usize)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..hosts.len()).collect();
    idx.sort_by_key(|&i| (!hosts[i].0, std::cmp::Reverse(hosts[i].1), i));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_hosts_come_first_then_the_most_free_slots() {
        let hosts = [(false, 4), (true, 1), (true, 3), (false, 0)];
        assert_eq!(order(&hosts), vec![2, 1, 0, 3]);
        assert_eq!(order(&[(true, 2), (true, 2)]), vec![0, 1]);
        assert!(order(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_build_takes_the_first_free_slot_in_order() {
        let (a, b) = (Arc::new(Semaphore::new(1)), Arc::new(Semaphore::new(1)));
        let slots = [a.clone(), b.clone()];
        let (i, first) = take_slot(&slots).await;
        assert_eq!(i, 0);
        let (j, second) = take_slot(&slots).await;
        assert_eq!(j, 1, "the busy first host is passed over");
        assert!(first.is_some() && second.is_some());
        assert_eq!(a.available_permits() + b.available_permits(), 0);
    }

    #[test]
    fn a_host_marked_down_shows_when_and_why_and_whether_it_answers() {
        let d = crate::state::hosts::Down {
            host: "docker:arm".into(),
            since: "2026-12-07T10:00:00Z".into(),
            error: "engine gone".into(),
        };
        assert_eq!(
            marked_down("ok", &d),
            "down since 2026-12-07T10:00:00Z: engine gone (answers again: routing takes it back at its next probe)"
        );
        assert_eq!(
            marked_down("unreachable: refused", &d),
            "down since 2026-12-07T10:00:00Z: engine gone (unreachable: refused)"
        );
    }
}
