//! The HTTP API: routes under /v1, operations endpoints, middleware, and the
//! server's life cycle (start, resume orphaned jobs, graceful shutdown).

mod body;
mod datasets;
mod guard;
mod jobs;
mod models;
mod operations;
mod page;
mod predict;
pub mod types;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use axum::handler::HandlerWithoutStateExt;
use tower_http::services::ServeDir;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::jobs::JobContext;
use crate::serve::batcher::BatchLimits;
use crate::serve::registry::Registry;
use crate::store::{ArtifactStore, Db};

pub use crate::error::ServeError;
pub use operations::ApiDoc;

/// What the handlers share.
pub struct AppState {
    pub cfg: Arc<ServeConfig>,
    pub access: guard::Access,
    pub db: Db,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub registry: Registry,
    pub jobs_queued: Arc<Notify>,
    pub job_events: Arc<Notify>,
    pub metrics: Option<PrometheusHandle>,
    pub shutdown: CancellationToken,
    /// Room for dataset uploads under way (receiving or extracting).
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    /// Exports build a whole model in memory: a few at a time.
    pub export_slots: Arc<tokio::sync::Semaphore>,
}

pub type SharedState = Arc<AppState>;



/// Runs the service on `listener` until `shutdown` is cancelled, then stops
/// taking requests, lets a running job reach its next checkpoint (bounded by
/// the grace period) and returns. Cancelling is synchronous, so a caller can
/// stop the workers from a `Drop`.
pub async fn serve_with(
    cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let cfg = Arc::new(cfg);
    let bound = listener.local_addr()?;
    let access = guard::Access::from_config(&cfg, bound).map_err(ServeError::Config)?;
    if !access.keyed() && !bound.ip().is_loopback() && !cfg.allow_unauthenticated {
        return Err(ServeError::Config(format!(
            "refusing to listen on {bound} without an API key: anyone who reaches it could train, read and delete. \
             Set TUNESERVE_API_KEY (or --api-key / --api-key-file), bind 127.0.0.1, or pass --allow-unauthenticated"
        )));
    }
    if !access.keyed() && !bound.ip().is_loopback() {
        tracing::warn!(addr = %bound, "serving WITHOUT an API key on a non-loopback address (--allow-unauthenticated)");
    }
    let token = shutdown;
    let (ctx, predict_pool) = JobContext::open(cfg.clone(), token.clone()).await?;
    let limits = BatchLimits {
        max_batch: cfg.predict_max_batch.max(1),
        max_wait: cfg.predict_max_wait(),
        max_queue: cfg.predict_max_queue.max(1),
        timeout: Duration::from_millis(cfg.predict_timeout_ms.max(1)),
    };
    let db = ctx.db.clone();
    let registry =
        Registry::new(db.clone(), ctx.artifacts.clone(), ctx.device.clone(), limits, predict_pool, ctx.default_changes.clone());
    let state = Arc::new(AppState {
        registry,
        cfg: cfg.clone(),
        access,
        db: db.clone(),
        artifacts: ctx.artifacts.clone(),
        jobs_queued: ctx.queued.clone(),
        job_events: ctx.events.clone(),
        metrics: crate::telemetry::recorder(),
        shutdown: token.clone(),
        upload_slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_uploads as usize)),
        export_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_EXPORTS)),
    });
    let workers = crate::jobs::start(Arc::new(ctx), cfg.workers).await?;

    // Load the default model in the background so /ready turns green once it is in memory.
    let warm = state.clone();
    tokio::spawn(async move {
        if let Err(e) = warm.registry.default_model().await {
            if !matches!(e, crate::serve::PredictError::NoModel) {
                tracing::warn!(error = %e, "default model not loaded at start");
            }
        }
    });

    let app = router(state);
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let stop = token.clone();
    // The token also ends SSE streams and tells the workers.
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop.cancelled().await;
            tracing::info!("shutting down: no new requests; a running job stops at its next checkpoint");
        })
        .await?;
    crate::jobs::join(workers).await?;
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

pub fn router(state: SharedState) -> Router {
    let cfg = state.cfg.clone();
    let predict_limit = DefaultBodyLimit::max(cfg.max_predict_bytes);
    let v1 = Router::new()
        .route(
            "/datasets",
            // Uploads are streamed to disk under their own limit, not buffered.
            post(datasets::create).layer(DefaultBodyLimit::disable()).get(datasets::list),
        )
        .route("/datasets/{id}", get(datasets::get_one).delete(datasets::delete))
        .route("/jobs", post(jobs::create).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get_one))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/jobs/{id}/checkpoints", get(jobs::checkpoints))
        .route("/checkpoints/{id}", get(models::checkpoint))
        .route("/checkpoints/{id}/download", get(models::download))
        .route("/models", get(models::list))
        .route("/models/{id}", get(models::get_one))
        .route("/models/{id}/default", post(models::make_default))
        .route("/models/{id}/export", get(models::export))
        .route("/models/{id}/predict", post(predict::predict_model).layer(predict_limit))
        .route("/predict", post(predict::predict).layer(predict_limit));

    let request_id = HeaderName::from_static("x-request-id");
    let app = Router::new()
        .nest("/v1", v1)
        .route("/health", get(operations::health))
        .route("/ready", get(operations::ready))
        .route("/metrics", get(operations::metrics))
        .route("/openapi.json", get(operations::openapi))
        .route("/docs", get(operations::docs));
    // The web page; whatever it does not hold is the API's JSON 404.
    let app = match &cfg.static_dir {
        Some(dir) => app.fallback_service(
            ServeDir::new(dir).call_fallback_on_method_not_allowed(true).fallback(not_found.into_service()),
        ),
        None => app.fallback(page::serve),
    };
    app.method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(cors(state.access.cors_origins()))
        .layer(middleware::from_fn(record_metrics))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            // The path only: a query may carry an access token.
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route; see /openapi.json")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}

/// CORS for the configured origins only; none configured, no CORS headers
/// at all (browsers then keep other sites' pages from reading answers).
fn cors(origins: &[String]) -> tower::util::Either<tower_http::cors::CorsLayer, tower::layer::util::Identity> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let list: Vec<_> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    if list.is_empty() {
        return tower::util::Either::Right(tower::layer::util::Identity::new());
    }
    tower::util::Either::Left(CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(Duration::from_secs(600)))
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("tuneserve_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("tuneserve_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Page size from a query, clamped.
fn page_limit(limit: Option<i64>, default: i64, max: i64) -> i64 {
    limit.unwrap_or(default).clamp(1, max)
}

/// A server-side stream must not outlive shutdown; this is how long an idle
/// SSE stream waits between checks.
const STREAM_POLL: Duration = Duration::from_millis(500);
/// Exports at once (each holds a whole model, twice, while it is built).
const MAX_CONCURRENT_EXPORTS: usize = 2;
