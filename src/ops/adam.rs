//! One fused Adam update per parameter for the GPU: reads (var, g, [m; v])
//! and writes [var'; m'; v'] in one kernel, instead of the ~13 elementwise
//! Candle ops (each an allocation and a launch) of `train::Adam`'s generic path.
//! The arithmetic is the CPU path's (`Adam::update_cpu`), operation for operation,
//! in the tensor's type: m' = m + (g - m)(1-b1); v' = v + (g*g - v)(1-b2);
//! var' = var - (alpha*m') / (sqrt(v') + eps), with 1-b computed in that type.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::storage::{dispatch, output, slice, zeros};

/// (3, n): the updated parameter (flattened), m and v. `mv` is (2, n).
pub fn adam_step(var: &Tensor, g: &Tensor, mv: &Tensor, b1: f64, b2: f64, alpha: f64, eps: f64) -> Result<Tensor> {
    let n = var.elem_count();
    if g.elem_count() != n || mv.dims() != [2, n] {
        candle_core::bail!("adam_step: var {:?}, grad {:?}, state {:?}", var.dims(), g.dims(), mv.dims());
    }
    let g = g.to_dtype(var.dtype())?;
    var.flatten_all()?.contiguous()?.apply_op3_no_bwd(&g.flatten_all()?.contiguous()?, &mv.contiguous()?, &AdamStep { b1, b2, alpha, eps })
}

pub(crate) struct AdamStep {
    pub b1: f64,
    pub b2: f64,
    pub alpha: f64,
    pub eps: f64,
}

impl CustomOp3 for AdamStep {
    fn name(&self) -> &'static str {
        "adam-step"
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
        let n = l1.shape().elem_count();
        dispatch!(s1, |T| {
            let (var, g, mv) = (slice::<T>(s1, l1)?, slice::<T>(s2, l2)?, slice::<T>(s3, l3)?);
            let c = |x: f64| <T as num_traits::NumCast>::from(x).unwrap_or_default();
            let one = c(1.0);
            let (omb1, omb2, alpha, eps) = (one - c(self.b1), one - c(self.b2), c(self.alpha), c(self.eps));
            let mut out = zeros::<T>(3 * n);
            for i in 0..n {
                let m = mv[i] + (g[i] - mv[i]) * omb1;
                let v = mv[n + i] + (g[i] * g[i] - mv[n + i]) * omb2;
                out[i] = var[i] - (alpha * m) / (v.sqrt() + eps);
                out[n + i] = m;
                out[2 * n + i] = v;
            }
            output(out, (3, n))
        })
    }

    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::adam_step(s1, l1, s2, l2, s3, l3, self)
    }
}
