//! Shared test helpers: fixture lookup through TUNESERVE_FIXTURES.
#![allow(dead_code)]

use std::path::PathBuf;

use tuneserve::model::weights::WeightSet;

/// A fixture under $TUNESERVE_FIXTURES; panics (never skips) when missing.
pub fn fixture(rel: &str) -> PathBuf {
    let root = std::env::var("TUNESERVE_FIXTURES")
        .expect("TUNESERVE_FIXTURES is not set: point it at the shared fixtures folder (e.g. ../shared); .ci/run sets it");
    let p = PathBuf::from(root).join(rel);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

/// The real ImageNet Xception weights, through the product's own Keras import.
pub fn xception_weights() -> WeightSet {
    WeightSet::from_file(fixture("weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5")).unwrap()
}

/// The TF-Hub MobileNetV2 (with its dog/cat Dense head), through the product's import.
pub fn mobilenet_v2_weights() -> WeightSet {
    WeightSet::from_file(fixture("weights/mobilenet_v2_tfhub_dogcat_model.h5")).unwrap()
}
pub mod synthetic;
