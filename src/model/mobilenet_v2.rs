//! MobileNetV2 (alpha 1.0) with TF-slim variable names, as in the TF-Hub
//! `mobilenet_v2/feature_vector` module: input in [0,1] (the network computes
//! 2x-1 itself), TF 'SAME' padding, BatchNorm eps 1e-3, ReLU6, linear
//! bottlenecks, residual adds where stride is 1 and widths match.

use candle_core::Result;

use super::net::{Net, NetBuilder, Node, Padding, ParamLayout};
use super::WeightSource;
use crate::ops::Act;

pub const BN_EPS: f64 = 1e-3;
const SCOPE: &str = "MobilenetV2";

/// (expansion, output channels, repeats, first stride) per stage.
const STAGES: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// Channel multiplier (1.0 = the real network) lets tests build a narrow copy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MobileNetV2Config {
    pub width: f64,
}

impl MobileNetV2Config {
    pub fn keras() -> Self {
        Self { width: 1.0 }
    }
    pub fn tiny() -> Self {
        Self { width: 0.25 }
    }
    /// Slim's `_make_divisible(v * width, 8)`.
    fn ch(&self, v: usize) -> usize {
        if self.width == 1.0 {
            return v;
        }
        let v = v as f64 * self.width;
        let mut n = ((v + 4.0) / 8.0).floor() as usize * 8;
        n = n.max(8);
        if (n as f64) < 0.9 * v {
            n += 8;
        }
        n
    }
}

struct Builder<'a> {
    b: NetBuilder,
    src: &'a dyn WeightSource,
    trainable: bool,
}

impl Builder<'_> {
    fn param(&mut self, name: String, layout: ParamLayout, trainable: bool) -> Result<usize> {
        let t = self.src.tensor(&name, &layout)?;
        self.b.param(name, layout, trainable, t)
    }

    fn bn(&mut self, scope: &str, c: usize, act: Option<Act>) -> Result<Node> {
        let v = ParamLayout::Vector { c };
        let t = self.trainable;
        Ok(Node::Bn {
            gamma: self.param(format!("{scope}/BatchNorm/gamma"), v, t)?,
            beta: self.param(format!("{scope}/BatchNorm/beta"), v, t)?,
            mean: self.param(format!("{scope}/BatchNorm/moving_mean"), v, false)?,
            var: self.param(format!("{scope}/BatchNorm/moving_variance"), v, false)?,
            eps: BN_EPS,
            act,
        })
    }

    fn conv_bn(&mut self, scope: &str, c: usize, o: usize, k: usize, stride: usize, act: Option<Act>) -> Result<Vec<Node>> {
        let w = self.param(format!("{scope}/weights"), ParamLayout::Conv { k, c, o }, self.trainable)?;
        Ok(vec![Node::Conv { w, k, stride, pad: Padding::Same }, self.bn(scope, o, act)?])
    }

    fn depthwise_bn(&mut self, scope: &str, c: usize, stride: usize) -> Result<Vec<Node>> {
        let w = self.param(format!("{scope}/depthwise_weights"), ParamLayout::Depthwise { k: 3, c }, self.trainable)?;
        Ok(vec![Node::Depthwise { w, k: 3, stride, pad: Padding::Same }, self.bn(scope, c, Some(Act::Relu6))?])
    }
}

pub fn build(cfg: &MobileNetV2Config, src: &dyn WeightSource, trainable: bool) -> Result<Net> {
    let mut b = Builder { b: NetBuilder::default(), src, trainable };
    let mut nodes = vec![Node::Rescale { mul: 2.0, add: -1.0 }];
    let mut c = cfg.ch(32);
    nodes.extend(b.conv_bn(&format!("{SCOPE}/Conv"), 3, c, 3, 2, Some(Act::Relu6))?);
    let mut idx = 0;
    for (t, out, n, s) in STAGES {
        let o = cfg.ch(out);
        for r in 0..n {
            let stride = if r == 0 { s } else { 1 };
            let scope = if idx == 0 { format!("{SCOPE}/expanded_conv") } else { format!("{SCOPE}/expanded_conv_{idx}") };
            let mut main = Vec::new();
            let mut mid = c;
            if t != 1 {
                mid = c * t;
                main.extend(b.conv_bn(&format!("{scope}/expand"), c, mid, 1, 1, Some(Act::Relu6))?);
            }
            main.extend(b.depthwise_bn(&format!("{scope}/depthwise"), mid, stride)?);
            main.extend(b.conv_bn(&format!("{scope}/project"), mid, o, 1, 1, None)?);
            if stride == 1 && c == o {
                nodes.push(Node::Residual { main, shortcut: vec![] });
            } else {
                nodes.extend(main);
            }
            c = o;
            idx += 1;
        }
    }
    let last = if cfg.width > 1.0 { cfg.ch(1280) } else { 1280 };
    nodes.extend(b.conv_bn(&format!("{SCOPE}/Conv_1"), c, last, 1, 1, Some(Act::Relu6))?);
    Ok(b.b.finish(nodes, last))
}
