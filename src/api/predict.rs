//! /v1/predict and /v1/models/{id}/predict: images in (multipart, raw body,
//! or JSON with base64), decoded and resized off the runtime, then queued
//! to the model's batcher.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::Json;
use base64::Engine;
use rayon::prelude::*;

use super::body::{check_declared_length, check_id, media_type, parse_json, read_limited, ApiQuery};
use super::datasets::multipart_error;
use super::types::{PredictJson, PredictQuery, PredictResponse};
use super::SharedState;
use crate::data::image::{self, ImageError};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::serve::registry::LoadedModel;

/// Classify images with the default model.
///
/// Send one image as the raw body (`Content-Type: image/jpeg`, `image/png`,
/// ..., or `application/octet-stream`), several as multipart/form-data file
/// fields, or JSON `{"image": "<base64>"}` / `{"images": ["<base64>", ...]}`.
/// Concurrent requests are batched together on the model's device.
#[utoipa::path(post, path = "/v1/predict", operation_id = "predict", tag = "predict", params(PredictQuery),
    request_body(content((PredictJson = "application/json"), (super::types::Binary = "image/jpeg"), (super::types::Binary = "image/png"),
        (super::types::Binary = "application/octet-stream"), (super::types::PredictForm = "multipart/form-data"))),
    responses(
        (status = 200, body = PredictResponse),
        (status = 400, description = "no image, malformed JSON, multipart or base64, or a bad query parameter", body = ErrorBody),
        (status = 413, description = "body over the limit, too many images, or more pixels than a request may hold", body = ErrorBody),
        (status = 415, description = "unsupported content type, or a file that is not an image", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape, a damaged image, or one too large in pixels", body = ErrorBody),
        (status = 429, description = "queue full; see Retry-After", body = ErrorBody),
        (status = 503, description = "no model published yet, the model cannot be loaded, or the prediction deadline passed (Retry-After)", body = ErrorBody),
    ),
    security((), ("api_key" = [])))]
pub async fn predict(State(st): State<SharedState>, ApiQuery(q): ApiQuery<PredictQuery>, req: Request) -> ApiResult<Json<PredictResponse>> {
    let req = check_declared_length(req, st.cfg.max_predict_bytes as u64).await?;
    let model = st.registry.default_model().await?;
    run(&st, model, q, req).await
}

/// Classify images with a given model (same inputs as /v1/predict).
#[utoipa::path(post, path = "/v1/models/{id}/predict", operation_id = "predict_with_model", tag = "predict", params(("id" = String, Path), PredictQuery),
    request_body(content((PredictJson = "application/json"), (super::types::Binary = "image/jpeg"), (super::types::Binary = "image/png"),
        (super::types::Binary = "application/octet-stream"), (super::types::PredictForm = "multipart/form-data"))),
    responses(
        (status = 200, body = PredictResponse),
        (status = 400, description = "no image, malformed JSON, multipart or base64, or a bad query parameter", body = ErrorBody),
        (status = 413, description = "body over the limit, too many images, or more pixels than a request may hold", body = ErrorBody),
        (status = 415, description = "unsupported content type, or a file that is not an image", body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape, a damaged image, or one too large in pixels", body = ErrorBody),
        (status = 429, description = "queue full; see Retry-After", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, description = "the model cannot be loaded, or the prediction deadline passed (Retry-After)", body = ErrorBody),
    ),
    security((), ("api_key" = [])))]
pub async fn predict_model(
    State(st): State<SharedState>,
    super::body::ApiPath(id): super::body::ApiPath<String>,
    ApiQuery(q): ApiQuery<PredictQuery>,
    req: Request,
) -> ApiResult<Json<PredictResponse>> {
    check_id("model", &id)?;
    let req = check_declared_length(req, st.cfg.max_predict_bytes as u64).await?;
    let model = st.registry.model(&id).await?;
    run(&st, model, q, req).await
}

