//! The rows the store reads and writes, typed. The tables keep enums as
//! TEXT (their serde names), JSON as TEXT and booleans as BIGINT, the column
//! types both SQLite and PostgreSQL share through sqlx's `Any` driver; the
//! conversion happens here, once, and a value that does not parse is a
//! decode error of the query.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;

use super::db::DbError;
use crate::data::dataset::{ClassCount, Rejected};
use crate::model::{BackboneKind, Variant};
use crate::train::{Metrics, Stage, TrainConfig};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled];

    /// The column value (and the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Where in its job a published model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelStage {
    /// Published when stage 1 ends, so predictions can start while stage 2 runs.
    Stage1,
    /// The job's result; it replaces the job's stage-1 model.
    Final,
}

/// Loss and accuracy as stored. A value that was not finite (a run whose
/// loss diverged) is written as JSON null and reads back as `None`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobMetrics {
    #[schema(required = true)]
    pub loss: Option<f64>,
    #[schema(required = true)]
    pub accuracy: Option<f64>,
}

impl From<Metrics> for JobMetrics {
    fn from(m: Metrics) -> Self {
        let finite = |v: f64| v.is_finite().then_some(v);
        Self { loss: finite(m.loss), accuracy: finite(m.accuracy) }
    }
}

#[derive(Debug, Clone)]
pub struct DatasetRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub archive_bytes: i64,
    pub classes: Vec<String>,
    pub counts: Vec<ClassCount>,
    pub rejected: Vec<Rejected>,
    pub has_validation: bool,
    pub files_bytes: i64,
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub dataset_id: String,
    pub status: JobStatus,
    pub variant: Variant,
    pub config: TrainConfig,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub claimed_by: Option<String>,
    pub resume: bool,
    pub attempts: i64,
    pub cancel_requested: bool,
    pub stage: Option<Stage>,
    pub epoch: Option<i64>,
    pub epochs: Option<i64>,
    pub step: Option<i64>,
    pub steps: Option<i64>,
    pub train_metrics: Option<JobMetrics>,
    pub validation_metrics: Option<JobMetrics>,
    pub error: Option<String>,
    /// The training summary, once succeeded.
    pub result: Option<serde_json::Value>,
    pub model_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub job_id: String,
    pub seq: i64,
    pub created_at: i64,
    /// The event's `type`: status, progress, epoch, checkpoint or message.
    pub kind: String,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct CheckpointRow {
    pub id: String,
    pub job_id: String,
    pub name: String,
    pub stage: Stage,
    pub epoch: i64,
    pub train_metrics: JobMetrics,
    pub validation_metrics: JobMetrics,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct ModelRow {
    pub id: String,
    pub job_id: String,
    pub checkpoint_id: String,
    pub backbone: BackboneKind,
    pub variant: Variant,
    pub classes: Vec<String>,
    pub image_size: i64,
    pub validation_metrics: JobMetrics,
    pub is_default: bool,
    pub created_at: i64,
    pub stage: ModelStage,
}

// ---- conversion to and from the columns

/// An enum's column value: its serde name.
pub(super) fn text<T: Serialize>(v: T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        other => other.map(|v| v.to_string()).unwrap_or_default(),
    }
}

/// A JSON column's value.
pub(super) fn json<T: Serialize + ?Sized>(v: &T) -> Result<String, DbError> {
    serde_json::to_string(v).map_err(|e| DbError::Encode(Box::new(e)))
}

fn parse_enum<T: DeserializeOwned>(s: String) -> Result<T, DbError> {
    serde_json::from_value(serde_json::Value::String(s)).map_err(|e| DbError::Decode(Box::new(e)))
}

fn parse_json<T: DeserializeOwned>(s: &str) -> Result<T, DbError> {
    serde_json::from_str(s).map_err(|e| DbError::Decode(Box::new(e)))
}

fn parse_json_opt<T: DeserializeOwned>(s: Option<String>) -> Result<Option<T>, DbError> {
    s.as_deref().map(parse_json).transpose()
}

#[derive(FromRow)]
pub(super) struct RawDataset {
    id: String,
    name: String,
    created_at: i64,
    archive_bytes: i64,
    classes: String,
    counts: String,
    rejected: String,
    has_validation: i64,
    files_bytes: i64,
}

