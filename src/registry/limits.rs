//! Rate limits: Kiln's own request schedule, and the limits a registry
//! announces.
//!
//! Kiln spaces its requests itself (a GCRA schedule, `registry.rate_limit`
//! per second, bursts of `concurrency`). A registry says how much it allows
//! in headers: `Retry-After` on a 429, and `ratelimit-limit` (`100;w=21600`:
//! 100 per 6 hours, Docker Hub), `ratelimit-remaining` and `ratelimit-reset`
//! (seconds until the window resets) on any answer. Those decide how long a
//! 429 is waited out; a wait longer than `registry.rate_limit_max_wait_secs`
//! is not waited in the request but returned as
//! [`RegistryError::RateLimited`](super::RegistryError::RateLimited),
//! infrastructure, carrying when the limit resets, and the host is held
//! until then for the whole process (every request to it fails at once
//! instead of spending what little is left): the daemon parks a job that
//! failed under such a hold until it ends ([`held_since`]).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;

/// What a registry said about its limits in one answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announced {
    /// `ratelimit-limit`: requests per window.
    pub limit: Option<u64>,
    /// The window (`;w=` of `ratelimit-limit` or `ratelimit-remaining`).
    pub window: Option<Duration>,
    pub remaining: Option<u64>,
    /// `ratelimit-reset`: until the window resets.
    pub reset: Option<Duration>,
    /// `Retry-After`, in seconds or as an HTTP date.
    pub retry_after: Option<Duration>,
}

/// `100;w=21600` → (100, 21600 s).
fn count_and_window(v: &str) -> (Option<u64>, Option<Duration>) {
    let first = v.split(',').next().unwrap_or("");
    let mut parts = first.split(';');
    let count = parts.next().and_then(|n| n.trim().parse().ok());
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok())
        .map(Duration::from_secs);
    (count, window)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The limits announced in `h`.
pub fn announced(h: &HeaderMap) -> Announced {
    let (limit, w1) = header(h, "ratelimit-limit").map_or((None, None), count_and_window);
    let (remaining, w2) = header(h, "ratelimit-remaining").map_or((None, None), count_and_window);
    let reset = header(h, "ratelimit-reset")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let retry_after = header(h, "retry-after").and_then(|v| match v.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => DateTime::parse_from_rfc2822(v)
            .ok()
            .and_then(|t| (t.with_timezone(&Utc) - Utc::now()).to_std().ok()),
    });
    Announced {
        limit,
        window: w1.or(w2),
        remaining,
        reset,
        retry_after,
    }
}

impl Announced {
    /// How long a 429 asks to wait: Retry-After, else the reset, else (no
    /// request left) the whole window; `None` when it says nothing.
    pub fn wait(&self) -> Option<Duration> {
        self.retry_after
            .or(self.reset)
            .or_else(|| self.window.filter(|_| self.remaining == Some(0)))
    }

    /// For messages: `limit 100 per 21600s, 0 remaining`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.limit {
            parts.push(match self.window {
                Some(w) => format!("limit {l} per {}s", w.as_secs()),
                None => format!("limit {l}"),
            });
        }
        if let Some(r) = self.remaining {
            parts.push(format!("{r} remaining"));
        }
        if let Some(r) = self.reset {
            parts.push(format!("resets in {}s", r.as_secs()));
        }
        if let Some(r) = self.retry_after {
            parts.push(format!("Retry-After {}s", r.as_secs()));
        }
        parts.join(", ")
    }
}

/// A host left alone: until when (monotonic and wall clock), since when,
/// and what the registry announced when it asked.
#[derive(Clone)]
struct Hold {
    until: Instant,
    wall: DateTime<Utc>,
    since: Instant,
    said: String,
}

type Holds = Mutex<HashMap<String, Hold>>;

/// Hosts a registry asked Kiln to leave alone, process-wide.
fn holds() -> std::sync::MutexGuard<'static, HashMap<String, Hold>> {
    static HOLDS: OnceLock<Holds> = OnceLock::new();
    match HOLDS.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Leave `host` alone for `wait` (never shortening a longer hold); `said`