async fn run(st: &SharedState, model: Arc<LoadedModel>, q: PredictQuery, req: Request) -> ApiResult<Json<PredictResponse>> {
    let tta = q.tta.unwrap_or(model.tta);
    let blobs = read_images(req, st.cfg.max_predict_bytes).await?;
    if blobs.is_empty() {
        return Err(ApiError::bad_request("no_images", "the request holds no image"));
    }
    if blobs.len() > st.cfg.predict_max_queue {
        return Err(ApiError::too_large(
            "too_many_images",
            format!("at most {} images per request", st.cfg.predict_max_queue),
        ));
    }
    // Room in the queue first: an overloaded server answers 429 before it
    // spends any CPU on decoding.
    let room = model.batcher.reserve(blobs.len())?;
    let size = model.image_size as u32;
    let limits = st.cfg.decode_limits();
    let budget = st.cfg.max_request_pixels;
    let pool = st.registry.pool();
    let images = tokio::task::spawn_blocking(move || {
        // Headers only, then the budget, then the pixels.
        let mut pixels = 0u64;
        for (i, b) in blobs.iter().enumerate() {
            let (w, h) = image::dimensions(b).map_err(|e| image_error(i, e))?;
            limits.check(w, h).map_err(|e| image_error(i, e))?;
            pixels += w as u64 * h as u64;
        }
        if pixels > budget {
            return Err(ApiError::too_large(
                "too_many_pixels",
                format!("the images hold {pixels} pixels together; one request may hold at most {budget}"),
            ));
        }
        pool.install(|| {
            blobs
                .par_iter()
                .enumerate()
                .map(|(i, b)| image::load_for_model(b, (size, size), &limits).map_err(|e| image_error(i, e)))
                .collect::<ApiResult<Vec<_>>>()
        })
    })
    .await??;
    let predictions = model.batcher.predict(room, images, tta).await?;
    Ok(Json(PredictResponse { model: model.id.clone(), tta, predictions }))
}

fn image_error(i: usize, e: ImageError) -> ApiError {
    let msg = format!("image {i}: {e}");
    match e {
        ImageError::NotAnImage { .. } | ImageError::Unsupported(_) => ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_an_image",
            msg,
        ),
        ImageError::TooLarge { .. } => ApiError::unprocessable("image_too_large", msg),
        ImageError::Corrupt(_) => ApiError::unprocessable("corrupt_image", msg),
        ImageError::Io(_) => ApiError::internal(msg),
    }
}

async fn read_images(req: Request, limit: usize) -> ApiResult<Vec<Bytes>> {
    let mt = media_type(req.headers());
    match mt.as_deref() {
        Some("multipart/form-data") => {
            let mut mp = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
            let mut out = Vec::new();
            while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
                let is_image = field.file_name().is_some()
                    || matches!(field.name(), Some("image" | "images" | "file"))
                    || field.content_type().is_some_and(|c| c.starts_with("image/"));
                let bytes = field.bytes().await.map_err(multipart_error)?;
                if is_image {
                    out.push(bytes);
                }
            }
            Ok(out)
        }
        Some("application/json") => {
            let raw = read_limited(req.into_body(), limit).await?;
            let j: PredictJson = parse_json(&raw)?;
            let all: Vec<String> = j.image.into_iter().chain(j.images.unwrap_or_default()).collect();
            all.iter()
                .enumerate()
                .map(|(i, s)| {
                    // Accept data URLs as browsers produce them.
                    let b64 = s.split_once(";base64,").map_or(s.as_str(), |(_, b)| b);
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .map(Bytes::from)
                        .map_err(|e| ApiError::bad_request("invalid_base64", format!("image {i}: {e}")))
                })
                .collect()
        }
        Some(t) if t.starts_with("image/") || t == "application/octet-stream" => {
            let raw = read_limited(req.into_body(), limit).await?;
            if raw.is_empty() {
                return Err(ApiError::bad_request("no_images", "the request body is empty"));
            }
            Ok(vec![raw])
        }
        other => Err(ApiError::unsupported_media(format!(
            "send an image (image/*), multipart/form-data or application/json with base64 images (got {})",
            other.unwrap_or("no Content-Type")
        ))),
    }
}
