//! /v1/datasets: upload (streamed to disk, then extracted and scanned off the
//! runtime), list, get, delete.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::Json;

use super::body::{body_chunks, check_declared_length, check_id, media_type, not_found, stream_to_file};
use super::types::{Dataset, DatasetList, PageQuery, UploadQuery};
use super::{page_limit, SharedState};
use crate::data::dataset::DatasetManifest;
use crate::data::ingest::{self, IngestLimits};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::data::folder;
use crate::store::db::now_ms;
use crate::store::DatasetRow;

/// Largest single file inside an archive.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Raw-body content types taken as an archive (the bytes decide which kind).
const ARCHIVE_TYPES: &[&str] = &[
    "application/zip",
    "application/x-zip-compressed",
    "application/x-tar",
    "application/gzip",
    "application/x-gzip",
    "application/x-gtar",
    "application/x-compressed-tar",
    "application/octet-stream",
];

/// Removes a staging directory unless the upload got through.
struct Staging {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Upload a dataset archive.
///
/// A zip, tar or tar.gz of class folders: `train/<class>/*` with optional
/// `validation/<class>/*`, or just `<class>/*`, optionally inside one
/// top-level folder. Send it as multipart/form-data (a file field, plus an
/// optional `name` field) or as a raw body (`Content-Type: application/zip`,
/// `application/x-tar`, `application/gzip`). Files that are not usable
/// images are skipped and listed in `rejected`.
#[utoipa::path(post, path = "/v1/datasets", operation_id = "create_dataset", tag = "datasets", params(UploadQuery),
    request_body(description = "the archive",
        content((super::types::UploadForm = "multipart/form-data"), (super::types::Binary = "application/zip"),
            (super::types::Binary = "application/x-tar"), (super::types::Binary = "application/gzip"))),
    responses(
        (status = 201, body = Dataset),
        (status = 400, description = "empty upload, no file field, a malformed multipart body or query string", body = ErrorBody),
        (status = 413, description = "upload, expanded size or entry count over the limits", body = ErrorBody),
        (status = 415, description = "not multipart or an archive type, or the bytes are not an archive", body = ErrorBody),
        (status = 422, description = "invalid name, unsafe entry path, link entry, damaged archive, fewer than 2 classes or an empty class", body = ErrorBody),
        (status = 429, description = "too many uploads under way; see Retry-After", body = ErrorBody),
        (status = 503, description = "the database or the shared artifact store is unavailable", body = ErrorBody),
    ),
    security((), ("api_key" = [])))]
pub async fn create(
    State(st): State<SharedState>,
    super::body::ApiQuery(q): super::body::ApiQuery<UploadQuery>,
    req: Request,
) -> ApiResult<(StatusCode, Json<Dataset>)> {
    let limit = st.cfg.max_dataset_bytes;
    let req = check_declared_length(req, limit).await?;
    // Held until the dataset is in place (or refused): bounds the disk and CPU
    // that uploads take at once.
    let _slot = st.upload_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::too_many_requests(
            "too_many_uploads",
            format!("{} dataset uploads are already under way; retry shortly", st.cfg.max_concurrent_uploads),
            5,
        )
    })?;
    if let Some(n) = &q.name {
        check_name(n)?;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut staging = Staging { dir: st.artifacts.staging_dir().join(&id), keep: false };
    tokio::fs::create_dir_all(&staging.dir).await?;
    let archive = staging.dir.join("upload");
    let (bytes, file_name) = receive(req, &archive, limit).await?;
    let name = q.name.or(file_name).unwrap_or_else(|| "dataset".into());
    let name = if check_name(&name).is_ok() { name } else { name_from_file(&name) };
    let manifest = extract(&st, &staging.dir, &archive).await?;
    tracing::info!(dataset_id = %id, classes = manifest.classes.len(), images = manifest.samples.len(),
        rejected = manifest.rejected.len(), "dataset ingested");
    let row = register(&st, &id, &mut staging, name, bytes, manifest).await?;
    metrics::counter!("tuneserve_datasets_created_total").increment(1);
    Ok((StatusCode::CREATED, Json(Dataset::from_row(row, true))))
}

