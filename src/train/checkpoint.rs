//! What training records in a checkpoint: the metadata schema of
//! `meta.json` and the mid-epoch progress. The directory format itself
//! (files, atomic writes, the best pointer) belongs to [`crate::model::checkpoint`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Metrics, Stage, TrainConfig, TrainError};
use crate::model::checkpoint as files;
use crate::model::{BackboneKind, Variant};

/// Everything needed to rebuild and use the model without the job's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointMeta {
    pub stage: Stage,
    /// 1-based epoch within the stage.
    pub epoch: usize,
    pub backbone: BackboneKind,
    pub variant: Variant,
    pub classes: Vec<String>,
    pub image_size: usize,
    pub train: Metrics,
    pub validation: Metrics,
    /// Adam's update count at this point (restored on resume).
    pub optimizer_step: u64,
    pub config: TrainConfig,
    /// confusion[true][predicted] on the validation set at this epoch.
    pub confusion: Vec<Vec<usize>>,
}

/// How far into an epoch a mid-epoch checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    pub epoch: usize,
    /// Batches of the epoch already trained (in the epoch's seeded order).
    pub steps_done: usize,
    pub loss_sum: f64,
    pub correct: usize,
}

/// A mid-epoch checkpoint: its directory, metadata and progress.
pub type Partial = (PathBuf, CheckpointMeta, EpochProgress);

/// The directory name of a stage's epoch checkpoint.
pub fn name(stage: Stage, epoch: usize) -> String {
    let s = match stage {
        Stage::Features | Stage::Frozen => "frozen",
        Stage::Finetune => "finetune",
    };
    format!("{s}-{epoch:03}")
}

pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, TrainError> {
    Ok(files::read_meta(dir)?)
}

pub fn read_partial(out: &Path) -> Result<Option<Partial>, TrainError> {
    Ok(files::read_partial(out)?)
}

/// Complete checkpoints under `out`, oldest first (by stage, then epoch).
pub fn list(out: &Path) -> Result<Vec<(String, CheckpointMeta)>, TrainError> {
    let mut v: Vec<(String, CheckpointMeta)> = files::list(out)?;
    v.sort_by_key(|(_, m)| (m.stage == Stage::Finetune, m.epoch));
    Ok(v)
}
