//! Per-channel affine + optional activation: BatchNorm in inference mode with
//! frozen statistics, as y = act(x * scale[c] + shift[c]) on (C, ...) tensors.
//! scale/shift come from the trainable gamma/beta (see `model::layers::FrozenBn`).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use num_traits::ToPrimitive;
use num_traits::Zero;
use rayon::prelude::*;

use super::act::Act;
use super::depthwise::ChannelAffine;
use super::storage::{build_rows, dispatch, output, par_rows, slice, zeros, CpuElem};

pub fn affine_act(x: &Tensor, scale: &Tensor, shift: &Tensor, a: Option<Act>) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&scale.contiguous()?, &shift.contiguous()?, AffineAct { a })
}

/// dL/dx given the op's output y (for the activation mask) and dL/dy.
pub fn affine_act_input_grad(y: &Tensor, dy: &Tensor, scale: &Tensor, a: Option<Act>) -> Result<Tensor> {
    y.contiguous()?.apply_op3_no_bwd(&dy.contiguous()?, &scale.contiguous()?, &AffineInputGrad { a })
}

/// dL/dx, dL/dscale and dL/dshift in one pass over x, y and dL/dy (the
/// backward of `affine_act`; two separate ops would read y and dy twice).
pub fn affine_act_backward(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    scale: &Tensor,
    a: Option<Act>,
) -> Result<(Tensor, Tensor, Tensor)> {
    if !x.device().is_cpu() {
        let dx = affine_act_input_grad(y, dy, scale, a)?;
        let (ds, dt) = affine_act_param_grad(x, y, dy, a)?;
        return Ok((dx, ds, dt));
    }
    let c = scale.elem_count();
    let op = AffineBackward { a, scale: scale.to_dtype(candle_core::DType::F64)?.to_vec1()?, sums: Mutex::new(Vec::new()) };
    let dx = x.contiguous()?.apply_op3_no_bwd(&y.contiguous()?, &dy.contiguous()?, &op)?;
    let sums = std::mem::take(&mut *op.sums.lock().map_err(|_| candle_core::Error::Msg("poisoned".into()))?);
    if sums.len() != 2 * c {
        candle_core::bail!("affine backward produced {} sums for {c} channels", sums.len());
    }
    let (ds, dt): (Vec<f64>, Vec<f64>) = (sums.iter().step_by(2).copied().collect(), sums.iter().skip(1).step_by(2).copied().collect());
    let dev = x.device();
    Ok((dx, Tensor::from_vec(ds, c, dev)?.to_dtype(x.dtype())?, Tensor::from_vec(dt, c, dev)?.to_dtype(x.dtype())?))
}

/// CPU op for `affine_act_backward`: returns dL/dx and leaves the per-channel
/// parameter sums in `sums` (a custom op has one output tensor).
struct AffineBackward {
    a: Option<Act>,
    scale: Vec<f64>,
    sums: Mutex<Vec<f64>>,
}

impl CustomOp3 for AffineBackward {
    fn name(&self) -> &'static str {
        "affine-act-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = self.scale.len();
        let n = rows(l1, c, "affine backward")?;
        dispatch!(s1, |T| {
            let x = slice::<T>(s1, l1)?;
            let y = slice::<T>(s2, l2)?;
            let dy = slice::<T>(s3, l3)?;
            let (dx, sums) = build_rows(x.len(), n, || (), |_, ch, dxr: &mut [T]| {
                let r = ch * n..(ch + 1) * n;
                let s = <T as num_traits::NumCast>::from(self.scale[ch]).unwrap_or(T::zero());
                let (ds, dt) = backward_row(dxr, &x[r.clone()], &y[r.clone()], &dy[r], s, self.a);
                (ds.to_f64().unwrap_or(0.0), dt.to_f64().unwrap_or(0.0))
            });
            if let Ok(mut g) = self.sums.lock() {
                *g = sums.into_iter().flat_map(|(a, b)| [a, b]).collect();
            }
            output(dx, l1.shape().clone())
        })
    }
}

/// (dL/dscale, dL/dshift), each of shape (C,), from the op's input x, output y and dL/dy.
pub fn affine_act_param_grad(x: &Tensor, y: &Tensor, dy: &Tensor, a: Option<Act>) -> Result<(Tensor, Tensor)> {
    let both = x.contiguous()?.apply_op3_no_bwd(&y.contiguous()?, &dy.contiguous()?, &AffineParamGrad { a })?;
    Ok((both.narrow(1, 0, 1)?.squeeze(1)?, both.narrow(1, 1, 1)?.squeeze(1)?))
}

fn rows(l: &Layout, c: usize, what: &str) -> Result<usize> {
    let n = l.shape().elem_count();
    if l.dims().first() != Some(&c) || c == 0 {
        candle_core::bail!("{what}: leading dim of {:?} must be the {c} channels", l.dims());
    }
    Ok(n / c)
}

