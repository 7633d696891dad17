//! Depthwise KxK convolution (one filter per channel), forward and backward.
//!
//! Candle runs grouped convolutions as one conv per group (~100x slower than
//! needed); these kernels work per (channel, image) plane with row-wise inner
//! loops that the compiler vectorises.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::storage::{dispatch, output, slice, zeros, CpuElem};
use super::Geom;

/// y[c,b] = depthwise(x[c,b], k[c]) for x (C,B,H,W) and k (C, K*K).
pub fn depthwise(x: &Tensor, k: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&k.contiguous()?, Depthwise { g })
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

struct Depthwise {
    g: Geom,
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
            let mut y = zeros::<T>(c * b * g.out_plane());
            y.par_chunks_mut(g.out_plane()).enumerate().for_each(|(p, yp)| {
                let xp = &x[p * g.in_plane()..(p + 1) * g.in_plane()];
                forward_plane(xp, &k[(p / b) * g.k * g.k..(p / b + 1) * g.k * g.k], yp, g, &taps);
            });
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
        super::cuda::depthwise_fwd(s1, l1, s2, l2, g, c, b)
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
            let mut dx = zeros::<T>(c * b * g.in_plane());
            dx.par_chunks_mut(g.in_plane()).enumerate().for_each(|(p, dxp)| {
                let dyp = &dy[p * g.out_plane()..(p + 1) * g.out_plane()];
                input_grad_plane(dyp, &k[(p / b) * g.k * g.k..(p / b + 1) * g.k * g.k], dxp, g, &taps);
            });
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
            dk.par_chunks_mut(kk).enumerate().for_each(|(ch, dkc)| {
                for img in 0..b {
                    let p = ch * b + img;
                    let xp = &x[p * g.in_plane()..(p + 1) * g.in_plane()];
                    let dyp = &dy[p * g.out_plane()..(p + 1) * g.out_plane()];
                    kernel_grad_plane(xp, dyp, dkc, g, &taps);
                }
            });
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
