//! One fused Adam update per parameter for the GPU: reads (var, g, [m; v])
//! and writes [var'; m'; v'] in one kernel, instead of the ~13 elementwise
//! Candle ops (each an allocation and a launch) of `train::Adam`'s generic path.
//! The arithmetic is that path's, operation for operation, in the tensor's type:
//! m' = m*b1 + g*(1-b1); v' = v*b2 + (g*g)*(1-b2); var' = var - (m'*alpha) / (sqrt(v') + eps).

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
            let (b1, omb1, b2, omb2, alpha, eps) =
                (c(self.b1), c(1.0 - self.b1), c(self.b2), c(1.0 - self.b2), c(self.alpha), c(self.eps));
            let mut out = zeros::<T>(3 * n);
            for i in 0..n {
                let m = mv[i] * b1 + g[i] * omb1;
                let v = mv[n + i] * b2 + (g[i] * g[i]) * omb2;
                out[i] = var[i] - (m * alpha) / (v.sqrt() + eps);
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
