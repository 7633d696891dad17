//! Access to the CPU storage behind a tensor, and building results.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Result, Shape};
use rayon::prelude::*;

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

/// A zero-filled buffer, for small outputs (per-channel sums, kernels).
pub(crate) fn zeros<T: Elem>(n: usize) -> Vec<T> {
    vec![T::zero(); n]
}

/// An output of `n` elements built in parallel, `row` at a time, by
/// `f(scratch, row_index, row)`; returns it with every row's result. Each row
/// starts zeroed, by the thread that then fills it, just before (so in cache):
/// a serial memset of a whole activation-sized output up front cost ~10% of a
/// training step while the other cores waited.
pub(crate) fn build_rows<T, S, R>(
    n: usize,
    row: usize,
    scratch: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [T]) -> R + Sync + Send,
) -> (Vec<T>, Vec<R>)
where
    T: Elem,
    R: Send,
{
    let mut v = Vec::<T>::with_capacity(n);
    let results = v.spare_capacity_mut()[..n]
        .par_chunks_mut(row.max(1))
        .enumerate()
        .map_init(scratch, |s, (i, r)| {
            r.fill(MaybeUninit::new(T::zero()));
            // SAFETY: every element of `r` was initialised on the line above,
            // and MaybeUninit<T> has T's layout.
            let r = unsafe { &mut *(r as *mut [MaybeUninit<T>] as *mut [T]) };
            f(s, i, r)
        })
        .collect();
    // SAFETY: the rows cover 0..n and each was initialised above.
    unsafe { v.set_len(n) };
    (v, results)
}

/// `build_rows` for kernels without scratch space or per-row results.
pub(crate) fn par_rows<T: Elem>(n: usize, row: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) -> Vec<T> {
    build_rows(n, row, || (), |_, i, r| f(i, r)).0
}

/// An output buffer that parallel work writes in disjoint pieces (planes,
/// rows), each piece by exactly one task, without a lock.
pub(crate) struct DisjointParts {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks write disjoint parts (see `part`'s callers).
unsafe impl Sync for DisjointParts {}

impl DisjointParts {
    #[inline]
    pub(crate) fn new(buf: &mut [f32]) -> Self {
        Self { ptr: buf.as_mut_ptr(), len: buf.len() }
    }

    /// Over memory not yet written: its parts are written through `part_ptr` only.
    #[inline]
    pub(crate) fn uninit(buf: &mut [MaybeUninit<f32>]) -> Self {
        Self { ptr: buf.as_mut_ptr().cast(), len: buf.len() }
    }

    /// The start of `at..at + len`, to write (not read) through.
    ///
    /// # Safety
    /// As `part`: no one else writes `at..at + len` meanwhile, and the buffer outlives the pointer's use.
    #[inline]
    pub(crate) unsafe fn part_ptr(&self, at: usize, len: usize) -> *mut f32 {
        assert!(at + len <= self.len, "part {at}+{len} outside the output ({})", self.len);
        // SAFETY: in bounds (checked above).
        unsafe { self.ptr.add(at) }
    }

    /// # Safety
    /// No other live slice may overlap `at..at + len`, and the buffer given
    /// to `new` must outlive the slice.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub(crate) unsafe fn part(&self, at: usize, len: usize) -> &mut [f32] {
        assert!(at + len <= self.len, "part {at}+{len} outside the output ({})", self.len);
        // SAFETY: in bounds (checked above); exclusivity and lifetime are the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}
