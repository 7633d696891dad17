//! Exports round-trip: onnxruntime and Keras 3's `load_model` (from PyPI,
//! through scripts/onnx-logits.py and scripts/keras-logits.py) reproduce
//! tuneserve's logits within 1e-4 for the real Xception and MobileNetV2
//! weights on the golden photos, and for a fine-tuned checkpoint. The Python
//! with both comes from TUNESERVE_TEST_EXPORT_PYTHON (scripts/export-python.sh,
//! which `.ci/run` calls).

mod fixtures;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use tuneserve::data::dataset::DatasetManifest;
use tuneserve::data::image::{load_path_for_model, to_tensor_data, DecodeLimits, RgbImage};
use tuneserve::model::{Backbone, BackboneKind, Head, Precision, Variant};
use tuneserve::serve::export::{export, ExportFormat};
use tuneserve::serve::Predictor;
use tuneserve::train::{self, RunSpec, TrainConfig, WeightsChoice};

const TOLERANCE: f32 = 1e-4;

fn python() -> PathBuf {
    let p = std::env::var("TUNESERVE_TEST_EXPORT_PYTHON").expect(
        "TUNESERVE_TEST_EXPORT_PYTHON is not set: a Python with onnxruntime and numpy (.ci/run makes one in target/export-venv)",
    );
    PathBuf::from(p)
}

/// onnxruntime's logits for NHWC images `x` of size `size`.
fn onnx_logits(model: &[u8], x: &[f32], batch: usize, size: usize) -> (Vec<Vec<f32>>, serde_json::Value) {
    let (logits, out) = run_export("onnx-logits.py", ("model.onnx", model), None, x, (batch, size));
    (logits, out["metadata"].clone())
}

/// Keras's logits (the file opened with `keras.models.load_model`, then
/// `weights` loaded into it with `model.load_weights` if given).
fn keras_logits(model: &[u8], weights: Option<&[u8]>, x: &[f32], batch: usize, size: usize) -> Vec<Vec<f32>> {
    let weights = weights.map(|w| ("model.weights.h5", w));
    run_export("keras-logits.py", ("model.keras", model), weights, x, (batch, size)).0
}

fn run_export(
    script: &str,
    (file, model): (&str, &[u8]),
    extra: Option<(&str, &[u8])>,
    x: &[f32],
    (batch, size): (usize, usize),
) -> (Vec<Vec<f32>>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let (m, d) = (dir.path().join(file), dir.path().join("input.f32"));
    std::fs::write(&m, model).unwrap();
    let extra = extra.map(|(name, bytes)| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    });
    std::fs::write(&d, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(script);
    let out = std::process::Command::new(python())
        .arg(&script)
        .args([m.as_os_str(), d.as_os_str()])
        .args([batch.to_string(), size.to_string(), size.to_string()])
        .args(extra)
        .output()
        .expect("run the export Python");
    assert!(out.status.success(), "{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logits = serde_json::from_value(v["logits"].clone()).unwrap();
    (logits, v)
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| {
        assert_eq!(x.len(), y.len());
        x.iter().zip(y).map(|(p, q)| (p - q).abs())
    }).fold(0.0, f32::max)
}

fn golden_photos(size: usize) -> Vec<RgbImage> {
    let dir = fixtures::fixture("golden/images");
    let mut paths: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    assert!(paths.len() >= 4, "golden photos missing");
    let s = size as u32;
    paths.iter().map(|p| load_path_for_model(p, (s, s), &DecodeLimits::default()).unwrap()).collect()
}

