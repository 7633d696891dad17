//! Shared test helpers: fixture lookup through TUNESERVE_FIXTURES.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// A fixture under $TUNESERVE_FIXTURES; panics (never skips) when missing.
pub fn fixture(rel: &str) -> PathBuf {
    let root = std::env::var("TUNESERVE_FIXTURES")
        .expect("TUNESERVE_FIXTURES is not set: point it at the shared fixtures folder (e.g. ../shared); .ci/run sets it");
    let p = PathBuf::from(root).join(rel);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

pub fn xception_weights(dev: &Device) -> HashMap<String, Tensor> {
    candle_core::safetensors::load("/tmp/xception_dev.safetensors", dev).unwrap()
}

pub fn mobilenet_v2_weights(dev: &Device) -> HashMap<String, Tensor> {
    candle_core::safetensors::load("/tmp/mnv2_dev.safetensors", dev).unwrap()
}
