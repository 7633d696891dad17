//! Depthwise KxK convolution (one filter per channel), forward and backward.
//!
//! Candle runs grouped convolutions as one conv per group (~100x slower than
//! needed); these kernels work per (channel, image) plane with row-wise inner
//! loops that the compiler vectorises.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::storage::{build_rows, dispatch, output, slice, zeros, CpuElem};
use super::{Act, Geom};

/// y[c,b] = depthwise(x[c,b], k[c]) for x (C,B,H,W) and k (C, K*K).
pub fn depthwise(x: &Tensor, k: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&k.contiguous()?, Depthwise { g, pre: None })
}

/// A per-channel affine + activation read on the host, for inference-time
/// fusions: applied to the depthwise input on the fly, the BatchNorm (or ReLU)
/// that precedes a separable convolution costs no pass over memory of its own
/// (also the BatchNorms that end a residual block, `residual_affine_add`).
#[derive(Debug, Clone)]
pub struct PreAffine {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub act: Option<Act>,
}

/// depthwise(act(x * scale + shift), k), without gradient (inference).
pub fn depthwise_fused(x: &Tensor, k: &Tensor, g: Geom, pre: PreAffine) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&k.contiguous()?, &Depthwise { g, pre: Some(pre) })
}

/// dL/dx for the depthwise convolution, given dL/dy (C,B,Ho,Wo).
pub fn depthwise_input_grad(dy: &Tensor, k: &Tensor, g: Geom) -> Result<Tensor> {
    dy.contiguous()?.apply_op2_no_bwd(&k.contiguous()?, &DepthwiseInputGrad { g })
}

/// dL/dk (C, K*K) for the depthwise convolution, summed over the batch.
pub fn depthwise_kernel_grad(x: &Tensor, dy: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &DepthwiseKernelGrad { g })
}

fn planes(l: &Layout, h: usize, w: usize, what: &str) -> Result<(usize, usize)> {
    match l.dims() {
        [c, b, hh, ww] if *hh == h && *ww == w => Ok((*c, *b)),
        d => candle_core::bail!("{what}: expected (C,B,{h},{w}), got {d:?}"),
    }
}

fn check_kernel(l: &Layout, c: usize, g: &Geom) -> Result<()> {
    if l.dims() != [c, g.k * g.k] {
        candle_core::bail!("depthwise kernel: expected ({c},{}), got {:?}", g.k * g.k, l.dims());
    }
    Ok(())
}

type Taps = [(usize, usize, usize)];

fn forward_plane<T: CpuElem>(x: &[T], k: &[T], y: &mut [T], g: &Geom, taps: &Taps) {
    y.fill(T::zero());
    for oi in 0..g.out_h {
        let yrow = &mut y[oi * g.out_w..(oi + 1) * g.out_w];
        for a in 0..g.k {
            let Some(r) = Geom::src(oi, a, g.stride, g.pad_top, g.in_h) else { continue };
            let xrow = &x[r * g.in_w..(r + 1) * g.in_w];
            for b in 0..g.k {
                let w = k[a * g.k + b];
                let (lo, hi, x0) = taps[b];
                if lo >= hi {
                    continue;
                }
                if g.stride == 1 {
                    for (yv, xv) in yrow[lo..hi].iter_mut().zip(&xrow[x0..x0 + hi - lo]) {
                        *yv += w * *xv;
                    }
                } else {
                    for (n, yv) in yrow[lo..hi].iter_mut().enumerate() {
                        *yv += w * xrow[x0 + n * g.stride];
                    }
                }
            }
        }
    }
}

fn input_grad_plane<T: CpuElem>(dy: &[T], k: &[T], dx: &mut [T], g: &Geom, taps: &Taps) {
    dx.fill(T::zero());
    for oi in 0..g.out_h {
        let dyrow = &dy[oi * g.out_w..(oi + 1) * g.out_w];
        for a in 0..g.k {
            let Some(r) = Geom::src(oi, a, g.stride, g.pad_top, g.in_h) else { continue };
            let dxrow = &mut dx[r * g.in_w..(r + 1) * g.in_w];
            for b in 0..g.k {
                let w = k[a * g.k + b];
                let (lo, hi, x0) = taps[b];
                if lo >= hi {
                    continue;
                }
                if g.stride == 1 {
                    for (dxv, dyv) in dxrow[x0..x0 + hi - lo].iter_mut().zip(&dyrow[lo..hi]) {
                        *dxv += w * *dyv;
                    }
                } else {
                    for (n, dyv) in dyrow[lo..hi].iter().enumerate() {
                        dxrow[x0 + n * g.stride] += w * *dyv;
                    }
                }
            }
        }
    }
}

