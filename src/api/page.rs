//! The web page (`static/`), built into the binary so `tuneserve serve` shows
//! it from any working directory. Each file carries a strong ETag (its
//! SHA-256); browsers revalidate (`no-cache`) and get 304 while it is
//! unchanged. `--static-dir` serves a folder instead (page development).

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

#[derive(rust_embed::RustEmbed)]
#[folder = "static/"]
struct Page;

/// Answers GET/HEAD for a page file (`/` is `index.html`); anything else is
/// the API's JSON 404 (or 405 for other methods on a page file).
pub async fn serve(req: Request) -> Response {
    let path = match req.uri().path().trim_start_matches('/') {
        "" => "index.html",
        p => p,
    };
    let Some(file) = Page::get(path) else {
        return super::not_found().await.into_response();
    };
    if !matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD) {
        return super::method_not_allowed().await.into_response();
    }
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if matches_etag(req.headers(), &etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let mime = file.metadata.mimetype();
    match HeaderValue::from_str(mime) {
        Ok(v) => headers.insert(header::CONTENT_TYPE, v),
        Err(_) => return ApiError::internal(format!("bad content type for {path}")).into_response(),
    };
    (headers, file.data.into_owned()).into_response()
}

fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        })
}
