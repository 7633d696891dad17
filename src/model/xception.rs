//! Xception exactly as `keras.applications.Xception(include_top=False)`:
//! entry flow (two valid 3x3 convs, three separable blocks with strided 1x1
//! residual convs and 3x3/2 'same' max-pools), 8 middle blocks, exit flow.
//! ReLUs sit where Keras puts them (block 2 starts without one).

use candle_core::Result;

use super::net::{Net, NetBuilder, Node, Padding, ParamLayout};
use super::WeightSource;
use crate::ops::Act;

/// Channel widths; `keras()` is the real network, `tiny()` a fast stand-in
/// with the same topology for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XceptionConfig {
    pub entry: [usize; 2],
    pub blocks: [usize; 3],
    pub middle_blocks: usize,
    pub middle: usize,
    pub exit: [usize; 2],
    pub top: [usize; 2],
}

impl XceptionConfig {
    pub fn keras() -> Self {
        Self { entry: [32, 64], blocks: [128, 256, 728], middle_blocks: 8, middle: 728, exit: [728, 1024], top: [1536, 2048] }
    }

    pub fn tiny() -> Self {
        Self { entry: [8, 16], blocks: [16, 24, 32], middle_blocks: 2, middle: 32, exit: [32, 48], top: [48, 64] }
    }
}

pub const BN_EPS: f64 = 1e-3;

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

    fn conv(&mut self, name: &str, c: usize, o: usize, k: usize, stride: usize, pad: Padding) -> Result<Node> {
        let w = self.param(format!("{name}.kernel"), ParamLayout::Conv { k, c, o }, self.trainable)?;
        Ok(Node::Conv { w, k, stride, pad })
    }

    fn bn(&mut self, name: &str, c: usize, act: Option<Act>) -> Result<Node> {
        let v = ParamLayout::Vector { c };
        let t = self.trainable;
        Ok(Node::Bn {
            gamma: self.param(format!("{name}.gamma"), v, t)?,
            beta: self.param(format!("{name}.beta"), v, t)?,
            mean: self.param(format!("{name}.moving_mean"), v, false)?,
            var: self.param(format!("{name}.moving_variance"), v, false)?,
            eps: BN_EPS,
            act,
        })
    }

    /// SeparableConv2D (depthwise 3x3 'same' + pointwise) followed by its BatchNorm.
    fn sepconv_bn(&mut self, name: &str, c: usize, o: usize, act: Option<Act>) -> Result<Vec<Node>> {
        let t = self.trainable;
        let dw = self.param(format!("{name}.depthwise_kernel"), ParamLayout::Depthwise { k: 3, c }, t)?;
        let pw = self.param(format!("{name}.pointwise_kernel"), ParamLayout::Conv { k: 1, c, o }, t)?;
        Ok(vec![
            Node::Depthwise { w: dw, k: 3, stride: 1, pad: Padding::Same },
            Node::Conv { w: pw, k: 1, stride: 1, pad: Padding::Same },
            self.bn(&format!("{name}_bn"), o, act)?,
        ])
    }

    /// Entry/exit block: [relu] sepconv bn relu sepconv bn maxpool, plus a
    /// strided 1x1 conv + bn shortcut.
    fn down_block(&mut self, blk: usize, c: usize, o1: usize, o2: usize, leading_relu: bool) -> Result<Node> {
        let mut main = Vec::new();
        if leading_relu {
            main.push(Node::Act(Act::Relu));
        }
        main.extend(self.sepconv_bn(&format!("block{blk}_sepconv1"), c, o1, Some(Act::Relu))?);
        main.extend(self.sepconv_bn(&format!("block{blk}_sepconv2"), o1, o2, None)?);
        main.push(Node::MaxPool { k: 3, stride: 2, pad: Padding::Same });
        let shortcut = vec![
            self.conv(&format!("block{blk}_residual_conv"), c, o2, 1, 2, Padding::Same)?,
            self.bn(&format!("block{blk}_residual_bn"), o2, None)?,
        ];
        Ok(Node::Residual { main, shortcut })
    }
}

/// Builds Xception, taking every tensor from `src` by its canonical name
/// (`block1_conv1.kernel`, `block2_residual_bn.gamma`, ...).
pub fn build(cfg: &XceptionConfig, src: &dyn WeightSource, trainable: bool) -> Result<Net> {
    let mut b = Builder { b: NetBuilder::default(), src, trainable };
    let [e1, e2] = cfg.entry;
    let mut nodes = vec![
        b.conv("block1_conv1", 3, e1, 3, 2, Padding::Valid)?,
        b.bn("block1_conv1_bn", e1, Some(Act::Relu))?,
        b.conv("block1_conv2", e1, e2, 3, 1, Padding::Valid)?,
        b.bn("block1_conv2_bn", e2, Some(Act::Relu))?,
    ];
    let [f2, f3, f4] = cfg.blocks;
    nodes.push(b.down_block(2, e2, f2, f2, false)?);
    nodes.push(b.down_block(3, f2, f3, f3, true)?);
    nodes.push(b.down_block(4, f3, f4, f4, true)?);
    let m = cfg.middle;
    let mut c = f4;
    for i in 0..cfg.middle_blocks {
        let blk = i + 5;
        // relu sepconv bn, three times; the inner ReLUs fuse into the BNs.
        let mut main = vec![Node::Act(Act::Relu)];
        for j in 1..=3 {
            let act = (j < 3).then_some(Act::Relu);
            main.extend(b.sepconv_bn(&format!("block{blk}_sepconv{j}"), c, m, act)?);
            c = m;
        }
        nodes.push(Node::Residual { main, shortcut: vec![] });
    }
    let exit_blk = cfg.middle_blocks + 5;
    let [x1, x2] = cfg.exit;
    nodes.push(b.down_block(exit_blk, c, x1, x2, true)?);
    let [t1, t2] = cfg.top;
    let top = exit_blk + 1;
    nodes.extend(b.sepconv_bn(&format!("block{top}_sepconv1"), x2, t1, Some(Act::Relu))?);
    nodes.extend(b.sepconv_bn(&format!("block{top}_sepconv2"), t1, t2, Some(Act::Relu))?);
    Ok(b.b.finish(nodes, t2))
}
