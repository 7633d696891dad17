//! Request bodies: bounded reads, JSON with the API's error shape, content
//! types, and id checks.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ApiResult};

/// Largest JSON body of the non-predict routes.
const MAX_JSON_BYTES: usize = 1 << 20;

/// The media type without parameters, lower-cased.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

pub fn too_large(limit: u64) -> ApiError {
    ApiError::too_large("body_too_large", format!("the request body is larger than the limit of {limit} bytes"))
}

/// After refusing a body, read and discard this much more of it so that the
/// client (which may still be sending) gets to read the 413 instead of a
/// connection reset. Larger bodies are cut off; curl avoids that by sending
/// `Expect: 100-continue`, which gets the 413 before any byte is sent.
const DRAIN_MAX: u64 = 16 << 20;

async fn drain(chunks: impl futures::Stream<Item = ApiResult<Bytes>>) {
    let mut chunks = std::pin::pin!(chunks);
    let mut n = 0u64;
    let read = async {
        while let Some(Ok(c)) = chunks.next().await {
            n += c.len() as u64;
            if n > DRAIN_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
}

pub fn body_chunks(body: Body) -> impl futures::Stream<Item = ApiResult<Bytes>> {
    body.into_data_stream()
        .map(|c| c.map_err(|e| ApiError::bad_request("body_read_failed", format!("could not read the body: {e}"))))
}

/// Refuses early when Content-Length already exceeds the limit.
pub async fn check_declared_length(req: Request, limit: u64) -> ApiResult<Request> {
    match declared_length(req.headers()) {
        Some(n) if n > limit => {
            if n <= DRAIN_MAX {
                drain(body_chunks(req.into_body())).await;
            }
            Err(too_large(limit))
        }
        _ => Ok(req),
    }
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_limited(body: Body, limit: usize) -> ApiResult<Bytes> {
    let mut stream = std::pin::pin!(body_chunks(body));
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            drain(stream).await;
            return Err(too_large(limit as u64));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// Streams a body to `file`, never holding more than a chunk in memory.
/// Returns the byte count.
pub async fn stream_to_file(
    chunks: impl futures::Stream<Item = ApiResult<Bytes>>,
    file: &mut tokio::io::BufWriter<tokio::fs::File>,
    limit: u64,
) -> ApiResult<u64> {
    let mut chunks = std::pin::pin!(chunks);
    let mut n = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        if n > limit {
            drain(chunks).await;
            return Err(too_large(limit));
        }
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(n)
}

/// Parses JSON errors into 400 (not JSON at all) or 422 (JSON of the wrong shape).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    // One pass into `T`. serde_json reports some wrong types (a number where
    // an enum's string belongs) as syntax errors, so a failure is classified
    // by a second, shape-free pass: valid JSON means the fields were wrong.
    serde_json::from_slice(bytes).map_err(|e| match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Ok(_) => ApiError::unprocessable("invalid_request", format!("invalid request body: {e}")),
        Err(syntax) => ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {syntax}")),
    })
}

/// A JSON body: 415 without `Content-Type: application/json`, 413 over 1 MiB,
/// 400 for malformed JSON, 422 for the wrong fields.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        match media_type(req.headers()).as_deref() {
            Some("application/json") => {}
            other => {
                return Err(ApiError::unsupported_media(format!(
                    "expected Content-Type: application/json, got {}",
                    other.unwrap_or("none")
                )))
            }
        }
        let req = check_declared_length(req, MAX_JSON_BYTES as u64).await?;
        let bytes = read_limited(req.into_body(), MAX_JSON_BYTES).await?;
        Ok(Self(parse_json(&bytes)?))
    }
}

/// Ids are UUIDs; anything else cannot exist (and never reaches a file path).
pub fn check_id(kind: &'static str, id: &str) -> ApiResult<()> {
    match uuid::Uuid::try_parse(id) {
        Ok(_) => Ok(()),
        Err(_) => Err(not_found(kind, id)),
    }
}

pub fn not_found(kind: &'static str, id: &str) -> ApiError {
    let code = match kind {
        "dataset" => "dataset_not_found",
        "job" => "job_not_found",
        "checkpoint" => "checkpoint_not_found",
        "model" => "model_not_found",
        _ => "not_found",
    };
    ApiError::not_found(code, format!("no {kind} with id {id}"))
}

/// Query parameters, rejected with the API's error shape (400
/// `invalid_query`) instead of axum's plain-text answer.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::bad_request("invalid_query", format!("invalid query string: {}", e.body_text()))),
        }
    }
}

/// Path parameters, rejected with the API's error shape (400
/// `invalid_path`, e.g. an id that is not UTF-8 once percent-decoded).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            // A route without the parameters its handler asks for is our bug, not the client's.
            Err(e) if e.status().is_server_error() => Err(ApiError::internal(e.body_text())),
            Err(e) => Err(ApiError::bad_request("invalid_path", format!("invalid path: {}", e.body_text()))),
        }
    }
}