impl TryFrom<RawDataset> for DatasetRow {
    type Error = DbError;
    fn try_from(r: RawDataset) -> Result<Self, DbError> {
        Ok(Self {
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            archive_bytes: r.archive_bytes,
            classes: parse_json(&r.classes)?,
            counts: parse_json(&r.counts)?,
            rejected: parse_json(&r.rejected)?,
            has_validation: r.has_validation != 0,
            files_bytes: r.files_bytes,
        })
    }
}

pub(super) const JOB_COLS: &str = "id, dataset_id, status, variant, config, created_at, started_at, finished_at, \
     claimed_by, resume, attempts, cancel_requested, stage, epoch, epochs, step, steps, train_metrics, \
     validation_metrics, error, result, model_id";

#[derive(FromRow)]
pub(super) struct RawJob {
    id: String,
    dataset_id: String,
    status: String,
    variant: String,
    config: String,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    claimed_by: Option<String>,
    resume: i64,
    attempts: i64,
    cancel_requested: i64,
    stage: Option<String>,
    epoch: Option<i64>,
    epochs: Option<i64>,
    step: Option<i64>,
    steps: Option<i64>,
    train_metrics: Option<String>,
    validation_metrics: Option<String>,
    error: Option<String>,
    result: Option<String>,
    model_id: Option<String>,
}

impl TryFrom<RawJob> for JobRow {
    type Error = DbError;
    fn try_from(r: RawJob) -> Result<Self, DbError> {
        Ok(Self {
            id: r.id,
            dataset_id: r.dataset_id,
            status: parse_enum(r.status)?,
            variant: parse_enum(r.variant)?,
            config: parse_json(&r.config)?,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            claimed_by: r.claimed_by,
            resume: r.resume != 0,
            attempts: r.attempts,
            cancel_requested: r.cancel_requested != 0,
            stage: r.stage.map(parse_enum).transpose()?,
            epoch: r.epoch,
            epochs: r.epochs,
            step: r.step,
            steps: r.steps,
            train_metrics: parse_json_opt(r.train_metrics)?,
            validation_metrics: parse_json_opt(r.validation_metrics)?,
            error: r.error,
            result: parse_json_opt(r.result)?,
            model_id: r.model_id,
        })
    }
}

#[derive(FromRow)]
pub(super) struct RawEvent {
    job_id: String,
    seq: i64,
    created_at: i64,
    kind: String,
    data: String,
}

impl From<RawEvent> for EventRow {
    fn from(r: RawEvent) -> Self {
        // Events are written by this module as JSON; anything else is shown as the text it is.
        let data = serde_json::from_str(&r.data).unwrap_or(serde_json::Value::String(r.data));
        Self { job_id: r.job_id, seq: r.seq, created_at: r.created_at, kind: r.kind, data }
    }
}

#[derive(FromRow)]
pub(super) struct RawCheckpoint {
    id: String,
    job_id: String,
    name: String,
    stage: String,
    epoch: i64,
    train_metrics: String,
    validation_metrics: String,
    created_at: i64,
}

impl TryFrom<RawCheckpoint> for CheckpointRow {
    type Error = DbError;
    fn try_from(r: RawCheckpoint) -> Result<Self, DbError> {
        Ok(Self {
            id: r.id,
            job_id: r.job_id,
            name: r.name,
            stage: parse_enum(r.stage)?,
            epoch: r.epoch,
            train_metrics: parse_json(&r.train_metrics)?,
            validation_metrics: parse_json(&r.validation_metrics)?,
            created_at: r.created_at,
        })
    }
}

#[derive(FromRow)]
pub(super) struct RawModel {
    id: String,
    job_id: String,
    checkpoint_id: String,
    backbone: String,
    variant: String,
    classes: String,
    image_size: i64,
    validation_metrics: String,
    is_default: i64,
    created_at: i64,
    stage: String,
}

impl TryFrom<RawModel> for ModelRow {
    type Error = DbError;
    fn try_from(r: RawModel) -> Result<Self, DbError> {
        Ok(Self {
            id: r.id,
            job_id: r.job_id,
            checkpoint_id: r.checkpoint_id,
            backbone: parse_enum(r.backbone)?,
            variant: parse_enum(r.variant)?,
            classes: parse_json(&r.classes)?,
            image_size: r.image_size,
            validation_metrics: parse_json(&r.validation_metrics)?,
            is_default: r.is_default != 0,
            created_at: r.created_at,
            stage: parse_enum(r.stage)?,
        })
    }
}
