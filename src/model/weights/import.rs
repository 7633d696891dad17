//! Maps the layers read from a Keras file onto canonical names.
//!
//! Keras itself loads legacy weights by order: the layers that have weights,
//! in model order, each taking its variables in order. We do the same, and
//! additionally insist that every layer Keras names explicitly
//! (`block3_sepconv1`) sits where the architecture expects it; only the
//! auto-named shortcut layers (`conv2d_1`, numbered differently by every
//! Keras version) are taken purely by position.

use std::path::Path;

use super::spec::{Arch, SpecLayer};
use super::{TensorData, WeightSet, WeightsError};

/// One variable as found in the file.
#[derive(Debug)]
pub(crate) struct RawVar {
    /// Short variable name (`kernel`, `gamma`) when the file records one.
    pub name: Option<String>,
    pub tensor: TensorData,
}

/// One layer as found in the file, in model order.
#[derive(Debug)]
pub(crate) struct RawLayer {
    /// Keras layer name; for legacy files the weight-name prefix, which may
    /// be a path (`MobilenetV2/Conv/BatchNorm`).
    pub name: String,
    /// Keras class name when the file records it.
    pub class: Option<String>,
    pub vars: Vec<RawVar>,
}

impl RawLayer {
    /// Layer name without any enclosing scope.
    fn short_name(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }
}

/// Finds the backbone in `layers`, names its tensors canonically, puts the
/// remaining layers with weights under `head`, and validates the backbone.
pub(crate) fn canonicalize(path: &Path, layers: Vec<RawLayer>) -> Result<WeightSet, WeightsError> {
    let layers: Vec<RawLayer> = layers.into_iter().filter(|l| !l.vars.is_empty()).collect();
    if layers.iter().any(|l| slim_scope(&l.name).is_some()) {
        return by_slim_name(path, layers);
    }
    for arch in [Arch::Xception, Arch::MobileNetV2] {
        let spec = arch.layers();
        let first = spec[0].keras.as_deref();
        if let Some(start) = layers.iter().position(|l| Some(l.short_name()) == first) {
            return by_position(path, arch, &spec, layers, start);
        }
    }
    let names: Vec<&str> = layers.iter().take(8).map(|l| l.name.as_str()).collect();
    Err(WeightsError::layout(
        path,
        format!(
            "no known backbone: found neither Xception (`block1_conv1`) nor MobileNetV2 \
             (`Conv1` or TF-slim `MobilenetV2/...`) layers; first layers with weights: {names:?}"
        ),
    ))
}

/// The part of a TF-slim variable path from `MobilenetV2/` on.
fn slim_scope(name: &str) -> Option<&str> {
    name.find("MobilenetV2/").map(|i| &name[i..])
}

/// TF-Hub MobileNetV2: variables carry their full slim path, so look them up
/// by name (the file's variable order is arbitrary).
fn by_slim_name(path: &Path, layers: Vec<RawLayer>) -> Result<WeightSet, WeightsError> {
    let mut set = WeightSet::new();
    let mut head = Vec::new();
    for layer in layers {
        let Some(scope) = slim_scope(&layer.name).map(str::to_string) else {
            head.push(layer);
            continue;
        };
        for (i, v) in layer.vars.into_iter().enumerate() {
            let var = v.name.unwrap_or_else(|| format!("var{i}"));
            let name = format!("{scope}/{var}");
            if set.insert(name.clone(), v.tensor).is_some() {
                return Err(WeightsError::layout(
                    path,
                    format!("variable `{name}` appears twice"),
                ));
            }
        }
    }
    add_head(&mut set, head);
    finish(path, Arch::MobileNetV2, set)
}

