//! ReLU / ReLU6 whose backward is one pass over (y, dy), instead of Candle's
//! compare + cast + multiply chain.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use num_traits::Zero;
use serde::{Deserialize, Serialize};

use super::storage::{dispatch, output, par_rows, slice, CpuElem};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    Relu,
    Relu6,
}

impl Act {
    #[inline]
    pub(crate) fn apply<T: CpuElem>(self, v: T) -> T {
        let z = v.max(T::zero());
        match self {
            Act::Relu => z,
            Act::Relu6 => z.min(T::from(6.0).unwrap_or(T::zero())),
        }
    }

    /// Whether the gradient passes, judged from the output (as TF does for ReLU6: 0 < y < 6).
    #[inline]
    pub(crate) fn passes<T: CpuElem>(self, y: T) -> bool {
        match self {
            Act::Relu => y > T::zero(),
            Act::Relu6 => y > T::zero() && y < T::from(6.0).unwrap_or(T::zero()),
        }
    }
}

/// Chunk length for elementwise parallel loops: big enough to amortise rayon.
pub(crate) const CHUNK: usize = 1 << 14;

pub fn act(x: &Tensor, a: Act) -> Result<Tensor> {
    x.contiguous()?.apply_op1(ActOp { a })
}

/// dx = dy where the activation passed (judged from its output y), else 0.
pub fn act_grad(y: &Tensor, dy: &Tensor, a: Act) -> Result<Tensor> {
    y.contiguous()?.apply_op2_no_bwd(&dy.contiguous()?, &ActGrad { a })
}

struct ActOp {
    a: Act,
}

impl CustomOp1 for ActOp {
    fn name(&self) -> &'static str {
        "act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!(s, |T| {
            let x = slice::<T>(s, l)?;
            let y = par_rows(x.len(), CHUNK, |i, yc: &mut [T]| {
                for (yv, xv) in yc.iter_mut().zip(&x[i * CHUNK..]) {
                    *yv = self.a.apply(*xv);
                }
            });
            output(y, l.shape().clone())
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::act_fwd(s, l, self.a)
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(act_grad(y, dy, self.a)?))
    }
}

struct ActGrad {
    a: Act,
}

impl CustomOp2 for ActGrad {
    fn name(&self) -> &'static str {
        "act-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("act_grad: {:?} vs {:?}", l1.dims(), l2.dims());
        }
        dispatch!(s1, |T| {
            let y = slice::<T>(s1, l1)?;
            let dy = slice::<T>(s2, l2)?;
            let dx = par_rows(y.len(), CHUNK, |i, dxc: &mut [T]| {
                for ((d, yv), g) in dxc.iter_mut().zip(&y[i * CHUNK..]).zip(&dy[i * CHUNK..]) {
                    *d = if self.a.passes(*yv) { *g } else { T::zero() };
                }
            });
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
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("act_grad: {:?} vs {:?}", l1.dims(), l2.dims());
        }
        super::cuda::act_grad(s1, l1, s2, l2, self.a)
    }
}
