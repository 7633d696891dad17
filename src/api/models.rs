//! /v1/models and /v1/checkpoints: published models, the default model,
//! checkpoint metadata and download.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::body::{check_id, not_found, ApiPath, ApiQuery};
use super::types::{Checkpoint, Model, ModelList, PageQuery};
use super::{page_limit, SharedState};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::model::checkpoint::{META_FILE, MODEL_FILE};

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
