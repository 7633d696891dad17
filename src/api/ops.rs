//! Operations: liveness, readiness, Prometheus metrics, the OpenAPI
//! document and its docs page.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::types::*;
use super::{datasets, jobs, models, predict, SharedState};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorDetail};
use crate::store::db::status;

#[derive(OpenApi)]
#[openapi(
    info(title = "tuneserve", description = "Transfer learning on images as a service: upload a dataset of class \
        folders, fine-tune Xception in two stages, serve batched predictions. Every error is \
        `{\"error\": {\"code\", \"message\"}}`."),
    paths(
        datasets::create, datasets::list, datasets::get_one, datasets::delete,
        jobs::create, jobs::list, jobs::get_one, jobs::cancel, jobs::events, jobs::checkpoints,
        models::checkpoint, models::download, models::list, models::get_one, models::make_default,
        predict::predict, predict::predict_model,
        health, ready, metrics,
    ),
    components(schemas(ErrorBody, ErrorDetail, crate::train::Event, crate::train::checkpoint::CheckpointMeta)),
    modifiers(&BearerKey),
    tags(
        (name = "datasets", description = "Upload and inspect image datasets"),
        (name = "jobs", description = "Training jobs, their events and checkpoints"),
        (name = "models", description = "Published models"),
        (name = "predict", description = "Batched inference"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = api.components.as_mut() {
            c.add_security_scheme("api_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        }
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database answers and the default model (if any) is loaded.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Ready), (status = 503, body = ErrorBody)))]
pub async fn ready(State(st): State<SharedState>) -> ApiResult<Json<Ready>> {
    if let Err(e) = st.db.ping().await {
        return Err(ApiError::unavailable("database_unavailable", format!("database unreachable: {e}")));
    }
    let default = st.db.default_model().await?.map(|m| m.id);
    let loaded = st.registry.default_loaded().await?;
    if !loaded {
        return Err(ApiError::unavailable("model_loading", "the default model is not loaded yet"));
    }
    Ok(Json(Ready {
        status: "ready",
        database: "ok",
        model_loaded: default.is_some(),
        default_model: default,
        pretrained_weights: st.cfg.weights_path().exists(),
    }))
}

/// Prometheus metrics: HTTP requests and latencies, prediction queue depth
/// and throughput, job counts by status, training img/s.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format")))]
pub async fn metrics(State(st): State<SharedState>) -> Response {
    // Job counts come from the database, so they are right across processes.
    if let Ok(counts) = st.db.job_counts().await {
        for s in status::ALL {
            let n = counts.iter().find(|(k, _)| k == s).map(|(_, n)| *n).unwrap_or(0);
            metrics::gauge!("tuneserve_jobs", "status" => s).set(n as f64);
        }
    }
    let body = st.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// A self-contained page (no CDN) that renders /openapi.json.
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
