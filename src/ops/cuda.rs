//! CUDA forward kernels of the custom ops (the `cuda_fwd` of each `CustomOp`),
//! compiled from `src/ops/cuda/ops.cu` to PTX by build.rs and loaded once per
//! device through Candle's custom-module cache.
//!
//! Each function takes the already-checked storages and layouts of its op and
//! returns the result storage; the shape checks stay in the op files so the
//! CPU and CUDA paths share them.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape};

use super::act::Act;
use super::Geom;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/tuneserve_ops.ptx"));
const MODULE: &str = "tuneserve_ops";
const THREADS: u32 = 256;

/// Float types the kernels are instantiated for.
pub(crate) trait GpuElem: CudaDType + DeviceRepr + Copy + 'static {
    const SUFFIX: &'static str;
}
impl GpuElem for f32 {
    const SUFFIX: &'static str = "f32";
}
impl GpuElem for f64 {
    const SUFFIX: &'static str = "f64";
}

/// `Geom` as the kernels' `struct Geom` (eight ints).
#[repr(C)]
#[derive(Clone, Copy)]
struct GeomC([i32; 8]);
unsafe impl DeviceRepr for GeomC {}

impl From<&Geom> for GeomC {
    fn from(g: &Geom) -> Self {
        let v = [g.in_h, g.in_w, g.k, g.stride, g.pad_top, g.pad_left, g.out_h, g.out_w];
        GeomC(v.map(|x| x as i32))
    }
}

fn act_code(a: Option<Act>) -> i32 {
    match a {
        None => -1,
        Some(Act::Relu) => 0,
        Some(Act::Relu6) => 1,
    }
}

macro_rules! gpu_dispatch {
    ($s:expr, |$t:ident| $body:expr) => {
        match $s.dtype() {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            d => candle_core::bail!("custom op expects f32 or f64, got {d:?}"),
        }
    };
}

fn view<'a, T: GpuElem>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let data = s.as_cuda_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(data.slice(a..b)),
        None => candle_core::bail!("custom op needs a contiguous input, got {:?}", l.stride()),
    }
}

fn kernel_name<T: GpuElem>(base: &str) -> String {
    format!("{base}_{}", T::SUFFIX)
}

/// The kernel `<base>_<f32|f64>` of this module on `dev` (loaded once per device).
macro_rules! func {
    ($dev:expr, $t:ty, $base:expr) => {
        $dev.get_or_load_custom_func(&kernel_name::<$t>($base), MODULE, PTX)
    };
}

/// Uninitialised output of `n` elements (every kernel writes all of it).
fn alloc<T: GpuElem>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: the kernel launched next writes every element.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

/// Grid-stride launch over `n` elements.
fn elems(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn wrap<T: GpuElem>(out: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Result<(CudaStorage, Shape)> {
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape.into()))
}

pub(crate) fn act_fwd(s: &CudaStorage, l: &Layout, a: Act) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let n = l.shape().elem_count();
    gpu_dispatch!(s, |T| {
        let x = view::<T>(s, l)?;
        let y = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "act_fwd")?;
        let (n64, code) = (n as i64, act_code(Some(a)));
        let mut b = f.builder();
        b.arg(&n64).arg(&x).arg(&y).arg(&code);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(y, dev, l.shape().clone())
    })
}

pub(crate) fn act_grad(s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout, a: Act) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = l1.shape().elem_count();
    gpu_dispatch!(s1, |T| {
        let (y, dy) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let dx = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "act_grad")?;
        let (n64, code) = (n as i64, act_code(Some(a)));
        let mut b = f.builder();
        b.arg(&n64).arg(&y).arg(&dy).arg(&dx).arg(&code);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(dx, dev, l1.shape().clone())
    })
}

/// y = act(x * scale[c] + shift[c]) with `per_ch` elements per channel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_fwd(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    per_ch: usize,
    a: Option<Act>,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = l1.shape().elem_count();
    gpu_dispatch!(s1, |T| {
        let (x, scale, shift) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<T>(s3, l3)?);
        let y = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "affine_fwd")?;
        let (n64, pc, code) = (n as i64, per_ch as i64, act_code(a));
        let mut b = f.builder();
        b.arg(&n64).arg(&pc).arg(&x).arg(&scale).arg(&shift).arg(&y).arg(&code);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(y, dev, l1.shape().clone())
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_input_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    per_ch: usize,
    a: Option<Act>,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = l1.shape().elem_count();
    gpu_dispatch!(s1, |T| {
        let (y, dy, scale) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<T>(s3, l3)?);
        let dx = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "affine_input_grad")?;
        let (n64, pc, code) = (n as i64, per_ch as i64, act_code(a));
        let mut b = f.builder();
        b.arg(&n64).arg(&pc).arg(&y).arg(&dy).arg(&scale).arg(&dx).arg(&code);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(dx, dev, l1.shape().clone())
    })
}

