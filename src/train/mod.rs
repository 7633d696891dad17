//! Training: the notebook's two-stage transfer-learning recipe.

use serde::{Deserialize, Serialize};

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
pub mod config;
pub mod features;
pub mod loss;
pub mod memory;
pub mod recipe;

pub use config::{Recipe, TrainConfig, TrainSettings};
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
