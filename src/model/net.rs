//! A small graph of CNN layers with a hand-written backward.
//!
//! Candle's generic autograd allocates a zero tensor and an add per node and
//! keeps every intermediate alive; for a fixed architecture we know exactly
//! what each layer needs for its gradient, so each layer saves just that on a
//! tape and the backward walks the tape in reverse. The per-op gradients are
//! the ones in `crate::ops`, each checked against finite differences.

use candle_core::{DType, Result, Tensor, Var};

use super::profile::timed;
use crate::ops::{self, Act, Geom};

/// How a window op pads, resolved against the input size at run time, so one
/// network serves any input resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Same,
    Valid,
}

impl Padding {
    pub(crate) fn geom(self, h: usize, w: usize, k: usize, stride: usize) -> Geom {
        match self {
            Padding::Same => Geom::same(h, w, k, stride),
            Padding::Valid => Geom::valid(h, w, k, stride),
        }
    }
}

/// How a parameter is stored in Keras (channels_last) versus here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamLayout {
    /// Conv2D kernel: Keras (K,K,C,O), here (O, C*K*K).
    Conv { k: usize, c: usize, o: usize },
    /// Depthwise kernel: Keras (K,K,C,1), here (C, K*K).
    Depthwise { k: usize, c: usize },
    /// Vector (BatchNorm gamma/beta/statistics, biases): same in both.
    Vector { c: usize },
}

impl ParamLayout {
    pub fn keras_shape(&self) -> Vec<usize> {
        match *self {
            ParamLayout::Conv { k, c, o } => vec![k, k, c, o],
            ParamLayout::Depthwise { k, c } => vec![k, k, c, 1],
            ParamLayout::Vector { c } => vec![c],
        }
    }

    /// Keras tensor -> internal layout.
    pub fn from_keras(&self, t: &Tensor) -> Result<Tensor> {
        match *self {
            ParamLayout::Conv { k, c, o } => t.reshape((k, k, c, o))?.permute((3, 2, 0, 1))?.reshape((o, c * k * k)),
            ParamLayout::Depthwise { k, c } => t.reshape((k, k, c))?.permute((2, 0, 1))?.reshape((c, k * k)),
            ParamLayout::Vector { c } => t.reshape(c),
        }
    }

    /// Internal layout -> Keras tensor.
    pub fn to_keras(&self, t: &Tensor) -> Result<Tensor> {
        match *self {
            ParamLayout::Conv { k, c, o } => t.reshape((o, c, k, k))?.permute((2, 3, 1, 0))?.contiguous(),
            ParamLayout::Depthwise { k, c } => t.reshape((c, k, k))?.permute((1, 2, 0))?.reshape((k, k, c, 1)),
            ParamLayout::Vector { c } => t.reshape(c),
        }
    }
}

/// A named tensor of the network. Trainable ones are `Var`s; BatchNorm
/// moving statistics are frozen and never get a gradient.
pub struct Param {
    pub name: String,
    pub layout: ParamLayout,
    pub var: Var,
    pub trainable: bool,
}

pub enum Node {
    /// Dense KxK convolution without bias; 1x1 stride-1 runs as a plain matmul.
    Conv { w: usize, k: usize, stride: usize, pad: Padding },
    Depthwise { w: usize, k: usize, stride: usize, pad: Padding },
    /// BatchNorm with frozen statistics (inference mode) and an optional activation.
    Bn { gamma: usize, beta: usize, mean: usize, var: usize, eps: f64, act: Option<Act> },
    Act(Act),
    MaxPool { k: usize, stride: usize, pad: Padding },
    /// y = main(x) + shortcut(x); an empty shortcut is the identity.
    Residual { main: Vec<Node>, shortcut: Vec<Node> },
    /// y = x * mul + add on the raw input (e.g. TF-Hub's 2x-1); never trained.
    Rescale { mul: f64, add: f64 },
}

/// What a node keeps from the forward pass for its backward.
pub enum Saved {
    Conv { x: Tensor, g: Geom },
    Depthwise { x: Tensor, g: Geom },
    Bn { x: Tensor, y: Tensor, scale: Tensor, inv_std: Tensor, mean: Tensor },
    Act { y: Tensor },
    MaxPool { x: Tensor, g: Geom },
    Residual { main: Vec<Saved>, shortcut: Vec<Saved> },
    Rescale,
}