/// Sums `part` (rows, splits, width) over splits into (rows, width), in split order.
fn sum_splits<T: GpuElem>(dev: &CudaDevice, part: &CudaSlice<T>, rows: usize, splits: usize, width: usize) -> Result<CudaSlice<T>> {
    let out = alloc::<T>(dev, rows * width)?;
    let f = func!(dev, T, "sum_splits")?;
    let (r, s, w) = (rows as i64, splits as i64, width as i64);
    let mut b = f.builder();
    b.arg(&r).arg(&s).arg(&w).arg(part).arg(&out);
    unsafe { b.launch(elems(rows * width)) }.w()?;
    Ok(out)
}

/// (C, 2): per channel (sum g*x, sum g) with g = dy masked by the activation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn affine_param_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    c: usize,
    per_ch: usize,
    a: Option<Act>,
) -> Result<(CudaStorage, Shape)> {
    const CHUNK: usize = 1 << 14;
    let dev = s1.device();
    let splits = per_ch.div_ceil(CHUNK).max(1);
    gpu_dispatch!(s1, |T| {
        let (x, y, dy) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<T>(s3, l3)?);
        let part = alloc::<T>(dev, c * splits * 2)?;
        let f = func!(dev, T, "affine_param_partial")?;
        let (pc, chunk, code) = (per_ch as i64, CHUNK as i64, act_code(a));
        let cfg = LaunchConfig {
            grid_dim: (c as u32, splits as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 2 * THREADS * std::mem::size_of::<T>() as u32,
        };
        let mut b = f.builder();
        b.arg(&pc).arg(&chunk).arg(&x).arg(&y).arg(&dy).arg(&part).arg(&code);
        unsafe { b.launch(cfg) }.w()?;
        let out = sum_splits(dev, &part, c, splits, 2)?;
        wrap(out, dev, (c, 2))
    })
}

/// Depthwise KxK convolution of (C,B,H,W) by (C,K*K), optionally of
/// act(x * scale[c] + shift[c]) (`pre`, inference fusion).
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_fwd(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    g: &Geom,
    c: usize,
    bsz: usize,
    pre: Option<&super::PreAffine>,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = c * bsz * g.out_plane();
    gpu_dispatch!(s1, |T| {
        let (x, k) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let y = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "dw_fwd")?;
        let (n64, b32, gc) = (n as i64, bsz as i32, GeomC::from(g));
        // With no pre-affine, pre_act = -2 and the (unread) vectors are one element.
        let (scale, shift, code): (Vec<T>, Vec<T>, i32) = match pre {
            None => (vec![0 as T], vec![0 as T], -2),
            Some(p) if p.scale.len() == c && p.shift.len() == c => {
                (p.scale.iter().map(|v| *v as T).collect(), p.shift.iter().map(|v| *v as T).collect(), act_code(p.act))
            }
            Some(_) => candle_core::bail!("depthwise: fused affine does not have {c} channels"),
        };
        let (scale, shift) = (dev.clone_htod(&scale)?, dev.clone_htod(&shift)?);
        let mut b = f.builder();
        b.arg(&n64).arg(&b32).arg(&gc).arg(&x).arg(&k).arg(&y).arg(&scale).arg(&shift).arg(&code);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(y, dev, (c, bsz, g.out_h, g.out_w))
    })
}

pub(crate) fn depthwise_input_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    g: &Geom,
    c: usize,
    bsz: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = c * bsz * g.in_plane();
    gpu_dispatch!(s1, |T| {
        let (dy, k) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let dx = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "dw_input_grad")?;
        let (n64, b32, gc) = (n as i64, bsz as i32, GeomC::from(g));
        let mut b = f.builder();
        b.arg(&n64).arg(&b32).arg(&gc).arg(&dy).arg(&k).arg(&dx);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(dx, dev, (c, bsz, g.in_h, g.in_w))
    })
}

pub(crate) fn depthwise_kernel_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    g: &Geom,
    c: usize,
    bsz: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let kk = g.k * g.k;
    if kk > 25 {
        candle_core::bail!("depthwise kernel grad on CUDA supports kernels up to 5x5, got {}x{}", g.k, g.k);
    }
    gpu_dispatch!(s1, |T| {
        let (x, dy) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let part = alloc::<T>(dev, c * bsz * kk)?;
        let f = func!(dev, T, "dw_kernel_grad_partial")?;
        let gc = GeomC::from(g);
        // One block per plane; small planes (the 19x19 middle flow) get small
        // blocks, so that threads are not left idle through the reductions.
        let threads = (g.out_plane() / 4).next_power_of_two().clamp(32, THREADS as usize) as u32;
        let cfg = LaunchConfig {
            grid_dim: ((c * bsz) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: threads * std::mem::size_of::<T>() as u32,
        };
        let mut b = f.builder();
        b.arg(&gc).arg(&x).arg(&dy).arg(&part);
        unsafe { b.launch(cfg) }.w()?;
        let out = sum_splits(dev, &part, c, bsz, kk)?;
        wrap(out, dev, (c, kk))
    })
}

