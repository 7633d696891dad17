//! The JSON shapes of the API (resource model after OpenAI's fine-tuning API).


use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::data::dataset::{ClassCount, Rejected};
use crate::model::{BackboneKind, Variant};
use crate::store::{CheckpointRow, DatasetRow, EventRow, JobMetrics, JobRow, JobStatus, ModelRow, ModelStage};
use crate::train::{Stage, TrainConfig, TrainSettings};

fn secs(ms: i64) -> i64 {
    ms / 1000
}

#[derive(Serialize, ToSchema)]
pub struct Dataset {
    pub id: String,
    /// Always "dataset".
    pub object: &'static str,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Size of the uploaded archive.
    pub archive_bytes: i64,
    /// Class names in label order (sorted, as Keras does).
    pub classes: Vec<String>,
    pub counts: Vec<ClassCount>,
    pub has_validation: bool,
    pub rejected_count: usize,
    /// Usable images, all splits.
    pub images: usize,
    /// Bytes of the extracted image files on disk.
    pub files_bytes: i64,
    /// Bytes of this server's caches derived from the dataset (decoded
    /// pixels per input size; rebuilt when missing). Single-dataset
    /// endpoints only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    /// Files left out, and why (only on the single-dataset endpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Vec<Rejected>>,
}

impl Dataset {
    pub fn from_row(r: DatasetRow, with_rejected: bool) -> Self {
        Self {
            images: r.counts.iter().map(|c| c.train + c.validation).sum(),
            files_bytes: r.files_bytes,
            cache_bytes: None,
            id: r.id,
            object: "dataset",
            name: r.name,
            created_at: secs(r.created_at),
            archive_bytes: r.archive_bytes,
            classes: r.classes,
            counts: r.counts,
            has_validation: r.has_validation,
            rejected_count: r.rejected.len(),
            rejected: with_rejected.then_some(r.rejected),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DatasetList {
    pub object: &'static str,
    pub data: Vec<Dataset>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// The dataset to train on (a dataset id, a UUID).
    #[schema(format = Uuid)]
    pub dataset_id: String,
    /// Overrides `hyperparameters.backbone`.
    pub backbone: Option<BackboneKind>,
    /// `full` (pretrained ImageNet weights, the default) or `tiny` (a small
    /// seeded network of the same topology, for tests and demos).
    pub variant: Option<Variant>,
    /// Every field is optional: a recipe (`standard`, the default, or
    /// `notebook`, the Keras notebook exactly) and any of its settings to
    /// override.
    pub hyperparameters: Option<TrainSettings>,
}

#[derive(Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    /// Always "job".
    pub object: &'static str,
    pub dataset_id: String,
    pub status: JobStatus,
    pub variant: Variant,
    pub hyperparameters: TrainConfig,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub stage: Option<Stage>,
    /// Epoch within the stage (1-based) and the stage's epoch count.
    pub epoch: Option<i64>,
    pub epochs: Option<i64>,
    pub step: Option<i64>,
    pub steps: Option<i64>,
    pub train_metrics: Option<JobMetrics>,
    pub validation_metrics: Option<JobMetrics>,
    pub error: Option<String>,
    /// The published model, once succeeded.
    pub model_id: Option<String>,
    pub cancel_requested: bool,
    /// How many times a worker has started it (more than 1 after a resume).
    pub attempts: i64,
    /// The training summary (best checkpoint, per-stage metrics, confusion matrix), once succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

impl Job {
    pub fn from_row(r: JobRow) -> Self {
        Self {
            object: "job",
            hyperparameters: r.config,
            train_metrics: r.train_metrics,
            validation_metrics: r.validation_metrics,
            result: r.result,
            created_at: secs(r.created_at),
            started_at: r.started_at.map(secs),
            finished_at: r.finished_at.map(secs),
            cancel_requested: r.cancel_requested,
            id: r.id,
            dataset_id: r.dataset_id,
            status: r.status,
            variant: r.variant,
            stage: r.stage,
            epoch: r.epoch,
            epochs: r.epochs,
            step: r.step,
            steps: r.steps,
            error: r.error,
            model_id: r.model_id,
            attempts: r.attempts,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub object: &'static str,
    pub data: Vec<Job>,
    pub has_more: bool,
}

#[derive(Serialize, ToSchema)]
pub struct JobEvent {
    /// Position in the job's history, from 1; also the SSE event id.
    pub seq: i64,
    pub created_at: i64,
    /// status, progress, epoch, checkpoint or message.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl JobEvent {
    pub fn from_row(r: EventRow) -> Self {
        Self { seq: r.seq, created_at: secs(r.created_at), kind: r.kind, data: r.data }
    }
}

/// One Server-Sent Event of a job's live stream (`?stream=true`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JobStreamEvent {
    /// The event's `seq`; send it back as `Last-Event-ID` to resume after it.
    pub id: String,
    /// The event type: status, progress, epoch, checkpoint or message.
    pub event: String,
    /// The event as JSON: the same object as `data` in the JSON history.
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

#[derive(Serialize, ToSchema)]
pub struct JobEventList {
    pub object: &'static str,
    pub data: Vec<JobEvent>,
    pub has_more: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Checkpoint {
    pub id: String,
    /// Always "checkpoint".
    pub object: &'static str,
    pub job_id: String,
    pub name: String,
    pub stage: Stage,
    pub epoch: i64,
    pub train_metrics: JobMetrics,
    pub validation_metrics: JobMetrics,
    pub created_at: i64,
    /// GET this for a tar of model.safetensors and meta.json.
    pub download_url: String,
}

impl Checkpoint {
    pub fn from_row(r: CheckpointRow) -> Self {
        Self {
            object: "checkpoint",
            train_metrics: r.train_metrics,
            validation_metrics: r.validation_metrics,
            created_at: secs(r.created_at),
            download_url: format!("/v1/checkpoints/{}/download", r.id),
            id: r.id,
            job_id: r.job_id,
            name: r.name,
            stage: r.stage,
            epoch: r.epoch,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CheckpointList {
    pub object: &'static str,
    pub data: Vec<Checkpoint>,
    pub has_more: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// Always "model".
    pub object: &'static str,
    pub job_id: String,
    pub checkpoint_id: String,
    pub backbone: BackboneKind,
    pub variant: Variant,
    pub classes: Vec<String>,
    pub image_size: i64,
    pub validation_metrics: JobMetrics,
    /// The model POST /v1/predict uses.
    pub is_default: bool,
    pub created_at: i64,
    /// `stage1`: published when its job's stage 1 ended, so predictions can
    /// start while stage 2 runs; the job's `final` model replaces it.
    #[schema(example = "final")]
    pub stage: ModelStage,
}

impl Model {
    pub fn from_row(r: ModelRow) -> Self {
        Self {
            object: "model",
            classes: r.classes,
            validation_metrics: r.validation_metrics,
            is_default: r.is_default,
            created_at: secs(r.created_at),
            stage: r.stage,
            id: r.id,
            job_id: r.job_id,
            checkpoint_id: r.checkpoint_id,
            backbone: r.backbone,
            variant: r.variant,
            image_size: r.image_size,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<Model>,
    pub has_more: bool,
}

/// JSON predict body: one base64 image or several (a `data:` URL prefix is allowed).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictJson {
    /// One base64 image.
    pub image: Option<String>,
    /// Several base64 images (at most `--predict-max-queue` in all, 128 by default).
    pub images: Option<Vec<String>>,
}

/// The multipart form of a dataset upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The archive (zip, tar or tar.gz).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// A name for the dataset: 1 to 200 bytes of text without control characters.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$")]
    pub name: Option<String>,
}

/// The multipart form of a prediction: one or more image file fields.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PredictForm {
    /// An image (JPEG, PNG, ...); send the field several times for several images.
    #[schema(value_type = String, format = Binary)]
    pub image: Vec<u8>,
}

/// Raw bytes: an archive, or an image.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Binary(Vec<u8>);

#[derive(Serialize, ToSchema)]
pub struct PredictResponse {
    /// The model that answered.
    pub model: String,
    /// Whether test-time augmentation was used (mean logit of each image and its mirror).
    pub tta: bool,
    /// One per input image, in input order.
    pub predictions: Vec<crate::serve::Prediction>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PredictQuery {
    /// Test-time augmentation: the mean logit of each image and its mirror
    /// (twice the compute). Default: on for models trained with it.
    pub tta: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1..=100 (default 20; other values are clamped).
    #[param(nullable = false)]
    pub limit: Option<i64>,
    /// Id of the last item of the previous page.
    #[serde(default, deserialize_with = "cursor")]
    #[param(format = Uuid, nullable = false)]
    pub after: Option<String>,
}

/// What a cursor that is not an id becomes.
const NO_CURSOR: &str = "not-an-id";

/// Ids are UUIDs, so any other cursor names nothing: it is replaced by one
/// that names nothing either and that every database takes (PostgreSQL
/// refuses text with NUL bytes), and the page answers 400 invalid_cursor.
fn cursor<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let after = Option::<String>::deserialize(d)?;
    Ok(after.map(|a| if uuid::Uuid::try_parse(&a).is_ok() { a } else { NO_CURSOR.to_string() }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Page size for the history, 1..=1000 (default 100; other values are clamped).
    #[param(nullable = false)]
    pub limit: Option<i64>,
    /// Return events with seq greater than this (default 0).
    #[param(nullable = false)]
    pub after: Option<i64>,
    /// true: a live Server-Sent-Events stream (also chosen by `Accept: text/event-stream`).
    #[param(nullable = false)]
    pub stream: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// A name for the dataset (default: the uploaded file's name): 1 to 200
    /// bytes of text without control characters.
    #[param(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$", nullable = false)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `onnx` (the default), `keras` (a Keras 3 `.keras` archive), `keras_weights`
    /// (its `model.weights.h5` alone) or `safetensors`.
    #[param(inline, nullable = false)]
    pub format: Option<crate::serve::ExportFormat>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub status: &'static str,
    pub database: &'static str,
    /// The default model, if any, and whether it is in memory.
    pub default_model: Option<String>,
    pub model_loaded: bool,
    /// Whether the pretrained weights that full-size jobs need are present.
    pub pretrained_weights: bool,
    /// The device training and prediction run on (`--device auto` resolved).
    pub device: String,
}
