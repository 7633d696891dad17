//! The hand-written network backward equals Candle's autograd through the
//! same (individually gradient-checked) ops, on the tiny variants.

use candle_core::{Device, Tensor};
use tuneserve::model::{Backbone, BackboneKind, Precision, SeededInit, Variant};

fn compare(kind: BackboneKind, size: usize) {
    let dev = Device::Cpu;
    let mut bb = Backbone::build(kind, Variant::Tiny, &SeededInit { seed: 7, device: dev.clone() }, true, Precision::F32, &dev).unwrap();
    bb.net.autograd = true;
    let x = Tensor::randn(0f32, 1.0, (2, size, size, 3), &dev).unwrap();
    let (feats, tape) = bb.forward_train(&x).unwrap();
    let w = Tensor::randn(0f32, 1.0, feats.dims(), &dev).unwrap();
    let loss = (&feats * &w).unwrap().sum_all().unwrap();
    let auto = loss.backward().unwrap();
    let ours = bb.backward(tape, &w).unwrap();
    let mut checked = 0;
    for (i, p) in bb.net.trainable() {
        let a = auto.get(p.var.as_tensor()).unwrap_or_else(|| panic!("autograd has no grad for {}", p.name));
        let o = ours.0[i].as_ref().unwrap_or_else(|| panic!("backward has no grad for {}", p.name));
        let scale = a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-3);
        let d = (a - o).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-4 * scale, "{}: max diff {d} (scale {scale})", p.name);
        checked += 1;
    }
    assert!(checked > 20, "only {checked} parameters compared");
}

#[test]
fn xception_backward_equals_autograd() {
    compare(BackboneKind::Xception, 71);
}

#[test]
fn mobilenet_v2_backward_equals_autograd() {
    compare(BackboneKind::MobilenetV2, 64);
}

/// Inference fuses BatchNorm/ReLU into the depthwise convolutions, the end
/// of each residual block into one pass, and small-input 1x1 expansions into
/// the depthwise after them; training records the ops one by one. Both must
/// give the same features: the fusions keep the arithmetic and its order,
/// except that the fused expansion computes its product in its own kernel (a
/// different summation, as between two BLAS kernels), so features agree to
/// float rounding, not to the bit.
fn inference_equals_training_forward(kind: BackboneKind, size: usize) {
    let dev = Device::Cpu;
    let bb = Backbone::build(kind, Variant::Tiny, &SeededInit { seed: 11, device: dev.clone() }, false, Precision::F32, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (3, size, size, 3), &dev).unwrap();
    let fused = bb.features(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (recorded, _) = bb.forward_train(&x).unwrap();
    let recorded = recorded.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(fused.len(), recorded.len());
    let scale = recorded.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "all-zero features prove nothing");
    let worst = fused.iter().zip(&recorded).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{kind:?}: largest difference {worst:e} of features up to {scale}");
    assert!(worst <= 2e-6 * scale, "fused and recorded features differ by {worst} (features up to {scale})");
}

#[test]
fn xception_inference_fusions_keep_the_features() {
    inference_equals_training_forward(BackboneKind::Xception, 71);
}

#[test]
fn mobilenet_v2_inference_fusions_keep_the_features() {
    inference_equals_training_forward(BackboneKind::MobilenetV2, 64);
}
