//! Serving trained models.

pub mod predictor;

pub use predictor::{Prediction, Predictor};