/// Gradients indexed like `Net::params` (None for frozen or unused ones).
pub struct Grads(pub Vec<Option<Tensor>>);

pub struct Net {
    pub params: Vec<Param>,
    pub nodes: Vec<Node>,
    pub feature_dim: usize,
    /// Let Candle's autograd record the forward (only to cross-check the
    /// hand-written backward). Off, parameters enter ops detached, so no
    /// graph keeps every intermediate tensor alive.
    pub autograd: bool,
    /// Frozen convolution weights packed once for the CPU product kernel,
    /// by parameter index (empty until `pack_frozen_products`).
    packed: Vec<Option<ops::packed::PackedWeights>>,
}

/// Builds `Net`s: registers parameters in order and hands out their indices.
#[derive(Default)]
pub struct NetBuilder {
    params: Vec<Param>,
}

impl NetBuilder {
    pub fn param(&mut self, name: impl Into<String>, layout: ParamLayout, trainable: bool, init: Tensor) -> Result<usize> {
        self.params.push(Param { name: name.into(), layout, var: Var::from_tensor(&init)?, trainable });
        Ok(self.params.len() - 1)
    }

    pub fn finish(self, nodes: Vec<Node>, feature_dim: usize) -> Net {
        Net { params: self.params, nodes, feature_dim, autograd: false, packed: Vec::new() }
    }
}

fn dims4(x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    x.dims4()
}

impl Net {
    /// Packs the weights of every convolution that never trains, for
    /// inference: in f32 for products at few pixels (batch-1 serving), where
    /// BLAS would repack them on every call; in bf16 or int16 (if asked and
    /// the CPU has it) for every product of the weights `Precision::pays` names. CPU f32
    /// networks only, and only where the CPU has the vector units the packed
    /// kernels need.
    pub fn pack_frozen_products(&mut self, precision: ops::packed::Precision) -> Result<()> {
        let precision = precision.supported();
        if self.dtype() != DType::F32 || (precision == ops::packed::Precision::F32 && !ops::packed::worthwhile()) {
            return Ok(());
        }
        let mut packed: Vec<Option<ops::packed::PackedWeights>> = (0..self.params.len()).map(|_| None).collect();
        let mut pending = self.nodes.iter().collect::<Vec<_>>();
        while let Some(node) = pending.pop() {
            match node {
                Node::Conv { w, .. } => {
                    let p = &self.params[*w];
                    let (rows, depth) = p.var.as_tensor().dims2()?;
                    let precision = if precision.pays(rows, depth) { precision } else { ops::packed::Precision::F32 };
                    if !p.trainable && p.var.device().is_cpu() {
                        packed[*w] = Some(ops::packed::PackedWeights::from_tensor(p.var.as_tensor(), precision)?);
                    }
                }
                Node::Residual { main, shortcut } => pending.extend(main.iter().chain(shortcut)),
                _ => {}
            }
        }
        self.packed = packed;
        Ok(())
    }

    /// A convolution's product of the (C*K*K, N) input columns: with the
    /// packed weights where they exist and N is small enough for them to win
    /// (never while autograd records: the packed product is outside its graph).
    fn conv_product(&self, wi: usize, x: &Tensor) -> Result<Tensor> {
        match self.packed.get(wi) {
            Some(Some(p)) if !self.autograd && p.wins_at(x.dim(1)?) => p.apply(x),
            _ => self.matmul(&self.p(wi), x),
        }
    }