/// The real pretrained backbone with a seeded head: ONNX and Keras vs tuneserve on the golden photos.
fn real_weights_round_trip(kind: BackboneKind, weights: tuneserve::model::weights::WeightSet) {
    let dev = Device::Cpu;
    let bb = Backbone::build(kind, Variant::Full, &weights, false, Precision::F32, &dev).unwrap();
    let head = Head::init(bb.feature_dim(), 1, 0.0, 7, &dev).unwrap();
    let size = kind.notebook_size();
    let imgs = golden_photos(size);
    let x = to_tensor_data(&imgs, kind.scaling());
    let t = Tensor::from_slice(&x, (imgs.len(), size, size, 3), &dev).unwrap();
    let ours: Vec<Vec<f32>> = head.forward(&bb.features(&t).unwrap()).unwrap().to_vec2().unwrap();
    let model = tuneserve::model::onnx::export(&bb, &head, &["cats".into(), "dogs".into()], size).unwrap();
    let (theirs, meta) = onnx_logits(&model, &x, imgs.len(), size);
    let d = max_diff(&ours, &theirs);
    println!("{kind:?}: {} photos, max |logit diff| {d:.2e}, logits {ours:?}", imgs.len());
    assert!(d <= TOLERANCE, "{kind:?}: onnxruntime differs by {d} (ours {ours:?}, onnx {theirs:?})");
    let keras = keras_logits(&tuneserve::model::keras::export(&bb, &head, size).unwrap(), None, &x, imgs.len(), size);
    let dk = max_diff(&ours, &keras);
    println!("{kind:?}: Keras load_model, max |logit diff| {dk:.2e}");
    assert!(dk <= TOLERANCE, "{kind:?}: Keras differs by {dk} (ours {ours:?}, keras {keras:?})");
    assert_eq!(meta["image_size"], size.to_string());
    assert_eq!(meta["classes"], r#"["cats","dogs"]"#);
    // A non-trivial head: the logits are not all the same.
    assert!(ours.iter().any(|l| (l[0] - ours[0][0]).abs() > 1e-3), "{ours:?}");
}

#[test]
fn exports_match_xception_with_real_weights() {
    real_weights_round_trip(BackboneKind::Xception, fixtures::xception_weights());
}

#[test]
fn exports_match_mobilenet_v2_with_real_weights() {
    real_weights_round_trip(BackboneKind::MobilenetV2, fixtures::mobilenet_v2_weights());
}

/// A checkpoint that went through both stages (BatchNorm gamma/beta and
/// every kernel changed), three classes: the `export` service's ONNX and
/// safetensors against the predictor that serves it.
#[test]
fn exports_of_a_fine_tuned_checkpoint_match_its_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fixtures::synthetic::write_dataset(&data, 3, 24, 8, 71, 9);
    let config = TrainConfig {
        backbone: BackboneKind::Xception,
        image_size: 71,
        batch_size: 16,
        frozen_epochs: 2,
        finetune_epochs: 2,
        frozen_lr: 1e-2,
        finetune_lr: 1e-3,
        patience: 0,
        ..TrainConfig::default()
    };
    let spec = RunSpec {
        config,
        dataset_root: data.clone(),
        manifest: DatasetManifest::scan(&data).unwrap(),
        cache_dir: data.with_extension("cache"),
        partial_every: None,
        weights: WeightsChoice::Seeded,
        variant: Variant::Tiny,
        out_dir: dir.path().join("out"),
        resume: false,
        device: Device::Cpu,
    };
    let summary = train::run(spec, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    let ckpt = dir.path().join("out").join("finetune-002");
    assert!(ckpt.exists(), "best was {}", summary.best_checkpoint);

    let predictor = Predictor::load(&ckpt, &Device::Cpu, None).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let imgs: Vec<RgbImage> = (0..6).map(|i| fixtures::synthetic::image_of(i % 3, 71, &mut rng)).collect();
    let logits = |imgs: &[RgbImage], tta: bool| -> Vec<Vec<f32>> {
        predictor.predict(imgs, &vec![tta; imgs.len()]).unwrap().into_iter().map(|p| p.logits).collect()
    };
    let ours = logits(&imgs, false);
    // Test-time augmentation: the mean of the image's and its mirror's logits.
    let mirrors: Vec<RgbImage> = imgs.iter().map(image::imageops::flip_horizontal).collect();
    let (with_tta, of_mirrors) = (logits(&imgs, true), logits(&mirrors, false));
    let mean: Vec<Vec<f32>> = ours.iter().zip(&of_mirrors).map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x + y) / 2.0).collect()).collect();
    assert!(max_diff(&with_tta, &mean) <= 1e-5, "tta {with_tta:?} vs mean {mean:?}");
    assert!(max_diff(&ours, &of_mirrors) > 1e-3, "the mirror changes the logits (else the check above is empty)");
    let x = to_tensor_data(&imgs, BackboneKind::Xception.scaling());
    let (theirs, meta) = onnx_logits(&export(&ckpt, ExportFormat::Onnx).unwrap(), &x, imgs.len(), 71);
    let d = max_diff(&ours, &theirs);
    println!("fine-tuned tiny Xception, 3 classes: max |logit diff| {d:.2e}");
    assert!(d <= TOLERANCE, "onnxruntime differs by {d} (ours {ours:?}, onnx {theirs:?})");
    assert_eq!(theirs[0].len(), 3);
    assert_eq!(meta["classes"], r#"["class0","class1","class2"]"#);
    let keras = keras_logits(&export(&ckpt, ExportFormat::Keras).unwrap(), None, &x, imgs.len(), 71);
    let dk = max_diff(&ours, &keras);
    println!("fine-tuned tiny Xception, 3 classes: Keras load_model, max |logit diff| {dk:.2e}");
    assert!(dk <= TOLERANCE, "Keras differs by {dk} (ours {ours:?}, keras {keras:?})");
    // The weights alone, loaded into the model of the stage-1 checkpoint.
    let stage1 = dir.path().join("out").join(&train::checkpoint::list(&dir.path().join("out")).unwrap()[0].0);
    let before = export(&stage1, ExportFormat::Keras).unwrap();
    let weights = export(&ckpt, ExportFormat::KerasWeights).unwrap();
    let stage1_logits = keras_logits(&before, None, &x, imgs.len(), 71);
    assert!(max_diff(&ours, &stage1_logits) > 1e-3, "stage 1 and stage 2 models answer alike: the check would prove nothing");
    let loaded = keras_logits(&before, Some(&weights), &x, imgs.len(), 71);
    let dw = max_diff(&ours, &loaded);
    println!("fine-tuned weights through load_weights: max |logit diff| {dw:.2e}");
    assert!(dw <= TOLERANCE, "load_weights differs by {dw}");

    // safetensors: the checkpoint's own weights, byte for byte.
    let st = export(&ckpt, ExportFormat::Safetensors).unwrap();
    assert_eq!(st, std::fs::read(ckpt.join("model.safetensors")).unwrap());
    let tensors = candle_core::safetensors::load_buffer(&st, &Device::Cpu).unwrap();
    assert_eq!(tensors["head.kernel"].dim(1).unwrap(), 3);
}
