//! `/v1/jobs`: the daemon's queue, and job control with the token: queue
//! one tag (forced: rebuilt although its key is unchanged, as `kiln build
//! --tag … --force`), cancel a queued or running job (the daemon stops a
//! running one within its queue poll, removing what its build made),
//! retry a failed or cancelled one. The same requests as `kiln jobs`, in
//! the same state database.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Shared, auth, bad_path, error};
use crate::state::queue::{ControlError, Queue};
use crate::state::rounds::Rounds;

/// The queue this server reads, or 503 when it is not the daemon's.
fn queue(st: &Shared) -> Result<(Queue, std::path::PathBuf), Box<Response>> {
    let no_queue = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-daemon",
            "jobs are run by `kiln daemon`; this server has no queue",
        )
    };
    let db = st.queue_db.clone().ok_or_else(|| Box::new(no_queue()))?;
    let q = Queue::open(&db).map_err(|e| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "state-store",
            e.to_string(),
        ))
    })?;
    Ok((q, db))
}

/// A refused control request: 404 for no such job, 409 for a job in the
/// wrong state, 503 when the state store failed.
fn refused(e: &ControlError) -> Response {
    let (status, kind) = match e {
        ControlError::NoSuchJob(_) => (StatusCode::NOT_FOUND, "no-such-job"),
        ControlError::NotCancellable { .. }
        | ControlError::NotRetryable { .. }
        | ControlError::AlreadyQueued { .. } => (StatusCode::CONFLICT, "job-state"),
        ControlError::State(_) => (StatusCode::SERVICE_UNAVAILABLE, "state-store"),
    };
    error(status, kind, e.to_string())
}

/// The latest 100 jobs, newest first.
pub(super) async fn list_jobs(State(st): State<Shared>) -> Response {
    let (q, _) = match queue(&st) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    match q.list(100) {
        Ok(jobs) => axum::Json(jobs).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "state-store",
            e.to_string(),
        ),
    }
}

/// What a control request on one job needs, in the order its answers
/// come: the token (401/403), a numeric id (400), the queue (503).
fn job_request(
    st: &Shared,
    headers: &HeaderMap,
    id: Result<Path<i64>, PathRejection>,
) -> Result<(Queue, std::path::PathBuf, i64), Box<Response>> {
    auth::writer(&st.token, headers).map_err(|denied| Box::new(denied.answer()))?;
    let Path(id) = id.map_err(|e| Box::new(bad_path(&e)))?;
    let (q, db) = queue(st)?;
    Ok((q, db, id))
}

pub(super) async fn cancel_job(
    State(st): State<Shared>,
    headers: HeaderMap,
    id: Result<Path<i64>, PathRejection>,
) -> Response {
    let (q, _, id) = match job_request(&st, &headers, id) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match q.cancel(id, "api") {
        Ok(done) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"job": id, "cancel": done})),
        )
            .into_response(),
        Err(e) => refused(&e),
    }
}

pub(super) async fn retry_job(
    State(st): State<Shared>,
    headers: HeaderMap,
    id: Result<Path<i64>, PathRejection>,
) -> Response {
    let (q, db, id) = match job_request(&st, &headers, id) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let rounds = match Rounds::open(&db) {
        Ok(r) => r,
        Err(e) => return refused(&ControlError::State(e)),
    };
    match q.retry(id, || rounds.start(&format!("retry:#{id}"))) {
        Ok(round) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"job": id, "round": round})),
        )
            .into_response(),
        Err(e) => refused(&e),
    }
}

/// `POST /v1/jobs`: `{"tag": "REPOSITORY:TAG", "force": true}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueTag {
    tag: String,
    #[serde(default)]
    force: bool,
}

/// Queue one tag in the daemon: its job's id.
pub(super) async fn queue_job(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use crate::model::rebuild::{Rebuild, TagRefused};
    if let Err(denied) = auth::writer(&st.token, &headers) {
        return denied.answer();
    }
    let asked: QueueTag = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad-body",
                format!("expected {{\"tag\": \"REPOSITORY:TAG\", \"force\": bool}}: {e}"),
            );
        }
    };
    let Some(tx) = &st.rebuild else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-daemon",
            "jobs are run by `kiln daemon`; this is `kiln serve`",
        );
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = Rebuild::Tag {
        tag: asked.tag,
        force: asked.force,
        reply,
    };
    if tx.send(request).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-daemon",
            "the scheduler has stopped",
        );
    }
    match answer.await {
        Ok(Ok(job)) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"job": job, "force": asked.force})),
        )
            .into_response(),
        Ok(Err(TagRefused::Unknown(m))) => error(StatusCode::NOT_FOUND, "no-such-tag", m),
        Ok(Err(TagRefused::Failed(m))) => error(StatusCode::SERVICE_UNAVAILABLE, "state-store", m),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-daemon",
            "the scheduler has stopped",
        ),
    }
}
