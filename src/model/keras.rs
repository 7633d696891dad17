//! Keras 3 export: a `.keras` archive (`config.json`, `metadata.json`,
//! `model.weights.h5`) of the whole classifier that `keras.models.load_model`
//! opens, input `image` (batch, size, size, 3) scaled pixels, output `logits`.
//!
//! The network is written layer by layer from the same graph tuneserve runs:
//! Conv2D, DepthwiseConv2D (a separable convolution is its depthwise and
//! pointwise halves), BatchNormalization, ReLU, MaxPooling2D, Add, Rescaling,
//! then GlobalAveragePooling2D and the Dense head. Keras 3 stores a layer's
//! variables under its class name numbered in the model's layer order
//! (`layers/conv2d_3/vars/0`), the order Keras rebuilds on load: decreasing
//! distance to the output, ties in creation order.

use std::io::Write;

use candle_core::{DType, Result, Tensor};
use hdf5_pure::FileBuilder;
use serde_json::{json, Value};

use super::net::{Net, Node, Padding};
use super::weights::keras3::to_snake_case;
use super::{Backbone, Head};
use crate::ops::Act;

/// The Keras version whose format this writes (and the tests load with).
const KERAS_VERSION: &str = "3.6.0";

/// One layer of the functional model.
struct Layer {
    class: &'static str,
    name: String,
    config: Value,
    inputs: Vec<usize>,
    /// Keras-layout variables in Keras's order.
    vars: Vec<Tensor>,
    /// The output's shape without the batch: (h, w, c), or (c,) after pooling.
    shape: Vec<usize>,
}

struct Model<'a> {
    net: &'a Net,
    layers: Vec<Layer>,
}

impl Model<'_> {
    fn add(&mut self, class: &'static str, mut config: Value, inputs: Vec<usize>, vars: Vec<Tensor>) -> usize {
        let name = format!("{}_{}", to_snake_case(class), self.layers.len());
        config["name"] = json!(name);
        config["dtype"] = json!("float32");
        let shape = inputs.first().map(|i| self.layers[*i].shape.clone()).unwrap_or_default();
        self.layers.push(Layer { class, name, config, inputs, vars, shape });
        self.layers.len() - 1
    }

    /// Sets the shape after a window op (the network's own geometry), with `c` channels.
    fn windowed(&mut self, layer: usize, k: usize, stride: usize, pad: Padding, c: usize) -> usize {
        let s = &self.layers[layer].shape;
        let g = pad.geom(s[0], s[1], k, stride);
        self.layers[layer].shape = vec![g.out_h, g.out_w, c];
        layer
    }

    fn keras_param(&self, i: usize) -> Result<Tensor> {
        let p = &self.net.params[i];
        p.layout.to_keras(p.var.as_tensor())
    }

    fn act(&mut self, x: usize, a: Act) -> usize {
        match a {
            Act::Relu => self.add("ReLU", json!({}), vec![x], vec![]),
            Act::Relu6 => self.add("ReLU", json!({"max_value": 6.0}), vec![x], vec![]),
        }
    }

    fn emit(&mut self, nodes: &[Node], mut x: usize) -> Result<usize> {
        let pad = |p: &Padding| match p {
            Padding::Same => "same",
            Padding::Valid => "valid",
        };
        for n in nodes {
            x = match n {
                Node::Conv { w, k, stride, pad: p } => {
                    let kernel = self.keras_param(*w)?;
                    let filters = kernel.dim(3)?;
                    let cfg = json!({"filters": filters, "kernel_size": [k, k], "strides": [stride, stride],
                        "padding": pad(p), "use_bias": false});
                    let l = self.add("Conv2D", cfg, vec![x], vec![kernel]);
                    self.windowed(l, *k, *stride, *p, filters)
                }
                Node::Depthwise { w, k, stride, pad: p } => {
                    let kernel = self.keras_param(*w)?;
                    let c = kernel.dim(2)?;
                    let cfg = json!({"kernel_size": [k, k], "strides": [stride, stride], "padding": pad(p),
                        "depth_multiplier": 1, "use_bias": false});
                    let l = self.add("DepthwiseConv2D", cfg, vec![x], vec![kernel]);
                    self.windowed(l, *k, *stride, *p, c)
                }
                Node::Bn { gamma, beta, mean, var, eps, act } => {
                    let vars = [gamma, beta, mean, var].iter().map(|i| self.keras_param(**i)).collect::<Result<Vec<_>>>()?;
                    let y = self.add("BatchNormalization", json!({"axis": -1, "epsilon": eps}), vec![x], vars);
                    match act {
                        Some(a) => self.act(y, *a),
                        None => y,
                    }
                }
                Node::Act(a) => self.act(x, *a),
                Node::MaxPool { k, stride, pad: p } => {
                    let cfg = json!({"pool_size": [k, k], "strides": [stride, stride], "padding": pad(p)});
                    let c = self.layers[x].shape[2];
                    let l = self.add("MaxPooling2D", cfg, vec![x], vec![]);
                    self.windowed(l, *k, *stride, *p, c)
                }
                Node::Residual { main, shortcut } => {
                    let m = self.emit(main, x)?;
                    let s = self.emit(shortcut, x)?;
                    self.add("Add", json!({}), vec![m, s], vec![])
                }
                Node::Rescale { mul, add } => self.add("Rescaling", json!({"scale": mul, "offset": add}), vec![x], vec![]),
            };
        }
        Ok(x)
    }
}

fn tensor_ref(layers: &[Layer], i: usize) -> Value {
    let mut shape = vec![Value::Null];
    shape.extend(layers[i].shape.iter().map(|d| json!(d)));
    json!({"class_name": "__keras_tensor__",
        "config": {"shape": shape, "dtype": "float32", "keras_history": [layers[i].name, 0, 0]}})
}

