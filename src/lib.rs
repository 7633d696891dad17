//! tuneserve: transfer learning on images as an HTTP service.
//!
//! Layout (one module, one job):
//! - `ops`: custom Candle ops (forward + backward) the CNNs need.
//! - `model`: backbones (Xception, MobileNetV2), heads, weight import.
//! - `data`: image decoding/preprocessing, datasets.
//! - `train`: the two-stage recipe, optimiser, loss, checkpoints.
//! - `store`, `jobs`, `serve`, `api`: the service.

pub mod data;
