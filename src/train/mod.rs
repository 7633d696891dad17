//! Training: the notebook's two-stage transfer-learning recipe.

use serde::{Deserialize, Serialize};

use crate::model::BackboneKind;

/// Hyper-parameters of one training run; defaults are the notebook's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct TrainConfig {
    pub backbone: BackboneKind,
    /// Square input size; 0 = the backbone's default (150 Xception, 224
    /// MobileNetV2), else from the backbone's minimum (71 Xception, 32
    /// MobileNetV2) to 1024.
    #[schema(minimum = 0, maximum = 1024)]
    pub image_size: usize,
    #[schema(minimum = 1, maximum = 1024)]
    pub batch_size: usize,
    /// Stage 1: frozen base, head only. At least one epoch in all (frozen + finetune).
    #[schema(minimum = 0, maximum = 1000)]
    pub frozen_epochs: usize,
    #[schema(exclusive_minimum = 0.0)]
    pub frozen_lr: f64,
    /// Stage 2: whole network, BatchNorm statistics frozen.
    #[schema(minimum = 0, maximum = 1000)]
    pub finetune_epochs: usize,
    #[schema(exclusive_minimum = 0.0)]
    pub finetune_lr: f64,
    /// In [0, 1).
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    pub dropout: f32,
    /// Early stopping: epochs without validation-loss improvement (0 = off).
    #[schema(minimum = 0)]
    pub patience: usize,
    pub augment: bool,
    /// Fraction held out for validation when the dataset has no validation split, in (0, 1).
    #[schema(exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub validation_split: f64,
    #[schema(minimum = 0)]
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            backbone: BackboneKind::Xception,
            image_size: 0,
            batch_size: 32,
            frozen_epochs: 20,
            frozen_lr: 1e-3,
            finetune_epochs: 10,
            finetune_lr: 1e-5,
            dropout: 0.2,
            patience: 5,
            augment: false,
            validation_split: 0.2,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// The one rule set for a run's settings (the API, the CLI and the
    /// trainer all ask this); the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_size == 0 || self.batch_size > 1024 {
            return Err(format!("batch_size must be 1..=1024, got {}", self.batch_size));
        }
        if self.frozen_epochs + self.finetune_epochs == 0 {
            return Err("at least one epoch is needed (frozen_epochs + finetune_epochs > 0)".into());
        }
        if self.frozen_epochs > 1000 || self.finetune_epochs > 1000 {
            return Err("at most 1000 epochs per stage".into());
        }
        for (n, lr) in [("frozen_lr", self.frozen_lr), ("finetune_lr", self.finetune_lr)] {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(format!("{n} must be a positive number"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("dropout must be in [0, 1)".into());
        }
        if !(self.validation_split > 0.0 && self.validation_split < 1.0) {
            return Err("validation_split must be in (0, 1)".into());
        }
        let min = self.backbone.min_size();
        if self.image_size != 0 && !(min..=1024).contains(&self.image_size) {
            return Err(format!("image_size must be 0 (the backbone's default) or {min}..=1024 for {}", self.backbone.as_str()));
        }
        Ok(())
    }

    /// The input size the run uses (`image_size`, or the backbone's default for 0).
    pub fn input_size(&self) -> usize {
        if self.image_size == 0 { self.backbone.default_size() } else { self.image_size }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Features,
    Frozen,
    Finetune,
}

impl Stage {
    /// The serde name (for log fields and metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Features => "features",
            Stage::Frozen => "frozen",
            Stage::Finetune => "finetune",
        }
    }
}

/// Loss and accuracy (accuracy at logit > 0 for two classes, argmax otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Metrics {
    pub loss: f64,
    pub accuracy: f64,
}

/// Progress reported while a run goes; the service stores and streams these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Every N steps inside an epoch. `eta_s`: estimated seconds until the
    /// stage ends (all its remaining epochs, at the pace seen so far).
    Progress {
        stage: Stage,
        epoch: usize,
        epochs: usize,
        step: usize,
        steps: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_s: Option<f64>,
    },
    /// End of an epoch.
    Epoch { stage: Stage, epoch: usize, epochs: usize, train: Metrics, validation: Metrics, seconds: f64 },
    /// A checkpoint was written (directory name under the run's output dir).
    Checkpoint { stage: Stage, epoch: usize, name: String, validation: Metrics },
    Message { text: String },
}

// The entry point the CLI and the job worker call (implemented in `recipe`):
//
//   pub fn run(spec: RunSpec, on_event: &mut dyn FnMut(Event), cancel: &AtomicBool) -> Result<Summary, TrainError>
//
// `RunSpec` names the dataset root + manifest, the pretrained weights file
// (product safetensors) or a seeded tiny network, the output directory for
// checkpoints, whether to resume, and the device. Checkpoints are directories
// `<out>/<stage>-<epoch>/` with `model.safetensors`, `optimizer.safetensors`
// and `meta.json`; `<out>/best.json` names the best one.

pub mod adam;
pub mod augment;
pub mod checkpoint;
pub mod features;
pub mod loss;
pub mod memory;
pub mod recipe;

pub use recipe::{finetune_step, run, RunSpec, Summary, WeightsChoice};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training was cancelled")]
    Cancelled,
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("training diverged: {0}")]
    Diverged(String),
    #[error("dataset problem: {0}")]
    Data(String),
    #[error("checkpoint problem: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    CheckpointFiles(#[from] crate::model::checkpoint::CheckpointError),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad checkpoint metadata: {0}")]
    Json(#[from] serde_json::Error),
}