/// Accumulates the K*K tap gradients of one plane into `dk`.
fn kernel_grad_plane<T: CpuElem>(x: &[T], dy: &[T], dk: &mut [T], g: &Geom, taps: &Taps) {
    for oi in 0..g.out_h {
        let dyrow = &dy[oi * g.out_w..(oi + 1) * g.out_w];
        for a in 0..g.k {
            let Some(r) = Geom::src(oi, a, g.stride, g.pad_top, g.in_h) else { continue };
            let xrow = &x[r * g.in_w..(r + 1) * g.in_w];
            for b in 0..g.k {
                let (lo, hi, x0) = taps[b];
                if lo >= hi {
                    continue;
                }
                let s: T = if g.stride == 1 {
                    dyrow[lo..hi].iter().zip(&xrow[x0..x0 + hi - lo]).map(|(d, x)| *d * *x).sum()
                } else {
                    dyrow[lo..hi].iter().enumerate().map(|(n, d)| *d * xrow[x0 + n * g.stride]).sum()
                };
                dk[a * g.k + b] += s;
            }
        }
    }
}


/// Stride-1 window sum over a zero-padded plane:
/// dst[i,j] = sum_{a,b} w[a*k+b] * src_padded[i+a, j+b], where `src` (sh x sw)
/// sits at (pad_top, pad_left) in the padded plane. The plane is copied into
/// a padded scratch row-major with width wp = out_w + k - 1, so each tap is one
/// contiguous shifted slice and the inner loop vectorises over whole planes
/// (Xception's 9x9 middle-flow planes are too small for row-wise loops).
#[allow(clippy::too_many_arguments)]
fn window_sum_s1<T: CpuElem>(
    src: &[T],
    (sh, sw): (usize, usize),
    w: &[T],
    k: usize,
    (pad_top, pad_left): (usize, usize),
    (out_h, out_w): (usize, usize),
    dst: &mut [T],
    scratch: &mut Vec<T>,
    acc: &mut Vec<T>,
    pre: Option<(T, T, Option<Act>)>,
) {
    let wp = out_w + k - 1;
    pad_into(scratch, src, (sh, sw), (out_h + k - 1, wp), (pad_top, pad_left), k, pre);
    let n = out_h * wp;
    acc.clear();
    acc.resize(n, T::zero());
    if k == 3 {
        let sl = |a: usize, b: usize| &scratch[a * wp + b..a * wp + b + n];
        let (s0, s1, s2, s3, s4, s5, s6, s7, s8) = (sl(0, 0), sl(0, 1), sl(0, 2), sl(1, 0), sl(1, 1), sl(1, 2), sl(2, 0), sl(2, 1), sl(2, 2));
        let acc = &mut acc[..n];
        for q in 0..n {
            acc[q] = s0[q] * w[0] + s1[q] * w[1] + s2[q] * w[2] + s3[q] * w[3] + s4[q] * w[4] + s5[q] * w[5] + s6[q] * w[6] + s7[q] * w[7] + s8[q] * w[8];
        }
    } else {
        for a in 0..k {
            for b in 0..k {
                let wt = w[a * k + b];
                for (o, v) in acc.iter_mut().zip(&scratch[a * wp + b..a * wp + b + n]) {
                    *o += wt * *v;
                }
            }
        }
    }
    for i in 0..out_h {
        dst[i * out_w..(i + 1) * out_w].copy_from_slice(&acc[i * wp..i * wp + out_w]);
    }
}

