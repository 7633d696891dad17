//! ONNX export of a backbone and its head for inference (opset 17).
//!
//! The graph takes `image`, float32 (batch, size, size, 3) NHWC, already
//! resized to the model's input size and scaled as the backbone expects
//! (Xception: `x / 127.5 - 1`, MobileNetV2: `x / 255`), and returns
//! `logits` (batch, k): one logit for two classes (positive = the second
//! class), else one per class. BatchNorm is written as the same per-channel
//! multiply-add the network runs, with the scale and shift computed here, so
//! ONNX runtimes reproduce tuneserve's numbers closely. The protobuf messages
//! are the subset of onnx.proto3 an inference graph needs.

use candle_core::{DType, Result, Tensor};
use prost::Message;

use super::net::{Net, Node, Padding};
use super::{Backbone, Head};
use crate::ops::Act;

const OPSET: i64 = 17;
/// The IR version that goes with opset 17.
const IR_VERSION: i64 = 8;
const FLOAT: i32 = 1;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(string, tag = "6")]
    doc_string: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

/// AttributeProto.AttributeType values used here.
const ATTR_FLOAT: i32 = 1;
const ATTR_INT: i32 = 2;
const ATTR_STRING: i32 = 3;
const ATTR_INTS: i32 = 7;

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(float, tag = "2")]
    f: f32,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(bytes = "vec", tag = "4")]
    s: Vec<u8>,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
    #[prost(int32, tag = "20")]
    r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    /// Little-endian float32 values.
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: v.to_vec(), r#type: ATTR_INTS, ..Default::default() }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: v, r#type: ATTR_INT, ..Default::default() }
}

fn attr_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto { name: name.into(), s: v.as_bytes().to_vec(), r#type: ATTR_STRING, ..Default::default() }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f: v, r#type: ATTR_FLOAT, ..Default::default() }
}

/// A graph input's or output's dimension: fixed, or named (any size).
enum Dim {
    Fixed(i64),
    Named(&'static str),
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => Dimension { dim_value: Some(*v), dim_param: None },
            Dim::Named(p) => Dimension { dim_value: None, dim_param: Some((*p).to_string()) },
        })
        .collect();
    let tensor_type = TensorTypeProto { elem_type: FLOAT, shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto { name: name.into(), r#type: Some(TypeProto { tensor_type: Some(tensor_type) }) }
}

/// What the graph is made of, in order.
struct Graph<'a> {
    net: &'a Net,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: usize,
    /// Clip's bounds for ReLU6, made once and shared by every ReLU6.
    relu6_bounds: Option<[String; 2]>,
}

