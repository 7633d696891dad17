//! 2-D matrix products for the network: CPU f32 runs OpenBLAS when the
//! machine has it ([`super::blas`]); everything else (no OpenBLAS, CUDA, f64
//! gradient checks) runs Candle's own matmul.

use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor};

use super::blas::{self, View};

/// (m, k) x (k, n) -> (m, n). Either operand may be a transposed view.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let blas = match blas::get() {
        Some(blas) if a.device().is_cpu() && a.dtype() == DType::F32 && b.dtype() == DType::F32 && a.rank() == 2 && b.rank() == 2 => blas,
        _ => return a.matmul(b),
    };
    let ((m, k), (k2, n)) = (a.dims2()?, b.dims2()?);
    if k != k2 {
        candle_core::bail!("matmul: inner dimensions differ, {:?} x {:?}", a.shape(), b.shape());
    }
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(va)), Storage::Cpu(CpuStorage::F32(vb))) = (&*sa, &*sb) else {
        candle_core::bail!("matmul: expected CPU f32 storage");
    };
    let (va, vb) = (view(va, la), view(vb, lb));
    if m == 0 || n == 0 || k == 0 || !va.blas_ok() || !vb.blas_ok() {
        drop((sa, sb));
        return a.matmul(b);
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the views come from the tensors' own layouts (m x k and k x n
    // inside their storage), and `out` has room for m * n floats, all of
    // which sgemm writes (beta = 0) before set_len exposes them.
    unsafe {
        blas.sgemm(m, n, k, va, vb, out.as_mut_ptr());
        out.set_len(m * n);
    }
    Tensor::from_vec(out, (m, n), &Device::Cpu)
}

/// Which library runs CPU f32 products, and OpenBLAS's kernels (for logs and
/// benchmark reports).
pub fn cpu_backend() -> String {
    if let Some(b) = blas::get() {
        format!("openblas ({})", b.core)
    } else {
        "gemm-crate".into()
    }
}

fn view(data: &[f32], l: &Layout) -> View {
    let s = l.stride();
    View { ptr: data[l.start_offset()..].as_ptr(), rs: s[0], cs: s[1] }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs where OpenBLAS is installed (CI installs it) and compares with
    /// Candle's matmul; without it, `matmul` is Candle's matmul itself.
    #[test]
    fn agrees_with_candle_for_plain_and_transposed_operands() -> Result<()> {
        if std::env::var("CI").is_ok() {
            assert!(blas::get().is_some(), "CI installs OpenBLAS (libopenblas0): this test must exercise it");
        }
        for (m, k, n) in [(37, 70, 45), (1, 1, 1), (130, 20, 7), (5, 300, 2000)] {
            let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
            let at = a.t()?.contiguous()?;
            let bt = b.t()?.contiguous()?;
            for (x, y) in [(a.clone(), b.clone()), (at.t()?, b.clone()), (a.clone(), bt.t()?), (at.t()?, bt.t()?)] {
                let want = x.matmul(&y)?;
                let got = matmul(&x, &y)?;
                let diff = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(diff < 1e-4, "({m},{k},{n}) max diff {diff}");
            }
        }
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(candle_core::Error::wrap)?;
            let a = Tensor::randn(0f32, 1.0, (100, 64), &Device::Cpu)?;
            let b = Tensor::randn(0f32, 1.0, (64, 1000), &Device::Cpu)?;
            let got = pool.install(|| matmul(&a, &b))?;
            let diff = (got - a.matmul(&b)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{threads} threads: max diff {diff}");
        }
        Ok(())
    }
}
