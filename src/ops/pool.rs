//! Max pooling with TensorFlow 'same' padding and any stride, forward and
//! backward (Candle's max_pool2d has no padding and its backward needs
//! kernel == stride; Xception pools 3x3 with stride 2).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use num_traits::Float;

use super::depthwise::{channel_affine, host_affine, ChannelAffine, PlaneAffine};
use super::storage::{build_rows, dispatch, output, par_rows, slice, CpuElem};
use super::Geom;

/// Max over each KxK window of every (C,B) plane; padding never wins.
pub fn max_pool(x: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool { g, pre: None })
}

/// `max_pool(affine_act(x))` in one pass, without gradient (inference on
/// CPU: the BatchNorm before Xception's pools): the same arithmetic per
/// element, so the same result, without writing and re-reading the
/// BatchNorm's output.
pub fn max_pool_fused(x: &Tensor, g: Geom, pre: ChannelAffine) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&MaxPool { g, pre: Some(pre) })
}

/// dL/dx: each output's gradient goes to the first maximum of its window.
pub fn max_pool_grad(x: &Tensor, dy: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &MaxPoolGrad { g })
}

fn planes(l: &Layout, g: &Geom) -> Result<usize> {
    match l.dims() {
        [c, b, h, w] if *h == g.in_h && *w == g.in_w => Ok(c * b),
        d => candle_core::bail!("max_pool: expected (C,B,{},{}), got {d:?}", g.in_h, g.in_w),
    }
}

/// For each output coordinate along one axis, the input range its window covers.
fn ranges(out: usize, len: usize, k: usize, stride: usize, pad: usize) -> Vec<(usize, usize)> {
    (0..out)
        .map(|o| {
            let start = (o * stride) as isize - pad as isize;
            let lo = start.max(0) as usize;
            let hi = ((start + k as isize).max(0) as usize).min(len);
            (lo, hi)
        })
        .collect()
}

/// Index (within the plane) of the first maximum of a window, scanning rows
/// then columns (the tie rule of the gradient).
#[inline]
fn argmax<T: CpuElem>(x: &[T], w: usize, (r0, r1): (usize, usize), (c0, c1): (usize, usize)) -> usize {
    let mut best = r0 * w + c0;
    let mut best_v = x[best];
    for r in r0..r1 {
        for (c, v) in x[r * w + c0..r * w + c1].iter().enumerate() {
            if *v > best_v {
                best_v = *v;
                best = r * w + c0 + c;
            }
        }
    }
    best
}

/// `y[j]` = max of `row[j*S .. j*S+K]`, folded from -inf in tap order, with
/// constant K and S so the loop unrolls (Xception's pools are 3x3/2).
#[inline]
fn window_max<T: CpuElem, const K: usize, const S: usize>(row: &[T], y: &mut [T]) {
    for (j, yv) in y.iter_mut().enumerate() {
        let w = &row[j * S..j * S + K];
        *yv = w.iter().fold(T::neg_infinity(), |m, v| m.max(*v));
    }
}

/// `m = max(m, pre(v))` along a row.
#[inline(always)]
fn row_max<T: CpuElem>(m: &mut [T], src: &[T], pre: PlaneAffine<T>) {
    let pairs = m.iter_mut().zip(src);
    match pre {
        None => pairs.for_each(|(m, v)| *m = m.max(*v)),
        Some((s, t, None)) => pairs.for_each(|(m, v)| *m = m.max(*v * s + t)),
        Some((s, t, Some(a))) => pairs.for_each(|(m, v)| *m = m.max(a.apply(*v * s + t))),
    }
}

struct MaxPool {
    g: Geom,
    pre: Option<ChannelAffine>,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool-same"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let n = planes(l, g)?;
        let dims = l.dims().to_vec();
        dispatch!(s, |T| {
            let x = slice::<T>(s, l)?;
            let pre = host_affine::<T>(self.pre.as_ref(), dims[0])?;
            // Max is separable: rows first (vectorises along the row), then
            // columns, over a row buffer padded with -inf on both sides so every
            // window lies inside it (-inf never wins a max, so the padding
            // changes no result and the column loop carries no bounds logic).
            let padded = g.pad_left + (g.out_w - 1) * g.stride + g.k;
            let (y, _) = build_rows(
                n * g.out_plane(),
                g.out_plane(),
                || vec![T::neg_infinity(); padded.max(g.pad_left + g.in_w)],
                |row, p, yp: &mut [T]| {
                    let xp = &x[p * g.in_plane()..(p + 1) * g.in_plane()];
                    let pre = channel_affine(&pre, p / dims[1]);
                    for (oi, yrow) in yp.chunks_exact_mut(g.out_w).enumerate() {
                        let inner = &mut row[g.pad_left..g.pad_left + g.in_w];
                        inner.fill(T::neg_infinity());
                        for a in 0..g.k {
                            let Some(r) = Geom::src(oi, a, g.stride, g.pad_top, g.in_h) else { continue };
                            row_max(inner, &xp[r * g.in_w..(r + 1) * g.in_w], pre);
                        }
                        if (g.k, g.stride) == (3, 2) {
                            window_max::<T, 3, 2>(row, yrow);
                        } else {
                            for (j, yv) in yrow.iter_mut().enumerate() {
                                *yv = row[j * g.stride..j * g.stride + g.k].iter().fold(T::neg_infinity(), |m, v| m.max(*v));
                            }
                        }
                    }
                },
            );
            output(y, (dims[0], dims[1], g.out_h, g.out_w))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.g;
        let n = planes(l, g)?;
        let d = l.dims();
        // The network fuses on the host only (it reads the affine there).
        if self.pre.is_some() {
            candle_core::bail!("max_pool: an input affine is fused on the CPU only");
        }
        super::cuda::max_pool(s, l, g, n, Shape::from((d[0], d[1], g.out_h, g.out_w)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(max_pool_grad(x, dy, self.g)?))
    }
}

struct MaxPoolGrad {
    g: Geom,
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-same-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let n = planes(l1, g)?;
        if l2.shape().elem_count() != n * g.out_plane() {
            candle_core::bail!("max_pool_grad: grad {:?} does not match input {:?}", l2.dims(), l1.dims());
        }
        let shape = l1.shape().clone();
        dispatch!(s1, |T| {
            let x = slice::<T>(s1, l1)?;
            let dy = slice::<T>(s2, l2)?;
            let rows = ranges(g.out_h, g.in_h, g.k, g.stride, g.pad_top);
            let cols = ranges(g.out_w, g.in_w, g.k, g.stride, g.pad_left);
            let dx = par_rows(n * g.in_plane(), g.in_plane(), |p, dxp: &mut [T]| {
                let xp = &x[p * g.in_plane()..(p + 1) * g.in_plane()];
                let dyp = &dy[p * g.out_plane()..(p + 1) * g.out_plane()];
                for (oi, r) in rows.iter().enumerate() {
                    for (oj, c) in cols.iter().enumerate() {
                        dxp[argmax(xp, g.in_w, *r, *c)] += dyp[oi * g.out_w + oj];
                    }
                }
            });
            output(dx, shape)
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.g;
        let n = planes(l1, g)?;
        if l2.shape().elem_count() != n * g.out_plane() {
            candle_core::bail!("max_pool_grad: grad {:?} does not match input {:?}", l2.dims(), l1.dims());
        }
        super::cuda::max_pool_grad(s1, l1, s2, l2, g, n)
    }
}