impl Graph<'_> {
    fn fresh(&mut self, what: &str) -> String {
        self.names += 1;
        format!("{what}_{}", self.names)
    }

    fn constant(&mut self, name: String, t: &Tensor, dims: &[usize]) -> Result<String> {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if values.len() != dims.iter().product::<usize>() {
            candle_core::bail!("onnx export: {name} has {} values for dims {dims:?}", values.len());
        }
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims = dims.iter().map(|d| *d as i64).collect();
        self.initializers.push(TensorProto { dims, data_type: FLOAT, name: name.clone(), raw_data });
        Ok(name)
    }

    fn scalar(&mut self, what: &str, v: f32) -> Result<String> {
        let name = self.fresh(what);
        self.constant(name, &Tensor::new(v, &candle_core::Device::Cpu)?, &[])
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node_to(op, inputs, attribute, out)
    }

    fn node_to(&mut self, op: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>, out: String) -> String {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute,
        });
        out
    }

    fn param(&mut self, i: usize, dims: &[usize]) -> Result<String> {
        let p = &self.net.params[i];
        self.constant(p.name.clone(), p.var.as_tensor(), dims)
    }

    fn act(&mut self, x: String, a: Act) -> Result<String> {
        Ok(match a {
            Act::Relu => self.node("Relu", vec![x], vec![]),
            Act::Relu6 => {
                let [lo, hi] = match &self.relu6_bounds {
                    Some(b) => b.clone(),
                    None => {
                        let b = [self.scalar("zero", 0.0)?, self.scalar("six", 6.0)?];
                        self.relu6_bounds.get_or_insert(b).clone()
                    }
                };
                self.node("Clip", vec![x, lo, hi], vec![])
            }
        })
    }

    fn window(k: usize, stride: usize, pad: Padding) -> Vec<AttributeProto> {
        // TensorFlow's 'same' puts the odd padding pixel at the end: SAME_UPPER.
        let pad = match pad {
            Padding::Same => "SAME_UPPER",
            Padding::Valid => "VALID",
        };
        vec![attr_ints("kernel_shape", &[k as i64, k as i64]), attr_ints("strides", &[stride as i64, stride as i64]), attr_str("auto_pad", pad)]
    }

    /// Emits `nodes` on the NCHW value `x`; returns the output's name.
    fn emit(&mut self, nodes: &[Node], mut x: String) -> Result<String> {
        for n in nodes {
            x = match n {
                Node::Conv { w, k, stride, pad } => {
                    let (o, ckk) = self.net.params[*w].var.as_tensor().dims2()?;
                    let weight = self.param(*w, &[o, ckk / (k * k), *k, *k])?;
                    self.node("Conv", vec![x, weight], Self::window(*k, *stride, *pad))
                }
                Node::Depthwise { w, k, stride, pad } => {
                    let (c, _) = self.net.params[*w].var.as_tensor().dims2()?;
                    let weight = self.param(*w, &[c, 1, *k, *k])?;
                    let mut attrs = Self::window(*k, *stride, *pad);
                    attrs.push(attr_int("group", c as i64));
                    self.node("Conv", vec![x, weight], attrs)
                }
                Node::Bn { gamma, beta, mean, var, eps, act } => {
                    let (scale, shift, _) = self.net.bn_scale_shift(*gamma, *beta, *mean, *var, *eps)?;
                    let c = scale.dim(0)?;
                    let base = self.net.params[*gamma].name.trim_end_matches("gamma").to_string();
                    let scale = self.constant(format!("{base}scale"), &scale, &[c, 1, 1])?;
                    let shift = self.constant(format!("{base}shift"), &shift, &[c, 1, 1])?;
                    let y = self.node("Mul", vec![x, scale], vec![]);
                    let y = self.node("Add", vec![y, shift], vec![]);
                    match act {
                        Some(a) => self.act(y, *a)?,
                        None => y,
                    }
                }
                Node::Act(a) => self.act(x, *a)?,
                Node::MaxPool { k, stride, pad } => self.node("MaxPool", vec![x], Self::window(*k, *stride, *pad)),
                Node::Residual { main, shortcut } => {
                    let m = self.emit(main, x.clone())?;
                    let s = self.emit(shortcut, x)?;
                    self.node("Add", vec![m, s], vec![])
                }
                Node::Rescale { mul, add } => {
                    let (m, a) = (self.scalar("mul", *mul as f32)?, self.scalar("add", *add as f32)?);
                    let y = self.node("Mul", vec![x, m], vec![]);
                    self.node("Add", vec![y, a], vec![])
                }
            };
        }
        Ok(x)
    }
}

/// The model as an ONNX file: `image` (batch, size, size, 3) in, `logits` out;
/// `classes` and the input scaling go into the metadata.
pub fn export(backbone: &Backbone, head: &Head, classes: &[String], size: usize) -> Result<Vec<u8>> {
    let mut g = Graph { net: &backbone.net, nodes: Vec::new(), initializers: Vec::new(), names: 0, relu6_bounds: None };
    let nchw = g.node("Transpose", vec!["image".into()], vec![attr_ints("perm", &[0, 3, 1, 2])]);
    let map = g.emit(&backbone.net.nodes, nchw)?;
    let pooled = g.node("GlobalAveragePool", vec![map], vec![]);
    let flat = g.node("Flatten", vec![pooled], vec![attr_int("axis", 1)]);
    let (in_dim, k) = head.kernel.as_tensor().dims2()?;
    let kernel = g.constant("head.kernel".into(), head.kernel.as_tensor(), &[in_dim, k])?;
    let bias = g.constant("head.bias".into(), head.bias.as_tensor(), &[k])?;
    let gemm_attrs = vec![attr_float("alpha", 1.0), attr_float("beta", 1.0)];
    g.node_to("Gemm", vec![flat, kernel, bias], gemm_attrs, "logits".into());
    let s = size as i64;
    let scaling = match backbone.kind.scaling() {
        crate::data::image::Scaling::MinusOneToOne => "x / 127.5 - 1",
        crate::data::image::Scaling::ZeroToOne => "x / 255",
    };
    let meta = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "tuneserve".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{} classifier. Input `image`: float32 (batch, {size}, {size}, 3), RGB, resized to {size}x{size} \
             (bilinear), scaled {scaling}. Output `logits`: {}.",
            backbone.kind.as_str(),
            if k == 1 { "one logit per image, positive = the second class" } else { "one logit per class" }
        ),
        graph: Some(GraphProto {
            node: g.nodes,
            name: format!("tuneserve_{}", backbone.kind.as_str()),
            initializer: g.initializers,
            input: vec![value_info("image", &[Dim::Named("batch"), Dim::Fixed(s), Dim::Fixed(s), Dim::Fixed(3)])],
            output: vec![value_info("logits", &[Dim::Named("batch"), Dim::Fixed(k as i64)])],
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: vec![
            meta("classes", serde_json::to_string(classes).unwrap_or_default()),
            meta("image_size", size.to_string()),
            meta("scaling", scaling.into()),
            meta("backbone", backbone.kind.as_str().into()),
        ],
    };
    Ok(model.encode_to_vec())
}
