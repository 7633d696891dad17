//! Layer-by-layer parity with Keras on real photos (../shared/golden).

mod fixtures;

use candle_core::{Device, Tensor};
use tuneserve::model::net::{Net, Node};
use tuneserve::model::{Backbone, BackboneKind, Head, Precision, Variant};

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
    let golden = candle_core::safetensors::load(fixtures::fixture("golden/xception_golden.safetensors"), &dev).unwrap();
    let weights = fixtures::xception_weights();
    let bb = Backbone::build(BackboneKind::Xception, Variant::Full, &weights, false, Precision::F32, &dev).unwrap();
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

/// Names of the parameters a node (and its children) uses.
fn param_names(net: &Net, node: &Node, out: &mut Vec<String>) {
    match node {
        Node::Conv { w, .. } | Node::Depthwise { w, .. } => out.push(net.params[*w].name.clone()),
        Node::Bn { gamma, .. } => out.push(net.params[*gamma].name.clone()),
        Node::Residual { main, shortcut } => main.iter().chain(shortcut).for_each(|n| param_names(net, n, out)),
        _ => {}
    }
}

#[test]
fn mobilenet_v2_matches_keras_layer_by_layer() {
    let dev = Device::Cpu;
    let golden = candle_core::safetensors::load(fixtures::fixture("golden/mobilenet_v2_golden.safetensors"), &dev).unwrap();
    let weights = fixtures::mobilenet_v2_weights();
    let bb = Backbone::build(BackboneKind::MobilenetV2, Variant::Full, &weights, false, Precision::F32, &dev).unwrap();
    let net = &bb.net;
    let input = &golden["input"];
    let mut x = input.permute((3, 0, 1, 2)).unwrap().contiguous().unwrap();
    // A tap is the output of the last node that uses the scope's last BatchNorm.
    let taps = [
        ("Conv/Relu6", "MobilenetV2/Conv/BatchNorm/gamma"),
        ("expanded_conv_2/output", "MobilenetV2/expanded_conv_2/project/BatchNorm/gamma"),
        ("expanded_conv_5/output", "MobilenetV2/expanded_conv_5/project/BatchNorm/gamma"),
        ("expanded_conv_12/output", "MobilenetV2/expanded_conv_12/project/BatchNorm/gamma"),
        ("expanded_conv_16/output", "MobilenetV2/expanded_conv_16/project/BatchNorm/gamma"),
        ("Conv_1/Relu6", "MobilenetV2/Conv_1/BatchNorm/gamma"),
    ];
    let mut seen = 0;
    for node in &net.nodes {
        x = net.run_nodes(std::slice::from_ref(node), x).unwrap();
        let mut names = Vec::new();
        param_names(net, node, &mut names);
        for (tap, param) in taps {
            if names.iter().any(|n| n == param) {
                check(tap, &nhwc(&x), &golden[tap]);
                seen += 1;
            }
        }
    }
    assert_eq!(seen, taps.len(), "not every tap was reached");
    let fv = bb.features(input).unwrap();
    check("feature_vector", &fv, &golden["feature_vector"]);
    // The file's own Dense head, through the product's Head.
    let k = weights.get("head.kernel").expect("dogcat head kernel");
    let b = weights.get("head.bias").expect("dogcat head bias");
    let head = Head::from_tensors(
        Tensor::from_slice(&k.data, k.shape.as_slice(), &dev).unwrap(),
        Tensor::from_slice(&b.data, b.shape.as_slice(), &dev).unwrap(),
        0.0,
    )
    .unwrap();
    check("dogcat_head_logits", &head.forward(&fv).unwrap(), &golden["dogcat_head_logits"]);
}

/// Keras's golden tensors, and our Xception's features of its photos and the
/// kitchenware head's logits on them, with the products in `precision`.
fn kitchenware_on_our_gap(precision: Precision) -> (std::collections::HashMap<String, Tensor>, Tensor, Tensor) {
    let dev = Device::Cpu;
    let golden = candle_core::safetensors::load(fixtures::fixture("golden/xception_golden.safetensors"), &dev).unwrap();
    let head = candle_core::safetensors::load(fixtures::fixture("golden/kitchenware_head.safetensors"), &dev).unwrap();
    let bb = Backbone::build(BackboneKind::Xception, Variant::Full, &fixtures::xception_weights(), false, precision, &dev).unwrap();
    let gap = bb.features(&golden["input"]).unwrap();
    let hidden = gap.matmul(&head["dense.kernel"]).unwrap().broadcast_add(&head["dense.bias"]).unwrap().relu().unwrap();
    let logits = hidden.matmul(&head["dense_1.kernel"]).unwrap().broadcast_add(&head["dense_1.bias"]).unwrap();
    (golden, gap, logits)
}

