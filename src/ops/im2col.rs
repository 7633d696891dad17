//! im2col / col2im over (C,B,H,W) activations, so dense convolutions become one
//! (O, C*K*K) x (C*K*K, B*Ho*Wo) matmul. With K = 1 and stride 2 this is the
//! strided subsampling of Xception's residual 1x1 convolutions.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::storage::{dispatch, output, par_rows, slice};
use super::Geom;

/// (C,B,H,W) -> (C*K*K, B*Ho*Wo); row = c*K*K + a*K + b.
pub fn im2col(x: &Tensor, g: Geom) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Im2Col { g })
}

/// Adjoint of `im2col`: scatter-adds (C*K*K, B*Ho*Wo) back into (C,B,H,W).
pub fn col2im(cols: &Tensor, g: Geom) -> Result<Tensor> {
    cols.contiguous()?.apply_op1_no_bwd(&Col2Im { g })
}

struct Im2Col {
    g: Geom,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let (c, b) = match l.dims() {
            [c, b, h, w] if *h == g.in_h && *w == g.in_w => (*c, *b),
            d => candle_core::bail!("im2col: expected (C,B,{},{}), got {d:?}", g.in_h, g.in_w),
        };
        let kk = g.k * g.k;
        let ncols = b * g.out_plane();
        dispatch!(s, |T| {
            let x = slice::<T>(s, l)?;
            let cols = par_rows(c * kk * ncols, ncols, |row, out: &mut [T]| {
                let (ch, tap) = (row / kk, row % kk);
                let (a, bb) = (tap / g.k, tap % g.k);
                let (lo, hi) = g.valid_cols(bb);
                for img in 0..b {
                    let xp = &x[(ch * b + img) * g.in_plane()..(ch * b + img + 1) * g.in_plane()];
                    let op = &mut out[img * g.out_plane()..(img + 1) * g.out_plane()];
                    for oi in 0..g.out_h {
                        let Some(r) = Geom::src(oi, a, g.stride, g.pad_top, g.in_h) else { continue };
                        let orow = &mut op[oi * g.out_w..(oi + 1) * g.out_w];
                        let xrow = &xp[r * g.in_w..(r + 1) * g.in_w];
                        if lo < hi {
                            let x0 = lo * g.stride + bb - g.pad_left;
                            if g.stride == 1 {
                                orow[lo..hi].copy_from_slice(&xrow[x0..x0 + hi - lo]);
                            } else {
                                for (n, o) in orow[lo..hi].iter_mut().enumerate() {
                                    *o = xrow[x0 + n * g.stride];
                                }
                            }
                        }
                    }
                }
            });
            output(cols, (c * kk, ncols))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.g;
        let (c, b) = match l.dims() {
            [c, b, h, w] if *h == g.in_h && *w == g.in_w => (*c, *b),
            d => candle_core::bail!("im2col: expected (C,B,{},{}), got {d:?}", g.in_h, g.in_w),
        };
        super::cuda::im2col(s, l, g, c, b)
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, dcols: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(col2im(dcols, self.g)?))
    }
}

struct Col2Im {
    g: Geom,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let kk = g.k * g.k;
        let (rows, ncols) = match l.dims() {
            [r, n] if r % kk == 0 && n % g.out_plane() == 0 => (*r, *n),
            d => candle_core::bail!("col2im: expected (C*{kk}, B*{}), got {d:?}", g.out_plane()),
        };
        let (c, b) = (rows / kk, ncols / g.out_plane());
        dispatch!(s, |T| {
            let cols = slice::<T>(s, l)?;
            let dx = par_rows(c * b * g.in_plane(), b * g.in_plane(), |ch, dxc: &mut [T]| {
                for tap in 0..kk {
                    let (a, bb) = (tap / g.k, tap % g.k);
                    let (lo, hi) = g.valid_cols(bb);
                    if lo >= hi {
                        continue;
                    }
                    let x0 = lo * g.stride + bb - g.pad_left;
                    let src = &cols[(ch * kk + tap) * ncols..(ch * kk + tap + 1) * ncols];
                    for img in 0..b {
                        let dxp = &mut dxc[img * g.in_plane()..(img + 1) * g.in_plane()];
                        for oi in 0..g.out_h {
                            let Some(r) = Geom::src(oi, a, g.stride, g.pad_top, g.in_h) else { continue };
                            let srow = &src[img * g.out_plane() + oi * g.out_w..][..g.out_w];
                            let dxrow = &mut dxp[r * g.in_w..(r + 1) * g.in_w];
                            if g.stride == 1 {
                                for (d, v) in dxrow[x0..x0 + hi - lo].iter_mut().zip(&srow[lo..hi]) {
                                    *d += *v;
                                }
                            } else {
                                for (n, v) in srow[lo..hi].iter().enumerate() {
                                    dxrow[x0 + n * g.stride] += *v;
                                }
                            }
                        }
                    }
                }
            });
            output(dx, (c, b, g.in_h, g.in_w))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = &self.g;
        let kk = g.k * g.k;
        let (rows, ncols) = match l.dims() {
            [r, n] if r % kk == 0 && n % g.out_plane() == 0 => (*r, *n),
            d => candle_core::bail!("col2im: expected (C*{kk}, B*{}), got {d:?}", g.out_plane()),
        };
        super::cuda::col2im(s, l, g, rows / kk, ncols / g.out_plane())
    }
}
