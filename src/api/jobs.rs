//! /v1/jobs: create, list, get, cancel, events (paged or live SSE), checkpoints.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::body::{check_id, not_found, JsonBody};
use super::types::{Checkpoint, CheckpointList, CreateJob, EventQuery, Job, JobEvent, JobEventList, JobList, PageQuery};
use super::{page_limit, SharedState, STREAM_POLL};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::Variant;
use crate::store::db::CancelOutcome;
use crate::store::JobStatus;

/// Create a training job.
///
/// The job is queued; a worker runs the two-stage recipe on it (stage 1:
/// frozen base, head only; stage 2: fine-tuning with BatchNorm statistics
/// frozen). Hyper-parameters come from a recipe (`standard` unless
/// `hyperparameters.recipe` says `notebook`) with any field overridden.
#[utoipa::path(post, path = "/v1/jobs", operation_id = "create_job", tag = "jobs", request_body = CreateJob,
    responses(
        (status = 201, body = Job),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 404, description = "unknown dataset", body = ErrorBody),
        (status = 413, description = "a body over 1 MiB", body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "invalid fields or hyper-parameters, no pretrained weights for a full-size job, or a job whose estimated peak memory exceeds the limit (job_too_large)", body = ErrorBody),
    ),
    security((), ("api_key" = [])))]
