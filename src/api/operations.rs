//! Operations: liveness, readiness, Prometheus metrics, the OpenAPI
//! document and its docs page.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::types::*;
use super::{datasets, jobs, models, predict, SharedState};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorDetail};
use crate::store::JobStatus;

#[derive(OpenApi)]
#[openapi(
    info(title = "tuneserve", description = "Transfer learning on images as a service: upload a dataset of class \
        folders, fine-tune Xception in two stages, serve batched predictions. Every error is \
        `{\"error\": {\"code\", \"message\"}}`."),
    paths(
        datasets::create, datasets::list, datasets::get_one, datasets::delete,
        jobs::create, jobs::list, jobs::get_one, jobs::cancel, jobs::events, jobs::checkpoints,
        models::checkpoint, models::download, models::list, models::get_one, models::make_default, models::export,
        predict::predict, predict::predict_model,
        health, ready, metrics,
    ),
    components(schemas(ErrorBody, ErrorDetail, crate::train::Event, crate::train::checkpoint::CheckpointMeta)),
    modifiers(&BearerKey, &Contract),
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

/// OpenAPI links: what a response names that another operation takes.
/// (source operation, status, link name, target operation, `id` expression,
/// request body with expressions).
const LINKS: &[(&str, &str, &str, &str, Option<&str>, Option<&str>)] = &[
    ("create_dataset", "201", "GetDataset", "get_dataset", Some("$response.body#/id"), None),
    ("create_dataset", "201", "DeleteDataset", "delete_dataset", Some("$response.body#/id"), None),
    ("create_dataset", "201", "CreateJob", "create_job", None, Some("$response.body#/id")),
    ("list_datasets", "200", "GetDataset", "get_dataset", Some("$response.body#/data/0/id"), None),
    ("list_datasets", "200", "DeleteDataset", "delete_dataset", Some("$response.body#/data/0/id"), None),
    ("list_datasets", "200", "CreateJob", "create_job", None, Some("$response.body#/data/0/id")),
    ("get_dataset", "200", "DeleteDataset", "delete_dataset", Some("$response.body#/id"), None),
    ("get_dataset", "200", "CreateJob", "create_job", None, Some("$response.body#/id")),
    ("create_job", "201", "GetJob", "get_job", Some("$response.body#/id"), None),
    ("create_job", "201", "CancelJob", "cancel_job", Some("$response.body#/id"), None),
    ("create_job", "201", "ListJobEvents", "list_job_events", Some("$response.body#/id"), None),
    ("create_job", "201", "ListJobCheckpoints", "list_job_checkpoints", Some("$response.body#/id"), None),
    ("create_job", "201", "GetDataset", "get_dataset", Some("$response.body#/dataset_id"), None),
    ("list_jobs", "200", "GetJob", "get_job", Some("$response.body#/data/0/id"), None),
    ("list_jobs", "200", "CancelJob", "cancel_job", Some("$response.body#/data/0/id"), None),
    ("list_jobs", "200", "ListJobEvents", "list_job_events", Some("$response.body#/data/0/id"), None),
    ("list_jobs", "200", "ListJobCheckpoints", "list_job_checkpoints", Some("$response.body#/data/0/id"), None),
    ("get_job", "200", "CancelJob", "cancel_job", Some("$response.body#/id"), None),
    ("get_job", "200", "ListJobEvents", "list_job_events", Some("$response.body#/id"), None),
    ("get_job", "200", "ListJobCheckpoints", "list_job_checkpoints", Some("$response.body#/id"), None),
    ("get_job", "200", "GetDataset", "get_dataset", Some("$response.body#/dataset_id"), None),
    ("cancel_job", "200", "GetJob", "get_job", Some("$response.body#/id"), None),
    ("cancel_job", "200", "ListJobEvents", "list_job_events", Some("$response.body#/id"), None),
    ("list_job_checkpoints", "200", "GetCheckpoint", "get_checkpoint", Some("$response.body#/data/0/id"), None),
    ("list_job_checkpoints", "200", "DownloadCheckpoint", "download_checkpoint", Some("$response.body#/data/0/id"), None),
    ("get_checkpoint", "200", "DownloadCheckpoint", "download_checkpoint", Some("$response.body#/id"), None),
    ("get_checkpoint", "200", "GetJob", "get_job", Some("$response.body#/job_id"), None),
    ("list_models", "200", "GetModel", "get_model", Some("$response.body#/data/0/id"), None),
    ("list_models", "200", "SetDefaultModel", "set_default_model", Some("$response.body#/data/0/id"), None),
    ("list_models", "200", "PredictWithModel", "predict_with_model", Some("$response.body#/data/0/id"), None),
    ("get_model", "200", "SetDefaultModel", "set_default_model", Some("$response.body#/id"), None),
    ("get_model", "200", "PredictWithModel", "predict_with_model", Some("$response.body#/id"), None),
    ("get_model", "200", "GetJob", "get_job", Some("$response.body#/job_id"), None),
    ("get_model", "200", "GetCheckpoint", "get_checkpoint", Some("$response.body#/checkpoint_id"), None),
    ("get_model", "200", "ExportModel", "export_model", Some("$response.body#/id"), None),
    ("list_models", "200", "ExportModel", "export_model", Some("$response.body#/data/0/id"), None),
    ("set_default_model", "200", "GetModel", "get_model", Some("$response.body#/id"), None),
    ("set_default_model", "200", "PredictWithModel", "predict_with_model", Some("$response.body#/id"), None),
    ("predict", "200", "GetModel", "get_model", Some("$response.body#/model"), None),
    ("predict_with_model", "200", "GetModel", "get_model", Some("$response.body#/model"), None),
];

