//! Custom Candle ops that CNN training needs and Candle lacks (or runs slowly).
//!
//! Activations use the (C, B, H, W) layout throughout: every 1x1 convolution is
//! then one (O, C) x (C, B*H*W) matmul, and per-channel work (BatchNorm,
//! depthwise convolution) runs over contiguous planes.
//!
//! Each op has a forward and a backward; the backward pieces are ops of their
//! own so that a hand-written network backward can call them directly, while
//! the `CustomOp` wrappers let Candle's autograd use them too (that is how the
//! gradient checks run).

pub mod act;
mod blas;
#[cfg(feature = "cuda")]
pub mod adam;
pub mod affine;
pub mod conv;
#[cfg(feature = "cuda")]
mod cuda;
pub mod depthwise;
pub mod expand;
pub mod im2col;
mod matmul;
pub mod packed;
pub mod pool;
mod simd;
mod storage;

pub use act::{act, act_grad, Act};
#[cfg(feature = "cuda")]
pub use adam::adam_step;
pub use affine::{affine_act, affine_act_backward, affine_act_input_grad, affine_act_param_grad, residual_affine_add};
pub use conv::conv_direct;
pub use depthwise::{depthwise, depthwise_fused, depthwise_input_grad, depthwise_kernel_grad, ChannelAffine};
pub use expand::expand_depthwise;
pub use im2col::{col2im, im2col};
pub use blas::choose_kernels as choose_blas_kernels;
pub use matmul::{cpu_backend as matmul_cpu_backend, matmul};
pub use pool::{max_pool, max_pool_fused, max_pool_grad};

/// Geometry of a 2-D window op (convolution or pooling) over H x W planes.
///
/// Padding follows TensorFlow: 'same' puts the odd pixel of padding at the
/// bottom/right, which matters for Keras parity with stride 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geom {
    pub in_h: usize,
    pub in_w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Geom {
    /// TensorFlow 'SAME' padding: output = ceil(in / stride).
    pub fn same(in_h: usize, in_w: usize, k: usize, stride: usize) -> Self {
        let out_h = in_h.div_ceil(stride);
        let out_w = in_w.div_ceil(stride);
        let pad_h = ((out_h - 1) * stride + k).saturating_sub(in_h);
        let pad_w = ((out_w - 1) * stride + k).saturating_sub(in_w);
        Geom { in_h, in_w, k, stride, pad_top: pad_h / 2, pad_left: pad_w / 2, out_h, out_w }
    }

    /// TensorFlow 'VALID' padding: no padding, output = floor((in - k) / stride) + 1.
    pub fn valid(in_h: usize, in_w: usize, k: usize, stride: usize) -> Self {
        let out_h = (in_h - k) / stride + 1;
        let out_w = (in_w - k) / stride + 1;
        Geom { in_h, in_w, k, stride, pad_top: 0, pad_left: 0, out_h, out_w }
    }

    pub fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    pub fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// For output coordinate `o` and tap `t`, the input coordinate if inside.
    #[inline]
    fn src(o: usize, t: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
        let i = (o * stride + t) as isize - pad as isize;
        (i >= 0 && (i as usize) < len).then_some(i as usize)
    }

    /// For each tap column t: (lo, hi, x0) such that output columns lo..hi read
    /// input columns x0, x0+stride, ... (all inside). Computed once per op so
    /// the per-row loops carry no bounds logic.
    pub(crate) fn col_taps(&self) -> Vec<(usize, usize, usize)> {
        (0..self.k)
            .map(|t| {
                let (lo, hi) = self.valid_cols(t);
                let x0 = if lo < hi { lo * self.stride + t - self.pad_left } else { 0 };
                (lo, hi, x0)
            })
            .collect()
    }

    /// Range of output columns `j` whose input column `j*stride + t - pad_left` is inside.
    #[inline]
    fn valid_cols(&self, t: usize) -> (usize, usize) {
        let mut lo = 0;
        while lo < self.out_w && Self::src(lo, t, self.stride, self.pad_left, self.in_w).is_none() {
            lo += 1;
        }
        let mut hi = self.out_w;
        while hi > lo && Self::src(hi - 1, t, self.stride, self.pad_left, self.in_w).is_none() {
            hi -= 1;
        }
        (lo, hi)
    }
}

/// Float element types the CPU kernels run on: f32 for the model, f64 for
/// finite-difference gradient checks.
pub trait Elem:
    num_traits::Float + std::ops::AddAssign + std::iter::Sum + Send + Sync + Default + 'static
{
}
impl Elem for f32 {}
impl Elem for f64 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 72 -> 36 with 3x3 s2: TF pads 0 top, 1 bottom.
        let g = Geom::same(72, 72, 3, 2);
        assert_eq!((g.out_h, g.pad_top), (36, 0));
        // 9 -> 5 with 3x3 s2: TF pads 1 and 1.
        let g = Geom::same(9, 9, 3, 2);
        assert_eq!((g.out_h, g.pad_top), (5, 1));
        // 1x1 stride 2 'same' never pads.
        let g = Geom::same(9, 9, 1, 2);
        assert_eq!((g.out_h, g.pad_top), (5, 0));
        let g = Geom::valid(150, 150, 3, 2);
        assert_eq!(g.out_h, 74);
    }
}