/// The uploaded archive (multipart file field or raw body) into `archive`:
/// its size and the file name the client gave.
async fn receive(req: Request, archive: &Path, limit: u64) -> ApiResult<(u64, Option<String>)> {
    let mt = media_type(req.headers());
    let (bytes, file_name) = match mt.as_deref() {
        Some("multipart/form-data") => receive_multipart(req, archive, limit).await?,
        Some(t) if ARCHIVE_TYPES.contains(&t) => (write_stream(body_chunks(req.into_body()), archive, limit).await?, None),
        other => {
            return Err(ApiError::unsupported_media(format!(
                "upload the archive as multipart/form-data or with Content-Type application/zip, application/x-tar \
                 or application/gzip (got {})",
                other.unwrap_or("no Content-Type")
            )))
        }
    };
    if bytes == 0 {
        return Err(ApiError::bad_request("empty_upload", "the uploaded archive is empty (0 bytes)"));
    }
    Ok((bytes, file_name))
}

/// Checks and extracts the archive into the staging folder's files (off the
/// runtime), then deletes it. A client that goes away drops the handler, and
/// with it the extraction: it stops at its next entry and removes what it wrote.
async fn extract(st: &SharedState, staging: &Path, archive: &Path) -> ApiResult<DatasetManifest> {
    let limits = IngestLimits {
        max_entries: st.cfg.max_archive_entries,
        max_uncompressed_bytes: st.cfg.max_uncompressed_bytes,
        max_file_bytes: MAX_FILE_BYTES,
        image: st.cfg.decode_limits(),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let abandon = SetOnDrop(cancel.clone());
    let (archive, files, dir) = (archive.to_path_buf(), folder::files_dir(staging), staging.to_path_buf());
    let manifest = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&files)?;
        let m = ingest::ingest(&archive, &files, &limits, &cancel);
        // The archive is not needed once extracted, whatever happened.
        let _ = std::fs::remove_file(&archive);
        if cancel.load(Ordering::Acquire) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        m
    })
    .await??;
    std::mem::forget(abandon);
    Ok(manifest)
}

/// Writes the manifest, moves the staged dataset into place, shares it and
/// lists it in the database; a failure after the move removes it again.
async fn register(
    st: &SharedState,
    id: &str,
    staging: &mut Staging,
    name: String,
    archive_bytes: u64,
    manifest: DatasetManifest,
) -> ApiResult<DatasetRow> {
    let files_bytes = {
        let (dir, m) = (staging.dir.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || {
            folder::write_manifest(&dir, &m).map(|()| folder::bytes_under(&folder::files_dir(&dir)))
        })
        .await??
    };
    tokio::fs::rename(&staging.dir, st.artifacts.dataset_dir(id)).await?;
    staging.keep = true;
    let row = DatasetRow {
        id: id.to_string(),
        name,
        created_at: now_ms(),
        archive_bytes: archive_bytes as i64,
        counts: manifest.class_counts(),
        classes: manifest.classes,
        rejected: manifest.rejected,
        has_validation: manifest.has_validation,
        files_bytes: files_bytes as i64,
    };
    // Shared before it is listed: any worker can then fetch what a job names.
    let published = match st.artifacts.publish_dataset(id).await {
        Ok(()) => st.db.insert_dataset(&row).await.map_err(ApiError::from),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = published {
        let _ = st.artifacts.remove_dataset(id).await;
        return Err(e);
    }
    Ok(row)
}

async fn write_stream(
    chunks: impl futures::Stream<Item = ApiResult<axum::body::Bytes>>,
    path: &Path,
    limit: u64,
) -> ApiResult<u64> {
    let mut f = tokio::io::BufWriter::new(tokio::fs::File::create(path).await?);
    stream_to_file(chunks, &mut f, limit).await
}

/// Takes the first file field (streamed to `archive`) and an optional `name` field.
async fn receive_multipart(req: Request, archive: &Path, limit: u64) -> ApiResult<(u64, Option<String>)> {
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
    let mut got: Option<(u64, Option<String>)> = None;
    let mut name = None;
    while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
        if field.file_name().is_some() || field.name() == Some("file") {
            if got.is_some() {
                return Err(ApiError::bad_request("too_many_files", "send one archive per upload"));
            }
            let file_name = field.file_name().map(str::to_string);
            let chunks = futures::stream::unfold(field, |mut f| async move {
                match f.chunk().await {
                    Ok(Some(c)) => Some((Ok(c), f)),
                    Ok(None) => None,
                    Err(e) => Some((Err(multipart_error(e)), f)),
                }
            });
            got = Some((write_stream(chunks, archive, limit).await?, file_name));
        } else if field.name() == Some("name") {
            let n = read_text_field(field, MAX_NAME_BYTES).await?;
            check_name(&n)?;
            name = Some(n);
        } else {
            return Err(ApiError::bad_request(
                "unknown_field",
                format!("unexpected multipart field {:?}: send `file` and optionally `name`", field.name().unwrap_or("")),
            ));
        }
    }
    let (n, file_name) = got.ok_or_else(|| {
        ApiError::bad_request("missing_file", "the multipart body has no file field (use -F file=@dataset.zip)")
    })?;
    Ok((n, name.or(file_name)))
}