    /// Products go to BLAS (outside Candle's graph) unless autograd records.
    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if self.autograd {
            a.matmul(b)
        } else {
            ops::matmul(a, b)
        }
    }

    fn p(&self, i: usize) -> Tensor {
        let t = self.params[i].var.as_tensor();
        if self.autograd {
            t.clone()
        } else {
            t.detach()
        }
    }

    /// (B,H,W,C) images -> (C,B,h,w) final feature map. `tape` records what
    /// the backward needs; pass None for inference.
    pub fn forward_map(&self, x_nhwc: &Tensor, tape: Option<&mut Vec<Saved>>) -> Result<Tensor> {
        let x = x_nhwc.permute((3, 0, 1, 2))?.contiguous()?;
        self.run(&self.nodes, x, tape)
    }

    /// `forward_map` of an input already in the network's (C,B,H,W) layout.
    pub fn forward_map_planar(&self, x_cbhw: Tensor, tape: Option<&mut Vec<Saved>>) -> Result<Tensor> {
        self.run(&self.nodes, x_cbhw, tape)
    }

    /// Pooled features (B, feature_dim) of an input already in the network's
    /// (C,B,H,W) layout, inference only.
    pub fn features_planar(&self, x_cbhw: Tensor) -> Result<Tensor> {
        Self::gap(&self.run(&self.nodes, x_cbhw, None)?)
    }

    /// Global average pooling of a (C,B,h,w) map -> (B,C).
    pub fn gap(map: &Tensor) -> Result<Tensor> {
        let (c, b, h, w) = dims4(map)?;
        map.reshape((c, b, h * w))?.mean(2)?.t()?.contiguous()
    }

    /// Backward of `gap`: (B,C) -> (C,B,h,w), spread evenly.
    pub fn gap_backward(dfeat: &Tensor, map_dims: (usize, usize, usize, usize)) -> Result<Tensor> {
        let (c, b, h, w) = map_dims;
        dfeat.t()?.unsqueeze(2)?.broadcast_as((c, b, h * w))?.affine(1.0 / (h * w) as f64, 0.0)?.reshape((c, b, h, w))
    }

    /// Pooled features (B, feature_dim), inference only.
    pub fn features(&self, x_nhwc: &Tensor) -> Result<Tensor> {
        Self::gap(&self.forward_map(x_nhwc, None)?)
    }

    pub(crate) fn bn_scale_shift(&self, gamma: usize, beta: usize, mean: usize, var: usize, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
        // Exactly tf.nn.batch_normalization: inv = rsqrt(var + eps) * gamma; y = x*inv + (beta - mean*inv).
        let inv_std = (self.p(var) + eps)?.sqrt()?.recip()?;
        let scale = (self.p(gamma) * &inv_std)?;
        let shift = (self.p(beta) - (self.p(mean) * &scale)?)?;
        Ok((scale, shift, inv_std))
    }

    /// Runs some nodes on a (C,B,H,W) tensor without recording (for layer taps).
    pub fn run_nodes(&self, nodes: &[Node], x: Tensor) -> Result<Tensor> {
        self.run(nodes, x, None)
    }

    fn run(&self, nodes: &[Node], mut x: Tensor, mut tape: Option<&mut Vec<Saved>>) -> Result<Tensor> {
        let mut i = 0;
        while i < nodes.len() {
            // Inference: a BatchNorm/ReLU feeding a depthwise conv or a max-pool is
            // applied to its input on the fly, a BatchNorm right after a depthwise
            // conv to its output as written.
            // (CPU tensors only: the fusion reads scale/shift on the host, which on a
            // GPU would stall the stream at every block; there the kernels run apart.)
            if tape.is_none() && x.device().is_cpu() {
                if let Node::Residual { main, shortcut } = &nodes[i] {
                    if let Some(y) = self.residual_fused(main, shortcut, &x)? {
                        x = y;
                        i += 1;
                        continue;
                    }
                }
                if let Some((y, used)) = self.expansion_fused(&nodes[i..], &x)? {
                    x = y;
                    i += used;
                    continue;
                }
                // A BatchNorm before a max-pool is applied as the pool reads.
                if let Some(Node::MaxPool { k, stride, pad }) = nodes.get(i + 1) {
                    if let Some(pre) = self.bn_affine(&nodes[i])? {
                        let (_, _, h, w) = dims4(&x)?;
                        let g = pad.geom(h, w, *k, *stride);
                        x = timed("fwd bn+maxpool", || ops::max_pool_fused(&x, g, pre))?;
                        i += 2;
                        continue;
                    }
                }
                // (Affines are read on the host only where a depthwise follows.)
                let pre = match nodes.get(i + 1) {
                    Some(Node::Depthwise { .. }) => self.pre_affine(&nodes[i], x.dim(0)?)?,
                    _ => None,
                };
                let at = i + usize::from(pre.is_some());
                if let Some(Node::Depthwise { w: wi, k, stride, pad }) = nodes.get(at) {
                    let post = match nodes.get(at + 1) {
                        Some(next) => self.bn_affine(next)?,
                        None => None,
                    };
                    if pre.is_some() || post.is_some() {
                        let (_, _, h, w) = dims4(&x)?;
                        let g = pad.geom(h, w, *k, *stride);
                        i = at + 1 + usize::from(post.is_some());
                        x = timed("fwd depthwise+bn", || ops::depthwise_fused(&x, &self.p(*wi), g, pre, post))?;
                        continue;
                    }
                }
            }
            let (y, saved) = self.step(&nodes[i], &x, tape.is_some())?;
            if let (Some(t), Some(s)) = (tape.as_deref_mut(), saved) {
                t.push(s);
            }
            x = y;
            i += 1;
        }
        Ok(x)
    }

    /// Inference: a 1x1 expansion, its BatchNorm, a depthwise convolution and
    /// the BatchNorm after it (MobileNetV2's block front) as one pass that
    /// keeps the expanded tensor in cache, with the number of nodes it took.
    /// None for other shapes, and where it does not gain.
    fn expansion_fused(&self, nodes: &[Node], x: &Tensor) -> Result<Option<(Tensor, usize)>> {
        /// Below this many pixels per plane the expanded tensor is small and
        /// the unfused path, which sums a channel's planes together, is faster
        /// (MobileNetV2 at 160 px: 578 img/s with 400, 526 with 100).
        const MIN_PLANE: usize = 20 * 20;
        /// With more input channels the product is compute-bound and BLAS is
        /// faster (Xception at 150 px, whose one such product has 64 inputs:
        /// 74 img/s fused, 81 not). MobileNetV2's have 16 to 32.
        const MAX_INPUTS: usize = 32;
        let [Node::Conv { w: we, k: 1, stride: 1, .. }, bn @ Node::Bn { .. }, Node::Depthwise { w: wd, k, stride, pad }, rest @ ..] = nodes else {
            return Ok(None);
        };
        let (c, _, h, w) = dims4(x)?;
        if h * w < MIN_PLANE || c > MAX_INPUTS || !ops::expand::worthwhile() {
            return Ok(None);
        }
        let Some(pre) = self.bn_affine(bn)? else { return Ok(None) };
        let post = match rest.first() {
            Some(next) => self.bn_affine(next)?,
            None => None,
        };
        let used = 3 + usize::from(post.is_some());
        let g = pad.geom(h, w, *k, *stride);
        let y = timed("fwd expand+depthwise+bn", || ops::expand_depthwise(x, &self.p(*we), Some(pre), &self.p(*wd), g, post))?;
        Ok(Some((y, used)))
    }

    /// The per-channel transform of a BatchNorm or activation node over `c`
    /// channels, for fusing (an activation is the identity affine: x * 1 + 0
    /// is exact, so fusing it changes no bit).
    fn pre_affine(&self, node: &Node, c: usize) -> Result<Option<ops::ChannelAffine>> {
        Ok(match node {
            Node::Act(a) if self.dtype() == DType::F32 => {
                Some(ops::ChannelAffine { scale: vec![1.0; c], shift: vec![0.0; c], act: Some(*a) })
            }
            _ => self.bn_affine(node)?,
        })
    }

    /// A BatchNorm node's transform read on the host (f32 only).
    fn bn_affine(&self, node: &Node) -> Result<Option<ops::ChannelAffine>> {
        Ok(match node {
            Node::Bn { gamma, beta, mean, var, eps, act } if self.dtype() == DType::F32 => {
                let (scale, shift, _) = self.bn_scale_shift(*gamma, *beta, *mean, *var, *eps)?;
                Some(ops::ChannelAffine { scale: scale.to_vec1()?, shift: shift.to_vec1()?, act: *act })
            }
            _ => None,
        })
    }

    /// A branch's nodes, with the transform of a closing BatchNorm without
    /// activation split off where it has one (f32 only).
    fn split_plain_bn<'a>(&self, nodes: &'a [Node]) -> Result<(Option<ops::ChannelAffine>, &'a [Node])> {
        if let Some((bn @ Node::Bn { act: None, .. }, body)) = nodes.split_last() {
            if let Some(a) = self.bn_affine(bn)? {
                return Ok((Some(a), body));
            }
        }
        Ok((None, nodes))
    }

    /// Inference (f32): a residual block's closing BatchNorms and its add run
    /// as one pass on the compute pool (Candle's own add would hand the work
    /// to a second pool that then spins, competing with ours for the cores).
    fn residual_fused(&self, main: &[Node], shortcut: &[Node], x: &Tensor) -> Result<Option<Tensor>> {
        if self.dtype() != DType::F32 {
            return Ok(None);
        }
        let (main_affine, main_body) = self.split_plain_bn(main)?;
        let (shortcut_affine, shortcut_body) = self.split_plain_bn(shortcut)?;
        let ym = self.run(main_body, x.clone(), None)?;
        let r = self.run(shortcut_body, x.clone(), None)?;
        timed("fwd bn+add", || ops::residual_affine_add(&ym, main_affine, &r, shortcut_affine)).map(Some)
    }

    fn step(&self, node: &Node, x: &Tensor, record: bool) -> Result<(Tensor, Option<Saved>)> {
        let (c, b, h, w) = dims4(x)?;
        Ok(match node {
            Node::Conv { w: wi, k, stride, pad } => {
                let g = pad.geom(h, w, *k, *stride);
                let wt = self.p(*wi);
                let o = wt.dim(0)?;
                let y = if *k == 1 && *stride == 1 {
                    timed("fwd pointwise matmul", || self.conv_product(*wi, &x.reshape((c, b * h * w))?))?
                } else if c * k * k <= ops::conv::MAX_DEPTH && !self.autograd && x.device().is_cpu() && x.dtype() == DType::F32 {
                    timed("fwd conv direct", || ops::conv_direct(x, &wt, g))?
                } else {
                    let cols = timed("fwd im2col", || ops::im2col(x, g))?;
                    timed("fwd conv matmul", || self.conv_product(*wi, &cols))?
                };
                let y = y.reshape((o, b, g.out_h, g.out_w))?;
                (y, record.then(|| Saved::Conv { x: x.clone(), g }))
            }
            Node::Depthwise { w: wi, k, stride, pad } => {
                let g = pad.geom(h, w, *k, *stride);
                let y = timed("fwd depthwise", || ops::depthwise(x, &self.p(*wi), g))?;
                (y, record.then(|| Saved::Depthwise { x: x.clone(), g }))
            }
            Node::Bn { gamma, beta, mean, var, eps, act } => {
                let (scale, shift, inv_std) = self.bn_scale_shift(*gamma, *beta, *mean, *var, *eps)?;
                let y = timed("fwd bn", || ops::affine_act(x, &scale, &shift, *act))?;
                let saved = record.then(|| Saved::Bn {
                    x: x.clone(),
                    y: y.clone(),
                    scale,
                    inv_std,
                    mean: self.p(*mean),
                });
                (y, saved)
            }
            Node::Act(a) => {
                let y = timed("fwd act", || ops::act(x, *a))?;
                let saved = record.then(|| Saved::Act { y: y.clone() });
                (y, saved)
            }
            Node::MaxPool { k, stride, pad } => {
                let g = pad.geom(h, w, *k, *stride);
                let y = timed("fwd maxpool", || ops::max_pool(x, g))?;
                (y, record.then(|| Saved::MaxPool { x: x.clone(), g }))
            }
            Node::Residual { main, shortcut } => {
                let (mut tm, mut ts) = (Vec::new(), Vec::new());
                let ym = self.run(main, x.clone(), record.then_some(&mut tm))?;
                let ys = self.run(shortcut, x.clone(), record.then_some(&mut ts))?;
                (timed("fwd add", || ym + ys)?, record.then_some(Saved::Residual { main: tm, shortcut: ts }))
            }
            Node::Rescale { mul, add } => (x.affine(*mul, *add)?, record.then_some(Saved::Rescale)),
        })
    }

    /// Backward through the whole network given dL/d(feature map).
    /// The input image never needs a gradient, so the first layer skips it.
    pub fn backward_map(&self, tape: Vec<Saved>, dmap: Tensor) -> Result<Grads> {
        let mut grads = Grads(vec![None; self.params.len()]);
        self.back(&self.nodes, tape, dmap, false, &mut grads)?;
        Ok(grads)
    }

    fn back(&self, nodes: &[Node], tape: Vec<Saved>, mut dy: Tensor, need_dx: bool, grads: &mut Grads) -> Result<Option<Tensor>> {
        if nodes.len() != tape.len() {
            candle_core::bail!("tape has {} entries for {} layers", tape.len(), nodes.len());
        }
        for (i, (node, saved)) in nodes.iter().zip(tape).enumerate().rev() {
            let want_dx = i > 0 || need_dx;
            match self.step_back(node, saved, &dy, want_dx, grads)? {
                Some(dx) => dy = dx,
                None => return Ok(None),
            }
        }
        Ok(Some(dy))
    }

    fn set_grad(&self, grads: &mut Grads, i: usize, g: Tensor) {
        if self.params[i].trainable {
            grads.0[i] = Some(g);
        }
    }

    fn step_back(&self, node: &Node, saved: Saved, dy: &Tensor, want_dx: bool, grads: &mut Grads) -> Result<Option<Tensor>> {
        Ok(match (node, saved) {
            (Node::Conv { w: wi, k, stride, .. }, Saved::Conv { x, g }) => {
                let (c, b, h, w) = dims4(&x)?;
                let wt = self.p(*wi);
                let o = wt.dim(0)?;
                let dy2 = dy.reshape((o, b * g.out_plane()))?;
                let pointwise = *k == 1 && *stride == 1;
                let cols = if pointwise { x.reshape((c, b * h * w))? } else { timed("bwd im2col", || ops::im2col(&x, g))? };
                self.set_grad(grads, *wi, timed("bwd conv dW matmul", || self.matmul(&dy2, &cols.t()?))?);
                drop(cols);
                if !want_dx {
                    return Ok(None);
                }
                let dcols = timed("bwd conv dX matmul", || self.matmul(&wt.t()?, &dy2))?;
                Some(if pointwise { dcols.reshape((c, b, h, w))? } else { timed("bwd col2im", || ops::col2im(&dcols, g))? })
            }
            (Node::Depthwise { w: wi, .. }, Saved::Depthwise { x, g }) => {
                self.set_grad(grads, *wi, timed("bwd depthwise dK", || ops::depthwise_kernel_grad(&x, dy, g))?);
                want_dx.then(|| timed("bwd depthwise dX", || ops::depthwise_input_grad(dy, &self.p(*wi), g))).transpose()?
            }
            (Node::Bn { gamma, beta, act, .. }, Saved::Bn { x, y, scale, inv_std, mean }) => {
                let (dx, ds, dt) = timed("bwd bn", || ops::affine_act_backward(&x, &y, dy, &scale, *act))?;
                // scale = gamma*inv_std, shift = beta - mean*scale.
                let dgamma = ((ds - (&mean * &dt)?)? * &inv_std)?;
                self.set_grad(grads, *gamma, dgamma);
                self.set_grad(grads, *beta, dt);
                want_dx.then_some(dx)
            }
            (Node::Act(a), Saved::Act { y }) => want_dx.then(|| timed("bwd act", || ops::act_grad(&y, dy, *a))).transpose()?,
            (Node::MaxPool { .. }, Saved::MaxPool { x, g }) => want_dx.then(|| timed("bwd maxpool", || ops::max_pool_grad(&x, dy, g))).transpose()?,
            (Node::Residual { main, shortcut }, Saved::Residual { main: tm, shortcut: ts }) => {
                let dm = self.back(main, tm, dy.clone(), want_dx, grads)?;
                let ds = if shortcut.is_empty() { Some(dy.clone()) } else { self.back(shortcut, ts, dy.clone(), want_dx, grads)? };
                match (dm, ds) {
                    (Some(a), Some(b)) if want_dx => Some(timed("bwd add", || a + b)?),
                    _ => None,
                }
            }
            (Node::Rescale { mul, .. }, Saved::Rescale) => want_dx.then(|| dy.affine(*mul, 0.0)).transpose()?,
            _ => candle_core::bail!("tape does not match the network"),
        })
    }

    /// The trainable parameters with their current values.
    pub fn trainable(&self) -> impl Iterator<Item = (usize, &Param)> {
        self.params.iter().enumerate().filter(|(_, p)| p.trainable)
    }

    pub fn dtype(&self) -> DType {
        self.params.first().map(|p| p.var.dtype()).unwrap_or(DType::F32)
    }
}