pub(crate) fn im2col(s: &CudaStorage, l: &Layout, g: &Geom, c: usize, bsz: usize) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let (rows, ncols) = (c * g.k * g.k, bsz * g.out_plane());
    let n = rows * ncols;
    gpu_dispatch!(s, |T| {
        let x = view::<T>(s, l)?;
        let cols = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "im2col")?;
        let (n64, b32, gc) = (n as i64, bsz as i32, GeomC::from(g));
        let mut b = f.builder();
        b.arg(&n64).arg(&b32).arg(&gc).arg(&x).arg(&cols);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(cols, dev, (rows, ncols))
    })
}

pub(crate) fn col2im(s: &CudaStorage, l: &Layout, g: &Geom, c: usize, bsz: usize) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let n = c * bsz * g.in_plane();
    gpu_dispatch!(s, |T| {
        let cols = view::<T>(s, l)?;
        let dx = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "col2im")?;
        let (n64, b32, gc) = (n as i64, bsz as i32, GeomC::from(g));
        let mut b = f.builder();
        b.arg(&n64).arg(&b32).arg(&gc).arg(&cols).arg(&dx);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(dx, dev, (c, bsz, g.in_h, g.in_w))
    })
}

/// Max pool over `planes` (C*B) planes; `shape` is the (C, B, Ho, Wo) result.
pub(crate) fn max_pool(s: &CudaStorage, l: &Layout, g: &Geom, planes: usize, shape: Shape) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let n = planes * g.out_plane();
    gpu_dispatch!(s, |T| {
        let x = view::<T>(s, l)?;
        let y = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "max_pool_fwd")?;
        let (n64, gc) = (n as i64, GeomC::from(g));
        let mut b = f.builder();
        b.arg(&n64).arg(&gc).arg(&x).arg(&y);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(y, dev, shape)
    })
}

pub(crate) fn max_pool_grad(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    g: &Geom,
    planes: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let (n_out, n) = (planes * g.out_plane(), planes * g.in_plane());
    gpu_dispatch!(s1, |T| {
        let (x, dy) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
        let gc = GeomC::from(g);
        // Pass 1: each window's first maximum.
        // SAFETY: the argmax kernel writes every element.
        let idx = unsafe { dev.alloc::<i32>(n_out.max(1)) }?;
        let f = func!(dev, T, "max_pool_argmax")?;
        let no64 = n_out as i64;
        let mut b = f.builder();
        b.arg(&no64).arg(&gc).arg(&x).arg(&idx);
        unsafe { b.launch(elems(n_out)) }.w()?;
        // Pass 2: each input pixel gathers the gradients of the windows it won.
        let dx = alloc::<T>(dev, n)?;
        let f = func!(dev, T, "max_pool_grad")?;
        let n64 = n as i64;
        let mut b = f.builder();
        b.arg(&n64).arg(&gc).arg(&idx).arg(&dy).arg(&dx);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(dx, dev, l1.shape().clone())
    })
}

/// Fused Adam: (3, n) = [var'; m'; v'] from var (n), g (n), [m; v] (2, n).
pub(crate) fn adam_step(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    p: &super::adam::AdamStep,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device();
    let n = l1.shape().elem_count();
    gpu_dispatch!(s1, |T| {
        let (var, g, mv) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?, view::<T>(s3, l3)?);
        let out = alloc::<T>(dev, 3 * n)?;
        let f = func!(dev, T, "adam_step")?;
        let c = |x: f64| x as T;
        // 1 - b in the tensor's type, as `train::Adam`'s CPU path computes it.
        let (b1, omb1, b2, omb2, alpha, eps) = (c(p.b1), 1.0 - c(p.b1), c(p.b2), 1.0 - c(p.b2), c(p.alpha), c(p.eps));
        let n64 = n as i64;
        let mut b = f.builder();
        b.arg(&n64).arg(&var).arg(&g).arg(&mv).arg(&out);
        b.arg(&b1).arg(&omb1).arg(&b2).arg(&omb2).arg(&alpha).arg(&eps);
        unsafe { b.launch(elems(n)) }.w()?;
        wrap(out, dev, (3, n))
    })
}