/// Lays a (sh x sw) plane into a zeroed (hp x wp) buffer at (pad_top, pad_left),
/// with k spare elements at the end so every shifted tap slice stays in bounds;
/// `pre` applies a per-channel affine + activation on the way (fused BatchNorm).
fn pad_into<T: CpuElem>(
    buf: &mut Vec<T>,
    src: &[T],
    (sh, sw): (usize, usize),
    (hp, wp): (usize, usize),
    (pad_top, pad_left): (usize, usize),
    k: usize,
    pre: Option<(T, T, Option<Act>)>,
) {
    buf.clear();
    buf.resize(hp * wp + k, T::zero());
    for r in 0..sh {
        let pr = r + pad_top;
        if pr >= hp {
            break;
        }
        let n = sw.min(wp.saturating_sub(pad_left));
        let (d, s) = (&mut buf[pr * wp + pad_left..pr * wp + pad_left + n], &src[r * sw..r * sw + n]);
        match pre {
            None => d.copy_from_slice(s),
            Some((sc, sh, None)) => d.iter_mut().zip(s).for_each(|(d, s)| *d = *s * sc + sh),
            Some((sc, sh, Some(a))) => d.iter_mut().zip(s).for_each(|(d, s)| *d = a.apply(*s * sc + sh)),
        }
    }
}

/// Dot product with 16 independent partial sums, so it vectorises without
/// reassociation flags.
fn dot<T: CpuElem>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut s = lanes.iter().fold(T::zero(), |acc, v| acc + *v);
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

/// Stride-1 kernel gradient of one plane, accumulated into `dk`:
/// dk[a,b] += sum_{i,j} dy[i,j] * x_padded[i+a, j+b].
fn kernel_grad_plane_s1<T: CpuElem>(x: &[T], dy: &[T], dk: &mut [T], g: &Geom, xs: &mut Vec<T>, dys: &mut Vec<T>) {
    let k = g.k;
    let wp = g.out_w + k - 1;
    pad_into(xs, x, (g.in_h, g.in_w), (g.out_h + k - 1, wp), (g.pad_top, g.pad_left), k, None);
    let n = g.out_h * wp;
    dys.clear();
    dys.resize(n, T::zero());
    for i in 0..g.out_h {
        dys[i * wp..i * wp + g.out_w].copy_from_slice(&dy[i * g.out_w..(i + 1) * g.out_w]);
    }
    for a in 0..k {
        for b in 0..k {
            dk[a * k + b] += dot(&dys[..n], &xs[a * wp + b..a * wp + b + n]);
        }
    }
}