/// Longest dataset name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// A dataset name: 1 to 200 bytes of text without control characters.
fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("a dataset name is 1 to {MAX_NAME_BYTES} bytes of text without control characters"),
        ));
    }
    Ok(())
}

/// A usable name made from an uploaded file's name (which nobody checked):
/// control characters dropped, cut to the length limit at a character boundary.
fn name_from_file(file_name: &str) -> String {
    let mut out = String::new();
    for c in file_name.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    if out.trim().is_empty() {
        "dataset".into()
    } else {
        out
    }
}

/// A text field of at most `max` bytes, read chunk by chunk (never whole).
async fn read_text_field(mut field: axum::extract::multipart::Field<'_>, max: usize) -> ApiResult<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > max {
            return Err(ApiError::unprocessable("invalid_name", format!("the `name` field is longer than {max} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| ApiError::unprocessable("invalid_name", "the `name` field is not UTF-8 text"))
}

/// Sets its flag when dropped (unless forgotten).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

pub fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large("body_too_large", e.body_text())
    } else {
        ApiError::bad_request("invalid_multipart", e.body_text())
    }
}

/// List datasets, newest first.
#[utoipa::path(get, path = "/v1/datasets", operation_id = "list_datasets", tag = "datasets", params(PageQuery),
    responses((status = 200, body = DatasetList), (status = 400, description = "invalid query string or unknown cursor", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn list(State(st): State<SharedState>, super::body::ApiQuery(q): super::body::ApiQuery<PageQuery>) -> ApiResult<Json<DatasetList>> {
    let limit = page_limit(q.limit, 20, 100);
    let rows = st
        .db
        .list_datasets(q.after.as_deref(), limit + 1)
        .await?
        .ok_or_else(|| ApiError::bad_request("invalid_cursor", "`after` names no dataset"))?;
    let has_more = rows.len() as i64 > limit;
    let data = rows.into_iter().take(limit as usize).map(|r| Dataset::from_row(r, false)).collect();
    Ok(Json(DatasetList { object: "list", data, has_more }))
}

/// One dataset: classes, counts per class and split, rejected files with reasons.
#[utoipa::path(get, path = "/v1/datasets/{id}", operation_id = "get_dataset", tag = "datasets", params(("id" = String, Path)),
    responses((status = 200, body = Dataset), (status = 404, body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn get_one(State(st): State<SharedState>, super::body::ApiPath(id): super::body::ApiPath<String>) -> ApiResult<Json<Dataset>> {
    check_id("dataset", &id)?;
    let row = st.db.get_dataset(&id).await?.ok_or_else(|| not_found("dataset", &id))?;
    let mut d = Dataset::from_row(row, true);
    let cache = folder::cache_dir(&st.artifacts.dataset_dir(&id));
    d.cache_bytes = Some(tokio::task::spawn_blocking(move || folder::bytes_under(&cache)).await?);
    Ok(Json(d))
}

/// Delete a dataset and its files (409 while a queued or running job uses it).
#[utoipa::path(delete, path = "/v1/datasets/{id}", operation_id = "delete_dataset", tag = "datasets", params(("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 409, description = "a queued or running job uses it", body = ErrorBody),
        (status = 503, description = "the database or the shared artifact store is unavailable", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub async fn delete(State(st): State<SharedState>, super::body::ApiPath(id): super::body::ApiPath<String>) -> ApiResult<StatusCode> {
    check_id("dataset", &id)?;
    if st.db.get_dataset(&id).await?.is_none() {
        return Err(not_found("dataset", &id));
    }
    if !st.db.delete_dataset(&id).await? {
        return Err(ApiError::conflict("dataset_in_use", "a queued or running job uses this dataset; cancel it first"));
    }
    st.artifacts.remove_dataset(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
