//! /v1/models and /v1/checkpoints: published models, the default model,
//! checkpoint metadata and download.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::body::{check_id, not_found, ApiPath, ApiQuery};
use super::types::{Checkpoint, ExportQuery, Model, ModelList, PageQuery};
use super::{page_limit, SharedState};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::checkpoint::{META_FILE, MODEL_FILE};
use crate::serve::ExportFormat;

/// List published models, newest first.
#[utoipa::path(get, path = "/v1/models", operation_id = "list_models", tag = "models", params(PageQuery),
    responses((status = 200, body = ModelList), (status = 400, description = "invalid query string or unknown cursor", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn list(State(st): State<SharedState>, ApiQuery(q): ApiQuery<PageQuery>) -> ApiResult<Json<ModelList>> {
    let limit = page_limit(q.limit, 20, 100);
    let rows = st
        .db
        .list_models(q.after.as_deref(), limit + 1)
        .await?
        .ok_or_else(|| ApiError::bad_request("invalid_cursor", "`after` names no model"))?;
    let has_more = rows.len() as i64 > limit;
    let data = rows.into_iter().take(limit as usize).map(Model::from_row).collect();
    Ok(Json(ModelList { object: "list", data, has_more }))
}

#[utoipa::path(get, path = "/v1/models/{id}", operation_id = "get_model", tag = "models", params(("id" = String, Path)),
    responses((status = 200, body = Model), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn get_one(State(st): State<SharedState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Model>> {
    check_id("model", &id)?;
    let row = st.db.get_model(&id).await?.ok_or_else(|| not_found("model", &id))?;
    Ok(Json(Model::from_row(row)))
}

/// Make this model the default one (used by POST /v1/predict). Each newly
/// published model becomes the default; this switches back or forth.
#[utoipa::path(post, path = "/v1/models/{id}/default", operation_id = "set_default_model", tag = "models", params(("id" = String, Path)),
    responses((status = 200, body = Model), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn make_default(State(st): State<SharedState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Model>> {
    check_id("model", &id)?;
    if !st.db.set_default_model(&id).await? {
        return Err(not_found("model", &id));
    }
    st.registry.default_changed();
    let row = st.db.get_model(&id).await?.ok_or_else(|| not_found("model", &id))?;
    Ok(Json(Model::from_row(row)))
}

/// Export a model for use outside tuneserve: `onnx` (opset 17, inference:
/// `image` float32 (batch, size, size, 3) resized and scaled as the model's
/// metadata says, `logits` out), `keras` (a Keras 3 `.keras` archive that
/// `keras.models.load_model` opens, same input and output), `keras_weights`
/// (its `model.weights.h5`, for `model.load_weights`) or `safetensors` (the
/// weights in the Keras layout under canonical names, plus `head.kernel` and
/// `head.bias`).
#[utoipa::path(get, path = "/v1/models/{id}/export", operation_id = "export_model", tag = "models",
    params(("id" = String, Path), ExportQuery),
    responses((status = 200, content_type = "application/octet-stream", body = super::types::Binary, description = "the model file"),
        (status = 400, description = "invalid query string (unknown format)", body = ErrorBody),
        (status = 404, description = "unknown model, or its files are gone", body = ErrorBody),
        (status = 429, description = "too many exports under way; see Retry-After", body = ErrorBody),
        (status = 503, description = "the database or the shared artifact store is unavailable", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn export(State(st): State<SharedState>, ApiPath(id): ApiPath<String>, ApiQuery(q): ApiQuery<ExportQuery>) -> ApiResult<Response> {
    check_id("model", &id)?;
    let format = q.format.unwrap_or(ExportFormat::Onnx);
    let row = st.db.get_model(&id).await?.ok_or_else(|| not_found("model", &id))?;
    let _slot = st.export_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::too_many_requests("too_many_exports", "other exports are under way; retry shortly", 5)
    })?;
    let gone = || ApiError::not_found("model_files_missing", "the model's checkpoint files are gone");
    let ck = st.db.get_checkpoint(&row.checkpoint_id).await?.ok_or_else(gone)?;
    let dir = st.artifacts.fetch_checkpoint(&ck.job_id, &ck.name).await?;
    if !crate::model::checkpoint::is_checkpoint(&dir) {
        return Err(gone());
    }
    let bytes = tokio::task::spawn_blocking(move || crate::serve::export::export(&dir, format))
        .await?
        .map_err(|e| ApiError::internal(format!("export failed: {e}")))?;
    let disposition = format!("attachment; filename=\"model-{id}.{}\"", format.extension());
    Ok(([(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::CONTENT_DISPOSITION, disposition)], bytes).into_response())
}

#[utoipa::path(get, path = "/v1/checkpoints/{id}", operation_id = "get_checkpoint", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Checkpoint), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn checkpoint(State(st): State<SharedState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Checkpoint>> {
    check_id("checkpoint", &id)?;
    let row = st.db.get_checkpoint(&id).await?.ok_or_else(|| not_found("checkpoint", &id))?;
    Ok(Json(Checkpoint::from_row(row)))
}

/// Download a checkpoint: an uncompressed tar holding `model.safetensors`
/// (weights in the Keras layout, canonical names) and `meta.json`.
#[utoipa::path(get, path = "/v1/checkpoints/{id}/download", operation_id = "download_checkpoint", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, content_type = "application/x-tar", body = super::types::Binary, description = "model.safetensors + meta.json"),
        (status = 404, description = "unknown checkpoint, or its files are gone", body = ErrorBody),
        (status = 503, description = "the database or the shared artifact store is unavailable", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn download(State(st): State<SharedState>, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    check_id("checkpoint", &id)?;
    let row = st.db.get_checkpoint(&id).await?.ok_or_else(|| not_found("checkpoint", &id))?;
    let dir = st.artifacts.fetch_checkpoint(&row.job_id, &row.name).await?;
    let staging = st.artifacts.staging_dir();
    // The tar is built in a temporary file and streamed: weights can be large.
    let file = tokio::task::spawn_blocking(move || -> ApiResult<std::fs::File> {
        if !dir.join(MODEL_FILE).exists() {
            return Err(ApiError::not_found("checkpoint_files_missing", "the checkpoint's files are gone"));
        }
        let mut tmp = tempfile::tempfile_in(&staging)?;
        {
            let mut tar = tar::Builder::new(&mut tmp);
            for f in [MODEL_FILE, META_FILE] {
                tar.append_path_with_name(dir.join(f), f)?;
            }
            tar.finish()?;
        }
        use std::io::Seek;
        tmp.rewind()?;
        Ok(tmp)
    })
    .await??;
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let disposition = format!("attachment; filename=\"checkpoint-{}-{}.tar\"", row.job_id, row.name);
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        Body::from_stream(stream),
    )
        .into_response())
}