struct Depthwise {
    g: Geom,
    pre: Option<PreAffine>,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (c, b) = planes(l1, g.in_h, g.in_w, "depthwise input")?;
        check_kernel(l2, c, g)?;
        dispatch!(s1, |T| {
            let x = slice::<T>(s1, l1)?;
            let k = slice::<T>(s2, l2)?;
            let taps = g.col_taps();
            let kk = g.k * g.k;
            let pre: Option<(Vec<T>, Vec<T>, Option<Act>)> = match &self.pre {
                None => None,
                Some(p) if p.scale.len() == c && p.shift.len() == c => {
                    let cast = |v: &[f32]| v.iter().map(|x| <T as num_traits::NumCast>::from(*x).unwrap_or(<T as num_traits::Zero>::zero())).collect::<Vec<T>>();
                    Some((cast(&p.scale), cast(&p.shift), p.act))
                }
                Some(_) => candle_core::bail!("depthwise: fused affine does not have {c} channels"),
            };
            let (y, _) = build_rows(
                c * b * g.out_plane(),
                g.out_plane(),
                || (Vec::new(), Vec::new()),
                |(sc, acc), p, yp: &mut [T]| {
                    let xp = &x[p * g.in_plane()..(p + 1) * g.in_plane()];
                    let kc = &k[(p / b) * kk..(p / b + 1) * kk];
                    let pre = pre.as_ref().map(|(s, t, a)| (s[p / b], t[p / b], *a));
                    if g.stride == 1 {
                        let dims = ((g.in_h, g.in_w), (g.pad_top, g.pad_left), (g.out_h, g.out_w));
                        window_sum_s1(xp, dims.0, kc, g.k, dims.1, dims.2, yp, sc, acc, pre);
                    } else if let Some((s, t, a)) = pre {
                        let xt: Vec<T> = xp.iter().map(|v| a.map_or(*v * s + t, |a| a.apply(*v * s + t))).collect();
                        forward_plane(&xt, kc, yp, g, &taps);
                    } else {
                        forward_plane(xp, kc, yp, g, &taps);
                    }
                },
            );
            output(y, (c, b, g.out_h, g.out_w))
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
        let (c, b) = planes(l1, g.in_h, g.in_w, "depthwise input")?;
        check_kernel(l2, c, g)?;
        super::cuda::depthwise_fwd(s1, l1, s2, l2, g, c, b, self.pre.as_ref())
    }

    fn bwd(&self, x: &Tensor, k: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = depthwise_input_grad(dy, k, self.g)?;
        let dk = depthwise_kernel_grad(x, dy, self.g)?;
        Ok((Some(dx), Some(dk)))
    }
}

struct DepthwiseInputGrad {
    g: Geom,
}

impl CustomOp2 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "depthwise-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (c, b) = planes(l1, g.out_h, g.out_w, "depthwise output grad")?;
        check_kernel(l2, c, g)?;
        dispatch!(s1, |T| {
            let dy = slice::<T>(s1, l1)?;
            let k = slice::<T>(s2, l2)?;
            let taps = g.col_taps();
            let kk = g.k * g.k;
            let (dx, _) = build_rows(
                c * b * g.in_plane(),
                g.in_plane(),
                || (Vec::new(), Vec::new(), Vec::new()),
                |(sc, acc, flipped), p, dxp: &mut [T]| {
                    let dyp = &dy[p * g.out_plane()..(p + 1) * g.out_plane()];
                    let kc = &k[(p / b) * kk..(p / b + 1) * kk];
                    if g.stride == 1 {
                        // dx is dy correlated with the 180-degree-rotated kernel.
                        flipped.clear();
                        flipped.extend(kc.iter().rev().copied());
                        let pads = (g.k - 1 - g.pad_top, g.k - 1 - g.pad_left);
                        window_sum_s1(dyp, (g.out_h, g.out_w), flipped, g.k, pads, (g.in_h, g.in_w), dxp, sc, acc, None);
                    } else {
                        input_grad_plane(dyp, kc, dxp, g, &taps);
                    }
                },
            );
            output(dx, (c, b, g.in_h, g.in_w))
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
        let (c, b) = planes(l1, g.out_h, g.out_w, "depthwise output grad")?;
        check_kernel(l2, c, g)?;
        super::cuda::depthwise_input_grad(s1, l1, s2, l2, g, c, b)
    }
}

struct DepthwiseKernelGrad {
    g: Geom,
}

impl CustomOp2 for DepthwiseKernelGrad {
    fn name(&self) -> &'static str {
        "depthwise-kernel-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (c, b) = planes(l1, g.in_h, g.in_w, "depthwise input")?;
        let (c2, b2) = planes(l2, g.out_h, g.out_w, "depthwise output grad")?;
        if (c, b) != (c2, b2) {
            candle_core::bail!("depthwise kernel grad: input {:?} vs grad {:?}", l1.dims(), l2.dims());
        }
        let kk = g.k * g.k;
        dispatch!(s1, |T| {
            let x = slice::<T>(s1, l1)?;
            let dy = slice::<T>(s2, l2)?;
            let taps = g.col_taps();
            let mut dk = zeros::<T>(c * kk);
            dk.par_chunks_mut(kk).enumerate().for_each_init(
                || (Vec::new(), Vec::new()),
                |(xs, dys), (ch, dkc)| {
                    for img in 0..b {
                        let p = ch * b + img;
                        let xp = &x[p * g.in_plane()..(p + 1) * g.in_plane()];
                        let dyp = &dy[p * g.out_plane()..(p + 1) * g.out_plane()];
                        if g.stride == 1 {
                            kernel_grad_plane_s1(xp, dyp, dkc, g, xs, dys);
                        } else {
                            kernel_grad_plane(xp, dyp, dkc, g, &taps);
                        }
                    }
                },
            );
            output(dk, (c, kk))
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
        let (c, b) = planes(l1, g.in_h, g.in_w, "depthwise input")?;
        let (c2, b2) = planes(l2, g.out_h, g.out_w, "depthwise output grad")?;
        if (c, b) != (c2, b2) {
            candle_core::bail!("depthwise kernel grad: input {:?} vs grad {:?}", l1.dims(), l2.dims());
        }
        super::cuda::depthwise_kernel_grad(s1, l1, s2, l2, g, c, b)
    }
}
