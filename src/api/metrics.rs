//! The API's own counters (requests by route, responses by status class,
//! snapshot reloads) and their Prometheus exposition under `/metrics`,
//! with the published and required tags and the daemon's job queue.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::gate::Verdict;
use super::{AppState, Shared};

/// Request and reload counters, shared by every handler.
#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 6],
    status_2xx: AtomicU64,
    status_3xx: AtomicU64,
    status_4xx: AtomicU64,
    status_5xx: AtomicU64,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
}

const METRIC_ROUTES: [&str; 6] = [
    "resolve",
    "lockfile",
    "versions",
    "platforms",
    "status",
    "other",
];

impl Metrics {
    /// A snapshot reload succeeded.
    pub(super) fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot reload failed; the previous snapshot is still served.
    pub(super) fn reload_failed(&self) {
        self.reload_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Count one request to `route` (an index into `METRIC_ROUTES`) by status.
pub(super) fn count(state: &AppState, route: usize, status: StatusCode) {
    state.metrics.requests[route].fetch_add(1, Ordering::Relaxed);
    let c = match status.as_u16() {
        200..=299 => &state.metrics.status_2xx,
        300..=399 => &state.metrics.status_3xx,
        400..=499 => &state.metrics.status_4xx,
        _ => &state.metrics.status_5xx,
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// The job queue in Prometheus text format: depth by state, attempt
/// durations by builder, failed attempts by kind.
fn queue_metrics(q: &crate::state::queue::QueueStats) -> String {
    let mut s =
        String::from("# HELP kiln_jobs Jobs in the queue, by state.\n# TYPE kiln_jobs gauge\n");
    for state in ["queued", "running", "succeeded", "failed"] {
        let n = q
            .states
            .iter()
            .find(|(k, _)| k == state)
            .map_or(0, |(_, n)| *n);
        s.push_str(&format!("kiln_jobs{{state=\"{state}\"}} {n}\n"));
    }
    s.push_str("# HELP kiln_build_duration_seconds Time spent in build attempts, by builder.\n# TYPE kiln_build_duration_seconds summary\n");
    for (builder, sum, count) in &q.durations {
        s.push_str(&format!(
            "kiln_build_duration_seconds_sum{{builder=\"{builder}\"}} {sum}\nkiln_build_duration_seconds_count{{builder=\"{builder}\"}} {count}\n"
        ));
    }
    s.push_str("# HELP kiln_build_failures_total Failed build attempts, by kind.\n# TYPE kiln_build_failures_total counter\n");
    for kind in crate::model::FailureKind::ALL.map(|k| k.as_str()) {
        let n = q
            .failures
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| *n);
        s.push_str(&format!(
            "kiln_build_failures_total{{kind=\"{kind}\"}} {n}\n"
        ));
    }
    s
}

pub(super) async fn scrape(State(st): State<Shared>) -> Response {
    let snap = st.store.current();
    let m = &st.metrics;
    let mut s = String::new();
    s.push_str("# HELP kiln_api_requests_total Requests served, by route.\n# TYPE kiln_api_requests_total counter\n");
    for (i, name) in METRIC_ROUTES.iter().enumerate() {
        s.push_str(&format!(
            "kiln_api_requests_total{{route=\"{name}\"}} {}\n",
            m.requests[i].load(Ordering::Relaxed)
        ));
    }
    s.push_str("# HELP kiln_api_responses_total Responses, by status class.\n# TYPE kiln_api_responses_total counter\n");
    for (class, c) in [
        ("2xx", &m.status_2xx),
        ("3xx", &m.status_3xx),
        ("4xx", &m.status_4xx),
        ("5xx", &m.status_5xx),
    ] {
        s.push_str(&format!(
            "kiln_api_responses_total{{class=\"{class}\"}} {}\n",
            c.load(Ordering::Relaxed)
        ));
    }
    let available = snap
        .requirements
        .iter()
        .filter(|r| {
            matches!(
                super::gate::verdict(r, &snap.lockfile, &snap.jobs),
                Verdict::Available { .. }
            )
        })
        .count();
    s.push_str(&format!(
        "# HELP kiln_lockfile_entries Published tags.\n# TYPE kiln_lockfile_entries gauge\nkiln_lockfile_entries {}\n\
         # HELP kiln_required_tags Tags the catalogue requires.\n# TYPE kiln_required_tags gauge\nkiln_required_tags {}\n\
         # HELP kiln_available_tags Required tags that are available.\n# TYPE kiln_available_tags gauge\nkiln_available_tags {available}\n\
         # HELP kiln_reloads_total Snapshot reloads.\n# TYPE kiln_reloads_total counter\nkiln_reloads_total {}\n\
         # HELP kiln_reload_errors_total Failed reloads.\n# TYPE kiln_reload_errors_total counter\nkiln_reload_errors_total {}\n",
        snap.lockfile.entries.len(),
        snap.requirements.len(),
        m.reloads.load(Ordering::Relaxed),
        m.reload_errors.load(Ordering::Relaxed),
    ));
    if let Some(db) = st.queue_db.clone()
        && db.exists()
    {
        let stats = tokio::task::spawn_blocking(move || {
            crate::state::queue::Queue::open(&db).and_then(|q| q.stats())
        })
        .await;
        if let Ok(Ok(q)) = stats {
            s.push_str(&queue_metrics(&q));
        }
    }
    count(&st, 5, StatusCode::OK);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response()
}
