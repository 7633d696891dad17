//! Access to the CPU storage behind a tensor, and building results.

use candle_core::{CpuStorage, Layout, Result, Shape};

use super::Elem;

/// Borrow a CPU storage as a contiguous slice of `T` (errors on strided views:
/// the callers make their inputs contiguous first).
pub(crate) fn slice<'a, T: CpuElem>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = T::cpu_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("custom op needs a contiguous input, got {:?}", l.stride()),
    }
}

pub(crate) trait CpuElem: Elem {
    fn cpu_slice(s: &CpuStorage) -> Result<&[Self]>;
    fn into_storage(v: Vec<Self>) -> CpuStorage;
}

impl CpuElem for f32 {
    fn cpu_slice(s: &CpuStorage) -> Result<&[f32]> {
        match s {
            CpuStorage::F32(v) => Ok(v),
            _ => {
                use candle_core::backend::BackendStorage;
                candle_core::bail!("custom op expects f32 or f64, got {:?}", s.dtype())
            }
        }
    }
    fn into_storage(v: Vec<f32>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl CpuElem for f64 {
    fn cpu_slice(s: &CpuStorage) -> Result<&[f64]> {
        match s {
            CpuStorage::F64(v) => Ok(v),
            _ => {
                use candle_core::backend::BackendStorage;
                candle_core::bail!("custom op expects f32 or f64, got {:?}", s.dtype())
            }
        }
    }
    fn into_storage(v: Vec<f64>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

/// Dispatch a generic kernel on the storage's float type.
macro_rules! dispatch {
    ($s:expr, |$t:ident| $body:expr) => {
        match $s {
            candle_core::CpuStorage::F32(_) => {
                type $t = f32;
                $body
            }
            candle_core::CpuStorage::F64(_) => {
                type $t = f64;
                $body
            }
            other => {
                use candle_core::backend::BackendStorage;
                candle_core::bail!("custom op expects f32 or f64, got {:?}", other.dtype())
            }
        }
    };
}
pub(crate) use dispatch;

pub(crate) fn output<T: CpuElem>(v: Vec<T>, shape: impl Into<Shape>) -> Result<(CpuStorage, Shape)> {
    Ok((T::into_storage(v), shape.into()))
}

/// A zero-filled buffer; the caching allocator makes these cheap to reuse.
pub(crate) fn zeros<T: Elem>(n: usize) -> Vec<T> {
    vec![T::zero(); n]
}