fn by_position(
    path: &Path,
    arch: Arch,
    spec: &[SpecLayer],
    mut layers: Vec<RawLayer>,
    start: usize,
) -> Result<WeightSet, WeightsError> {
    let end = start + spec.len();
    if layers.len() < end {
        return Err(WeightsError::layout(
            path,
            format!(
                "{} needs {} layers with weights from `{}` on, the file has only {}",
                arch.name(),
                spec.len(),
                layers[start].name,
                layers.len() - start
            ),
        ));
    }
    let tail = layers.split_off(end);
    let backbone = layers.split_off(start);
    let mut head = layers;
    head.extend(tail);

    let sep = arch.sep();
    let mut set = WeightSet::new();
    for (i, (want, got)) in spec.iter().zip(backbone).enumerate() {
        if let Some(k) = &want.keras {
            if got.short_name() != k {
                return Err(WeightsError::layout(
                    path,
                    format!(
                        "layer {i} of the {} backbone should be `{k}`, found `{}`: not a {} \
                         or layers out of order",
                        arch.name(),
                        got.name,
                        arch.name()
                    ),
                ));
            }
        }
        if got.vars.len() != want.vars.len() {
            return Err(WeightsError::layout(
                path,
                format!(
                    "layer `{}` (canonical `{}`) has {} variables, expected {} ({})",
                    got.name,
                    want.canonical,
                    got.vars.len(),
                    want.vars.len(),
                    want.vars
                        .iter()
                        .map(|v| v.canonical)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let by_name = vars_match_by_name(want, &got.vars);
        let mut vars: Vec<Option<RawVar>> = got.vars.into_iter().map(Some).collect();
        for (j, wv) in want.vars.iter().enumerate() {
            let idx = if by_name {
                vars.iter()
                    .position(|v| v.as_ref().and_then(|v| v.name.as_deref()) == Some(wv.keras))
            } else {
                Some(j) // same order as Keras's own by-order load
            };
            let Some(v) = idx.and_then(|k| vars[k].take()) else {
                return Err(WeightsError::layout(
                    path,
                    format!("layer `{}`: no `{}`", want.canonical, wv.keras),
                ));
            };
            set.insert(format!("{}{sep}{}", want.canonical, wv.canonical), v.tensor);
        }
    }
    add_head(&mut set, head);
    finish(path, arch, set)
}

/// Variables are matched by name only when the file names all of them with
/// exactly the expected names; otherwise by order, as Keras does.
fn vars_match_by_name(want: &SpecLayer, got: &[RawVar]) -> bool {
    let mut names: Vec<&str> = got.iter().filter_map(|v| v.name.as_deref()).collect();
    let mut expected: Vec<&str> = want.vars.iter().map(|v| v.keras).collect();
    names.sort_unstable();
    expected.sort_unstable();
    names == expected
}

/// One Dense layer becomes `head.kernel`/`head.bias`; anything else keeps its
/// layer name under `head/`.
fn add_head(set: &mut WeightSet, head: Vec<RawLayer>) {
    if let [only] = head.as_slice() {
        if is_dense(only) {
            for v in head.into_iter().flat_map(|l| l.vars) {
                let var = if v.tensor.shape.len() == 2 {
                    "kernel"
                } else {
                    "bias"
                };
                set.insert(format!("head.{var}"), v.tensor);
            }
            return;
        }
    }
    for layer in head {
        let lname = layer.short_name().to_string();
        for (i, v) in layer.vars.into_iter().enumerate() {
            let var = v.name.unwrap_or_else(|| format!("var{i}"));
            set.insert(format!("head/{lname}.{var}"), v.tensor);
        }
    }
}

fn is_dense(l: &RawLayer) -> bool {
    if l.class.as_deref().is_some_and(|c| c != "Dense") {
        return false;
    }
    let ranks: Vec<usize> = l.vars.iter().map(|v| v.tensor.shape.len()).collect();
    let names_ok = l
        .vars
        .iter()
        .all(|v| matches!(v.name.as_deref(), None | Some("kernel" | "bias")));
    ranks == [2, 1] && names_ok
}

fn finish(path: &Path, arch: Arch, mut set: WeightSet) -> Result<WeightSet, WeightsError> {
    set.source = Some(path.to_path_buf());
    set.validate(&arch.spec())?;
    Ok(set)
}
