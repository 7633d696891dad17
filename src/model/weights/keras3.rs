//! Keras 3 formats: the `.keras` zip archive (`config.json` +
//! `model.weights.h5`) and the bare `.weights.h5`.
//!
//! Keras 3 names a layer's group after its class, not its name: within each
//! model the layers are numbered per class in tracking order
//! (`conv2d`, `conv2d_1`, ...; `layers/functional/layers/...` for a nested
//! model) and variables are `vars/0..n`. With `config.json` we replay that
//! numbering over the config's layer lists to recover layer names; a bare
//! weights file only has the class counters, which we map onto the
//! architecture's layer sequence exactly as Keras does on load.

use std::collections::{BTreeSet, HashMap};
use std::io::{Cursor, Read};
use std::path::Path;

use hdf5_pure::File;
use serde_json::Value;

use super::import::{canonicalize, RawLayer, RawVar};
use super::keras_h5::{open_bytes, read_tensor};
use super::spec::Arch;
use super::{WeightSet, WeightsError};

const WEIGHTS_ENTRY: &str = "model.weights.h5";

pub(crate) fn read_archive(path: &Path, bytes: &[u8]) -> Result<WeightSet, WeightsError> {
    let corrupt = |e: zip::result::ZipError| WeightsError::Corrupt {
        path: path.into(),
        format: "zip",
        detail: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(corrupt)?;
    let names: BTreeSet<String> = zip.file_names().map(str::to_string).collect();
    if !names.contains(WEIGHTS_ENTRY) {
        let shown: Vec<&String> = names.iter().take(10).collect();
        return Err(WeightsError::layout(
            path,
            format!("zip archive is not a Keras 3 `.keras` file: no `{WEIGHTS_ENTRY}` (entries: {shown:?})"),
        ));
    }
    let config = if names.contains("config.json") {
        let mut s = String::new();
        zip.by_name("config.json")
            .map_err(corrupt)?
            .read_to_string(&mut s)
            .map_err(|e| WeightsError::io(path, e))?;
        let v: Value = serde_json::from_str(&s).map_err(|e| {
            WeightsError::layout(path, format!("config.json is not valid JSON: {e}"))
        })?;
        Some(v)
    } else {
        None
    };
    let mut h5 = Vec::new();
    zip.by_name(WEIGHTS_ENTRY)
        .map_err(corrupt)?
        .read_to_end(&mut h5)
        .map_err(|e| WeightsError::io(path, e))?;
    let file = open_bytes(path, h5)?;
    read_weights(path, &file, config.as_ref())
}

/// Reads a Keras-3 `model.weights.h5`, with the model's `config.json` when
/// there is one.
pub(crate) fn read_weights(
    path: &Path,
    file: &File,
    config: Option<&Value>,
) -> Result<WeightSet, WeightsError> {
    match config {
        Some(cfg) => {
            let mut layers = Vec::new();
            walk_config(path, file, cfg, "", &mut layers)?;
            canonicalize(path, layers)
        }
        None => read_bare(path, file),
    }
}

fn walk_config(
    path: &Path,
    file: &File,
    model: &Value,
    prefix: &str,
    out: &mut Vec<RawLayer>,
) -> Result<(), WeightsError> {
    let Some(layers) = model.pointer("/config/layers").and_then(Value::as_array) else {
        return Err(WeightsError::layout(
            path,
            "config.json: the model has no `config.layers` list (only Functional/Sequential models are supported)",
        ));
    };
    // Sequential.layers leaves out its InputLayer, so Keras never numbers it.
    let sequential = model.get("class_name").and_then(Value::as_str) == Some("Sequential");
    let mut counters: HashMap<String, usize> = HashMap::new();
    for layer in layers {
        let class = layer
            .get("class_name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if sequential && class == "InputLayer" {
            continue;
        }
        let group = numbered(&mut counters, to_snake_case(class));
        let gpath = format!("{prefix}layers/{group}");
        if layer.pointer("/config/layers").is_some() {
            walk_config(path, file, layer, &format!("{gpath}/"), out)?;
            continue;
        }
        let name = layer
            .pointer("/config/name")
            .or_else(|| layer.get("name"))
            .and_then(Value::as_str)
            .unwrap_or(&group)
            .to_string();
        let cfg = layer.get("config").unwrap_or(&Value::Null);
        let vars = read_vars(path, file, &gpath, var_names(class, cfg))?;
        out.push(RawLayer {
            name,
            class: Some(class.to_string()),
            vars,
        });
    }
    Ok(())
}

/// `conv2d`, `conv2d_1`, ... per class within one model, as Keras 3 saves.
fn numbered(counters: &mut HashMap<String, usize>, base: String) -> String {
    let n = counters.entry(base.clone()).or_insert(0);
    let name = if *n == 0 { base } else { format!("{base}_{n}") };
    *n += 1;
    name
}

/// Keras's `to_snake_case`: `SeparableConv2D` -> `separable_conv2d`,
/// `BatchNormalization` -> `batch_normalization`, `ReLU` -> `re_lu`.
pub(crate) fn to_snake_case(name: &str) -> String {
    let chars: Vec<char> = name
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    // Pass 1, re.sub("(.)([A-Z][a-z]+)", r"\1_\2"): left to right, non-overlapping.
    let mut pass1 = String::new();
    let mut i = 0;
    while i < chars.len() {
        let cap = i + 1 < chars.len()
            && chars[i + 1].is_ascii_uppercase()
            && chars.get(i + 2).is_some_and(|c| c.is_ascii_lowercase());
        if cap {
            let mut j = i + 2;
            while chars.get(j).is_some_and(|c| c.is_ascii_lowercase()) {
                j += 1;
            }
            pass1.push(chars[i]);
            pass1.push('_');
            pass1.extend(&chars[i + 1..j]);
            i = j;
        } else {
            pass1.push(chars[i]);
            i += 1;
        }
    }
    // Pass 2, re.sub("([a-z])([A-Z])", r"\1_\2"), then lower().
    let p: Vec<char> = pass1.chars().collect();
    let mut out = String::new();
    for (k, &c) in p.iter().enumerate() {
        out.push(c.to_ascii_lowercase());
        if c.is_ascii_lowercase() && p.get(k + 1).is_some_and(|n| n.is_ascii_uppercase()) {
            out.push('_');
        }
    }
    out
}

/// Variable names in Keras 3 creation order for the classes we know.
fn var_names(class: &str, cfg: &Value) -> Vec<&'static str> {
    let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(true);
    match class {
        "Conv1D" | "Conv2D" | "Conv3D" | "Conv2DTranspose" | "Dense" => vec!["kernel", "bias"],
        "SeparableConv2D" => vec!["depthwise_kernel", "pointwise_kernel", "bias"],
        "DepthwiseConv2D" => vec!["depthwise_kernel", "bias"],
        "BatchNormalization" => {
            let mut v = Vec::new();
            if flag("scale") {
                v.push("gamma");
            }
            if flag("center") {
                v.push("beta");
            }
            v.extend(["moving_mean", "moving_variance"]);
            v
        }
        _ => Vec::new(),
    }
}