struct AffineAct {
    a: Option<Act>,
}

impl CustomOp3 for AffineAct {
    fn name(&self) -> &'static str {
        "affine-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = l2.shape().elem_count();
        let n = rows(l1, c, "affine")?;
        dispatch!(s1, |T| {
            let x = slice::<T>(s1, l1)?;
            let scale = slice::<T>(s2, l2)?;
            let shift = slice::<T>(s3, l3)?;
            let y = par_rows(x.len(), n, |ch, yr: &mut [T]| {
                let xr = &x[ch * n..(ch + 1) * n];
                let (s, t) = (scale[ch], shift[ch]);
                match self.a {
                    None => yr.iter_mut().zip(xr).for_each(|(yv, xv)| *yv = *xv * s + t),
                    Some(a) => yr.iter_mut().zip(xr).for_each(|(yv, xv)| *yv = a.apply(*xv * s + t)),
                }
            });
            output(y, l1.shape().clone())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let c = l2.shape().elem_count();
        let n = rows(l1, c, "affine")?;
        super::cuda::affine_fwd(s1, l1, s2, l2, s3, l3, n, self.a)
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = affine_act_input_grad(y, dy, scale, self.a)?;
        let (ds, dt) = affine_act_param_grad(x, y, dy, self.a)?;
        Ok((Some(dx), Some(ds), Some(dt)))
    }
}

struct AffineInputGrad {
    a: Option<Act>,
}

impl CustomOp3 for AffineInputGrad {
    fn name(&self) -> &'static str {
        "affine-act-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = l3.shape().elem_count();
        let n = rows(l1, c, "affine input grad")?;
        dispatch!(s1, |T| {
            let y = slice::<T>(s1, l1)?;
            let dy = slice::<T>(s2, l2)?;
            let scale = slice::<T>(s3, l3)?;
            let r = |ch: usize| ch * n..(ch + 1) * n;
            let dx = par_rows(y.len(), n, |ch, dxr: &mut [T]| input_grad_row(dxr, &y[r(ch)], &dy[r(ch)], scale[ch], self.a));
            output(dx, l1.shape().clone())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let c = l3.shape().elem_count();
        let n = rows(l1, c, "affine input grad")?;
        super::cuda::affine_input_grad(s1, l1, s2, l2, s3, l3, n, self.a)
    }
}

struct AffineParamGrad {
    a: Option<Act>,
}

impl CustomOp3 for AffineParamGrad {
    fn name(&self) -> &'static str {
        "affine-act-param-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = l1.dims()[0];
        let n = rows(l1, c, "affine param grad")?;
        dispatch!(s1, |T| {
            let x = slice::<T>(s1, l1)?;
            let y = slice::<T>(s2, l2)?;
            let dy = slice::<T>(s3, l3)?;
            let mut out = zeros::<T>(2 * c);
            out.par_chunks_mut(2).enumerate().for_each(|(ch, o)| {
                let r = ch * n..(ch + 1) * n;
                let (ds, dt) = param_sums(&x[r.clone()], &y[r.clone()], &dy[r], self.a);
                o[0] = ds;
                o[1] = dt;
            });
            output(out, (c, 2))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let c = l1.dims()[0];
        let n = rows(l1, c, "affine param grad")?;
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() {
            candle_core::bail!("affine param grad: {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        super::cuda::affine_param_grad(s1, l1, s2, l2, s3, l3, c, n, self.a)
    }
}

/// (sum g*x, sum g) over one channel, g = dy masked by the activation, with
/// 16 partial sums per quantity so the loop vectorises.
fn param_sums<T: CpuElem>(x: &[T], y: &[T], dy: &[T], a: Option<Act>) -> (T, T) {
    const L: usize = 16;
    let (mut ds, mut dt) = ([T::zero(); L], [T::zero(); L]);
    let chunks = x.len() / L * L;
    for i in (0..chunks).step_by(L) {
        let (xc, yc, gc) = (&x[i..i + L], &y[i..i + L], &dy[i..i + L]);
        for l in 0..L {
            let g = match a {
                Some(a) if !a.passes(yc[l]) => T::zero(),
                _ => gc[l],
            };
            ds[l] += g * xc[l];
            dt[l] += g;
        }
    }
    let (mut s, mut t) = (ds.iter().fold(T::zero(), |a, v| a + *v), dt.iter().fold(T::zero(), |a, v| a + *v));
    for i in chunks..x.len() {
        let g = match a {
            Some(a) if !a.passes(y[i]) => T::zero(),
            _ => dy[i],
        };
        s += g * x[i];
        t += g;
    }
    (s, t)
}

/// One channel's whole backward in one pass over its rows: dx = g * s and
/// (sum g*x, sum g), g = dy masked by the activation. Branch-free, with 16
/// partial sums per quantity, so it vectorises; it reads x, y and dy once.
fn backward_row<T: CpuElem>(dx: &mut [T], x: &[T], y: &[T], dy: &[T], s: T, a: Option<Act>) -> (T, T) {
    const L: usize = 16;
    let (mut ds, mut dt) = ([T::zero(); L], [T::zero(); L]);
    let gate = |yv: T, g: T| match a {
        Some(a) if !a.passes(yv) => T::zero(),
        _ => g,
    };
    let main = x.len() / L * L;
    for (((dc, xc), yc), gc) in dx[..main].chunks_exact_mut(L).zip(x.chunks_exact(L)).zip(y.chunks_exact(L)).zip(dy.chunks_exact(L)) {
        for l in 0..L {
            let g = gate(yc[l], gc[l]);
            dc[l] = g * s;
            ds[l] += g * xc[l];
            dt[l] += g;
        }
    }
    let (mut s_sum, mut t_sum) = (ds.iter().fold(T::zero(), |a, v| a + *v), dt.iter().fold(T::zero(), |a, v| a + *v));
    for i in main..x.len() {
        let g = gate(y[i], dy[i]);
        dx[i] = g * s;
        s_sum += g * x[i];
        t_sum += g;
    }
    (s_sum, t_sum)
}

/// dx = dy * scale where the activation passed (judged from its output y), else 0.
fn input_grad_row<T: CpuElem>(dx: &mut [T], y: &[T], dy: &[T], s: T, a: Option<Act>) {
    match a {
        None => dx.iter_mut().zip(dy).for_each(|(d, g)| *d = *g * s),
        Some(a) => dx.iter_mut().zip(y.iter().zip(dy)).for_each(|(d, (yv, g))| *d = if a.passes(*yv) { *g * s } else { T::zero() }),
    }
}

/// The end of a residual block in one pass: `x + r`, with each branch's
/// closing BatchNorm (`v * s + t`, no activation) applied on the way where it
/// has one (inference on CPU, f32). Same arithmetic, in the same order, as
/// `affine_act` on each branch followed by an add, so the results are
/// bit-identical; it has no backward because training records the unfused
/// ops. It runs on the caller's thread pool, unlike Candle's own add.
pub fn residual_affine_add(x: &Tensor, main: Option<ChannelAffine>, r: &Tensor, shortcut: Option<ChannelAffine>) -> Result<Tensor> {
    if main.iter().chain(&shortcut).any(|a| a.act.is_some()) {
        candle_core::bail!("residual add: the BatchNorms before the add have no activation");
    }
    x.contiguous()?.apply_op2_no_bwd(&r.contiguous()?, &ResidualAffineAdd { main, shortcut })
}

struct ResidualAffineAdd {
    main: Option<ChannelAffine>,
    shortcut: Option<ChannelAffine>,
}

impl candle_core::CustomOp2 for ResidualAffineAdd {
    fn name(&self) -> &'static str {
        "residual-affine-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("residual add: {:?} vs {:?}", l1.dims(), l2.dims());
        }
        let c = l1.dims().first().copied().unwrap_or(0);
        let n = rows(l1, c, "residual add")?;
        for a in self.main.iter().chain(&self.shortcut) {
            if a.scale.len() != c || a.shift.len() != c {
                candle_core::bail!("residual add: a BatchNorm of {} channels on {c}", a.scale.len());
            }
        }
        let x = slice::<f32>(s1, l1)?;
        let r = slice::<f32>(s2, l2)?;
        let y = par_rows(x.len(), n, |ch, yr: &mut [f32]| {
            let (xr, rr) = (&x[ch * n..(ch + 1) * n], &r[ch * n..(ch + 1) * n]);
            let pairs = yr.iter_mut().zip(xr.iter().zip(rr));
            match (&self.main, &self.shortcut) {
                (None, None) => pairs.for_each(|(yv, (xv, rv))| *yv = *xv + *rv),
                (Some(m), None) => {
                    let (s, t) = (m.scale[ch], m.shift[ch]);
                    pairs.for_each(|(yv, (xv, rv))| *yv = (*xv * s + t) + *rv)
                }
                (None, Some(sc)) => {
                    let (s2, t2) = (sc.scale[ch], sc.shift[ch]);
                    pairs.for_each(|(yv, (xv, rv))| *yv = *xv + (*rv * s2 + t2))
                }
                (Some(m), Some(sc)) => {
                    let (s, t, s2, t2) = (m.scale[ch], m.shift[ch], sc.scale[ch], sc.shift[ch]);
                    pairs.for_each(|(yv, (xv, rv))| *yv = (*xv * s + t) + (*rv * s2 + t2))
                }
            }
        });
        output(y, l1.shape().clone())
    }
}
