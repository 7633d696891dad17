//! The one error type of the service: every failure becomes an HTTP status
//! and the body `{"error": {"code": "...", "message": "..."}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Why the service (or a worker process) could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Jobs(#[from] crate::jobs::StartError),
}

/// An error as the API reports it. `code` is a stable machine-readable
/// snake_case name; `message` is for people.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `dataset_not_found`.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }


    /// 429 with `Retry-After`.
    pub fn too_many_requests(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message) }
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::unavailable("database_unavailable", format!("database unavailable: {e}"))
            }
            _ => Self::internal(format!("database error: {e}")),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        Self::internal(format!("i/o error: {e}"))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::internal(format!("background task failed: {e}"))
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        Self::internal(format!("stored JSON is unreadable: {e}"))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<crate::store::ArtifactError> for ApiError {
    fn from(e: crate::store::ArtifactError) -> Self {
        use crate::store::ArtifactError as E;
        match e {
            E::Missing(_) => Self::not_found("artifact_missing", e.to_string()),
            // The shared store is down or unreachable: worth retrying.
            E::Remote(_) => Self { retry_after: Some(5), ..Self::unavailable("artifact_store_unavailable", e.to_string()) },
            E::Io(_) | E::Config(_) => Self::internal(e.to_string()),
        }
    }
}

impl From<crate::serve::PredictError> for ApiError {
    fn from(e: crate::serve::PredictError) -> Self {
        use crate::serve::PredictError as E;
        let msg = e.to_string();
        match e {
            E::QueueFull(_) => Self::too_many_requests("queue_full", msg, 1),
            E::Deadline(_) => Self { retry_after: Some(1), ..Self::unavailable("deadline_exceeded", msg) },
            E::NoModel => Self::unavailable("no_model", msg),
            E::ModelNotFound(_) => Self::not_found("model_not_found", msg),
            E::ModelUnavailable(_) => Self::unavailable("model_unavailable", msg),
            E::Db(e) => e.into(),
            E::Internal(_) => Self::internal(msg),
        }
    }
}

impl From<crate::data::ingest::IngestError> for ApiError {
    fn from(e: crate::data::ingest::IngestError) -> Self {
        use crate::data::ingest::IngestError as E;
        let msg = e.to_string();
        match e {
            E::NotAnArchive(_) => Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_archive", msg),
            E::UnsafePath(_) => Self::unprocessable("unsafe_path", msg),
            E::Link(_) => Self::unprocessable("link_entry", msg),
            E::TooManyEntries(_) => Self::too_large("too_many_entries", msg),
            E::TooLarge(_) => Self::too_large("archive_too_large", msg),
            E::EntryTooLarge(..) => Self::too_large("entry_too_large", msg),
            // Nobody is waiting for this answer any more.
            E::Cancelled => Self::new(StatusCode::BAD_REQUEST, "upload_abandoned", msg),
            E::Corrupt(_) => Self::unprocessable("corrupt_archive", msg),
            E::Layout(_) => Self::unprocessable("invalid_dataset", msg),
            E::Io(_) => Self::internal(msg),
        }
    }
}