/// Reads `<gpath>/vars/0..n`; a layer without a `vars` group has no weights.
fn read_vars(
    path: &Path,
    file: &File,
    gpath: &str,
    names: Vec<&str>,
) -> Result<Vec<RawVar>, WeightsError> {
    let vpath = format!("{gpath}/vars");
    let Ok(group) = file.group(&vpath) else {
        return Ok(Vec::new());
    };
    let listed = group
        .datasets()
        .map_err(|e| WeightsError::h5(path, &vpath, e))?;
    let mut idx: Vec<usize> = listed.iter().filter_map(|n| n.parse().ok()).collect();
    idx.sort_unstable();
    if idx.iter().enumerate().any(|(i, &n)| i != n) {
        return Err(WeightsError::layout(
            path,
            format!("`{vpath}` holds {listed:?}, expected 0..n"),
        ));
    }
    // Names only apply when the count fits (e.g. `use_bias=False` drops the last).
    let named = idx.len() <= names.len();
    let mut out = Vec::with_capacity(idx.len());
    for i in idx {
        let dpath = format!("{vpath}/{i}");
        let ds = file
            .dataset(&dpath)
            .map_err(|e| WeightsError::h5(path, &dpath, e))?;
        let tensor = read_tensor(path, &dpath, &ds)?;
        let name = named.then(|| names[i].to_string());
        out.push(RawVar { name, tensor });
    }
    Ok(out)
}

