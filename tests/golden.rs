//! Layer-by-layer parity with Keras on real photos (../shared/golden).

mod common;

use candle_core::{Device, Tensor};
use tuneserve::model::{Backbone, BackboneKind, Variant};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// (C,B,H,W) -> (B,H,W,C) like Keras.
fn nhwc(t: &Tensor) -> Tensor {
    t.permute((1, 2, 3, 0)).unwrap().contiguous().unwrap()
}

fn check(name: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.dims(), reference.dims(), "{name}: shape");
    let d = max_abs_diff(ours, reference);
    let tol = 1e-4 * max_abs(reference).max(1.0);
    println!("{name:>24}: max|diff| = {d:.3e} (tolerance {tol:.1e})");
    assert!(d <= tol, "{name}: max|diff| {d} > {tol}");
}

#[test]
fn xception_matches_keras_layer_by_layer() {
    let dev = Device::Cpu;
    let golden = candle_core::safetensors::load(common::fixture("golden/xception_golden.safetensors"), &dev).unwrap();
    let weights = common::xception_weights(&dev);
    let bb = Backbone::build(BackboneKind::Xception, Variant::Full, &weights, false, &dev).unwrap();
    let net = &bb.net;
    let input = &golden["input"];
    // Run node by node to compare the Keras taps.
    let mut x = input.permute((3, 0, 1, 2)).unwrap().contiguous().unwrap();
    let taps = [(1, "block1_conv1_act"), (4, "block2_add"), (6, "block4_add"), (10, "block8_add"), (15, "block13_add")];
    for (i, node) in net.nodes.iter().enumerate() {
        x = net.run_nodes(std::slice::from_ref(node), x).unwrap();
        if let Some((_, tap)) = taps.iter().find(|(j, _)| *j == i) {
            check(tap, &nhwc(&x), &golden[*tap]);
        }
    }
    check("block14_sepconv2_act", &nhwc(&x), &golden["block14_sepconv2_act"]);
    let gap = bb.features(input).unwrap();
    check("gap", &gap, &golden["gap"]);
}

#[test]
fn mobilenet_v2_matches_keras_layer_by_layer() {
    let dev = Device::Cpu;
    let golden = candle_core::safetensors::load(common::fixture("golden/mobilenet_v2_golden.safetensors"), &dev).unwrap();
    let weights = common::mobilenet_v2_weights(&dev);
    let bb = Backbone::build(BackboneKind::MobilenetV2, Variant::Full, &weights, false, &dev).unwrap();
    let fv = bb.features(&golden["input"]).unwrap();
    check("feature_vector", &fv, &golden["feature_vector"]);
}