/// is what the registry announced ([`Announced::describe`]), repeated to
/// every request the hold refuses.
pub fn hold(host: &str, wait: Duration, said: &str) {
    let until = Instant::now() + wait;
    let wall = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
    let mut h = holds();
    match h.get(host) {
        Some(old) if old.until >= until => {}
        _ => {
            h.insert(
                host.to_string(),
                Hold {
                    until,
                    wall,
                    since: Instant::now(),
                    said: said.to_string(),
                },
            );
        }
    }
}

/// How long `host` is still held, if it is, until when, and what the
/// registry announced.
pub fn held(host: &str) -> Option<(Duration, DateTime<Utc>, String)> {
    let mut h = holds();
    match h.get(host) {
        Some(x) if x.until > Instant::now() => {
            Some((x.until - Instant::now(), x.wall, x.said.clone()))
        }
        Some(_) => {
            h.remove(host);
            None
        }
        None => None,
    }
}

/// The registry that asked, at `start` or later, to be left alone for
/// longer than Kiln waits in a request, and until when (the latest such
/// hold still in force): a job that started at `start` and failed is
/// parked until then instead of spending an attempt.
pub fn held_since(start: Instant) -> Option<(String, DateTime<Utc>)> {
    let now = Instant::now();
    holds()
        .iter()
        .filter(|(_, x)| x.until > now && x.since >= start)
        .max_by_key(|(_, x)| x.until)
        .map(|(h, x)| (h.clone(), x.wall))
}

/// Kiln's own schedule: requests spaced `interval` apart on average, a
/// burst of `burst` ahead of it allowed (GCRA).
pub struct Schedule {
    next: tokio::sync::Mutex<Instant>,
    interval: Duration,
    burst: Duration,
}

impl Schedule {
    /// `per_second` requests a second, bursts of `burst` requests.
    pub fn new(per_second: f64, burst: usize) -> Schedule {
        let per_second = per_second.max(0.001);
        Schedule {
            next: tokio::sync::Mutex::new(Instant::now()),
            interval: Duration::from_secs_f64(1.0 / per_second),
            burst: Duration::from_secs_f64(burst.max(1) as f64 / per_second),
        }
    }

    /// Wait for this request's slot.
    pub async fn slot(&self) {
        let wait = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let tat = (*next).max(now);
            *next = tat + self.interval;
            tat.checked_sub(self.burst)
                .unwrap_or(now)
                .saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn docker_hubs_headers_are_read() {
        let a = announced(&headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "0;w=21600"),
        ]));
        assert_eq!(a.limit, Some(100));
        assert_eq!(a.window, Some(Duration::from_secs(21600)));
        assert_eq!(a.remaining, Some(0));
        // Nothing left and no Retry-After: the whole window.
        assert_eq!(a.wait(), Some(Duration::from_secs(21600)));
        assert_eq!(a.describe(), "limit 100 per 21600s, 0 remaining");
    }

    #[test]
    fn retry_after_wins_over_the_reset() {
        let a = announced(&headers(&[
            ("retry-after", "7"),
            ("ratelimit-reset", "30"),
            ("ratelimit-remaining", "0"),
        ]));
        assert_eq!(a.wait(), Some(Duration::from_secs(7)));
        let b = announced(&headers(&[("ratelimit-reset", "30")]));
        assert_eq!(b.wait(), Some(Duration::from_secs(30)));
        let date = (Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let c = announced(&headers(&[("retry-after", &date)]));
        let w = c.wait().unwrap().as_secs();
        assert!((115..=120).contains(&w), "{w}");
        assert_eq!(announced(&HeaderMap::new()).wait(), None);
    }

    #[test]
    fn a_hold_is_never_shortened_and_expires() {
        let host = "holds.test:1";
        hold(host, Duration::from_secs(60), "limit 100 per 21600s");
        hold(host, Duration::from_secs(1), "Retry-After 1s");
        let (left, _, said) = held(host).unwrap();
        assert!(left > Duration::from_secs(50), "{left:?}");
        assert_eq!(said, "limit 100 per 21600s", "the longer hold's words");
        hold("expired.test:1", Duration::ZERO, "");
        assert!(held("expired.test:1").is_none());
    }
}