/// Makes the document complete for clients and contract testers: unique
/// operationIds, the answers every operation can give (the access guard's
/// 401/403, 503 when the database is down, 400 for a query string or path
/// that does not parse), and links between operations.
struct Contract;

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
        .build()
}

/// Every (path, operation) of the document.
fn operations(api: &mut utoipa::openapi::OpenApi) -> Vec<(&str, &mut Operation)> {
    let mut out = Vec::new();
    for (path, item) in api.paths.paths.iter_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.delete] {
            if let Some(op) = op.as_mut() {
                out.push((path.as_str(), op));
            }
        }
    }
    out
}

impl Modify for Contract {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        for (path, op) in operations(api) {
            let has = |op: &Operation, kind: ParameterIn| {
                op.parameters.iter().flatten().any(|p| p.parameter_in == kind)
            };
            let (query, url) = (has(op, ParameterIn::Query), has(op, ParameterIn::Path));
            let mut add = |status: &str, description: &str| {
                op.responses.responses.entry(status.to_string()).or_insert_with(|| error_response(description).into());
            };
            if query || url {
                add("400", "a query string or path that does not parse (invalid_query, invalid_path)");
            }
            let guarded = path.starts_with("/v1/") || path == "/metrics";
            if guarded {
                add("401", "no or a wrong API key (when the server has keys)");
            }
            add("403", "a keyless server refuses foreign Host names and cross-site writes (host_not_allowed, origin_not_allowed)");
            if path.starts_with("/v1/") {
                add("503", "the database is unavailable (database_unavailable)");
            }
        }
    }
}

/// The served document: [`ApiDoc`] plus its links. (utoipa 5 writes a Link's
/// fields in snake_case, `operation_id`, which no client reads, so the links
/// are added to the JSON.)
pub fn document() -> serde_json::Value {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            return json!({ "openapi": "3.1.0", "info": { "title": "tuneserve", "version": env!("CARGO_PKG_VERSION") }, "paths": {} });
        }
    };
    // What an SSE event's `data` holds (utoipa has no attribute for contentSchema).
    if let Some(data) = doc.pointer_mut("/components/schemas/JobStreamEvent/properties/data") {
        data["contentSchema"] = json!({
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string"}},
        });
    }
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else { return doc };
    for (source, status, name, target, id, body) in LINKS {
        let mut link = json!({ "operationId": target });
        if let Some(e) = id {
            link["parameters"] = json!({ "id": e });
        }
        if let Some(e) = body {
            link["requestBody"] = json!({ "dataset_id": e });
        }
        let op = paths
            .values_mut()
            .filter_map(|item| item.as_object_mut())
            .flat_map(|item| item.values_mut())
            .find(|op| op.get("operationId").and_then(|v| v.as_str()) == Some(*source));
        let Some(resp) = op.and_then(|op| op.pointer_mut(&format!("/responses/{status}"))) else {
            debug_assert!(false, "link {name} from {source} {status}: no such response");
            continue;
        };
        if let Some(resp) = resp.as_object_mut() {
            resp.entry("links").or_insert_with(|| json!({}))[*name] = link;
        }
    }
    doc
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", operation_id = "health", tag = "operations", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database answers and the default model (if any) is loaded.
#[utoipa::path(get, path = "/ready", operation_id = "ready", tag = "operations",
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
        device: match st.cfg.candle_device() {
            Ok(candle_core::Device::Cpu) => "cpu".to_string(),
            Ok(d) => format!("{:?}", d.location()),
            Err(e) => format!("unavailable: {e}"),
        },
    }))
}

/// Prometheus metrics: HTTP requests and latencies, prediction queue depth
/// and throughput, job counts by status, training img/s.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String, description = "Prometheus text format")),
    security((), ("api_key" = [])))]
pub async fn metrics(State(st): State<SharedState>) -> Response {
    // Job counts come from the database, so they are right across processes.
    if let Ok(counts) = st.db.job_counts().await {
        for s in JobStatus::ALL {
            let n = counts.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
            metrics::gauge!("tuneserve_jobs", "status" => s.as_str()).set(n as f64);
        }
    }
    let body = st.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub async fn openapi() -> Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(document).clone())
}

/// A self-contained page (no CDN) that renders /openapi.json.
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn ops(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn operation_ids_are_unique_and_links_resolve() {
        let doc = document();
        let all = ops(&doc);
        let ids: HashSet<&str> = all.iter().map(|(_, _, op)| op["operationId"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), all.len(), "operationIds must be unique");
        assert_eq!(all.len(), 21, "every operation is documented");
        let mut links = 0;
        for (_, _, op) in &all {
            for resp in op["responses"].as_object().unwrap().values() {
                for link in resp["links"].as_object().into_iter().flat_map(|l| l.values()) {
                    assert!(ids.contains(link["operationId"].as_str().unwrap()), "{link}");
                    links += 1;
                }
            }
        }
        assert_eq!(links, LINKS.len(), "every link lands on a documented response");
    }

    #[test]
    fn parameters_are_where_the_handlers_read_them() {
        for (method, path, op) in ops(&document()) {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let want = if p["name"] == "id" { "path" } else { "query" };
                assert_eq!(p["in"], want, "{method} {path} {p}");
            }
            let responses = op["responses"].as_object().unwrap();
            if path.starts_with("/v1/") {
                for s in ["401", "403", "503"] {
                    assert!(responses.contains_key(s), "{method} {path} lacks {s}");
                }
            }
            if op["parameters"].as_array().is_some_and(|p| !p.is_empty()) {
                assert!(responses.contains_key("400"), "{method} {path} lacks 400");
            }
        }
    }
}