#[test]
fn kitchenware_head_on_our_gap_matches_keras_logits() {
    let (golden, _, logits) = kitchenware_on_our_gap(Precision::F32);
    check("head_logits", &logits, &golden["head_logits"]);
}

/// `tuneserve embed` on the original photos (our decode + resize + network)
/// against Keras's own `gap` for the same photos.
#[test]
fn embed_cli_on_the_photos_matches_keras_gap() {
    let dev = Device::Cpu;
    let golden = candle_core::safetensors::load(fixtures::fixture("golden/xception_golden.safetensors"), &dev).unwrap();
    let order = ["0000", "0009", "0001", "0207", "0004", "0013", "0412", "0291"];
    let paths: Vec<String> = order.iter().map(|n| fixtures::fixture(&format!("golden/images/{n}.jpg")).display().to_string()).collect();
    let weights = fixtures::fixture("weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuneserve"))
        .args(["embed", "--backbone", "xception", "--device", "cpu", "--weights"])
        .arg(&weights)
        .args(&paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "embed failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 8);
    let reference = golden["gap"].to_vec2::<f32>().unwrap();
    for (i, (line, r)) in lines.iter().zip(&reference).enumerate() {
        assert_eq!(line["path"].as_str().unwrap(), paths[i]);
        let f: Vec<f32> = line["features"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(f.len(), 2048);
        let dot: f64 = f.iter().zip(r).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
        let na: f64 = f.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = r.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (na * nb);
        let maxd = f.iter().zip(r).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("image {i}: cosine {cos:.8}, max|diff| {maxd:.2e}");
        assert!(cos >= 0.9995, "image {i}: cosine {cos}");
    }

    // A file that is not an image: reported, the others still embedded, and
    // the exit status says so unless --keep-going.
    let bogus = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bogus.path(), b"not an image").unwrap();
    for keep_going in [false, true] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tuneserve"));
        cmd.args(["embed", "--backbone", "xception", "--device", "cpu", "--weights"]).arg(&weights).args(&paths).arg(bogus.path());
        if keep_going {
            cmd.arg("--keep-going");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), keep_going, "{err}");
        assert!(err.contains("1 of 9 inputs failed") && err.contains(&bogus.path().display().to_string()), "{err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 8);
    }
}

/// Serving in bf16 (where the CPU has AVX-512 BF16; elsewhere the model
/// serves f32 and this holds a fortiori): the features stay within bf16's
/// precision of Keras's, and every photo keeps Keras's class under the
/// kitchenware head.
#[test]
fn xception_bf16_serving_keeps_keras_predictions() {
    // bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per
    // product operand); measured 7.3e-3 after the 36 convolutions.
    serving_keeps_keras_predictions(Precision::Bf16, 2e-2);
}

/// Serving in int16 (fixed-point weights and activations; CPUs whose widest
/// vector unit is AVX2, as on most CI machines; elsewhere the model serves
/// f32 and this holds a fortiori): as for bf16.
#[test]
fn xception_int16_serving_keeps_keras_predictions() {
    #[cfg(target_arch = "x86_64")]
    if std::env::var("CI").is_ok() && !is_x86_feature_detected!("avx512f") {
        assert_eq!(Precision::Int16.supported(), Precision::Int16, "CI machines have AVX2: the test must run int16");
    }
    // Each product operand is rounded to 1/6600 or less of its row's or
    // pixel's largest; measured 1.6e-3 after the 36 convolutions.
    serving_keeps_keras_predictions(Precision::Int16, 1e-2);
}

/// The features in `precision` lie within `max_relative` of Keras's largest,
/// and the kitchenware head gives every photo Keras's class.
fn serving_keeps_keras_predictions(precision: Precision, max_relative: f32) {
    let (golden, gap, logits) = kitchenware_on_our_gap(precision);
    let relative = max_abs_diff(&gap, &golden["gap"]) / max_abs(&golden["gap"]);
    println!("ran {:?}: gap max|diff| / max|gap| = {relative:.2e}", precision.supported());
    assert!(relative <= max_relative, "{precision:?} features drift: {relative}");
    let ours = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let keras = golden["head_logits"].argmax(1).unwrap().to_vec1::<u32>().unwrap();
    println!("classes ours {ours:?} keras {keras:?}; logits max|diff| {:.3e}", max_abs_diff(&logits, &golden["head_logits"]));
    assert_eq!(ours, keras, "{precision:?} changed a photo's class");
}
