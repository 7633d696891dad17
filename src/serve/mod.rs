//! Serving trained models: the predictor, the model registry (default
//! model, hot swap on publish) and the batching queue in front of each
//! loaded model.

pub mod batcher;
pub mod error;
pub mod export;
pub mod predictor;
pub mod registry;

pub use error::PredictError;
pub use export::ExportFormat;
pub use predictor::{Prediction, Predictor};