fn config_json(layers: &[Layer]) -> Value {
    let entries: Vec<Value> = layers
        .iter()
        .map(|l| {
            let inbound = match l.inputs.as_slice() {
                [] => json!([]),
                [one] => json!([{"args": [tensor_ref(layers, *one)], "kwargs": {}}]),
                many => json!([{"args": [many.iter().map(|i| tensor_ref(layers, *i)).collect::<Vec<_>>()], "kwargs": {}}]),
            };
            json!({"module": "keras.layers", "class_name": l.class, "config": l.config, "registered_name": null,
                "name": l.name, "inbound_nodes": inbound})
        })
        .collect();
    let first = &layers[0].name;
    let last = &layers[layers.len() - 1].name;
    json!({
        "module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
        "config": {"name": "tuneserve", "trainable": true, "layers": entries,
            "input_layers": [[first, 0, 0]], "output_layers": [[last, 0, 0]]},
        "build_config": {"input_shape": null},
    })
}

/// Each layer's group under `layers/`, where Keras looks for its variables:
/// `<class>[_n]`, numbered per class in the order Keras lists the rebuilt
/// model's layers.
fn weight_groups(layers: &[Layer]) -> Vec<String> {
    // Longest distance to the output, per layer (layers only feed later ones).
    let mut depth = vec![0usize; layers.len()];
    for i in (0..layers.len()).rev() {
        for &j in &layers[i].inputs {
            depth[j] = depth[j].max(depth[i] + 1);
        }
    }
    // Ties go in Keras's traversal order: depth-first from the output,
    // inputs in order, numbered when first reached.
    let mut visited = vec![usize::MAX; layers.len()];
    let mut stack = vec![layers.len() - 1];
    let mut next = 0;
    while let Some(i) = stack.pop() {
        if visited[i] != usize::MAX {
            continue;
        }
        visited[i] = next;
        next += 1;
        stack.extend(layers[i].inputs.iter().rev());
    }
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(depth[i]), visited[i]));
    let mut counts = std::collections::HashMap::new();
    let mut groups = vec![String::new(); layers.len()];
    for i in order {
        let base = to_snake_case(layers[i].class);
        let n = counts.entry(base.clone()).or_insert(0usize);
        groups[i] = if *n == 0 { base } else { format!("{base}_{n}") };
        *n += 1;
    }
    groups
}

fn weights_h5(layers: &[Layer]) -> Result<Vec<u8>> {
    let mut file = FileBuilder::new();
    let mut top = file.create_group("layers");
    for (layer, name) in layers.iter().zip(weight_groups(layers)) {
        if layer.vars.is_empty() {
            continue;
        }
        let mut group = top.create_group(&name);
        let mut vars = group.create_group("vars");
        for (i, t) in layer.vars.iter().enumerate() {
            let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let shape: Vec<u64> = t.dims().iter().map(|d| *d as u64).collect();
            vars.create_dataset(&i.to_string()).with_f32_data(&data).with_shape(&shape);
        }
        group.add_group(vars.finish());
        top.add_group(group.finish());
    }
    file.add_group(top.finish());
    file.finish().map_err(|e| candle_core::Error::Msg(format!("writing model.weights.h5: {e}")))
}

/// The classifier as a Keras 3 `.keras` archive.
pub fn export(backbone: &Backbone, head: &Head, size: usize) -> Result<Vec<u8>> {
    let (config, weights) = build(backbone, head, size)?;
    let metadata = json!({"keras_version": KERAS_VERSION, "date_saved": "", "producer": "tuneserve"});
    let zip_err = |e: zip::result::ZipError| candle_core::Error::Msg(format!("writing the .keras archive: {e}"));
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in [
        ("metadata.json", serde_json::to_vec(&metadata).unwrap_or_default()),
        ("config.json", serde_json::to_vec(&config).unwrap_or_default()),
        ("model.weights.h5", weights),
    ] {
        zip.start_file(name, opts).map_err(zip_err)?;
        zip.write_all(&bytes)?;
    }
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

/// Only the weights, as `model.weights.h5`: what `model.load_weights` reads
/// into the model the `.keras` export describes (one of the same backbone,
/// variant, size and classes).
pub fn weights(backbone: &Backbone, head: &Head, size: usize) -> Result<Vec<u8>> {
    Ok(build(backbone, head, size)?.1)
}

/// The functional model's config and its weights file.
fn build(backbone: &Backbone, head: &Head, size: usize) -> Result<(Value, Vec<u8>)> {
    let mut m = Model { net: &backbone.net, layers: Vec::new() };
    let input = m.add("InputLayer", json!({"batch_shape": [null, size, size, 3], "sparse": false}), vec![], vec![]);
    m.layers[input].name = "image".into();
    m.layers[input].config["name"] = json!("image");
    m.layers[input].shape = vec![size, size, 3];
    let map = m.emit(&backbone.net.nodes, input)?;
    let pooled = m.add("GlobalAveragePooling2D", json!({"data_format": "channels_last", "keepdims": false}), vec![map], vec![]);
    m.layers[pooled].shape = vec![m.layers[map].shape[2]];
    let units = head.kernel.as_tensor().dim(1)?;
    let dense = m.add(
        "Dense",
        json!({"units": units, "activation": "linear", "use_bias": true}),
        vec![pooled],
        vec![head.kernel.as_tensor().clone(), head.bias.as_tensor().clone()],
    );
    m.layers[dense].name = "logits".into();
    m.layers[dense].config["name"] = json!("logits");
    m.layers[dense].shape = vec![units];

    Ok((config_json(&m.layers), weights_h5(&m.layers)?))
}