// ------------------------------------------------------------- bare file

fn read_bare(path: &Path, file: &File) -> Result<WeightSet, WeightsError> {
    let containers = find_containers(path, file)?;
    for arch in [Arch::Xception, Arch::MobileNetV2] {
        let spec = arch.layers();
        for (cpath, children) in &containers {
            let fits = spec
                .iter()
                .all(|l| children.contains(l.kind.keras3_group()));
            if !fits {
                continue;
            }
            let mut counters = HashMap::new();
            let mut used = BTreeSet::new();
            let mut layers = Vec::new();
            for l in &spec {
                let group = numbered(&mut counters, l.kind.keras3_group().to_string());
                let gpath = format!("{cpath}/{group}");
                let names = l.vars.iter().map(|v| v.keras).collect();
                let vars = read_vars(path, file, &gpath, names)?;
                let name = l.keras.clone().unwrap_or_else(|| group.clone());
                layers.push(RawLayer {
                    name,
                    class: None,
                    vars,
                });
                used.insert(gpath);
            }
            layers.extend(head_layers(path, file, &containers, &used)?);
            return canonicalize(path, layers);
        }
    }
    Err(WeightsError::layout(
        path,
        format!(
            "Keras 3 weights file without config.json: no model in it has the layers of Xception or \
             MobileNetV2 (models found: {:?})",
            containers.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>()
        ),
    ))
}

/// Every `layers` group (the root model's and nested models'), with the
/// names of the layer groups in it.
fn find_containers(
    path: &Path,
    file: &File,
) -> Result<Vec<(String, BTreeSet<String>)>, WeightsError> {
    let mut out = Vec::new();
    let mut todo = vec!["layers".to_string()];
    while let Some(cpath) = todo.pop() {
        let g = file
            .group(&cpath)
            .map_err(|e| WeightsError::h5(path, &cpath, e))?;
        let children: BTreeSet<String> = g
            .groups()
            .map_err(|e| WeightsError::h5(path, &cpath, e))?
            .into_iter()
            .collect();
        for c in &children {
            let sub = format!("{cpath}/{c}/layers");
            if file.group(&sub).is_ok() {
                todo.push(sub);
            }
        }
        out.push((cpath, children));
    }
    Ok(out)
}

/// Layers with weights that are not part of the backbone.
fn head_layers(
    path: &Path,
    file: &File,
    containers: &[(String, BTreeSet<String>)],
    used: &BTreeSet<String>,
) -> Result<Vec<RawLayer>, WeightsError> {
    let mut out = Vec::new();
    for (cpath, children) in containers {
        for c in children {
            let gpath = format!("{cpath}/{c}");
            if used.contains(&gpath) {
                continue;
            }
            let base = c
                .trim_end_matches(|ch: char| ch.is_ascii_digit())
                .trim_end_matches('_');
            let class = (base == "dense").then(|| "Dense".to_string());
            let names = var_names(class.as_deref().unwrap_or(""), &Value::Null);
            let vars = read_vars(path, file, &gpath, names)?;
            if !vars.is_empty() {
                out.push(RawLayer {
                    name: c.clone(),
                    class,
                    vars,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::to_snake_case;

    #[test]
    fn snake_case_matches_keras() {
        for (class, group) in [
            ("Conv2D", "conv2d"),
            ("SeparableConv2D", "separable_conv2d"),
            ("DepthwiseConv2D", "depthwise_conv2d"),
            ("BatchNormalization", "batch_normalization"),
            ("GlobalAveragePooling2D", "global_average_pooling2d"),
            ("InputLayer", "input_layer"),
            ("Functional", "functional"),
            ("Dense", "dense"),
            ("ReLU", "re_lu"),
        ] {
            assert_eq!(to_snake_case(class), group, "{class}");
        }
    }
}
