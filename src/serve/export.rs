//! A trained model in a format other tools load: ONNX for inference
//! runtimes, a Keras 3 `.keras` archive, or its weights as safetensors
//! (Keras layout, canonical names).

use std::path::Path;

use candle_core::Device;
use serde::Deserialize;

use super::Predictor;
use crate::model::checkpoint::{self, MODEL_FILE};
use crate::model::Precision;
use crate::train::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ExportFormat {
    /// ONNX (opset 17) of inference: `image` (batch, size, size, 3) scaled pixels in, `logits` out.
    Onnx,
    /// A Keras 3 `.keras` archive of the whole classifier (`keras.models.load_model`), same input and output.
    Keras,
    /// Only the Keras weights (`model.weights.h5`), for `model.load_weights` on the `.keras` export's model.
    KerasWeights,
    /// The weights in the Keras layout under canonical names, plus `head.kernel` and `head.bias`.
    Safetensors,
}

impl ExportFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Onnx => "onnx",
            ExportFormat::Keras => "keras",
            ExportFormat::KerasWeights => "weights.h5",
            ExportFormat::Safetensors => "safetensors",
        }
    }
}

/// The checkpoint in `dir` as `format` (built on the CPU; it can take a few
/// seconds and hundreds of MB for a full-size network).
pub fn export(dir: &Path, format: ExportFormat) -> Result<Vec<u8>, TrainError> {
    if !checkpoint::is_checkpoint(dir) {
        return Err(TrainError::Checkpoint(format!("{} is not a checkpoint", dir.display())));
    }
    match format {
        ExportFormat::Safetensors => Ok(std::fs::read(dir.join(MODEL_FILE))?),
        ExportFormat::Onnx => Predictor::load(dir, &Device::Cpu, Some(Precision::F32))?.to_onnx(),
        ExportFormat::Keras => Predictor::load(dir, &Device::Cpu, Some(Precision::F32))?.to_keras(),
        ExportFormat::KerasWeights => Predictor::load(dir, &Device::Cpu, Some(Precision::F32))?.to_keras_weights(),
    }
}
