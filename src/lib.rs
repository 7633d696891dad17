//! tuneserve: transfer learning on images as an HTTP service.
//!
//! Layout (one module, one job):
//! - `ops`: custom Candle ops (forward + backward) the CNNs need.
//! - `model`: backbones (Xception, MobileNetV2), heads, weight import.
//! - `data`: image decoding/preprocessing, datasets.
//! - `train`: the two-stage recipe, optimiser, loss, checkpoints.
//! - `store`, `jobs`, `serve`, `api`: the service; `compute`: its CPU thread pools;
//!   `telemetry`: its Prometheus metrics.

pub mod alloc;
pub mod api;
pub mod cli;
pub mod compute;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod jobs;
pub mod model;
pub mod ops;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod train;
