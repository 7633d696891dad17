//! HDF5 readers: legacy Keras-2 `.h5` (weights-only or whole model), plus
//! dispatch to the Keras-3 `.weights.h5` reader; shared HDF5 helpers.

use std::path::Path;

use hdf5_pure::{AttrValue, DType, Dataset, File, Group};

use super::import::{canonicalize, RawLayer, RawVar};
use super::{keras3, TensorData, WeightSet, WeightsError};

pub(crate) fn read_hdf5(path: &Path, bytes: Vec<u8>) -> Result<WeightSet, WeightsError> {
    let file = open_bytes(path, bytes)?;
    let root = file.root();
    let root_attrs = root
        .attrs()
        .map_err(|e| WeightsError::h5(path, "root attributes", e))?;
    if root_attrs.contains_key("layer_names") {
        return canonicalize(path, read_legacy(path, &root)?);
    }
    let top = root
        .groups()
        .map_err(|e| WeightsError::h5(path, "root group", e))?;
    if top.iter().any(|g| g == "model_weights") {
        let g = file
            .group("model_weights")
            .map_err(|e| WeightsError::h5(path, "model_weights", e))?;
        return canonicalize(path, read_legacy(path, &g)?);
    }
    if top.iter().any(|g| g == "layers") {
        return keras3::read_weights(path, &file, None);
    }
    Err(WeightsError::layout(
        path,
        format!(
            "HDF5 file is not a Keras weights file: no `layer_names` attribute (Keras 2 weights), \
             no `model_weights/` (Keras 2 model) and no `layers/` (Keras 3 weights); top-level groups: {top:?}"
        ),
    ))
}

/// Parses HDF5 from memory, first checking the superblock's end-of-file
/// address so a truncated download is reported as such.
pub(crate) fn open_bytes(path: &Path, bytes: Vec<u8>) -> Result<File, WeightsError> {
    let len = bytes.len() as u64;
    let file = File::from_bytes(bytes).map_err(|e| WeightsError::h5(path, "opening", e))?;
    let eof = file.superblock().eof_address;
    if eof > len {
        return Err(WeightsError::Corrupt {
            path: path.into(),
            format: "HDF5",
            detail: format!("file is truncated: its header says {eof} bytes, it has {len}"),
        });
    }
    Ok(file)
}

/// Keras-2 `save_weights` layout: `layer_names` on `base`, one group per
/// layer with `weight_names`, datasets at `<layer>/<weight name>`.
fn read_legacy(path: &Path, base: &Group) -> Result<Vec<RawLayer>, WeightsError> {
    let attrs = base
        .attrs()
        .map_err(|e| WeightsError::h5(path, "layer_names", e))?;
    let layer_names = attrs.get("layer_names").and_then(strings).ok_or_else(|| {
        WeightsError::layout(
            path,
            "attribute `layer_names` is missing or not a list of strings",
        )
    })?;
    let mut out: Vec<RawLayer> = Vec::new();
    for lname in &layer_names {
        let g = base
            .group(lname)
            .map_err(|e| WeightsError::h5(path, &format!("layer group `{lname}`"), e))?;
        let gattrs = g
            .attrs()
            .map_err(|e| WeightsError::h5(path, &format!("attributes of `{lname}`"), e))?;
        let weight_names = gattrs
            .get("weight_names")
            .and_then(strings)
            .ok_or_else(|| {
                WeightsError::layout(
                    path,
                    format!("layer `{lname}`: attribute `weight_names` is missing or not strings"),
                )
            })?;
        // A whole nested model is one group whose weight names span many
        // layers (`block1_conv1/kernel:0`, ...): split them by prefix.
        for wname in &weight_names {
            let ds = g
                .dataset(wname)
                .map_err(|e| WeightsError::h5(path, &format!("dataset `{lname}/{wname}`"), e))?;
            let tensor = read_tensor(path, &format!("{lname}/{wname}"), &ds)?;
            let (prefix, var) = match wname.rsplit_once('/') {
                Some((p, v)) => (p.to_string(), v),
                None => (lname.clone(), wname.as_str()),
            };
            let var = RawVar {
                name: Some(strip_suffix(var).to_string()),
                tensor,
            };
            match out.last_mut() {
                Some(last) if last.name == prefix => last.vars.push(var),
                _ => out.push(RawLayer {
                    name: prefix,
                    class: None,
                    vars: vec![var],
                }),
            }
        }
    }
    Ok(out)
}

/// `kernel:0` -> `kernel` (TF variable names carry an output index).
fn strip_suffix(var: &str) -> &str {
    match var.rsplit_once(':') {
        Some((v, n)) if n.chars().all(|c| c.is_ascii_digit()) => v,
        _ => var,
    }
}

/// String-list attribute in any of the encodings h5py has used (variable-
/// or fixed-length, ASCII or UTF-8). An empty numeric array is what h5py
/// writes for an empty list.
pub(crate) fn strings(v: &AttrValue) -> Option<Vec<String>> {
    Some(match v {
        AttrValue::StringArray(s)
        | AttrValue::AsciiStringArray(s)
        | AttrValue::VarLenStringArray(s)
        | AttrValue::VarLenAsciiStringArray(s)
        | AttrValue::VarLenAsciiCharArray(s) => s.clone(),
        AttrValue::StringArraySized { values, .. }
        | AttrValue::AsciiStringArraySized { values, .. } => values.clone(),
        AttrValue::String(s)
        | AttrValue::AsciiString(s)
        | AttrValue::VarLenString(s)
        | AttrValue::VarLenAsciiString(s) => {
            vec![s.clone()]
        }
        AttrValue::StringSized { value, .. } | AttrValue::AsciiStringSized { value, .. } => {
            vec![value.clone()]
        }
        AttrValue::F64Array(a) if a.is_empty() => Vec::new(),
        AttrValue::F32Array(a) if a.is_empty() => Vec::new(),
        _ => return None,
    })
}

/// Reads a float dataset as f32, checking its element count against its shape.
pub(crate) fn read_tensor(
    path: &Path,
    name: &str,
    ds: &Dataset,
) -> Result<TensorData, WeightsError> {
    let bad = |detail: String| WeightsError::Tensor {
        path: path.into(),
        name: name.into(),
        detail,
    };
    let dtype = ds.dtype().map_err(|e| WeightsError::h5(path, name, e))?;
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(bad(format!("dtype {dtype:?}, expected float32")));
    }
    let shape: Vec<usize> = ds
        .shape()
        .map_err(|e| WeightsError::h5(path, name, e))?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} too large"))))
        .collect::<Result<_, _>>()?;
    let data = ds
        .read_f32()
        .map_err(|e| WeightsError::h5(path, &format!("reading `{name}`"), e))?;
    let numel: usize = shape.iter().product();
    if data.len() != numel {
        return Err(bad(format!(
            "shape {shape:?} needs {numel} values, read {}",
            data.len()
        )));
    }
    Ok(TensorData { shape, data })
}