pub async fn create(State(st): State<SharedState>, JsonBody(req): JsonBody<CreateJob>) -> ApiResult<(StatusCode, Json<Job>)> {
    check_id("dataset", &req.dataset_id)?;
    let dataset = st.db.get_dataset(&req.dataset_id).await?.ok_or_else(|| not_found("dataset", &req.dataset_id))?;
    let mut settings = req.hyperparameters.unwrap_or_default();
    if let Some(b) = req.backbone {
        settings.backbone = Some(b);
    }
    let config = settings.resolve();
    config.validate().map_err(|m| ApiError::unprocessable("invalid_hyperparameters", m))?;
    let variant = req.variant.unwrap_or(Variant::Full);
    let images = dataset.counts.iter().map(|c| (c.train + c.validation) as u64).sum();
    crate::train::memory::estimate(&config, variant, images)
        .check(st.cfg.job_memory_budget())
        .map_err(|m| ApiError::unprocessable("job_too_large", m))?;
    if variant == Variant::Full && !st.cfg.weights_path().exists() {
        return Err(ApiError::unprocessable(
            "weights_missing",
            format!(
                "full-size jobs need the pretrained weights at {}: run `tuneserve weights fetch xception` (or start with --weights)",
                st.cfg.weights_path().display()
            ),
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    st.db
        .insert_job(&id, &req.dataset_id, variant, &config)
        .await?;
    st.jobs_queued.notify_one();
    metrics::counter!("tuneserve_jobs_created_total").increment(1);
    let row = st.db.get_job(&id).await?.ok_or_else(|| ApiError::internal("job vanished after insert"))?;
    Ok((StatusCode::CREATED, Json(Job::from_row(row))))
}

/// List jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", operation_id = "list_jobs", tag = "jobs", params(PageQuery),
    responses((status = 200, body = JobList), (status = 400, description = "invalid query string or unknown cursor", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn list(State(st): State<SharedState>, super::body::ApiQuery(q): super::body::ApiQuery<PageQuery>) -> ApiResult<Json<JobList>> {
    let limit = page_limit(q.limit, 20, 100);
    let rows = st
        .db
        .list_jobs(q.after.as_deref(), limit + 1)
        .await?
        .ok_or_else(|| ApiError::bad_request("invalid_cursor", "`after` names no job"))?;
    let has_more = rows.len() as i64 > limit;
    let data = rows.into_iter().take(limit as usize).map(Job::from_row).collect();
    Ok(Json(JobList { object: "list", data, has_more }))
}

/// One job: status, stage, epoch, latest metrics, error.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "get_job", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn get_one(State(st): State<SharedState>, super::body::ApiPath(id): super::body::ApiPath<String>) -> ApiResult<Json<Job>> {
    check_id("job", &id)?;
    let row = st.db.get_job(&id).await?.ok_or_else(|| not_found("job", &id))?;
    Ok(Json(Job::from_row(row)))
}

/// Cancel a job. A queued job is cancelled at once; a running one stops at
/// its next step (its `cancel_requested` turns true, then its status
/// `cancelled`). A finished job gives 409.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", operation_id = "cancel_job", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, description = "the job has finished", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn cancel(State(st): State<SharedState>, super::body::ApiPath(id): super::body::ApiPath<String>) -> ApiResult<Json<Job>> {
    check_id("job", &id)?;
    match st.db.cancel_job(&id).await? {
        CancelOutcome::NotFound => return Err(not_found("job", &id)),
        CancelOutcome::Finished => {
            let s = st.db.get_job(&id).await?.map_or("finished", |j| j.status.as_str());
            return Err(ApiError::conflict("job_finished", format!("the job has already finished ({s})")));
        }
        CancelOutcome::Cancelled => {
            // Nobody else writes events for a job that never started.
            let seq = st.db.next_event_seq(&id).await?;
            st.db.insert_event(&id, seq, "status", &json!({"type": "status", "status": JobStatus::Cancelled})).await?;
            st.job_events.notify_waiters();
        }
        CancelOutcome::Requested => {}
    }
    let row = st.db.get_job(&id).await?.ok_or_else(|| not_found("job", &id))?;
    Ok(Json(Job::from_row(row)))
}

/// A job's events: paged history (JSON), or with `?stream=true` /
/// `Accept: text/event-stream` a live Server-Sent-Events stream that replays
/// from `after` (or `Last-Event-ID`) and ends after the job's final status.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", operation_id = "list_job_events", tag = "jobs", params(("id" = String, Path), EventQuery),
    responses(
        (status = 200, description = "history page (JSON) or SSE stream: `id` = seq, `event` = type, `data` = JSON",
            content((JobEventList = "application/json"), (super::types::JobStreamEvent = "text/event-stream"))),
        (status = 400, description = "invalid query string", body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn events(
    State(st): State<SharedState>,
    super::body::ApiPath(id): super::body::ApiPath<String>,
    super::body::ApiQuery(q): super::body::ApiQuery<EventQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_id("job", &id)?;
    if st.db.get_job(&id).await?.is_none() {
        return Err(not_found("job", &id));
    }
    let wants_sse = q.stream.unwrap_or(false)
        || headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"));
    let last_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let after = last_id.or(q.after).unwrap_or(0);
    if wants_sse {
        return Ok(Sse::new(event_stream(st, id, after)).keep_alive(KeepAlive::default()).into_response());
    }
    let limit = page_limit(q.limit, 100, 1000);
    let rows = st.db.list_events(&id, after, limit + 1).await?;
    let has_more = rows.len() as i64 > limit;
    let data = rows.into_iter().take(limit as usize).map(JobEvent::from_row).collect();
    Ok(Json(JobEventList { object: "list", data, has_more }).into_response())
}

struct StreamState {
    st: SharedState,
    id: String,
    after: i64,
    buf: VecDeque<JobEvent>,
    done: bool,
}

/// Polls the database (so events written by a worker in another process are
/// seen too), woken early by local workers; ends with the job's final status
/// event, or at shutdown.
fn event_stream(
    st: SharedState,
    id: String,
    after: i64,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> {
    let init = StreamState { st, id, after, buf: VecDeque::new(), done: false };
    futures::stream::unfold(init, |mut s| async move {
        loop {
            if let Some(ev) = s.buf.pop_front() {
                if ev.kind == "status"
                    && ev.data.get("status").and_then(|v| JobStatus::deserialize(v).ok()).is_some_and(JobStatus::is_finished)
                {
                    s.done = true;
                    s.buf.clear();
                }
                let sse = SseEvent::default()
                    .id(ev.seq.to_string())
                    .event(ev.kind.clone())
                    .data(ev.data.to_string());
                return Some((Ok(sse), s));
            }
            if s.done || s.st.shutdown.is_cancelled() {
                return None;
            }
            // Register for the wake-up before looking, so none is missed.
            let events = s.st.job_events.clone();
            let notified = events.notified();
            match s.st.db.list_events(&s.id, s.after, 200).await {
                Ok(rows) if !rows.is_empty() => {
                    s.after = rows.last().map(|r| r.seq).unwrap_or(s.after);
                    s.buf.extend(rows.into_iter().map(JobEvent::from_row));
                    continue;
                }
                Ok(_) => {
                    // A job that ended before its final event was recorded (or
                    // long ago, past `after`): nothing more will come.
                    if let Ok(Some(j)) = s.st.db.get_job(&s.id).await {
                        if j.status.is_finished() {
                            return None;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "event stream could not read events"),
            }
            let shutdown = s.st.shutdown.clone();
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(STREAM_POLL) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    })
}

/// A job's checkpoints (stage, epoch, metrics), oldest first.
#[utoipa::path(get, path = "/v1/jobs/{id}/checkpoints", operation_id = "list_job_checkpoints", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = CheckpointList), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn checkpoints(State(st): State<SharedState>, super::body::ApiPath(id): super::body::ApiPath<String>) -> ApiResult<Json<CheckpointList>> {
    check_id("job", &id)?;
    if st.db.get_job(&id).await?.is_none() {
        return Err(not_found("job", &id));
    }
    let data = st.db.list_checkpoints(&id).await?.into_iter().map(Checkpoint::from_row).collect();
    Ok(Json(CheckpointList { object: "list", data, has_more: false }))
}
